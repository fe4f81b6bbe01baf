"""SpatialMemory: insertion and de-duplication, edits, deltas and the change log, capacity, files."""

from __future__ import annotations

import numpy as np
import pytest

from engine import geometry
from engine.memory import MemoryDelta, MemoryFileError, SpatialMemory

W, H = 32, 24


def camera(eye=(0.0, 1.0, 0.0), target=(0.0, 1.0, 5.0)) -> geometry.Camera:
    K = geometry.intrinsics_to_K(geometry.fov_to_intrinsics(60.0, W / H), W, H)
    return geometry.Camera(geometry.look_at(eye, target), K, W, H)


def plane_frame(z: float = 2.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    return rgb, np.full((H, W), z, np.float32)


def random_points(rng, n, lo=-1.0, hi=1.0):
    return rng.uniform(lo, hi, (n, 3)).astype(np.float32), rng.integers(0, 256, (n, 3), dtype=np.uint8)


def state(mem: SpatialMemory):
    """(ids, xyz, rgb) sorted by id: the memory as a client sees it."""
    o = np.argsort(mem.ids)
    return mem.ids[o].copy(), mem.xyz[o].copy(), mem.rgb[o].copy()


# --------------------------------------------------------------------------------------------- insertion
def test_insert_rgbd_backprojects_every_valid_pixel():
    cam = camera()
    rgb, depth = plane_frame(2.0)
    mem = SpatialMemory(voxel_size=0.001)  # finer than the pixel footprint: one point per pixel
    delta = mem.insert_rgbd(rgb, depth, cam.K, cam.w2c, frame_id=3)
    assert len(mem) == W * H == delta.num_added
    true = geometry.unproject(depth, cam.K, cam.w2c).reshape(-1, 3)
    np.testing.assert_allclose(np.sort(mem.xyz, axis=0), np.sort(true, axis=0).astype(np.float32), atol=1e-5)
    assert set(map(tuple, mem.rgb)) == set(map(tuple, rgb.reshape(-1, 3)))
    assert (mem.frame_id == 3).all() and (mem.confidence == 1.0).all()
    np.testing.assert_array_equal(np.sort(mem.ids), np.arange(W * H))
    assert delta.version_from == 0 and delta.version_to == mem.version == 1


def test_insert_rgbd_skips_excluded_invalid_and_out_of_range_depth():
    cam = camera()
    rgb, depth = plane_frame(2.0)
    depth[0, :] = np.nan
    depth[1, :] = 0.01  # below the near limit
    depth[2, :] = 80.0  # beyond the far limit
    depth[3, :] = np.inf
    exclude = np.zeros((H, W), bool)
    exclude[10:14, 5:9] = True
    mem = SpatialMemory(voxel_size=0.001)
    mem.insert_rgbd(rgb, depth, cam.K, cam.w2c, frame_id=0, exclude=exclude, depth_range=(0.05, 50.0))
    assert len(mem) == W * H - 4 * W - 16
    assert np.isfinite(mem.xyz).all()
    # the excluded pixels' points are absent
    excluded_pts = geometry.unproject(plane_frame(2.0)[1], cam.K, cam.w2c)[10:14, 5:9].reshape(-1, 3)
    d = np.linalg.norm(mem.xyz[:, None] - excluded_pts[None].astype(np.float32), axis=-1).min(axis=0)
    assert (d > 1e-3).all()


def test_voxel_deduplication_within_and_across_inserts():
    rng = np.random.default_rng(1)
    mem = SpatialMemory(voxel_size=0.1)
    base = np.array([[0.05, 0.05, 0.05], [0.25, 0.05, 0.05]], np.float32)
    xyz = np.concatenate([base, base + 0.01, base + 0.02])  # three copies of two voxels in one batch
    rgb = rng.integers(0, 256, (6, 3), dtype=np.uint8)
    d = mem.insert_points(xyz, rgb)
    assert len(mem) == 2 and d.num_added == 2
    np.testing.assert_array_equal(mem.xyz, base)  # ties keep the first point of the batch
    np.testing.assert_array_equal(mem.rgb, rgb[:2])
    again = mem.insert_points(xyz + 0.005, rgb)  # same voxels again, equal confidence: nothing changes
    assert again.is_empty and len(mem) == 2 and mem.version == 1
    keys = mem.voxel_keys(mem.xyz)
    assert len(np.unique(keys)) == len(mem)


def test_highest_confidence_wins_within_a_batch_and_replaces_stored_points():
    mem = SpatialMemory(voxel_size=0.1)
    xyz = np.array([[0.01, 0, 0], [0.02, 0, 0], [0.03, 0, 0]], np.float32)
    rgb = np.array([[1, 1, 1], [2, 2, 2], [3, 3, 3]], np.uint8)
    mem.insert_points(xyz, rgb, confidence=np.array([0.2, 0.9, 0.5], np.float32))
    np.testing.assert_array_equal(mem.rgb, [[2, 2, 2]])
    old_id = int(mem.ids[0])
    lower = mem.insert_points(xyz[:1], rgb[:1], confidence=np.array([0.5], np.float32))
    assert lower.is_empty and int(mem.ids[0]) == old_id
    higher = mem.insert_points(np.array([[0.04, 0, 0]], np.float32), np.array([[9, 9, 9]], np.uint8),
                               confidence=np.array([0.95], np.float32))
    assert len(mem) == 1 and mem.rgb[0].tolist() == [9, 9, 9]
    np.testing.assert_array_equal(higher.removed_ids, [old_id])
    assert higher.num_added == 1 and higher.added_ids[0] > old_id == higher.removed_ids[0]


# --------------------------------------------------------------------------------------------- edits
@pytest.fixture
def filled():
    rng = np.random.default_rng(2)
    mem = SpatialMemory(voxel_size=0.02)
    mem.insert_points(*random_points(rng, 3000))
    return mem


def test_remove_ids_ignores_unknown_ids(filled):
    victims = filled.ids[::7].copy()
    n = len(filled)
    d = filled.remove_ids(np.concatenate([victims, [10**9, -5]]))
    assert len(filled) == n - len(victims)
    np.testing.assert_array_equal(np.sort(d.removed_ids), np.sort(victims))
    assert not np.isin(filled.ids, victims).any()
    np.testing.assert_array_equal(filled.rows_of(filled.ids), np.arange(len(filled)))  # index stays consistent
    assert filled.remove_ids(victims).is_empty


def test_remove_and_select_box(filled):
    lo, hi = np.array([-0.5, -0.5, -0.5]), np.array([0.2, 0.5, 0.0])
    inside = ((filled.xyz >= lo) & (filled.xyz <= hi)).all(axis=1)
    ids = filled.select_box(lo, hi)
    np.testing.assert_array_equal(np.sort(ids), np.sort(filled.ids[inside]))
    d = filled.remove_box(lo, hi)
    np.testing.assert_array_equal(np.sort(d.removed_ids), np.sort(ids))
    assert not ((filled.xyz >= lo) & (filled.xyz <= hi)).all(axis=1).any()
    with pytest.raises(ValueError, match="exceeds"):
        filled.remove_box(hi, lo)


def test_remove_in_rect_frustum_and_visible_only():
    cam = camera(eye=(0, 0, 0), target=(0, 0, 1))
    K, w2c = cam.K, cam.w2c
    # a near wall (z = 1) covering pixel columns 0..15 and a far wall (z = 3) behind all of it
    uv = geometry.pixel_grid(W, H).reshape(-1, 2)
    near = geometry.unproject(np.full((H, W), 1.0), K, w2c).reshape(H, W, 3)[:, :16].reshape(-1, 3)
    far = geometry.unproject(np.full((H, W), 3.0), K, w2c).reshape(-1, 3)
    mem = SpatialMemory(voxel_size=0.001)
    mem.insert_points(np.concatenate([near, far]), np.zeros((len(near) + len(far), 3), np.uint8))
    assert len(uv) == len(far)
    rect = (4, 4, 12, 12)  # inside the near wall's columns
    all_ids = mem.select_in_rect(cam, rect)
    vis_ids = mem.select_in_rect(cam, rect, visible_only=True)
    assert len(all_ids) == 2 * 8 * 8 and len(vis_ids) == 8 * 8
    assert (mem.xyz[mem.rows_of(vis_ids)][:, 2] < 1.5).all()  # only the near wall is seen
    behind = camera(eye=(0, 0, 5), target=(0, 0, 10))  # looking away: nothing in front of it
    assert len(mem.select_in_rect(behind, (0, 0, W, H))) == 0
    d = mem.remove_in_rect(cam, rect, visible_only=True)
    assert d.num_removed == 64 and len(mem) == len(near) + len(far) - 64
    with pytest.raises(ValueError, match="u0 < u1"):
        mem.select_in_rect(cam, (5, 5, 5, 9))


def test_recolor_by_ids_and_box(filled):
    ids = filled.ids[:10].copy()
    d = filled.recolor(ids, np.array([7, 8, 9], np.uint8))
    np.testing.assert_array_equal(np.sort(d.recolored_ids), np.sort(ids))
    assert (filled.rgb[filled.rows_of(ids)] == [7, 8, 9]).all()
    cols = np.arange(30, dtype=np.uint8).reshape(10, 3)
    filled.recolor(ids, cols)
    np.testing.assert_array_equal(filled.rgb[filled.rows_of(ids)], cols)
    lo, hi = np.full(3, -0.2), np.full(3, 0.2)
    d = filled.recolor_box(lo, hi, np.array([1, 2, 3], np.uint8))
    assert d.num_recolored == len(filled.select_box(lo, hi)) > 0
    with pytest.raises(ValueError, match="uint8"):
        filled.recolor(ids, np.array([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="distinct"):
        filled.recolor(np.array([ids[0], ids[0]]), np.array([1, 2, 3], np.uint8))


# --------------------------------------------------------------------------------------------- deltas
def random_edit(mem: SpatialMemory, rng) -> MemoryDelta:
    op = rng.integers(0, 5)
    if op <= 1 or not len(mem):
        xyz, rgb = random_points(rng, int(rng.integers(1, 400)))
        conf = rng.uniform(0, 1, len(xyz)).astype(np.float32) if rng.random() < 0.5 else None
        return mem.insert_points(xyz, rgb, confidence=conf, frame_id=int(rng.integers(0, 9)))
    if op == 2:
        return mem.remove_ids(rng.choice(mem.ids, min(30, len(mem)), replace=False))
    if op == 3:
        lo = rng.uniform(-1, 0.6, 3)
        return mem.remove_box(lo, lo + 0.4)
    ids = rng.choice(mem.ids, min(25, len(mem)), replace=False)
    return mem.recolor(ids, rng.integers(0, 256, (len(ids), 3), dtype=np.uint8))


def sorted_state(s):
    o = np.argsort(s[0])
    return tuple(np.asarray(a)[o] for a in s)


def assert_states_equal(a, b):
    for x, y in zip(sorted_state(a), sorted_state(b)):
        np.testing.assert_array_equal(x, y)


def test_deltas_mirror_the_memory_and_delta_since_matches_merge():
    rng = np.random.default_rng(3)
    mem = SpatialMemory(voxel_size=0.05, capacity=2500)
    empty = (np.zeros(0, np.int64), np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8))
    history = {0: empty}
    mirror = empty
    deltas = []
    for _ in range(50):
        d = random_edit(mem, rng)
        if d.is_empty:
            assert d.version_to == d.version_from == mem.version
            continue
        assert d.version_from == deltas[-1].version_to if deltas else d.version_from == 0
        deltas.append(d)
        mirror = d.apply(*mirror)
        assert_states_equal(mirror, state(mem))
        history[mem.version] = state(mem)
    for v in range(0, mem.version, 5):
        d = mem.delta_since(v)
        assert not d.full and d.version_from == v and d.version_to == mem.version
        assert_states_equal(d.apply(*history[v]), state(mem))
        merged = deltas[v]
        for nxt in deltas[v + 1:]:
            merged = merged.merge(nxt)
        assert_states_equal(merged.apply(*history[v]), state(mem))
        # the compact delta never reports a point that was born and died in between
        assert not np.isin(d.removed_ids, d.added_ids).any()
    assert mem.delta_since(mem.version).is_empty
    with pytest.raises(ValueError, match="not in 0.."):
        mem.delta_since(mem.version + 1)
    with pytest.raises(ValueError, match="do not chain"):
        deltas[0].merge(deltas[2])


def test_old_versions_fall_out_of_the_log_and_get_a_full_snapshot():
    rng = np.random.default_rng(4)
    mem = SpatialMemory(voxel_size=0.05, log_limit=50)
    for _ in range(20):
        mem.insert_points(*random_points(rng, 5))
        mem.remove_ids(mem.ids[:2])
    d = mem.delta_since(0)
    assert d.full and d.version_from == 0 and d.version_to == mem.version
    assert_states_equal((d.added_ids, d.added_xyz, d.added_rgb), state(mem))
    garbage = (np.array([10**6]), np.zeros((1, 3), np.float32), np.zeros((1, 3), np.uint8))
    assert_states_equal(d.apply(*garbage), state(mem))  # a snapshot replaces whatever the client had
    recent = mem.delta_since(mem.version - 1)
    assert not recent.full
    # a snapshot merged with later edits stays a snapshot of the newest state
    ids = mem.ids[:3].copy()
    later = mem.recolor(ids, np.array([4, 5, 6], np.uint8)).merge(mem.remove_ids(mem.ids[3:5]))
    merged = d.merge(later)
    assert merged.full and merged.version_to == mem.version
    assert_states_equal(merged.apply(*garbage), state(mem))


def test_capacity_evicts_lowest_confidence_then_oldest():
    mem = SpatialMemory(voxel_size=0.01, capacity=10)
    xyz = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)  # distinct voxels
    conf = np.array([0.9, 0.1, 0.9, 0.9, 0.2, 0.9, 0.9, 0.9], np.float32)
    mem.insert_points(xyz, np.zeros((8, 3), np.uint8), confidence=conf)
    first_ids = np.sort(mem.ids).copy()
    d = mem.insert_points(xyz[:4] + 100, np.zeros((4, 3), np.uint8), confidence=np.full(4, 0.9, np.float32))
    assert len(mem) == 10
    # 12 points for 10 places: the two least confident go (ids 1 and 4 of the first batch)
    np.testing.assert_array_equal(np.sort(d.removed_ids), first_ids[[1, 4]])
    d2 = mem.insert_points(xyz[:3] + 200, np.zeros((3, 3), np.uint8), confidence=np.full(3, 0.9, np.float32))
    # all equally confident now: the three oldest go
    np.testing.assert_array_equal(np.sort(d2.removed_ids), first_ids[[0, 2, 3]])
    assert len(mem) == 10 and d2.num_added == 3
    # an insert larger than the capacity keeps the most confident of everything
    d3 = mem.insert_points(np.arange(30 * 3, dtype=np.float32).reshape(30, 3) + 500, np.zeros((30, 3), np.uint8),
                           confidence=np.linspace(0.0, 1.0, 30).astype(np.float32))
    assert len(mem) == 10 and mem.confidence.min() >= 0.9 and d3.num_added <= 30


# --------------------------------------------------------------------------------------------- files
def test_save_load_is_bit_exact_and_keeps_counters(tmp_path, filled):
    filled.remove_ids(filled.ids[:100])
    filled.recolor(filled.ids[:5], np.array([1, 2, 3], np.uint8))
    path = tmp_path / "mem.safetensors"
    filled.save(path)
    back = SpatialMemory.load(path)
    for name in ("xyz", "rgb", "confidence", "frame_id", "ids"):
        a, b = getattr(filled, name), getattr(back, name)
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))  # bit for bit
    assert (back.voxel_size, back.capacity, back.version, back.next_id) == (
        filled.voxel_size, filled.capacity, filled.version, filled.next_id)
    assert back.delta_since(0).full  # the log is not saved
    d = back.insert_points(np.array([[5.0, 5.0, 5.0]], np.float32), np.zeros((1, 3), np.uint8))
    assert d.added_ids[0] == filled.next_id  # ids are never reused after a reload
    again = back.insert_points(filled.xyz[:10].copy(), filled.rgb[:10])  # de-duplication still works
    assert again.is_empty


def test_corrupt_files_raise_clear_errors(tmp_path, filled):
    good = tmp_path / "good.safetensors"
    filled.save(good)
    with pytest.raises(MemoryFileError, match="file not found"):
        SpatialMemory.load(tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a memory at all" * 10)
    with pytest.raises(MemoryFileError, match="not a readable safetensors file"):
        SpatialMemory.load(garbage)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(MemoryFileError, match="garbage|truncated|not a readable"):
        SpatialMemory.load(truncated)
    from safetensors.numpy import save_file

    other = tmp_path / "other.safetensors"
    save_file({"x": np.zeros(3, np.float32)}, str(other), metadata={"format": "something-else"})
    with pytest.raises(MemoryFileError, match="not a spatial-memory file"):
        SpatialMemory.load(other)
    bad = tmp_path / "bad.safetensors"
    meta = {"format": "spatia-memory", "format_version": "1", "voxel_size": "0.02", "capacity": "100",
            "version": "1", "next_id": "2"}
    arrays = {"xyz": np.zeros((2, 3), np.float32), "rgb": np.zeros((2, 3), np.uint8),
              "confidence": np.ones(2, np.float32), "frame_id": np.zeros(2, np.int32),
              "ids": np.array([0, 1], np.int64)}
    save_file(arrays, str(bad), metadata=meta)
    with pytest.raises(MemoryFileError, match="share a voxel"):
        SpatialMemory.load(bad)
    arrays["rgb"] = np.zeros((2, 3), np.float32)
    save_file(arrays, str(bad), metadata=meta)
    with pytest.raises(MemoryFileError, match="'rgb'"):
        SpatialMemory.load(bad)


def test_ply_round_trip_and_foreign_files(tmp_path, filled):
    import open3d as o3d

    path = tmp_path / "mem.ply"
    filled.export_ply(path)
    back = SpatialMemory.from_ply(path, voxel_size=filled.voxel_size)
    assert_states_equal((np.arange(len(back)), back.xyz, back.rgb), (np.arange(len(filled)), filled.xyz, filled.rgb))
    # written by open3d without colours -> grey
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.array([[0, 0, 0], [1, 1, 1.0]])))
    plain = tmp_path / "plain.ply"
    o3d.io.write_point_cloud(str(plain), pcd)
    grey = SpatialMemory.from_ply(plain)
    assert len(grey) == 2 and (grey.rgb == 128).all()
    # written by another tool: ASCII, float coordinates, uchar colours, an extra property
    ascii_ply = tmp_path / "tool.ply"
    ascii_ply.write_text("ply\nformat ascii 1.0\ncomment from another tool\nelement vertex 3\n"
                         "property float x\nproperty float y\nproperty float z\nproperty float intensity\n"
                         "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
                         "0 0 0 0.5 255 0 0\n1 0 0 0.5 0 255 0\n0 1 0 0.5 0 0 255\n")
    tool = SpatialMemory.from_ply(ascii_ply, voxel_size=0.1)
    o = np.argsort(tool.xyz[:, 0] + 2 * tool.xyz[:, 1])
    np.testing.assert_array_equal(tool.rgb[o], [[255, 0, 0], [0, 255, 0], [0, 0, 255]])
    broken = tmp_path / "broken.ply"
    broken.write_text("this is not a ply file\n")
    with pytest.raises(MemoryFileError, match="no points"):
        SpatialMemory.from_ply(broken)
    with pytest.raises(MemoryFileError, match="file not found"):
        SpatialMemory.from_ply(tmp_path / "nope.ply")


# --------------------------------------------------------------------------------------------- input errors
def test_bad_inputs_name_the_problem():
    mem = SpatialMemory()
    cam = camera()
    rgb, depth = plane_frame()
    with pytest.raises(ValueError, match=r"xyz must be \[N, 3\]"):
        mem.insert_points(np.zeros((4, 2), np.float32), np.zeros((4, 3), np.uint8))
    with pytest.raises(ValueError, match="non-finite"):
        mem.insert_points(np.array([[np.nan, 0, 0]], np.float32), np.zeros((1, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        mem.insert_rgbd(rgb.astype(np.float32), depth, cam.K, cam.w2c, 0)
    with pytest.raises(ValueError, match="exclude must be a bool"):
        mem.insert_rgbd(rgb, depth, cam.K, cam.w2c, 0, exclude=np.zeros((H, W), np.uint8))
    with pytest.raises(ValueError, match="depth_range"):
        mem.insert_rgbd(rgb, depth, cam.K, cam.w2c, 0, depth_range=(5.0, 1.0))
    with pytest.raises(ValueError, match="confidence must be finite"):
        mem.insert_points(np.zeros((1, 3), np.float32), np.zeros((1, 3), np.uint8), confidence=np.array([-1.0]))
    with pytest.raises(ValueError, match="extent"):
        mem.insert_points(np.array([[1e5, 0, 0]], np.float32), np.zeros((1, 3), np.uint8))
    with pytest.raises(ValueError, match="voxel_size"):
        SpatialMemory(voxel_size=0.0)
    assert len(mem) == 0 and mem.version == 0  # failed calls change nothing


# --------------------------------------------------------------------------------------------- indexes
def test_hash_map_against_a_dict_through_growth_tombstones_and_reuse():
    from engine.memory.index import Int64HashMap

    rng = np.random.default_rng(9)
    h, ref = Int64HashMap(), {}
    for _ in range(40):
        keys = rng.permutation(np.unique(rng.integers(0, 20000, 1500)))
        slots, found = h.find_or_insert(keys)
        np.testing.assert_array_equal(found, [int(k) in ref for k in keys])
        vals = rng.integers(0, 1 << 40, int((~found).sum()))
        h.set_values(slots[~found], vals)
        ref.update(zip(keys[~found].tolist(), vals.tolist()))
        np.testing.assert_array_equal(h.values_at(slots[found]), [ref[int(k)] for k in keys[found]])
        gone = rng.integers(0, 20000, 600)
        h.remove(gone)
        for k in gone.tolist():
            ref.pop(k, None)
        fresh = np.unique(rng.integers(20000, 30000, 300))
        fresh = fresh[h.get(fresh) < 0]
        h.insert_new(fresh, fresh * 3)  # reuses tombstones
        ref.update(zip(fresh.tolist(), (fresh * 3).tolist()))
        assert len(h) == len(ref)
    q = np.arange(30000)
    np.testing.assert_array_equal(h.get(q), [ref.get(int(k), -1) for k in q])
    assert h.table_size >= len(ref) / h.max_load


def test_batch_deduplication_falls_back_for_widely_spread_batches():
    # 2^20 voxels apart on every axis: too spread to pack with the index into 63 bits, so lexsort decides
    mem = SpatialMemory(voxel_size=0.01)
    far = np.array([[-10000.0, -10000.0, -10000.0], [10000.0, 10000.0, 10000.0]], np.float32)
    xyz = np.concatenate([far, far + 0.001, np.zeros((1, 3), np.float32)])
    rgb = np.arange(15, dtype=np.uint8).reshape(5, 3)
    mem.insert_points(xyz, rgb, confidence=np.array([0.5, 0.5, 0.9, 0.1, 1.0], np.float32))
    assert len(mem) == 3
    got = {tuple(p): tuple(c) for p, c in zip(mem.xyz.tolist(), mem.rgb.tolist())}
    assert got[tuple((far[0] + 0.001).tolist())] == (6, 7, 8)  # the more confident copy won
    assert got[tuple(far[1].tolist())] == (3, 4, 5)


def test_nbytes_counts_columns_at_capacity_indexes_and_log():
    mem = SpatialMemory(voxel_size=0.05)
    empty = mem.nbytes
    rng = np.random.default_rng(0)
    mem.insert_points(rng.uniform(0, 3, (5000, 3)).astype(np.float32), rng.integers(0, 255, (5000, 3), dtype=np.uint8))
    live = sum(a.nbytes for a in (mem.xyz, mem.rgb, mem.confidence, mem.frame_id, mem.ids))
    assert mem.nbytes >= empty + live  # spare capacity and the hash tables come on top
    grown = mem.nbytes
    mem.remove_ids(mem.ids[:100])
    assert mem.nbytes >= grown  # removing keeps the allocation and logs the removed ids
