"""What changed in the spatial memory between two versions: the compact message a viewer or client applies.

`SpatialMemory` returns one `MemoryDelta` per edit and answers `delta_since(version)`; a client folds deltas
together with `merge` and mirrors the memory with `apply`. A delta for a version that fell out of the
memory's change log is a full snapshot (`full=True`): the receiver drops what it had and takes `added`.
Pure NumPy; it knows nothing of the memory's internals.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


def _ids(a, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1 or a.dtype != np.int64:
        raise ValueError(f"MemoryDelta.{name} must be int64 [N], got {a.dtype} {a.shape}")
    return a


def _rows3(a, n: int, dtype, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.shape != (n, 3) or a.dtype != dtype:
        raise ValueError(f"MemoryDelta.{name} must be {np.dtype(dtype).name} [{n}, 3], got {a.dtype} {a.shape}")
    return a


def _lookup(keys: np.ndarray, table_ids: np.ndarray, table_vals: np.ndarray) -> np.ndarray:
    """table_vals[i] where table_ids[i] == key, for keys known to be in table_ids (distinct)."""
    order = np.argsort(table_ids, kind="stable")
    return table_vals[order[np.searchsorted(table_ids, keys, sorter=order)]]


@dataclass(frozen=True)
class MemoryDelta:
    """Changes from `version_from` to `version_to`. Ids are the memory's stable point ids (never reused)."""

    version_from: int
    version_to: int
    added_ids: np.ndarray  # [A] int64, points that exist at version_to and did not at version_from
    added_xyz: np.ndarray  # [A, 3] float32, their positions
    added_rgb: np.ndarray  # [A, 3] uint8, their colours at version_to
    removed_ids: np.ndarray  # [R] int64, points that existed at version_from and are gone at version_to
    recolored_ids: np.ndarray  # [C] int64, points present at both versions whose colour was set in between
    recolored_rgb: np.ndarray  # [C, 3] uint8, their colours at version_to
    full: bool = False  # True: a snapshot; `added` is the whole memory and the receiver drops everything else

    def __post_init__(self):
        a = len(_ids(self.added_ids, "added_ids"))
        _rows3(self.added_xyz, a, np.float32, "added_xyz")
        _rows3(self.added_rgb, a, np.uint8, "added_rgb")
        _ids(self.removed_ids, "removed_ids")
        c = len(_ids(self.recolored_ids, "recolored_ids"))
        _rows3(self.recolored_rgb, c, np.uint8, "recolored_rgb")
        if self.version_to < self.version_from:
            raise ValueError(f"MemoryDelta goes backwards: {self.version_from} -> {self.version_to}")
        if self.full and (len(self.removed_ids) or c):
            raise ValueError("a full MemoryDelta carries only added points")

    @classmethod
    def empty(cls, version: int) -> "MemoryDelta":
        z = np.zeros(0, np.int64)
        return cls(version, version, z, np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8), z, z,
                   np.zeros((0, 3), np.uint8))

    @property
    def num_added(self) -> int:
        return len(self.added_ids)

    @property
    def num_removed(self) -> int:
        return len(self.removed_ids)

    @property
    def num_recolored(self) -> int:
        return len(self.recolored_ids)

    @property
    def is_empty(self) -> bool:
        """No change to apply (a full snapshot is never empty: it replaces whatever the receiver holds)."""
        return not self.full and not (self.num_added or self.num_removed or self.num_recolored)

    @property
    def nbytes(self) -> int:
        """Payload size of the arrays (what a wire message carries)."""
        return sum(a.nbytes for a in (self.added_ids, self.added_xyz, self.added_rgb, self.removed_ids,
                                      self.recolored_ids, self.recolored_rgb))

    def merge(self, other: "MemoryDelta") -> "MemoryDelta":
        """One delta equivalent to applying `self` then `other` (which must start where `self` ends)."""
        if other.version_from != self.version_to:
            raise ValueError(f"cannot merge delta {other.version_from}->{other.version_to} after "
                             f"{self.version_from}->{self.version_to}: versions do not chain")
        if other.full:
            return replace(other, version_from=self.version_from)
        gone = np.isin(self.added_ids, other.removed_ids)
        a_ids, a_xyz, a_rgb = self.added_ids[~gone], self.added_xyz[~gone], self.added_rgb[~gone].copy()
        # Other's recolours of points that self added are folded into those points' colours.
        hit = np.isin(a_ids, other.recolored_ids)
        if hit.any():
            a_rgb[hit] = _lookup(a_ids[hit], other.recolored_ids, other.recolored_rgb)
        o_rc = ~np.isin(other.recolored_ids, self.added_ids)
        if self.full:  # a snapshot carries every point in `added`; recolours of anything else are moot
            o_rc[:] = False
        s_rc = ~np.isin(self.recolored_ids, other.removed_ids) & ~np.isin(self.recolored_ids, other.recolored_ids)
        # A point added in self and removed in other never existed for the receiver: the two cancel.
        o_rm = other.removed_ids[~np.isin(other.removed_ids, self.added_ids)]
        removed = np.zeros(0, np.int64) if self.full else np.concatenate([self.removed_ids, o_rm])
        return MemoryDelta(
            self.version_from, other.version_to,
            np.concatenate([a_ids, other.added_ids]),
            np.concatenate([a_xyz, other.added_xyz]),
            np.concatenate([a_rgb, other.added_rgb]),
            removed,
            np.concatenate([self.recolored_ids[s_rc], other.recolored_ids[o_rc]]),
            np.concatenate([self.recolored_rgb[s_rc], other.recolored_rgb[o_rc]]),
            full=self.full,
        )

    def apply(self, ids: np.ndarray, xyz: np.ndarray, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Apply to a mirrored point set (ids [N] int64, xyz [N, 3], rgb [N, 3]) -> the new (ids, xyz, rgb)."""
        if self.full:
            return self.added_ids.copy(), self.added_xyz.copy(), self.added_rgb.copy()
        keep = ~np.isin(ids, self.removed_ids)
        ids, xyz, rgb = ids[keep], xyz[keep], rgb[keep].copy()
        hit = np.isin(ids, self.recolored_ids)
        if hit.any():
            rgb[hit] = _lookup(ids[hit], self.recolored_ids, self.recolored_rgb)
        return (np.concatenate([ids, self.added_ids]), np.concatenate([xyz, self.added_xyz]),
                np.concatenate([rgb, self.added_rgb]))
