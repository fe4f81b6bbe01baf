"""The Spatia diffusion transformer: Wan2.2-style DiT over [references | history | target] latent tokens, plus a
VACE-style control branch fed by the scene video and its coverage mask.

Data flow of one forward (B batch, C latent channels, K references, F = history + target latent frames):
  latents [B, C, F, h, w] and references [B, C, K, h, w] -> one video [B, C, K+F, h, w] -> 3D patches -> tokens
  [B, (K+F)*gh*gw, D]; 3D RoPE positions (t, h, w): video frame j at t = j, reference i at t = -K + i with its rows
  shifted by gh (so reference tokens never share a position with the video grid); adaLN modulation from per-frame
  timesteps (references and history are clean: t = 0); full bidirectional self-attention (or, with
  attention_layout "context", context tokens attending only to the context, cacheable across steps; with "layered",
  references also attending only to references, cacheable across chunks that keep them); optional text
  cross-attention; the control branch: control tokens (patchified scene latents ++ mask latents, 2C channels, for
  the F video frames; zeros at reference frames) go through `len(control_layers)` blocks, block 0 adding a
  projection of them to the main hidden state, and each block's zero-initialised output projection is added to the
  main stream after its paired layer, times `control_scale`, at history+target tokens only. Output: velocity for
  every frame [B, C, K+F, h, w] (the loss and the sampler use only the target frames).

Parameter names follow Wan2.2 where they read well; `engine.model.convert` maps the official names.

API:
    dit = SpatiaDiT(cfg)
    v = dit(x, t, refs=None, control=None, text=None, control_scale=None, history_frames=None, cache=None)
        x [B, C, F, h, w] history + target latents; t [B] (all frames) or [B, F] sigmas in [0, 1] per frame
        (0 for history); refs [B, C, K, h, w] clean reference latents, K <= cfg.num_refs (None: K = 0);
        control [B, 2C, F, h, w] scene-video latents ++ coverage-mask latents (None: control branch off);
        text [B, L, cfg.text_dim] text embeddings (None: no cross-attention)  ->  v [B, C, K + F, h, w]
        history_frames: leading frames of x that are context (default cfg.history_latent_frames)
    With attention_layout "context" the references and history attend only to each other; a ContextCache
    passed with them is filled, and later calls pass only the target frames (x, t, control) with the filled
    cache and get v [B, C, F_target, h, w], equal to the one-pass result at those frames. With "layered" the
    references attend only to each other, and `cache.references()` can be passed to a later chunk with the same
    references: refs=None, x = [history | target], v [B, C, F, h, w] (the cache is then filled with the history).
    enc = UMT5TextEncoder(path); text = enc(["a prompt"])   (spatia-5b; needs `transformers` and local weights)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.model.configs import CACHED_LAYOUTS, ModelConfig
from engine.model.layers import (
    FP32LayerNorm,
    RMSNorm,
    apply_rope,
    attention,
    dense,
    rope_freqs,
    modulate,
    rope_angles,
    timestep_features,
)


# --------------------------------------------------------------------------------------------- embeddings
class MLP(nn.Module):
    """fc1 -> activation (gelu, gelu_tanh or silu) -> fc2 (the FFN, and the text/time embedders)."""

    def __init__(self, din: int, dhidden: int, dout: int, act: str):
        super().__init__()
        self.fc1 = nn.Linear(din, dhidden)
        self.fc2 = nn.Linear(dhidden, dout)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if self.act == "silu":
            return self.fc2(F.silu(h))
        return self.fc2(F.gelu(h, approximate="tanh" if self.act == "gelu_tanh" else "none"))


def patchify(x: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """[B, C, F, H, W] -> [B, (F/pt)*(H/ph)*(W/pw), C*pt*ph*pw], patch features in Conv3d weight order (c, t, h, w)."""
    b, c, f, h, w = x.shape
    pt, ph, pw = patch
    x = x.view(b, c, f // pt, pt, h // ph, ph, w // pw, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)
    return x.reshape(b, (f // pt) * (h // ph) * (w // pw), c * pt * ph * pw)


def unpatchify(x: torch.Tensor, patch: tuple[int, int, int], grid: tuple[int, int, int], c: int) -> torch.Tensor:
    """[B, L, pt*ph*pw*C] (Wan's head order: c fastest) -> [B, C, F, H, W]."""
    b = x.shape[0]
    (pt, ph, pw), (gf, gh, gw) = patch, grid
    x = x.view(b, gf, gh, gw, pt, ph, pw, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, c, gf * pt, gh * ph, gw * pw)


# --------------------------------------------------------------------------------------------- attention
class TokenGroups(NamedTuple):
    """Who attends to whom in one forward, in positions of the whole token layout [references | history | target].

    Query tokens form consecutive groups; a token of the group ending at `ends[i]` attends to every key before
    `ends[i]`. Layout "context": (context end, total): the context sees itself, targets see everything. Layout
    "layered": (references end, context end, total): references see only references, so their keys/values depend
    on the references alone and survive a change of history. `prefix` tokens come from a ContextCache (their
    keys/values, not computed in this forward); the first `fill` tokens' keys/values are stored in it."""

    ends: tuple[int, ...]  # increasing group ends, each beyond prefix; the last is the total token count
    prefix: int = 0
    fill: int = 0


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, eps: float):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, freqs: torch.Tensor, backend: str, groups: "TokenGroups | None" = None,
                slot: dict | None = None) -> torch.Tensor:
        """x [B, L, D]: the tokens after `groups.prefix` cached ones (None: no cache, full attention).
        groups: each query token attends to the keys before the end of its group (see TokenGroups); slot: this
        layer's entry of a ContextCache, holding the cached tokens' keys/values [B, prefix, H, Dh], extended to
        the first `groups.fill` tokens' when that is more."""
        b, n, _ = x.shape
        q = apply_rope(self.norm_q(self.q(x)).view(b, n, self.heads, -1), freqs)  # [B, L, H, Dh]
        k = apply_rope(self.norm_k(self.k(x)).view(b, n, self.heads, -1), freqs)
        v = self.v(x).view(b, n, self.heads, -1)
        if groups is None:
            return self.o(attention(q, k, v, backend).flatten(2))
        prefix = groups.prefix
        if prefix:  # keys/values of the cached tokens first, as in the one-pass layout
            k, v = torch.cat([slot["k"], k], 1), torch.cat([slot["v"], v], 1)
        if groups.fill > prefix:
            # stored dense: a context filled within a whole chunk must look like one filled alone (a prepared
            # context) to a compiled DiT, which guards on strides
            slot["k"], slot["v"] = dense(k[:, : groups.fill]), dense(v[:, : groups.fill])
        outs, start = [], prefix
        for end in groups.ends:
            outs.append(attention(q[:, start - prefix : end - prefix], k[:, :end], v[:, :end], backend))
            start = end
        return self.o((outs[0] if len(outs) == 1 else torch.cat(outs, 1)).flatten(2))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int, eps: float):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, context: torch.Tensor, backend: str) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.norm_q(self.q(x)).view(b, n, self.heads, -1)  # [B, L, H, Dh]
        k = self.norm_k(self.k(context)).view(b, context.shape[1], self.heads, -1)  # [B, Lt, H, Dh]
        v = self.v(context).view(b, context.shape[1], self.heads, -1)
        return self.o(attention(q, k, v, backend).flatten(2))


# --------------------------------------------------------------------------------------------- blocks
class DiTBlock(nn.Module):
    """Wan2.2 block: adaLN self-attention, (text cross-attention), adaLN FFN; six modulation vectors per frame."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.dim
        self.norm1 = FP32LayerNorm(d, cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(d, cfg.num_heads, cfg.eps)
        has_text = cfg.text_dim is not None
        self.norm_cross = FP32LayerNorm(d, cfg.eps, elementwise_affine=True) if has_text else None
        self.cross_attn = CrossAttention(d, cfg.num_heads, cfg.eps) if has_text else None
        self.norm2 = FP32LayerNorm(d, cfg.eps, elementwise_affine=False)
        self.ffn = MLP(d, cfg.ffn_dim, d, act=cfg.act)
        self.modulation = nn.Parameter(torch.randn(1, 6, d) / d**0.5)

    def forward(self, x: torch.Tensor, e0: torch.Tensor, rope: torch.Tensor, context, backend: str,
                groups: "TokenGroups | None" = None, slot: dict | None = None) -> torch.Tensor:
        """x [B, L, D]; e0 [B, Fr, 6, D] per-frame modulation (frames are contiguous runs of L / Fr tokens);
        groups / slot: the attention layout and this layer's cache entry (see SelfAttention)."""
        b, n, d = x.shape
        frames = e0.shape[1]
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation + e0).unbind(2)  # each [B, Fr, D]

        def tok(a: torch.Tensor) -> torch.Tensor:  # [B, L, D] -> [B, Fr, L/Fr, D]: tokens grouped by frame
            return a.view(b, frames, n // frames, d)

        def mod(m: torch.Tensor) -> torch.Tensor:  # [B, Fr, D] -> [B, Fr, 1, D]: broadcast over a frame's tokens
            return m[:, :, None]

        h = modulate(tok(self.norm1(x)), mod(shift1), mod(scale1)).view(b, n, d)
        x = torch.addcmul(tok(x), tok(self.self_attn(h, rope, backend, groups, slot)), mod(gate1)).view(b, n, d)
        if self.cross_attn is not None and context is not None:
            x = x + self.cross_attn(self.norm_cross(x), context, backend)
        h = modulate(tok(self.norm2(x)), mod(shift2), mod(scale2)).view(b, n, d)
        return torch.addcmul(tok(x), tok(self.ffn(h)), mod(gate2)).view(b, n, d)


class ControlBlock(DiTBlock):
    """A VACE control block: a DiT block on the control stream with an input (block 0) and output projection."""

    def __init__(self, cfg: ModelConfig, index: int):
        super().__init__(cfg)
        # before_proj keeps a normal init (VACE zero-inits it): with after_proj at zero the branch is already
        # silent at start, and a non-zero input projection lets the control signal in from the first update.
        self.before_proj = nn.Linear(cfg.dim, cfg.dim) if index == 0 else None
        self.after_proj = nn.Linear(cfg.dim, cfg.dim)
        nn.init.zeros_(self.after_proj.weight)
        nn.init.zeros_(self.after_proj.bias)

    def forward(self, c: torch.Tensor, x: torch.Tensor, e0, rope, context, backend, groups=None, slot=None):
        if self.before_proj is not None:
            c = self.before_proj(c) + x
        c = super().forward(c, e0, rope, context, backend, groups, slot)
        return c, self.after_proj(c)


class Head(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = FP32LayerNorm(cfg.dim, cfg.eps, elementwise_affine=False)
        self.proj = nn.Linear(cfg.dim, math.prod(cfg.patch) * cfg.latent_channels)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x [B, L, D], e [B, Fr, D] per-frame time embedding -> [B, L, prod(patch) * C]."""
        b, n, d = x.shape
        shift, scale = (self.modulation[:, None] + e[:, :, None]).unbind(2)  # each [B, Fr, D]
        h = modulate(self.norm(x).view(b, shift.shape[1], -1, d), shift[:, :, None], scale[:, :, None])
        return self.proj(h.view(b, n, d))


# --------------------------------------------------------------------------------------------- context cache
@dataclass
class ContextCache:
    """Keys/values of the clean context (references + history) for every attention layer of one chunk.

    Only for attention layouts where the context never attends to the targets ("context", "layered"), so its
    keys/values do not change between sampler steps: the first forward of a chunk (with refs and history) fills the
    cache, and every later forward takes the target latents alone. One cache per conditioning (a guidance pass that
    drops the references needs its own).

    With layout "layered" the references attend only to each other, so their part of a filled cache
    (`references()`) stays valid for any later chunk with the same references: a forward given such a
    references-only cache takes [history | target] latents, computes no reference token, and fills in the history."""

    refs: int = 0  # K reference frames in the cached layout
    history: int = 0  # Fh history frames (0 in a references-only cache)
    main: list[dict] = field(default_factory=list)  # per main block: {"k", "v"} [B, (K + Fh) * tpf, H, Dh]
    control: list[dict] = field(default_factory=list)  # per control block
    references_only: bool = False  # holds the K references' keys/values only (layout "layered")
    tokens_per_frame: int = 0

    @property
    def filled(self) -> bool:
        """Holds the whole context: later forwards pass the targets alone."""
        return bool(self.main) and bool(self.main[0]) and not self.references_only

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for slot in (*self.main, *self.control) for t in slot.values())

    @property
    def tokens(self) -> int:
        """Cached tokens (the prefix a forward with this cache skips)."""
        return (self.refs + self.history) * self.tokens_per_frame if self.main and self.main[0] else 0

    def references(self) -> "ContextCache":
        """The references' part of a filled cache (dense copies: the whole context's tensors are not kept alive)."""
        if not self.filled:
            raise ValueError("references() needs a filled ContextCache")
        n = self.refs * self.tokens_per_frame

        def cut(slots: list[dict]) -> list[dict]:  # (control slots stay empty when the branch did not run)
            return [{"k": dense(s["k"][:, :n]), "v": dense(s["v"][:, :n])} if s else {} for s in slots]

        return ContextCache(self.refs, 0, cut(self.main), cut(self.control), True, self.tokens_per_frame)

    def fork(self) -> "ContextCache":
        """A cache with the same keys/values that a forward can extend without changing this one."""
        return ContextCache(self.refs, self.history, [dict(s) for s in self.main], [dict(s) for s in self.control],
                            self.references_only, self.tokens_per_frame)


# --------------------------------------------------------------------------------------------- model
class SpatiaDiT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d, c = cfg.dim, cfg.latent_channels
        self.attn_backend = "sdpa"
        self._rope_cache: dict[tuple, torch.Tensor] = {}
        self.patch_embed = nn.Conv3d(c, d, cfg.patch, stride=cfg.patch)
        self.text_embed = MLP(cfg.text_dim, d, d, act=cfg.act) if cfg.text_dim is not None else None
        self.time_embed = MLP(cfg.freq_dim, d, d, act="silu")
        self.time_proj = nn.Linear(d, 6 * d)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)
        self.control_embed = nn.Conv3d(cfg.control_in_channels, d, cfg.patch, stride=cfg.patch)
        self.control_blocks = nn.ModuleList(ControlBlock(cfg, i) for i in range(len(cfg.control_layers)))
        self._init_weights()

    def _init_weights(self) -> None:
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and not name.endswith("after_proj"):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for conv in (self.patch_embed, self.control_embed):
            nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
            nn.init.zeros_(conv.bias)
        for mlp in (self.text_embed, self.time_embed):
            if mlp is not None:
                nn.init.normal_(mlp.fc1.weight, std=0.02)
                nn.init.normal_(mlp.fc2.weight, std=0.02)
        # The head keeps xavier (Wan zero-inits it): with a zero head no gradient reaches the zero-initialised
        # control projections on the first update.

    # ---- helpers
    def _embed(self, conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding as one matmul over patches (same weights as the Conv3d, faster on CPU)."""
        return F.linear(patchify(x, self.cfg.patch), conv.weight.flatten(1), conv.bias)  # [B, L, D]

    def positions(self, num_refs: int, frames: int, gh: int, gw: int, device=None) -> torch.Tensor:
        """Integer RoPE positions (t, h, w) [L, 3] of the token layout [refs | frames]."""
        t = torch.cat([torch.arange(-num_refs, 0), torch.arange(frames)]).to(device)
        is_ref = (t < 0).long()
        tt, hh, ww = torch.meshgrid(t, torch.arange(gh, device=device), torch.arange(gw, device=device), indexing="ij")
        hh = hh + gh * is_ref[:, None, None]  # references sit below the video grid in height
        return torch.stack([tt, hh, ww], dim=-1).reshape(-1, 3)

    @torch.compiler.disable  # a compiled graph guarding on this dict's keys would be invalidated as it fills
    def _rope(self, k: int, f: int, gh: int, gw: int, device) -> torch.Tensor:
        """Complex RoPE rotations of the layout, cached per (K, F, grid, device): a chunk reuses them every step."""
        key = (k, f, gh, gw, str(device))
        if key not in self._rope_cache:
            if len(self._rope_cache) >= 16:
                self._rope_cache.clear()
            angles = rope_angles(self.positions(k, f, gh, gw, device), self.cfg.head_dim, self.cfg.rope_theta)
            self._rope_cache[key] = rope_freqs(angles)
        return self._rope_cache[key]

    def _check(self, x, t, refs, control, text) -> None:
        cfg = self.cfg
        if x.dim() != 5 or x.shape[1] != cfg.latent_channels:
            raise ValueError(f"x must be [B, {cfg.latent_channels}, F, h, w] latents; got {tuple(x.shape)}")
        b, _, f, h, w = x.shape
        if h % cfg.patch[1] or w % cfg.patch[2]:
            raise ValueError(f"latent size {h}x{w} is not divisible by the patch {cfg.patch[1:]}")
        if t.shape not in ((b,), (b, f)):
            raise ValueError(f"t must be [B] or [B, F] = [{b}] or [{b}, {f}]; got {tuple(t.shape)}")
        if refs is not None:
            if refs.dim() != 5 or refs.shape[:2] != (b, cfg.latent_channels) or refs.shape[3:] != (h, w):
                raise ValueError(f"refs must be [{b}, {cfg.latent_channels}, K, {h}, {w}]; got {tuple(refs.shape)}")
            if refs.shape[2] > cfg.num_refs:
                raise ValueError(f"{refs.shape[2]} references given; the model takes at most {cfg.num_refs}")
        if control is not None and control.shape != (b, cfg.control_in_channels, f, h, w):
            raise ValueError(
                f"control must be [{b}, {cfg.control_in_channels}, {f}, {h}, {w}] (scene ++ mask latents); "
                f"got {tuple(control.shape)}"
            )
        if text is not None:
            if self.text_embed is None:
                raise ValueError(f"model {cfg.name!r} has no text cross-attention (text_dim=None); pass text=None")
            if text.dim() != 3 or text.shape[0] != b or text.shape[2] != cfg.text_dim:
                raise ValueError(f"text must be [{b}, L, {cfg.text_dim}]; got {tuple(text.shape)}")

    def control_hints(self, tokens: torch.Tensor, control: torch.Tensor, ref_tokens: int, args,
                      slots: list[dict] | None = None) -> dict:
        """Run the control branch: {main layer index: hint [B, L, D]}, hints zero at the first `ref_tokens`."""
        ctl = self._embed(self.control_embed, control.to(tokens.dtype))  # [B, F*tpf, D]
        ctl = F.pad(ctl, (0, 0, ref_tokens, 0))  # zero control tokens at the reference frames
        hints = {}
        for i, (layer, block) in enumerate(zip(self.cfg.control_layers, self.control_blocks)):
            ctl, hint = block(ctl, tokens, *args, slot=None if slots is None else slots[i])
            hints[layer] = F.pad(hint[:, ref_tokens:], (0, 0, ref_tokens, 0))  # references get no control signal
        return hints

    def _groups(self, k: int, fh: int, tpf: int, prefix: int, total: int, cache: ContextCache | None
                ) -> TokenGroups | None:
        """The attention groups of a forward over tokens [prefix, total) of [K refs | Fh history | targets] (see
        TokenGroups); a cache given with a context to compute is set up to receive its keys/values."""
        layout = self.cfg.attention_layout
        ctx_end = (k + fh) * tpf
        if layout == "full" or not ctx_end:  # no context: plain full attention, nothing to cache
            return None if not prefix else TokenGroups((total,), prefix)
        bounds = (k * tpf, ctx_end, total) if layout == "layered" else (ctx_end, total)
        ends = tuple(sorted({e for e in bounds if e > prefix}))
        fill = 0
        if cache is not None and prefix < ctx_end:  # this pass fills it (the whole context or its history)
            fill = ctx_end
            if not cache.main:
                cache.main, cache.control = [{} for _ in self.blocks], [{} for _ in self.control_blocks]
            cache.refs, cache.history, cache.tokens_per_frame, cache.references_only = k, fh, tpf, False
        return TokenGroups(ends, prefix, fill)

    # ---- forward
    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        refs: torch.Tensor | None = None,
        control: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        control_scale: float | None = None,
        history_frames: int | None = None,
        cache: ContextCache | None = None,
    ) -> torch.Tensor:
        cfg = self.cfg
        self._check(x, t, refs, control, text)
        b, c, f, h, w = x.shape
        gh, gw = h // cfg.patch[1], w // cfg.patch[2]
        tpf = gh * gw  # tokens per frame
        if cache is not None and cfg.attention_layout not in CACHED_LAYOUTS:
            raise ValueError(f"a ContextCache needs attention_layout 'context' or 'layered'; model {cfg.name!r} is "
                             f"{cfg.attention_layout!r}")
        cached = cache is not None and (cache.filled or cache.references_only)
        if cached and refs is not None:
            raise ValueError("refs are in the ContextCache; pass refs=None with it")
        if cached and control is not None and len(self.control_blocks) and not (cache.control and cache.control[0]):
            raise ValueError("this ContextCache was filled without control: pass control=None with it")
        if cached and cache.references_only and cfg.attention_layout != "layered":
            raise ValueError(f"a references-only ContextCache needs attention_layout 'layered'; model {cfg.name!r} "
                             f"is {cfg.attention_layout!r}")
        if cached and not cache.references_only:  # x holds the targets
            fh = cache.history
        else:  # x holds [history | targets]
            fh = min(cfg.history_latent_frames, f) if history_frames is None else history_frames
            if not 0 <= fh <= f:
                raise ValueError(f"history_frames must be in [0, {f}]; got {fh}")
        if cached:  # references (and history) come from the cache: x holds the latents after them
            k, video, prefix = cache.refs, x, cache.tokens  # tokens of the cached context before these ones
        else:
            k = 0 if refs is None else refs.shape[2]
            video, prefix = (x if k == 0 else torch.cat([refs.to(x.dtype), x], dim=2)), 0  # [B, C, K+F, h, w]
        frames = video.shape[2]
        tokens = self._embed(self.patch_embed, video)  # [B, frames*tpf, D]

        hist_cached = cache.history if cached else 0
        rope = self._rope(k, hist_cached + f, gh, gw, x.device)[prefix:]  # [L, Dh/2] complex

        tf = t[:, None].expand(b, f) if t.dim() == 1 else t  # [B, F]
        tf = torch.cat([tf.new_zeros(b, frames - f), tf], dim=1)  # [B, frames]; references are clean
        e = self.time_embed(timestep_features(tf * cfg.num_train_timesteps, cfg.freq_dim).to(tokens.dtype))
        e0 = self.time_proj(F.silu(e)).unflatten(-1, (6, cfg.dim))  # [B, frames, 6, D]

        context = None if text is None else self.text_embed(text.to(tokens.dtype))  # [B, Lt, D]
        groups = self._groups(k, fh, tpf, prefix, prefix + frames * tpf, cache)
        args = (e0, rope, context, self.attn_backend, groups)
        use_cache = cache is not None and bool(cache.main)  # filled here or before (empty when there is no context)
        main_slots = cache.main if use_cache else [None] * len(self.blocks)

        hints = {}
        if control is not None:
            hints = self.control_hints(tokens, control, 0 if cached else k * tpf, args,
                                       cache.control if use_cache else None)
        scale = cfg.control_scale if control_scale is None else control_scale

        for i, block in enumerate(self.blocks):
            tokens = block(tokens, *args, slot=main_slots[i])
            if i in hints:
                tokens = tokens + hints[i] * scale

        out = self.head(tokens, e)  # [B, L, pt*ph*pw*C]
        return unpatchify(out, cfg.patch, (frames, gh, gw), c)  # [B, C, frames, h, w]: K + F, or F when cached


# --------------------------------------------------------------------------------------------- text encoder
class UMT5TextEncoder:
    """umT5 text embeddings [B, text_len, 4096] for spatia-5b, through `transformers` from a local model folder.

    Padding positions are zeroed (as Wan pads the encoded prompt with zeros to text_len)."""

    def __init__(self, path: str | Path, text_len: int = 512, device: str = "cpu", dtype=torch.bfloat16):
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"umT5 text encoder not found at {path} (a local Hugging Face umT5 folder)")
        try:
            from transformers import AutoTokenizer, UMT5EncoderModel
        except ImportError as err:
            raise ImportError(
                "the umT5 text encoder needs `transformers` (and `sentencepiece`): pip install transformers "
                "sentencepiece"
            ) from err
        self.text_len, self.device = text_len, device
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = UMT5EncoderModel.from_pretrained(path, torch_dtype=dtype).to(device).eval()

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=self.text_len, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(input_ids=tok.input_ids, attention_mask=tok.attention_mask).last_hidden_state
        return hidden * tok.attention_mask[..., None].to(hidden.dtype)
