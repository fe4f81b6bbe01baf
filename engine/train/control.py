"""Stage "control": distil the VAE's control encoding into the small `ControlEncoder` (engine.model.control_encoder).

The teacher is a trained model's VAE (`VideoVAE.encode_control`), the inputs are the DiT stage's own samples (the
memory rendered along [history | target] poses: scene video and coverage), and the loss is the mean squared error
between the student's control latents and the teacher's (normalised latents, so every channel counts as the DiT
sees it). The teacher runs once per sample: the inputs and its latents are stored first (`build_control_data`,
resumable), and training then costs the student alone.

    <dir>/scene_rgb.npy    [N, 3, F, H, W] uint8    the rendered memory (renders of uint8 colours: exact)
    <dir>/scene_depth.npy  [N, 1, F, H, W] float16  its depth (metres)
    <dir>/coverage.npy     [N, 1, F, H, W] uint8    1 where the memory covers the pixel
    <dir>/target.npy       [N, 2z, f, h, w] float16 the teacher's control latents of the stored (rounded) inputs
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from engine.model.configs import ModelConfig
from engine.train.cache import CachedArrays, build_arrays

FORMAT = "spatia-control-distill"
KEYS = ("scene_rgb", "scene_depth", "coverage", "target")


def _stored_inputs(batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw samples -> (rgb uint8 [B, 3, F, H, W], depth float16 [B, 1, F, H, W] or None, coverage uint8)."""
    scene = batch["scene"]
    rgb = (scene[:, :3] * 255).round().clamp(0, 255).to(torch.uint8)
    depth = scene[:, 3:].to(torch.float16) if scene.shape[1] > 3 else None
    return rgb, depth, (batch["coverage"] > 0.5).to(torch.uint8)


def _scene(rgb: torch.Tensor, depth: torch.Tensor | None) -> torch.Tensor:
    """Stored inputs -> the scene video the encoders take [B, C, F, H, W] (rgb in [0, 1], metric depth)."""
    scene = rgb.float() / 255.0
    return scene if depth is None else torch.cat([scene, depth.float()], 1)


def build_control_data(samples: Dataset, vae: nn.Module, cfg: ModelConfig, out: str | Path, every: int = 1,
                       batch_size: int = 8, workers: int = 1, progress: bool = True) -> Path:
    """Store every `every`-th sample's scene video and coverage with the teacher's control latents of them."""
    vae = vae.eval()
    f = cfg.history_frames + cfg.chunk_frames
    lf = cfg.history_latent_frames + cfg.chunk_latent_frames
    h, w = cfg.height, cfg.width
    shapes = {
        "scene_rgb": ((3, f, h, w), np.uint8),
        "coverage": ((1, f, h, w), np.uint8),
        "target": ((2 * cfg.latent_channels, lf, cfg.latent_height, cfg.latent_width), np.float16),
    }
    if cfg.depth_channel:
        shapes["scene_depth"] = ((1, f, h, w), np.float16)

    @torch.no_grad()
    def encode(batch: dict) -> dict[str, torch.Tensor]:
        rgb, depth, coverage = _stored_inputs(batch)
        target = vae.encode_control(_scene(rgb, depth), coverage.float())  # the teacher sees what is stored
        out = {"scene_rgb": rgb, "coverage": coverage, "target": target}
        if depth is not None:
            out["scene_depth"] = depth
        return out

    return build_arrays(samples, encode, shapes, cfg, out, FORMAT, every, batch_size, workers, progress,
                        "teacher control latents")


class ControlData(CachedArrays):
    """A finished `build_control_data` folder: per sample {"scene" [C, F, H, W], "coverage" [1, F, H, W],
    "target" [2z, f, h, w]}, float32."""

    def __init__(self, root: str | Path, cfg: ModelConfig):
        keys = KEYS if cfg.depth_channel else tuple(k for k in KEYS if k != "scene_depth")
        super().__init__(root, cfg, FORMAT, keys, "control distillation data",
                         "the control stage builds it from the 'data' samples first")

    def __getitem__(self, i: int) -> dict:
        a = self.arrays
        rgb = torch.from_numpy(np.asarray(a["scene_rgb"][i]))
        depth = torch.from_numpy(np.asarray(a["scene_depth"][i])) if "scene_depth" in a else None
        return {"scene": _scene(rgb[None], None if depth is None else depth[None])[0],
                "coverage": torch.from_numpy(np.asarray(a["coverage"][i], np.float32)),
                "target": torch.from_numpy(np.asarray(a["target"][i], np.float32))}


def make_control_loss():
    """MSE between the student's control latents and the teacher's; also logs the share of the target's variance
    left unexplained (`rel`: 0 is a perfect copy, 1 is no better than the batch mean)."""

    def loss_fn(student: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        target = batch["target"]
        pred = student.encode_control(batch["scene"], batch["coverage"])
        loss = F.mse_loss(pred.float(), target.float())
        with torch.no_grad():
            var = target.float().var(dim=(0, 2, 3, 4)).mean().clamp_min(1e-8)  # mean per-channel variance
            rel = float(loss.detach() / var)
        return loss, {"rel": rel}

    return loss_fn
