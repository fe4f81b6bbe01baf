"""The `spatia` command: a thin top floor over the engine.

Each subcommand lives in its own module, which exposes `add_arguments(parser)` and `run(args) -> int`.
Those modules import only argparse-level things at load; heavy imports happen inside `run`, so
`spatia serve` never loads pyglet and `spatia explore` never loads the model.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one-line help). A capability adds its line here when it becomes real.
COMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("engine.bench.cli", "run a benchmark and print its medians as JSON"),
    "explore": ("engine.explore_cmd", "explore a world live in a window, or run a headless scripted tour"),
    "serve": ("engine.server.cli", "run the generation server (ZeroMQ) for explorers and other clients"),
    "generate": ("engine.generate", "generate a long video offline from the release's inputs or a procedural scene"),
    "train": ("engine.train.cli", "train a model stage (VAE, DiT) from a JSON config, resumably"),
    "keys": ("engine.server.keys", "make CURVE keys for a server that listens beyond loopback"),
    "eval": ("engine.eval.cli", "evaluate a model on held-out procedural scenes: metrics, ablation tables, figures"),
    "world": ("engine.world.cli", "render the procedural world: a training dataset or a preview tour"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spatia", description="Spatia Explorer: a world model with spatial memory.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip().splitlines()[0])
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    # before torch loads: idle OpenMP workers sleep instead of spinning (see engine/runtime.py), except in the
    # generation server, which usually owns its cores: there OpenMP's default (spin briefly, then sleep) makes a
    # chunk ~2x faster. A server that shares its cores (the explorer's local one) gets PASSIVE from its parent.
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    if words[:1] != ["serve"]:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
