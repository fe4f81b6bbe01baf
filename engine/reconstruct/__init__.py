"""Reconstruction: per-frame metric depth for generated frames with known cameras, before they enter the memory.

After each clip the pipeline turns the generated frames into depth maps (then points) to update the spatial
memory. Backends differ in what they need: `model-depth` passes through the depth the world model generated with
its frames, `plane-sweep` runs multi-view stereo on the RGB frames with the known poses (no weights), and
`mapanything` runs the MapAnything network from a local checkpoint. All share one call,
`Reconstructor.reconstruct(rgb, K, w2c, depth)`, and are chosen by name with `get_reconstructor`. Heavy optional
packages are imported only by the backend that needs them, when it is built.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

# name -> (module, class). The module is imported only when the backend is asked for.
BACKENDS: dict[str, tuple[str, str]] = {
    "model-depth": ("engine.reconstruct.model_depth", "ModelDepthReconstructor"),
    "plane-sweep": ("engine.reconstruct.plane_sweep", "PlaneSweepReconstructor"),
    "mapanything": ("engine.reconstruct.mapanything", "MapAnythingReconstructor"),
}


class ReconstructorUnavailable(RuntimeError):
    """A backend that cannot run here (optional package or weights missing); the message says what to do."""


@dataclass
class Reconstruction:
    """Depth for F frames, with a per-pixel confidence and the pixels that may be turned into memory points."""

    depth: np.ndarray  # [F, H, W] float32, metric z along the camera axis; undefined where not valid
    confidence: np.ndarray  # [F, H, W] float32 in [0, 1]; 0 where not valid
    valid: np.ndarray  # [F, H, W] bool

    def __post_init__(self):
        if self.depth.ndim != 3:
            raise ValueError(f"Reconstruction.depth must be [F, H, W], got shape {self.depth.shape}")
        for name in ("confidence", "valid"):
            if getattr(self, name).shape != self.depth.shape:
                raise ValueError(
                    f"Reconstruction.{name} has shape {getattr(self, name).shape}, depth has {self.depth.shape}"
                )


class Reconstructor(ABC):
    """One reconstruction backend. Subclasses set `name` and `needs_depth` and implement `_reconstruct`."""

    name: str = ""
    needs_depth: bool = False  # True: the backend only works when the model generated depth with its frames

    def reconstruct(
        self, rgb: np.ndarray, K: np.ndarray, w2c: np.ndarray, depth: np.ndarray | None = None
    ) -> Reconstruction:
        """rgb [F, H, W, 3] uint8, K [F, 3, 3] (or one [3, 3] for all), w2c [F, 4, 4], depth [F, H, W] or None."""
        rgb, K, w2c, depth = check_inputs(rgb, K, w2c, depth)
        if self.needs_depth and depth is None:
            raise ValueError(
                f"reconstruction backend '{self.name}' needs the depth generated with the frames, got depth=None; "
                "for a model that outputs RGB only use 'plane-sweep' (no weights) or 'mapanything'"
            )
        return self._reconstruct(rgb, K, w2c, depth)

    @abstractmethod
    def _reconstruct(
        self, rgb: np.ndarray, K: np.ndarray, w2c: np.ndarray, depth: np.ndarray | None
    ) -> Reconstruction: ...


def check_inputs(
    rgb: np.ndarray, K: np.ndarray, w2c: np.ndarray, depth: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate shapes and dtypes; broadcast a single K to all frames. Errors name the argument at fault."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 4 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb must be [F, H, W, 3], got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be uint8 (0..255), got dtype {rgb.dtype}")
    F, H, W = rgb.shape[:3]
    if F == 0 or H == 0 or W == 0:
        raise ValueError(f"rgb is empty: shape {rgb.shape}")
    K = np.asarray(K, np.float64)
    if K.shape == (3, 3):
        K = np.broadcast_to(K, (F, 3, 3)).copy()
    if K.shape != (F, 3, 3):
        raise ValueError(f"K must be [F, 3, 3] or [3, 3] with F={F}, got shape {K.shape}")
    if not np.all(np.isfinite(K)) or np.any(K[:, 0, 0] <= 0) or np.any(K[:, 1, 1] <= 0):
        raise ValueError("K must be finite with positive focal lengths")
    w2c = np.asarray(w2c, np.float64)
    if w2c.shape != (F, 4, 4):
        raise ValueError(f"w2c must be [F, 4, 4] with F={F}, got shape {w2c.shape}")
    if not np.all(np.isfinite(w2c)):
        raise ValueError("w2c contains non-finite values")
    if depth is not None:
        depth = np.asarray(depth)
        if depth.shape != (F, H, W):
            raise ValueError(f"depth must be [F, H, W] = {(F, H, W)} like rgb, got shape {depth.shape}")
        depth = depth.astype(np.float32, copy=False)
    return rgb, K, w2c, depth


def available_reconstructors() -> list[str]:
    return list(BACKENDS)


def get_reconstructor(name: str, **kw) -> Reconstructor:
    """Build the backend called `name` with its keyword settings (see each backend's constructor)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown reconstruction backend '{name}'; choose one of: {', '.join(BACKENDS)}")
    module_name, class_name = BACKENDS[name]
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**kw)
