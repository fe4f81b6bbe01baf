"""LoRA on the DiT's main blocks: no-op at start, merged == unmerged, external factors, trainable parameters."""

from __future__ import annotations

import pytest
import torch
from conftest import micro

from engine.model.dit import SpatiaDiT
from engine.model.lora import (
    LoRALinear,
    inject_lora,
    lora_layers,
    lora_parameters,
    lora_state_dict,
    merge_lora,
    merge_lora_weights,
)


def _model_and_inputs():
    cfg = micro("spatia-5b")  # has text cross-attention, so every default target exists
    dit = SpatiaDiT(cfg).eval()
    c, h, w = cfg.latent_channels, cfg.latent_height, cfg.latent_width
    x = torch.randn(1, c, 3, h, w)
    args = (x, torch.tensor([[0.0, 0.4, 0.4]]))
    kwargs = dict(refs=torch.randn(1, c, 2, h, w), control=torch.randn(1, 2 * c, 3, h, w),
                  text=torch.randn(1, 5, cfg.text_dim))  # fmt: skip
    return dit, args, kwargs


def test_inject_wraps_main_blocks_only_and_starts_as_a_no_op():
    dit, args, kwargs = _model_and_inputs()
    keys_before = set(dit.state_dict())
    with torch.no_grad():
        before = dit(*args, **kwargs)
    names = inject_lora(dit, rank=4, alpha=8)
    assert len(names) == len(dit.blocks) * 10 and all(n.startswith("blocks.") for n in names)
    assert not any(isinstance(m, LoRALinear) for m in dit.control_blocks.modules())
    assert keys_before <= set(dit.state_dict())  # base weights keep their names
    with torch.no_grad():
        torch.testing.assert_close(dit(*args, **kwargs), before)
    with pytest.raises(ValueError, match="already has a LoRA"):
        inject_lora(dit, rank=4)


def test_merged_equals_unmerged():
    dit, args, kwargs = _model_and_inputs()
    inject_lora(dit, rank=4, alpha=6)
    with torch.no_grad():
        for p in lora_parameters(dit):
            p.normal_(0, 0.05)
        unmerged = dit(*args, **kwargs)
        base = dit.blocks[0].self_attn.q.weight.clone()
        assert merge_lora(dit) == len(dit.blocks) * 10
        merged = dit(*args, **kwargs)
    assert not lora_layers(dit)
    assert not torch.equal(dit.blocks[0].self_attn.q.weight, base)
    torch.testing.assert_close(merged, unmerged, atol=1e-4, rtol=1e-4)


def test_merge_external_factors_equals_adapter():
    dit, args, kwargs = _model_and_inputs()
    inject_lora(dit, rank=3, alpha=3, targets=("self_attn.q", "ffn.fc2"))
    with torch.no_grad():
        for p in lora_parameters(dit):
            p.normal_(0, 0.05)
        adapted = dit(*args, **kwargs)
    sd = lora_state_dict(dit)
    factors = {name[: -len(".lora_A")]: (sd[name], sd[name[: -len("A")] + "B"], 1.0)
               for name in sd if name.endswith(".lora_A")}  # fmt: skip
    assert len(factors) == 2 * len(dit.blocks)
    fresh = SpatiaDiT(dit.cfg).eval()
    state = {k: v for k, v in dit.state_dict().items() if "lora_" not in k}
    fresh.load_state_dict(state)
    merge_lora_weights(fresh, factors)
    with torch.no_grad():
        torch.testing.assert_close(fresh(*args, **kwargs), adapted, atol=1e-4, rtol=1e-4)


def test_external_factor_errors_name_the_layer():
    dit, _, _ = _model_and_inputs()
    a, b = torch.zeros(2, dit.cfg.dim), torch.zeros(dit.cfg.dim, 2)
    with pytest.raises(KeyError, match="blocks.99.self_attn.q"):
        merge_lora_weights(dit, {"blocks.99.self_attn.q": (a, b, 1.0)})
    with pytest.raises(ValueError, match="blocks.0.ffn.fc1"):
        merge_lora_weights(dit, {"blocks.0.ffn.fc1": (a, b, 1.0)})


def test_only_adapters_train():
    dit, args, kwargs = _model_and_inputs()
    dit.requires_grad_(False)
    inject_lora(dit, rank=2)
    params = lora_parameters(dit)
    assert all(p.requires_grad for p in params)
    opt = torch.optim.SGD(params, lr=0.1)
    loss = dit(*args, **kwargs).pow(2).mean()
    loss.backward()
    assert all(p.grad is not None for p in params[1::2])  # B gets gradients first (A's are zero while B = 0)
    opt.step()
    assert any(p.abs().sum() > 0 for p in params[1::2])
    assert dit.blocks[0].self_attn.q.weight.grad is None
