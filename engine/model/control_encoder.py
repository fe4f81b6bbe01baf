"""A small convolutional stand-in for `VideoVAE.encode_control`, distilled from it (`spatia train`, stage "control").

The DiT's control branch reads the memory's scene video and coverage mask as VAE latents. Through the VAE encoder
that costs 7.4 GFLOP per 9-frame clip of the tiny model (both videos go through the full encoder, attention
included): on two CPU cores as much time as a DiT pass, and on the path from every input to its first frame. This
network maps the same inputs to the same latents at about a fifth of the cost, with the same causal frame layout:

    frames [B, C + 1, F, H, W]  scene (model space) ++ coverage (-1 / +1), pixel-unshuffled by vae_patch
      -> per frame: conv, residual block, stride-2 convs down to the latent grid   [B*F, 2 * dim, h, w]
      -> per latent frame: the features of its frames and of the tc + 1 frames before them, stacked on
         channels (zeros before the clip's first frame, as the VAE's causal padding), a residual block, a 3x3 head
         -> [B, 2z, f, h, w] = scene latents ++ coverage latents, normalised like `encode_control`'s

Latent 0 sees frame 0 alone; latent k >= 1 sees frames 4k - 8 .. 4k (2 * temporal_compression + 1 frames, those
before frame 0 as zeros), as the VAE's latents depend on more than their own frames. A clip streamed in parts
gives exactly the latents of one pass, with a state that holds the last temporal_compression + 1 frames' features.

    enc = ControlEncoder(cfg)
    ctl = enc.encode_control(scene, mask)            same call as VideoVAE.encode_control, same shapes
    state = {}; a = enc.encode_control(s[:, :, :1], m[:, :, :1], state); b = enc.encode_control(rest..., state)
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.model.configs import ModelConfig
from engine.model.vae import depth_to_unit, pixel_unshuffle

State = dict  # {"last": features of the previous part's last tc + 1 frames (zeros before frame 0) [B, tc + 1, D, h, w]}


class _Residual(nn.Module):
    """Two 3x3 convolutions with SiLU, added to the input (2D, per frame)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class ControlEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        dim, group_dim = cfg.control_encoder_dim, cfg.control_encoder_group_dim
        downs = int(math.log2(cfg.spatial_compression // cfg.vae_patch))
        if 2**downs * cfg.vae_patch != cfg.spatial_compression:
            raise ValueError(f"spatial compression {cfg.spatial_compression} is not vae_patch x a power of two")
        self.frame_in = nn.Conv2d((cfg.video_channels + 1) * cfg.vae_patch**2, dim, 3, padding=1)
        self.frame_res = _Residual(dim)
        layers: list[nn.Module] = []
        width = dim
        for _ in range(downs):
            layers += [nn.SiLU(), nn.Conv2d(width, 2 * dim, 3, stride=2, padding=1)]
            width = 2 * dim
        if not downs:
            layers += [nn.SiLU(), nn.Conv2d(width, 2 * dim, 1)]
        self.frame_down = nn.Sequential(*layers)
        self.frame_out = _Residual(2 * dim)
        self.feature_dim = 2 * dim
        self.window = 2 * cfg.temporal_compression + 1  # frames behind one latent (its own tc, and tc + 1 before)
        self.group_in = nn.Conv2d(self.window * 2 * dim, group_dim, 1)
        self.group_res = _Residual(group_dim)
        self.head = nn.Conv2d(group_dim, 2 * cfg.latent_channels, 3, padding=1)

    def frame_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unshuffled frames [N, (C + 1) * p * p, H/p, W/p] -> features on the latent grid [N, 2 * dim, h, w]."""
        return self.frame_out(self.frame_down(self.frame_res(self.frame_in(x))))

    def forward(self, x: torch.Tensor, state: State | None = None) -> torch.Tensor:
        """Model-space frames [B, (C + 1) * p * p, F, H/p, W/p] -> control latents [B, 2z, f, h, w].

        Without a state (or with an empty one) x is a whole clip or its first part: 1 + k * tc frames. With a
        state from an earlier part, x holds whole groups of tc frames that continue it. The state is updated in
        place (the last tc + 1 frames' features)."""
        b, _, frames, hp, wp = x.shape
        tc = self.cfg.temporal_compression
        feats = self.frame_features(x.transpose(1, 2).reshape(b * frames, -1, hp, wp))
        feats = feats.unflatten(0, (b, frames))  # [B, F, D, h, w]
        if state:
            if frames % tc:
                raise ValueError(f"a later part of a streamed clip needs a multiple of {tc} frames; got {frames}")
            padded = torch.cat([state["last"], feats], 1)  # [B, tc + 1 + F, D, h, w]
        else:
            self.cfg.video_to_latent_frames(frames)  # validates the frame count
            padded = torch.cat([feats.new_zeros(b, 2 * tc, *feats.shape[2:]), feats], 1)  # causal zeros before frame 0
        if state is not None:
            state["last"] = padded[:, -(tc + 1):]  # what the next part's first window needs from this one
        # latent j covers padded frames [j * tc, j * tc + 2 * tc] (2 * tc + 1 frames; consecutive windows overlap)
        groups = padded.unfold(1, self.window, tc)  # [B, f, D, h, w, window]
        f = groups.shape[1]
        groups = groups.permute(0, 1, 5, 2, 3, 4).reshape(b * f, self.window * self.feature_dim, *feats.shape[-2:])
        z = self.head(F.silu(self.group_res(self.group_in(groups))))  # [B*f, 2z, h, w]
        return z.unflatten(0, (b, f)).transpose(1, 2)

    def model_space(self, scene: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """scene [B, C, F, H, W] (rgb in [0, 1], metric depth) and coverage [B, 1, F, H, W] in {0, 1} ->
        the network's input [B, (C + 1) * p * p, F, H/p, W/p]."""
        cfg = self.cfg
        if scene.dim() != 5 or scene.shape[1] != cfg.video_channels:
            raise ValueError(f"scene must be [B, {cfg.video_channels}, F, H, W]; got {tuple(scene.shape)}")
        if mask.dim() != 5 or mask.shape[1] != 1 or mask.shape[2:] != scene.shape[2:]:
            raise ValueError(f"mask must be [B, 1, F, H, W] matching scene {tuple(scene.shape)}; got {tuple(mask.shape)}")
        x = [scene[:, :3] * 2 - 1]
        if cfg.depth_channel:
            x.append(depth_to_unit(scene[:, 3:], cfg.depth_near, cfg.depth_far) * 2 - 1)
        x.append(mask.to(scene.dtype) * 2 - 1)
        return pixel_unshuffle(torch.cat(x, 1), cfg.vae_patch)

    def encode_control(self, scene: torch.Tensor, mask: torch.Tensor, state: State | None = None) -> torch.Tensor:
        """The drop-in for `VideoVAE.encode_control`: same inputs, same state protocol, same output layout."""
        return self(self.model_space(scene, mask), state)
