"""Segmentation: which pixels of generated frames are dynamic, so the memory update leaves them out.

The memory holds the static scene only. After each clip the pipeline asks a segmenter for a dynamic mask per frame
(True = dynamic) and excludes those pixels when it inserts the clip's reconstruction. Backends: `residual` compares
each generated frame with the memory's own render of it (no weights), `masks` replays user masks in the release's
file formats, and `sam2` tracks prompted entities with SAM 2's video predictor from a local checkpoint. Segmenters
are stateful across clips (tracking continues; `reset()` starts over) and are chosen by name with `get_segmenter`;
heavy optional packages are imported only by the backend that needs them, when it is built.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

# name -> (module, class). The module is imported only when the backend is asked for.
BACKENDS: dict[str, tuple[str, str]] = {
    "residual": ("engine.segment.residual", "ResidualSegmenter"),
    "masks": ("engine.segment.masks", "MaskSegmenter"),
    "sam2": ("engine.segment.sam2_backend", "Sam2Segmenter"),
}


class SegmenterUnavailable(RuntimeError):
    """A backend that cannot run here (optional package or weights missing); the message says what to do."""


@dataclass(frozen=True)
class Prompt:
    """What to track, given on the first frame of a clip: points, a box, or a mask, for one object id."""

    points: np.ndarray | None = None  # [N, 2] pixel (x, y), pixel centres at +0.5
    labels: np.ndarray | None = None  # [N] int: 1 = on the object, 0 = background
    box: np.ndarray | None = None  # [4] pixel x0, y0, x1, y1
    mask: np.ndarray | None = None  # [H, W] bool
    obj_id: int = 1

    def __post_init__(self):
        if self.points is None and self.box is None and self.mask is None:
            raise ValueError("a Prompt needs points, a box or a mask")
        if self.mask is not None and (self.points is not None or self.box is not None):
            raise ValueError("a Prompt takes either a mask or points/box, not both")
        if self.points is not None:
            pts = np.asarray(self.points, np.float32)
            if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
                raise ValueError(f"Prompt.points must be [N, 2] (x, y) with N >= 1, got shape {pts.shape}")
            labels = np.ones(len(pts), np.int32) if self.labels is None else np.asarray(self.labels, np.int32)
            if labels.shape != (len(pts),) or not np.isin(labels, (0, 1)).all():
                raise ValueError(f"Prompt.labels must be [N] of 0/1 matching {len(pts)} points, got {labels.tolist()}")
            object.__setattr__(self, "points", pts)
            object.__setattr__(self, "labels", labels)
        elif self.labels is not None:
            raise ValueError("Prompt.labels given without points")
        if self.box is not None:
            b = np.asarray(self.box, np.float32)
            if b.shape != (4,) or not (b[2] > b[0] and b[3] > b[1]):
                raise ValueError(f"Prompt.box must be [x0, y0, x1, y1] with x1 > x0 and y1 > y0, got {b.tolist()}")
            object.__setattr__(self, "box", b)
        if self.mask is not None:
            m = np.asarray(self.mask)
            if m.ndim != 2:
                raise ValueError(f"Prompt.mask must be [H, W], got shape {m.shape}")
            object.__setattr__(self, "mask", m.astype(bool))


class Segmenter(ABC):
    """One segmentation backend. Subclasses set the class flags and implement `_segment`."""

    name: str = ""
    needs_render: bool = False  # True: needs the memory's render (rgb, coverage) of the same cameras
    needs_prompt: bool = False  # True: needs a Prompt on the first frame it sees

    def segment(
        self,
        rgb: np.ndarray,
        *,
        depth: np.ndarray | None = None,
        render_rgb: np.ndarray | None = None,
        render_depth: np.ndarray | None = None,
        coverage: np.ndarray | None = None,
        prompt: Prompt | list[Prompt] | None = None,
    ) -> np.ndarray:
        """Dynamic masks [F, H, W] bool for one clip. rgb [F, H, W, 3] (uint8, or float in [0, 1])."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 4 or rgb.shape[-1] != 3:
            raise ValueError(f"rgb must be [F, H, W, 3], got shape {rgb.shape}")
        shape = rgb.shape[:3]
        for name, x, extra in (
            ("depth", depth, ()), ("render_rgb", render_rgb, (3,)), ("render_depth", render_depth, ()),
            ("coverage", coverage, ()),
        ):
            if x is not None and np.shape(x) != shape + extra:
                raise ValueError(f"{name} must have shape {shape + extra} to match rgb, got {np.shape(x)}")
        if self.needs_render and (render_rgb is None or coverage is None):
            raise ValueError(f"segmentation backend '{self.name}' needs render_rgb and coverage from the memory")
        prompts = [prompt] if isinstance(prompt, Prompt) else list(prompt or [])
        masks = self._segment(rgb, depth, render_rgb, render_depth, coverage, prompts)
        assert masks.shape == shape and masks.dtype == bool, (masks.shape, masks.dtype)
        return masks

    @abstractmethod
    def _segment(self, rgb, depth, render_rgb, render_depth, coverage, prompts: list[Prompt]) -> np.ndarray: ...

    def reset(self) -> None:
        """Forget tracking state: the next clip starts a new video."""


def as_unit_rgb(x: np.ndarray) -> np.ndarray:
    """uint8 0..255 or float 0..1 images -> float32 in [0, 1]."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"images must be uint8 or float in [0, 1], got dtype {x.dtype}")
    return x.astype(np.float32, copy=False)


def available_segmenters() -> list[str]:
    return list(BACKENDS)


def get_segmenter(name: str, **kw) -> Segmenter:
    """Build the backend called `name` with its keyword settings (see each backend's constructor)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown segmentation backend '{name}'; choose one of: {', '.join(BACKENDS)}")
    module_name, class_name = BACKENDS[name]
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**kw)
