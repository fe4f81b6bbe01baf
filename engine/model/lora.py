"""LoRA on the DiT's main blocks: low-rank adapters for fine-tuning (the paper's stage 2) and merging on load.

A `LoRALinear` *is* an `nn.Linear` (same `weight`/`bias` names, so checkpoints keep their keys) with two extra
factors: y = x W^T + b + (alpha / r) * x A^T B^T, A [r, in] random, B [out, r] zero (a no-op at start).
`merge_lora` folds every adapter into its weight and turns the layers back into plain Linears, so a merged model
runs at the base model's speed; merged and unmerged forwards agree (tested).

API:
    inject_lora(dit, rank=64, alpha=64.0, targets=DEFAULT_TARGETS)   -> names of wrapped layers (main blocks only)
    lora_parameters(dit) / lora_state_dict(dit)                      -> the trainable factors
    merge_lora(dit)                                                  -> fold and unwrap
    merge_lora_weights(dit, {layer_name: (A, B, scale)})             -> merge external factors (official release)
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

# Linear layers of each main block that get an adapter (names inside `blocks.N`).
DEFAULT_TARGETS = (
    "self_attn.q",
    "self_attn.k",
    "self_attn.v",
    "self_attn.o",
    "cross_attn.q",
    "cross_attn.k",
    "cross_attn.v",
    "cross_attn.o",
    "ffn.fc1",
    "ffn.fc2",
)


class LoRALinear(nn.Linear):
    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1; got {rank}")
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias  # shared, not copied
        self.rank, self.alpha = rank, float(alpha)
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scale

    def merged(self) -> nn.Linear:
        """A plain Linear with the adapter folded into its weight."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        lin.to(device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            delta = (self.lora_B.float() @ self.lora_A.float()) * self.scale
            lin.weight.copy_((self.weight.float() + delta).to(self.weight.dtype))
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        lin.weight.requires_grad_(self.weight.requires_grad)
        return lin


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def inject_lora(
    model: nn.Module, rank: int, alpha: float | None = None, targets=DEFAULT_TARGETS, blocks: str = "blocks"
) -> list[str]:
    """Wrap the target Linears of every `blocks.N` (the main blocks; control blocks untouched) in LoRALinear."""
    alpha = float(rank if alpha is None else alpha)
    container = model.get_submodule(blocks)
    wrapped = []
    for i, block in enumerate(container):
        for target in targets:
            try:
                layer = block.get_submodule(target)
            except AttributeError:
                continue  # e.g. cross_attn in a model without text
            if isinstance(layer, LoRALinear):
                raise ValueError(f"{blocks}.{i}.{target} already has a LoRA adapter")
            if isinstance(layer, nn.Linear):
                _set_submodule(block, target, LoRALinear(layer, rank, alpha))
                wrapped.append(f"{blocks}.{i}.{target}")
    if not wrapped:
        raise ValueError(f"no Linear layer named {targets} found under {blocks!r}")
    return wrapped


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for m in lora_layers(model).values() for p in (m.lora_A, m.lora_B)]


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """{"<layer>.lora_A": [r, in], "<layer>.lora_B": [out, r]} for every adapter (save with safetensors)."""
    out = {}
    for name, m in lora_layers(model).items():
        out[f"{name}.lora_A"] = m.lora_A.detach()
        out[f"{name}.lora_B"] = m.lora_B.detach()
    return out


def merge_lora(model: nn.Module) -> int:
    """Fold every adapter into its weight and restore plain Linears; returns how many were merged."""
    layers = lora_layers(model)
    for name, m in layers.items():
        _set_submodule(model, name, m.merged())
    return len(layers)


@torch.no_grad()
def merge_lora_weights(model: nn.Module, factors: dict[str, tuple[torch.Tensor, torch.Tensor, float]]) -> None:
    """W += scale * B @ A for each {linear_name: (A [r, in], B [out, r], scale)}; names/shapes checked first."""
    modules = dict(model.named_modules())
    missing = sorted(n for n in factors if not isinstance(modules.get(n), nn.Linear))
    if missing:
        raise KeyError(f"LoRA targets with no Linear layer in the model ({len(missing)}): {missing[:8]}")
    bad = []
    for name, (a, b, _) in factors.items():
        lin = modules[name]
        if a.shape[1] != lin.in_features or b.shape[0] != lin.out_features or a.shape[0] != b.shape[1]:
            bad.append(f"{name}: A {list(a.shape)} B {list(b.shape)} vs Linear [{lin.out_features}, {lin.in_features}]")
    if bad:
        raise ValueError(f"LoRA factor shapes do not fit ({len(bad)}): {bad[:8]}")
    for name, (a, b, scale) in factors.items():
        w = modules[name].weight
        w.copy_((w.float() + scale * (b.float().to(w.device) @ a.float().to(w.device))).to(w.dtype))
