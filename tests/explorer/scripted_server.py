"""A small generation server for the explorer's tests: a real ZeroMQ ROUTER that speaks the whole protocol.

It keeps a session per client identity with a tiny deterministic memory (a red block 2 m ahead of the start
camera, a blue wall behind it at 4 m, a grey floor), answers Trajectory chunks with solid-colour frames at the
asked poses (one clip of `chunk_frames` frames at a time, the newest chunk winning between clips, optionally
slow), adds a small yellow cluster to the memory after every clip, and applies edits (remove, recolour, insert a
box, undo) to its memory, answering with Ack and MemoryDelta as the real server does. Every message it receives is
recorded for the tests to inspect. `restart()` closes and rebinds the same address, keeping sessions (like
`spatia serve --resume`) or forgetting them.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import zmq

from engine.geometry import look_at
from engine.server.protocol import (PROTOCOL_VERSION, Ack, Capabilities, ClipDone, EditInsertPrimitive, EditRecolor,
                                    EditRemoveBox, EditRemoveIds, EditUndo, Error, ErrorCode, Frame, Heartbeat, Hello,
                                    Load, MemoryDelta, Message, NewestWins, OpenPoints, Resync, Save, Trajectory,
                                    decode, encode)

RED, BLUE, GREY, YELLOW = (220, 30, 30), (40, 60, 220), (128, 128, 128), (250, 220, 0)
START_EYE, START_TARGET = np.array([0.0, 1.6, 0.0]), np.array([0.0, 1.6, 1.0])


def grid(xs, ys, fixed_axis: int, value: float) -> np.ndarray:
    """Points [N, 3] on an axis-aligned plane: the two free axes over xs and ys."""
    a, b = np.meshgrid(xs, ys, indexing="ij")
    cols = [a.ravel(), b.ravel()]
    cols.insert(fixed_axis, np.full(a.size, value))
    return np.stack(cols, 1)


def scene(voxel: float) -> tuple[np.ndarray, np.ndarray]:
    """The test world: xyz float32 [N, 3] and rgb uint8 [N, 3]."""
    block = grid(np.arange(-0.3, 0.3 + 1e-9, voxel), np.arange(1.3, 1.9 + 1e-9, voxel), 2, 2.0)
    wall = grid(np.arange(-2.0, 2.0 + 1e-9, voxel), np.arange(0.0, 3.0 + 1e-9, voxel), 2, 4.0)
    floor = grid(np.arange(-2.0, 2.0 + 1e-9, 2 * voxel), np.arange(0.5, 4.0 + 1e-9, 2 * voxel), 1, 0.0)
    xyz = np.concatenate([block, wall, floor]).astype(np.float32)
    rgb = np.concatenate([np.tile(c, (len(p), 1)) for c, p in ((RED, block), (BLUE, wall), (GREY, floor))])
    return xyz, rgb.astype(np.uint8)


@dataclass
class Session:
    ids: np.ndarray  # [N] int64
    xyz: np.ndarray  # [N, 3] float32
    rgb: np.ndarray  # [N, 3] uint8
    start_w2c: np.ndarray
    version: int = 0
    next_id: int = 0
    frame_index: int = 0
    clip: int = 0
    undo: list = field(default_factory=list)  # (ids, xyz, rgb) snapshots before each edit
    poses: NewestWins = field(default_factory=NewestWins)
    active: Trajectory | None = None
    done: int = 0  # poses of `active` already generated

    def snapshot(self):
        return self.ids.copy(), self.xyz.copy(), self.rgb.copy()


def empty_delta_parts():
    return dict(removed_ids=np.zeros(0, np.int64), recolored_ids=np.zeros(0, np.int64),
                recolored_rgb=np.zeros((0, 3), np.uint8))


class ScriptedServer:
    """A ROUTER on a thread; see the module docstring. Use as a context manager or call start()/stop()."""

    def __init__(self, address: str = "tcp://127.0.0.1:*", width: int = 64, height: int = 36, fps: float = 12.0,
                 chunk_frames: int = 4, voxel: float = 0.05, clip_delay_s: float = 0.0,
                 frame_rgb=(30, 200, 60), model: str = "scripted", heartbeat_s: float = 0.5):
        self.address, self.width, self.height, self.fps = address, width, height, fps
        self.chunk_frames, self.voxel, self.clip_delay_s = chunk_frames, voxel, clip_delay_s
        self.frame_rgb, self.model, self.heartbeat_s = frame_rgb, model, heartbeat_s
        self.context = zmq.Context()
        self.sessions: dict[bytes, Session] = {}
        self.saved: dict[str, tuple] = {}
        self.received: list[tuple[bytes, Message]] = []
        self.lock = threading.Lock()
        self.silent = False  # while true, messages are recorded but never answered (a hung server)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.socket: zmq.Socket | None = None

    # ----------------------------------------------------------------------------------------- lifecycle
    def start(self) -> "ScriptedServer":
        s = self.context.socket(zmq.ROUTER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a client reconnecting with its identity takes its session over
        s.bind(self.address)
        self.address = s.getsockopt_string(zmq.LAST_ENDPOINT)
        self.socket = s
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def restart(self, keep_sessions: bool = True, down_s: float = 0.3) -> None:
        """Close the socket (clients see the connection drop), stay down a moment, bind the same address again."""
        self.stop()
        if not keep_sessions:
            self.sessions.clear()
        time.sleep(down_s)
        self.start()

    def close(self) -> None:
        self.stop()
        self.context.term()

    def __enter__(self) -> "ScriptedServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------- inspection
    def messages(self, kind: type | None = None, identity: bytes | None = None) -> list[Message]:
        with self.lock:
            return [m for i, m in self.received
                    if (kind is None or isinstance(m, kind)) and (identity is None or i == identity)]

    def identities(self) -> list[bytes]:
        with self.lock:
            return list(dict.fromkeys(i for i, _ in self.received))

    def wait_for(self, kind: type, count: int = 1, timeout_s: float = 10.0, pump=None) -> list[Message]:
        """Block until `count` messages of `kind` were received (calling pump() meanwhile, e.g. a client poll)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = self.messages(kind)
            if len(got) >= count:
                return got
            if pump is not None:
                pump()
            else:
                time.sleep(0.01)
        raise TimeoutError(f"received {len(self.messages(kind))} {kind.__name__} messages, wanted {count}")

    # ----------------------------------------------------------------------------------------- loop
    def _run(self) -> None:
        s = self.socket
        poller = zmq.Poller()
        poller.register(s, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if poller.poll(10):
                    while True:
                        try:
                            frames = s.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._on_frames(frames[0], frames[1:])
                if not self.silent:
                    for identity, sess in list(self.sessions.items()):
                        self._generate(identity, sess)
        finally:
            s.close(0)

    def send(self, identity: bytes, msg: Message) -> None:
        self.socket.send_multipart([identity, *encode(msg)])

    def _on_frames(self, identity: bytes, frames) -> None:
        try:
            msg = decode(frames)
        except Exception as e:  # noqa: BLE001 - a test server reports any decode fault to its client
            self.send(identity, Error(code=ErrorCode.MALFORMED, message=str(e)))
            return
        with self.lock:
            self.received.append((identity, msg))
        if not self.silent:
            self._handle(identity, msg)

    def _handle(self, identity: bytes, msg: Message) -> None:
        sess = self.sessions.get(identity)
        if isinstance(msg, Hello):
            self.send(identity, Capabilities(protocol_version=PROTOCOL_VERSION, model=self.model, backend="numpy",
                                             width=self.width, height=self.height, fps=self.fps,
                                             chunk_frames=self.chunk_frames, saved_sessions=sorted(self.saved)))
        elif isinstance(msg, Heartbeat):
            self.send(identity, Heartbeat(t=time.monotonic(), seq=msg.seq))
        elif msg.type.startswith("open_"):
            if isinstance(msg, OpenPoints):
                xyz, rgb = np.asarray(msg.xyz, np.float32), np.asarray(msg.rgb, np.uint8)
            else:
                xyz, rgb = scene(self.voxel)
            w2c = np.asarray(getattr(msg, "w2c", look_at(START_EYE, START_TARGET)), np.float64)
            w2c = w2c[0] if w2c.ndim == 3 else w2c
            sess = Session(np.arange(len(xyz), dtype=np.int64), xyz, rgb, w2c, version=1, next_id=len(xyz))
            self.sessions[identity] = sess
            self._opened(identity, sess, msg.type)
        elif isinstance(msg, Load):
            if msg.name not in self.saved:
                self.send(identity, Error(code=ErrorCode.NOT_FOUND, message=f"no saved session {msg.name!r}",
                                          ref_type="load"))
                return
            ids, xyz, rgb, w2c = self.saved[msg.name]
            sess = Session(ids.copy(), xyz.copy(), rgb.copy(), w2c.copy(), version=1, next_id=int(ids.max()) + 1)
            self.sessions[identity] = sess
            self._opened(identity, sess, "load")
        elif sess is None:
            self.send(identity, Error(code=ErrorCode.NO_SESSION, message="open a session first", ref_type=msg.type))
        elif isinstance(msg, Resync):
            self.send(identity, self._full(sess))
        elif isinstance(msg, Trajectory):
            sess.poses.offer(msg)
        elif isinstance(msg, Save):
            self.saved[msg.name] = (*sess.snapshot(), sess.start_w2c.copy())
            self.send(identity, Ack(ref_type="save", message=f"saved {msg.name}"))
        elif isinstance(msg, (EditRemoveIds, EditRecolor, EditInsertPrimitive, EditRemoveBox, EditUndo)):
            self._edit(identity, sess, msg)
        else:
            self.send(identity, Error(code=ErrorCode.INVALID, message=f"unexpected {msg.type}", ref_type=msg.type))

    def _opened(self, identity: bytes, sess: Session, ref_type: str) -> None:
        self.send(identity, Ack(ref_type=ref_type, message="session open"))
        self.send(identity, self._full(sess))
        self.send(identity, Frame(index=0, seq=0, rgb=self._image(), w2c=sess.start_w2c))
        sess.frame_index = 1

    def _full(self, sess: Session) -> MemoryDelta:
        return MemoryDelta(version_from=0, version_to=sess.version, full=True, voxel_size=self.voxel,
                           added_ids=sess.ids, added_xyz=sess.xyz, added_rgb=sess.rgb, **empty_delta_parts())

    def _image(self) -> np.ndarray:
        img = np.zeros((self.height, self.width, 3), np.uint8)
        img[:] = self.frame_rgb
        return img

    # ----------------------------------------------------------------------------------------- generation
    def _generate(self, identity: bytes, sess: Session) -> None:
        newer = sess.poses.take()
        if newer is not None:
            sess.active, sess.done = newer, 0  # the newest chunk replaces the rest of the old one
        traj = sess.active
        if traj is None:
            return
        if self.clip_delay_s:
            time.sleep(self.clip_delay_s)
        poses = traj.w2c[sess.done: sess.done + self.chunk_frames]
        first = sess.frame_index
        for w2c in poses:
            self.send(identity, Frame(index=sess.frame_index, seq=traj.seq, rgb=self._image(), w2c=w2c,
                                      t_input=traj.t_input, timings={"generate": 1.0}))
            sess.frame_index += 1
        sess.done += len(poses)
        # the clip's memory update: a small yellow cluster 1.5 m ahead of the clip's last camera
        c2w = np.linalg.inv(poses[-1])
        centre = c2w[:3, 3] + 1.5 * c2w[:3, 2]
        add = (centre + np.random.default_rng(sess.clip).normal(0, 0.05, (8, 3))).astype(np.float32)
        self._commit(identity, sess, added=add, added_rgb=np.tile(np.array(YELLOW, np.uint8), (8, 1)))
        self.send(identity, ClipDone(clip=sess.clip, seq=traj.seq, first_frame=first, num_frames=len(poses),
                                     memory_version=sess.version, timings={"generate": 1.0}))
        sess.clip += 1
        if sess.done >= len(traj.w2c):
            sess.active = None

    def _commit(self, identity: bytes, sess: Session, removed=None, recolored=None, recolor_rgb=None, added=None,
                added_rgb=None) -> None:
        """Apply a change to the session's memory and send its incremental delta."""
        removed = np.zeros(0, np.int64) if removed is None else np.asarray(removed, np.int64)
        recolored = np.zeros(0, np.int64) if recolored is None else np.asarray(recolored, np.int64)
        recolor_rgb = np.zeros((0, 3), np.uint8) if recolor_rgb is None else np.asarray(recolor_rgb, np.uint8)
        added = np.zeros((0, 3), np.float32) if added is None else np.asarray(added, np.float32)
        added_rgb = np.zeros((0, 3), np.uint8) if added_rgb is None else np.asarray(added_rgb, np.uint8)
        keep = ~np.isin(sess.ids, removed)
        sess.ids, sess.xyz, sess.rgb = sess.ids[keep], sess.xyz[keep], sess.rgb[keep]
        rows = np.searchsorted(sess.ids, recolored)
        sess.rgb[rows] = recolor_rgb
        new_ids = np.arange(sess.next_id, sess.next_id + len(added), dtype=np.int64)
        sess.next_id += len(added)
        sess.ids = np.concatenate([sess.ids, new_ids])
        sess.xyz = np.concatenate([sess.xyz, added])
        sess.rgb = np.concatenate([sess.rgb, added_rgb])
        order = np.argsort(sess.ids)
        sess.ids, sess.xyz, sess.rgb = sess.ids[order], sess.xyz[order], sess.rgb[order]
        self.send(identity, MemoryDelta(version_from=sess.version, version_to=sess.version + 1,
                                        voxel_size=self.voxel, added_ids=new_ids, added_xyz=added,
                                        added_rgb=added_rgb, removed_ids=removed, recolored_ids=recolored,
                                        recolored_rgb=recolor_rgb))
        sess.version += 1

    def _edit(self, identity: bytes, sess: Session, msg: Message) -> None:
        if isinstance(msg, EditUndo):
            if not sess.undo:
                self.send(identity, Error(code=ErrorCode.INVALID, message="nothing to undo", ref_type=msg.type))
                return
            ids, xyz, rgb = sess.undo.pop()
            gone = np.setdiff1d(sess.ids, ids)
            back = ~np.isin(ids, sess.ids)
            both = np.intersect1d(ids, sess.ids)
            old_rgb = rgb[np.searchsorted(ids, both)]
            changed = (old_rgb != sess.rgb[np.searchsorted(sess.ids, both)]).any(1)
            # restore: remove what the edit added, re-add what it removed (as new ids), recolour back
            self._commit(identity, sess, removed=gone, recolored=both[changed], recolor_rgb=old_rgb[changed],
                         added=xyz[back], added_rgb=rgb[back])
            return
        sess.undo.append(sess.snapshot())
        if isinstance(msg, EditRemoveIds):
            self.send(identity, Ack(ref_type=msg.type, ref_id=msg.edit_id))
            self._commit(identity, sess, removed=np.intersect1d(msg.ids, sess.ids))
        elif isinstance(msg, EditRemoveBox):
            inside = ((sess.xyz >= msg.box_min) & (sess.xyz <= msg.box_max)).all(1)
            self.send(identity, Ack(ref_type=msg.type, ref_id=msg.edit_id))
            self._commit(identity, sess, removed=sess.ids[inside])
        elif isinstance(msg, EditRecolor):
            ok = np.isin(msg.ids, sess.ids)
            self.send(identity, Ack(ref_type=msg.type, ref_id=msg.edit_id))
            self._commit(identity, sess, recolored=np.asarray(msg.ids)[ok], recolor_rgb=np.asarray(msg.rgb)[ok])
        elif isinstance(msg, EditInsertPrimitive):
            half = np.asarray(msg.size) / 2
            axes = [np.arange(-h, h + 1e-9, self.voxel) for h in half]
            free = {k: [a for a in range(3) if a != k] for k in range(3)}
            faces = [grid(axes[free[k][0]], axes[free[k][1]], k, s * half[k]) for k in range(3) for s in (-1, 1)]
            pts = (np.concatenate(faces) + np.asarray(msg.center)).astype(np.float32)
            self.send(identity, Ack(ref_type=msg.type, ref_id=msg.edit_id))
            self._commit(identity, sess, added=pts, added_rgb=np.tile(np.asarray(msg.rgb, np.uint8), (len(pts), 1)))


if __name__ == "__main__":  # a child process for LocalServer tests: scripted_server.py --bind ADDRESS [--resume]
    import argparse
    import signal

    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", required=True)
    parser.add_argument("--resume", action="store_true")  # accepted like spatia serve's (sessions die with us)
    args = parser.parse_args()
    server = ScriptedServer(args.bind).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    print(f"READY {server.address}", flush=True)
    done.wait()
    server.close()
