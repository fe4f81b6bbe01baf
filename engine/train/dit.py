"""Stage "dit": train the Spatia transformer on samples built the paper's way from the world dataset.

A sample is one chunk of a sequence: the preceding frame (history), the next `chunk_frames` frames (target), a
spatial memory built from other frames of the sequence with their true depth (dynamic pixels excluded), the
memory rendered along [history | target] poses (scene video + coverage), and references retrieved from the
candidate frames by the same retrieval the pipeline uses. With probability `revisit_prob` the memory also holds
frames from after the target clip, as when a camera comes back to a place it has seen (closed loops).

The loss (flow matching, logit-normal t) follows the notes: the preceding-frame latents get the augmentation
t_aug ~ U[0, 50] / 1000 on the same schedule (training only; the DiT still sees them at t = 0, as at inference),
and references, scene video and text are dropped at random for robustness and guidance. Beyond the notes, an
optional history corruption (`DitLossSettings.history_corruption`) blurs and noises the history latent of a share of
samples, so the model learns to take what the scene video covers from it rather than from a history frame that, at
inference, is its own imperfect output. The VAE is frozen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from engine import geometry
from engine.memory.pointcloud import SpatialMemory
from engine.memory.render import render
from engine.memory.retrieval import Candidate, retrieve
from engine.model.configs import ModelConfig
from engine.pipeline import retrieval_options
from engine.train.loop import per_sample_generators
from engine.world.dataset import list_sequences, load_array

T_AUG_MAX = 50  # of 1000 scheduler steps


@dataclass
class SampleSettings:
    voxel_size: float = 0.02
    memory_stride: int = 2  # every n-th context frame goes into the memory
    min_context: int = 4  # frames before the history frame that a sample needs
    revisit_prob: float = 0.3
    start_step: int = 2  # spacing of chunk starts within a sequence
    depth_range: tuple[float, float] = (0.05, 40.0)


class SpatiaSamples(Dataset):
    """Raw (un-encoded) training samples; `make_dit_loss` encodes them with the frozen VAE in batches."""

    def __init__(self, root, cfg: ModelConfig, settings: SampleSettings | None = None, sequences=None, seed: int = 0):
        self.cfg, self.settings, self.seed = cfg, settings or SampleSettings(), seed
        self.sequences = list_sequences(root, sequences)
        need = self.settings.min_context + 1 + cfg.chunk_frames
        self.index = [(s, start) for s, info in enumerate(self.sequences) if info.frames >= need
                      for start in range(self.settings.min_context, info.frames - cfg.chunk_frames, self.settings.start_step)]
        if not self.index:
            raise ValueError(f"{root}: no sequence has the {need} frames a sample needs")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        cfg, st = self.cfg, self.settings
        s, h = self.index[i]
        info = self.sequences[s]
        rng = np.random.default_rng([self.seed, i])
        rgb = load_array(info, "rgb")  # [N, H, W, 3] uint8 (memory-mapped)
        depth = load_array(info, "depth")  # [N, H, W] float16
        ids = load_array(info, "ids")
        n, H, W = depth.shape
        if (H, W) != (cfg.height, cfg.width):
            raise ValueError(f"sequence {info.name} is {W}x{H}; the model trains at {cfg.width}x{cfg.height}")
        K = geometry.intrinsics_to_K(info.intrinsics, W, H)
        Ks = np.broadcast_to(K, (n, 3, 3)) if K.ndim == 2 else K
        cams = [geometry.Camera(info.w2c[j], Ks[j], W, H) for j in range(n)]
        clip = np.arange(h, h + 1 + cfg.chunk_frames)  # [history | targets]

        context = list(range(h % st.memory_stride, h + 1, st.memory_stride))
        if rng.random() < st.revisit_prob:
            context += list(range(clip[-1] + 1, n, st.memory_stride))
        memory = SpatialMemory(voxel_size=st.voxel_size)
        for j in context:
            memory.insert_rgbd(rgb[j], np.asarray(depth[j], np.float32), cams[j].K, cams[j].w2c, frame_id=j,
                               exclude=ids[j] > 0, depth_range=st.depth_range)
        out = render(memory, [cams[j] for j in clip], point_size=st.voxel_size)

        candidates = [Candidate(j, cams[j]) for j in context if j != h]
        k = cfg.num_refs
        picks = retrieve("release", [cams[j] for j in clip[1:]], candidates, memory, **retrieval_options("release", cfg, k))
        refs = [j for j, _ in picks]
        if len(refs) < k:  # fill with the nearest candidates by camera centre (every sample has exactly k)
            near = sorted((c.frame_id for c in candidates if c.frame_id not in refs),
                          key=lambda j: np.linalg.norm(cams[j].center - cams[h].center))
            refs += near[: k - len(refs)]
        while len(refs) < k:
            refs.append(h)

        def video(idx):
            v = torch.from_numpy(np.array(rgb[idx])).permute(3, 0, 1, 2).float() / 255.0  # [3, F, H, W]
            if cfg.depth_channel:
                v = torch.cat([v, torch.from_numpy(np.asarray(depth[idx], np.float32))[None]], 0)
            return v

        scene = out.rgb.permute(1, 0, 2, 3)  # [3, F, H, W]
        if cfg.depth_channel:
            scene = torch.cat([scene, out.depth.permute(1, 0, 2, 3)], 0)
        return {
            "clip": video(clip),  # [C, 1 + Ft, H, W]
            "refs": video(np.array(refs)),  # [C, K, H, W]
            "scene": scene,  # [C, 1 + Ft, H, W]
            "coverage": out.coverage.permute(1, 0, 2, 3),  # [1, 1 + Ft, H, W]
        }


@dataclass
class DitLossSettings:
    t_aug_max: int = T_AUG_MAX
    drop_refs: float = 0.1
    drop_scene: float = 0.1
    short_chunk: float = 0.0  # probability of a batch keeping one target latent (the short first chunk after a turn)
    # Beyond the paper: with this probability a sample's history latent is degraded like the model's own output
    # (blurred, then noised to a level drawn up to `history_corruption_max`), on top of t_aug. At inference the
    # history is a generated frame; a model trained on true history copies it and ignores the scene video.
    history_corruption: float = 0.0
    history_corruption_max: float = 0.6
    logit_mean: float = 0.0
    logit_std: float = 1.0


@torch.no_grad()
def encode_batch(vae: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw samples -> (x0 [B, z, Fh + Ft, h, w], refs [B, z, K, h, w], control [B, 2z, Fh + Ft, h, w])."""
    b, c, k = batch["refs"].shape[:3]
    x0 = vae.encode(batch["clip"]).mode()  # the first latent is the history frame, encoded alone by causality
    refs = batch["refs"].permute(0, 2, 1, 3, 4).reshape(b * k, c, 1, *batch["refs"].shape[-2:])
    r = vae.encode(refs).mode()  # [B*K, z, 1, h, w]: each reference encoded alone
    r = r.reshape(b, k, *r.shape[1:]).squeeze(3).permute(0, 2, 1, 3, 4)  # [B, z, K, h, w]
    control = vae.encode_control(batch["scene"], batch["coverage"])  # [B, 2z, Fh + Ft, h, w]
    return x0, r, control


def make_dit_loss(cfg: ModelConfig, vae: nn.Module | None, settings: DitLossSettings | None = None):
    """Loss on raw samples (encoded here with the frozen `vae`) or on cached latents (keys x0, refs, control)."""
    st = settings or DitLossSettings()
    if vae is not None:
        vae = vae.eval().requires_grad_(False)

    def loss_fn(dit: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        if "x0" in batch:
            x0, refs, control = batch["x0"], batch["refs"], batch["control"]
        else:
            x0, refs, control = encode_batch(vae, batch)
        gens = per_sample_generators(batch["sample_seed"])
        fh = cfg.history_latent_frames
        # whole-batch choices (the DiT takes one layout per batch), drawn from the first sample's stream
        u = torch.rand(3, generator=per_sample_generators(batch["sample_seed"][:1] + 1)[0])
        use_refs = bool(u[0] >= st.drop_refs)
        use_scene = bool(u[1] >= st.drop_scene)
        if u[2] < st.short_chunk:  # causal latents: the first target latent alone is a valid shorter clip
            x0, control = x0[:, :, : fh + 1], control[:, :, : fh + 1]
        hist, target = x0[:, :, :fh], x0[:, :, fh:]
        b = x0.shape[0]
        # per-sample draws from per-sample streams: the same sample gets the same t on any rank
        t = torch.sigmoid(torch.cat([torch.randn(1, generator=g) for g in gens]) * st.logit_std + st.logit_mean)
        t = t.to(x0)  # [B] logit-normal
        t_aug = torch.cat([torch.rand(1, generator=g) for g in gens]) * st.t_aug_max / cfg.num_train_timesteps
        t_aug = t_aug.to(x0)  # [B] in [0, t_aug_max / 1000]
        noise = torch.stack([torch.randn(target.shape[1:], generator=g) for g in gens]).to(x0)
        hist_noise = torch.stack([torch.randn(hist.shape[1:], generator=g) for g in gens]).to(x0)
        hist_aug = apply_history_augmentation(hist, hist_noise, t_aug)
        corrupted = 0.0
        if st.history_corruption > 0:  # drawn after the paper's draws, so configs without it keep their streams
            draws = torch.stack([torch.rand(2, generator=g) for g in gens]).to(x0)  # [B, 2]
            level = torch.where(draws[:, 0] < st.history_corruption, draws[:, 1] * st.history_corruption_max, 0.0)
            corrupt_noise = torch.stack([torch.randn(hist.shape[1:], generator=g) for g in gens]).to(x0)
            hist_aug = corrupt_history(hist_aug, corrupt_noise, level)
            corrupted = float((level > 0).float().mean())
        xt = (1 - t.view(-1, 1, 1, 1, 1)) * target + t.view(-1, 1, 1, 1, 1) * noise
        tt = torch.cat([torch.zeros(b, fh, device=x0.device), t[:, None].expand(b, target.shape[2])], 1)  # [B, Fh + Ft]
        v = dit(torch.cat([hist_aug, xt], 2), tt, refs=refs if use_refs else None, control=control if use_scene else None)
        loss = F.mse_loss(v[:, :, -target.shape[2]:].float(), (noise - target).float())  # output covers [refs | hist | target]
        return loss, {"t_aug": float(t_aug.mean()), "refs_on": float(use_refs), "scene_on": float(use_scene),
                      "hist_corrupted": corrupted,
                      "targets": float(target.shape[2])}

    return loss_fn


def corrupt_history(hist: torch.Tensor, noise: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """Degrade history latents [B, z, Fh, h, w] where level [B] > 0: a 3x3 blur of the latent grid (the detail a
    generated frame lacks), then noise to `level` on the flow schedule; samples at level 0 are returned unchanged."""
    b, z, f, h, w = hist.shape
    flat = hist.permute(0, 2, 1, 3, 4).reshape(b * f, z, h, w)
    blurred = F.avg_pool2d(flat, 3, stride=1, padding=1, count_include_pad=False)
    blurred = blurred.reshape(b, f, z, h, w).permute(0, 2, 1, 3, 4)
    t = level.view(-1, 1, 1, 1, 1)
    out = (1 - t) * blurred + t * noise
    return torch.where(t > 0, out, hist)


def apply_history_augmentation(hist: torch.Tensor, noise: torch.Tensor, t_aug: torch.Tensor) -> torch.Tensor:
    """Noise the clean preceding latents [B, z, Fh, h, w] to level t_aug [B] on the flow schedule (training only)."""
    t = t_aug.view(-1, 1, 1, 1, 1)
    return (1 - t) * hist + t * noise
