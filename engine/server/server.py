"""The generation server: one thread, one socket, many sessions; it drives the pipeline and knows no pixels on screens.

Loop: drain the socket (every message decoded, validated, answered), then generate one chunk for the next session
with queued poses (round robin). While a chunk is sampled, `pump()` runs between sampler steps, so heartbeats are
answered, other clients are served, and a newer trajectory that leaves the path in flight cancels the stale chunk at
the next step. The first chunk of such a fresh path (or of a camera moving off from rest) is one latent frame long
(`short_chunks`), sampled in `short_chunk_steps` with the last chunk's references, so its first frame comes sooner;
the chunks after it are full. Frames go out as soon as they are decoded; the memory delta and ClipDone after each
chunk. With nothing queued, spare time prepares each session's next chunk (`prepare_idle`: references, history, the
DiT's context), so an input's chunk starts with less to do.

Durability: a session is autosaved (atomically) before any Ack that changes it is sent, and after clips at most every
`autosave_interval_s` (longer once a save would take more than `autosave_share` of the time: a long session's save
writes every stored frame and point) and whenever its queue runs dry, so nothing acknowledged is lost when the
process is killed.
With `resume=True` a client whose identity has an autosave gets its session back on its first message.
Bounded resources: per-client send queues are capped by the transport's high-water mark (transport.SEND_HWM: a slow
reader loses frames, not the server's memory), a trajectory replaces the queued poses rather than adding to them,
and idle sessions are evicted (after an autosave) once `max_sessions` is reached.

Status: every `status_every_s` the server writes `<sessions>/status.json` (`status-<worker>.json` for a broker's
workers; atomically): its counters, each live session's in-memory bytes (`WorldSession.nbytes`) and the bytes the
allocator holds free (`heap_free_bytes`: freed, kept, still in RSS), so a soak can tell the growth of session data
and of retained free memory from a leak.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zmq

from engine import geometry
from engine.files import write_text_atomic
from engine.memory.delta import MemoryDelta as EngineDelta
from engine.pipeline import ChunkCancelled, PipelineError, SessionOptions, WorldModel, WorldSession
from engine.runtime import heap_free_bytes
from engine.server import protocol as P

log = logging.getLogger("spatia.server")

# A newer trajectory continues the old path (no cancel, no short chunk) when its first pose is this close to one of
# the poses being or still to be generated: the user is still on the path ...
CONTINUE_DISTANCE_M = 0.10
CONTINUE_ANGLE_DEG = 8.0
# ... and, where it overlaps the chunk in flight, follows that chunk's poses this closely (a turn or a stop that
# begins on the path leaves it within the chunk: its frames would show where the user no longer goes). The
# explorer's streamer sends an input-driven path when its prediction moves by as much (StreamConfig tolerances).
FOLLOW_DISTANCE_M = 0.02
FOLLOW_ANGLE_DEG = 1.0


@dataclass
class Slot:
    """One client's state: its session and the poses still to generate."""

    client: bytes
    session: WorldSession | None = None
    newest: P.NewestWins = field(default_factory=P.NewestWins)
    queue: np.ndarray = field(default_factory=lambda: np.zeros((0, 4, 4)))  # [n, 4, 4] poses still to generate
    generated: np.ndarray = field(default_factory=lambda: np.zeros((0, 4, 4)))  # [k, 4, 4] the last chunk's poses
    intrinsics: np.ndarray | None = None
    seq: int = 0
    t_input: float = 0.0
    last_seen: float = field(default_factory=time.monotonic)
    last_autosave: float = 0.0
    autosave_s: float = 0.0  # how long its last autosave took (it grows with the session)
    dirty: bool = False  # changed since the last autosave
    served: float = 0.0  # when its last chunk started (monotonic): the least recently served goes next
    cancel: bool = False  # set by pump() to stop the chunk in flight
    fresh: bool = True  # the queued path starts a new motion (a turn, or moving off from rest): short first chunk
    unpreparable: tuple | None = None  # the session's context key when preparing it failed (not retried for it)

    @property
    def key(self) -> str:
        return self.client.hex()


def to_wire_delta(delta: EngineDelta, voxel_size: float) -> P.MemoryDelta:
    return P.MemoryDelta(version_from=delta.version_from, version_to=delta.version_to, full=delta.full,
                         voxel_size=float(voxel_size), added_ids=delta.added_ids, added_xyz=delta.added_xyz,
                         added_rgb=delta.added_rgb, removed_ids=delta.removed_ids, recolored_ids=delta.recolored_ids,
                         recolored_rgb=delta.recolored_rgb)


def continuation(new: np.ndarray, path: np.ndarray, covered: int) -> int | None:
    """Does the path new [N, 4, 4] continue path [M, 4, 4], whose first `covered` poses are generated or being
    generated? None if not; else how many of new's first poses repeat covered ones (what to skip).

    It must start near one of the path's poses (the nearest one, j) and, over the poses it shares with the covered
    part (new[i] against path[j + i] for j + i < covered), stay on them. A client that is behind generation (the
    server runs faster than real time) starts on poses already generated; one that is ahead starts past them."""
    metres, degrees = geometry.pose_distance(new[0], path)  # [M] each
    near = np.flatnonzero((metres <= CONTINUE_DISTANCE_M) & (degrees <= CONTINUE_ANGLE_DEG))
    if not len(near):
        return None
    j = int(near[np.argmin(metres[near] + degrees[near] / CONTINUE_ANGLE_DEG * CONTINUE_DISTANCE_M)])
    shared = min(len(new), max(0, covered - j))  # poses of the new path over the covered part
    metres, degrees = geometry.pose_distance(new[:shared], path[j : j + shared])
    return shared if bool(np.all(metres <= FOLLOW_DISTANCE_M) and np.all(degrees <= FOLLOW_ANGLE_DEG)) else None


class GenerationServer:
    def __init__(self, model: WorldModel, transport, sessions_dir: str | Path, backend: str = "eager",
                 options: SessionOptions | None = None, resume: bool = False, autosave_interval_s: float = 2.0,
                 autosave_share: float = 0.05,
                 max_sessions: int = 16, client_timeout_s: float = 30.0, short_chunks: bool = True,
                 short_chunk_steps: int | None = 1, short_chunk_previous_refs: bool = True,
                 status_every_s: float = 1.0, status_name: str = "status.json"):
        self.model, self.transport, self.backend = model, transport, backend
        self.options = options or SessionOptions()
        self.sessions_dir = Path(sessions_dir)
        (self.sessions_dir / "autosave").mkdir(parents=True, exist_ok=True)
        (self.sessions_dir / "saved").mkdir(parents=True, exist_ok=True)
        self.resume, self.autosave_interval_s = resume, autosave_interval_s
        # while a session streams, its autosaves take at most this share of the time: a grown session (a save of
        # every stored frame and point takes longer and longer) is saved less often than every autosave_interval_s
        self.autosave_share = autosave_share
        self.max_sessions, self.client_timeout_s = max_sessions, client_timeout_s
        self.short_chunks = short_chunks  # a fresh path's first chunk has one latent frame (earlier first frame)
        self.short_chunk_steps = short_chunk_steps  # sampler steps of that chunk (None: the session's)
        self.short_chunk_previous_refs = short_chunk_previous_refs  # it keeps the last chunk's references
        self.slots: dict[bytes, Slot] = {}
        self.active: Slot | None = None  # the slot whose chunk is being generated
        self._poller = zmq.Poller()
        self._poller.register(self.transport.socket, zmq.POLLIN)
        self.stats = {"messages": 0, "errors": 0, "chunks": 0, "cancelled": 0, "frames": 0}
        self.status_every_s, self.status_name = status_every_s, status_name
        self._status_due = 0.0
        self._status_failed = False

    # ------------------------------------------------------------------ sending
    def send(self, slot_or_client, msg: P.Message) -> None:
        client = slot_or_client.client if isinstance(slot_or_client, Slot) else slot_or_client
        try:
            self.transport.send(client, P.encode(msg))
        except zmq.ZMQError as e:  # a vanished peer or a full queue: drop, never crash the loop
            log.warning("send to %s failed: %s", client.hex()[:8], e)

    def error(self, client: bytes, code: P.ErrorCode, message: str, ref_type: str = "") -> None:
        self.stats["errors"] += 1
        self.send(client, P.Error(code=code, message=message[: P.MAX_STRING_CHARS], ref_type=ref_type))

    def capabilities(self) -> P.Capabilities:
        cfg = self.model.cfg
        saved = sorted(p.name for p in (self.sessions_dir / "saved").iterdir() if (p / "session.json").is_file()
                       and P.SESSION_NAME_RE.fullmatch(p.name))
        return P.Capabilities(protocol_version=P.PROTOCOL_VERSION, model=self.model.name, backend=self.backend,
                              width=cfg.width, height=cfg.height, fps=float(self.fps), chunk_frames=cfg.chunk_frames,
                              saved_sessions=saved[: P.MAX_LIST_ITEMS])

    @property
    def fps(self) -> float:
        return float(self.model.cfg.fps)

    # ------------------------------------------------------------------ receiving
    def pump(self, timeout_ms: int = 0) -> int:
        """Handle every message waiting on the socket (waiting up to timeout_ms for the first); returns the count."""
        handled = 0
        while self._poller.poll(timeout_ms if handled == 0 else 0):
            client, frames = self.transport.recv()
            self.handle(client, frames)
            handled += 1
            if handled >= 1000:  # fairness: let generation run even under a flood
                break
        self.transport.tick()
        return handled

    def handle(self, client: bytes, frames) -> None:
        self.stats["messages"] += 1
        try:
            msg = P.decode(frames)
        except P.ProtocolError as e:
            self.stats["errors"] += 1
            self.send(client, e.to_message())
            return
        slot = self._slot(client)
        slot.last_seen = time.monotonic()
        handler = getattr(self, f"on_{msg.type}", None)
        if handler is None:
            self.error(client, P.ErrorCode.INVALID, f"{msg.type} is a server-to-client message", msg.type)
            return
        try:
            handler(slot, msg)
        except PipelineError as e:
            self.error(client, P.ErrorCode.INVALID, str(e), msg.type)
        except P.ProtocolError as e:
            self.stats["errors"] += 1
            self.send(client, e.to_message(msg.type))
        except Exception as e:  # noqa: BLE001 - one client's bad request must not stop the others
            log.exception("internal error on %s from %s", msg.type, slot.key[:8])
            self.error(client, P.ErrorCode.INTERNAL, f"{type(e).__name__}: {e}", msg.type)

    def _slot(self, client: bytes) -> Slot:
        slot = self.slots.get(client)
        if slot is None:
            slot = self.slots[client] = Slot(client)
            if self.resume:
                self._restore(slot)
            self._evict_if_needed()
        return slot

    def _restore(self, slot: Slot) -> None:
        path = self.sessions_dir / "autosave" / slot.key
        if (path / "session.json").is_file():
            try:
                slot.session = WorldSession.load(path, self.model)
                log.info("resumed session %s at frame %d", slot.key[:8], slot.session.num_frames)
            except PipelineError as e:
                log.error("autosave of %s is unusable: %s", slot.key[:8], e)

    def _evict_if_needed(self) -> None:
        live = [s for s in self.slots.values() if s.session is not None]
        if len(live) <= self.max_sessions:
            return
        for slot in sorted(live, key=lambda s: s.last_seen)[: len(live) - self.max_sessions]:
            if slot is self.active:
                continue
            self.autosave(slot, force=True)
            del self.slots[slot.client]

    def _need_session(self, slot: Slot) -> WorldSession:
        if slot.session is None:
            raise P.ProtocolError(P.ErrorCode.NO_SESSION, "no session: send an open_* or load message first")
        return slot.session

    # ------------------------------------------------------------------ persistence
    def autosave(self, slot: Slot, force: bool = False) -> None:
        if slot.session is None or not (slot.dirty or force):
            return
        try:
            t0 = time.monotonic()
            slot.session.save(self.sessions_dir / "autosave" / slot.key)
            slot.dirty, slot.last_autosave = False, time.monotonic()
            slot.autosave_s = slot.last_autosave - t0
        except OSError as e:  # full disk, permissions: the previous autosave stays intact (atomic rename)
            log.error("autosave of %s failed: %s", slot.key[:8], e)
            raise P.ProtocolError(P.ErrorCode.INTERNAL, f"could not save the session: {e}") from e

    def autosave_gap_s(self, slot: Slot) -> float:
        """Seconds between the autosaves of a streaming session: autosave_interval_s, longer once a save takes
        more than autosave_share of it (a kill then loses at most this much generated video)."""
        return max(self.autosave_interval_s, slot.autosave_s / self.autosave_share)

    # ------------------------------------------------------------------ handlers (one per client message type)
    def on_hello(self, slot: Slot, msg: P.Hello) -> None:
        if msg.protocol_version != P.PROTOCOL_VERSION:
            raise P.ProtocolError(P.ErrorCode.VERSION, f"client speaks protocol {msg.protocol_version}, server {P.PROTOCOL_VERSION}")
        self.send(slot, self.capabilities())

    def on_heartbeat(self, slot: Slot, msg: P.Heartbeat) -> None:
        self.send(slot, P.Heartbeat(t=time.time(), seq=msg.seq))

    def _opened(self, slot: Slot, session: WorldSession, ref_type: str, detail: str = "") -> None:
        if slot is self.active:
            slot.cancel = True
        slot.session, slot.queue, slot.dirty = session, np.zeros((0, 4, 4)), True
        slot.generated, slot.fresh = np.zeros((0, 4, 4)), True  # nothing of the new session's path is generated
        self.autosave(slot)
        self.send(slot, P.Ack(ref_type=ref_type, message=detail))
        self.send(slot, to_wire_delta(session.memory.snapshot(), session.memory.voxel_size))
        last = session.last_frame
        self.send(slot, P.Frame(index=last.index, seq=0, rgb=last.rgb, depth=last.depth, w2c=last.camera.w2c))

    def _new_session(self, prompt: str) -> WorldSession:
        return WorldSession(self.model, self.options, prompt=prompt)

    def on_open_procedural(self, slot: Slot, msg: P.OpenProcedural) -> None:
        session = self._new_session(msg.prompt)
        session.open_procedural(msg.seed)
        self._opened(slot, session, msg.type, f"procedural scene {msg.seed}")

    def on_open_image(self, slot: Slot, msg: P.OpenImage) -> None:
        session = self._new_session(msg.prompt)
        session.open_rgbd(msg.rgb, np.asarray(msg.depth, np.float32), msg.w2c, msg.intrinsics)
        self._opened(slot, session, msg.type)

    def on_open_points(self, slot: Slot, msg: P.OpenPoints) -> None:
        session = self._new_session(msg.prompt)
        session.open_points(msg.xyz, msg.rgb, msg.w2c, msg.intrinsics)
        self._opened(slot, session, msg.type, msg.source)

    def on_open_release(self, slot: Slot, msg: P.OpenRelease) -> None:
        session = self._new_session(msg.prompts[0])
        exclude = None if msg.masks is None else msg.masks[0] > 0
        session.open_image(msg.image, msg.w2c[0], msg.intrinsics[0], exclude=exclude)
        self._opened(slot, session, msg.type)

    def on_load(self, slot: Slot, msg: P.Load) -> None:
        path = self.sessions_dir / "saved" / P.check_session_name(msg.name)
        if not (path / "session.json").is_file():
            raise P.ProtocolError(P.ErrorCode.NOT_FOUND, f"no saved session named {msg.name!r}")
        self._opened(slot, WorldSession.load(path, self.model), msg.type, f"loaded {msg.name}")

    def on_save(self, slot: Slot, msg: P.Save) -> None:
        session = self._need_session(slot)
        try:
            session.save(self.sessions_dir / "saved" / P.check_session_name(msg.name))
        except OSError as e:
            raise P.ProtocolError(P.ErrorCode.INTERNAL, f"could not save {msg.name!r}: {e}") from e
        self.send(slot, P.Ack(ref_type=msg.type, message=f"saved {msg.name}"))

    def on_resync(self, slot: Slot, msg: P.Resync) -> None:
        session = self._need_session(slot)
        self.send(slot, to_wire_delta(session.memory.snapshot(), session.memory.voxel_size))

    def on_trajectory(self, slot: Slot, msg: P.Trajectory) -> None:
        session = self._need_session(slot)
        if not slot.newest.offer(msg):
            return  # stale: an older chunk overtaken by a newer one
        traj = slot.newest.take()
        w2c, intr = session.check_trajectory(traj.w2c, traj.intrinsics)
        in_flight = self._in_flight if slot is self.active else None
        # the old path: the last chunk's poses, those being generated and those still to be. A new path that starts
        # on it and follows what is generated continues it (the client keeps a moving camera fed). When generation
        # lags, the new path starts further along; when it runs ahead of real time, the new path starts on poses
        # already generated, which are skipped (generated again, they would play the walk backwards and waste the
        # time ahead), keeping more than a chunk of them: the client's streamer asks for the next path once fewer
        # than a chunk of this one's poses are unanswered.
        flying = np.zeros((0, 4, 4)) if in_flight is None else in_flight
        path = np.concatenate([slot.generated, flying, slot.queue])
        skip = continuation(w2c, path, len(slot.generated) + len(flying))
        if skip is None:  # a turn, a stop, a start
            slot.fresh, skip = True, 0
            if in_flight is not None:
                slot.cancel = True  # the user left the path being generated: stop the stale chunk
        skip = min(skip, max(0, len(w2c) - session.chunk_frames - 1))
        slot.queue, slot.intrinsics, slot.seq, slot.t_input = w2c[skip:], intr, traj.seq, traj.t_input

    def on_cancel(self, slot: Slot, msg: P.Cancel) -> None:
        if msg.seq in (-1, slot.seq):
            slot.queue = np.zeros((0, 4, 4))
            if slot is self.active:
                slot.cancel = True
        self.send(slot, P.Ack(ref_type=msg.type, ref_id=msg.seq))

    def _edited(self, slot: Slot, msg, delta: EngineDelta) -> None:
        slot.dirty = True
        self.autosave(slot)
        self.send(slot, P.Ack(ref_type=msg.type, ref_id=msg.edit_id))
        self.send(slot, to_wire_delta(delta, slot.session.memory.voxel_size))

    def on_edit_remove_box(self, slot: Slot, msg: P.EditRemoveBox) -> None:
        self._edited(slot, msg, self._need_session(slot).remove_box(msg.box_min, msg.box_max))

    def on_edit_remove_ids(self, slot: Slot, msg: P.EditRemoveIds) -> None:
        self._edited(slot, msg, self._need_session(slot).remove_ids(msg.ids))

    def on_edit_recolor(self, slot: Slot, msg: P.EditRecolor) -> None:
        self._edited(slot, msg, self._need_session(slot).recolor(msg.ids, msg.rgb))

    def on_edit_insert_primitive(self, slot: Slot, msg: P.EditInsertPrimitive) -> None:
        self._edited(slot, msg, self._need_session(slot).insert_primitive(str(msg.shape), msg.center, msg.size, msg.rgb))

    def on_edit_insert_points(self, slot: Slot, msg: P.EditInsertPoints) -> None:
        self._edited(slot, msg, self._need_session(slot).insert_points(msg.xyz, msg.rgb))

    def on_edit_undo(self, slot: Slot, msg: P.EditUndo) -> None:
        self._edited(slot, msg, self._need_session(slot).undo())

    # ------------------------------------------------------------------ generation
    _in_flight: np.ndarray | None = None

    def _next_slot(self) -> Slot | None:
        """The ready slot served least recently (round robin that stays fair as clients come and go); no side
        effects, so asking whether there is work does not skip anyone."""
        now = time.monotonic()
        ready = [s for s in self.slots.values() if s.session is not None and len(s.queue)
                 and now - s.last_seen < self.client_timeout_s]
        return min(ready, key=lambda s: s.served, default=None)

    def generate_once(self) -> bool:
        """Generate one chunk for the next session with queued poses; False when there was nothing to do."""
        slot = self._next_slot()
        if slot is None:
            return False
        session = slot.session
        latent_frames = 1 if self.short_chunks and slot.fresh else None
        n = session.cfg.temporal_compression if latent_frames else session.chunk_frames
        poses, slot.queue = slot.queue[:n], slot.queue[n:]
        slot.fresh = False
        seq, t_input = slot.seq, slot.t_input
        self.active, self._in_flight, slot.cancel = slot, poses, False
        slot.served = time.monotonic()

        def on_frame(index, rgb, depth, w2c, timings):
            self.stats["frames"] += 1
            timings["sent_unix_ms"] = time.time() * 1e3  # wall clock at send: a client on this host measures transfer
            self.send(slot, P.Frame(index=index, seq=seq, rgb=rgb, depth=None if depth is None else depth.astype(np.float16),
                                    w2c=w2c, t_input=t_input, timings=timings))

        def should_stop() -> bool:
            self.pump(0)
            return slot.cancel

        try:
            result = session.generate_chunk(poses, slot.intrinsics, on_frame=on_frame, should_stop=should_stop,
                                            latent_frames=latent_frames,
                                            steps=self.short_chunk_steps if latent_frames else None,
                                            previous_refs=bool(latent_frames) and self.short_chunk_previous_refs)
        except ChunkCancelled:
            self.stats["cancelled"] += 1
            return True
        except PipelineError as e:
            slot.queue = np.zeros((0, 4, 4))
            self.error(slot.client, P.ErrorCode.INVALID, str(e), "trajectory")
            return True
        except Exception as e:  # noqa: BLE001 - one session's failure (a bug, a damaged session) must not stop the others
            log.exception("generation failed for %s", slot.key[:8])
            slot.queue = np.zeros((0, 4, 4))
            self.error(slot.client, P.ErrorCode.INTERNAL, f"generation failed: {type(e).__name__}: {e}", "trajectory")
            return True
        finally:
            self.active, self._in_flight = None, None
        self.stats["chunks"] += 1
        if slot.session is session:  # (not when another session was opened while this chunk's frames went out)
            slot.generated = poses[: len(result.rgb)]
        slot.dirty = True
        t0 = time.perf_counter()
        self.send(slot, to_wire_delta(result.delta, session.memory.voxel_size))
        timings = dict(result.timings)
        timings["serialize_delta"] = (time.perf_counter() - t0) * 1e3
        if not len(slot.queue) or time.monotonic() - slot.last_autosave >= self.autosave_gap_s(slot):
            t0 = time.perf_counter()
            try:
                self.autosave(slot)
            except P.ProtocolError as e:
                self.send(slot, e.to_message("trajectory"))
            timings["autosave"] = (time.perf_counter() - t0) * 1e3
        self.send(slot, P.ClipDone(clip=result.clip, seq=seq, first_frame=result.first_frame, num_frames=len(result.rgb),
                                   memory_version=session.memory.version, timings=timings))
        return True

    def prepare_idle(self) -> bool:
        """With nothing to generate: prepare one session's next chunk (references, history, the DiT's context; see
        `WorldSession.prepare`; the last chunk's references where short chunks keep them) so that the chunk the
        next input starts has less to do. Only spare time goes into it: a moving camera's chunks follow each other
        at once and build their context in one go (less work in all), and an input that comes while a preparation
        runs stops it at its next stage. False when every session is prepared."""
        def stop() -> bool:  # an input that comes meanwhile must not wait for the preparation to finish
            self.pump(0)
            return self._next_slot() is not None

        for slot in list(self.slots.values()):  # (stop() handles messages: a new client may join meanwhile)
            session = slot.session
            if (session is None or not session.can_prepare or session.prepared
                    or slot.unpreparable == session.context_key):
                continue
            try:
                if session.prepare(previous_refs=self.short_chunk_previous_refs, should_stop=stop) is None:
                    return True  # stopped for an input (the next loop generates it)
            except Exception as e:  # noqa: BLE001 - the chunk builds its context itself and reports what is wrong
                log.warning("could not prepare the next chunk of %s: %s: %s", slot.key[:8], type(e).__name__, e)
                slot.unpreparable = session.context_key
                continue
            return True
        return False

    def serve_forever(self, stop=None, idle_poll_ms: int = 50) -> None:
        log.info("serving %s (%s) on %s", self.model.name, self.backend, getattr(self.transport, "address", "broker"))
        while stop is None or not stop.is_set():
            self.pump(0)  # what came while the last chunk finished: an input must not wait for a preparation
            idle = self._next_slot() is None and not self.prepare_idle()
            self.pump(idle_poll_ms if idle else 0)
            self.generate_once()
            if time.monotonic() >= self._status_due:
                self.write_status()

    def write_status(self) -> dict:
        """Write `<sessions>/<status_name>` (atomically) with the counters and each live session's in-memory bytes;
        returns what it wrote. A failed write is logged, never raised (the status is for observers)."""
        self._status_due = time.monotonic() + self.status_every_s
        sessions = [{"key": slot.key[:8], "bytes": slot.session.nbytes, "points": len(slot.session.memory),
                     "frames": slot.session.num_frames} for slot in self.slots.values() if slot.session is not None]
        status = {"time": time.time(), "pid": os.getpid(), **self.stats, "sessions": sessions,
                  "session_bytes": sum(x["bytes"] for x in sessions), "heap_free_bytes": heap_free_bytes()}
        path = self.sessions_dir / self.status_name
        try:
            write_text_atomic(path, json.dumps(status))
            self._status_failed = False
        except OSError as e:
            if not self._status_failed:  # once per failing streak (a full disk would fail every second)
                log.warning("could not write %s: %s", path, e)
            self._status_failed = True
        return status

    def close(self) -> None:
        for slot in self.slots.values():
            try:
                self.autosave(slot)
            except P.ProtocolError:
                pass
        self.transport.close()
