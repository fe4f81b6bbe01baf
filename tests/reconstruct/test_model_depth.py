"""model-depth: pass-through of the generated depth, its validity range and its edge-aware confidence."""

import numpy as np
import pytest

from engine.reconstruct import get_reconstructor


def _inputs(depth):
    F, H, W = depth.shape
    rgb = np.zeros((F, H, W, 3), np.uint8)
    K = np.array([[50.0, 0, W / 2], [0, 50.0, H / 2], [0, 0, 1]])
    return rgb, K, np.repeat(np.eye(4)[None], F, 0)


def test_passes_depth_through_and_marks_bad_values():
    depth = np.full((2, 8, 10), 3.0, np.float32)
    depth[0, 1, 1] = np.nan
    depth[0, 2, 2] = np.inf
    depth[1, 3, 3] = -1.0
    depth[1, 4, 4] = 5000.0  # beyond max_depth
    rgb, K, w2c = _inputs(depth)
    r = get_reconstructor("model-depth", max_depth=100.0).reconstruct(rgb, K, w2c, depth)
    bad = np.zeros_like(r.valid)
    bad[0, 1, 1] = bad[0, 2, 2] = bad[1, 3, 3] = bad[1, 4, 4] = True
    np.testing.assert_array_equal(r.valid, ~bad)
    np.testing.assert_array_equal(r.depth[~bad], depth[~bad])
    assert np.all(r.depth[bad] == 0) and np.all(r.confidence[bad] == 0)
    assert np.isfinite(r.depth).all() and r.depth.dtype == np.float32
    # smooth everywhere else: full confidence away from the invalid pixels
    assert r.confidence[0, 6, 8] == pytest.approx(1.0)


def test_confidence_falls_at_depth_edges_and_edges_can_be_dropped():
    depth = np.full((1, 6, 12), 2.0, np.float32)
    depth[:, :, 6:] = 4.0  # a step edge between columns 5 and 6
    rgb, K, w2c = _inputs(depth)
    r = get_reconstructor("model-depth").reconstruct(rgb, K, w2c, depth)
    assert r.valid.all()
    assert r.confidence[0, 3, 5] < 0.01 and r.confidence[0, 3, 6] < 0.01
    assert r.confidence[0, 3, 0] == pytest.approx(1.0) and r.confidence[0, 3, 11] == pytest.approx(1.0)
    r2 = get_reconstructor("model-depth", edge_threshold=0.1).reconstruct(rgb, K, w2c, depth)
    assert not r2.valid[0, :, 5:7].any() and r2.valid[0, :, :5].all() and r2.valid[0, :, 7:].all()


def test_needs_depth():
    rgb, K, w2c = _inputs(np.ones((1, 4, 4), np.float32))
    rec = get_reconstructor("model-depth")
    assert rec.needs_depth
    with pytest.raises(ValueError, match="plane-sweep"):
        rec.reconstruct(rgb, K, w2c, None)


def test_input_checks_name_the_argument():
    rgb, K, w2c = _inputs(np.ones((2, 4, 4), np.float32))
    rec = get_reconstructor("model-depth")
    with pytest.raises(ValueError, match="depth must be"):
        rec.reconstruct(rgb, K, w2c, np.ones((2, 4, 5), np.float32))
    with pytest.raises(ValueError, match="rgb must be uint8"):
        rec.reconstruct(rgb.astype(np.float32), K, w2c, np.ones((2, 4, 4)))
    with pytest.raises(ValueError, match="w2c must be"):
        rec.reconstruct(rgb, K, w2c[:1], np.ones((2, 4, 4)))
    with pytest.raises(ValueError, match="K must be"):
        rec.reconstruct(rgb, np.eye(4), w2c, np.ones((2, 4, 4)))
    with pytest.raises(ValueError, match="min_depth"):
        get_reconstructor("model-depth", min_depth=-1.0)
