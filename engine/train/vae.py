"""Stage "vae": train the causal RGB-D autoencoder on clips of the world dataset (the first stage from scratch).

Clips have 1 + k * temporal_compression frames so they exercise the causal grouping exactly as generation does.
Loss: L1 between the reconstruction and the input in model space (rgb in [-1, 1], depth as normalised inverse
depth), with the depth channels weighted by `depth_weight`, plus `kl_weight` times the KL to the unit Gaussian.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from engine.model.configs import ModelConfig
from engine.model.vae import VideoVAE, pixel_unshuffle
from engine.train.loop import per_sample_generators


class VaeClips(Dataset):
    """RGB-D clips [C, F, h, w] from a WorldDataset (depth appended as the 4th channel when the model has it).

    `crop` > 0 takes a random crop of that size (the VAE is convolutional, so it trains on crops at a fraction of
    the cost and runs on whole frames); the crop position depends only on the sample index (exact resume, DDP)."""

    def __init__(self, dataset, cfg: ModelConfig, crop: int = 0, seed: int = 0):
        if crop and (crop % cfg.spatial_compression or crop > min(cfg.height, cfg.width)):
            raise ValueError(f"crop {crop} must be a multiple of {cfg.spatial_compression} and fit in the frame")
        self.dataset, self.cfg, self.crop, self.seed = dataset, cfg, int(crop), seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        item = self.dataset[i]
        video = item["rgb"]  # [F, 3, H, W]
        if self.cfg.depth_channel:
            video = torch.cat([video, item["depth"]], 1)
        if self.crop:
            H, W = video.shape[-2:]
            rng = np.random.default_rng([self.seed, i])
            y, x = int(rng.integers(0, H - self.crop + 1)), int(rng.integers(0, W - self.crop + 1))
            video = video[..., y : y + self.crop, x : x + self.crop]
        return {"video": video.permute(1, 0, 2, 3).contiguous()}  # [C, F, h, w]


def vae_clip_frames(cfg: ModelConfig, latent_frames: int = 2) -> int:
    return cfg.latent_to_video_frames(latent_frames)


def make_vae_loss(cfg: ModelConfig, kl_weight: float = 1e-6, depth_weight: float = 1.0):
    def loss_fn(vae: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        video = batch["video"]  # [B, C, F, H, W]
        module = vae.module if hasattr(vae, "module") else vae
        gens = per_sample_generators(batch["sample_seed"])
        dist = module.encode(video)
        eps = torch.stack([torch.randn(dist.mean.shape[1:], generator=g) for g in gens]).to(dist.mean)
        # reparameterised sample with per-sample noise, normalised as the decoder expects
        z = (dist.mean + torch.exp(0.5 * dist.logvar) * eps - dist.shift) / dist.scale
        recon = module._decode_raw(z, {})  # model space [B, C*p*p, F, H/p, W/p]
        target = module.to_model_space(video)
        err = (recon - target).abs()
        p2 = cfg.vae_patch**2
        weights = torch.ones(cfg.video_channels, device=err.device)
        if cfg.depth_channel:
            weights[3] = depth_weight
        # pixel_unshuffle packs channel c's p*p sub-pixels together: channel-major layout
        w = weights.repeat_interleave(p2).view(1, -1, 1, 1, 1)
        rec = (err * w).mean()
        kl = dist.kl().mean()
        logs = {"loss_rgb": float(err[:, : 3 * p2].mean().detach()), "kl": float(kl.detach())}
        if cfg.depth_channel:
            logs["loss_depth"] = float(err[:, 3 * p2 : 4 * p2].mean().detach())
        return rec + kl_weight * kl, logs

    return loss_fn


def check_channel_layout(cfg: ModelConfig) -> None:
    """pixel_unshuffle must keep each input channel's sub-pixels contiguous (the loss weights rely on it)."""
    x = torch.arange(cfg.video_channels, dtype=torch.float32).view(1, -1, 1, 1, 1).expand(1, -1, 1, cfg.vae_patch, cfg.vae_patch)
    packed = pixel_unshuffle(x, cfg.vae_patch)[0, :, 0, 0, 0]
    expected = torch.arange(cfg.video_channels).repeat_interleave(cfg.vae_patch**2).float()
    if not torch.equal(packed, expected):
        raise AssertionError("pixel_unshuffle channel layout changed; update the VAE loss weights")


def build_vae(cfg: ModelConfig) -> VideoVAE:
    check_channel_layout(cfg)
    return VideoVAE(cfg)
