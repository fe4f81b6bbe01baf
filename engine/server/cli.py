"""`spatia serve`: run the generation server (one process, or a broker in front of N worker processes).

    spatia serve --model tiny --bind tcp://127.0.0.1:5555 --backend auto|eager|compile|tensorrt [--sessions DIR]
                 [--resume] [--workers N] [--keys DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_BIND = "tcp://127.0.0.1:5555"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny", help="shipped model name (models/NAME) or a checkpoint folder")
    parser.add_argument("--bind", default=DEFAULT_BIND, help="ZeroMQ endpoint; non-loopback needs --keys")
    parser.add_argument("--backend", default="auto", choices=("auto", "eager", "compile", "tensorrt"))
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                        help="the DiT's precision (float16/bfloat16 for a GPU; the VAE stays in float32)")
    parser.add_argument("--sessions", default="sessions", help="directory for autosaves and saved sessions")
    parser.add_argument("--resume", action="store_true", help="restore autosaved sessions when their clients return")
    parser.add_argument("--workers", type=int, default=1, help="worker processes behind a load-balancing broker")
    parser.add_argument("--keys", default=None, help="CURVE key directory from `spatia keys` (required off loopback)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per worker")
    parser.add_argument("--retrieval", default="release", choices=("release", "alg1"))
    parser.add_argument("--no-short-chunks", action="store_true",
                        help="always generate full chunks (default: the first chunk after a turn is one latent "
                             "frame long, for a faster first frame)")
    parser.add_argument("--short-chunk-steps", type=int, default=1,
                        help="sampler steps of the short first chunk (default 1: its first frame sooner; 0: the "
                             "model's steps, as full chunks)")
    parser.add_argument("--short-chunk-refs", default="previous", choices=("previous", "retrieve"),
                        help="references of the short first chunk: the last chunk's (default: no retrieval before "
                             "its first frame) or retrieved for its poses")
    parser.add_argument("--control-encoder", default="auto", choices=("auto", "distilled", "vae"),
                        help="what encodes the scene video for the DiT: the model's distilled encoder (auto: where "
                             "it ships one; ~4x cheaper) or the VAE's encoder it was distilled from")
    parser.add_argument("--log-level", default="INFO")
    # internal: how the broker starts its workers
    parser.add_argument("--worker-of", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-name", default="w0", help=argparse.SUPPRESS)


# options of the broker itself (or set per worker): every other `spatia serve` option is passed on to the workers
BROKER_ONLY = frozenset({"help", "bind", "keys", "workers", "worker_of", "worker_name", "threads"})


def worker_options(args: argparse.Namespace) -> list[str]:
    """The command-line options a broker's worker gets: all of the broker's own but BROKER_ONLY, as given."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out: list[str] = []
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if action.dest in BROKER_ONLY or not action.option_strings or value is None:
            continue
        if action.nargs == 0:  # a flag
            out += [action.option_strings[0]] if value else []
        else:
            out += [action.option_strings[0], str(value)]
    return out


def run(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    if args.short_chunk_steps < 0:
        print(f"error: --short-chunk-steps must be >= 0, got {args.short_chunk_steps}", file=sys.stderr)
        return 2
    if args.workers > 1 and not args.worker_of:
        return run_broker(args)
    return run_worker(args)


def _load_model(args):
    import logging

    import torch

    from engine.model.backends import apply_backend, warm_up
    from engine.pipeline import WorldModel
    from engine.runtime import set_threads, tune_process

    tune_process()
    set_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = WorldModel.load(args.model, device=device, dit_dtype=getattr(torch, args.dtype),
                            control_encoder=args.control_encoder)
    model.dit, backend = apply_backend(model.dit, model.cfg, args.backend)
    if backend != "eager":  # compiled graphs are built now, not in the middle of someone's walk
        logging.getLogger("spatia.serve").info("warming up the %s backend ...", backend)
        seconds = warm_up(model.dit, model.cfg)
        logging.getLogger("spatia.serve").info("warm-up took %.1f s", seconds)
    return model, backend


def run_worker(args: argparse.Namespace) -> int:
    import signal
    import threading

    import zmq

    from engine.pipeline import SessionOptions
    from engine.server.security import SecurityError
    from engine.server.server import GenerationServer
    from engine.server.transport import RouterTransport, WorkerTransport
    from engine.server.protocol import MAX_MESSAGE_BYTES

    try:
        model, backend = _load_model(args)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    context = zmq.Context()
    try:
        if args.worker_of:
            transport = WorkerTransport(context, args.worker_of, args.worker_name)
        else:
            transport = RouterTransport(context, args.bind, keys_dir=args.keys, max_message_bytes=MAX_MESSAGE_BYTES)
    except (SecurityError, zmq.ZMQError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    server = GenerationServer(model, transport, args.sessions, backend=backend, resume=args.resume,
                              options=SessionOptions(retrieval=args.retrieval), short_chunks=not args.no_short_chunks,
                              short_chunk_steps=args.short_chunk_steps or None,
                              short_chunk_previous_refs=args.short_chunk_refs == "previous",
                              status_name=f"status-{args.worker_name}.json" if args.worker_of else "status.json")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"READY {getattr(transport, 'address', args.worker_of)} model={model.name} backend={backend}", flush=True)
    try:
        server.serve_forever(stop)
    finally:
        server.close()
        context.term()
    return 0


def run_broker(args: argparse.Namespace) -> int:
    import signal
    import subprocess
    import tempfile
    import threading

    import zmq

    from engine.server.broker import Broker
    from engine.server.protocol import MAX_MESSAGE_BYTES
    from engine.server.security import SecurityError

    context = zmq.Context()
    backend_dir = tempfile.mkdtemp(prefix="spatia-broker-")
    try:
        broker = Broker(context, args.bind, f"ipc://{backend_dir}/workers", keys_dir=args.keys,
                        max_message_bytes=MAX_MESSAGE_BYTES)
    except (SecurityError, zmq.ZMQError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    workers = []
    for i in range(args.workers):
        env = dict(os.environ)
        if "CUDA_VISIBLE_DEVICES" not in env:
            import torch

            if torch.cuda.device_count() > 1:
                env["CUDA_VISIBLE_DEVICES"] = str(i % torch.cuda.device_count())  # one GPU per worker
        cmd = [sys.executable, "-m", "engine.cli", "serve", *worker_options(args), "--worker-of",
               broker.backend_address, "--worker-name", f"w{i}", "--threads", str(threads)]
        workers.append(subprocess.Popen(cmd, env=env))
    signal.signal(signal.SIGTERM, lambda *_: broker.stop_event.set())
    signal.signal(signal.SIGINT, lambda *_: broker.stop_event.set())
    print(f"READY {broker.frontend_address} workers={args.workers}", flush=True)
    try:
        broker.run()
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            try:
                w.wait(10)
            except subprocess.TimeoutExpired:
                w.kill()
        broker.close()
        context.term()
        Path(backend_dir, "workers").unlink(missing_ok=True)
        os.rmdir(backend_dir)
    return 0
