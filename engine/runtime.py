"""Process settings for the engine's entry points (serve, train, generate, bench): applied there, never at import.

Small shared CPUs punish the libraries' defaults: spinning OpenMP threads, OpenBLAS threads for tiny products and
glibc handing big temporaries back to the OS. `engine.cli.main` sets OMP_WAIT_POLICY=PASSIVE before torch loads
(spinning workers stall whenever another process holds a core); `tune_process` does the rest.
"""

from __future__ import annotations

import ctypes
import glob
import os

import numpy as np


def tune_process() -> dict:
    """Entry-point settings that matter for NumPy/torch on small shared CPUs; returns what was applied.

    - glibc returns large freed blocks to the OS by default, so every big temporary array is page-faulted in
      again (several times the cost of the arithmetic on a VM); raising the mmap/trim thresholds keeps them.
    - OpenBLAS spins up threads even for 65k x 3 matmuls; on two shared cores that is 10-100x slower.
    """
    applied = {}
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, (1 << 31) - 1)
        applied["malloc_keep_freed_memory"] = bool(ok)
    except OSError:
        applied["malloc_keep_freed_memory"] = False
    libdir = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    applied["openblas_threads"] = None
    for path in glob.glob(os.path.join(libdir, "libscipy_openblas*.so*")):
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads"):
            if hasattr(lib, name):
                getattr(lib, name)(1)
                applied["openblas_threads"] = 1
                break
    return applied


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


def heap_free_bytes() -> int | None:
    """Bytes that glibc's malloc holds free in its heaps (mallinfo2's fordblks, all arenas): memory the process
    freed but, after `tune_process`, keeps instead of returning it, so it counts in RSS without being in use.
    None where glibc (>= 2.33) is not the allocator."""
    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2
    return int(mallinfo2().fordblks)


def set_threads(threads: int | None) -> None:
    """torch intra-op threads (None leaves torch's default: one per core)."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))
