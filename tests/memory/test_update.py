import numpy as np

from engine.memory.update import MIN_ALIGN_PIXELS, SCALE_LIMITS, depth_scale_to_memory, new_content


def test_gaps_between_splats_are_not_new_content_but_unseen_regions_are():
    cov = np.ones((40, 40), bool)
    cov[10:13, 10:13] = False  # a 3 px gap inside covered memory (points spread apart)
    cov[20:32, 20:32] = False  # a 12 px hole: a disocclusion
    cov[:, 36:] = False  # a 4 px band at the border: a turn's new side
    new = new_content(cov, hole_px=2)
    assert not new[10:13, 10:13].any()
    assert new[24:28, 24:28].all()  # the middle of the big hole stays new
    assert new[:, 36:].all()  # border content is not closed away
    assert not new[cov].any()  # a covered pixel is never new


def test_no_hole_filling_is_plain_uncovered():
    rng = np.random.default_rng(0)
    cov = rng.random((16, 16)) < 0.6
    np.testing.assert_array_equal(new_content(cov, 0), ~cov)


def test_depth_scale_is_the_median_ratio_to_the_memory():
    rng = np.random.default_rng(1)
    render_depth = rng.uniform(1, 5, (32, 32)).astype(np.float32)
    depth = render_depth * 1.25  # the frame's depth is 25% too far
    cov = np.ones((32, 32), bool)
    cov[:, :8] = False
    render_depth[~cov] = 0  # what an empty render pixel holds
    depth[0, 8:20] = 100.0  # a few outliers do not move the median
    valid = np.ones_like(cov)
    assert abs(depth_scale_to_memory(depth, valid, render_depth, cov) - 0.8) < 1e-6


def test_depth_scale_needs_shared_pixels_and_is_clamped():
    d = np.full((16, 16), 2.0, np.float32)
    cov = np.zeros((16, 16), bool)
    cov.flat[: MIN_ALIGN_PIXELS - 1] = True
    assert depth_scale_to_memory(d, np.ones_like(cov), np.full_like(d, 1.0), cov) == 1.0
    cov[:] = True
    assert depth_scale_to_memory(d, np.ones_like(cov), np.full_like(d, 50.0), cov) == SCALE_LIMITS[1]
    assert depth_scale_to_memory(d, np.zeros_like(cov), np.full_like(d, 1.0), cov) == 1.0  # nothing valid
