"""Memory view: slot bookkeeping, incremental uploads, point budget, and what lands on screen (EGL, llvmpipe)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.geometry import fov_to_intrinsics, intrinsics_to_K, look_at, project
from engine.server.protocol import MemoryDelta
from explorer.memory_view import (BudgetController, Changes, DeltaError, MemoryView, MemoryViewConfig, PointSlots,
                                  coalesce)

W, H = 64, 48
EMPTY_IDS = np.zeros(0, np.int64)
EMPTY_RGB = np.zeros((0, 3), np.uint8)


def delta(v0, v1, ids=EMPTY_IDS, xyz=None, rgb=None, removed=EMPTY_IDS, recolored=EMPTY_IDS, recolor_rgb=EMPTY_RGB,
          full=False, voxel=0.05) -> MemoryDelta:
    ids = np.asarray(ids, np.int64)
    xyz = np.zeros((0, 3), np.float32) if xyz is None else np.asarray(xyz, np.float32)
    rgb = np.zeros((len(ids), 3), np.uint8) + 200 if rgb is None else np.asarray(rgb, np.uint8)
    return MemoryDelta(version_from=v0, version_to=v1, full=full, voxel_size=voxel, added_ids=ids, added_xyz=xyz,
                       added_rgb=rgb, removed_ids=np.asarray(removed, np.int64),
                       recolored_ids=np.asarray(recolored, np.int64), recolored_rgb=np.asarray(recolor_rgb, np.uint8))


def random_points(n, seed=0, offset=0):
    rng = np.random.default_rng(seed)
    return (np.arange(offset, offset + n), rng.normal(size=(n, 3)).astype(np.float32),
            rng.integers(0, 256, (n, 3), dtype=np.uint8))


def check_slots(slots: PointSlots, truth: dict[int, tuple[np.ndarray, np.ndarray]]) -> None:
    """The mirror holds exactly `truth` (id -> (xyz, rgb)), each id where the map says, segments packed."""
    assert slots.num_points == len(truth)
    for s in slots.segments:
        live = slots.ids[s.start:s.start + s.count]
        assert (live >= 0).all() and (slots.ids[s.start + s.count:s.start + s.size] == -1).all()
    assert sum(s.count for s in slots.segments) == len(truth)
    ids = np.array(sorted(truth), np.int64)
    where = slots.lookup(ids, "check")
    np.testing.assert_array_equal(slots.ids[where], ids)
    np.testing.assert_array_equal(slots.xyz[where], np.stack([truth[i][0] for i in ids]))
    np.testing.assert_array_equal(slots.rgba[where, :3], np.stack([truth[i][1] for i in ids]))


# --------------------------------------------------------------------------------------------- CPU logic
def test_coalesce_merges_close_slots():
    assert coalesce(np.array([9, 1, 2, 3, 40, 41]), gap=4) == [(1, 4), (9, 10), (40, 42)]
    assert coalesce(np.array([1, 5]), gap=4) == [(1, 6)]
    assert coalesce(np.zeros(0, int), gap=4) == []


def test_slots_add_remove_recolor_keep_the_map_right():
    slots = PointSlots(capacity=64, max_segments=8, compact_waste=0.5, write_gap=2, seed=1)
    truth = {}
    for k in range(3):
        ids, xyz, rgb = random_points(20, seed=k, offset=100 * k)
        slots.add(ids, xyz, rgb, Changes())
        truth.update({i: (p, c) for i, p, c in zip(ids.tolist(), xyz, rgb)})
    check_slots(slots, truth)
    gone = np.array([0, 5, 19, 100, 101, 110, 210, 219])
    changes = Changes()
    slots.remove(slots.lookup(gone, "t"), changes)
    for i in gone.tolist():
        del truth[i]
    check_slots(slots, truth)
    written = sum(b - a for a, b in changes.xyz)
    assert written < 30  # only the holes were rewritten, not the 52 survivors
    ids = np.array([1, 2, 102])
    new = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], np.uint8)
    changes = Changes()
    slots.recolor(slots.lookup(ids, "t"), new, changes)
    assert not changes.xyz and changes.rgba
    for i, c in zip(ids.tolist(), new):
        truth[i] = (truth[i][0], c)
    check_slots(slots, truth)
    # growing past the capacity compacts into one shuffled segment and reallocates
    ids, xyz, rgb = random_points(40, seed=9, offset=1000)
    changes = Changes()
    slots.add(ids, xyz, rgb, changes)
    truth.update({i: (p, c) for i, p, c in zip(ids.tolist(), xyz, rgb)})
    assert changes.realloc and slots.capacity >= len(truth)
    check_slots(slots, truth)


def test_draw_ranges_sample_every_segment_in_proportion():
    slots = PointSlots(capacity=1 << 13, max_segments=8, compact_waste=0.5, write_gap=16)
    for k, n in enumerate([1000, 200, 3000]):
        slots.add(*random_points(n, seed=k, offset=10_000 * k), Changes())
    ranges = slots.draw_ranges(0.1)
    assert [c for _, c in ranges] == [100, 20, 300]
    assert [f for f, _ in ranges] == [s.start for s in slots.segments]
    assert sum(c for _, c in slots.draw_ranges(1.0)) == 4200
    # the drawn prefix of a segment is a uniform sample: its mean is close to the segment's mean
    seg = slots.segments[2]
    prefix = slots.xyz[seg.start:seg.start + 300]
    assert np.abs(prefix.mean(0)).max() < 0.25  # points are N(0, 1): a sample of 300 has mean ~ +-0.06


def test_budget_controller_converges_to_the_target_frame_time():
    ctl = BudgetController(target_fps=30, initial=1_000_000, min_budget=1000, max_budget=10_000_000)
    cost = lambda drawn: 6.0 + drawn * 2e-4  # noqa: E731  ms: fixed part + per-point part
    total = 2_000_000
    for _ in range(40):
        drawn = min(ctl.budget, total)
        ctl.update(cost(drawn), drawn)
    assert 1000 / 30 * 0.84 < cost(min(ctl.budget, total)) <= 1000 / 30  # settles on the fast side of 30 fps
    small = BudgetController(target_fps=30, initial=50_000, min_budget=1000, max_budget=10_000_000)
    for _ in range(20):
        small.update(cost(10_000), 10_000)  # the whole (small) memory is drawn and fast: the budget stays
    assert small.budget == 50_000


# --------------------------------------------------------------------------------------------- on screen
@pytest.fixture(scope="module")
def gl():
    gl_mod = pytest.importorskip("explorer.gl")
    try:
        ctx = gl_mod.standalone_context()
    except RuntimeError as e:
        pytest.skip(str(e))
    fbo = gl_mod.offscreen(ctx, W, H)
    yield ctx, fbo, gl_mod
    fbo.release()
    ctx.release()


CAM = look_at(np.array([0.0, 1.0, -5.0]), np.array([0.0, 1.0, 0.0]))
K = intrinsics_to_K(fov_to_intrinsics(60.0, W / H), W, H)


def view_of(ctx, **cfg) -> MemoryView:
    return MemoryView(ctx, MemoryViewConfig(min_point_px=3.0, max_point_px=3.0, auto_budget=False, **cfg))


def shot(view: MemoryView, fbo, gl_mod) -> np.ndarray:
    fbo.use()
    view.render(CAM, K, W, H)
    return gl_mod.read_rgb(fbo)


def test_points_appear_where_they_project_then_change_and_vanish(gl):
    ctx, fbo, gl_mod = gl
    view = view_of(ctx)
    empty = shot(view, fbo, gl_mod)
    assert empty.shape == (H, W, 3) and empty.dtype == np.uint8
    xyz = np.array([[0.0, 1.0, 0.0], [-1.2, 1.8, 1.0], [1.5, 0.5, 2.0]], np.float32)  # centre, up-left, down-right
    rgb = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    view.apply_delta(delta(0, 1, [10, 11, 12], xyz, rgb, full=True))
    img = shot(view, fbo, gl_mod)
    uv, z = project(xyz.astype(np.float64), CAM, K)
    assert (z > 0).all()
    for (u, v), c in zip(uv, rgb):
        np.testing.assert_array_equal(img[int(v), int(u)], c)
    assert uv[1, 1] < H / 2 < uv[2, 1]  # read-back is top row first: the higher point is nearer the top
    changed = np.abs(img.astype(int) - empty).sum(-1) > 0
    assert 3 <= changed.sum() <= 3 * 9  # three 3x3 sprites and nothing else

    view.apply_delta(delta(1, 2, recolored=[11], recolor_rgb=[[255, 255, 0]]))
    img = shot(view, fbo, gl_mod)
    np.testing.assert_array_equal(img[int(uv[1, 1]), int(uv[1, 0])], [255, 255, 0])
    np.testing.assert_array_equal(img[int(uv[0, 1]), int(uv[0, 0])], [255, 0, 0])

    view.apply_delta(delta(2, 3, removed=[10, 12]))
    img = shot(view, fbo, gl_mod)
    for k in (0, 2):
        u, v = uv[k]
        np.testing.assert_array_equal(img[int(v), int(u)], empty[int(v), int(u)])
    np.testing.assert_array_equal(img[int(uv[1, 1]), int(uv[1, 0])], [255, 255, 0])
    view.apply_delta(delta(3, 4, removed=[11]))
    np.testing.assert_array_equal(shot(view, fbo, gl_mod), empty)
    view.release()


def test_sprites_scale_with_depth_and_voxel(gl):
    ctx, fbo, gl_mod = gl
    view = MemoryView(ctx, MemoryViewConfig(min_point_px=1.0, max_point_px=64.0, point_scale=1.0, auto_budget=False))
    base = shot(view, fbo, gl_mod)

    def footprint(z, voxel):
        view.apply_delta(delta(0, 1, [1], [[0.0, 1.0, z]], [[255, 0, 255]], full=True, voxel=voxel))
        return int((np.abs(shot(view, fbo, gl_mod).astype(int) - base).sum(-1) > 0).sum())

    near, far, big = footprint(-2.0, 0.1), footprint(5.0, 0.1), footprint(5.0, 0.2)
    fx = K[0, 0]
    assert near == pytest.approx((0.1 * fx / 3.0) ** 2, rel=0.35)  # size = voxel * focal / depth
    assert far < near and big == pytest.approx(4 * far, rel=0.35)
    view.release()


def test_incremental_deltas_write_only_what_changed(gl):
    ctx, fbo, gl_mod = gl
    view = view_of(ctx)
    n = 20_000
    view.apply_delta(delta(0, 1, *random_points(n), full=True))
    allocs, base = view.buffer_allocations, view.bytes_uploaded
    assert base == n * 16  # 12 bytes of position + 4 of colour per point

    view.apply_delta(delta(1, 2, *random_points(500, seed=3, offset=n)))
    assert view.bytes_uploaded - base == 500 * 16
    base = view.bytes_uploaded
    view.apply_delta(delta(2, 3, recolored=[7], recolor_rgb=[[1, 2, 3]]))
    assert view.bytes_uploaded - base == 4  # one colour, no position
    base = view.bytes_uploaded
    view.apply_delta(delta(3, 4, removed=np.arange(100, 140)))
    assert 0 < view.bytes_uploaded - base < n * 16 // 4
    assert view.buffer_allocations == allocs and view.num_points == n + 500 - 40

    # what the GPU holds matches the CPU mirror slot for slot (the writes landed at the right offsets)
    s = view.slots
    gpu_xyz = np.frombuffer(view.vbo_xyz.read(), np.float32).reshape(-1, 3)
    gpu_rgba = np.frombuffer(view.vbo_rgba.read(), np.uint8).reshape(-1, 4)
    live = s.lookup(np.array(sorted(s.slot_of)), "t")
    np.testing.assert_array_equal(gpu_xyz[live], s.xyz[live])
    np.testing.assert_array_equal(gpu_rgba[live], s.rgba[live])
    np.testing.assert_array_equal(gpu_rgba[s.slot_of[7], :3], [1, 2, 3])
    view.release()


def test_budget_limits_drawn_points(gl):
    ctx, fbo, gl_mod = gl
    view = MemoryView(ctx, MemoryViewConfig(min_budget=100, initial_budget=1000, auto_budget=False))
    view.apply_delta(delta(0, 1, *random_points(6000), full=True))
    view.apply_delta(delta(1, 2, *random_points(4000, seed=1, offset=6000)))
    shot(view, fbo, gl_mod)
    assert 1000 <= view.points_drawn <= 1000 + len(view.slots.segments)
    view.budget = 10**6
    shot(view, fbo, gl_mod)
    assert view.points_drawn == 10_000
    view.release()


def test_auto_budget_follows_reported_frame_time(gl):
    ctx, fbo, gl_mod = gl
    view = MemoryView(ctx, MemoryViewConfig(min_budget=100, initial_budget=8000, target_fps=30))
    view.apply_delta(delta(0, 1, *random_points(10_000), full=True))
    drawn = []
    for _ in range(12):
        shot(view, fbo, gl_mod)
        drawn.append(view.points_drawn)
        view.report_frame_time(100.0)  # three times too slow
    assert view.budget <= 8000 // 3
    assert drawn == sorted(drawn, reverse=True) and drawn[-1] < drawn[0] // 2
    view.release()


def test_bad_deltas_are_refused_and_leave_the_view_unchanged(gl):
    ctx, fbo, gl_mod = gl
    view = view_of(ctx)
    with pytest.raises(DeltaError, match="first delta must be full"):
        view.apply_delta(delta(0, 1, *random_points(3)))
    view.apply_delta(delta(0, 1, *random_points(10), full=True))
    before = (view.version, view.num_points, view.bytes_uploaded)
    with pytest.raises(DeltaError, match="applies to version 5"):
        view.apply_delta(delta(5, 6, removed=[1]))
    with pytest.raises(DeltaError, match="id 99 is not in the view"):
        view.apply_delta(delta(1, 2, removed=[1, 99]))
    with pytest.raises(DeltaError, match="id 3 is already"):
        view.apply_delta(delta(1, 2, *random_points(2, offset=3)))
    with pytest.raises(DeltaError, match="removed by the same delta"):
        view.apply_delta(delta(1, 2, removed=[2], recolored=[2], recolor_rgb=[[0, 0, 0]]))
    assert (view.version, view.num_points, view.bytes_uploaded) == before
    view.apply_delta(delta(1, 2, [4], [[0, 0, 0]], removed=[4]))  # remove then re-add an id: allowed
    assert view.num_points == 10 and view.version == 2
    view.release()


def test_camera_path_records_moves(gl):
    ctx, fbo, gl_mod = gl
    view = view_of(ctx)
    empty = shot(view, fbo, gl_mod)
    view.add_camera(look_at(np.array([-1.0, 0.5, 0.0]), np.array([0.0, 0.5, 5.0])))
    view.add_camera(look_at(np.array([-1.0, 0.5, 0.0]), np.array([0.0, 0.5, 5.0])))  # did not move: not recorded
    assert view.path_len == 1
    view.add_camera(look_at(np.array([1.0, 1.5, 0.0]), np.array([0.0, 0.5, 5.0])))
    assert view.path_len == 2
    img = shot(view, fbo, gl_mod)
    diff = np.abs(img.astype(int) - empty).sum(-1) > 0
    assert diff.sum() >= 10  # a line across the view
    view.release()
