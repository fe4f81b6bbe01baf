"""The causal video autoencoder: RGB(-D) video <-> latent video, with streaming (frame-by-frame) decoding.

Layout of Wan2.2's VAE, generalised by `ModelConfig` (at the `spatia-5b` preset it is that VAE, and its official
weights load through `engine.model.convert`): a pixel-unshuffle of `vae_patch`, an encoder of residual levels with
per-level spatial and/or temporal 2x downsampling plus parameter-free averaging shortcuts, a middle with one
per-frame attention block, a KL head (mean, logvar), and the mirrored decoder. Temporal grouping is Wan's: the first
frame is encoded alone, then groups of `temporal_compression` frames, so F = 1 + 4k frames give 1 + k latents, and
decoding gives 1 frame for the first latent and 4 for each later one.

Every temporal operation is causal (it only sees the past). Each causal module keeps its state in a `state` dict
(module -> tensors) that the caller threads through; a whole-sequence pass is the same code with a fresh dict, so
streaming decode (`decode_step` with a `DecodeCache`) equals full decode by construction, and the tests check it.

Depth (when `cfg.depth_channel`): the 4th channel is metric z-depth in metres. It enters the network as normalised
inverse depth, u = (1/d - 1/far) / (1/near - 1/far) in [0, 1] (invalid or non-positive depth -> u = 0, i.e. far),
mapped like RGB to [-1, 1]; the decoder's output is mapped back with d = 1 / (u (1/near - 1/far) + 1/far).
Inverse depth spends the latent's precision near the camera, where parallax (and the spatial memory) needs it.

API (shapes: video [B, C, F, H, W], C = cfg.video_channels, rgb in [0, 1], depth metric; latents
[B, cfg.latent_channels, f, H/s, W/s] normalised with cfg.latent_mean/std):
    vae = VideoVAE(cfg)
    dist = vae.encode(video, chunked=False)        -> LatentDist (.mode(), .sample(generator), .kl())
    ctl = vae.encode_control(scene, mask)          -> [B, 2z, f, h, w] control latents (scene ++ coverage mask)
    video = vae.decode(z, tile=0, overlap=2)       -> full decode (tile > 0: spatial tiles of `tile` latents)
    cache = vae.new_decode_cache(tile=0)           streaming: frames = vae.decode_step(z[:, :, i:i+1], cache)
    for frames in vae.decode_stream(z): ...         one latent frame at a time (1 frame, then 4 per latent)
    recon, dist = vae(video)                        training forward (model-space recon: see to_model_space)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.model.configs import ModelConfig

State = dict  # nn.Module -> that module's causal state, threaded through one encode/decode pass


# --------------------------------------------------------------------------------------------- causal primitives
def _frames_to_images(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).flatten(0, 1)  # [B, C, T, H, W] -> [B*T, C, H, W]


def _images_to_frames(x: torch.Tensor, batch: int) -> torch.Tensor:
    return x.unflatten(0, (batch, -1)).transpose(1, 2)  # [B*T, C, H, W] -> [B, C, T, H, W]


class CausalConv3d(nn.Conv3d):
    """3D conv padded only on the past in time (zeros before the first frame, cached frames afterwards).

    The weights have the Conv3d layout [Cout, Cin, kt, kh, kw]; the product runs as one 2D convolution over the
    frames with the kt temporal taps stacked on the channel axis (`temporal_conv`), because PyTorch's CPU conv3d
    falls back to a slow im2col kernel while conv2d runs on oneDNN (about 10x faster at these sizes)."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int, int]):
        kernel = (kernel,) * 3 if isinstance(kernel, int) else tuple(kernel)
        super().__init__(cin, cout, kernel, padding=(0, kernel[1] // 2, kernel[2] // 2))
        self.past = kernel[0] - 1  # frames of context each output frame needs

    def forward(self, x: torch.Tensor, state: State | None = None) -> torch.Tensor:  # [B, C, T, H, W]
        xt = x.transpose(1, 2)  # [B, T, C, H, W]
        if self.past > 0:
            prev = None if state is None else state.get(self)
            if prev is None and xt.shape[1] == 1:
                # a clip's first frame alone (a history frame, a reference, the decoder's warm-up): its past is
                # zeros, so only the last temporal tap contributes (1/kt of the work, the same result)
                if state is not None:
                    state[self] = torch.cat([xt.new_zeros(xt.shape[0], self.past - 1, *xt.shape[2:]), xt], 1)
                return temporal_conv(xt, self.weight[:, :, -1:], self.bias, 1, self.padding[1:]).transpose(1, 2)
            if prev is None:
                prev = xt.new_zeros(xt.shape[0], self.past, *xt.shape[2:])
            xt = torch.cat([prev, xt], dim=1)
            if state is not None:
                state[self] = xt[:, -self.past :]
        return temporal_conv(xt, self.weight, self.bias, 1, self.padding[1:]).transpose(1, 2)


def temporal_conv(xt: torch.Tensor, weight: torch.Tensor, bias, stride: int, padding) -> torch.Tensor:
    """Valid (unpadded) conv along time with temporal `stride`, same-padded in space, via one conv2d.

    Time-major in and out: xt [B, T, C, H, W], weight [Cout, C, kt, kh, kw] -> [B, (T - kt) // stride + 1, Cout,
    H, W]. Callers hand [B, C, T, H, W] tensors over as `.transpose(1, 2)` views, so activations stay time-major in
    memory from one conv to the next and the frame batching below needs no transposing copies."""
    b, t, c, h, w = xt.shape
    kt = weight.shape[2]
    n = (t - kt) // stride + 1
    if kt == 1 and stride == 1:
        taps = xt
    else:  # [B, n, kt*C, H, W]: tap i of output frame j is input frame j*stride + i
        taps = torch.cat([xt[:, i : i + stride * (n - 1) + 1 : stride] for i in range(kt)], dim=2)
    w2 = weight.transpose(1, 2).reshape(weight.shape[0], kt * c, *weight.shape[3:])  # [Cout, kt*C, kh, kw]
    y = F.conv2d(taps.reshape(b * n, kt * c, h, w), w2, bias, padding=padding)
    return y.view(b, n, *y.shape[1:])


class ChannelRMSNorm(nn.Module):
    """RMS norm over channels (axis 1) with a per-channel gain; `images` picks a [B,C,H,W] or [B,C,T,H,W] gain."""

    def __init__(self, dim: int, images: bool = False):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, *((1, 1) if images else (1, 1, 1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # = F.normalize(x, dim=1) * sqrt(C) * gamma (Wan's definition), but a plain sum of squares over the
        # channel axis is ~20x faster on CPU than the vector_norm kernel F.normalize runs.
        inv = torch.rsqrt(x.square().sum(1, keepdim=True).clamp_min(1e-24))
        return x * inv * (self.gamma * self.scale)


class TemporalDown(nn.Conv3d):
    """Stride-2 temporal conv (kernel 3, no padding) where the clip's first frame passes alone (its own group)."""

    def __init__(self, dim: int):
        super().__init__(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, state: State) -> torch.Tensor:
        buf = state.get(self)
        outs = []
        if buf is None:
            outs.append(x[:, :, :1])
            seq = x
        else:
            seq = torch.cat([buf, x], dim=2)
        n = (seq.shape[2] - 1) // 2  # complete windows (t, t+1, t+2) at stride 2
        if n > 0:
            y = temporal_conv(seq[:, :, : 2 * n + 1].transpose(1, 2), self.weight, self.bias, 2, (0, 0))
            outs.append(y.transpose(1, 2))
        state[self] = seq[:, :, 2 * n :]  # the frame(s) the next window starts from
        return torch.cat(outs, dim=2)


class TemporalUp(CausalConv3d):
    """Causal temporal 2x upsampling: a conv to 2C channels split into two frames; the first frame stays single."""

    def __init__(self, dim: int):
        super().__init__(dim, dim * 2, (3, 1, 1))

    def forward(self, x: torch.Tensor, state: State) -> torch.Tensor:
        key = (self, "started")  # the conv's own cache lives under `self`
        started = state.get(key, False)
        state[key] = True
        first, rest = (x[:, :, :0], x) if started else (x[:, :, :1], x[:, :, 1:])
        if rest.shape[2] == 0:
            return first
        y = super().forward(rest, state)  # [B, 2C, T, H, W]
        b, c2, t, h, w = y.shape
        y = y.reshape(b, 2, c2 // 2, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c2 // 2, 2 * t, h, w)
        return torch.cat([first, y], dim=2)


class AvgDown(nn.Module):
    """Parameter-free shortcut: fold (ft, fs, fs) neighbourhoods into channels, then average channel groups."""

    def __init__(self, cin: int, cout: int, ft: int, fs: int):
        super().__init__()
        self.cout, self.ft, self.fs = cout, ft, fs
        factor = ft * fs * fs
        if (cin * factor) % cout:
            raise ValueError(f"AvgDown: {cin} channels x {factor} do not split into {cout} groups")
        self.group = cin * factor // cout

    def forward(self, x: torch.Tensor, state: State) -> torch.Tensor:
        ft, fs = self.ft, self.fs
        if ft > 1:
            buf = state.get(self)
            if buf is None:  # the first frame is grouped with ft-1 zero frames (its own group)
                buf = x.new_zeros(x.shape[0], x.shape[1], ft - 1, *x.shape[3:])
            x = torch.cat([buf, x], dim=2)
            n = x.shape[2] // ft
            state[self] = x[:, :, n * ft :]
            x = x[:, :, : n * ft]
        b, c, t, h, w = x.shape
        x = x.view(b, c, t // ft, ft, h // fs, fs, w // fs, fs).permute(0, 1, 3, 5, 7, 2, 4, 6)
        x = x.reshape(b, self.cout, self.group, t // ft, h // fs, w // fs)
        return x.mean(dim=2)


class DupUp(nn.Module):
    """Parameter-free shortcut of the decoder: repeat channels, unfold them into (ft, fs, fs) neighbourhoods."""

    def __init__(self, cin: int, cout: int, ft: int, fs: int):
        super().__init__()
        self.cout, self.ft, self.fs = cout, ft, fs
        factor = ft * fs * fs
        if (cout * factor) % cin:
            raise ValueError(f"DupUp: {cout} channels x {factor} are not a multiple of {cin}")
        self.repeats = cout * factor // cin

    def forward(self, x: torch.Tensor, state: State) -> torch.Tensor:
        ft, fs = self.ft, self.fs
        b, _, t, h, w = x.shape
        x = x.repeat_interleave(self.repeats, dim=1).view(b, self.cout, ft, fs, fs, t, h, w)
        x = x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, self.cout, t * ft, h * fs, w * fs)
        if ft > 1 and not state.get(self, False):
            x = x[:, :, ft - 1 :]  # the first latent frame stands for one frame only
        state[self] = True
        return x


# --------------------------------------------------------------------------------------------- blocks
class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = ChannelRMSNorm(cin)
        self.conv1 = CausalConv3d(cin, cout, 3)
        self.norm2 = ChannelRMSNorm(cout)
        self.conv2 = CausalConv3d(cout, cout, 3)
        self.shortcut = CausalConv3d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor, state: State) -> torch.Tensor:
        h = x if self.shortcut is None else self.shortcut(x)
        x = self.conv1(F.silu(self.norm1(x)), state)
        x = self.conv2(F.silu(self.norm2(x)), state)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention within each frame (no temporal mixing, so it stays causal)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = ChannelRMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)
        nn.init.zeros_(self.proj.weight)  # starts as identity

    def forward(self, x: torch.Tensor, state: State) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = self.norm(_frames_to_images(x))
        q, k, v = self.to_qkv(y).flatten(2).transpose(1, 2).unsqueeze(1).chunk(3, dim=-1)  # [BT, 1, HW, C] each
        y = F.scaled_dot_product_attention(q, k, v).squeeze(1).transpose(1, 2).reshape(b * t, c, h, w)
        return x + _images_to_frames(self.proj(y), b)


class Resample(nn.Module):
    """2x down/upsampling in space and/or time. Down: spatial conv then temporal; up: temporal then spatial."""

    def __init__(self, dim: int, spatial: bool, temporal: bool, up: bool):
        super().__init__()
        self.up = up
        self.time_conv = (TemporalUp(dim) if up else TemporalDown(dim)) if temporal else None
        stride = 1 if up else 2
        self.spatial_conv = nn.Conv2d(dim, dim, 3, stride=stride, padding=1 if up else 0) if spatial else None

    def forward(self, x: torch.Tensor, state: State) -> torch.Tensor:
        if self.up and self.time_conv is not None:
            x = self.time_conv(x, state)
        if self.spatial_conv is not None:
            b = x.shape[0]
            y = _frames_to_images(x)
            if self.up:
                y = F.interpolate(y.float(), scale_factor=2.0, mode="nearest-exact").type_as(y)
            else:
                y = F.pad(y, (0, 1, 0, 1))  # asymmetric pad: the stride-2 window starts at the top-left pixel
            x = _images_to_frames(self.spatial_conv(y), b)
        if not self.up and self.time_conv is not None:
            x = self.time_conv(x, state)
        return x


class DownLevel(nn.Module):
    def __init__(self, cin: int, cout: int, num_blocks: int, spatial: bool, temporal: bool):
        super().__init__()
        self.blocks = nn.ModuleList(ResidualBlock(cin if i == 0 else cout, cout) for i in range(num_blocks))
        self.resample = Resample(cout, spatial, temporal, up=False) if (spatial or temporal) else None
        self.shortcut = AvgDown(cin, cout, 2 if temporal else 1, 2 if spatial else 1)

    def forward(self, x: torch.Tensor, state: State) -> torch.Tensor:
        h = self.shortcut(x, state)
        for block in self.blocks:
            x = block(x, state)
        if self.resample is not None:
            x = self.resample(x, state)
        return x + h


class UpLevel(nn.Module):
    def __init__(self, cin: int, cout: int, num_blocks: int, spatial: bool, temporal: bool):
        super().__init__()
        self.blocks = nn.ModuleList(ResidualBlock(cin if i == 0 else cout, cout) for i in range(num_blocks))
        resample = spatial or temporal
        self.resample = Resample(cout, spatial, temporal, up=True) if resample else None
        self.shortcut = DupUp(cin, cout, 2 if temporal else 1, 2 if spatial else 1) if resample else None

    def forward(self, x: torch.Tensor, state: State) -> torch.Tensor:
        h = None if self.shortcut is None else self.shortcut(x, state)
        for block in self.blocks:
            x = block(x, state)
        if self.resample is not None:
            x = self.resample(x, state)
        return x if h is None else x + h


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        mult = cfg.vae_dim_mult
        dims = [cfg.vae_dim * u for u in (1, *mult)]
        levels = len(mult) - 1
        self.conv1 = CausalConv3d(cfg.video_channels * cfg.vae_patch**2, dims[0], 3)
        self.downsamples = nn.ModuleList(
            DownLevel(
                dims[i],
                dims[i + 1],
                cfg.vae_num_res_blocks,
                spatial=i < levels and cfg.vae_spatial_down[i],
                temporal=i < levels and cfg.vae_temporal_down[i],
            )
            for i in range(len(mult))
        )
        d = dims[-1]
        self.middle = nn.ModuleList([ResidualBlock(d, d), AttentionBlock(d), ResidualBlock(d, d)])
        self.head_norm = ChannelRMSNorm(d)
        self.head_conv = CausalConv3d(d, 2 * cfg.latent_channels, 3)

    def forward(self, x: torch.Tensor, state: State) -> torch.Tensor:
        x = self.conv1(x, state)
        for layer in (*self.downsamples, *self.middle):
            x = layer(x, state)
        return self.head_conv(F.silu(self.head_norm(x)), state)


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        mult = cfg.vae_dim_mult
        dims = [cfg.vae_dec_dim * u for u in (mult[-1], *mult[::-1])]
        levels = len(mult) - 1
        spatial_up, temporal_up = cfg.vae_spatial_down[::-1], cfg.vae_temporal_down[::-1]
        self.conv1 = CausalConv3d(cfg.latent_channels, dims[0], 3)
        d = dims[0]
        self.middle = nn.ModuleList([ResidualBlock(d, d), AttentionBlock(d), ResidualBlock(d, d)])
        self.upsamples = nn.ModuleList(
            UpLevel(
                dims[i],
                dims[i + 1],
                cfg.vae_num_res_blocks + 1,
                spatial=i < levels and spatial_up[i],
                temporal=i < levels and temporal_up[i],
            )
            for i in range(len(mult))
        )
        self.head_norm = ChannelRMSNorm(dims[-1])
        self.head_conv = CausalConv3d(dims[-1], cfg.video_channels * cfg.vae_patch**2, 3)

    def forward(self, x: torch.Tensor, state: State) -> torch.Tensor:
        x = self.conv1(x, state)
        for layer in (*self.middle, *self.upsamples):
            x = layer(x, state)
        return self.head_conv(F.silu(self.head_norm(x)), state)


# --------------------------------------------------------------------------------------------- latent distribution
@dataclass
class LatentDist:
    """Diagonal Gaussian posterior. mean/logvar are raw [B, z, f, h, w]; `mode`/`sample` return normalised latents."""

    mean: torch.Tensor
    logvar: torch.Tensor
    shift: torch.Tensor  # [1, z, 1, 1, 1] latent mean of the data
    scale: torch.Tensor  # [1, z, 1, 1, 1] latent std of the data

    def mode(self) -> torch.Tensor:
        return (self.mean - self.shift) / self.scale

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return (self.mean + torch.exp(0.5 * self.logvar) * eps - self.shift) / self.scale

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) of the raw posterior, mean over latent elements -> [B]."""
        kl = 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar)
        return kl.flatten(1).mean(1)


@dataclass
class DecodeCache:
    """Causal state carried between `decode_step` calls; one state per spatial tile when tiling."""

    tile: int = 0
    overlap: int = 0
    states: dict = field(default_factory=dict)  # tile span -> State
    frames_in: int = 0  # latent frames decoded so far

    def fork(self) -> "DecodeCache":
        """A copy that decodes on from here while this one stays as it is (states are replaced, never mutated)."""
        return DecodeCache(self.tile, self.overlap, {k: dict(v) for k, v in self.states.items()}, self.frames_in)


# --------------------------------------------------------------------------------------------- the autoencoder
class VideoVAE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        z = cfg.latent_channels
        self.encoder = Encoder(cfg)
        self.to_moments = CausalConv3d(2 * z, 2 * z, 1)
        self.from_latent = CausalConv3d(z, z, 1)
        self.decoder = Decoder(cfg)

    # ---- pixel <-> model space
    def to_model_space(self, video: torch.Tensor) -> torch.Tensor:
        """video [B, C, F, H, W] (rgb in [0,1], metric depth) -> [-1, 1] model space, pixel-unshuffled."""
        cfg = self.cfg
        if video.dim() != 5 or video.shape[1] != cfg.video_channels:
            raise ValueError(
                f"VAE input must be [B, {cfg.video_channels}, F, H, W] ({'RGB-D' if cfg.depth_channel else 'RGB'}); "
                f"got {tuple(video.shape)}"
            )
        if video.shape[-2:] != (cfg.height, cfg.width) and (
            video.shape[-2] % cfg.spatial_compression or video.shape[-1] % cfg.spatial_compression
        ):
            raise ValueError(f"frame size {tuple(video.shape[-2:])} is not divisible by {cfg.spatial_compression}")
        x = video[:, :3] * 2 - 1
        if cfg.depth_channel:
            x = torch.cat([x, depth_to_unit(video[:, 3:], cfg.depth_near, cfg.depth_far) * 2 - 1], dim=1)
        return pixel_unshuffle(x, cfg.vae_patch)

    def from_model_space(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of `to_model_space`: rgb clamped to [0, 1], depth back to metres."""
        x = pixel_shuffle(x, self.cfg.vae_patch)
        rgb = ((x[:, :3] + 1) / 2).clamp(0, 1)
        if not self.cfg.depth_channel:
            return rgb
        depth = unit_to_depth((x[:, 3:] + 1) / 2, self.cfg.depth_near, self.cfg.depth_far)
        return torch.cat([rgb, depth], dim=1)

    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        mean = torch.tensor(cfg.latent_mean or [0.0] * cfg.latent_channels, dtype=like.dtype, device=like.device)
        std = torch.tensor(cfg.latent_std or [1.0] * cfg.latent_channels, dtype=like.dtype, device=like.device)
        return mean.view(1, -1, 1, 1, 1), std.view(1, -1, 1, 1, 1)

    # ---- encode
    def encode(self, video: torch.Tensor, chunked: bool = False) -> LatentDist:
        """video [B, C, 1 + k*tc, H, W] -> LatentDist over [B, z, 1 + k, H/s, W/s].

        chunked=True runs the encoder on the first frame, then on groups of `temporal_compression` frames, with the
        causal state carried (Wan's schedule: bounded memory for long clips; same result as one pass)."""
        return self._encode_model_space(self.to_model_space(video), chunked)

    def _encode_model_space(self, x: torch.Tensor, chunked: bool, state: State | None = None) -> LatentDist:
        """Model-space video -> latent distribution. A non-empty state continues a streamed clip: x is a later part
        of it, whole groups of temporal_compression frames, encoded group by group with the state carried on."""
        tc = self.cfg.temporal_compression
        if state:
            if x.shape[2] % tc:
                raise ValueError(f"a later part of a streamed clip needs a multiple of {tc} frames; got {x.shape[2]}")
            pieces = [x[:, :, i : i + tc] for i in range(0, x.shape[2], tc)]
        else:
            self.cfg.video_to_latent_frames(x.shape[2])  # validates the frame count
            pieces = [x[:, :, :1]] + [x[:, :, i : i + tc] for i in range(1, x.shape[2], tc)] if chunked else [x]
        state = {} if state is None else state
        h = torch.cat([self.encoder(p, state) for p in pieces], dim=2)
        mean, logvar = self.to_moments(h).chunk(2, dim=1)
        shift, scale = self._latent_stats(mean)
        return LatentDist(mean, logvar.clamp(-30.0, 20.0), shift, scale)

    def encode_control(self, scene: torch.Tensor, mask: torch.Tensor, state: State | None = None) -> torch.Tensor:
        """Control latents for the DiT: scene video [B, C, F, H, W] (rendered memory, same space as `encode`) and
        coverage mask [B, 1, F, H, W] in {0, 1} -> [B, 2z, f, h, w] = scene latents ++ mask latents (modes).

        The mask becomes a video with every channel at -1 (no points) or +1 (covered); both videos go through the
        encoder in one batch. state streams a clip in parts (the same latents as one pass): an empty dict with the
        first part (1 + k * temporal_compression frames), then the same dict, updated in place, with each later
        part (a multiple of temporal_compression frames). A shallow copy of it (`dict(state)`) forks the clip."""
        if mask.dim() != 5 or mask.shape[1] != 1 or mask.shape[2:] != scene.shape[2:]:
            raise ValueError(
                f"mask must be [B, 1, F, H, W] matching scene {tuple(scene.shape)}; got {tuple(mask.shape)}"
            )
        x_scene = self.to_model_space(scene)
        mask_video = (mask.to(scene.dtype) * 2 - 1).expand(-1, self.cfg.video_channels, -1, -1, -1)
        x = torch.cat([x_scene, pixel_unshuffle(mask_video, self.cfg.vae_patch)], dim=0)
        z = self._encode_model_space(x, chunked=state is not None, state=state).mode()
        return torch.cat(z.chunk(2, dim=0), dim=1)

    # ---- decode
    def _decode_raw(self, z: torch.Tensor, state: State) -> torch.Tensor:
        """Normalised latents [B, z, f, h, w] -> model-space output [B, C*p*p, F, h*s/p, w*s/p]."""
        shift, scale = self._latent_stats(z)
        return self.decoder(self.from_latent(z * scale + shift), state)

    def _check_latent(self, z: torch.Tensor) -> None:
        if z.dim() != 5 or z.shape[1] != self.cfg.latent_channels:
            raise ValueError(f"latents must be [B, {self.cfg.latent_channels}, f, h, w]; got {tuple(z.shape)}")

    def decode(self, z: torch.Tensor, tile: int = 0, overlap: int = 2, postprocess: bool = True) -> torch.Tensor:
        """Latents [B, z, f, h, w] -> video [B, C, 1 + tc*(f-1), H, W] in one pass.

        tile > 0 decodes spatial tiles of `tile` x `tile` latents overlapping by `overlap`, blended linearly, so
        peak memory follows the tile rather than the frame (seams are approximate, not bit-equal to untiled)."""
        self._check_latent(z)
        if tile > 0:
            out = _tiled(lambda zz, st: self._decode_raw(zz, st), z, tile, overlap, {}, self._up_factor())
        else:
            out = self._decode_raw(z, {})
        return self.from_model_space(out) if postprocess else out

    def new_decode_cache(self, tile: int = 0, overlap: int = 2) -> DecodeCache:
        return DecodeCache(tile=tile, overlap=overlap)

    def decode_step(self, z: torch.Tensor, cache: DecodeCache, postprocess: bool = True) -> torch.Tensor:
        """Decode the next latent frame(s) [B, z, n, h, w] of a clip, carrying the causal state in `cache`.

        The first latent frame of a clip yields 1 video frame, every later one `temporal_compression`."""
        self._check_latent(z)
        if cache.tile > 0:
            out = _tiled(
                lambda zz, st: self._decode_raw(zz, st), z, cache.tile, cache.overlap, cache.states, self._up_factor()
            )
        else:
            out = self._decode_raw(z, cache.states.setdefault(None, {}))
        cache.frames_in += z.shape[2]
        return self.from_model_space(out) if postprocess else out

    def decode_stream(
        self, z: torch.Tensor, cache: DecodeCache | None = None, postprocess: bool = True
    ) -> Iterator[torch.Tensor]:
        """Yield the video frames of each latent frame as soon as they are decoded."""
        cache = cache or self.new_decode_cache()
        for i in range(z.shape[2]):
            yield self.decode_step(z[:, :, i : i + 1], cache, postprocess)

    def _up_factor(self) -> int:
        return self.cfg.spatial_compression // self.cfg.vae_patch

    def forward(self, video: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True):
        """Training pass: (reconstruction in model space [B, C*p*p, F, H/p, W/p], posterior)."""
        dist = self.encode(video)
        z = dist.sample(generator) if sample else dist.mode()
        return self._decode_raw(z, {}), dist


# --------------------------------------------------------------------------------------------- helpers
def pixel_unshuffle(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, F, H, W] -> [B, C*p*p, F, H/p, W/p], channel order (c, w-offset, h-offset) as Wan's patchify."""
    if p == 1:
        return x
    b, c, f, h, w = x.shape
    x = x.view(b, c, f, h // p, p, w // p, p).permute(0, 1, 6, 4, 2, 3, 5)
    return x.reshape(b, c * p * p, f, h // p, w // p)


def pixel_shuffle(x: torch.Tensor, p: int) -> torch.Tensor:
    """Inverse of `pixel_unshuffle`."""
    if p == 1:
        return x
    b, cpp, f, h, w = x.shape
    c = cpp // (p * p)
    x = x.view(b, c, p, p, f, h, w).permute(0, 1, 4, 5, 3, 6, 2)  # (b, c, r, q, f, h, w) -> (b, c, f, h, q, w, r)
    return x.reshape(b, c, f, h * p, w * p)


def depth_to_unit(depth: torch.Tensor, near: float, far: float) -> torch.Tensor:
    """Metric depth -> normalised inverse depth in [0, 1] (1 = near, 0 = far or invalid)."""
    valid = torch.isfinite(depth) & (depth > 0)
    d = torch.where(valid, depth, torch.full_like(depth, far)).clamp(near, far)
    return (1.0 / d - 1.0 / far) / (1.0 / near - 1.0 / far)


def unit_to_depth(u: torch.Tensor, near: float, far: float) -> torch.Tensor:
    """Inverse of `depth_to_unit` (u is clamped to [0, 1], so the result lies in [near, far])."""
    return 1.0 / (u.clamp(0, 1) * (1.0 / near - 1.0 / far) + 1.0 / far)


def _tile_spans(total: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    if tile >= total:
        return [(0, total)]
    if overlap >= tile:
        raise ValueError(f"tile overlap {overlap} must be smaller than the tile {tile}")
    spans, start = [], 0
    while True:
        end = min(start + tile, total)
        spans.append((max(0, end - tile), end))
        if end >= total:
            return spans
        start += tile - overlap


def _ramp(n: int, left: int, right: int, like: torch.Tensor) -> torch.Tensor:
    """1D blend weights: rise over `left` samples, fall over `right` (strictly positive everywhere)."""
    w = torch.ones(n, dtype=like.dtype, device=like.device)
    if left > 0:
        w[:left] = torch.arange(1, left + 1, dtype=like.dtype, device=like.device) / (left + 1)
    if right > 0:
        w[n - right :] = torch.minimum(
            w[n - right :], torch.arange(right, 0, -1, dtype=like.dtype, device=like.device) / (right + 1)
        )
    return w


def _tiled(fn, z: torch.Tensor, tile: int, overlap: int, states: dict, up: int) -> torch.Tensor:
    """Run `fn(z_tile, state)` on overlapping spatial tiles of z and blend the outputs (each tile keeps its state)."""
    _, _, _, h, w = z.shape
    acc = weight = None
    for h0, h1 in _tile_spans(h, tile, overlap):
        for w0, w1 in _tile_spans(w, tile, overlap):
            out = fn(z[:, :, :, h0:h1, w0:w1], states.setdefault((h0, h1, w0, w1), {}))  # [B, C, F, th, tw]
            if acc is None:
                acc = out.new_zeros(*out.shape[:3], h * up, w * up)
                weight = out.new_zeros(1, 1, 1, h * up, w * up)
            th, tw = out.shape[-2:]
            ov = overlap * up
            m = _ramp(th, ov if h0 > 0 else 0, ov if h1 < h else 0, out)[:, None] * _ramp(
                tw, ov if w0 > 0 else 0, ov if w1 < w else 0, out
            )[None]
            acc[..., h0 * up : h0 * up + th, w0 * up : w0 * up + tw] += out * m
            weight[..., h0 * up : h0 * up + th, w0 * up : w0 * up + tw] += m
    return acc / weight


def count_parameters(module: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in module.parameters())
