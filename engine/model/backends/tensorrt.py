"""TensorRT for the DiT through torch-tensorrt, with the built engine cached on disk.

The cache key covers everything that changes the engine: the model config, the input shapes of one sampler call,
the precision and the versions of torch, torch-tensorrt and TensorRT, so a stale engine is never loaded. Imported
only by `apply_backend(..., "tensorrt")`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from engine.model.backends import BackendUnavailable


def _require():
    if not torch.cuda.is_available():
        raise BackendUnavailable("the tensorrt backend needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    try:
        import tensorrt  # noqa: F401
        import torch_tensorrt
    except ImportError as e:
        raise BackendUnavailable(f"the tensorrt backend needs the gpu extra: pip install -e '.[gpu]' ({e})") from e
    return torch_tensorrt


def example_inputs(cfg, device="cuda", dtype=torch.float16) -> tuple:
    """One sampler call's DiT inputs at the config's chunk layout (history + target latents, full references)."""
    f = cfg.history_latent_frames + cfg.chunk_latent_frames
    z, h, w = cfg.latent_channels, cfg.latent_height, cfg.latent_width
    x = torch.randn(1, z, f, h, w, device=device, dtype=dtype)
    t = torch.zeros(1, f, device=device)
    refs = torch.randn(1, z, cfg.num_refs, h, w, device=device, dtype=dtype) if cfg.num_refs else None
    control = torch.randn(1, 2 * z, f, h, w, device=device, dtype=dtype)
    return x, t, refs, control


def cache_key(cfg, inputs: tuple, precision: str) -> str:
    import tensorrt
    import torch_tensorrt

    desc = {
        "config": cfg.to_dict(),
        "shapes": [None if a is None else list(a.shape) for a in inputs],
        "precision": precision,
        "versions": [torch.__version__, torch_tensorrt.__version__, tensorrt.__version__],
    }
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]


class _RefsControlWrapper(torch.nn.Module):
    """Positional-only forward (x, t, refs, control), as torch.export wants it."""

    def __init__(self, dit):
        super().__init__()
        self.dit = dit

    def forward(self, x, t, refs, control):
        return self.dit(x, t, refs=refs, control=control)


class TensorRTDiT(torch.nn.Module):
    """Runs the TensorRT engine for the compiled shapes, the eager DiT for anything else."""

    def __init__(self, engine, eager, shapes):
        super().__init__()
        self.engine, self.eager, self.shapes = engine, eager, shapes

    def forward(self, x, t, refs=None, control=None, text=None, control_scale=None, history_frames=None, cache=None):
        shapes = [None if a is None else list(a.shape) for a in (x, t, refs, control)]
        if text is None and control_scale is None and cache is None and shapes == self.shapes:
            return self.engine(x.half(), t, refs.half(), control.half()).to(x.dtype)
        return self.eager(x, t, refs=refs, control=control, text=text, control_scale=control_scale,
                          history_frames=history_frames, cache=cache)


def compile_tensorrt(dit: torch.nn.Module, cfg, cache_dir=None, precision: str = "fp16") -> torch.nn.Module:
    torch_tensorrt = _require()
    inputs = example_inputs(cfg)
    cache_dir = Path(cache_dir or Path.home() / ".cache" / "spatia" / "tensorrt")
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"dit-{cache_key(cfg, inputs, precision)}.ep"
    if path.exists():
        engine = torch_tensorrt.load(str(path)).module()
    else:
        wrapped = _RefsControlWrapper(dit.half().cuda()).eval()
        engine = torch_tensorrt.compile(wrapped, ir="dynamo", inputs=list(inputs), enabled_precisions={torch.float16})
        torch_tensorrt.save(engine, str(path), inputs=list(inputs))
    return TensorRTDiT(engine, dit, [None if a is None else list(a.shape) for a in inputs])
