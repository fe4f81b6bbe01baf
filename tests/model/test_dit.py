"""The Spatia DiT and its config: shapes per preset, RoPE layout, attention, control branch, training, errors."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import micro

from engine.model.configs import ModelConfig
from engine.model.dit import ContextCache, SpatiaDiT, UMT5TextEncoder
from engine.model.layers import (
    apply_rope,
    apply_rope_reference,
    attention,
    attention_reference,
    rope_angles,
    rope_axis_pairs,
    rope_freqs,
)


def _inputs(cfg, batch=2, k=None, f=None, text=True):
    k = cfg.num_refs if k is None else k
    f = cfg.history_latent_frames + cfg.chunk_latent_frames if f is None else f
    c, h, w = cfg.latent_channels, cfg.latent_height, cfg.latent_width
    x = torch.randn(batch, c, f, h, w)
    t = torch.rand(batch, f)
    t[:, : cfg.history_latent_frames] = 0
    refs = torch.randn(batch, c, k, h, w) if k else None
    control = torch.randn(batch, 2 * c, f, h, w)
    txt = torch.randn(batch, 5, cfg.text_dim) if (text and cfg.text_dim) else None
    return x, t, refs, control, txt


# --------------------------------------------------------------------------------------------- config
def test_presets_and_derived_fields():
    tiny = ModelConfig.from_name("tiny")
    assert (tiny.height, tiny.width, tiny.video_channels, tiny.spatial_compression) == (128, 128, 4, 8)
    assert tiny.tokens_per_frame == 64 and tiny.chunk_frames == 8 and tiny.history_frames == 1
    big = ModelConfig.from_name("spatia-5b")
    assert (big.dim, big.num_layers, big.num_heads, big.ffn_dim, big.head_dim) == (3072, 30, 24, 14336, 128)
    assert big.control_layers == tuple(range(0, 30, 4)) and big.control_in_channels == 96
    assert (big.latent_channels, big.spatial_compression, big.temporal_compression) == (48, 16, 4)
    assert big.history_frames == 9 and big.chunk_frames == 72 and big.clip_frames == 81
    assert big.act == "gelu_tanh" and tiny.act == "gelu"  # Wan's activation where its weights load
    small = ModelConfig.from_name("small")
    assert small.spatial_compression == 8 and small.tokens_per_frame == 256


def test_config_round_trip_and_errors():
    cfg = ModelConfig.from_name("spatia-5b", num_layers=8, control_layers=(0, 4))
    again = ModelConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.max_tokens == cfg.max_tokens
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        ModelConfig.from_name("huge")
    with pytest.raises(ValueError, match="unknown ModelConfig fields: \\['wdith'\\]"):
        ModelConfig.from_name("tiny", wdith=3)
    with pytest.raises(ValueError, match="control_layers"):
        ModelConfig.from_name("tiny", control_layers=(0, 9))
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig.from_name("tiny", height=120)


# --------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("name", ["tiny", "small", "spatia-5b"])
def test_forward_shapes_per_preset(name):
    cfg = micro(name)
    dit = SpatiaDiT(cfg).eval()
    x, t, refs, control, text = _inputs(cfg)
    with torch.no_grad():
        v = dit(x, t, refs=refs, control=control, text=text)
        v0 = dit(x, t)  # no references, no control, no text
    k, f = refs.shape[2], x.shape[2]
    assert v.shape == (2, cfg.latent_channels, k + f, cfg.latent_height, cfg.latent_width)
    assert v0.shape == x.shape
    assert torch.isfinite(v).all()


def test_spatia5b_structure_on_meta_device():
    cfg = ModelConfig.from_name("spatia-5b")
    with torch.device("meta"):
        dit = SpatiaDiT(cfg)
    main = sum(p.numel() for n, p in dit.named_parameters() if not n.startswith("control"))
    control = sum(p.numel() for n, p in dit.named_parameters() if n.startswith("control"))
    assert 4.9e9 < main < 5.1e9  # Wan2.2-TI2V-5B
    assert 1.3e9 < control < 1.5e9  # 8 blocks + projections
    assert len(dit.blocks) == 30 and len(dit.control_blocks) == 8
    assert dit.patch_embed.weight.shape == (3072, 48, 1, 2, 2)
    assert dit.control_embed.weight.shape == (3072, 96, 1, 2, 2)
    assert dit.control_blocks[0].before_proj is not None and dit.control_blocks[1].before_proj is None


def test_scalar_and_per_frame_timesteps_agree():
    cfg = micro("tiny")
    dit = SpatiaDiT(cfg).eval()
    x, _, refs, control, _ = _inputs(cfg, batch=1)
    with torch.no_grad():
        a = dit(x, torch.tensor([0.3]), refs=refs, control=control)
        b = dit(x, torch.full((1, x.shape[2]), 0.3), refs=refs, control=control)
        c = dit(x, torch.tensor([[0.0, 0.3, 0.3]]), refs=refs, control=control)
    torch.testing.assert_close(a, b)
    assert (a - c).abs().max() > 1e-4  # the history frame's timestep matters


# --------------------------------------------------------------------------------------------- RoPE, attention
def test_rope_positions_of_references():
    cfg = micro("tiny")
    dit = SpatiaDiT(cfg)
    k, f, gh, gw = 3, 2, 4, 5
    pos = dit.positions(k, f, gh, gw)
    assert pos.shape == ((k + f) * gh * gw, 3)
    per_frame = pos.view(k + f, gh * gw, 3)
    assert per_frame[:, 0, 0].tolist() == [-3, -2, -1, 0, 1]  # reference i of K at t = -K + i
    assert per_frame[:k, :, 1].min() == gh and per_frame[:k, :, 1].max() == 2 * gh - 1  # rows shifted by gh
    assert per_frame[k:, :, 1].min() == 0 and per_frame[k:, :, 1].max() == gh - 1
    video = {tuple(p) for p in pos[k * gh * gw :].tolist()}
    refs = {tuple(p) for p in pos[: k * gh * gw].tolist()}
    assert not video & refs and len(refs) == k * gh * gw


def test_rope_axis_split_is_wans():
    assert rope_axis_pairs(128) == (22, 21, 21)  # Wan2.2: d - 4*(d//6) for t, 2*(d//6) each for h, w
    assert sum(rope_axis_pairs(64)) == 32


def test_rope_is_relative():
    """Scores after RoPE depend only on the position difference, on each axis."""
    d = 24
    q, k = torch.randn(1, 1, 1, d), torch.randn(1, 1, 1, d)

    def score(pq, pk):
        fq = rope_freqs(rope_angles(torch.tensor([pq]), d, 10000.0))
        fk = rope_freqs(rope_angles(torch.tensor([pk]), d, 10000.0))
        return (apply_rope(q, fq) * apply_rope(k, fk)).sum()

    base = score([0, 0, 0], [-2, 3, 1])
    torch.testing.assert_close(score([5, 4, 7], [3, 7, 8]), base, atol=1e-4, rtol=1e-4)
    assert (score([0, 0, 0], [-2, 4, 1]) - base).abs() > 1e-3


def test_rope_complex_matches_reference():
    x = torch.randn(2, 10, 3, 16)
    angles = rope_angles(torch.randint(-4, 9, (10, 3)), 16, 10000.0)
    torch.testing.assert_close(
        apply_rope(x, rope_freqs(angles)), apply_rope_reference(x, angles.cos(), angles.sin()), atol=1e-5, rtol=1e-5
    )


def test_attention_matches_reference():
    q, k, v = torch.randn(2, 7, 3, 8), torch.randn(2, 9, 3, 8), torch.randn(2, 9, 3, 8)
    torch.testing.assert_close(attention(q, k, v), attention_reference(q, k, v), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attention(q, k, v, backend="math"), attention_reference(q, k, v))
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention(q, k, v, backend="flash9")


# --------------------------------------------------------------------------------------------- control branch
def _flow_loss(dit, cfg, x0, refs, control, gen):
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.sigmoid(torch.randn(x0.shape[0], 1, generator=gen)).expand(-1, x0.shape[2]).clone()
    t[:, : cfg.history_latent_frames] = 0
    tt = t[:, None, :, None, None]
    xt = (1 - tt) * x0 + tt * noise
    v = dit(xt, t, refs=refs, control=control)[:, :, -x0.shape[2] :]
    target = noise - x0
    keep = slice(cfg.history_latent_frames, None)
    return (v[:, :, keep] - target[:, :, keep]).pow(2).mean()


def test_control_branch_silent_at_init_and_active_after_a_step():
    cfg = micro("tiny")
    dit = SpatiaDiT(cfg)
    x, t, refs, control, _ = _inputs(cfg, batch=2)
    other = torch.randn_like(control)
    with torch.no_grad():
        base = dit(x, t, refs=refs)
        assert torch.equal(dit(x, t, refs=refs, control=control), base)
        assert torch.equal(dit(x, t, refs=refs, control=other), base)
    opt = torch.optim.AdamW(dit.parameters(), lr=1e-3)
    _flow_loss(dit, cfg, x, refs, control, torch.Generator().manual_seed(0)).backward()
    opt.step()
    with torch.no_grad():
        a = dit(x, t, refs=refs, control=control)
        b = dit(x, t, refs=refs, control=other)
    k = refs.shape[2]
    assert (a[:, :, k:] - b[:, :, k:]).abs().max() > 1e-4


def test_references_get_no_control_signal():
    # One layer, control paired with it: the hint is added right before the (per-token) head, so any change of
    # the reference outputs could only come from a control signal at reference tokens.
    cfg = micro("tiny", num_layers=1, control_layers=(0,))
    dit = SpatiaDiT(cfg).eval()
    with torch.no_grad():
        dit.control_blocks[0].after_proj.weight.normal_(0, 0.2)
    x, t, refs, control, _ = _inputs(cfg, batch=1)
    with torch.no_grad():
        a = dit(x, t, refs=refs, control=control)
        b = dit(x, t, refs=refs, control=torch.randn_like(control))
    k = refs.shape[2]
    assert torch.equal(a[:, :, :k], b[:, :, :k])
    assert (a[:, :, k:] - b[:, :, k:]).abs().max() > 1e-3


def test_control_scale_zero_switches_the_branch_off():
    cfg = micro("tiny")
    dit = SpatiaDiT(cfg).eval()
    with torch.no_grad():
        for blk in dit.control_blocks:
            blk.after_proj.weight.normal_(0, 0.2)
    x, t, refs, control, _ = _inputs(cfg, batch=1)
    with torch.no_grad():
        off = dit(x, t, refs=refs, control=control, control_scale=0.0)
        none = dit(x, t, refs=refs)
        on = dit(x, t, refs=refs, control=control)
    torch.testing.assert_close(off, none)
    assert (on - none).abs().max() > 1e-3


# --------------------------------------------------------------------------------------------- training
def _overfit(steps: int, batch: int, fresh_noise: bool, lr: float = 3e-3) -> tuple[float, float]:
    """Train a small DiT on one clip; return (mean loss of the first 10 steps, of the last 10).

    fresh_noise=False reuses one set of (t, noise) draws (memorisation, fast); True draws new ones every step
    (the real flow-matching objective on a single clip)."""
    cfg = micro("tiny", dim=64, num_layers=2, control_layers=(0,))
    dit = SpatiaDiT(cfg)
    g = torch.Generator().manual_seed(0)
    c, h, w = cfg.latent_channels, cfg.latent_height, cfg.latent_width
    f = cfg.history_latent_frames + cfg.chunk_latent_frames
    x0 = torch.randn(1, c, f, h, w, generator=g).expand(batch, -1, -1, -1, -1)  # one clip
    refs = torch.randn(1, c, cfg.num_refs, h, w, generator=g).expand(batch, -1, -1, -1, -1)
    control = torch.randn(1, 2 * c, f, h, w, generator=g).expand(batch, -1, -1, -1, -1)
    opt = torch.optim.AdamW(dit.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = _flow_loss(dit, cfg, x0, refs, control, g if fresh_noise else torch.Generator().manual_seed(1))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return sum(losses[:10]) / 10, sum(losses[-10:]) / 10


def test_tiny_model_fits_one_clip_with_fixed_draws():
    first, last = _overfit(60, batch=2, fresh_noise=False)
    assert last < first / 10, (first, last)


@pytest.mark.slow
def test_tiny_model_overfits_one_clip():
    first, last = _overfit(300, batch=8, fresh_noise=True)
    assert last < first / 10, (first, last)


# --------------------------------------------------------------------------------------------- errors
def _perturbed_dit(cfg):
    torch.manual_seed(0)
    dit = SpatiaDiT(cfg).eval()
    for p in dit.parameters():  # the zero-initialised control projections too, so every path matters
        p.data += 0.02 * torch.randn_like(p)
    return dit


def test_context_layout_isolates_the_context_and_caches_it():
    cfg = micro("tiny", attention_layout="context")
    dit = _perturbed_dit(cfg)
    c, h, w = cfg.latent_channels, cfg.latent_height, cfg.latent_width
    x, refs, control = torch.randn(2, c, 3, h, w), torch.randn(2, c, 2, h, w), torch.randn(2, 2 * c, 3, h, w)
    t = torch.tensor([[0.0, 0.7, 0.7], [0.0, 0.2, 0.2]])
    x2 = x.clone()
    x2[:, :, 1:] = torch.randn_like(x2[:, :, 1:])  # new targets, same context
    with torch.no_grad():
        one = dit(x, t, refs=refs, control=control)
        two = dit(x2, t, refs=refs, control=control)
        # references (2 frames) and history (1) never see the targets; the targets do see the context
        torch.testing.assert_close(one[:, :, :3], two[:, :, :3], atol=0, rtol=0)
        assert not torch.allclose(one[:, :, 3:], two[:, :, 3:])
        cache = ContextCache()
        filled = dit(x, t, refs=refs, control=control, cache=cache)
        torch.testing.assert_close(filled, one, atol=1e-6, rtol=0)
        assert cache.filled and (cache.refs, cache.history) == (2, 1)
        for step_x, full in ((x, one), (x2, two)):  # target-only passes reuse the cache
            v = dit(step_x[:, :, 1:], t[:, 1:], control=control[:, :, 1:], cache=cache)
            assert v.shape == (2, c, 2, h, w)
            torch.testing.assert_close(v, full[:, :, 3:], atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="refs are in the ContextCache"):
            dit(x[:, :, 1:], t[:, 1:], refs=refs, control=control[:, :, 1:], cache=cache)


def test_layered_layout_caches_the_references_across_histories():
    cfg = micro("tiny", attention_layout="layered")
    dit = _perturbed_dit(cfg)
    c, h, w = cfg.latent_channels, cfg.latent_height, cfg.latent_width
    x, refs, control = torch.randn(1, c, 3, h, w), torch.randn(1, c, 2, h, w), torch.randn(1, 2 * c, 3, h, w)
    t = torch.tensor([[0.0, 0.7, 0.7]])
    x2, control2 = torch.randn_like(x), torch.randn_like(control)  # a later chunk: new history and targets
    with torch.no_grad():
        first = ContextCache()
        one = dit(x, t, refs=refs, control=control, cache=first)
        two = dit(x2, t, refs=refs, control=control2)
        # the references see neither the history nor the targets; the history sees the references
        torch.testing.assert_close(one[:, :, :2], two[:, :, :2], atol=0, rtol=0)
        assert not torch.allclose(one[:, :, 2:3], two[:, :, 2:3])
        refs_only = first.references()
        assert refs_only.references_only and not refs_only.filled and refs_only.tokens == 2 * cfg.tokens_per_frame
        later = refs_only.fork()
        v = dit(x2, t, control=control2, cache=later)  # no reference token computed
        assert v.shape == (1, c, 3, h, w)
        torch.testing.assert_close(v, two[:, :, 2:], atol=1e-5, rtol=1e-5)
        assert later.filled and (later.refs, later.history) == (2, 1) and refs_only.references_only
        step = dit(x2[:, :, 1:], t[:, 1:], control=control2[:, :, 1:], cache=later)  # then targets alone
        torch.testing.assert_close(step, two[:, :, 3:], atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="refs are in the ContextCache"):
            dit(x2, t, refs=refs, control=control2, cache=refs_only.fork())
    context = micro("tiny", attention_layout="context")
    with pytest.raises(ValueError, match="references-only ContextCache needs attention_layout 'layered'"):
        SpatiaDiT(context)(x2, t, control=control2, cache=refs_only.fork())


def test_full_layout_lets_the_context_see_the_targets():
    cfg = micro("tiny", attention_layout="full")
    dit = _perturbed_dit(cfg)
    c, h, w = cfg.latent_channels, cfg.latent_height, cfg.latent_width
    x, refs = torch.randn(1, c, 3, h, w), torch.randn(1, c, 2, h, w)
    x2 = x.clone()
    x2[:, :, 1:] += 1.0
    with torch.no_grad():
        assert not torch.allclose(dit(x, torch.zeros(1), refs=refs)[:, :, :3], dit(x2, torch.zeros(1), refs=refs)[:, :, :3])
        with pytest.raises(ValueError, match="needs attention_layout 'context'"):
            dit(x, torch.zeros(1), refs=refs, cache=ContextCache())


def test_bad_inputs_are_named():
    cfg = micro("tiny")
    dit = SpatiaDiT(cfg)
    x, t, refs, control, _ = _inputs(cfg, batch=1)
    with pytest.raises(ValueError, match="x must be"):
        dit(x[:, :3], t)
    with pytest.raises(ValueError, match="at most 2"):
        dit(x, t, refs=torch.cat([refs, refs], dim=2))
    with pytest.raises(ValueError, match="control must be"):
        dit(x, t, control=control[:, :5])
    with pytest.raises(ValueError, match="no text cross-attention"):
        dit(x, t, text=torch.randn(1, 4, 8))
    with pytest.raises(ValueError, match="t must be"):
        dit(x, torch.rand(1, 7))


def test_text_encoder_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="umt5-here"):
        UMT5TextEncoder(tmp_path / "umt5-here")


def test_text_changes_the_output():
    cfg = micro("spatia-5b")
    dit = SpatiaDiT(cfg).eval()
    x, t, refs, control, text = _inputs(cfg, batch=1)
    with torch.no_grad():
        a = dit(x, t, refs=refs, text=text)
        b = dit(x, t, refs=refs, text=torch.randn_like(text))
    assert (a - b).abs().max() > 1e-4
    assert math.isfinite(a.abs().sum().item())
