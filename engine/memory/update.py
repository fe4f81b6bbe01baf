"""Which pixels of a generated frame enter the memory, and at what depth.

A generated frame was made to agree with the memory's render wherever that render covered it, so re-inserting
those pixels adds only reconstruction noise. What is left is new content, but the render's coverage mask has
holes that are not new content: when the camera comes closer than the view a part of the memory was built from,
its points spread apart and leave gaps between their splats. `new_content` closes gaps up to `hole_px` pixels
wide, so only regions the memory never saw (a turn's new side, a disocclusion) take new points.

The depth decoded with a generated frame is only roughly metric (the tiny model's depth is off by 15-35%), and a
new point at the wrong depth floats in front of good ones and steers every later scene video.
`depth_scale_to_memory` measures the frame's depth against the memory's rendered depth on the pixels both cover
(a robust median ratio) so the new content is inserted at the memory's scale.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

MIN_ALIGN_PIXELS = 64  # fewer shared pixels than this: no scale is measured (1.0)
SCALE_LIMITS = (0.5, 2.0)  # a measured scale outside this is a mismatch, not a scale error: clamp it


def new_content(coverage: np.ndarray, hole_px: int) -> np.ndarray:
    """bool [H, W]: pixels of a render the memory did not cover, with gaps up to `hole_px` wide counted as covered.

    coverage: bool [H, W] (where any memory point landed). A closing (dilate, then erode) fills gaps between
    splats; the erosion treats the image border as covered, so content entering at the edge stays new."""
    coverage = np.asarray(coverage, bool)
    if hole_px <= 0:
        return ~coverage
    size = 2 * hole_px + 1  # square footprints: scipy filters them separably, one pass per axis
    closed = ndimage.maximum_filter(coverage.view(np.uint8), size=size, mode="constant", cval=0)
    closed = ndimage.minimum_filter(closed, size=size, mode="constant", cval=1)
    return ~(closed.astype(bool) | coverage)


def depth_scale_to_memory(depth: np.ndarray, valid: np.ndarray, render_depth: np.ndarray,
                          coverage: np.ndarray) -> float:
    """The factor that brings a frame's depth [H, W] to the memory's scale: the median of render_depth / depth over
    pixels that are valid in the frame and covered by the render; 1.0 with fewer than MIN_ALIGN_PIXELS of them.
    Clamped to SCALE_LIMITS."""
    shared = np.asarray(valid, bool) & np.asarray(coverage, bool) & (render_depth > 0) & (depth > 0)
    shared &= np.isfinite(depth) & np.isfinite(render_depth)
    if shared.sum() < MIN_ALIGN_PIXELS:
        return 1.0
    ratio = np.median(render_depth[shared].astype(np.float64) / depth[shared].astype(np.float64))
    return float(np.clip(ratio, *SCALE_LIMITS))
