"""Run one benchmark (`spatia bench NAME --json`) and print one JSON object of medians.

Every benchmark module in this package exposes `add_arguments(parser)` and `run(args) -> dict`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

# benchmark name -> module. Each hot path adds its benchmark here.
BENCHMARKS: dict[str, str] = {
    "reconstruct": "engine.bench.reconstruct",
    "model": "engine.bench.model",
    "world": "engine.bench.world",
    "viewer": "engine.bench.viewer",
    "memory": "engine.bench.memory",
    "protocol": "engine.bench.protocol",
    "e2e": "engine.bench.e2e",
    "fuzz": "engine.bench.fuzz",
    "load": "engine.bench.load",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, module_name in BENCHMARKS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=(module.__doc__ or name).strip().splitlines()[0])
        p.add_argument("--json", action="store_true", help="print only the JSON object (default prints it indented)")
        module.add_arguments(p)
        p.set_defaults(_bench=module.run)


def run(args: argparse.Namespace) -> int:
    result = args._bench(args)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    sys.stdout.flush()
    return 0
