"""What the DiT is conditioned on for one chunk, built in one go or in two parts around the user's input.

In one go (`build_conditions`): render the memory along [history pose | target poses] (scene video + coverage),
encode the history frame and the references (each stored frame once, through a latent cache) and the control
video with the VAE.

In two parts: everything that does not depend on the target poses is prepared while the server waits for them
(`prepare_context`): the history's render and its control latents with the VAE encoder's causal state, the
references with their latents, the DiT's keys/values of [references | history] (attention_layout "context" or
"layered"), and
the VAE decoder's state after the history latent. When the poses arrive, `target_conditions` renders and encodes
the target frames only, continuing the encoder's state, and the sampler runs the target tokens alone: the same
conditions as in one go (up to float rounding), with less work between an input and its first frame.

    cond = build_conditions(model, memory, hist_rgb, hist_depth, [hist_cam, *targets], refs, ref_ids, ...)
    ctx = prepare_context(model, memory, history_frame, refs, ref_ids, point_size, latent_cache, key)
    cond = target_conditions(model, memory, targets, ctx)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from engine import geometry
from engine.memory.pointcloud import SpatialMemory
from engine.memory.render import render
from engine.model.configs import CACHED_LAYOUTS, ModelConfig
from engine.model.dit import ContextCache
from engine.model.sampler import fill_context
from engine.model.vae import DecodeCache


@dataclass
class Conditions:
    """Everything the DiT is conditioned on for one chunk (latents normalised, batch of one)."""

    history: torch.Tensor  # [1, z, Fh, h, w]
    refs: torch.Tensor | None  # [1, z, K, h, w] or None
    control: torch.Tensor | None  # [1, 2z, Fh + Ft, h, w] or None
    scene_rgb: torch.Tensor  # [F, 3, H, W] rendered memory along [history | targets], [0, 1]
    scene_depth: torch.Tensor  # [F, 1, H, W]
    coverage: torch.Tensor  # [F, 1, H, W]
    ref_ids: list[tuple[int, float]]


@dataclass
class PreparedContext:
    """The part of a chunk's conditions that the target poses do not change, computed ahead of them."""

    key: tuple  # what it was prepared for (history frame, memory version, ...): stale when the session's differs
    cond: Conditions  # history, refs, the history's control latents [1, 2z, 1, h, w] and render, ref_ids
    encoder_state: dict  # the VAE encoder's causal state after the history's control frame
    cache: ContextCache  # the DiT's keys/values of [references | history]
    decode: DecodeCache  # the VAE decoder's state after the history latent
    ms: float = 0.0  # how long preparing took (references included: set by the session)


def video_tensor(rgb: np.ndarray | torch.Tensor, depth: np.ndarray | torch.Tensor | None, cfg: ModelConfig) -> torch.Tensor:
    """uint8 rgb [F, H, W, 3] (+ depth [F, H, W]) -> VAE input [1, C, F, H, W] (rgb in [0, 1], depth metric)."""
    rgb = torch.as_tensor(np.asarray(rgb)).permute(3, 0, 1, 2).float() / 255.0  # [3, F, H, W]
    if cfg.depth_channel:
        d = torch.zeros_like(rgb[:1]) if depth is None else torch.as_tensor(np.asarray(depth, np.float32))[None]
        rgb = torch.cat([rgb, d], 0)
    return rgb[None]


def _render(model, memory, cameras: Sequence[geometry.Camera], point_size: float | None,
            timings: dict[str, float] | None = None):
    """The memory rendered at the model's resolution along `cameras` (timed as "render" when timings are given)."""
    t0 = time.perf_counter()
    out = render(memory, list(cameras), resolution=(model.cfg.width, model.cfg.height), point_size=point_size)
    if timings is not None:
        timings["render"] = (time.perf_counter() - t0) * 1e3
    return out


def _control_latents(model, out, state: dict | None = None) -> torch.Tensor:
    """A render's control latents [1, 2z, f, h, w]: its scene video (RGB, + depth) and coverage through the VAE
    (state: see `VideoVAE.encode_control`; the distilled encoder where the model has one)."""
    scene = out.rgb.permute(1, 0, 2, 3)[None]  # [1, 3, F, H, W]
    if model.cfg.depth_channel:
        scene = torch.cat([scene, out.depth.permute(1, 0, 2, 3)[None]], 1)
    coverage = out.coverage.permute(1, 0, 2, 3)[None]  # [1, 1, F, H, W]
    with torch.no_grad():
        return model.encode_control(scene.to(model.device), coverage.to(model.device), state=state)


def encode_frames(model, history_rgb: np.ndarray, history_depth: np.ndarray | None, refs: Sequence,
                  cache: dict[int, torch.Tensor], history_index: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """History latent [1, z, 1, h, w] and reference latents [1, z, K, h, w] (None without references).

    cache maps frame index -> that frame's latent encoded alone [z, 1, h, w] (references and history alike): a
    stored frame is encoded once, whether it returns as a reference or was the history (history_index)."""
    cfg, vae, dev = model.cfg, model.vae, model.device
    with torch.no_grad():
        if history_index is not None and history_index in cache:
            history = cache[history_index][None]
        else:
            history = vae.encode(video_tensor(history_rgb[None], None if history_depth is None else history_depth[None],
                                              cfg).to(dev)).mode()  # [1, z, 1, h, w]
            if history_index is not None:
                cache[history_index] = history[0]
        if not refs:
            return history, None
        missing = [f for f in refs if f.index not in cache]
        if missing:
            vids = torch.cat([video_tensor(f.rgb[None], None if f.depth is None else f.depth[None], cfg) for f in missing])
            lat = vae.encode(vids.to(dev)).mode()  # [n, z, 1, h, w]: each reference encoded alone
            for f, z in zip(missing, lat):
                cache[f.index] = z
        return history, torch.stack([cache[f.index] for f in refs], 0).squeeze(2).permute(1, 0, 2, 3)[None]


def build_conditions(
    model,
    memory: SpatialMemory | tuple[np.ndarray, np.ndarray],
    history_rgb: np.ndarray,
    history_depth: np.ndarray | None,
    cameras: Sequence[geometry.Camera],
    refs: Sequence,
    ref_ids: list[tuple[int, float]],
    use_scene_video: bool = True,
    point_size: float | None = None,
    ref_latent_cache: dict[int, torch.Tensor] | None = None,
    timings: dict[str, float] | None = None,
    history_index: int | None = None,
) -> Conditions:
    """Encode one chunk's conditions. cameras: [history camera, *target cameras] at the model's resolution; refs:
    stored frames (.index, .rgb, .depth). ref_latent_cache: see `encode_frames`."""
    timings = {} if timings is None else timings
    out = _render(model, memory, cameras, point_size, timings)
    t0 = time.perf_counter()
    cache = {} if ref_latent_cache is None else ref_latent_cache
    history, ref_latents = encode_frames(model, history_rgb, history_depth, refs, cache, history_index)
    control = _control_latents(model, out) if use_scene_video else None
    timings["encode"] = (time.perf_counter() - t0) * 1e3
    return Conditions(history, ref_latents, control, out.rgb, out.depth, out.coverage, ref_ids)


def prepare_context(model, memory: SpatialMemory, history, refs: Sequence, ref_ids: list[tuple[int, float]],
                    point_size: float | None, ref_latent_cache: dict[int, torch.Tensor], key: tuple,
                    reference_context: ContextCache | None = None,
                    should_stop: Callable[[], bool] | None = None) -> PreparedContext | None:
    """Everything of the next chunk that its target poses do not change (needs attention_layout "context" or
    "layered").

    history: the stored frame the chunk continues from (.index, .rgb, .depth, .camera); refs: the chunk's reference
    frames, chosen before its poses are known; reference_context: their keys/values from an earlier chunk (layout
    "layered", a references-only ContextCache that this one extends), else they are computed here. should_stop()
    is polled after the encodes and after the history's control latents: True returns None (the latents computed
    stay in ref_latent_cache)."""
    cfg, vae, dit = model.cfg, model.vae, model.dit
    if cfg.attention_layout not in CACHED_LAYOUTS:
        raise ValueError(f"preparing a context needs attention_layout 'context' or 'layered'; model {cfg.name!r} "
                         f"is {cfg.attention_layout!r}")
    out = _render(model, memory, [history.camera], point_size)
    hist_latent, ref_latents = encode_frames(model, history.rgb, history.depth, refs, ref_latent_cache, history.index)
    if should_stop is not None and should_stop():
        return None
    state: dict[Any, Any] = {}
    control = _control_latents(model, out, state)  # [1, 2z, 1, h, w]
    if should_stop is not None and should_stop():
        return None
    cache = ContextCache() if reference_context is None else reference_context
    decode = vae.new_decode_cache()
    with torch.no_grad():
        fill_context(dit, hist_latent, None if reference_context is not None else ref_latents, control, cache)
        vae.decode_step(hist_latent, decode)
    cond = Conditions(hist_latent, ref_latents, control, out.rgb, out.depth, out.coverage, list(ref_ids))
    return PreparedContext(key, cond, state, cache, decode)


def target_conditions(model, memory: SpatialMemory, targets: Sequence[geometry.Camera], ctx: PreparedContext,
                      point_size: float | None = None, timings: dict[str, float] | None = None) -> Conditions:
    """The chunk's full conditions from a prepared context and its target cameras: only the targets are rendered
    and encoded (the encoder's causal state carried on from the history's control frame; `ctx` stays reusable)."""
    timings = {} if timings is None else timings
    out = _render(model, memory, targets, point_size, timings)
    t0 = time.perf_counter()
    control = _control_latents(model, out, dict(ctx.encoder_state))
    timings["encode"] = (time.perf_counter() - t0) * 1e3
    c = ctx.cond
    return Conditions(c.history, c.refs, torch.cat([c.control, control], 2), torch.cat([c.scene_rgb, out.rgb]),
                      torch.cat([c.scene_depth, out.depth]), torch.cat([c.coverage, out.coverage]), c.ref_ids)
