"""Inference backends for the DiT: `eager` (plain PyTorch, always there), `compile` (torch.compile) and
`tensorrt` (torch-tensorrt, NVIDIA only). Chosen by name in entry points, never at import time; TensorRT is imported
only when asked for, and a machine without it gets a clear error naming what is missing.

    dit = apply_backend(dit, cfg, "auto")   # tensorrt where present on a GPU, else eager
"""

from __future__ import annotations

import importlib.util

import torch

BACKENDS = ("auto", "eager", "compile", "tensorrt")


class BackendUnavailable(RuntimeError):
    """The asked-for backend cannot run on this machine; the message says why and what to install."""


def tensorrt_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("torch_tensorrt") is not None


def resolve_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")
    if name == "auto":
        return "tensorrt" if tensorrt_available() else "eager"
    return name


def apply_backend(dit: torch.nn.Module, cfg, name: str, cache_dir=None) -> tuple[torch.nn.Module, str]:
    """Return (a module with the DiT's call signature running on the backend, the resolved backend name)."""
    name = resolve_backend(name)
    if name == "eager":
        return dit, name
    if name == "compile":
        return torch.compile(dit, dynamic=False, fullgraph=False), name
    from engine.model.backends.tensorrt import compile_tensorrt

    return compile_tensorrt(dit, cfg, cache_dir=cache_dir), name
