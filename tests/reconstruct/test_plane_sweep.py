"""plane-sweep: depth of rendered views within tolerance, sub-plane refinement, and the masks that reject pixels."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.bench.reconstruct import abs_rel
from engine.reconstruct import get_reconstructor
from engine.reconstruct.plane_sweep import PlaneSweepConfig, _winner_take_all, box, select_neighbors


def test_recovers_depth_of_a_rendered_triplet(room_triplet):
    v = room_triplet
    r = get_reconstructor("plane-sweep").reconstruct(v["rgb"], v["K"], v["w2c"])
    assert r.depth.shape == r.confidence.shape == r.valid.shape == v["depth"].shape
    assert r.depth.dtype == np.float32 and r.confidence.dtype == np.float32 and r.valid.dtype == bool
    assert r.valid.mean() > 0.5  # the room is textured everywhere: most pixels must be reconstructed
    assert abs_rel(r.depth, v["depth"], r.valid) < 0.06
    err = np.abs(r.depth - v["depth"]) / v["depth"]
    assert np.median(err[r.valid]) < 0.04
    assert np.all(r.confidence[~r.valid] == 0) and np.all(r.depth[~r.valid] == 0)
    assert np.all((r.confidence[r.valid] > 0) & (r.confidence[r.valid] <= 1))


def test_recovers_depth_of_a_pair(room_triplet):
    v = {k: x[:2] for k, x in room_triplet.items()}
    r = get_reconstructor("plane-sweep", num_neighbors=1).reconstruct(v["rgb"], v["K"], v["w2c"])
    assert r.valid.mean() > 0.4
    assert abs_rel(r.depth, v["depth"], r.valid) < 0.1


def test_confident_pixels_are_more_accurate(room_triplet):
    v = room_triplet
    r = get_reconstructor("plane-sweep").reconstruct(v["rgb"], v["K"], v["w2c"])
    err = np.abs(r.depth - v["depth"]) / v["depth"]
    c = r.confidence[r.valid]
    high = c >= np.median(c)
    assert err[r.valid][high].mean() < err[r.valid][~high].mean()


def test_textureless_frames_give_no_depth(room_triplet):
    v = room_triplet
    flat = np.full_like(v["rgb"], 128)
    r = get_reconstructor("plane-sweep").reconstruct(flat, v["K"], v["w2c"])
    assert not r.valid.any()


def test_inconsistent_neighbours_are_rejected(room_triplet):
    # frames that do not show the same scene: costs never agree, and the consistency check removes the rest
    v = room_triplet
    noise = np.random.default_rng(1).integers(0, 256, v["rgb"].shape, dtype=np.uint8)
    r = get_reconstructor("plane-sweep").reconstruct(noise, v["K"], v["w2c"])
    assert r.valid.mean() < 0.02


def test_consistency_check_removes_pixels(room_triplet):
    v = room_triplet
    loose = get_reconstructor("plane-sweep", consistency_px=1e9, consistency_rel=1e9).reconstruct(
        v["rgb"], v["K"], v["w2c"]
    )
    strict = get_reconstructor("plane-sweep").reconstruct(v["rgb"], v["K"], v["w2c"])
    assert strict.valid.sum() < loose.valid.sum()
    assert not (strict.valid & ~loose.valid).any()
    assert abs_rel(strict.depth, v["depth"], strict.valid) < abs_rel(loose.depth, v["depth"], loose.valid)


def test_parabola_refinement_finds_the_sub_plane_minimum():
    D, true_index = 16, 6.3
    inv_depths = torch.linspace(0.1, 1.6, D)
    k = torch.arange(D, dtype=torch.float32)[:, None, None]
    cost = 0.02 * (k - true_index) ** 2 * torch.ones(1, 4, 5)  # [D, H, W] a parabola with its minimum off-plane
    cfg = PlaneSweepConfig(min_ncc=0.0, min_confidence=0.0, min_texture=0.0)
    depth, conf, valid = _winner_take_all(cost, inv_depths, torch.ones(4, 5), cfg)
    rho = inv_depths[0] + true_index * (inv_depths[1] - inv_depths[0])
    torch.testing.assert_close(depth, torch.full((4, 5), 1 / rho.item()), rtol=1e-4, atol=0)
    assert valid.all() and (conf > 0).all()


def test_minimum_at_the_end_of_the_sweep_is_invalid():
    D = 8
    cost = torch.linspace(1.0, 0.0, D)[:, None, None].expand(D, 2, 2).contiguous()  # best at the nearest plane
    cfg = PlaneSweepConfig(min_ncc=0.0, min_confidence=0.0, min_texture=0.0)
    _, conf, valid = _winner_take_all(cost, torch.linspace(0.1, 1.0, D), torch.ones(2, 2), cfg)
    assert not valid.any() and (conf == 0).all()


def test_box_filter_matches_avg_pool():
    x = torch.rand(3, 2, 17, 23)
    torch.testing.assert_close(box(x, 5), F.avg_pool2d(x, 5, 1, 2, count_include_pad=False), rtol=1e-5, atol=1e-5)


def test_neighbour_selection():
    assert select_neighbors(4, 2, 1) == [[1, 2], [0, 2], [1, 3], [2, 1]]
    assert select_neighbors(6, 2, 2)[3] == [1, 5]  # two frames away on both sides
    assert select_neighbors(2, 3, 1) == [[1], [0]]  # fewer frames than asked: all others
    # by baseline: frames 5 cm apart, 15 cm wanted -> three frames away, one on each side where possible
    centers = np.stack([np.arange(10) * 0.05, np.zeros(10), np.zeros(10)], 1)
    by_baseline = select_neighbors(10, 2, 1, centers, 0.15)
    assert by_baseline[5] == [2, 8] and by_baseline[0] == [3, 2] and by_baseline[9] == [6, 7]
    assert select_neighbors(10, 1, 1, centers, 0.15)[5] == [2]


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(min_depth=2.0, max_depth=1.0), "min_depth"),
        (dict(window=4), "window"),
        (dict(num_planes=2), "num_planes"),
        (dict(min_consistent=3, num_neighbors=2), "min_consistent"),
    ],
)
def test_bad_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        get_reconstructor("plane-sweep", **kw)


def test_needs_two_frames(room_triplet):
    v = room_triplet
    with pytest.raises(ValueError, match="at least 2 frames"):
        get_reconstructor("plane-sweep").reconstruct(v["rgb"][:1], v["K"][:1], v["w2c"][:1])
