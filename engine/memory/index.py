"""The spatial memory's two indexes, both vectorised NumPy with batch operations.

- `Int64HashMap`: open-addressing hash map int64 key -> int64 value, used for voxel key -> row (de-duplication
  on insert). Batched probing costs O(batch) per insert whatever the memory's size; a sorted array with
  searchsorted would cost O(N) per insert to stay sorted. Linear probing over a power-of-two table; removed
  keys become tombstones, and the table is rebuilt when live keys + tombstones pass `max_load`.
- `IdIndex`: point id -> row. Ids are issued in increasing order, so the index is two parallel arrays sorted
  by id: new ids append in O(batch) with sequential writes, lookups are binary searches, removals mark
  entries dead and the arrays are compacted once half of them are dead (amortised O(1) per removal).
"""

from __future__ import annotations

import numpy as np

EMPTY = np.int64(-1)
TOMB = np.int64(-2)
# MurmurHash3's 64-bit finaliser, top bits kept. Packed voxel coordinates are highly structured; a plain
# multiplicative (Fibonacci) hash leaves clusters that linear probing turns into long probe chains (measured
# on a room scan: 18 probe rounds instead of 10, and 4x more keys past the third probe).
_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)
_MIN_BITS = 10


class Int64HashMap:
    """key (int64 >= 0) -> value (int64). Batched: every method takes and returns arrays."""

    def __init__(self, expected: int = 0, max_load: float = 0.5):
        if not 0.0 < max_load < 1.0:
            raise ValueError(f"max_load must be in (0, 1), got {max_load}")
        self.max_load = float(max_load)
        self._alloc(self._bits_for(expected))

    # ------------------------------------------------------------------ table
    def _bits_for(self, n: int) -> int:
        # A fresh table holds n keys at 3/4 of max_load: room to grow before the next rebuild, while a table
        # no bigger than needed keeps the random probes in cache as much as possible.
        need = max(1, int(np.ceil(n / (0.75 * self.max_load))))
        return max(_MIN_BITS, int(np.ceil(np.log2(need))))

    def _alloc(self, bits: int) -> None:
        self._bits = bits
        self._mask = np.int64((1 << bits) - 1)
        self._keys = np.full(1 << bits, EMPTY, dtype=np.int64)  # [S]
        self._vals = np.zeros(1 << bits, dtype=np.int64)  # [S]
        self._used = 0  # slots not EMPTY: live keys + tombstones
        self._live = 0

    def __len__(self) -> int:
        return self._live

    @property
    def nbytes(self) -> int:
        """Bytes held by the table (every slot, used or not)."""
        return self._keys.nbytes + self._vals.nbytes

    @property
    def table_size(self) -> int:
        return 1 << self._bits

    def _home(self, keys: np.ndarray) -> np.ndarray:
        h = keys.astype(np.uint64)  # the multiplications wrap modulo 2^64 by design
        h ^= h >> _S33
        h *= _M1
        h ^= h >> _S33
        h *= _M2
        h ^= h >> _S33
        return (h >> np.uint64(64 - self._bits)).astype(np.int64)

    def _reserve(self, extra: int) -> None:
        """Make room for `extra` more keys, rebuilding (and growing) the table when needed."""
        if self._used + extra <= self.max_load * self.table_size:
            return
        keys, vals = self.items()
        self._alloc(self._bits_for(len(keys) + extra))
        self.insert_new(keys, vals)

    # ------------------------------------------------------------------ queries
    def find(self, keys: np.ndarray) -> np.ndarray:
        """Slot of each key [m] int64, -1 where absent."""
        keys = np.asarray(keys, dtype=np.int64)
        s = self._home(keys)
        t = self._keys[s]
        hit = t == keys
        out = np.where(hit, s, -1)
        # Only the keys that collided probe on; carrying their own slot/key arrays keeps later rounds small.
        pend = np.flatnonzero(~hit & (t != EMPTY))
        ps, pk = s[pend], keys[pend]
        while pend.size:
            ps = (ps + 1) & self._mask
            t = self._keys[ps]
            hit = t == pk
            out[pend[hit]] = ps[hit]
            go_on = ~hit & (t != EMPTY)  # tombstones and other keys: keep probing
            pend, ps, pk = pend[go_on], ps[go_on], pk[go_on]
        return out

    def get(self, keys: np.ndarray, default: int = -1) -> np.ndarray:
        """Value of each key [m], `default` where absent."""
        slots = self.find(keys)
        found = slots >= 0
        out = np.full(len(slots), default, dtype=np.int64)
        out[found] = self._vals[slots[found]]
        return out

    def values_at(self, slots: np.ndarray) -> np.ndarray:
        return self._vals[slots]

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """All live (keys, values), in table order."""
        live = self._keys >= 0
        return self._keys[live], self._vals[live]

    # ------------------------------------------------------------------ updates
    def set_values(self, slots: np.ndarray, vals) -> None:
        """Overwrite the values at slots returned by find/claim/find_or_insert (the keys stay)."""
        self._vals[slots] = vals

    def _probe_insert(self, keys: np.ndarray, reuse_tombs: bool) -> tuple[np.ndarray, np.ndarray]:
        """Probe distinct keys; each either finds itself (found) or lands in a free slot (inserted).

        Tombstones may be reused only when the keys are known absent: otherwise a key could be inserted in
        front of its own live copy further down the chain. Returns (slot [m], found [m] bool).
        """
        self._reserve(len(keys))
        out = self._home(keys)  # becomes each key's final slot
        found = np.zeros(len(keys), dtype=bool)
        pend = None  # None: every key, without an index array (the first round is the big one)
        ps, pk = out, keys
        while True:
            t = self._keys[ps]
            hit = t == pk
            free = (t < 0) if reuse_tombs else (t == EMPTY)
            fs, fk = ps[free], pk[free]
            self._keys[fs] = fk  # distinct keys racing for one slot: one lands, the others probe on
            got = self._keys[fs] == fk
            n_got = int(np.count_nonzero(got))
            self._live += n_got
            self._used += n_got - (int(np.count_nonzero(t[free][got] == TOMB)) if reuse_tombs else 0)
            done = hit.copy()
            done[free] = got
            if pend is None:
                found[:] = hit
                rest = np.flatnonzero(~done)
                pend, ps, pk = rest, out[rest], keys[rest]
            else:
                out[pend[done]] = ps[done]
                found[pend[hit]] = True
                rest = ~done
                pend, ps, pk = pend[rest], ps[rest], pk[rest]
            if not pend.size:
                return out, found
            ps = (ps + 1) & self._mask

    def insert_new(self, keys: np.ndarray, vals) -> None:
        """Insert keys that are distinct and absent from the map (the caller's contract; not re-checked)."""
        keys = np.asarray(keys, dtype=np.int64)
        if keys.size and keys.min() < 0:
            raise ValueError("hash map keys must be non-negative")
        slots, _ = self._probe_insert(keys, reuse_tombs=True)
        self._vals[slots] = vals

    def find_or_insert(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For distinct keys: the slot of each, inserting the absent ones in the same probe pass.

        Returns (slot [m], found [m] bool); the caller sets the values of the inserted (not found) keys.
        One pass instead of find + insert_new halves the random memory traffic of an insert.
        """
        keys = np.asarray(keys, dtype=np.int64)
        if keys.size and keys.min() < 0:
            raise ValueError("hash map keys must be non-negative")
        return self._probe_insert(keys, reuse_tombs=False)

    def remove_slots(self, slots: np.ndarray) -> None:
        """Tombstone the given distinct occupied slots (from find; -1 entries are ignored)."""
        slots = np.asarray(slots, dtype=np.int64)
        slots = slots[slots >= 0]
        self._keys[slots] = TOMB
        self._live -= len(slots)

    def remove(self, keys: np.ndarray) -> int:
        """Remove keys that are present; absent keys are ignored. Returns how many were removed."""
        slots = self.find(keys)
        slots = np.unique(slots[slots >= 0])  # repeated keys in the request name one slot
        self.remove_slots(slots)
        return len(slots)


class IdIndex:
    """Increasing int64 ids -> int64 rows, as two parallel arrays sorted by id (dead entries: row -1)."""

    def __init__(self):
        self._ids = np.zeros(0, np.int64)  # [cap] sorted ascending over [:n]
        self._rows = np.zeros(0, np.int64)  # [cap], -1 = removed
        self._n = 0
        self._dead = 0

    def __len__(self) -> int:
        return self._n - self._dead

    @property
    def nbytes(self) -> int:
        """Bytes held by the index (its whole capacity)."""
        return self._ids.nbytes + self._rows.nbytes

    def append(self, ids: np.ndarray, rows: np.ndarray) -> None:
        """Add ids that are increasing and larger than every id added before."""
        ids = np.asarray(ids, np.int64)
        k = len(ids)
        if not k:
            return
        if self._n and ids[0] <= self._ids[self._n - 1]:
            raise ValueError("IdIndex.append: ids must be larger than every id already indexed")
        if self._n + k > len(self._ids):
            size = max(self._n + k, 2 * len(self._ids), 1024)  # amortised growth
            for name in ("_ids", "_rows"):
                grown = np.empty(size, np.int64)
                grown[: self._n] = getattr(self, name)[: self._n]
                setattr(self, name, grown)
        self._ids[self._n: self._n + k] = ids
        self._rows[self._n: self._n + k] = rows
        self._n += k

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        """Position of each live id [m], -1 where absent or removed."""
        ids = np.asarray(ids, np.int64)
        if not self._n:
            return np.full(len(ids), -1, np.int64)
        pos = np.searchsorted(self._ids[: self._n], ids)
        pc = np.minimum(pos, self._n - 1)
        ok = (pos < self._n) & (self._ids[pc] == ids) & (self._rows[pc] >= 0)
        return np.where(ok, pos, -1)

    def get(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id [m], -1 where absent."""
        pos = self._positions(ids)
        if not self._n:
            return pos
        return np.where(pos >= 0, self._rows[np.maximum(pos, 0)], -1)

    def set_rows(self, ids: np.ndarray, rows: np.ndarray) -> None:
        """New rows for live ids (after the memory moved them)."""
        self._rows[self._positions(ids)] = rows

    def remove(self, ids: np.ndarray) -> None:
        """Mark live ids removed (absent ones are ignored); compacts once half the entries are dead."""
        pos = self._positions(ids)
        pos = np.unique(pos[pos >= 0])
        self._rows[pos] = -1
        self._dead += len(pos)
        if self._dead > self._n // 2:
            live = self._rows[: self._n] >= 0
            k = int(np.count_nonzero(live))
            self._ids[:k] = self._ids[: self._n][live]
            self._rows[:k] = self._rows[: self._n][live]
            self._n, self._dead = k, 0

    def rows_from(self, first_id: int) -> np.ndarray:
        """Rows of the live ids >= first_id, in id order."""
        start = int(np.searchsorted(self._ids[: self._n], first_id))
        rows = self._rows[start: self._n]
        return rows[rows >= 0]
