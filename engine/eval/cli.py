"""`spatia eval`: the paper's metrics and ablation tables on held-out procedural scenes.

    spatia eval [--model tiny] [--scenes 8] [--seed0 10000] [--chunks 4] [--clips 2,4,6] [--quick] --out DIR

Writes DIR/results.json, DIR/report.md (PSNR/SSIM table, Tables 4-7, the quality-bar checklist) and DIR/*.png
(sample strips, metrics against K, clips and voxel size), with a progress bar; prints the checklist.
"""

from __future__ import annotations

import argparse
import sys


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # None = not given: the defaults come from EvalConfig (or EvalConfig.quick with --quick)
    parser.add_argument("--model", default="tiny", help="shipped model name or checkpoint folder (default tiny)")
    parser.add_argument("--out", default="eval-results", help="output folder (default ./eval-results)")
    parser.add_argument("--quick", action="store_true", help="a small run: 2 scenes, 2-chunk loops, clips 2,4")
    parser.add_argument("--scenes", type=int, default=None, help="held-out scenes (default 8)")
    parser.add_argument("--seed0", type=int, default=None, help="first scene seed (default 10000; >= 600)")
    parser.add_argument("--chunks", type=int, default=None, help="closed-loop length in chunks for Tables 4, 5, 7 (default 4)")
    parser.add_argument("--clips", type=_ints, default=None, help="Table 6 loop lengths in chunks (default 2,4,6)")
    parser.add_argument("--ks", type=_ints, default=None, help="Table 5 reference counts (default 1,3,5,7; capped)")
    parser.add_argument("--voxels", type=_floats, default=None, help="Table 7 voxel sizes in m (default 0.02,0.04,0.06,0.08)")
    parser.add_argument("--path", default=None, help="closed path kind: loop (default), return_walk, orbit, ...")
    parser.add_argument("--matcher", default=None, choices=("auto", "sift", "roma"),
                        help="Match Accuracy backend (default auto: RoMa if its weights are local, else SIFT)")
    parser.add_argument("--roma-weights", default=None, help="RoMa outdoor checkpoint (or SPATIA_ROMA_WEIGHTS)")
    parser.add_argument("--roma-dinov2-weights", default=None, help="RoMa's DINOv2 checkpoint (or SPATIA_ROMA_DINOV2_WEIGHTS)")
    parser.add_argument("--lpips-weights", default=None, help="LPIPS backbone weights (or SPATIA_LPIPS_WEIGHTS)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    parser.add_argument("--retrieval", default=None, choices=("release", "alg1"))
    parser.add_argument("--control-encoder", default="auto", choices=("auto", "distilled", "vae"),
                        help="the scene video's encoder: the model's distilled one (auto: where shipped) or its VAE's")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


FIELDS = ("scenes", "seed0", "chunks", "clips", "ks", "voxels", "path", "matcher", "roma_weights", "roma_dinov2_weights",
          "lpips_weights", "steps", "retrieval")


def config_from_args(args: argparse.Namespace):
    from engine.eval.suite import EvalConfig

    given = {f: getattr(args, f) for f in FIELDS if getattr(args, f) is not None}
    return EvalConfig.quick(**given) if args.quick else EvalConfig(**given)


def run(args: argparse.Namespace) -> int:
    from engine.eval.matching import MatcherUnavailable
    from engine.eval.suite import EvalError
    from engine.runtime import set_threads, tune_process
    from engine.world.render import limit_rasterizer_threads

    tune_process()
    set_threads(args.threads)
    limit_rasterizer_threads(args.threads or 1)  # ground-truth frames are small: one rasteriser thread is plenty
    try:
        cfg = config_from_args(args)
        from engine.eval.report import write_report
        from engine.eval.suite import run_suite
        from engine.pipeline import WorldModel

        model = WorldModel.load(args.model, control_encoder=args.control_encoder)
        suite = run_suite(model, cfg, progress=not args.no_progress)
    except (FileNotFoundError, ValueError, MatcherUnavailable, EvalError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    paths = write_report(suite, args.out)
    import json

    checks = json.loads(paths["results"].read_text())["checks"]
    for c in checks:
        state = "N/A " if c["passed"] is None else ("PASS" if c["passed"] else "FAIL")
        print(f"[{state}] {c['name']}: {c['measured']}")
    print(f"report: {paths['report']}")
    return 0
