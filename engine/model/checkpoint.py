"""This project's own model checkpoints: a folder with `config.json` and one safetensors file per network.

    <dir>/config.json       {"format": "spatia-model", "version": 1, "model": ModelConfig.to_dict(),
                             "parts": ["dit", "vae"], "lora": {"rank": r, "alpha": a} | null, "extra": {...}}
    <dir>/dit.safetensors   SpatiaDiT state dict (LoRA factors included when adapters are not merged)
    <dir>/vae.safetensors   VideoVAE state dict
    <dir>/control.safetensors  optional: ControlEncoder state dict (the VAE's control encoding, distilled)

Loading is strict: a missing, unexpected or mis-shaped tensor raises `WeightsError` naming the keys. Tensors are
stored as they are (dtype and bits), so a save/load round trip is bit-exact. `load_state_dict_strict` is shared
with `engine.model.convert`.

API:
    save_checkpoint(path, cfg, dit=None, vae=None, extra=None, control=None) -> Path
    ckpt = load_checkpoint(path, device="cpu", dtype=None, parts=("dit", "vae", "control"))
        -> Checkpoint(cfg, dit, vae, extra, control): a part the folder does not list stays None
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from engine.files import write_text_atomic
from engine.model.configs import ModelConfig

FORMAT, VERSION = "spatia-model", 1
PART_NAMES = ("dit", "vae", "control")


class WeightsError(KeyError):
    """Weights that do not fit a model; the message lists the missing, unexpected and mis-shaped keys."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


def load_state_dict_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str, assign: bool = False):
    """Load `state` into `module`, or raise WeightsError naming every key that does not fit."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{k}: {list(state[k].shape)} in {source}, {list(own[k].shape)} in the model"
        for k in set(own) & set(state)
        if tuple(own[k].shape) != tuple(state[k].shape)
    )
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mismatched)):
            if keys:
                shown = ", ".join(keys[:12]) + (f", ... ({len(keys) - 12} more)" if len(keys) > 12 else "")
                parts.append(f"{len(keys)} {label}: {shown}")
        raise WeightsError(f"weights from {source} do not fit {type(module).__name__}: " + "; ".join(parts))
    module.load_state_dict(state, strict=True, assign=assign)


@dataclass
class Checkpoint:
    cfg: ModelConfig
    dit: nn.Module | None = None
    vae: nn.Module | None = None
    extra: dict = field(default_factory=dict)
    control: nn.Module | None = None


def _lora_info(dit: nn.Module | None) -> dict | None:
    from engine.model.lora import lora_layers

    layers = lora_layers(dit) if dit is not None else {}
    if not layers:
        return None
    first = next(iter(layers.values()))
    targets = sorted({name.split(".", 2)[2] for name in layers})
    return {"rank": first.rank, "alpha": first.alpha, "targets": targets}


def save_checkpoint(
    path: str | Path, cfg: ModelConfig, dit: nn.Module | None = None, vae: nn.Module | None = None, extra=None,
    control: nn.Module | None = None,
) -> Path:
    """Write the folder `path` (created if needed); files are written to temporaries, then renamed."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    parts = {name: m for name, m in (("dit", dit), ("vae", vae), ("control", control)) if m is not None}
    if not parts:
        raise ValueError("save_checkpoint needs at least one of dit, vae, control")
    for name, module in parts.items():
        state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
        tmp = path / f".{name}.safetensors.tmp"
        save_file(state, str(tmp), metadata={"format": FORMAT, "part": name})
        os.replace(tmp, path / f"{name}.safetensors")
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "model": cfg.to_dict(),
        "parts": sorted(parts),
        "lora": _lora_info(dit),
        "extra": extra or {},
    }
    write_text_atomic(path / "config.json", json.dumps(meta, indent=2))
    return path


def read_config(path: str | Path) -> tuple[ModelConfig, dict]:
    """The ModelConfig and the raw metadata of a checkpoint folder."""
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"no checkpoint config at {cfg_file} (expected a folder written by save_checkpoint)")
    meta = json.loads(cfg_file.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{cfg_file} is not a {FORMAT} checkpoint (format={meta.get('format')!r})")
    if meta.get("version", 0) > VERSION:
        raise ValueError(f"{cfg_file} has version {meta['version']}; this code reads up to {VERSION}")
    return ModelConfig.from_dict(meta["model"]), meta


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None, parts=PART_NAMES
) -> Checkpoint:
    """Build the networks from the stored config and load their weights strictly."""
    from engine.model.control_encoder import ControlEncoder
    from engine.model.dit import SpatiaDiT
    from engine.model.lora import inject_lora
    from engine.model.vae import VideoVAE

    path = Path(path)
    cfg, meta = read_config(path)
    unknown = set(parts) - set(PART_NAMES)
    if unknown:
        raise ValueError(f"unknown checkpoint parts {sorted(unknown)}; known: {PART_NAMES}")
    ckpt = Checkpoint(cfg, extra=meta.get("extra", {}))
    for name in parts:
        if name not in meta["parts"]:
            continue
        file = path / f"{name}.safetensors"
        if not file.is_file():
            raise FileNotFoundError(f"checkpoint {path} lists {name} but {file} is missing")
        with torch.device("meta"):
            module = {"dit": SpatiaDiT, "vae": VideoVAE, "control": ControlEncoder}[name](cfg)
        if name == "dit" and meta.get("lora"):
            lora = meta["lora"]
            inject_lora(module, lora["rank"], lora["alpha"], targets=tuple(lora["targets"]))
        try:
            state = load_file(str(file))
        except Exception as e:  # safetensors raises its own error type for truncated or garbled files
            raise ValueError(f"{file} is not a readable safetensors file ({e}); restore or re-export it") from e
        load_state_dict_strict(module, state, str(file), assign=True)
        if dtype is not None:
            module.to(dtype)
        setattr(ckpt, name, module.to(device).eval())
    return ckpt
