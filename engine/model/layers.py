"""Shared primitives of the networks: attention dispatch, 3D rotary embeddings, norms, timestep features, modulation.

Everything here is stateless or nearly so, and written so that a fast path (a fused attention kernel, a compiled
graph) can replace a function without touching the models. `attention` is the single place where the attention
kernel is chosen; `attention_reference` is the plain PyTorch definition it is tested against.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

ATTENTION_BACKENDS = ("sdpa", "math")


# --------------------------------------------------------------------------------------------- attention
def dense(a: torch.Tensor) -> torch.Tensor:
    """`a` in row-major layout with the strides `torch.empty(a.shape)` would have, size-1 dimensions included
    (`contiguous()` keeps any stride there). A compiled DiT guards on input strides: a permuted or sliced condition,
    or one reference instead of several, must not look new and build another graph."""
    expected, step = [], 1
    for size in reversed(a.shape):
        expected.append(step)
        step *= size
    return a if a.stride() == tuple(reversed(expected)) else a.clone(memory_format=torch.contiguous_format)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
    """Full (bidirectional) multi-head attention. q [B, Lq, H, D], k/v [B, Lk, H, D] -> [B, Lq, H, D]."""
    if backend == "sdpa":
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    if backend == "math":
        return attention_reference(q, k, v)
    raise ValueError(f"unknown attention backend {backend!r}; known: {ATTENTION_BACKENDS}")


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v in float32, the definition every kernel must match."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale  # [B, H, Lq, Lk]
    return torch.einsum("bhqk,bkhd->bqhd", logits.softmax(-1), v.float()).to(q.dtype)


# --------------------------------------------------------------------------------------------- rotary embedding
def rope_axis_pairs(head_dim: int) -> tuple[int, int, int]:
    """How the head_dim/2 rotation pairs split over the (t, h, w) axes (Wan's split: h and w get c//3 each)."""
    c = head_dim // 2
    return c - 2 * (c // 3), c // 3, c // 3


def rope_inv_freqs(head_dim: int, theta: float, device=None) -> list[torch.Tensor]:
    """Per-axis inverse frequencies; each axis is normalised by its own width (as Wan's per-axis tables)."""
    out = []
    for pairs in rope_axis_pairs(head_dim):
        width = 2 * pairs
        out.append(1.0 / theta ** (torch.arange(0, width, 2, dtype=torch.float64, device=device) / width))
    return out


def rope_angles(positions: torch.Tensor, head_dim: int, theta: float) -> torch.Tensor:
    """Rotation angles for integer (t, h, w) token positions [L, 3] (may be negative) -> [L, head_dim // 2]."""
    freqs = rope_inv_freqs(head_dim, theta, positions.device)
    pos = positions.to(torch.float64)
    parts = [pos[:, i : i + 1] * f[None] for i, f in enumerate(freqs)]
    return torch.cat(parts, dim=1).float()


def rope_freqs(angles: torch.Tensor) -> torch.Tensor:
    """Unit complex rotations [L, D/2] (complex64) for `apply_rope` from angles [L, D/2]."""
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs (2i, 2i+1) of x [B, L, H, D] by complex freqs [L, D/2] (one complex mul)."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # [B, L, H, D/2]
    return torch.view_as_real(xc * freqs[None, :, None]).flatten(-2).type_as(x)


def apply_rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Real-arithmetic definition of `apply_rope` (cos/sin [L, D/2]); for tests and complex-free exporters."""
    xf = x.float().unflatten(-1, (-1, 2))  # [B, L, H, D/2, 2]
    a, b = xf[..., 0], xf[..., 1]
    c, s = cos[None, :, None], sin[None, :, None]
    return torch.stack((a * c - b * s, a * s + b * c), dim=-1).flatten(-2).type_as(x)


# --------------------------------------------------------------------------------------------- norms
class RMSNorm(nn.Module):
    """RMS norm over the last axis with a learned gain (Wan's q/k norm), computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        return F.rms_norm(x.float(), self.weight.shape, None, self.eps).type_as(x) * self.weight


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm evaluated in float32 whatever the activation dtype (bf16 statistics drift over 30 layers)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type_as(x)


# --------------------------------------------------------------------------------------------- timesteps
def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features [..., dim] of timesteps t [...] (cos first, then sin: Wan's order)."""
    half = dim // 2
    freqs = torch.pow(max_period, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    args = t.to(torch.float64)[..., None] * freqs  # [..., half]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).float()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation x * (1 + scale) + shift (shift/scale broadcast against x)."""
    return torch.addcmul(shift, x, 1 + scale)
