"""`spatia train --config CONFIG`: run one training stage described by a JSON file (configs live in models/configs/).

    {"stage": "vae" | "dit" | "control",
     "model": "tiny",                      preset name (engine.model.configs), "overrides": {...} optional
     "data": "data/world128",              a folder written by `spatia world dataset`
     "out": "runs/tiny-vae",               checkpoints (exact resume), loss.png, and the exported EMA weights
     "vae": "runs/tiny-vae/export",        dit stage: the trained VAE to freeze; control stage: the trained model
                                           whose VAE teaches the control encoder (its DiT and VAE are exported with it)
     "export": "models/tiny",              optional: where the final model (vae + dit) is written
     "init": "runs/tiny-vae/export",       optional: start from these exported weights (vae or dit stage)
     "freeze_encoder": true,               vae stage, optional: train the decoder only (latents stay valid)
     "settings": {...},                    engine.train.loop.TrainSettings fields
     "loss": {...},                        stage options (vae: kl_weight, depth_weight; dit: DitLossSettings fields)
     "samples": {...},                     dit stage: engine.train.dit.SampleSettings fields
     "cache": "data/tiny-dit-cache",       dit stage, optional: encode the samples once (engine.train.cache);
                                           control stage, required: the teacher's latents (engine.train.control)
     "cache_every": 2}                     ...keeping every n-th sample

Runs resume from `out/checkpoint.pt` when it exists. Under torchrun, every rank runs this same command (DDP, gloo on
CPU, nccl on GPUs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="training config JSON (see models/configs/)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many more steps (resumable)")
    parser.add_argument("--time-budget", type=float, default=None, help="stop after this many seconds (resumable)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default=None)
    parser.add_argument("--quiet", action="store_true")


def load_config(path: str | Path) -> dict:
    path = Path(path)
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"error: no training config at {path}") from None
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: {path} is not valid JSON ({e})") from None
    for key in ("stage", "model", "data", "out"):
        if key not in cfg:
            raise SystemExit(f"error: {path} lacks the key {key!r}")
    if cfg["stage"] not in ("vae", "dit", "control"):
        raise SystemExit(f"error: {path}: stage must be 'vae', 'dit' or 'control', got {cfg['stage']!r}")
    if cfg["stage"] == "control" and not (cfg.get("vae") and cfg.get("cache")):
        raise SystemExit(f"error: {path}: the control stage needs 'vae' (the teacher model) and 'cache'")
    return cfg


def dit_samples(conf: dict, cfg, settings):
    """The DiT stage's raw samples of conf["data"] (its "samples" settings)."""
    from engine.train.dit import SampleSettings, SpatiaSamples

    samples = dict(conf.get("samples", {}))
    if "depth_range" in samples:
        samples["depth_range"] = tuple(samples["depth_range"])
    return SpatiaSamples(conf["data"], cfg, SampleSettings(**samples), seed=settings.seed)


def trainer_rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


def run(args: argparse.Namespace) -> int:
    import torch
    import torch.distributed as dist

    from engine.model.checkpoint import load_checkpoint, save_checkpoint
    from engine.model.configs import ModelConfig
    from engine.train.loop import Trainer, TrainSettings

    from engine.runtime import set_threads, tune_process

    conf = load_config(args.config)
    tune_process()
    set_threads(args.threads)
    if "RANK" in os.environ and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = ModelConfig.from_name(conf["model"], **conf.get("overrides", {}))
    settings = TrainSettings(**conf.get("settings", {}))
    out = Path(conf["out"])
    t0 = time.monotonic()

    if conf["stage"] == "vae":
        from engine.train.vae import VaeClips, build_vae, make_vae_loss, vae_clip_frames
        from engine.world.loader import WorldDataset

        data = VaeClips(WorldDataset(conf["data"], vae_clip_frames(cfg, conf.get("clip_latent_frames", 2)), step=4), cfg,
                        crop=conf.get("crop", 0), seed=settings.seed)
        model = build_vae(cfg)
        if conf.get("init"):  # fine-tuning: start from an exported VAE
            model.load_state_dict(load_checkpoint(conf["init"], parts=("vae",)).vae.state_dict())
        if conf.get("freeze_encoder"):  # decoder-only: latents (and any DiT trained on them) stay valid
            model.encoder.requires_grad_(False)
            model.to_moments.requires_grad_(False)
        loss_fn = make_vae_loss(cfg, **conf.get("loss", {}))

        def export(trainer):
            model_copy = build_vae(cfg)
            model_copy.load_state_dict(trainer.ema_model_state())
            save_checkpoint(out / "export", cfg, vae=model_copy, extra={"stage": "vae", "step": trainer.state.step})
    elif conf["stage"] == "control":
        from engine.model.control_encoder import ControlEncoder
        from engine.train.control import ControlData, build_control_data, make_control_loss

        teacher = load_checkpoint(conf["vae"], parts=("dit", "vae"))  # as stored: exported unchanged
        teacher_vae = load_checkpoint(conf["vae"], device=device, dtype=torch.float32, parts=("vae",)).vae
        # the exported model keeps the teacher's config; "overrides" may set the control encoder's widths
        cfg = ModelConfig.from_dict({**teacher.cfg.to_dict(), **conf.get("overrides", {})})
        if trainer_rank() == 0:
            build_control_data(dit_samples(conf, cfg, settings), teacher_vae, cfg, conf["cache"],
                               every=conf.get("cache_every", 1), workers=conf.get("cache_workers", 1),
                               progress=not args.quiet)
        if dist.is_initialized():
            dist.barrier()
        data = ControlData(conf["cache"], cfg)
        model = ControlEncoder(cfg)
        loss_fn = make_control_loss()

        def export(trainer):
            student = ControlEncoder(cfg)
            student.load_state_dict(trainer.ema_model_state())
            extra = dict(teacher.extra, control={"step": trainer.state.step, "data": conf["data"]})
            save_checkpoint(out / "export", cfg, dit=teacher.dit, vae=teacher.vae, control=student, extra=extra)
    else:
        from engine.model.dit import SpatiaDiT
        from engine.train.dit import DitLossSettings, make_dit_loss

        vae = load_checkpoint(conf["vae"], device=device, parts=("vae",)).vae
        data = dit_samples(conf, cfg, settings)
        if conf.get("cache"):
            from engine.train.cache import CachedSamples, build_cache

            if trainer_rank() == 0:
                build_cache(data, vae, cfg, conf["cache"], every=conf.get("cache_every", 1),
                            workers=conf.get("cache_workers", 1), progress=not args.quiet)
            if dist.is_initialized():
                dist.barrier()
            data = CachedSamples(conf["cache"], cfg)
        model = SpatiaDiT(cfg)
        if conf.get("init"):  # continue from exported weights (e.g. the shipped model); optimizer state starts fresh
            model.load_state_dict(load_checkpoint(conf["init"], parts=("dit",)).dit.state_dict())
        loss_fn = make_dit_loss(cfg, vae, DitLossSettings(**conf.get("loss", {})))

        def export(trainer):
            dit_copy = SpatiaDiT(cfg)
            dit_copy.load_state_dict(trainer.ema_model_state())
            extra = {"stage": "dit", "step": trainer.state.step, "data": conf["data"]}
            save_checkpoint(out / "export", cfg, dit=dit_copy, vae=vae, extra=extra)

    trainer = Trainer(model, loss_fn, data, settings, out, on_checkpoint=export, device=device)
    if trainer.state.step and not args.quiet:
        print(f"resuming {out} at step {trainer.state.step}", file=sys.stderr)
    state = trainer.run(max_steps=args.max_steps, time_budget_s=args.time_budget, progress=not args.quiet)
    if trainer.rank == 0:
        log = {"stage": conf["stage"], "step": state.step, "seconds": round(time.monotonic() - t0, 1),
               "loss": state.history[-1]["loss"] if state.history else None}
        with open(out / "runs.jsonl", "a") as f:
            f.write(json.dumps(log) + "\n")
        if conf.get("export") and state.step >= settings.steps:
            import shutil

            dest = Path(conf["export"])  # the weights and config are replaced; a model card or eval beside them stays
            shutil.copytree(out / "export", dest, dirs_exist_ok=True)
            shutil.copy(out / "loss.png", dest / f"loss-{conf['stage']}.png")
        print(json.dumps(log))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0
