"""Load weights into `SpatiaDiT` / `VideoVAE`: the official release (Wan2.2-TI2V-5B DiT and VAE, the Spatia
control-branch safetensors, the Spatia LoRA merged on load) and this project's own checkpoints.

Official names differ from ours in a few readable places; the tables below are the whole mapping (DiT:
`DIT_RULES`, applied in order as regex substitutions; VAE: `vae_official_to_ours`, which also needs the config to
tell residual blocks from the resampler in Wan's `downsamples.N.downsamples.M` lists). Every load is strict: a
missing, unexpected or mis-shaped tensor raises `WeightsError` naming the keys; a missing file raises
FileNotFoundError naming the path and what was expected there.

API:
    dit, vae = load_official(cfg, dit="Wan2.2-TI2V-5B/", vae="Wan2.2_VAE.pth", control="control.safetensors",
                             lora="lora.safetensors", device="cuda", dtype=torch.bfloat16)
    dit, vae = load_pretrained(path)            # a save_checkpoint folder (this project) -> its networks
    dit_official_to_ours(sd) / dit_ours_to_official(sd) / vae_official_to_ours(sd, cfg) / vae_ours_to_official(sd, cfg)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
import torch.nn as nn

from engine.model.checkpoint import WeightsError, load_checkpoint, load_state_dict_strict
from engine.model.configs import ModelConfig

# Official Wan2.2 / VACE DiT key -> ours, as (pattern, replacement) applied in order.
DIT_RULES: list[tuple[str, str]] = [
    (r"^patch_embedding\.", "patch_embed."),
    (r"^text_embedding\.0\.", "text_embed.fc1."),
    (r"^text_embedding\.2\.", "text_embed.fc2."),
    (r"^time_embedding\.0\.", "time_embed.fc1."),
    (r"^time_embedding\.2\.", "time_embed.fc2."),
    (r"^time_projection\.1\.", "time_proj."),
    (r"^head\.head\.", "head.proj."),
    (r"^vace_patch_embedding\.", "control_embed."),
    (r"^vace_blocks\.(\d+)\.", r"control_blocks.\1."),
    (r"^(blocks|control_blocks)\.(\d+)\.norm3\.", r"\1.\2.norm_cross."),
    (r"^(blocks|control_blocks)\.(\d+)\.ffn\.0\.", r"\1.\2.ffn.fc1."),
    (r"^(blocks|control_blocks)\.(\d+)\.ffn\.2\.", r"\1.\2.ffn.fc2."),
]
# Ours -> official (the inverse table, for export and for checking the mapping both ways).
DIT_RULES_INVERSE: list[tuple[str, str]] = [
    (r"^patch_embed\.", "patch_embedding."),
    (r"^text_embed\.fc1\.", "text_embedding.0."),
    (r"^text_embed\.fc2\.", "text_embedding.2."),
    (r"^time_embed\.fc1\.", "time_embedding.0."),
    (r"^time_embed\.fc2\.", "time_embedding.2."),
    (r"^time_proj\.", "time_projection.1."),
    (r"^head\.proj\.", "head.head."),
    (r"^control_embed\.", "vace_patch_embedding."),
    (r"^(blocks|control_blocks)\.(\d+)\.norm_cross\.", r"\1.\2.norm3."),
    (r"^(blocks|control_blocks)\.(\d+)\.ffn\.fc1\.", r"\1.\2.ffn.0."),
    (r"^(blocks|control_blocks)\.(\d+)\.ffn\.fc2\.", r"\1.\2.ffn.2."),
    (r"^control_blocks\.(\d+)\.", r"vace_blocks.\1."),
]
# Prefixes some exporters put in front of every key.
KNOWN_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.", "module.", "dit.", "transformer.")


def _apply(rules: list[tuple[str, str]], key: str) -> str:
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def strip_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a prefix shared by every key (e.g. `diffusion_model.`)."""
    for prefix in KNOWN_PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            return {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def dit_official_to_ours(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {_apply(DIT_RULES, k): v for k, v in strip_prefix(sd).items()}


def dit_ours_to_official(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {_apply(DIT_RULES_INVERSE, k): v for k, v in sd.items()}


# --------------------------------------------------------------------------------------------- VAE names
_VAE_BLOCK = [(r"\.residual\.0\.", ".norm1."), (r"\.residual\.2\.", ".conv1."), (r"\.residual\.3\.", ".norm2."),
              (r"\.residual\.6\.", ".conv2.")]  # fmt: skip
_VAE_BLOCK_INV = [(r"\.norm1\.", ".residual.0."), (r"\.conv1\.", ".residual.2."), (r"\.norm2\.", ".residual.3."),
                  (r"\.conv2\.", ".residual.6.")]  # fmt: skip


def _blocks_per_level(cfg: ModelConfig, part: str) -> int:
    return cfg.vae_num_res_blocks + (1 if part == "decoder" else 0)


def vae_official_to_ours(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    out = {}
    for key, v in strip_prefix(sd).items():
        k = re.sub(r"^conv1\.", "to_moments.", key)
        k = re.sub(r"^conv2\.", "from_latent.", k)
        k = re.sub(r"^(encoder|decoder)\.head\.0\.", r"\1.head_norm.", k)
        k = re.sub(r"^(encoder|decoder)\.head\.2\.", r"\1.head_conv.", k)
        m = re.match(r"^(encoder|decoder)\.(downsamples|upsamples)\.(\d+)\.(?:downsamples|upsamples)\.(\d+)\.(.*)$", k)
        if m:
            part, kind, level, idx, rest = m.groups()
            if int(idx) < _blocks_per_level(cfg, part):
                k = f"{part}.{kind}.{level}.blocks.{idx}.{rest}"
            else:
                rest = re.sub(r"^resample\.1\.", "spatial_conv.", rest)  # Wan: Sequential(pad/upsample, conv)
                k = f"{part}.{kind}.{level}.resample.{rest}"
        if re.match(r"^(encoder|decoder)\.(middle\.[02]|(down|up)samples\.\d+\.blocks\.\d+)\.", k):
            k = _apply(_VAE_BLOCK, k)
        out[k] = v
    return out


def vae_ours_to_official(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    out = {}
    for key, v in sd.items():
        k = key
        if re.match(r"^(encoder|decoder)\.(middle\.[02]|(down|up)samples\.\d+\.blocks\.\d+)\.", k):
            prefix = re.match(r"^(.*?\.(?:middle\.[02]|blocks\.\d+))(\..*)$", k)
            k = prefix.group(1) + _apply(_VAE_BLOCK_INV, prefix.group(2))
        m = re.match(r"^(encoder|decoder)\.(downsamples|upsamples)\.(\d+)\.(blocks\.(\d+)|resample)\.(.*)$", k)
        if m:
            part, kind, level, which, idx, rest = m.groups()
            if which == "resample":
                idx = str(_blocks_per_level(cfg, part))
                rest = re.sub(r"^spatial_conv\.", "resample.1.", rest)
            k = f"{part}.{kind}.{level}.{kind}.{idx}.{rest}"
        k = re.sub(r"^(encoder|decoder)\.head_norm\.", r"\1.head.0.", k)
        k = re.sub(r"^(encoder|decoder)\.head_conv\.", r"\1.head.2.", k)
        k = re.sub(r"^to_moments\.", "conv1.", k)
        k = re.sub(r"^from_latent\.", "conv2.", k)
        out[k] = v
    return out


# --------------------------------------------------------------------------------------------- file reading
def _need(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def read_tensors(path: str | Path, what: str, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors file, a folder of them (sharded, with or without an index), or a .pth/.pt.

    .pth files are read with torch.load(weights_only=True); a file that needs arbitrary unpickling is refused
    unless allow_pickle=True (only for files you trust)."""
    from safetensors.torch import load_file

    path = _need(path, what)
    if path.is_dir():
        index = sorted(path.glob("*.safetensors.index.json"))
        if index:
            files = sorted({path / f for f in json.loads(index[0].read_text())["weight_map"].values()})
        else:
            files = sorted(path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{what} not found: no .safetensors files in {path}")
        sd: dict[str, torch.Tensor] = {}
        for f in files:
            sd.update(load_file(str(_need(f, f"{what} shard"))))
        return sd
    if path.suffix == ".safetensors":
        return load_file(str(path))
    if path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # noqa: BLE001 - any unpickling failure gets the same advice
            if not allow_pickle:
                raise ValueError(
                    f"{what} {path} cannot be read with torch.load(weights_only=True) ({err}); convert it to "
                    "safetensors, or pass allow_pickle=True if you trust the file"
                ) from err
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        return dict(obj)
    raise ValueError(f"{what} {path}: unsupported file type {path.suffix!r} (use .safetensors or .pth)")


# --------------------------------------------------------------------------------------------- LoRA files
_LORA_PAIRS = (
    (".lora_A.weight", ".lora_B.weight"),
    (".lora_A.default.weight", ".lora_B.default.weight"),
    (".lora_down.weight", ".lora_up.weight"),
    (".lora.down.weight", ".lora.up.weight"),
)


def lora_factors(sd: dict[str, torch.Tensor], multiplier: float = 1.0) -> dict[str, tuple]:
    """Official LoRA tensors -> {our Linear name: (A [r, in], B [out, r], scale)}.

    Understands PEFT/diffusers (`lora_A`/`lora_B`) and kohya (`lora_down`/`lora_up` with `.alpha`) names; the
    scale is alpha / rank when an alpha is stored, else 1 (PEFT's alpha = rank)."""
    sd = strip_prefix(sd)
    factors, used = {}, set()
    for key in sd:
        for down, up in _LORA_PAIRS:
            if key.endswith(down):
                base = key[: -len(down)]
                if base + up not in sd:
                    raise WeightsError(f"LoRA file has {key} but not {base + up}")
                a, b = sd[key], sd[base + up]
                alpha = sd.get(base + ".alpha")
                scale = (float(alpha) / a.shape[0]) if alpha is not None else 1.0
                name = _apply(DIT_RULES, base + ".weight")[: -len(".weight")]
                factors[name] = (a, b, scale * multiplier)
                used.update({key, base + up, base + ".alpha"})
    unused = sorted(set(sd) - used)
    if unused:
        raise WeightsError(f"LoRA file has {len(unused)} tensors that are not LoRA factor pairs: {unused[:8]}")
    if not factors:
        raise WeightsError("LoRA file holds no LoRA factors (expected *.lora_A/lora_B or lora_down/lora_up keys)")
    return factors


# --------------------------------------------------------------------------------------------- loading
def load_official(
    cfg: ModelConfig,
    dit: str | Path | None = None,
    vae: str | Path | None = None,
    control: str | Path | None = None,
    lora: str | Path | None = None,
    lora_multiplier: float = 1.0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    allow_pickle: bool = False,
) -> tuple[nn.Module | None, nn.Module | None]:
    """Build `SpatiaDiT(cfg)` / `VideoVAE(cfg)` from the official files (each part optional: None skips it).

    The DiT needs the base weights (`dit`) and, when cfg has control layers, the control branch (`control`); the
    LoRA, when given, is merged into the main blocks' weights on load."""
    from engine.model.dit import SpatiaDiT
    from engine.model.lora import merge_lora_weights
    from engine.model.vae import VideoVAE

    dit_model = vae_model = None
    if dit is not None:
        sd = dit_official_to_ours(read_tensors(dit, "DiT weights (Wan2.2-TI2V-5B safetensors)", allow_pickle))
        if cfg.control_layers:
            if control is None:
                raise ValueError("the model has control layers: pass control= (the control-branch safetensors)")
            ctl = dit_official_to_ours(read_tensors(control, "control-branch weights", allow_pickle))
            clash = sorted(set(sd) & set(ctl))
            if clash:
                raise WeightsError(f"control-branch file repeats base DiT keys: {clash[:8]}")
            sd.update(ctl)
        with torch.device("meta"):
            dit_model = SpatiaDiT(cfg)
        load_state_dict_strict(dit_model, sd, f"{dit} + {control}", assign=True)
        if lora is not None:
            merge_lora_weights(dit_model, lora_factors(read_tensors(lora, "LoRA weights"), lora_multiplier))
        dit_model = dit_model.to(device=device, dtype=dtype).eval()
    if vae is not None:
        sd = vae_official_to_ours(read_tensors(vae, "VAE weights (Wan2.2_VAE.pth)", allow_pickle), cfg)
        with torch.device("meta"):
            vae_model = VideoVAE(cfg)
        load_state_dict_strict(vae_model, sd, str(vae), assign=True)
        vae_model = vae_model.to(device=device, dtype=dtype).eval()
    return dit_model, vae_model


def load_pretrained(path: str | Path, device="cpu", dtype=None) -> tuple[nn.Module | None, nn.Module | None]:
    """(dit, vae) from this project's checkpoint folder (see engine.model.checkpoint)."""
    ckpt = load_checkpoint(_need(path, "model checkpoint folder"), device=device, dtype=dtype)
    return ckpt.dit, ckpt.vae
