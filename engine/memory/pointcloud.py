"""The spatial memory: a voxel-de-duplicated point cloud of the static scene, editable, versioned, saveable.

Reconstruction feeds it RGB-D frames (dynamic regions masked out), edit tools remove, recolour or add points,
the renderer (`render.py`) turns it into scene videos and retrieval (`retrieval.py`) reads visibility from it.
Every change bumps `version` and is logged, so a viewer asks `delta_since(v)` and receives a compact
`MemoryDelta`.

Design. Points live in dense columns (rows 0..n-1, no holes); row order carries no meaning. Two indexes
(`index.py`) find them: a hash map voxel key -> row, for de-duplication in O(batch) per insert, and an
id-sorted IdIndex point id -> row, for edits by id. Removal fills the holes with rows from the tail
(O(removed) work, not O(N)), so inserts, replacements and evictions never pay for the memory's size.

Policies:
- One point per voxel (`voxel_size`, default 0.01 m, the paper's). Within one insert, the highest-confidence
  point of a voxel wins (ties: the first in input order). A point arriving in an occupied voxel replaces the
  stored one only when its confidence is strictly higher; the replacement gets a new id (the delta shows the
  old id removed and the new one added). Confidence defaults to 1.0.
- Capacity: when an insert takes the memory over `capacity`, the lowest-confidence points are evicted, oldest
  (smallest id) first among equals, down to exactly `capacity`; this may evict points of the insert itself.
  Evictions appear as removals in the delta.
- Ids are int64, issued in increasing order, never reused (also not after a save and load).
- The change log keeps removed and recoloured ids per version (added points are recovered from their ids,
  which are increasing), up to `log_limit` entries; `delta_since` for an older version returns a full snapshot.
"""

from __future__ import annotations

import json
import math
import os
from collections import deque
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from engine import geometry
from engine.memory.delta import MemoryDelta
from engine.memory.index import IdIndex, Int64HashMap

DEFAULT_VOXEL_SIZE = 0.01
DEFAULT_CAPACITY = 8_000_000
DEFAULT_LOG_LIMIT = 4_000_000
DEFAULT_DEPTH_RANGE = (0.05, 50.0)
PLY_GREY = 128  # colour given to points of a PLY file that has none
FILE_FORMAT = "spatia-memory"
FILE_FORMAT_VERSION = "1"

# Voxel coordinates are packed into one non-negative int64: three 21-bit fields, each offset by 2^20, so the
# memory spans +-2^20 voxels per axis (+-10.5 km at 1 cm).
_COORD_BITS = 21
_COORD_OFFSET = 1 << (_COORD_BITS - 1)
_COORD_LIMIT = 1 << _COORD_BITS
_COLUMNS = {  # name -> (dtype, trailing shape)
    "xyz": (np.float32, (3,)),
    "rgb": (np.uint8, (3,)),
    "confidence": (np.float32, ()),
    "frame_id": (np.int32, ()),
    "ids": (np.int64, ()),
    "keys": (np.int64, ()),  # voxel key of each row (kept so removal can drop it from the voxel index)
}
_SAVED = ("xyz", "rgb", "confidence", "frame_id", "ids")


class MemoryFileError(ValueError):
    """A memory or point-cloud file that cannot be used; the message names the file and the fault."""

    def __init__(self, path: str | Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = str(path), problem


@dataclass
class _LogEntry:
    version_to: int
    next_id_before: int  # ids >= this were issued by this change or later
    removed: np.ndarray  # [R] int64
    recolored: np.ndarray  # [C] int64


# --------------------------------------------------------------------------------------------- validation
def _points(xyz, name: str = "xyz") -> np.ndarray:
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"{name} must be [N, 3], got shape {xyz.shape}")
    if not np.issubdtype(xyz.dtype, np.floating):
        raise ValueError(f"{name} must be floating point, got {xyz.dtype}")
    xyz = np.ascontiguousarray(xyz, dtype=np.float32)
    if not np.isfinite(xyz).all():
        raise ValueError(f"{name} contains non-finite values")
    return xyz


def _colours(rgb, n: int | None, name: str = "rgb") -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 (0..255), got {rgb.dtype}")
    if rgb.shape == (3,) and n is not None:
        return np.broadcast_to(rgb, (n, 3))
    if rgb.ndim != 2 or rgb.shape[1] != 3 or (n is not None and len(rgb) != n):
        want = "[3] or " if n is not None else ""
        raise ValueError(f"{name} must be {want}[{'N' if n is None else n}, 3], got shape {rgb.shape}")
    return rgb


def _confidence(conf, n: int) -> np.ndarray | None:
    if conf is None:
        return None
    conf = np.asarray(conf)
    if conf.shape != (n,):
        raise ValueError(f"confidence must be [{n}], got shape {conf.shape}")
    conf = np.ascontiguousarray(conf, dtype=np.float32)
    if not np.isfinite(conf).all() or (conf < 0).any():
        raise ValueError("confidence must be finite and >= 0")
    return conf


def _id_array(ids) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or not (np.issubdtype(ids.dtype, np.integer) or ids.size == 0):
        raise ValueError(f"ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
    return ids.astype(np.int64, copy=False)


def _box(lo, hi) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    if lo.shape != (3,) or hi.shape != (3,):
        raise ValueError(f"box corners must be [3] each, got {lo.shape} and {hi.shape}")
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise ValueError("box corners must be finite")
    if (lo > hi).any():
        raise ValueError(f"box lo {lo.tolist()} exceeds hi {hi.tolist()} on some axis")
    return lo, hi


def _rect(rect) -> tuple[float, float, float, float]:
    r = np.asarray(rect, np.float64)
    if r.shape != (4,) or not np.isfinite(r).all():
        raise ValueError(f"rect must be four finite numbers (u0, v0, u1, v1), got {rect!r}")
    u0, v0, u1, v1 = (float(x) for x in r)
    if not (u0 < u1 and v0 < v1):
        raise ValueError(f"rect must have u0 < u1 and v0 < v1, got {rect!r}")
    return u0, v0, u1, v1


def _pack(c: np.ndarray) -> np.ndarray:
    """Voxel coordinates [3, N] (offset, non-negative) -> packed keys [N] int64."""
    return (c[0] << (2 * _COORD_BITS)) | (c[1] << _COORD_BITS) | c[2]


def _batch_owners(coords: np.ndarray, lo: np.ndarray, hi: np.ndarray, keys: np.ndarray,
                  conf: np.ndarray | None) -> np.ndarray:
    """Indices of one point per distinct voxel of a batch: the most confident, the first among equals.

    coords [3, m] int64 voxel coordinates with their per-axis bounds lo, hi [3]; keys [m] packed. Sorting is
    the fast way in NumPy, and a plain value sort (SIMD) is several times faster than an argsort: so each
    point's coordinates relative to the batch's bounding box are packed together with its index into one int64
    and sorted by value. A batch too large or too spread out for that packing falls back to a lexsort.
    """
    m = len(keys)
    idx_bits = max(1, (m - 1).bit_length())
    span_bits = [int(x).bit_length() for x in hi - lo]
    if sum(span_bits) + idx_bits <= 63:
        local = (coords[0] - lo[0]) << (span_bits[1] + span_bits[2])
        local |= (coords[1] - lo[1]) << span_bits[2]
        local |= coords[2] - lo[2]
        packed = np.sort((local << idx_bits) | np.arange(m, dtype=np.int64))
        group, order = packed >> idx_bits, packed & ((1 << idx_bits) - 1)
    else:
        order = np.lexsort((np.arange(m), keys))
        group = keys[order]
    starts = np.ones(m, bool)
    starts[1:] = group[1:] != group[:-1]
    if conf is None:
        return order[starts]  # within a voxel the first input point comes first in `order`
    # With confidences: the first point of each voxel whose confidence equals the voxel's maximum.
    c = conf[order]
    first = np.flatnonzero(starts)
    best = np.repeat(np.maximum.reduceat(c, first), np.diff(np.append(first, m)))
    cand = np.flatnonzero(c == best)
    keep = np.ones(len(cand), bool)
    vox = np.cumsum(starts)[cand]
    keep[1:] = vox[1:] != vox[:-1]
    return order[cand[keep]]


# --------------------------------------------------------------------------------------------- the memory
class SpatialMemory:
    """The static-scene point cloud. See the module docstring for its policies."""

    def __init__(self, voxel_size: float = DEFAULT_VOXEL_SIZE, capacity: int = DEFAULT_CAPACITY,
                 log_limit: int = DEFAULT_LOG_LIMIT):
        if not (math.isfinite(voxel_size) and voxel_size > 0):
            raise ValueError(f"voxel_size must be a positive number of metres, got {voxel_size}")
        if int(capacity) < 1:
            raise ValueError(f"capacity must be >= 1 point, got {capacity}")
        if int(log_limit) < 1:
            raise ValueError(f"log_limit must be >= 1, got {log_limit}")
        self.voxel_size = float(voxel_size)
        self.capacity = int(capacity)
        self.log_limit = int(log_limit)
        self._n = 0
        self._cols = {name: np.empty((0,) + shape, dtype) for name, (dtype, shape) in _COLUMNS.items()}
        self._voxels = Int64HashMap()  # voxel key -> row
        self._rows = IdIndex()  # point id -> row
        self._conf_floor = math.inf  # <= every confidence ever stored (a lower bound, never raised)
        self._next_id = 0
        self._version = 0
        self._log: deque[_LogEntry] = deque()
        self._log_size = 0
        self._log_floor = 0  # the oldest version delta_since can answer from the log
        self._op: dict | None = None

    # ------------------------------------------------------------------ read-only views
    def _view(self, name: str) -> np.ndarray:
        v = self._cols[name][: self._n]
        v.flags.writeable = False
        return v

    @property
    def xyz(self) -> np.ndarray:
        """[N, 3] float32 positions (read-only view; copy before keeping it across edits)."""
        return self._view("xyz")

    @property
    def rgb(self) -> np.ndarray:
        """[N, 3] uint8 colours."""
        return self._view("rgb")

    @property
    def confidence(self) -> np.ndarray:
        """[N] float32."""
        return self._view("confidence")

    @property
    def frame_id(self) -> np.ndarray:
        """[N] int32 source frame of each point (-1: not from a frame, e.g. an inserted object)."""
        return self._view("frame_id")

    @property
    def ids(self) -> np.ndarray:
        """[N] int64 stable point ids."""
        return self._view("ids")

    @property
    def version(self) -> int:
        return self._version

    @property
    def next_id(self) -> int:
        return self._next_id

    def __len__(self) -> int:
        return self._n

    @property
    def nbytes(self) -> int:
        """Bytes the memory holds: its columns at their allocated capacity, the voxel and id indexes and the
        change log (what a process's RSS should track, unlike the saved file's size)."""
        columns = sum(c.nbytes for c in self._cols.values())
        log = sum(e.removed.nbytes + e.recolored.nbytes for e in self._log)
        return columns + self._voxels.nbytes + self._rows.nbytes + log

    def __repr__(self) -> str:
        return (f"SpatialMemory({self._n} points, voxel_size={self.voxel_size}, capacity={self.capacity}, "
                f"version={self._version})")

    def rows_of(self, ids) -> np.ndarray:
        """Row of each id in the views above [k] int64, -1 for ids not in the memory."""
        return self._rows.get(_id_array(ids))

    def _voxel_coords(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Voxel coordinates [3, N] int64 (axis-major: NumPy reduces and shifts contiguous rows much faster
        than [N, 3] columns), offset to be non-negative, with their per-axis min and max [3]."""
        c = np.floor(np.ascontiguousarray(np.asarray(xyz, np.float64).T) / self.voxel_size).astype(np.int64)
        c += _COORD_OFFSET
        lo, hi = (c.min(axis=1), c.max(axis=1)) if c.shape[1] else (np.zeros(3, np.int64),) * 2
        if lo.min() < 0 or hi.max() >= _COORD_LIMIT:
            span = _COORD_OFFSET * self.voxel_size
            raise ValueError(f"points beyond the memory's extent of +-{span:.6g} m per axis "
                             f"(voxel_size {self.voxel_size})")
        return c, lo, hi

    def voxel_keys(self, xyz: np.ndarray) -> np.ndarray:
        """Packed voxel key [N] int64 of points [N, 3] at this memory's voxel size."""
        return _pack(self._voxel_coords(xyz)[0])

    # ------------------------------------------------------------------ change tracking
    def _begin(self) -> None:
        self._op = {"next_id": self._next_id, "removed": [], "recolored": []}

    def _commit(self) -> MemoryDelta:
        op, self._op = self._op, None
        removed = np.concatenate(op["removed"]) if op["removed"] else np.zeros(0, np.int64)
        recolored = np.concatenate(op["recolored"]) if op["recolored"] else np.zeros(0, np.int64)
        if self._next_id == op["next_id"] and not removed.size and not recolored.size:
            return MemoryDelta.empty(self._version)
        before = self._version
        self._version += 1
        self._log.append(_LogEntry(self._version, op["next_id"], removed, recolored))
        self._log_size += 1 + removed.size + recolored.size
        while self._log_size > self.log_limit and len(self._log) > 1:
            old = self._log.popleft()
            self._log_size -= 1 + old.removed.size + old.recolored.size
            self._log_floor = old.version_to
        return self.delta_since(before)

    def snapshot(self, version_from: int | None = None) -> MemoryDelta:
        """The whole memory as a full delta (what a client that knows nothing receives)."""
        z = np.zeros(0, np.int64)
        return MemoryDelta(self._version if version_from is None else int(version_from), self._version,
                           self.ids.copy(), self.xyz.copy(), self.rgb.copy(), z, z, np.zeros((0, 3), np.uint8),
                           full=True)

    def delta_since(self, version: int) -> MemoryDelta:
        """Changes from `version` to now; a full snapshot if `version` is older than the change log."""
        version = int(version)
        if not 0 <= version <= self._version:
            raise ValueError(f"version {version} is not in 0..{self._version} (the memory's current version)")
        if version == self._version:
            return MemoryDelta.empty(version)
        if version < self._log_floor:
            return self.snapshot(version)
        entries = list(islice(self._log, version - self._log_floor, None))
        first_new = entries[0].next_id_before  # ids issued after `version` are >= this
        removed = np.concatenate([e.removed for e in entries])
        removed = removed[removed < first_new]  # points born and gone since `version` never reached the client
        recolored = np.concatenate([e.recolored for e in entries])
        recolored = np.unique(recolored[recolored < first_new])
        rc_rows = self._rows.get(recolored)
        recolored, rc_rows = recolored[rc_rows >= 0], rc_rows[rc_rows >= 0]
        rows = self._rows.rows_from(first_new)
        c = self._cols
        return MemoryDelta(version, self._version, c["ids"][rows], np.take(c["xyz"], rows, axis=0),
                           np.take(c["rgb"], rows, axis=0), removed, recolored, c["rgb"][rc_rows])

    # ------------------------------------------------------------------ storage
    def _ensure_room(self, extra: int) -> None:
        need = self._n + extra
        have = len(self._cols["ids"])
        if need <= have:
            return
        size = max(need, 2 * have, 1024)  # amortised growth: appends cost O(appended)
        for name, col in self._cols.items():
            grown = np.empty((size,) + col.shape[1:], col.dtype)
            grown[: self._n] = col[: self._n]
            self._cols[name] = grown

    def _append(self, xyz, rgb, conf, frame_id, keys) -> np.ndarray:
        """Append rows (the caller indexes their voxels); returns their rows."""
        m = len(xyz)
        self._ensure_room(m)
        rows = np.arange(self._n, self._n + m, dtype=np.int64)
        ids = np.arange(self._next_id, self._next_id + m, dtype=np.int64)
        c, sl = self._cols, slice(self._n, self._n + m)
        c["xyz"][sl], c["rgb"][sl], c["confidence"][sl] = xyz, rgb, conf
        c["frame_id"][sl], c["ids"][sl], c["keys"][sl] = frame_id, ids, keys
        self._rows.append(ids, rows)
        self._next_id += m
        self._n += m
        return rows

    def _replace(self, rows, xyz, rgb, conf, frame_id) -> None:
        """New contents (same voxel) for existing rows; each gets a new id, the old id counts as removed."""
        c = self._cols
        old = c["ids"][rows]
        self._op["removed"].append(old)
        self._rows.remove(old)
        ids = np.arange(self._next_id, self._next_id + len(rows), dtype=np.int64)
        self._next_id += len(rows)
        c["xyz"][rows], c["rgb"][rows], c["confidence"][rows], c["frame_id"][rows], c["ids"][rows] = (
            xyz, rgb, conf, frame_id, ids)
        self._rows.append(ids, rows)

    def _remove_rows(self, rows: np.ndarray) -> None:
        rows = np.unique(np.asarray(rows, np.int64))
        if not rows.size:
            return
        c, n = self._cols, self._n
        ids = c["ids"][rows]
        self._op["removed"].append(ids)
        self._voxels.remove_slots(self._voxels.find(c["keys"][rows]))
        self._rows.remove(ids)
        # Fill the holes below the new end with the surviving rows above it: O(removed) work.
        n_new = n - len(rows)
        holes = rows[rows < n_new]
        keep_tail = np.ones(n - n_new, bool)
        keep_tail[rows[rows >= n_new] - n_new] = False
        movers = n_new + np.flatnonzero(keep_tail)
        for col in c.values():
            col[holes] = col[movers]
        if holes.size:
            self._voxels.set_values(self._voxels.find(c["keys"][holes]), holes)
            self._rows.set_rows(c["ids"][holes], holes)
        self._n = n_new

    def _insert(self, xyz: np.ndarray, rgb: np.ndarray, conf: np.ndarray | None, frame_id: int) -> None:
        m = len(xyz)
        if not m:
            return
        coords, lo, hi = self._voxel_coords(xyz)  # [3, m]
        keys = _pack(coords)
        # One point per voxel within the batch, then the big index is probed once per distinct voxel.
        win = _batch_owners(coords, lo, hi, keys, conf)
        floor = self._conf_floor
        self._conf_floor = min(floor, 1.0 if conf is None else float(conf.min()))
        slots, found = self._voxels.find_or_insert(keys[win])
        new = win[~found]
        if new.size:
            rows = self._append(np.take(xyz, new, axis=0), np.take(rgb, new, axis=0),
                                1.0 if conf is None else conf[new], frame_id, keys[new])
            self._voxels.set_values(slots[~found], rows)
        # Occupied voxels: a strictly more confident point replaces the stored one. With default confidences
        # into a memory that never held a less confident point nothing can be replaced: skip the lookups.
        if conf is None and floor >= 1.0:
            found[:] = False
        old, r = win[found], self._voxels.values_at(slots[found])
        if old.size:
            better = (1.0 if conf is None else conf[old]) > self._cols["confidence"][r]
            if better.any():
                old, r = old[better], r[better]
                self._replace(r, xyz[old], rgb[old], 1.0 if conf is None else conf[old], frame_id)
        self._evict_over_capacity()

    def _evict_over_capacity(self) -> None:
        excess = self._n - self.capacity
        if excess <= 0:
            return
        conf = self._cols["confidence"][: self._n]
        kth = np.partition(conf, excess - 1)[excess - 1]
        below = np.flatnonzero(conf < kth)
        tied = np.flatnonzero(conf == kth)
        need = excess - len(below)
        if need < len(tied):  # among equally confident points, the oldest (smallest id) go first
            tied = tied[np.argpartition(self._cols["ids"][tied], need - 1)[:need]]
        self._remove_rows(np.concatenate([below, tied]))

    # ------------------------------------------------------------------ insertion
    def insert_points(self, xyz, rgb, confidence=None, frame_id: int = -1) -> MemoryDelta:
        """Insert points xyz [N, 3] (world, metres) with colours rgb [N, 3] uint8 (or one [3] colour)."""
        xyz = _points(xyz)
        rgb = _colours(rgb, len(xyz))
        conf = _confidence(confidence, len(xyz))
        self._begin()
        self._insert(xyz, rgb, conf, int(frame_id))
        return self._commit()

    def insert_rgbd(self, rgb, depth, K, w2c, frame_id: int, exclude=None,
                    depth_range: tuple[float, float] = DEFAULT_DEPTH_RANGE, confidence=None) -> MemoryDelta:
        """Back-project one RGB-D frame and insert its valid pixels.

        rgb [H, W, 3] uint8, depth [H, W] metric z (NaN/inf/out-of-range = no point), K [3, 3] pixels,
        w2c [4, 4] (or 3x4), exclude [H, W] bool (True = dynamic, not inserted), confidence [H, W] >= 0.
        """
        depth = np.asarray(depth)
        if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.floating):
            raise ValueError(f"depth must be a float [H, W] map, got {depth.dtype} {depth.shape}")
        H, W = depth.shape
        rgb = np.asarray(rgb)
        if rgb.shape != (H, W, 3) or rgb.dtype != np.uint8:
            raise ValueError(f"rgb must be uint8 [{H}, {W}, 3] to match depth, got {rgb.dtype} {rgb.shape}")
        K = np.asarray(K, np.float64)
        if K.shape != (3, 3) or not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise ValueError(f"K must be a finite [3, 3] pixel matrix with positive focal lengths, got {K.tolist()}")
        w2c = geometry.as_se3(w2c)
        if w2c.shape != (4, 4) or not np.isfinite(w2c).all():
            raise ValueError(f"w2c must be one finite 3x4 or 4x4 pose, got shape {w2c.shape}")
        lo, hi = (float(x) for x in depth_range)
        if not (0 <= lo < hi):
            raise ValueError(f"depth_range must satisfy 0 <= near < far, got {depth_range}")
        valid = (depth >= lo) & (depth <= hi)  # NaN compares False: no point
        if exclude is not None:
            exclude = np.asarray(exclude)
            if exclude.shape != (H, W) or exclude.dtype != np.bool_:
                raise ValueError(f"exclude must be a bool [{H}, {W}] mask, got {exclude.dtype} {exclude.shape}")
            valid &= ~exclude
        conf = None
        if confidence is not None:
            confidence = np.asarray(confidence)
            if confidence.shape != (H, W):
                raise ValueError(f"confidence must be [{H}, {W}], got shape {confidence.shape}")
            conf = _confidence(confidence[valid], int(valid.sum()))
        world = geometry.unproject(np.where(valid, depth, 0.0), K, w2c).reshape(-1, 3)  # [H*W, 3] float64
        if valid.all():
            xyz, colours = world.astype(np.float32), rgb.reshape(-1, 3)
        else:  # np.take on flat indices is several times faster than a 2-D boolean mask here
            pick = np.flatnonzero(valid)
            xyz, colours = np.take(world, pick, axis=0).astype(np.float32), np.take(rgb.reshape(-1, 3), pick, axis=0)
        self._begin()
        self._insert(xyz, colours, conf, int(frame_id))
        return self._commit()

    # ------------------------------------------------------------------ selection and edits
    def _rows_in_box(self, lo, hi) -> np.ndarray:
        lo, hi = _box(lo, hi)
        xyz = self._cols["xyz"][: self._n]
        return np.flatnonzero(((xyz >= lo) & (xyz <= hi)).all(axis=1))

    def _rows_in_rect(self, camera: geometry.Camera, rect, visible_only: bool) -> np.ndarray:
        u0, v0, u1, v1 = _rect(rect)
        if not self._n:
            return np.zeros(0, np.int64)
        uv, z = geometry.project(self._cols["xyz"][: self._n], camera.w2c, camera.K)
        inside = (z > 0) & (uv[:, 0] >= u0) & (uv[:, 0] < u1) & (uv[:, 1] >= v0) & (uv[:, 1] < v1)
        rows = np.flatnonzero(inside)
        if visible_only:
            from engine.memory.render import render  # the renderer's z-buffer decides what is visible

            out = render(self, [camera], return_visible=True)
            rows = np.intersect1d(rows, out.visible[0].numpy())
        return rows

    def select_box(self, lo, hi) -> np.ndarray:
        """Ids [k] of the points inside the axis-aligned box [lo, hi] (inclusive), in row order."""
        return self.ids[self._rows_in_box(lo, hi)].copy()

    def select_in_rect(self, camera: geometry.Camera, rect, visible_only: bool = False) -> np.ndarray:
        """Ids of points in front of `camera` that project into the pixel rectangle (u0, v0, u1, v1).

        The rectangle is half-open ([u0, u1) x [v0, v1), pixel centres at +0.5). With `visible_only`, only
        points that win the renderer's z-buffer at the camera's resolution (the ones on screen) are kept;
        otherwise everything inside the rectangle's frustum is, hidden points included.
        """
        return self.ids[self._rows_in_rect(camera, rect, visible_only)].copy()

    def remove_ids(self, ids) -> MemoryDelta:
        """Remove points by id; ids not in the memory (already removed, never issued) are ignored."""
        rows = self._rows.get(np.unique(_id_array(ids)))
        self._begin()
        self._remove_rows(rows[rows >= 0])
        return self._commit()

    def remove_box(self, lo, hi) -> MemoryDelta:
        rows = self._rows_in_box(lo, hi)
        self._begin()
        self._remove_rows(rows)
        return self._commit()

    def remove_in_rect(self, camera: geometry.Camera, rect, visible_only: bool = False) -> MemoryDelta:
        rows = self._rows_in_rect(camera, rect, visible_only)
        self._begin()
        self._remove_rows(rows)
        return self._commit()

    def recolor(self, ids, rgb) -> MemoryDelta:
        """Set the colour of points by id: rgb [3] (one colour) or [k, 3] uint8. Unknown ids are ignored."""
        ids = _id_array(ids)
        rgb = _colours(rgb, len(ids))
        if len(np.unique(ids)) != len(ids):
            raise ValueError("recolor: ids must be distinct")
        rows = self._rows.get(ids)
        known = rows >= 0
        return self._recolor_rows(rows[known], rgb[known])

    def recolor_box(self, lo, hi, rgb) -> MemoryDelta:
        """Give every point inside the box [lo, hi] the colour rgb [3] uint8."""
        rows = self._rows_in_box(lo, hi)
        rgb = np.asarray(rgb)
        if rgb.shape != (3,):
            raise ValueError(f"recolor_box takes one colour [3], got shape {rgb.shape}")
        return self._recolor_rows(rows, _colours(rgb, len(rows)))

    def _recolor_rows(self, rows: np.ndarray, rgb: np.ndarray) -> MemoryDelta:
        self._begin()
        if rows.size:
            self._cols["rgb"][rows] = rgb
            self._op["recolored"].append(self._cols["ids"][rows])
        return self._commit()

    def clear(self) -> MemoryDelta:
        """Remove every point (ids keep increasing afterwards)."""
        self._begin()
        self._remove_rows(np.arange(self._n))
        return self._commit()

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> None:
        """Write the whole memory to a safetensors file (arrays bit-exact, settings and counters as metadata)."""
        from safetensors import SafetensorError
        from safetensors.numpy import save_file

        tensors = {name: np.ascontiguousarray(self._cols[name][: self._n]) for name in _SAVED}
        meta = {"format": FILE_FORMAT, "format_version": FILE_FORMAT_VERSION,
                "voxel_size": json.dumps(self.voxel_size), "capacity": str(self.capacity),
                "version": str(self._version), "next_id": str(self._next_id)}
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        try:
            save_file(tensors, str(tmp), metadata=meta)
        except SafetensorError as e:  # its I/O failures (a full disk) are OSErrors to callers, like every write
            tmp.unlink(missing_ok=True)
            raise OSError(f"{tmp}: could not write the memory ({e})") from e
        os.replace(tmp, path)  # a crash mid-write never leaves a truncated memory file behind

    @classmethod
    def load(cls, path: str | Path, log_limit: int = DEFAULT_LOG_LIMIT) -> "SpatialMemory":
        """Read a file written by `save`. Any fault raises MemoryFileError naming the file and the problem."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise MemoryFileError(path, "file not found")
        try:
            with safe_open(str(path), framework="np") as f:
                meta = f.metadata() or {}
                arrays = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for every kind of damage
            raise MemoryFileError(path, f"not a readable safetensors file ({type(e).__name__}: {e})") from None
        if meta.get("format") != FILE_FORMAT:
            raise MemoryFileError(path, f"not a spatial-memory file (format {meta.get('format')!r})")
        if meta.get("format_version") != FILE_FORMAT_VERSION:
            raise MemoryFileError(path, f"unsupported format_version {meta.get('format_version')!r}")
        try:
            voxel_size = float(json.loads(meta["voxel_size"]))
            capacity, version, next_id = int(meta["capacity"]), int(meta["version"]), int(meta["next_id"])
        except (KeyError, ValueError, TypeError) as e:
            raise MemoryFileError(path, f"bad or missing metadata ({e})") from None
        missing = [k for k in _SAVED if k not in arrays]
        if missing:
            raise MemoryFileError(path, f"missing arrays: {', '.join(missing)}")
        n = len(arrays["ids"])
        for name in _SAVED:
            dtype, shape = _COLUMNS[name]
            a = arrays[name]
            if a.dtype != dtype or a.shape != (n,) + shape:
                raise MemoryFileError(path, f"array {name!r} is {a.dtype} {a.shape}, expected "
                                            f"{np.dtype(dtype).name} {(n,) + shape}")
        ids, xyz = arrays["ids"], arrays["xyz"]
        if not np.isfinite(xyz).all():
            raise MemoryFileError(path, "xyz contains non-finite values")
        if n and (ids.min() < 0 or ids.max() >= next_id or len(np.unique(ids)) != n):
            raise MemoryFileError(path, "ids must be distinct, >= 0 and below next_id")
        if n > capacity or version < 0 or not voxel_size > 0:
            raise MemoryFileError(path, "metadata inconsistent with the arrays (capacity, version or voxel_size)")
        try:
            mem = cls(voxel_size, capacity, log_limit)
            keys = mem.voxel_keys(xyz)
        except ValueError as e:
            raise MemoryFileError(path, str(e)) from None
        if len(np.unique(keys)) != n:
            raise MemoryFileError(path, f"two points share a voxel of size {voxel_size}")
        mem._ensure_room(n)
        for name in _SAVED:
            mem._cols[name][:n] = arrays[name]
        mem._cols["keys"][:n] = keys
        mem._n = n
        mem._conf_floor = float(arrays["confidence"].min()) if n else math.inf
        rows = np.arange(n, dtype=np.int64)
        mem._voxels.insert_new(keys, rows)
        order = np.argsort(ids)  # rows need not be in id order; the id index must be
        mem._rows.append(ids[order], rows[order])
        mem._next_id, mem._version, mem._log_floor = next_id, version, version
        return mem

    def export_ply(self, path: str | Path) -> None:
        """Write positions and colours as a binary PLY (through open3d); ids and confidences are not kept."""
        import open3d as o3d

        pcd = o3d.geometry.PointCloud()
        pcd.points = o3d.utility.Vector3dVector(self.xyz.astype(np.float64))
        pcd.colors = o3d.utility.Vector3dVector(self.rgb.astype(np.float64) / 255.0)
        if not o3d.io.write_point_cloud(str(path), pcd, write_ascii=False):
            raise MemoryFileError(path, "open3d could not write the PLY file")

    @classmethod
    def from_ply(cls, path: str | Path, voxel_size: float = DEFAULT_VOXEL_SIZE,
                 capacity: int = DEFAULT_CAPACITY) -> "SpatialMemory":
        """A memory from any PLY point cloud (open3d reads it); no colours -> grey; non-finite points dropped."""
        import open3d as o3d

        path = Path(path)
        if not path.is_file():
            raise MemoryFileError(path, "file not found")
        pcd = o3d.io.read_point_cloud(str(path), format="ply")
        xyz = np.asarray(pcd.points)  # [N, 3] float64
        if not len(xyz):
            raise MemoryFileError(path, "no points could be read (not a PLY point cloud, or empty)")
        if pcd.has_colors():
            rgb = np.clip(np.round(np.asarray(pcd.colors) * 255.0), 0, 255).astype(np.uint8)
        else:
            rgb = np.full((len(xyz), 3), PLY_GREY, np.uint8)
        finite = np.isfinite(xyz).all(axis=1)
        if not finite.any():  # (an empty memory would hide that nothing usable was read)
            raise MemoryFileError(path, f"none of its {len(xyz)} points has finite coordinates")
        mem = cls(voxel_size, capacity)
        try:
            mem.insert_points(xyz[finite], rgb[finite])
        except ValueError as e:
            raise MemoryFileError(path, str(e)) from None
        return mem
