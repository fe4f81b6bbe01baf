"""`spatia world dataset|preview`: render the procedural dataset to disk, or a tour of one scene as an MP4.

    spatia world dataset --scenes 1000 --frames 32 --res 128 --out data/world128 --workers 2 [--dynamic]
    spatia world preview --seed 3 --out tour.mp4 [--res 256 --frames 240]   (also writes tour.png)

Only argparse is imported at load; rendering, numpy and imageio are imported when a command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def parse_res(text: str) -> tuple[int, int]:
    """'128' -> (128, 128); '160x96' -> (160, 96) as (width, height)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--res must be N or WxH (e.g. 128 or 160x96), got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"--res must be N or WxH with positive sizes, got {text!r}")
    return parts[0], parts[1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="world_command", required=True, metavar="{dataset,preview}")
    d = sub.add_parser("dataset", help="render sequences (rgb, depth, ids, poses) into a folder; resumable")
    d.add_argument("--scenes", type=int, required=True, help="number of sequences (one scene each)")
    d.add_argument("--frames", type=int, required=True, help="frames per sequence")
    d.add_argument("--res", type=parse_res, default=(128, 128), help="N or WxH (default 128)")
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="render processes (default: all cores)")
    d.add_argument("--seed0", type=int, default=0, help="seed of the first sequence (sequence i uses seed0 + i)")
    d.add_argument("--dynamic", action="store_true", help="add moving entities (and their masks)")
    d.add_argument("--fps", type=float, default=12.0, help="frame rate the paths are sampled at (default 12)")
    d.add_argument("--kind", choices=("auto", "indoor", "outdoor"), default="auto", help="scene kind")
    d.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("preview", help="an MP4 tour of one scene and a contact sheet PNG next to it")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="the .mp4 to write; the contact sheet goes to the same name .png")
    p.add_argument("--res", type=parse_res, default=(256, 256), help="N or WxH (default 256)")
    p.add_argument("--frames", type=int, default=240)
    p.add_argument("--fps", type=float, default=24.0)
    p.add_argument("--kind", choices=("auto", "indoor", "outdoor"), default="auto")
    p.add_argument("--path", default="walk", help="path kind: walk, orbit, loop, forward_back, look_around, "
                                                  "return_walk (default walk)")
    p.add_argument("--speed", type=float, default=1.2, help="m/s")
    p.add_argument("--dynamic", action="store_true")


def run(args: argparse.Namespace) -> int:
    return {"dataset": run_dataset, "preview": run_preview}[args.world_command](args)


def run_dataset(args: argparse.Namespace) -> int:
    from engine.world.dataset import DatasetConfig, DatasetError, build_dataset

    width, height = args.res
    try:
        cfg = DatasetConfig(scenes=args.scenes, frames=args.frames, width=width, height=height, fps=args.fps,
                            seed0=args.seed0, dynamic=args.dynamic, kind=args.kind)
        stats = build_dataset(cfg, args.out, workers=args.workers, progress=not args.quiet)
    except (ValueError, DatasetError) as e:
        print(f"spatia world dataset: {e}", file=sys.stderr)
        return 2
    per_seq = sorted(stats.pop("sequence_seconds"))
    stats["median_sequence_s"] = per_seq[len(per_seq) // 2] if per_seq else None
    print(json.dumps({"out": args.out, **{k: round(v, 3) if isinstance(v, float) else v for k, v in stats.items()}}))
    return 0


def run_preview(args: argparse.Namespace) -> int:
    from pathlib import Path

    from engine.world.paths import PathError
    from engine.world.preview import write_preview

    out = Path(args.out)
    if out.suffix.lower() != ".mp4":
        print(f"spatia world preview: --out must end in .mp4, got {out}", file=sys.stderr)
        return 2
    try:
        sheet = write_preview(args.seed, out, args.res, args.frames, fps=args.fps, kind=args.kind, path=args.path,
                              speed=args.speed, dynamic=args.dynamic)
    except (ValueError, PathError) as e:
        print(f"spatia world preview: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"video": str(out), "contact_sheet": str(sheet)}))
    return 0
