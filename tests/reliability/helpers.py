"""Shared parts of the reliability tests: a real `spatia serve` child, an in-process server, a raw protocol client."""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import zmq

from engine import geometry
from engine.bench.e2e import read_rss_bytes
from engine.server import protocol as P
from explorer.client import free_tcp_address

INTR = geometry.fov_to_intrinsics(65.0)


class ServerProc:
    """`spatia serve` on a free loopback port; stdout gives READY, stderr goes to a log file for diagnosis."""

    def __init__(self, checkpoint, sessions, log_path, extra=(), address=None):
        self.address = address or free_tcp_address()
        self.checkpoint, self.sessions, self.log_path = checkpoint, sessions, Path(log_path)
        cmd = [sys.executable, "-m", "engine.cli", "serve", "--model", str(checkpoint), "--bind", self.address,
               "--sessions", str(sessions), "--backend", "eager", "--threads", "1", "--log-level", "WARNING", *extra]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line}{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss(self) -> int:
        return read_rss_bytes(self.proc.pid)

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)
        self.proc.stdout.close()

    def __enter__(self) -> "ServerProc":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class RawClient:
    """A DEALER socket speaking the protocol, for tests that need exact control over what is sent and read."""

    def __init__(self, ctx, address, identity=None, rcvhwm=None, rcvbuf=None):
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if identity:
            self.sock.setsockopt(zmq.IDENTITY, identity)
        if rcvhwm is not None:
            self.sock.setsockopt(zmq.RCVHWM, rcvhwm)
        if rcvbuf is not None:
            self.sock.setsockopt(zmq.RCVBUF, rcvbuf)
        self.sock.connect(address)

    def send(self, msg):
        self.sock.send_multipart(P.encode(msg))

    def recv(self, timeout=30.0):
        if not self.sock.poll(int(timeout * 1000)):
            raise TimeoutError("no reply from the server")
        return P.decode(self.sock.recv_multipart())

    def recv_until(self, pred, timeout=60.0):
        """Messages up to and including the first one for which pred(msg) is true."""
        got = []
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(max(0.05, deadline - time.monotonic()))
            got.append(msg)
            if pred(msg):
                return got

    def recv_path(self, frames, timeout=60.0):
        """Messages until `frames` frames have come and the clip that completes them is done (a path from rest
        arrives as a short first chunk and the rest)."""
        got = []
        while sum(m.type == "frame" for m in got) < frames:
            got += self.recv_until(lambda m: m.type == "clip_done", timeout)
        return got

    def drain(self, quiet_s=1.0):
        """Everything that arrives until the server has been quiet for quiet_s."""
        got = []
        with contextlib.suppress(TimeoutError):
            while True:
                got.append(self.recv(quiet_s))
        return got

    def close(self):
        self.sock.close(0)

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def kill_and_resume(server, client, ctx, identity, have_version):
    """SIGKILL `server`, start it again with --resume on the same sessions, reconnect as `identity` and resync.
    -> (server, client, the full memory delta it sent), that delta checked to be the state at `have_version`."""
    server.stop(signal.SIGKILL)
    client.close()
    assert server.proc.returncode == -signal.SIGKILL
    server = ServerProc(server.checkpoint, server.sessions, server.log_path, extra=["--resume"])
    client = RawClient(ctx, server.address, identity)
    try:
        client.send(P.Resync(have_version=have_version))
        full = client.recv()
        assert full.type == "memory_delta" and full.full and full.version_to == have_version
    except BaseException:
        client.close()
        server.stop()
        raise
    return server, client, full


def open_session(client, seed=1):
    client.send(P.Hello(client="reliability-test"))
    caps = client.recv()
    assert caps.type == "capabilities"
    client.send(P.OpenProcedural(seed=seed))
    ack, full, start = client.recv(), client.recv(), client.recv()
    assert (ack.type, full.type, start.type) == ("ack", "memory_delta", "frame"), (ack, full, start)
    return caps, full, start


def image_open_message(seed=1, size=32):
    """OpenImage of a seeded random picture on a wall 3 m away (no GL: in-process servers run in a thread, and
    the procedural world's EGL context belongs to the first thread that made one)."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    w2c = geometry.look_at(np.array([0.0, 1.6, 0.0]), np.array([0.0, 1.6, 3.0]))
    return P.OpenImage(rgb=rgb, depth=np.full((size, size), 3.0, np.float32), w2c=w2c, intrinsics=INTR)


def open_image_session(client, seed=1):
    client.send(P.Hello(client="reliability-test"))
    caps = client.recv()
    assert caps.type == "capabilities"
    client.send(image_open_message(seed, caps.width))
    ack, full, start = client.recv(), client.recv(), client.recv()
    assert (ack.type, full.type, start.type) == ("ack", "memory_delta", "frame"), (ack, full, start)
    return caps, full, start


def forward_poses(start_w2c, n, step=0.04, offset=1):
    """n poses walking forward along the start camera's view direction."""
    out = []
    for i in range(offset, offset + n):
        c2w = geometry.invert_se3(start_w2c)
        c2w[:3, 3] += c2w[:3, 2] * step * i
        out.append(geometry.invert_se3(c2w))
    return np.stack(out)


def yawed(poses, deg_per_frame, offset=0):
    """The same camera centres, pose i turned (yaw about its own up axis) by deg_per_frame * (i + offset)."""
    out = []
    for i, w2c in enumerate(poses):
        c2w = geometry.invert_se3(w2c)
        a = np.radians(deg_per_frame * (i + offset))
        rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        c2w[:3, :3] = c2w[:3, :3] @ rot
        out.append(geometry.invert_se3(c2w))
    return np.stack(out)


def turn_poses(start_w2c, n, deg_per_frame=6.0, offset=1):
    """n poses turning on the spot from the start camera: each shows new space."""
    return yawed(np.repeat(np.asarray(start_w2c)[None], n, 0), deg_per_frame, offset)


@contextlib.contextmanager
def inproc_server(checkpoint, sessions, address="tcp://127.0.0.1:*", send_hwm=None, **kwargs):
    """A GenerationServer in a thread of this process (for settings `spatia serve` does not expose)."""
    import torch

    from engine.pipeline import WorldModel
    from engine.server.server import GenerationServer
    from engine.server.transport import RouterTransport

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the cores are shared; and this is what the server processes of the tests use
    context = zmq.Context()
    transport = RouterTransport(context, address, **({} if send_hwm is None else {"send_hwm": send_hwm}))
    server = GenerationServer(WorldModel.load(checkpoint), transport, sessions, **kwargs)
    stop = threading.Event()
    failure = []

    def loop():
        try:
            server.serve_forever(stop, idle_poll_ms=20)
        except BaseException as e:  # noqa: BLE001 - reported to the test, which fails on it
            failure.append(e)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    server.failure = failure
    try:
        yield server
    finally:
        stop.set()
        thread.join(30)
        server.close()
        context.term()
        torch.set_num_threads(threads)
    assert not failure, f"the server loop died: {failure[0]!r}"


def wait_for(pred, timeout=30.0, every=0.05):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(every)


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
