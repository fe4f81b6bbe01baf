"""Edit tools: box selection (projection, nearest-layer visibility), the edit messages, and the selection overlay."""

from __future__ import annotations

import numpy as np
import pytest

from engine.geometry import fov_to_intrinsics, intrinsics_to_K, look_at, project
from engine.server.protocol import (Ack, EditInsertPrimitive, EditRecolor, EditRemoveIds, EditUndo, Error, ErrorCode,
                                    MemoryDelta, Primitive, decode, encode)
from explorer.edit import EditConfig, Editor, SelectionOverlay, box_in_front, normalize_rect, select_in_rect

W, H = 160, 90
VOXEL = 0.05
EYE = np.array([0.0, 1.6, 0.0])
W2C = look_at(EYE, EYE + [0.0, 0.0, 1.0])
K = intrinsics_to_K(fov_to_intrinsics(60.0, W / H), W, H)
SPRITE_M, PX_RANGE = VOXEL * 1.5, (1.0, 24.0)


def plane(x0, x1, y0, y1, z, step=VOXEL):
    xs, ys = np.meshgrid(np.arange(x0, x1 + 1e-9, step), np.arange(y0, y1 + 1e-9, step), indexing="ij")
    return np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, z)], 1)


def layered_scene():
    """A block 2 m ahead (ids from 0) in front of a wall at 4 m (ids from 1000)."""
    block = plane(-0.3, 0.3, 1.3, 1.9, 2.0)
    wall = plane(-2.0, 2.0, 0.0, 3.0, 4.0)
    ids = np.concatenate([np.arange(len(block)), 1000 + np.arange(len(wall))]).astype(np.int64)
    return ids, np.concatenate([block, wall]).astype(np.float32), len(block)


def rect_around(pts, pad=0.0):
    uv, _ = project(pts.astype(np.float64), W2C, K)
    return (uv[:, 0].min() - pad, uv[:, 1].min() - pad, uv[:, 0].max() + pad, uv[:, 1].max() + pad)


def select(ids, xyz, rect, **kw):
    return select_in_rect(ids, xyz, W2C, K, W, H, rect, SPRITE_M, PX_RANGE, VOXEL, **kw)


# --------------------------------------------------------------------------------------------- selection
def test_a_box_over_the_block_takes_the_block_and_not_the_wall_behind_it():
    ids, xyz, nb = layered_scene()
    rect = rect_around(xyz[:nb], pad=0.5)
    got = select(ids, xyz, rect)
    np.testing.assert_array_equal(got, ids[:nb])  # every block point, and none of the wall it hides


def test_wall_points_beside_the_block_are_visible():
    ids, xyz, nb = layered_scene()
    bu0, bv0, bu1, bv1 = rect_around(xyz[:nb])
    rect = (bu1 + 6, bv0, bu1 + 30, bv1)  # right of the block: only wall there
    got = select(ids, xyz, rect)
    uv, _ = project(xyz[nb:].astype(np.float64), W2C, K)
    inside = ((uv[:, 0] >= rect[0]) & (uv[:, 0] < rect[2]) & (uv[:, 1] >= rect[1]) & (uv[:, 1] < rect[3]))
    np.testing.assert_array_equal(got, ids[nb:][inside])
    assert len(got) > 20


def test_one_layer_selection_matches_the_projection_exactly():
    rng = np.random.default_rng(0)
    # points on a wall facing the camera: one surface, nothing hidden; rectangle in pixel coordinates, origin top-left
    xyz = np.stack([rng.uniform(-2, 2, 3000), rng.uniform(0.2, 3.0, 3000), np.full(3000, 3.0)], 1).astype(np.float32)
    ids = np.arange(3000, dtype=np.int64) * 7
    rect = (30.0, 10.0, 95.5, 60.25)
    uv, _ = project(xyz.astype(np.float64), W2C, K)
    want = ids[(uv[:, 0] >= 30) & (uv[:, 0] < 95.5) & (uv[:, 1] >= 10) & (uv[:, 1] < 60.25)]
    np.testing.assert_array_equal(select(ids, xyz, rect), np.sort(want))
    top = select(ids, xyz, (0, 0, W, H / 2))
    assert (xyz[np.isin(ids, top), 1] > EYE[1] - 1e-3).all()  # the top of the image is up in the world


def test_points_behind_the_camera_or_outside_are_never_selected():
    xyz = np.array([[0.0, 1.6, -2.0], [0.0, 1.6, 2.0], [5.0, 1.6, 1.0]], np.float32)  # behind, ahead, off-screen
    ids = np.array([1, 2, 3], np.int64)
    np.testing.assert_array_equal(select(ids, xyz, (0, 0, W, H)), [2])
    assert len(select(ids, xyz, (50, 50, 50, 80))) == 0  # empty rectangle
    assert len(select(ids[:0], xyz[:0], (0, 0, W, H))) == 0
    assert normalize_rect(10, 40, 2, 5) == (2, 5, 10, 40)


# --------------------------------------------------------------------------------------------- messages
def test_editor_builds_the_edit_messages():
    ed = Editor(EditConfig(palette=((1, 2, 3), (4, 5, 6))))
    assert ed.delete() is None and ed.recolor() is None  # nothing selected yet
    assert ed.select(np.array([5, 3, 3, 9])) == 3
    assert ed.select(np.array([1]), add=True) == 4
    rec = ed.recolor()
    assert isinstance(rec, EditRecolor) and rec.ids.tolist() == [1, 3, 5, 9] and (rec.rgb == [1, 2, 3]).all()
    rec2 = ed.recolor()
    assert (rec2.rgb == [4, 5, 6]).all() and rec2.edit_id == rec.edit_id + 1  # C cycles the palette
    rm = ed.delete()
    assert isinstance(rm, EditRemoveIds) and rm.ids.tolist() == [1, 3, 5, 9] and len(ed.selected) == 0
    box = ed.insert_box(W2C)
    assert isinstance(box, EditInsertPrimitive) and box.shape is Primitive.BOX
    np.testing.assert_allclose(box.center, EYE + [0.0, 0.0, 2.0])  # 2 m straight ahead
    np.testing.assert_allclose(box.size, [0.5, 0.5, 0.5])
    undo = ed.undo()
    assert isinstance(undo, EditUndo)
    ids = [m.edit_id for m in (rec, rec2, rm, box, undo)]
    assert ids == sorted(set(ids))
    for msg in (rec, rm, box, undo):  # every message survives the wire
        assert type(decode(encode(msg))) is type(msg)
    # replies: an Ack or Error resolves the pending edit with a line for the HUD
    assert ed.resolve(Ack(ref_type="edit_remove_ids", ref_id=rm.edit_id)) == "delete 4 points: done"
    assert ed.resolve(Ack(ref_type="edit_remove_ids", ref_id=rm.edit_id)) is None  # already resolved
    line = ed.resolve(Error(code=ErrorCode.INVALID, message="bad ids", ref_type="edit_recolor"))
    assert line == "recolour 4 points failed: bad ids"
    assert ed.resolve(Ack(ref_type="save")) is None


def test_prune_keeps_what_is_still_in_memory_and_box_in_front_follows_the_view():
    ed = Editor()
    ed.select(np.array([1, 2, 3]))
    ed.prune(np.array([True, False, True]))
    assert ed.selected.tolist() == [1, 3]
    w2c = look_at(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 0.0]))  # looking along -z
    np.testing.assert_allclose(box_in_front(w2c, 1.5), [1.0, 2.0, 1.5])
    with pytest.raises(ValueError):
        EditConfig(box_size=0)


# --------------------------------------------------------------------------------------------- drawing
def test_overlay_highlights_selected_points_and_draws_the_drag_rectangle():
    from explorer.gl import gl_projection, offscreen, read_rgb, standalone_context
    from explorer.memory_view import MemoryView

    ctx = standalone_context()
    fbo = offscreen(ctx, W, H)
    fbo.use()
    view, overlay = MemoryView(ctx), SelectionOverlay(ctx, (255, 230, 0))
    ids, xyz, nb = layered_scene()
    rgb = np.where(np.arange(len(ids))[:, None] < nb, [200, 20, 20], [20, 40, 200]).astype(np.uint8)
    view.apply_delta(MemoryDelta(version_from=0, version_to=1, full=True, voxel_size=VOXEL, added_ids=ids,
                                 added_xyz=xyz, added_rgb=rgb, removed_ids=ids[:0], recolored_ids=ids[:0],
                                 recolored_rgb=rgb[:0]))
    ctx.clear()
    view.render(W2C, K, W, H)
    before = read_rgb(fbo)
    overlay.set_points(xyz[:nb])
    overlay.draw_points(gl_projection(K, W, H, 0.05, 1000.0) @ W2C, K[0, 0], SPRITE_M, PX_RANGE, (0, 0, W, H))
    after = read_rgb(fbo)
    yellow = (after[..., 0] > 200) & (after[..., 1] > 180) & (after[..., 2] < 60)
    u0, v0, u1, v1 = rect_around(xyz[:nb], pad=4)
    ys, xs = np.nonzero(yellow)
    assert len(xs) > 30 and xs.min() >= u0 and xs.max() <= u1 and ys.min() >= v0 and ys.max() <= v1
    red_left = ((after[..., 0] > 150) & (after[..., 1] < 60)).sum()
    assert 0 < red_left < ((before[..., 0] > 150) & (before[..., 1] < 60)).sum()  # dots, not covers: colour shows
    overlay.draw_rect((10, 10, 40, 30), (0, 0, W, H))
    framed = read_rgb(fbo)
    edge = framed[H - 10 - 1, 10:50].astype(int)  # the rectangle's bottom edge: y up, so row H - 11 from the top
    assert ((edge[:, 0] > 200) & (edge[:, 1] > 180) & (edge[:, 2] < 80)).all()
    assert (framed[H - 25, 20:40] != before[H - 25, 20:40]).any()  # the translucent fill inside
    assert ctx.error == "GL_NO_ERROR"
    view.release()
    overlay.release()
    fbo.release()
    ctx.release()
