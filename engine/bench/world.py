"""Procedural world throughput: `spatia bench world --json` prints ground-truth frames per second and dataset time.

render_<R>: frames_per_s of WorldRenderer.render_batch (RGB + depth + ids in one pass, read back into NumPy) on
a walk through an indoor and an outdoor scene with moving entities, at 128x128 and 256x256.
sequence_128: the whole per-sequence pipeline in one process (scene, path, 32 frames, atomic .npy write).
pool_128: `build_dataset` with --workers processes; each worker times its sequences while all run at once, which
gives the steady rate with the cores shared, and the rest of the run's wall time is start-up.
estimate_1000x32_128_s extrapolates the 1000-sequence x 32-frame dataset at 128x128 from them (the goal is under
600 s on 2 cores).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=64, help="frames per rendering measurement")
    parser.add_argument("--repeat", type=int, default=5, help="timed repetitions (median reported)")
    parser.add_argument("--seq-frames", type=int, default=32, help="frames per dataset sequence")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for the pool run")
    parser.add_argument("--pool-seqs", type=int, default=6, help="sequences per worker in the larger pool run")
    parser.add_argument("--target-seqs", type=int, default=1000, help="dataset size the estimate is for")
    parser.add_argument("--seed", type=int, default=0)


def _render_fps(size: int, frames: int, repeat: int, seed: int) -> dict:
    from engine.bench.timing import median_ms
    from engine.world.paths import walk_path
    from engine.world.render import WorldRenderer
    from engine.world.scene import generate_scene

    renderer = WorldRenderer(size, size)
    out = {}
    for kind in ("indoor", "outdoor"):
        scene = generate_scene(seed, kind, dynamic=True)
        path = walk_path(scene, frames, fps=24.0, seed=seed)
        K = path.K(size, size)
        ms = median_ms(lambda: renderer.render_batch(scene, path.w2c, K, path.times), warmup=1, repeat=repeat,
                       sync=False)
        out[kind] = frames / (ms / 1e3)
    renderer.release()
    out["frames_per_s"] = 2.0 / (1.0 / out["indoor"] + 1.0 / out["outdoor"])  # both kinds, equal frame counts
    return {k: round(v, 1) for k, v in out.items()}


def _sequence_ms(seq_frames: int, repeat: int, seed: int) -> float:
    """Median ms for one whole sequence (scene, path, render, write) in this process, 128x128."""
    from engine.bench.timing import median_ms
    from engine.world.dataset import DatasetConfig, render_sequence, write_sequence
    from engine.world.render import WorldRenderer

    cfg = DatasetConfig(scenes=10**6, frames=seq_frames, width=128, height=128, seed0=seed)
    renderer = WorldRenderer(128, 128)
    counter = itertools.count()
    with tempfile.TemporaryDirectory() as tmp:
        def one():
            arrays, meta = render_sequence(renderer, cfg, next(counter))
            write_sequence(tmp, arrays, meta)

        ms = median_ms(one, warmup=1, repeat=max(repeat, 5), sync=False)
    renderer.release()
    return ms


def _pool_run(n_seqs: int, seq_frames: int, workers: int, seed: int) -> dict:
    from engine.world.dataset import DatasetConfig, build_dataset

    cfg = DatasetConfig(scenes=n_seqs, frames=seq_frames, width=128, height=128, seed0=seed)
    with tempfile.TemporaryDirectory() as tmp:
        return build_dataset(cfg, tmp, workers=workers, progress=False)


def run(args: argparse.Namespace) -> dict:
    from engine.bench.timing import machine_info

    out: dict = {"machine": machine_info()}
    for size in (128, 256):
        out[f"render_{size}"] = _render_fps(size, args.frames, args.repeat, args.seed)
    seq_ms = _sequence_ms(args.seq_frames, args.repeat, args.seed)
    out["sequence_128"] = {"ms_per_sequence": round(seq_ms, 1),
                           "frames_per_s": round(args.seq_frames / (seq_ms / 1e3), 1)}
    # A pool run as `spatia world dataset` does it. Each worker times its own sequences while all of them run
    # at once, so workers / median(sequence time) is the steady rate with the cores shared; what the run took
    # beyond that is start-up (spawning, imports, GL contexts), paid once per dataset.
    w = max(1, args.workers)
    n = w * max(2, args.pool_seqs)
    stats = _pool_run(n, args.seq_frames, w, args.seed)
    per_seq = statistics.median(stats["sequence_seconds"])
    rate = stats["workers"] / per_seq  # sequences per second, steady
    startup = max(stats["seconds"] - n / rate, 0.0)
    out["pool_128"] = {
        "workers": stats["workers"],
        "sequences": n,
        "seconds": round(stats["seconds"], 2),
        "median_sequence_s": round(per_seq, 3),
        "startup_s": round(startup, 2),
        "frames_per_s": round(rate * args.seq_frames, 1),
    }
    out[f"estimate_{args.target_seqs}x{args.seq_frames}_128_s"] = round(startup + args.target_seqs / rate, 1)
    out["frames_per_s_128"] = out["render_128"]["frames_per_s"]
    out["frames_per_s_256"] = out["render_256"]["frames_per_s"]
    return out
