"""residual: flags what the memory lacks, nothing on a consistent frame, and only where the memory covers."""

import numpy as np
import pytest

from engine.segment import get_segmenter
from engine.segment.residual import ResidualConfig, clean_mask


def noisy(rgb: np.ndarray, std: float, seed: int) -> np.ndarray:
    """A generated frame never matches a splatted render exactly: add per-pixel colour noise (8-bit units)."""
    rng = np.random.default_rng(seed)
    return np.clip(rgb + rng.normal(0, std, rgb.shape), 0, 255).astype(np.uint8)


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def _calibrated(mem, **kw):
    seg = get_segmenter("residual", **kw)
    full = np.ones(mem["depth"].shape, bool)
    static = noisy(mem["rgb"], 6.0, seed=1)  # a generated frame of the static world
    depth_noise = 1 + np.random.default_rng(2).normal(0, 0.005, mem["depth"].shape)
    th = seg.calibrate(static, mem["rgb"], full, depth=mem["depth"] * depth_noise, render_depth=mem["depth"])
    return seg, th


def test_flags_an_object_the_memory_lacks(room_with_and_without_box):
    gen, mem, box = room_with_and_without_box
    seg, _ = _calibrated(mem)
    coverage = np.ones(box.shape, bool)
    m = seg.segment(noisy(gen["rgb"], 6.0, seed=3), depth=gen["depth"], render_rgb=mem["rgb"],
                    render_depth=mem["depth"], coverage=coverage)
    assert m.shape == box.shape and m.dtype == bool
    for f in range(len(m)):
        assert _iou(m[f], box[f]) > 0.9
    assert not m[~box].any()


def test_flags_nothing_on_a_consistent_frame(room_with_and_without_box):
    _, mem, _ = room_with_and_without_box
    seg, th = _calibrated(mem)
    assert th["colour_threshold"] > 0.02 and th["depth_threshold"] >= 0.01
    consistent = noisy(mem["rgb"], 6.0, seed=4)  # fresh noise, same static world
    depth = mem["depth"] * (1 + np.random.default_rng(5).normal(0, 0.005, mem["depth"].shape))
    m = seg.segment(consistent, depth=depth, render_rgb=mem["rgb"], render_depth=mem["depth"],
                    coverage=np.ones(mem["depth"].shape, bool))
    assert not m.any()


def test_only_where_the_memory_covers(room_with_and_without_box):
    gen, mem, box = room_with_and_without_box
    seg, _ = _calibrated(mem)
    coverage = np.ones(box.shape, bool)
    coverage[:, :, :48] = False  # the memory has no points on the left half
    # uncovered pixels render black: they disagree with everything, yet must never be flagged
    render = np.where(coverage[..., None], mem["rgb"], 0).astype(np.uint8)
    m = seg.segment(gen["rgb"], depth=gen["depth"], render_rgb=render, render_depth=mem["depth"],
                    coverage=coverage.astype(np.float32))  # a float alpha works too
    assert not m[:, :, :48].any()
    right = box & coverage
    assert _iou(m[:, :, 48:], right[:, :, 48:]) > 0.85


def test_colour_only_without_depth(room_with_and_without_box):
    gen, mem, box = room_with_and_without_box
    seg, _ = _calibrated(mem)
    m = seg.segment(gen["rgb"], render_rgb=mem["rgb"], coverage=np.ones(box.shape, bool))
    assert _iou(m[0], box[0]) > 0.8


def test_depth_agreement_vetoes_a_colour_change(room_with_and_without_box):
    # a relit but unchanged scene: colour disagrees everywhere, depth agrees, so nothing is dynamic
    _, mem, _ = room_with_and_without_box
    seg, _ = _calibrated(mem)
    relit = (mem["rgb"] * 0.6).astype(np.uint8)
    cov = np.ones(mem["depth"].shape, bool)
    assert not seg.segment(relit, depth=mem["depth"], render_rgb=mem["rgb"], render_depth=mem["depth"],
                           coverage=cov).any()
    either = get_segmenter("residual", require_both=False)
    assert either.segment(relit, depth=mem["depth"], render_rgb=mem["rgb"], render_depth=mem["depth"],
                          coverage=cov).mean() > 0.9


def test_cleaning_removes_speckle_and_fills_holes():
    cfg = ResidualConfig(open_radius=1, close_radius=2, min_area_fraction=0.01)
    m = np.zeros((40, 40), bool)
    m[10:30, 10:30] = True
    m[19, 19] = False  # a pinhole inside the object
    m[2, 35] = True  # isolated speckle
    m[36:38, 2:4] = True  # a 2x2 blob, below the 16-pixel minimum area
    out = clean_mask(m, cfg)
    assert out[19, 19]  # the pinhole is filled
    assert (out[10:30, 10:30] == 0).sum() <= 4  # at most the square's corners go (opening with a disk)
    assert out.sum() == out[10:30, 10:30].sum()  # nothing outside the object survives
    assert not out[2, 35] and not out[36:38, 2:4].any()
    edge = np.zeros((20, 20), bool)
    edge[:, :6] = True  # an object touching the border keeps its border pixels
    assert clean_mask(edge, cfg)[:, :6].all()


def test_cleaning_equals_opening_closing_and_area_filter_also_when_the_erosion_empties_the_mask():
    from scipy import ndimage

    from engine.segment.residual import _disk

    cfg = ResidualConfig(open_radius=1, close_radius=2, min_area_fraction=0.002)
    rng = np.random.default_rng(0)

    def definition(mask):
        pad = 2
        m = np.pad(mask, pad, mode="edge")
        m = ndimage.binary_closing(ndimage.binary_opening(m, structure=_disk(1)), structure=_disk(2))[pad:-pad, pad:-pad]
        labels, n = ndimage.label(m)
        keep = np.bincount(labels.ravel(), minlength=n + 1) >= cfg.min_area_fraction * mask.size
        keep[0] = False
        return keep[labels]

    empty_after_erosion = 0
    for p in (0.002, 0.01, 0.05, 0.3, 0.6):
        for _ in range(8):
            m = rng.random((48, 48)) < p
            empty_after_erosion += not ndimage.binary_erosion(np.pad(m, 2, mode="edge"), structure=_disk(1)).any()
            np.testing.assert_array_equal(clean_mask(m, cfg), definition(m))
    assert empty_after_erosion >= 8  # the speckled masks took the short way, and still agree


def test_needs_the_render_and_checks_shapes(room_with_and_without_box):
    gen, mem, _ = room_with_and_without_box
    seg = get_segmenter("residual")
    with pytest.raises(ValueError, match="needs render_rgb and coverage"):
        seg.segment(gen["rgb"])
    with pytest.raises(ValueError, match="coverage must have shape"):
        seg.segment(gen["rgb"], render_rgb=mem["rgb"], coverage=np.ones((2, 5, 5), bool))
    with pytest.raises(ValueError, match="coverage is empty"):
        seg.calibrate(gen["rgb"], mem["rgb"], np.zeros(gen["depth"].shape, bool))
