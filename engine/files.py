"""File writes that a crash, a concurrent reader or a growing session must not trip over."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np


WRITE_BLOCK_BYTES = 4 << 20  # write_npz stacks this much of a sequence at a time


def write_text_atomic(path: str | Path, text: str, tmp: str | Path | None = None) -> None:
    """Write `text` to `path` through a temporary file beside it (default `.<name>.tmp`) renamed over it: readers
    and a restarted process find the old file or the new one, never part of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp") if tmp is None else Path(tmp)
    tmp.write_text(text)
    os.replace(tmp, path)


def write_npz(path: str | Path, arrays: Mapping[str, np.ndarray | Sequence[np.ndarray]]) -> None:
    """Write an uncompressed .npz that `np.load` reads like one from `np.savez`. A value may be a non-empty sequence
    of arrays of one shape and dtype: it is written as their stack [N, ...] a few MB at a time, never building the
    whole stack (a session's stored frames would otherwise be copied whole at every autosave)."""
    from numpy.lib import format as npy

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, value in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                if isinstance(value, np.ndarray):
                    npy.write_array(f, value, allow_pickle=False)
                    continue
                parts = list(value)
                if not parts:
                    raise ValueError(f"write_npz: {name!r} is an empty sequence (pass an array of shape [0, ...])")
                shape, dtype = parts[0].shape, parts[0].dtype
                odd = [i for i, p in enumerate(parts) if p.shape != shape or p.dtype != dtype]
                if odd:
                    raise ValueError(f"write_npz: {name!r} part {odd[0]} is {parts[odd[0]].dtype}"
                                     f"{list(parts[odd[0]].shape)}, not {dtype}{list(shape)} like part 0")
                npy.write_array_header_2_0(f, {"descr": npy.dtype_to_descr(dtype), "fortran_order": False,
                                               "shape": (len(parts), *shape)})
                per_block = max(1, WRITE_BLOCK_BYTES // max(1, parts[0].nbytes))  # few writes, bounded copies
                for i in range(0, len(parts), per_block):
                    f.write(np.stack(parts[i : i + per_block]).data)
