"""Edit tools: box-select memory points on screen, then delete, recolour, insert a box, or undo, through the server.

The viewer never edits its own copy of the memory: every edit becomes a protocol Edit message, and the change
shows when the server's MemoryDelta comes back (so the screen always shows the server's memory, and the next
generation follows the edit). Selection works on the client's mirror of point ids and positions (the memory
view's slot arrays): the points whose projection falls inside the dragged rectangle and that are visible. Visibility
is a nearest-layer test on the CPU: a z-buffer of the rectangle's points, widened by the sprite size the memory
view draws them with (a minimum filter), keeps only points within a small tolerance of the nearest surface there,
so a drag over a table does not also take the wall behind it. `SelectionOverlay` draws the selection and the
rectangle being dragged.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import moderngl
import numpy as np
from scipy.ndimage import minimum_filter

from engine.geometry import invert_se3, project
from engine.server.protocol import (Ack, EditInsertPrimitive, EditRecolor, EditRemoveIds, EditUndo, Error,
                                    Primitive)
from explorer.gl import Rect, TexturedQuad, mat4_bytes, program

PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 57, 70), (42, 157, 143), (69, 123, 230), (244, 196, 48), (155, 93, 229), (240, 240, 240), (30, 30, 30))


@dataclass
class EditConfig:
    """How selection decides visibility and where inserted boxes go."""

    depth_rel_tol: float = 0.03  # a point within 3% (plus abs tolerance) of the nearest depth there is visible
    depth_abs_voxels: float = 3.0  # ... plus this many voxels, for surfaces sampled at the voxel size
    near: float = 0.05  # metres: points closer than this are behind the near plane and never selected
    box_distance: float = 2.0  # metres in front of the camera where B puts a box
    box_size: float = 0.5  # edge length of that box in metres
    palette: tuple[tuple[int, int, int], ...] = PALETTE
    highlight_rgb: tuple[int, int, int] = (255, 230, 0)

    def __post_init__(self) -> None:
        if self.depth_rel_tol < 0 or self.depth_abs_voxels < 0 or self.near <= 0:
            raise ValueError("depth tolerances must be >= 0 and near > 0")
        if self.box_distance <= 0 or self.box_size <= 0:
            raise ValueError("box_distance and box_size must be positive")
        if not self.palette:
            raise ValueError("the palette needs at least one colour")


# --------------------------------------------------------------------------------------------- selection
def normalize_rect(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
    """Two corners in any order -> (u0, v0, u1, v1) with u0 <= u1, v0 <= v1."""
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def select_in_rect(ids: np.ndarray, xyz: np.ndarray, w2c: np.ndarray, K: np.ndarray, width: int, height: int,
                   rect: tuple[float, float, float, float], sprite_m: float, sprite_px_range: tuple[float, float],
                   voxel_size: float, config: EditConfig | None = None) -> np.ndarray:
    """Ids [S] of the visible points whose projection falls in `rect`.

    ids [N] int64 and xyz [N, 3] are the memory (world); the camera is (w2c, pixel K) for a width x height image;
    rect is (u0, v0, u1, v1) in that image's pixels, origin top-left. `sprite_m` is the sprite diameter the view
    draws (metres) and `sprite_px_range` its pixel clamp: a nearer point hides farther ones under its sprite.
    """
    c = config or EditConfig()
    u0, v0, u1, v1 = (float(a) for a in rect)
    u0, v0, u1, v1 = max(u0, 0.0), max(v0, 0.0), min(u1, float(width)), min(v1, float(height))
    if len(ids) == 0 or u1 <= u0 or v1 <= v0:
        return np.zeros(0, np.int64)
    lo_px, hi_px = sprite_px_range
    margin = float(hi_px)  # occluders just outside the rectangle can still cover points inside it
    uv, z = project(np.asarray(xyz, np.float64), w2c, K)  # [N, 2], [N]
    near = (z > c.near) & (uv[:, 0] >= u0 - margin) & (uv[:, 0] < u1 + margin) \
        & (uv[:, 1] >= v0 - margin) & (uv[:, 1] < v1 + margin)
    if not near.any():
        return np.zeros(0, np.int64)
    uv, z, cand_ids = uv[near], z[near], np.asarray(ids)[near]
    # z-buffer of the candidates on a pixel grid covering the widened rectangle
    gx0, gy0 = int(np.floor(u0 - margin)), int(np.floor(v0 - margin))
    gw, gh = int(np.ceil(u1 + margin)) - gx0, int(np.ceil(v1 + margin)) - gy0
    px = np.clip((uv[:, 0] - gx0).astype(np.int64), 0, gw - 1)
    py = np.clip((uv[:, 1] - gy0).astype(np.int64), 0, gh - 1)
    zbuf = np.full((gh, gw), np.inf)  # [gh, gw] nearest depth per pixel
    np.minimum.at(zbuf, (py, px), z)
    # every sprite covers about its projected size: widen each nearest depth by the largest sprite among the
    # candidates (the nearest ones), so points behind a surface's sprites, not only behind its centres, are hidden
    size_px = np.clip(sprite_m * K[0, 0] / z.min(), lo_px, hi_px)
    footprint = max(1, int(np.ceil(size_px)))
    occluder = minimum_filter(zbuf, size=footprint, mode="nearest") if footprint > 1 else zbuf
    visible = z <= occluder[py, px] * (1.0 + c.depth_rel_tol) + c.depth_abs_voxels * voxel_size
    inside = (uv[:, 0] >= u0) & (uv[:, 0] < u1) & (uv[:, 1] >= v0) & (uv[:, 1] < v1)
    return np.sort(cand_ids[visible & inside]).astype(np.int64)


def box_in_front(w2c: np.ndarray, distance: float) -> np.ndarray:
    """World point [3] `distance` metres along the viewing direction of a world-to-camera pose."""
    c2w = invert_se3(w2c)
    return c2w[:3, 3] + distance * c2w[:3, 2]


# --------------------------------------------------------------------------------------------- the editor
@dataclass
class PendingEdit:
    edit_id: int
    what: str  # for the HUD: "delete 120 points", "recolour 12 points", ...


@dataclass
class Editor:
    """Edit-mode state and the messages its keys send: selection, palette position, edits awaiting the server."""

    config: EditConfig = field(default_factory=EditConfig)
    active: bool = False  # edit mode (X): left-drag selects instead of capturing the pointer
    selected: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [S] ids, sorted
    palette_index: int = -1  # the last colour used; C moves to the next one
    pending: dict[int, PendingEdit] = field(default_factory=dict)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def toggle(self) -> bool:
        self.active = not self.active
        return self.active

    def select(self, ids: np.ndarray, add: bool = False) -> int:
        """Replace (or extend) the selection; returns its size."""
        ids = np.asarray(ids, np.int64)
        self.selected = np.union1d(self.selected, ids) if add else np.unique(ids)
        return len(self.selected)

    def clear(self) -> None:
        self.selected = np.zeros(0, np.int64)

    def prune(self, present: np.ndarray) -> None:
        """Keep only selected ids for which `present` ([S] bool, aligned with `selected`) is true."""
        self.selected = self.selected[np.asarray(present, bool)]

    def _new(self, what: str) -> int:
        edit_id = next(self._ids)
        self.pending[edit_id] = PendingEdit(edit_id, what)
        return edit_id

    # every method below returns the message to send, or None when there is nothing to do
    def delete(self) -> EditRemoveIds | None:
        if not len(self.selected):
            return None
        msg = EditRemoveIds(edit_id=self._new(f"delete {len(self.selected):,} points"), ids=self.selected.copy())
        self.clear()  # the points are going; the server's delta removes them from the view
        return msg

    def recolor(self) -> EditRecolor | None:
        if not len(self.selected):
            return None
        self.palette_index = (self.palette_index + 1) % len(self.config.palette)
        rgb = np.tile(np.array(self.config.palette[self.palette_index], np.uint8), (len(self.selected), 1))
        return EditRecolor(edit_id=self._new(f"recolour {len(self.selected):,} points"), ids=self.selected.copy(),
                           rgb=rgb)

    def insert_box(self, w2c: np.ndarray) -> EditInsertPrimitive:
        """A cube of `box_size` centred `box_distance` ahead of the camera, in the next palette colour."""
        self.palette_index = (self.palette_index + 1) % len(self.config.palette)
        c = self.config
        return EditInsertPrimitive(edit_id=self._new("insert a box"), shape=Primitive.BOX,
                                   center=box_in_front(w2c, c.box_distance), size=np.full(3, c.box_size),
                                   rgb=np.array(c.palette[self.palette_index], np.uint8))

    def undo(self) -> EditUndo:
        # not kept pending: the server answers an undo with its MemoryDelta alone, no Ack
        return EditUndo(edit_id=next(self._ids))

    def resolve(self, msg: Ack | Error) -> str | None:
        """An Ack or Error about one of our edits -> a line for the HUD (None when it is not about an edit)."""
        ref = msg.ref_id if isinstance(msg, Ack) else None
        if isinstance(msg, Error):
            if not msg.ref_type.startswith("edit_"):
                return None
            # errors carry no edit id: they answer the oldest edit still waiting (the server handles them in order)
            ref = min(self.pending, default=None)
        elif not msg.ref_type.startswith("edit_"):
            return None
        edit = self.pending.pop(ref, None)
        if edit is None:
            return None
        return f"{edit.what}: done" if isinstance(msg, Ack) else f"{edit.what} failed: {msg.message}"


# --------------------------------------------------------------------------------------------- drawing
class SelectionOverlay:
    """Draws the selected points in a highlight colour over the memory, and the rectangle being dragged."""

    def __init__(self, ctx: moderngl.Context, highlight_rgb: tuple[int, int, int] = (255, 230, 0)):
        self.ctx = ctx
        self.prog = program(ctx, "points")  # the memory's own sprite shader, fed highlight colours
        self.capacity = 0
        self.count = 0
        self.vbo_xyz: moderngl.Buffer | None = None
        self.vbo_rgba: moderngl.Buffer | None = None
        self.vao: moderngl.VertexArray | None = None
        self.highlight = np.array([*highlight_rgb, 255], np.uint8)
        self.fill = TexturedQuad(ctx, filter_linear=False)
        self.fill.upload(np.array([[[255, 230, 0, 50]]], np.uint8))  # translucent fill of the drag rectangle
        self.edge = TexturedQuad(ctx, filter_linear=False)
        self.edge.upload(np.array([[[255, 230, 0, 230]]], np.uint8))

    def set_points(self, xyz: np.ndarray) -> None:
        """World positions [S, 3] of the selection (re-uploaded whole: selections are small next to the memory)."""
        xyz = np.ascontiguousarray(xyz, np.float32).reshape(-1, 3)
        self.count = len(xyz)
        if not self.count:
            return
        if self.count > self.capacity:
            for obj in (self.vao, self.vbo_xyz, self.vbo_rgba):
                if obj is not None:
                    obj.release()
            self.capacity = max(self.count, 2 * self.capacity, 1024)
            self.vbo_xyz = self.ctx.buffer(reserve=self.capacity * 12, dynamic=True)
            self.vbo_rgba = self.ctx.buffer(np.tile(self.highlight, (self.capacity, 1)).tobytes(), dynamic=True)
            self.vao = self.ctx.vertex_array(self.prog, [(self.vbo_xyz, "3f", "in_xyz"),
                                                         (self.vbo_rgba, "4f1", "in_rgba")])
        self.vbo_xyz.write(xyz)

    def draw_points(self, mvp: np.ndarray, focal_px: float, sprite_m: float, px_range: tuple[float, float],
                    viewport: Rect, scale: float = 0.5, min_px: float = 2.0) -> None:
        """Selected points as dots at the centres of their sprites (`scale` of their size, at least min_px), so a
        selection stays visible without hiding its colours; they pass the depth test on ties with their own."""
        if not self.count or self.vao is None:
            return
        ctx = self.ctx
        ctx.viewport = viewport
        ctx.enable(moderngl.DEPTH_TEST | moderngl.PROGRAM_POINT_SIZE)
        ctx.disable(moderngl.BLEND)
        ctx.depth_func = "<="
        p = self.prog
        p["mvp"].write(mat4_bytes(mvp))
        p["focal_px"].value = float(focal_px)
        p["world_size"].value = float(sprite_m) * scale
        p["size_range"].value = (max(float(px_range[0]) * scale, min_px), max(float(px_range[1]) * scale, min_px))
        p["round_points"].value = False
        self.vao.render(moderngl.POINTS, vertices=self.count)
        ctx.depth_func = "<"

    def draw_rect(self, rect: Rect, viewport: Rect, line_px: int = 1) -> None:
        """A dragged rectangle (x, y, w, h; y up, framebuffer pixels): translucent fill and an outline."""
        x, y, w, h = rect
        if w <= 0 or h <= 0:
            return
        self.fill.draw(rect, viewport)
        for r in ((x, y, w, line_px), (x, y + h - line_px, w, line_px), (x, y, line_px, h),
                  (x + w - line_px, y, line_px, h)):
            self.edge.draw(r, viewport)

    def release(self) -> None:
        for obj in (self.vao, self.vbo_xyz, self.vbo_rgba, self.prog):
            if obj is not None:
                obj.release()
        self.fill.release()
        self.edge.release()
