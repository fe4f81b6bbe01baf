"""Inference backends for the DiT: `eager` (plain PyTorch, always there), `compile` (torch.compile) and
`tensorrt` (torch-tensorrt, NVIDIA only). Chosen by name in entry points, never at import time; TensorRT is imported
only when asked for, and a machine without it gets a clear error naming what is missing.

    dit, name = apply_backend(dit, cfg, "auto")   # tensorrt where present on a GPU, else eager
    seconds = warm_up(dit, cfg)                   # build compiled graphs for every shape a session brings
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
        # one graph per chunk shape (warm_up builds them all before serving): room for every shape's filling and
        # cached steps and the pieces between graph breaks, beyond which dynamo would run the DiT eagerly
        import torch._dynamo

        config = torch._dynamo.config
        limit_name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
        # (layout "layered" adds two per shape: a chunk and a preparation from kept references' keys/values)
        setattr(config, limit_name, max(getattr(config, limit_name), 6 * len(warm_up_shapes(cfg))))
        return torch.compile(dit, dynamic=False, fullgraph=False), name
    from engine.model.backends.tensorrt import compile_tensorrt

    return compile_tensorrt(dit, cfg, cache_dir=cache_dir), name


def warm_up_shapes(cfg) -> list[tuple[int, int]]:
    """(references, target latent frames) of every chunk a session can ask the DiT for: 0 .. num_refs references
    (a young session has fewer stored frames), a short chunk (1 latent frame) and a full one."""
    targets = sorted({1, cfg.chunk_latent_frames})
    return [(k, f) for k in range(cfg.num_refs + 1) for f in targets]


def warm_up(dit: torch.nn.Module, cfg, steps: int | None = None, seed: int = 0) -> float:
    """Sample one chunk of random latents for each of `warm_up_shapes(cfg)` in every way a session runs the DiT:
    in one go, from a prepared context as `WorldSession.prepare` makes it (attention_layout "context" or
    "layered"), and with the references' keys/values of an earlier chunk (layout "layered"), so a compiled backend
    builds its graphs before the server answers anyone (otherwise chunks of a walk stall for seconds). Returns the
    seconds it took."""
    import time

    from engine.model.configs import CACHED_LAYOUTS
    from engine.model.dit import ContextCache
    from engine.model.sampler import fill_context, sample

    param = next(dit.parameters())
    g = torch.Generator().manual_seed(seed)
    z, h, w, fh = cfg.latent_channels, cfg.latent_height, cfg.latent_width, cfg.history_latent_frames

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(param.device, param.dtype)

    t0 = time.perf_counter()
    with torch.no_grad():
        for k, f in warm_up_shapes(cfg):
            history, refs = rand(1, z, fh, h, w) if fh else None, rand(1, z, k, h, w) if k else None
            control = rand(1, cfg.control_in_channels, fh + f, h, w)
            text = rand(1, cfg.text_len, cfg.text_dim) if cfg.text_dim is not None else None
            cached = cfg.attention_layout in CACHED_LAYOUTS and fh and text is None and cfg.cfg_scale == 1.0
            first = ContextCache() if cached else None
            sample(dit, cfg, history=history, refs=refs, control=control, target_frames=f, steps=steps, text=text,
                   generator=g, context=first)
            if cached:  # what a prepared context runs
                context = ContextCache()
                fill_context(dit, history, refs, control[:, :, :fh], context)
                sample(dit, cfg, control=control[:, :, fh:], context=context, target_frames=f, steps=steps,
                       generator=g)
            if cached and k and cfg.attention_layout == "layered":  # a later chunk with the same references
                kept = first.references()
                sample(dit, cfg, history=history, control=control, context=kept.fork(), target_frames=f,
                       steps=steps, generator=g)
                fill_context(dit, history, None, control[:, :, :fh], kept.fork())
    if param.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0
