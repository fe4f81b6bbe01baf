"""The spatial memory drawn live: memory deltas from the server become GPU buffer updates, drawn with ModernGL.

Data flow: `MemoryDelta` (protocol) -> `PointSlots` (CPU mirror, id -> slot map, segments) -> dirty slot ranges
-> `buffer.write(offset=...)` on two capacity-managed VBOs (positions, colours). Nothing is re-uploaded whole
except when the buffers grow (amortised by doubling), on a full delta, or on a rare compaction.

Level of detail: every delta's points go into their own segment in a shuffled order, so the first k slots of a
segment are a uniform sample of it. Drawing the first `ceil(count * budget / total)` points of every segment is a
uniform sample of the whole memory of about `budget` points; sprites grow a little (fraction^-1/4) to close
some of the gaps. The budget follows the measured frame time towards a target frame rate (software OpenGL draws
~1M points at only a few frames per second). Removal swaps the segment's last points into the holes (the prefix
stays a uniform sample), recolouring writes colours only.

Each frame: the points as sprites sized by the projected voxel (vertex shader: world size * focal / depth,
clamped), a coverage pass (a subtle checker on the far plane, visible only where no point landed), the ground
grid and the camera path. The class takes a `moderngl.Context`, so it draws in a pyglet window or a standalone
EGL context.
"""

from __future__ import annotations

import collections
import math
import statistics
from dataclasses import dataclass, field

import moderngl
import numpy as np

from engine.server.protocol import MemoryDelta
from explorer.gl import gl_projection, mat4_bytes, program

XYZ_BYTES = 12  # 3 x float32 per point
RGBA_BYTES = 4  # rgb + padding byte: 4-byte attributes keep every vertex aligned


class DeltaError(ValueError):
    """A memory delta that does not fit the view's state (wrong version, unknown or duplicate ids)."""


@dataclass
class MemoryViewConfig:
    """How the memory is drawn and how the point budget adapts."""

    target_fps: float = 30.0
    auto_budget: bool = True
    initial_budget: int = 1_000_000
    min_budget: int = 10_000
    max_budget: int = 50_000_000
    point_scale: float = 1.5  # sprite diameter in voxels (the release renders with radius ~ one voxel)
    # A sample of fraction f draws sprites f^-exponent larger: 0.5 would keep surfaces as closed as the full
    # memory but keep the fill cost too (fill, not vertices, dominates on software GL); 0.25 halves holes' share
    # while the frame time still falls with the budget.
    lod_growth_exponent: float = 0.25
    lod_max_growth: float = 2.0
    min_point_px: float = 1.0
    max_point_px: float = 24.0
    round_points: bool = False  # discarding corners defeats early depth tests on software GL: square by default
    near: float = 0.05
    far: float = 1000.0
    grid_spacing: float = 1.0
    grid_extent: float = 40.0  # half size of the grid around the camera; lines fade out by grid_fade
    grid_fade: float = 40.0
    grid_color: tuple[float, float, float, float] = (0.55, 0.58, 0.62, 0.6)
    coverage_colors: tuple[tuple[float, float, float], tuple[float, float, float]] = ((0.08, 0.08, 0.10),
                                                                                    (0.12, 0.12, 0.15))
    coverage_cell_px: float = 12.0
    path_color: tuple[float, float, float, float] = (1.0, 0.78, 0.2, 0.9)
    path_min_step: float = 0.01  # metres between recorded camera centres
    initial_capacity: int = 1 << 16
    max_segments: int = 32  # more deltas than this are merged (one reshuffle and rewrite)
    compact_waste: float = 0.5  # compact when holes exceed this fraction of the used slots
    write_gap: int = 256  # dirty slots closer than this are written in one range (~4 KB: about one call's overhead)


# --------------------------------------------------------------------------------------------- CPU side
@dataclass
class Segment:
    """Slots [start, start + count) hold live points in shuffled order; [start + count, start + size) are free."""

    start: int
    count: int
    size: int


def coalesce(slots: np.ndarray, gap: int) -> list[tuple[int, int]]:
    """Sorted unique slots -> [start, stop) ranges, merging runs separated by fewer than `gap` slots."""
    if len(slots) == 0:
        return []
    slots = np.unique(slots)
    breaks = np.nonzero(np.diff(slots) > gap)[0]
    starts = np.concatenate([[slots[0]], slots[breaks + 1]])
    stops = np.concatenate([slots[breaks], [slots[-1]]]) + 1
    return list(zip(starts.tolist(), stops.tolist()))


def has_duplicates(a: np.ndarray) -> bool:
    """Sort-based: several times faster than np.unique's hashing on millions of int64 ids."""
    s = np.sort(a)
    return bool(len(s) > 1 and (s[1:] == s[:-1]).any())


@dataclass
class Changes:
    """What an operation on PointSlots changed, for the GPU side to copy from the mirror."""

    xyz: list[tuple[int, int]] = field(default_factory=list)  # slot ranges whose positions changed
    rgba: list[tuple[int, int]] = field(default_factory=list)  # slot ranges whose colours changed
    realloc: bool = False  # capacity changed: recreate the buffers and upload [0, end)


class PointSlots:
    """CPU mirror of the point buffers with the id -> slot map; all slot bookkeeping, no GL."""

    def __init__(self, capacity: int, max_segments: int, compact_waste: float, write_gap: int, seed: int = 0):
        self.capacity = int(capacity)
        self.max_segments, self.compact_waste, self.write_gap = max_segments, compact_waste, write_gap
        self.rng = np.random.default_rng(seed)
        self.xyz = np.zeros((self.capacity, 3), np.float32)  # [cap, 3]
        self.rgba = np.full((self.capacity, 4), 255, np.uint8)  # [cap, 4]
        self.ids = np.full(self.capacity, -1, np.int64)  # [cap] id stored in each slot, -1 = free
        self.slot_of: dict[int, int] = {}
        self.segments: list[Segment] = []
        self.end = 0  # slots in use by segments (live or holes)

    @property
    def num_points(self) -> int:
        return len(self.slot_of)

    def lookup(self, ids: np.ndarray, what: str) -> np.ndarray:
        """Slots [K] of ids [K]; DeltaError naming the first id the view does not hold."""
        try:
            return np.fromiter(map(self.slot_of.__getitem__, ids.tolist()), np.int64, len(ids))
        except KeyError as e:
            raise DeltaError(f"{what}: id {e.args[0]} is not in the view") from None

    def clear(self) -> None:
        self.ids[: self.end] = -1
        self.slot_of.clear()
        self.segments.clear()
        self.end = 0

    def remove(self, slots: np.ndarray, changes: Changes) -> None:
        """Remove points at `slots` (unique): per segment, its last live points move into the holes."""
        if len(slots) == 0:
            return
        starts = np.array([s.start for s in self.segments])
        seg_index = np.searchsorted(starts, slots, side="right") - 1
        for id_ in self.ids[slots].tolist():
            del self.slot_of[id_]
        moved = []
        for si in np.unique(seg_index).tolist():
            seg = self.segments[si]
            gone = slots[seg_index == si]
            stop = seg.start + seg.count
            cut = stop - len(gone)
            holes = np.sort(gone[gone < cut])
            tail = np.arange(cut, stop)
            survivors = tail[~np.isin(tail, gone)]  # as many as there are holes below the cut
            self.xyz[holes] = self.xyz[survivors]
            self.rgba[holes] = self.rgba[survivors]
            self.ids[holes] = self.ids[survivors]
            self.ids[cut:stop] = -1
            self.slot_of.update(zip(self.ids[holes].tolist(), holes.tolist()))
            seg.count = cut - seg.start
            moved.append(holes)
        dirty = coalesce(np.concatenate(moved), self.write_gap)
        changes.xyz += dirty
        changes.rgba += dirty

    def recolor(self, slots: np.ndarray, rgb: np.ndarray, changes: Changes) -> None:
        if len(slots) == 0:
            return
        self.rgba[slots, :3] = rgb
        changes.rgba += coalesce(slots, self.write_gap)

    def add(self, ids: np.ndarray, xyz: np.ndarray, rgb: np.ndarray, changes: Changes) -> None:
        """Append a new shuffled segment, compacting or growing first when the slots run out or fragment."""
        m = len(ids)
        if m == 0:
            return
        waste = self.end - self.num_points
        if (len(self.segments) >= self.max_segments or self.end + m > self.capacity
                or waste > self.compact_waste * max(self.end, 1)):
            self.compact(need=self.num_points + m, changes=changes)
        order = self.rng.permutation(m)
        start, stop = self.end, self.end + m
        self.xyz[start:stop] = xyz[order]
        self.rgba[start:stop, :3] = rgb[order]
        self.ids[start:stop] = ids[order]
        self.slot_of.update(zip(self.ids[start:stop].tolist(), range(start, stop)))
        self.segments.append(Segment(start, m, m))
        self.end = stop
        changes.xyz.append((start, stop))
        changes.rgba.append((start, stop))

    def compact(self, need: int, changes: Changes) -> None:
        """Gather all live points into one reshuffled segment at slot 0; grow the arrays if `need` exceeds them."""
        live = np.concatenate([np.arange(s.start, s.start + s.count) for s in self.segments] or [np.zeros(0, int)])
        live = live[self.rng.permutation(len(live))]
        xyz, rgba, ids = self.xyz[live], self.rgba[live], self.ids[live]
        if need > self.capacity:
            self.capacity = max(2 * self.capacity, need + need // 2)  # headroom for the deltas that follow
            self.xyz = np.zeros((self.capacity, 3), np.float32)
            self.rgba = np.full((self.capacity, 4), 255, np.uint8)
            self.ids = np.full(self.capacity, -1, np.int64)
            changes.realloc = True
        n = len(live)
        self.ids[:] = -1
        self.xyz[:n], self.rgba[:n], self.ids[:n] = xyz, rgba, ids
        self.slot_of = dict(zip(ids.tolist(), range(n)))
        self.segments = [Segment(0, n, n)] if n else []
        self.end = n
        if n and not changes.realloc:
            changes.xyz.append((0, n))
            changes.rgba.append((0, n))

    def draw_ranges(self, fraction: float) -> list[tuple[int, int]]:
        """(first, count) per segment drawing `fraction` of each: a uniform sample of the memory."""
        out = []
        for s in self.segments:
            k = s.count if fraction >= 1.0 else min(s.count, math.ceil(s.count * fraction))
            if k:
                out.append((s.start, k))
        return out


# --------------------------------------------------------------------------------------------- budget
class BudgetController:
    """Point budget that follows the measured frame time towards the target frame rate.

    Frame time is roughly fixed costs plus a cost per drawn point; scaling the drawn count by target / measured
    (bounded per step, with a dead band) converges to the target without a model of either cost. Medians over the
    last few frames keep one slow frame (another process taking the CPU, a texture upload) from collapsing it.
    """

    def __init__(self, target_fps: float, initial: int, min_budget: int, max_budget: int, window: int = 7,
                 max_step: float = 1.35, dead_band: float = 0.08):
        if not target_fps > 0 or not 0 < min_budget <= initial <= max_budget:
            raise ValueError("need target_fps > 0 and 0 < min_budget <= initial <= max_budget")
        self.target_ms = 1000.0 / target_fps
        self.aim_ms = self.target_ms / (1.0 + dead_band)  # the dead band around the aim ends at the target
        self.budget = int(initial)
        self.min_budget, self.max_budget = int(min_budget), int(max_budget)
        self.max_step, self.dead_band = max_step, dead_band
        self.samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=window)

    def update(self, frame_ms: float, drawn: int) -> int:
        if not frame_ms > 0 or not math.isfinite(frame_ms) or drawn <= 0:
            return self.budget
        self.samples.append((frame_ms, drawn))
        ms = statistics.median(t for t, _ in self.samples)
        ratio = self.aim_ms / ms
        if abs(ratio - 1.0) < self.dead_band:
            return self.budget
        if ratio > 1 and drawn < self.budget:
            return self.budget  # the whole memory is drawn and still fast: nothing to learn about the budget
        step = min(max(ratio, 1.0 / self.max_step), self.max_step)
        base = statistics.median(d for _, d in self.samples)
        self.budget = int(min(max(base * step, self.min_budget), self.max_budget))
        return self.budget


# --------------------------------------------------------------------------------------------- GPU side
class MemoryView:
    """Draws the memory, the ground grid and the camera path; keeps GPU buffers in step with memory deltas."""

    def __init__(self, ctx: moderngl.Context, config: MemoryViewConfig | None = None, seed: int = 0):
        self.ctx = ctx
        self.config = c = config or MemoryViewConfig()
        self.slots = PointSlots(c.initial_capacity, c.max_segments, c.compact_waste, c.write_gap, seed)
        self.controller = BudgetController(c.target_fps, c.initial_budget, c.min_budget, c.max_budget)
        self.version: int | None = None  # memory version held; None until the first full delta
        self.voxel_size = 0.01
        self.points_drawn = 0
        self.bytes_uploaded = 0  # total bytes written to the point buffers (tests check deltas stay incremental)
        self.buffer_allocations = 0

        self.points_prog = program(ctx, "points")
        self.coverage_prog = program(ctx, "coverage")
        self.grid_prog = program(ctx, "grid")
        self.path_prog = program(ctx, "path")
        self.coverage_vao = ctx.vertex_array(self.coverage_prog, [])
        self.grid_vbo = ctx.buffer(self._grid_lines())
        self.grid_vao = ctx.vertex_array(self.grid_prog, [(self.grid_vbo, "2f 1f", "in_local", "in_along_z")])
        self._alloc_point_buffers()

        self.path = np.zeros((1024, 3), np.float32)  # [cap, 3] camera centres
        self.path_len = 0
        self.path_vbo = ctx.buffer(reserve=self.path.nbytes, dynamic=True)
        self.path_vao = ctx.vertex_array(self.path_prog, [(self.path_vbo, "3f", "in_xyz")])

    def _grid_lines(self) -> np.ndarray:
        """Endpoints [L*2, 3] (local x, local z in grid units, along_z flag) of the grid's lines."""
        n = max(1, int(self.config.grid_extent / self.config.grid_spacing))
        k = np.arange(-n, n + 1, dtype=np.float32)
        lo, hi = np.full_like(k, -n), np.full_like(k, n)
        along_x = np.stack([np.stack([lo, k, 0 * k], 1), np.stack([hi, k, 0 * k], 1)], 1)  # z = k
        along_z = np.stack([np.stack([k, lo, 1 + 0 * k], 1), np.stack([k, hi, 1 + 0 * k], 1)], 1)  # x = k
        return np.concatenate([along_x, along_z]).reshape(-1, 3).astype(np.float32)

    # ----------------------------------------------------------------------------------------- state
    @property
    def num_points(self) -> int:
        return self.slots.num_points

    @property
    def budget(self) -> int:
        return self.controller.budget

    @budget.setter
    def budget(self, value: int) -> None:
        self.controller.budget = int(min(max(value, self.controller.min_budget), self.controller.max_budget))

    def report_frame_time(self, frame_ms: float) -> int:
        """Feed the measured time of a whole frame (ms); returns the budget for the next one."""
        if self.config.auto_budget:
            self.controller.update(frame_ms, self.points_drawn)
        return self.budget

    # ----------------------------------------------------------------------------------------- deltas
    def apply_delta(self, delta: MemoryDelta) -> None:
        """Apply removals, recolours, additions (in that order) to the GPU buffers, writing only what changed.

        Raises DeltaError, leaving the view unchanged, when the delta does not follow the held version or names
        ids that do not fit; the client then asks the server for a full delta.
        """
        s = self.slots
        if not delta.full:
            if self.version is None:
                raise DeltaError("the view holds no memory yet: the first delta must be full")
            if delta.version_from != self.version:
                raise DeltaError(f"delta applies to version {delta.version_from}, the view holds {self.version}")
        # validate everything before touching any state, so a refused delta leaves the view as it was
        removed = s.lookup(delta.removed_ids, "removed_ids") if not delta.full else np.zeros(0, np.int64)
        if has_duplicates(removed):
            raise DeltaError("removed_ids contains duplicates")
        recolored = s.lookup(delta.recolored_ids, "recolored_ids") if not delta.full else np.zeros(0, np.int64)
        if len(recolored) and np.isin(recolored, removed).any():
            raise DeltaError("recolored_ids names points removed by the same delta")
        added = delta.added_ids
        if has_duplicates(added):
            raise DeltaError("added_ids contains duplicates")
        if not delta.full and len(added) and s.slot_of:
            present = np.fromiter(map(s.slot_of.__contains__, added.tolist()), bool, len(added))
            if present.any():
                present &= ~np.isin(added, delta.removed_ids)
                if present.any():
                    raise DeltaError(f"added_ids: id {int(added[present][0])} is already in the view")

        changes = Changes()
        if delta.full:
            s.clear()
            if len(added) > s.capacity:
                s.compact(need=len(added), changes=changes)
        s.remove(removed, changes)
        s.recolor(recolored, delta.recolored_rgb, changes)
        s.add(added, delta.added_xyz, delta.added_rgb, changes)
        self.version = delta.version_to
        self.voxel_size = delta.voxel_size
        self._upload(changes)

    def _alloc_point_buffers(self) -> None:
        cap = self.slots.capacity
        for name in ("vao", "vbo_xyz", "vbo_rgba"):
            old = getattr(self, name, None)
            if old is not None:
                old.release()
        self.vbo_xyz = self.ctx.buffer(reserve=cap * XYZ_BYTES, dynamic=True)
        self.vbo_rgba = self.ctx.buffer(reserve=cap * RGBA_BYTES, dynamic=True)
        self.vao = self.ctx.vertex_array(self.points_prog, [(self.vbo_xyz, "3f", "in_xyz"),
                                                            (self.vbo_rgba, "4f1", "in_rgba")])
        self.buffer_allocations += 1

    def _upload(self, changes: Changes) -> None:
        s = self.slots
        if changes.realloc:
            self._alloc_point_buffers()
            changes = Changes(xyz=[(0, s.end)] if s.end else [], rgba=[(0, s.end)] if s.end else [])
        for a, b in changes.xyz:
            self.vbo_xyz.write(s.xyz[a:b], offset=a * XYZ_BYTES)
            self.bytes_uploaded += (b - a) * XYZ_BYTES
        for a, b in changes.rgba:
            self.vbo_rgba.write(s.rgba[a:b], offset=a * RGBA_BYTES)
            self.bytes_uploaded += (b - a) * RGBA_BYTES

    # ----------------------------------------------------------------------------------------- path
    def add_camera(self, w2c: np.ndarray) -> None:
        """Record the camera centre of a pose on the path (skipped when it moved less than path_min_step)."""
        centre = -w2c[:3, :3].T @ w2c[:3, 3]  # c = -R^T t
        if self.path_len and np.linalg.norm(centre - self.path[self.path_len - 1]) < self.config.path_min_step:
            return
        if self.path_len == len(self.path):
            self.path = np.concatenate([self.path, np.zeros_like(self.path)])
            self.path_vbo.orphan(self.path.nbytes)
            self.path_vbo.write(self.path[: self.path_len])
        self.path[self.path_len] = centre
        self.path_vbo.write(self.path[self.path_len], offset=self.path_len * XYZ_BYTES)
        self.path_len += 1

    def clear_path(self) -> None:
        self.path_len = 0

    # ----------------------------------------------------------------------------------------- drawing
    def render(self, w2c: np.ndarray, K: np.ndarray, width: int, height: int,
               viewport: tuple[int, int, int, int] | None = None) -> None:
        """Draw the view of camera (w2c, pixel K for a width x height image) into `viewport` (x, y, w, h) of the
        bound framebuffer (default: all of it); the image is scaled to the viewport."""
        c, ctx = self.config, self.ctx
        viewport = tuple(viewport or (0, 0, *ctx.fbo.size))
        vx, vy, vw, vh = viewport
        mvp = mat4_bytes(gl_projection(np.asarray(K, np.float64), width, height, c.near, c.far) @ w2c)
        ctx.viewport = viewport
        ctx.scissor = viewport
        ctx.clear(depth=1.0)
        ctx.scissor = None

        # points: a uniform sample of about `budget` points, sprites grown to keep surfaces closed
        n = self.num_points
        fraction = 1.0 if n <= self.budget else self.budget / n
        growth = min(fraction ** -c.lod_growth_exponent, c.lod_max_growth)
        ctx.disable(moderngl.BLEND)
        ctx.enable(moderngl.DEPTH_TEST | moderngl.PROGRAM_POINT_SIZE)
        ctx.depth_func = "<"
        p = self.points_prog
        p["mvp"].write(mvp)
        p["focal_px"].value = float(K[0, 0]) * vw / width
        p["world_size"].value = self.voxel_size * c.point_scale * growth
        p["size_range"].value = (c.min_point_px, c.max_point_px)
        p["round_points"].value = c.round_points
        self.points_drawn = 0
        for first, count in self.slots.draw_ranges(fraction):
            self.vao.render(moderngl.POINTS, vertices=count, first=first)
            self.points_drawn += count

        # coverage after the points, on the far plane: the early depth test skips every pixel a point covers,
        # so the checker costs fill only where the memory is empty (where it is meant to be seen)
        ctx.depth_func = "<="
        ctx.fbo.depth_mask = False
        self.coverage_prog["color_a"].value, self.coverage_prog["color_b"].value = c.coverage_colors
        self.coverage_prog["cell_px"].value = c.coverage_cell_px
        self.coverage_prog["origin"].value = (vx, vy)
        self.coverage_vao.render(moderngl.TRIANGLES, vertices=3)
        ctx.depth_func = "<"

        # grid and path: blended over the points, depth-tested against them, not writing depth
        cam_centre = -w2c[:3, :3].T @ w2c[:3, 3]
        ctx.enable(moderngl.BLEND)
        ctx.blend_func = moderngl.SRC_ALPHA, moderngl.ONE_MINUS_SRC_ALPHA
        g = self.grid_prog
        g["mvp"].write(mvp)
        snap = c.grid_spacing * np.round(cam_centre[[0, 2]] / c.grid_spacing)  # keeps lines still under the camera
        g["center_xz"].value = tuple(snap)
        g["spacing"].value = c.grid_spacing
        g["eye_xz"].value = tuple(cam_centre[[0, 2]])
        g["fade"].value = c.grid_fade
        g["line_color"].value = c.grid_color
        self.grid_vao.render(moderngl.LINES)
        if self.path_len >= 2:
            self.path_prog["mvp"].write(mvp)
            self.path_prog["color"].value = c.path_color
            self.path_vao.render(moderngl.LINE_STRIP, vertices=self.path_len)
        ctx.fbo.depth_mask = True
        ctx.disable(moderngl.BLEND)

    def release(self) -> None:
        for obj in (self.vao, self.vbo_xyz, self.vbo_rgba, self.path_vao, self.path_vbo, self.coverage_vao,
                    self.grid_vao, self.grid_vbo, self.points_prog, self.coverage_prog, self.grid_prog, self.path_prog):
            obj.release()
