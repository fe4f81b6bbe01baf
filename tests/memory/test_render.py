"""Scene-video renderer: the fast path against the plain-loop reference, occlusion, coverage, culling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import geometry
from engine.memory import SpatialMemory
from engine.memory import render as render_mod
from engine.memory.render import prepare_points, render, render_reference

W, H = 40, 30


def cam(eye, target, w=W, h=H, fov=60.0) -> geometry.Camera:
    K = geometry.intrinsics_to_K(geometry.fov_to_intrinsics(fov, w / h), w, h)
    return geometry.Camera(geometry.look_at(eye, target), K, w, h)


def scene(seed: int, n: int = 400):
    """Points placed at jittered pixel centres of a reference view at distinct depths, so that neither the
    pixel a point falls in nor its splat size sits on a rounding boundary (float32 vs float64 agree)."""
    rng = np.random.default_rng(seed)
    ref = cam((0, 1, 0), (0, 1, 4))
    px = rng.integers(0, W, n) + 0.5 + rng.uniform(-0.3, 0.3, n)
    py = rng.integers(0, H, n) + 0.5 + rng.uniform(-0.3, 0.3, n)
    z = rng.permutation(np.linspace(0.3, 4.0, n)) + rng.uniform(0, 1e-3, n)
    xc = (px - ref.K[0, 2]) / ref.K[0, 0] * z
    yc = (py - ref.K[1, 2]) / ref.K[1, 1] * z
    world = geometry.transform_points(ref.c2w, np.stack([xc, yc, z], -1)).astype(np.float32)
    rgb = rng.integers(0, 256, (n, 3), dtype=np.uint8)
    return world, rgb, ref


def test_fast_renderer_matches_reference():
    for seed in range(3):
        xyz, rgb, ref = scene(seed)
        cams = [ref, cam((0.05, 1.02, 0.0), (0.1, 1.0, 4.0)), cam((-0.3, 0.8, -0.5), (0.0, 1.0, 3.0))]
        # splat sides 1..3 at these depths; the fixed seeds put no point on a float32-vs-float64 rounding edge
        out = render((xyz, rgb), cams, point_size=0.0413, return_visible=True)
        rgb_r, depth_r, cov_r, idx_r = render_reference(xyz, rgb, cams, point_size=0.0413)
        torch.testing.assert_close(out.coverage, torch.from_numpy(cov_r))
        torch.testing.assert_close(out.rgb, torch.from_numpy(rgb_r))
        torch.testing.assert_close(out.depth, torch.from_numpy(depth_r).float(), rtol=1e-5, atol=1e-5)
        for b in range(len(cams)):
            expected = np.unique(idx_r[b][idx_r[b] >= 0])
            np.testing.assert_array_equal(out.visible[b].numpy(), expected)
        sides = np.ceil(ref.K[0, 0] * 0.0413 / np.linalg.norm(xyz - ref.center, axis=1))
        assert {1, 2, 3} <= set(np.minimum(sides, 3).astype(int))  # every splat size was exercised


def test_near_point_hides_far_point():
    c = cam((0, 0, 0), (0, 0, 1))
    # two points on the same ray through the centre pixel, the near one listed second
    ray = np.array([0.001, 0.001, 1.0])
    xyz = np.stack([ray * 3.0, ray * 1.5]).astype(np.float32)
    rgb = np.array([[255, 0, 0], [0, 0, 255]], np.uint8)
    out = render((xyz, rgb), [c], point_size=0.001, return_visible=True)
    u, v = geometry.project(xyz[1:].astype(np.float64), c.w2c, c.K)[0][0].astype(int)
    assert out.rgb[0, :, v, u].tolist() == [0.0, 0.0, 1.0]
    assert out.depth[0, 0, v, u].item() == pytest.approx(1.5, rel=1e-5)
    assert out.visible[0].tolist() == [1]
    # and a big near splat hides the far point's pixel next to its centre too
    out = render((xyz, rgb), [c], point_size=0.12, max_splat=3)  # sides 3 (near) and 2 (far)
    assert (out.rgb[0, 2, v - 1:v + 2, u - 1:u + 2] == 1.0).all()


def test_coverage_marks_exactly_the_pixels_hit_and_background_is_black():
    xyz, rgb, ref = scene(5, n=50)
    out = render((xyz, rgb), [ref], point_size=0.001, max_splat=1)
    uv, _ = geometry.project(xyz.astype(np.float64), ref.w2c, ref.K)
    hit = np.zeros((H, W), bool)
    hit[np.floor(uv[:, 1]).astype(int), np.floor(uv[:, 0]).astype(int)] = True
    np.testing.assert_array_equal(out.coverage[0, 0].numpy(), hit.astype(np.float32))
    assert (out.rgb[0][:, ~torch.from_numpy(hit)] == 0).all() and (out.depth[0, 0][~torch.from_numpy(hit)] == 0).all()
    empty = render((np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)), [ref, ref])
    assert empty.rgb.shape == (2, 3, H, W) and empty.coverage.sum() == 0 and empty.depth.sum() == 0


def test_memory_source_resolution_and_point_size_default():
    mem = SpatialMemory(voxel_size=0.05)
    xyz, rgb, ref = scene(6)
    mem.insert_points(xyz, rgb)
    out = render(mem, [ref])
    direct = render((mem.xyz, mem.rgb), [ref], point_size=0.05)
    torch.testing.assert_close(out.rgb, direct.rgb)
    half = render(mem, [ref], resolution=(W // 2, H // 2))
    assert half.rgb.shape == (1, 3, H // 2, W // 2)
    expect = render_reference(mem.xyz, mem.rgb, [geometry.Camera(ref.w2c, ref.K * np.array([[0.5], [0.5], [1]]),
                                                                  W // 2, H // 2)], point_size=0.05)[2]
    # the rescaled intrinsics are the reference's; allow a few boundary pixels from float32 rounding
    assert np.abs(half.coverage.numpy() - expect).sum() <= 3


def test_cell_culling_changes_nothing(monkeypatch):
    # points all around the camera, so most cells are outside any one frustum
    rng = np.random.default_rng(7)
    d = rng.normal(size=(20000, 3))
    xyz = (d / np.linalg.norm(d, axis=1, keepdims=True) * rng.uniform(1, 4, (20000, 1))).astype(np.float32)
    rgb = rng.integers(0, 256, (20000, 3), dtype=np.uint8)
    cams = [cam((0, 0, 0), (np.cos(a), 0.2, np.sin(a))) for a in np.linspace(0, 6, 5)]
    pp = prepare_points((xyz, rgb))
    pos = render_mod._visible_positions(pp, cams[0].w2c, cams[0].K, W, H, 0.01, 2.5)
    assert pos is not None and len(pos) < 0.5 * len(xyz)  # culling really culls here
    culled = render(pp, cams, point_size=0.03, return_visible=True)
    monkeypatch.setattr(render_mod, "CULL_KEEP_ALL", -1.0)  # every camera takes all points
    full = render(pp, cams, point_size=0.03, return_visible=True)
    torch.testing.assert_close(culled.rgb, full.rgb)
    torch.testing.assert_close(culled.depth, full.depth)
    for a, b in zip(culled.visible, full.visible):
        torch.testing.assert_close(a, b)


def test_render_input_errors():
    xyz, rgb, ref = scene(8, n=10)
    with pytest.raises(ValueError, match="different sizes"):
        render((xyz, rgb), [ref, cam((0, 0, 0), (0, 0, 1), w=20, h=10)])
    with pytest.raises(ValueError, match="uint8"):
        render((xyz, rgb.astype(np.float32)), [ref])
    with pytest.raises(TypeError, match="SpatialMemory or a pair"):
        render(xyz, [ref])
    with pytest.raises(ValueError, match="point_size"):
        render((xyz, rgb), [ref], point_size=-1.0)


def test_point_on_the_camera_plane_is_dropped_not_a_crash():
    # z == 0 exactly (a point at the camera centre, or beside it on the image plane) once made the inverse depth
    # inf * 0 = NaN, which became a garbage scatter index
    c = cam((0, 0, 0), (0, 0, 1))
    xyz = np.array([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0], [0.0, 0.0, 2.0]], np.float32)
    rgb = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    out = render((xyz, rgb), [c], point_size=0.01, return_visible=True)
    assert out.visible[0].tolist() == [2]
    assert out.coverage.sum() == 1
