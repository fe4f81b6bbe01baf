"""Protocol overhead: a 256x256 RGB frame through encode -> ZeroMQ -> decode, against the same bytes over raw ZeroMQ.

Both paths run in the same process over the same loopback TCP pair of sockets (DEALER -> ROUTER -> DEALER echo in a
thread), so the difference is what the protocol adds: the msgpack header, validation and zero-copy wrapping.
`round_trip_ms_p50` is a whole request/answer: a Frame sent to an echoing peer and decoded on return.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import numpy as np
import zmq

from engine.bench.timing import machine_info
from engine.server import protocol as P


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=256, help="frame side in pixels")
    parser.add_argument("--repeat", type=int, default=2000, help="frames per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="measurements (median reported)")


def _echo(ctx: zmq.Context, address: str, stop: threading.Event) -> None:
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    while not stop.is_set():
        if poller.poll(50):
            sock.send_multipart(sock.recv_multipart(copy=False), copy=False)
    sock.close(0)


def run(args: argparse.Namespace) -> dict:
    ctx = zmq.Context()
    client = ctx.socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    port = client.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()
    echo = threading.Thread(target=_echo, args=(ctx, f"tcp://127.0.0.1:{port}", stop), daemon=True)
    echo.start()

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    frame = P.Frame(index=1, seq=1, rgb=rgb, w2c=np.eye(4), t_input=0.0, timings={"decode": 1.0})
    raw = rgb.tobytes()

    def raw_round():
        client.send(raw, copy=False)
        return client.recv(copy=False)

    def proto_round():
        client.send_multipart(P.encode(frame), copy=False)
        return P.decode(client.recv_multipart(copy=False))

    for fn in (raw_round, proto_round):  # warm up connections and caches
        for _ in range(200):
            fn()

    def per_frame_ms(fn) -> float:
        t0 = time.perf_counter()
        for _ in range(args.repeat):
            fn()
        return (time.perf_counter() - t0) * 1e3 / args.repeat

    raw_ms, proto_ms, overhead = [], [], []
    for _ in range(args.rounds):  # interleaved so both see the same machine state
        r, p = per_frame_ms(raw_round), per_frame_ms(proto_round)
        raw_ms.append(r)
        proto_ms.append(p)
        overhead.append(p - r)
    lat = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        msg = proto_round()
        lat.append((time.perf_counter() - t0) * 1e3)
    assert np.array_equal(msg.rgb, rgb)
    t0 = time.perf_counter()
    for _ in range(args.repeat):
        P.decode(P.encode(frame))
    codec_ms = (time.perf_counter() - t0) * 1e3 / args.repeat
    stop.set()
    echo.join(1)
    client.close(0)
    ctx.term()
    return {
        "frame": f"{args.size}x{args.size} RGB uint8 ({rgb.nbytes} bytes) + pose + timings",
        "raw_zmq_round_trip_ms": statistics.median(raw_ms),
        "protocol_round_trip_ms": statistics.median(proto_ms),
        # one encode (sender) and one decode (receiver) per round trip: exactly what one frame costs on top of ZeroMQ
        "overhead_ms_per_frame": statistics.median(overhead),
        "round_trip_ms_p50": statistics.median(lat),
        "round_trip_ms_p99": float(np.percentile(lat, 99)),
        "encode_decode_ms": codec_ms,
        "machine": machine_info(),
    }
