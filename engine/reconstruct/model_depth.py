"""`model-depth`: the depth the world model generated with its frames, checked and scored, no extra network.

The project's models decode a metric depth map beside every RGB frame, so the cheapest reconstruction is to trust
it where it is usable: finite, inside the configured range, and (optionally) not a "flying pixel" on a depth
discontinuity. Confidence falls with the local relative depth step, since points at silhouettes are the ones that
smear into the memory when a decoded depth map blurs an edge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.reconstruct import Reconstruction, Reconstructor


@dataclass(frozen=True)
class ModelDepthConfig:
    min_depth: float = 0.01  # metres; nearer is invalid (decoder noise at the near plane)
    max_depth: float = 1000.0  # metres; farther is invalid (sky, background clamp)
    edge_scale: float = 0.05  # relative depth step to a neighbour at which confidence has fallen to 1/e
    edge_threshold: float | None = None  # drop pixels whose relative step exceeds this; None keeps them

    def __post_init__(self):
        if not 0 < self.min_depth < self.max_depth:
            raise ValueError(f"need 0 < min_depth < max_depth, got {self.min_depth}, {self.max_depth}")
        if self.edge_scale <= 0:
            raise ValueError(f"edge_scale must be positive, got {self.edge_scale}")
        if self.edge_threshold is not None and self.edge_threshold <= 0:
            raise ValueError(f"edge_threshold must be positive or None, got {self.edge_threshold}")


def relative_depth_step(depth: np.ndarray) -> np.ndarray:
    """Largest |d - d_neighbour| / d over the 4-neighbourhood, per pixel [F, H, W]; NaN neighbours are ignored."""
    d = depth.astype(np.float32)
    step = np.zeros_like(d)
    dy = np.abs(np.diff(d, axis=1))  # [F, H-1, W]
    dx = np.abs(np.diff(d, axis=2))  # [F, H, W-1]
    # fmax ignores NaN, so a pixel beside an invalid one keeps the step to its valid neighbours
    step[:, 1:] = np.fmax(step[:, 1:], dy)
    step[:, :-1] = np.fmax(step[:, :-1], dy)
    step[:, :, 1:] = np.fmax(step[:, :, 1:], dx)
    step[:, :, :-1] = np.fmax(step[:, :, :-1], dx)
    with np.errstate(invalid="ignore", divide="ignore"):
        return step / d


class ModelDepthReconstructor(Reconstructor):
    name = "model-depth"
    needs_depth = True

    def __init__(self, **kw):
        self.config = ModelDepthConfig(**kw)

    def _reconstruct(self, rgb, K, w2c, depth) -> Reconstruction:
        cfg = self.config
        d = depth.astype(np.float32, copy=True)  # [F, H, W]
        valid = np.isfinite(d) & (d >= cfg.min_depth) & (d <= cfg.max_depth)
        d[~valid] = np.nan
        rel = relative_depth_step(d)  # [F, H, W], NaN where the pixel itself is invalid
        if cfg.edge_threshold is not None:
            valid &= ~(rel > cfg.edge_threshold)
        confidence = np.where(valid, np.exp(-np.nan_to_num(rel, nan=0.0) / cfg.edge_scale), 0.0).astype(np.float32)
        return Reconstruction(depth=np.where(valid, d, 0.0).astype(np.float32), confidence=confidence, valid=valid)
