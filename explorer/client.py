"""Talking to the generation server: the socket and its reconnects, what to stream, and the local server process.

`Client` is one ZeroMQ DEALER socket with a stable identity: a random hex session key chosen once per explorer run
and kept across reconnects, because the server keys sessions by it (and a restarted server restores the session
of an identity it has autosaved). It says Hello, remembers the message that opened the session, sends heartbeats
while connected, and watches the link: a socket monitor reports a dropped TCP connection at once, and silence
longer than `reconnect_s` counts as lost too. A lost link is rebuilt as a new socket with the same identity, then
Hello; the Capabilities answer is followed by Resync (the server sends the full memory), and if the server no
longer knows the session, the open message is sent again. The app reads `state` for the HUD
(connecting / connected / waiting / reconnecting) and `notices` for the status line.

`PoseStreamer` decides when to send a Trajectory: when the input changes the camera's predicted path, and when
the server's queue of poses runs low while the camera keeps moving; never when the camera rests. `LocalServer`
runs `spatia serve` as a child process and stops it on exit.
"""

from __future__ import annotations

import copy
import enum
import math
import secrets
import socket
import subprocess
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from engine.geometry import pose_distance
from engine.server.protocol import (MAX_MESSAGE_BYTES, Ack, Capabilities, Error, ErrorCode, Frame, Heartbeat, Hello,
                                    MemoryDelta, Message, ProtocolError, Resync, Trajectory, decode, encode)

CLIENT_NAME = "spatia-explorer 0.1.0"
OPEN_TYPES = frozenset({"open_procedural", "open_image", "open_points", "open_release", "load"})


class LinkState(enum.Enum):
    CONNECTING = "connecting"  # a socket is up and Hello sent; no Capabilities yet since the explorer started
    CONNECTED = "connected"
    WAITING = "waiting"  # connected, but the server has been silent for a while (busy, or going away)
    RECONNECTING = "reconnecting"  # the link was lost: a new socket with the same identity is trying


@dataclass
class ClientConfig:
    """Timing of the link; the server sends a heartbeat about every second while idle."""

    heartbeat_s: float = 1.0  # send a heartbeat when nothing was sent for this long (while connected)
    waiting_s: float = 3.0  # silence after which the HUD says "waiting"
    reconnect_s: float = 10.0  # silence after which the socket is rebuilt (generation steps can be slow on CPU)
    reconnect_ivl_ms: int = 100  # ZeroMQ's retry interval while the server is down ...
    reconnect_ivl_max_ms: int = 2000  # ... backing off to this
    send_hwm: int = 200  # messages queued while disconnected; beyond, sends are dropped rather than blocking
    max_messages_per_poll: int = 256  # bounds one poll, so a flood of frames cannot stall a drawn frame

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_s <= self.waiting_s <= self.reconnect_s:
            raise ValueError(f"need 0 < heartbeat_s <= waiting_s <= reconnect_s, got {self.heartbeat_s}, "
                             f"{self.waiting_s}, {self.reconnect_s}")


def load_client_keys(socket_: zmq.Socket, keys_dir: str | Path) -> None:
    """CURVE for a client socket from the layout `spatia keys DIR` writes (client.key_secret and server.key)."""
    root = Path(keys_dir)
    secret_file, server_file = root / "client.key_secret", root / "server.key"
    for path in (secret_file, server_file):
        if not path.is_file():
            raise FileNotFoundError(f"missing key file {path} (make keys with `spatia keys DIR`)")
    public, secret = zmq.auth.load_certificate(secret_file)
    if secret is None:
        raise ValueError(f"{secret_file} holds no secret key")
    server_public, _ = zmq.auth.load_certificate(server_file)
    socket_.curve_secretkey, socket_.curve_publickey, socket_.curve_serverkey = secret, public, server_public


class Client:
    """One DEALER socket to the server with a stable identity, heartbeats, reconnect and session resume."""

    MONITORED = (zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                 | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)

    def __init__(self, address: str, keys_dir: str | Path | None = None, identity: bytes | None = None,
                 config: ClientConfig | None = None, clock: Callable[[], float] = time.monotonic,
                 context: zmq.Context | None = None):
        self.address = address
        self.keys_dir = keys_dir
        self.identity = identity or secrets.token_hex(16).encode()  # the session key, kept across reconnects
        self.config = config or ClientConfig()
        self.clock = clock
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.socket: zmq.Socket | None = None
        self.monitor: zmq.Socket | None = None
        self.state = LinkState.CONNECTING
        self.capabilities: Capabilities | None = None
        self.open_message: Message | None = None  # what opened the session, sent again if the server lost it
        self.session_open = False
        self.have_version = -1  # memory version the viewer holds (the app keeps it current; Resync reports it)
        self.reconnects = 0
        self.sent = self.received = self.dropped_sends = 0
        self.notices: list[str] = []  # for the status line; the app drains it
        self._ever_connected = False
        self._resyncing = False
        self._handshaking = False
        self._heartbeat_seq = 0
        self._connect()

    # ----------------------------------------------------------------------------------------- socket
    def _connect(self) -> None:
        self._close_socket()
        s = self.context.socket(zmq.DEALER)
        s.setsockopt(zmq.IDENTITY, self.identity)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        s.setsockopt(zmq.SNDHWM, self.config.send_hwm)
        s.setsockopt(zmq.RECONNECT_IVL, self.config.reconnect_ivl_ms)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, self.config.reconnect_ivl_max_ms)
        if self.keys_dir:
            load_client_keys(s, self.keys_dir)
        self.monitor = s.get_monitor_socket(self.MONITORED)
        s.connect(self.address)
        self.socket = s
        now = self.clock()
        self._last_recv = self._last_send = self._socket_since = now
        self._resyncing = False
        self._say_hello()

    def _close_socket(self) -> None:
        if self.socket is not None:
            try:
                self.socket.disable_monitor()
            except zmq.ZMQError:
                pass
            self.socket.close(0)
            self.socket = None
        if self.monitor is not None:
            self.monitor.close(0)
            self.monitor = None

    def _reconnect(self, why: str) -> None:
        self.reconnects += 1
        self.state = LinkState.RECONNECTING if self._ever_connected else LinkState.CONNECTING
        self.notices.append(f"{why}: reconnecting to {self.address}")
        self._connect()

    def _say_hello(self) -> None:
        self._handshaking = True
        self.send(Hello(client=CLIENT_NAME))

    def close(self) -> None:
        self._close_socket()
        if self._own_context:
            self.context.term()

    # ----------------------------------------------------------------------------------------- sending
    def send(self, msg: Message) -> bool:
        """Queue a message (never blocks); False when the send queue is full (the server is away)."""
        try:
            self.socket.send_multipart(encode(msg), copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:
            self.dropped_sends += 1
            return False
        self.sent += 1
        self._last_send = self.clock()
        return True

    def open(self, msg: Message) -> bool:
        """Open a session (an Open* or Load message), remembered so a lost session can be opened again."""
        if msg.type not in OPEN_TYPES:
            raise ValueError(f"open() takes one of {sorted(OPEN_TYPES)}, got {msg.type!r}")
        self.open_message = msg
        self.session_open = False
        return self.send(msg)

    # ----------------------------------------------------------------------------------------- receiving
    def poll(self, timeout_ms: int = 0) -> list[Message]:
        """Messages that arrived (waiting up to timeout_ms for the first); runs heartbeats and reconnects.

        Heartbeats are consumed here; everything else is returned in arrival order, including the Capabilities
        of every (re)connection and Errors (for the app to show). Undecodable messages become notices.
        """
        self._check_monitor()
        out: list[Message] = []
        if self.socket.poll(timeout_ms, zmq.POLLIN):
            for _ in range(self.config.max_messages_per_poll):
                try:
                    frames = self.socket.recv_multipart(copy=False, flags=zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._last_recv = self.clock()
                self.received += 1
                try:
                    msg = decode(frames)
                except ProtocolError as e:
                    self.notices.append(f"bad message from the server ({e})")
                    continue
                if self._handle(msg):
                    out.append(msg)
        self._check_silence()
        return out

    def _handle(self, msg: Message) -> bool:
        """Session bookkeeping for one message; False for the ones consumed here (heartbeats)."""
        if isinstance(msg, Heartbeat):
            return False
        if isinstance(msg, Capabilities):
            first = not self._ever_connected
            self.capabilities, self._ever_connected, self._handshaking = msg, True, False
            self.state = LinkState.CONNECTED
            if self.session_open:  # a reconnection: ask for the session's memory as the server has it
                self._resyncing = True
                self.send(Resync(have_version=self.have_version))
                self.notices.append("reconnected: resuming the session")
            elif not first:
                self.notices.append("reconnected")
        elif isinstance(msg, Ack) and msg.ref_type in OPEN_TYPES:
            self.session_open = True
        elif isinstance(msg, MemoryDelta) and msg.full and self._resyncing:
            self._resyncing = False
            self.notices.append("session resumed")
        elif isinstance(msg, Error) and msg.code == ErrorCode.NO_SESSION:
            self._on_no_session(msg)
        return True

    def _on_no_session(self, err: Error) -> None:
        if self.open_message is None or err.ref_type in OPEN_TYPES:
            return  # nothing to resume, or the open itself failed: the app reports it
        if self._resyncing or err.ref_type == "resync":
            self._resyncing = False
            self.session_open = False
            self.notices.append("the server lost the session: opening it again")
            self.send(self.open_message)
        elif not self._handshaking:  # a server that restarted without us noticing: say hello, then resync
            self.session_open = True
            self._say_hello()

    def _check_monitor(self) -> None:
        while self.monitor is not None:
            try:
                event = recv_monitor_message(self.monitor, flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            kind = event["event"]
            if kind == zmq.EVENT_DISCONNECTED:
                self._reconnect("lost the server")
                return  # the new socket has its own monitor
            if kind in (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                        zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
                self.notices.append(f"secure handshake with {self.address} failed: check the keys (--keys)")

    def _check_silence(self) -> None:
        now = self.clock()
        silence = now - self._last_recv
        if silence > self.config.reconnect_s:
            self._reconnect(f"no answer for {silence:.0f} s")
            return
        if self.state in (LinkState.CONNECTED, LinkState.WAITING):
            self.state = LinkState.WAITING if silence > self.config.waiting_s else LinkState.CONNECTED
            if now - self._last_send >= self.config.heartbeat_s:
                self._heartbeat_seq += 1
                self.send(Heartbeat(t=now, seq=self._heartbeat_seq))

    @property
    def silence_s(self) -> float:
        return self.clock() - self._last_recv


# --------------------------------------------------------------------------------------------- pose stream
class Camera(Protocol):
    """What PoseStreamer needs of the camera controller (explorer.camera.CameraController)."""

    moving: bool

    def predict(self, n: int, fps: float) -> np.ndarray: ...

    def update(self, dt: float) -> None: ...


@dataclass
class StreamConfig:
    """When trajectory chunks go out."""

    chunks_ahead: int = 2  # poses per Trajectory, in server chunks
    min_interval_s: float = 0.05  # a changed path follows an input-driven chunk at most this often
    position_tol_m: float = 0.02  # the path changed if a predicted camera centre moved more than this ...
    angle_tol_deg: float = 1.0  # ... or a predicted view turned more than this
    stall_s: float = 3.0  # a change waits for the previous input-driven chunk's first frame at most this long
    keep_chunks: int = 64  # chunks remembered for latency and frame counting

    def __post_init__(self) -> None:
        if self.chunks_ahead < 1 or self.min_interval_s < 0 or self.stall_s < 0:
            raise ValueError("need chunks_ahead >= 1, min_interval_s >= 0 and stall_s >= 0")


@dataclass
class SentChunk:
    seq: int
    t_sent: float  # client clock when sent; pose i is meant for t_sent + (i + 1) / fps
    w2c: np.ndarray  # [N, 4, 4] the predicted poses (viewer world)
    t_input: float
    input_driven: bool  # sent because the input changed (its first frame measures motion-to-frame latency)
    camera: Camera  # a copy of the camera when sent: with unchanged input it predicts the same path at any time
    sent_w2c: np.ndarray  # [N, 4, 4] the poses as sent (the server's world): frames carry one of them
    received: int = 0  # frames of this chunk
    answered: int = 0  # poses up to the newest one a frame answered (the server skips poses it already generated)
    latency_measured: bool = False
    t_real_sent: float = field(default_factory=time.perf_counter)  # wall clock, for runs on a simulated clock


class PoseStreamer:
    """Turns the camera's predicted path into Trajectory chunks: on input changes and to keep the server fed.

    - A chunk holds `chunks_ahead * chunk_frames` poses from `camera.predict` at the server's fps.
    - After an input event, the new prediction is compared with the path the last chunk implied (a copy of the
      camera as it was when sent, advanced to now in closed form); if they differ by more than the tolerances, it
      is sent at once, cancelling the clip in flight, unless that clip itself answers an input: then the change
      waits until it shows its first frame (or `stall_s` passed) and `min_interval_s` since it went out, so
      continuous mouse motion still gets frames (a newer chunk makes the server abandon the clip in flight, and
      sending on every mouse event would starve it). At most one unanswered input-driven chunk is in flight.
    - While the camera moves, a new chunk goes out when fewer than `chunk_frames` poses of the current one are
      unanswered (its last clip is being decoded). A pose counts as answered once a frame of it or of a later pose
      came (the server skips poses of a continuing path that it had generated already).
    - A resting camera sends nothing once its final path is out: the server idles.
    """

    def __init__(self, config: StreamConfig | None = None):
        self.config = config or StreamConfig()
        self.fps: float | None = None
        self.chunk_frames = 1
        self.intrinsics: np.ndarray | None = None
        self.seq = 0
        self.chunks: OrderedDict[int, SentChunk] = OrderedDict()
        self.current: SentChunk | None = None
        self.input_dirty = False
        self.input_t = 0.0
        self.sent = 0

    def configure(self, fps: float, chunk_frames: int, intrinsics: np.ndarray) -> None:
        """The server's generation rate and chunk size, and the session's normalised intrinsics [4]."""
        if not fps > 0 or chunk_frames < 1:
            raise ValueError(f"need fps > 0 and chunk_frames >= 1, got {fps}, {chunk_frames}")
        self.fps, self.chunk_frames = float(fps), int(chunk_frames)
        self.intrinsics = np.asarray(intrinsics, np.float64).reshape(4)

    def reset(self) -> None:
        """Forget what was sent (the server restarted or the session was reopened); seq keeps growing."""
        self.current = None
        self.chunks.clear()

    def note_input(self, t: float) -> None:
        """An input event at client time t that may change the path (key, mouse motion, wheel)."""
        if not self.input_dirty:
            self.input_t = t  # latency counts from the first input the next chunk answers
        self.input_dirty = True

    @property
    def pending(self) -> int:
        """Poses of the newest chunk not yet answered by a frame (the server's queue)."""
        return 0 if self.current is None else max(0, len(self.current.w2c) - self.current.answered)

    def covered_until(self) -> float:
        """Client time of the newest answered pose along the path (how far generation has caught up)."""
        cur = self.current
        if cur is None or self.fps is None:
            return math.inf
        return cur.t_sent + cur.answered / self.fps

    def update(self, camera: Camera, now: float,
               to_server: Callable[[np.ndarray], np.ndarray] = lambda w2c: w2c) -> Trajectory | None:
        """The chunk to send now, or None. `to_server` maps viewer-world poses [N, 4, 4] to the server's world."""
        if self.fps is None:
            return None
        c, cur = self.config, self.current
        n = c.chunks_ahead * self.chunk_frames
        if cur is None:
            if not (camera.moving or self.input_dirty):
                return None
            return self._send(camera, n, now, to_server, input_driven=self.input_dirty)
        since = now - cur.t_sent
        if self.input_dirty:
            if cur.input_driven:  # the clip in flight answers an earlier input: let it show frames first
                answered = cur.received > 0 or since >= c.stall_s
                if since < c.min_interval_s or not answered:
                    return None
            if self._differs(camera, n, now):
                return self._send(camera, n, now, to_server, input_driven=True)
            self.input_dirty = False
        if camera.moving and len(cur.w2c) - cur.answered < self.chunk_frames:
            return self._send(camera, n, now, to_server, input_driven=False)
        return None

    def _differs(self, camera: Camera, n: int, now: float) -> bool:
        """Does the camera's path over the next n frames leave the one the last chunk implied?"""
        cur = self.current
        then = copy.deepcopy(cur.camera)
        then.update(max(0.0, now - cur.t_sent))  # closed form: the old input carried on until now
        moved, turned = pose_distance(camera.predict(n, self.fps), then.predict(n, self.fps))  # [n] each
        return bool(moved.max() > self.config.position_tol_m or turned.max() > self.config.angle_tol_deg)

    def _send(self, camera: Camera, n: int, now: float, to_server, input_driven: bool) -> Trajectory:
        self.seq += 1
        t_input = self.input_t if input_driven else now
        poses = camera.predict(n, self.fps)  # [n, 4, 4]
        traj = Trajectory(seq=self.seq, w2c=to_server(poses), intrinsics=self.intrinsics, t_input=t_input)
        self.current = SentChunk(self.seq, now, poses, t_input, input_driven, copy.deepcopy(camera),
                                 np.asarray(traj.w2c, np.float64))
        self.chunks[self.seq] = self.current
        while len(self.chunks) > self.config.keep_chunks:
            self.chunks.popitem(last=False)
        self.input_dirty = False
        self.sent += 1
        return traj

    def on_frame(self, frame: Frame) -> None:
        """Count a received frame against the chunk it answers."""
        chunk = self.chunks.get(frame.seq)
        if chunk is not None:
            chunk.received += 1
            # the pose this frame shows: frames carry their pose as sent and come in order, and the server may
            # skip poses it had generated (a repeated pose, as at the end of a path coming to rest, counts once)
            rest = chunk.sent_w2c[chunk.answered:]
            if len(rest):
                error = np.abs(rest - np.asarray(frame.w2c)).reshape(len(rest), -1).max(1)
                chunk.answered += int(np.argmin(error)) + 1

    def latency(self, frame: Frame, now: float) -> tuple[float, float] | None:
        """For the first shown frame of an input-driven chunk: (seconds from the input to the screen on the app's
        clock, wall-clock seconds from sending the chunk to the screen); None for any other frame."""
        chunk = self.chunks.get(frame.seq)
        if chunk is None or not chunk.input_driven or chunk.latency_measured:
            return None
        chunk.latency_measured = True
        return now - frame.t_input, time.perf_counter() - chunk.t_real_sent


# --------------------------------------------------------------------------------------------- local server
def free_tcp_address(host: str = "127.0.0.1") -> str:
    """A tcp:// address on a port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return f"tcp://{host}:{s.getsockname()[1]}"


@dataclass
class LocalServer:
    """The generation server as a child process, started by the explorer and stopped when it exits.

    `argv(address, resume)` builds the command line; `spatia_serve` gives the shipped one
    (`python -m engine.cli serve --model M --bind ADDRESS --sessions DIR [--resume]`). Its output goes to
    `log_path`, whose tail is shown when the server fails.
    """

    argv: Callable[[str, bool], Sequence[str]]
    log_path: Path
    address: str = field(default_factory=free_tcp_address)
    process: subprocess.Popen | None = None
    starts: int = 0
    env: dict[str, str] | None = None  # the child's environment (None: this process's)

    @classmethod
    def spatia_serve(cls, model: str, sessions_dir: str | Path, log_path: str | Path,
                     extra_args: Sequence[str] = (), env: dict[str, str] | None = None) -> "LocalServer":
        sessions = str(sessions_dir)

        def argv(address: str, resume: bool) -> list[str]:
            cmd = [sys.executable, "-m", "engine.cli", "serve", "--model", model, "--bind", address,
                   "--sessions", sessions, *extra_args]
            return cmd + (["--resume"] if resume else [])

        return cls(argv, Path(log_path), env=env)

    def start(self, resume: bool = False) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(list(self.argv(self.address, resume)), stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT, env=self.env)
        self.starts += 1

    def poll(self) -> int | None:
        """The exit code if the server has exited, else None."""
        return None if self.process is None else self.process.poll()

    def restart(self) -> None:
        """Start again on the same address, resuming the autosaved sessions."""
        self.stop()
        self.start(resume=True)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate (then kill after timeout_s) the child, if it runs."""
        p, self.process = self.process, None
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""
