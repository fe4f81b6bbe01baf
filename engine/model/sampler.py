"""Flow-matching sampling of one chunk's target latents with the Spatia DiT.

Convention (Wan's rectified flow): x_sigma = (1 - sigma) x0 + sigma * noise, the network predicts the velocity
v = noise - x0, and sampling integrates dx/dsigma = v from sigma = 1 (noise) to 0 (data). The schedule is uniform
in sigma, then shifted: sigma' = shift * s / (1 + (shift - 1) * s), which spends more steps at high noise.

Solvers: `euler` and `dpmpp_2m` (DPM-Solver++ 2M in data prediction, x0 = x - sigma v, with first-order first and
last steps), which is accurate with few steps. Classifier-free guidance: v = v_u + g (v_c - v_u), the
unconditional pass dropping the text, the references, or both (`cfg_drop`). References and history are never
integrated: the DiT sees their clean latents at t = 0 on every step (with attention_layout "context", their keys
and values are computed on the first step and reused, so later steps cost the target tokens only).

API:
    target = sample(dit, cfg, history=h, refs=r, control=c, text=txt, steps=4, solver="dpmpp_2m",
                    generator=g, callback=cb)          -> [B, C, F_target, h, w]
    history [B, C, Fh, h, w], refs [B, C, K, h, w], control [B, 2C, Fh + Ft, h, w], text [B, L, D_text]
    callback(StepInfo) is called after every step; a truthy return raises SamplingCancelled (so does raising it).
    context=ContextCache (attention_layout "context" or "layered", no guidance): filled beforehand with this chunk's
    references and history, pass the targets' control [B, 2C, Ft, h, w] alone, no history or refs, and every step
    runs the target tokens only (the server prepares the next chunk's context while it waits for input); holding
    the references only (layout "layered": `ContextCache.references()` of an earlier chunk with the same
    references), pass the history and its control but no refs, and the first step computes no reference token;
    empty, it is filled by the first step, so the caller can keep the references' part.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from engine.model.configs import CACHED_LAYOUTS, CFG_DROPS, SOLVERS, ModelConfig
from engine.model.dit import ContextCache
from engine.model.layers import dense


class SamplingCancelled(RuntimeError):
    """The per-step callback asked to stop; `step` steps were completed."""

    def __init__(self, step: int):
        super().__init__(f"sampling cancelled after step {step}")
        self.step = step


@dataclass
class StepInfo:
    step: int  # 0-based index of the step just completed
    steps: int
    sigma: float  # noise level before the step
    sigma_next: float  # after it
    latents: torch.Tensor  # [B, C, Ft, h, w] target latents after the step
    step_ms: float  # wall time of this step (model + solver)


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_sigmas(steps: int, shift: float) -> torch.Tensor:
    """Noise levels [steps + 1] from 1 down to 0, uniform then shifted (float64)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    return shift_sigmas(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift)


class _DPMSolverPP2M:
    """DPM-Solver++ 2M for the flow x = alpha x0 + sigma noise with alpha = 1 - sigma (ratio form: no infinities)."""

    def __init__(self, min_alpha: float):
        self.min_alpha = min_alpha  # keeps log(alpha/sigma) finite at sigma = 1 for the step-size ratio
        self.prev_x0: torch.Tensor | None = None
        self.prev_h: float | None = None

    def _lambda(self, sigma: float) -> float:
        return math.log(max(1 - sigma, self.min_alpha) / sigma)

    def step(self, x: torch.Tensor, v: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
        x0 = x - sigma * v
        alpha, alpha_next = 1 - sigma, 1 - sigma_next
        d = x0
        h = None
        if sigma_next > 0:
            h = self._lambda(sigma_next) - self._lambda(sigma)
            if self.prev_x0 is not None and self.prev_h is not None:  # second order, except first and last steps
                r = self.prev_h / h
                d = (1 + 0.5 / r) * x0 - (0.5 / r) * self.prev_x0
        self.prev_x0, self.prev_h = x0, h
        ratio = sigma_next / sigma
        return ratio * x + (alpha_next - ratio * alpha) * d


def _euler_step(x: torch.Tensor, v: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    return x + (sigma_next - sigma) * v


def _like(a: torch.Tensor | None, param: torch.Tensor) -> torch.Tensor | None:
    """A condition on the DiT's device and dtype, in the dense layout a compiled DiT expects (see `dense`)."""
    return None if a is None else dense(a.to(device=param.device, dtype=param.dtype))


@torch.no_grad()
def fill_context(dit: torch.nn.Module, history: torch.Tensor, refs: torch.Tensor | None, control: torch.Tensor | None,
                 cache: ContextCache) -> None:
    """Fill `cache` with the keys/values of [refs | history] (a prepared context, attention_layout "context" or
    "layered"): history [B, z, Fh, h, w], refs [B, z, K, h, w] or None (None with a references-only cache, whose
    references it keeps), control [B, 2z, Fh, h, w] (the history's) or None. `sample(..., context=cache)` then runs
    the target tokens alone."""
    param = next(dit.parameters())
    fh = history.shape[2]
    dit(_like(history, param), torch.zeros(history.shape[0], fh, device=param.device), refs=_like(refs, param),
        control=_like(control, param), cache=cache, history_frames=fh)


@torch.no_grad()
def sample(
    dit: torch.nn.Module,
    cfg: ModelConfig,
    *,
    history: torch.Tensor | None = None,
    refs: torch.Tensor | None = None,
    control: torch.Tensor | None = None,
    text: torch.Tensor | None = None,
    text_uncond: torch.Tensor | None = None,
    target_frames: int | None = None,
    steps: int | None = None,
    solver: str | None = None,
    shift: float | None = None,
    guidance: float | None = None,
    cfg_drop: str | None = None,
    control_scale: float | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    callback: Callable[[StepInfo], object] | None = None,
    context_cache: bool = True,
    context: ContextCache | None = None,
) -> torch.Tensor:
    """Denoise one chunk. Unset options take the config's defaults (sample_steps, sample_solver, ...).

    target_frames defaults to control's frames minus history's, else cfg.chunk_latent_frames. Noise is drawn on the
    CPU from `generator` (or `seed`), so a seed gives the same chunk on any device. context_cache=False recomputes
    the context on every step (the reference the cache is measured against; same result)."""
    steps = cfg.sample_steps if steps is None else steps
    solver = cfg.sample_solver if solver is None else solver
    shift = cfg.sample_shift if shift is None else shift
    guidance = cfg.cfg_scale if guidance is None else guidance
    cfg_drop = cfg.cfg_drop if cfg_drop is None else cfg_drop
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; known: {SOLVERS}")
    if cfg_drop not in CFG_DROPS:
        raise ValueError(f"unknown cfg_drop {cfg_drop!r}; known: {CFG_DROPS}")

    param = next(dit.parameters())
    device, dtype = param.device, param.dtype
    given = [a for a in (history, refs, control, noise) if a is not None]
    batch = given[0].shape[0] if given else 1
    fh = 0 if history is None else history.shape[2]
    if target_frames is None:
        target_frames = control.shape[2] - fh if control is not None else cfg.chunk_latent_frames
    if control is not None and control.shape[2] != fh + target_frames:
        raise ValueError(
            f"control covers {control.shape[2]} latent frames; history ({fh}) + target ({target_frames}) need "
            f"{fh + target_frames}"
        )
    h, w = (given[0].shape[-2:]) if given else (cfg.latent_height, cfg.latent_width)
    shape = (batch, cfg.latent_channels, target_frames, h, w)
    if noise is None:
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    elif tuple(noise.shape) != shape:
        raise ValueError(f"noise must be {list(shape)}; got {list(noise.shape)}")

    history, refs, control, text, text_uncond = (_like(a, param) for a in (history, refs, control, text, text_uncond))
    x = noise.to(device=device, dtype=torch.float32)  # integrate in float32 whatever the model dtype
    drop_text, drop_refs = "text" in cfg_drop, "refs" in cfg_drop

    # attention_layout "context": the first step fills one cache per conditioning with the context's keys/values,
    # later steps run the target tokens alone
    use_cache = context_cache and cfg.attention_layout in CACHED_LAYOUTS
    caches = [ContextCache(), ContextCache()] if use_cache else [None, None]
    if context is not None:
        if cfg.attention_layout not in CACHED_LAYOUTS or guidance != 1.0:
            raise ValueError("a given ContextCache needs attention_layout 'context' or 'layered' and no guidance")
        if context.filled and (history is not None or refs is not None):
            raise ValueError("a prepared context needs no history or refs (they are in the cache)")
        if context.references_only and refs is not None:
            raise ValueError("a references-only context needs no refs (they are in the cache); pass the history")
        caches[0] = context  # an empty one is filled by the first step (the caller keeps its keys/values)
    control_target = None if control is None else control[:, :, fh:]

    def run(xt: torch.Tensor, sigma: float, refs_, text_, cache: ContextCache | None) -> torch.Tensor:
        t = torch.full((batch, target_frames), sigma, device=device, dtype=torch.float32)
        if cache is not None and cache.filled:
            return dit(xt.to(dtype), t, text=text_, control=control_target, control_scale=control_scale, cache=cache)
        inp = xt.to(dtype) if history is None else torch.cat([history, xt.to(dtype)], dim=2)
        t = torch.cat([t.new_zeros(batch, fh), t], dim=1)
        kw = dict(control=control, control_scale=control_scale)
        if cache is not None:
            kw.update(cache=cache, history_frames=fh)
        return dit(inp, t, refs=refs_, text=text_, **kw)[:, :, -target_frames:]

    def velocity(xt: torch.Tensor, sigma: float) -> torch.Tensor:
        v = run(xt, sigma, refs, text, caches[0]).float()
        if guidance == 1.0:
            return v
        v_u = run(xt, sigma, None if drop_refs else refs, text_uncond if drop_text else text, caches[1]).float()
        return v_u + guidance * (v - v_u)

    sigmas = flow_sigmas(steps, shift).tolist()
    dpm = _DPMSolverPP2M(min_alpha=1.0 / cfg.num_train_timesteps) if solver == "dpmpp_2m" else None
    for i in range(steps):
        t0 = time.perf_counter()
        s, s_next = sigmas[i], sigmas[i + 1]
        v = velocity(x, s)
        x = dpm.step(x, v, s, s_next) if dpm is not None else _euler_step(x, v, s, s_next)
        if callback is not None:
            if device.type == "cuda":
                torch.cuda.synchronize()  # so step_ms measures the step, not just its launch
            info = StepInfo(i, steps, s, s_next, x, (time.perf_counter() - t0) * 1e3)
            if callback(info):
                raise SamplingCancelled(i + 1)
    return x.to(dtype)
