"""Shared timing helpers: warm up, repeat, synchronise, take medians; and the machine's description."""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable


def synchronize() -> None:
    """Wait for queued accelerator work, so a clock read after it measures the work itself."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_ms(fn: Callable[[], object], warmup: int = 2, repeat: int = 5, sync: bool = True) -> float:
    """Median wall time of `fn()` in milliseconds after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    if sync:
        synchronize()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if sync:
            synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def matmul_peak_gflops(n: int = 2048, repeat: int = 5, device: str | None = None, dtype=None) -> float:
    """Measured matmul throughput (the practical compute ceiling for dense work): n x n matrices of `dtype`
    (default float32) on `device` (default cuda where present, else cpu)."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = median_ms(lambda: a @ b, warmup=2, repeat=repeat)
    return 2 * n**3 / (ms / 1e3) / 1e9


def machine_info() -> dict:
    """What the numbers were measured on: CPU, cores, torch threads, GPU if any."""
    import torch

    info = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
