"""End-to-end latency: the explorer's own client code driving a real `spatia serve` child along a scripted walk.

`spatia bench e2e` starts `spatia serve --model M --bind tcp://127.0.0.1:<free port>` as a child process (through
`explorer.client.LocalServer`, as the explorer does), connects M simulated explorers to it, and walks each one's
camera with key and mouse events (`explorer.camera.CameraController` fed by an `explorer.script` walk: forward,
turn, stop, turn back, walk back). Each explorer streams its predicted path with `PoseStreamer` over a `Client`,
exactly like the app, so what is measured is the real loop:

- motion-to-frame latency: from an input event (t_input, the client clock at the key or mouse event) to the first
  frame of the chunk it caused arriving at the client, p50/p95/p99, and where that time goes: waiting to send
  (the streamer's pacing), queueing at the server (the chunk in flight, cancel at the next sampler step), the
  pipeline stages up to the first decoded frame, and transfer;
- sustained generated fps per explorer while it waits for frames, and the real-time factor against the playback
  rate (Capabilities.fps);
- per-stage medians over clips (ClipDone timings: retrieval, scene render, encode, every sampler step, decode,
  reconstruction, segmentation, memory update, delta serialisation, autosave) and per-frame transfer. Transfer is
  client receive time minus the server's send stamp (Frame.timings["sent_unix_ms"]): both processes read the same
  wall clock because they run on one machine.
The stages are checked to add up to the pipeline's total (see `stage_breakdown`).

Runs cover the backends (eager; compile on a GPU, on a CPU only with SPATIA_BENCH_CPU_COMPILE=1, since its server
builds a graph per chunk shape before answering; tensorrt where present; else skipped with the reason), the shipped model
(`--model`, default `tiny`) and preset configs with random weights (`--configs tiny,small`: speed does not depend
on weight values), and 1, 2, 4 concurrent explorers. A config whose first chunk exceeds `--budget-s` is reported as
skipped with its measured time. Results: one JSON object (printed, and written to --out with three PNG plots: a
timeline of one step, latency distributions, and the per-stage breakdown of every run).

This benchmark imports `explorer.client`, `explorer.camera` and `explorer.script` when it runs (they import only
NumPy, ZeroMQ and the protocol): the point is to time the explorer's own client code, not a copy of it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TICK_HZ = 60.0  # the explorer draws, samples input and streams at display rate
FOV_DEG = 60.0  # the explorer's field of view for sessions that bring no intrinsics (AppConfig.fov_deg)
WALK_ACTIONS = frozenset({"key_down", "key_up", "mouse", "scroll"})  # what a walk may contain (camera input only)
# One loop of the default walk, in the explorer's script format: walk forward, turn while walking, stop, turn back
# standing, walk back, stop. 300 px of mouse at 0.0025 rad/px is a 43 degree turn.
DEFAULT_WALK = [
    {"t": 0.0, "key_down": "w"},
    {"t": 1.2, "mouse": [300, 0], "over": 0.6},
    {"t": 2.4, "key_up": "w"},
    {"t": 3.2, "mouse": [-300, 0], "over": 0.6},
    {"t": 4.2, "key_down": "s"},
    {"t": 6.6, "key_up": "s"},
    {"t": 8.0, "end": True},
]
# Stages of one clip as ClipDone reports them (pipeline order); sampler steps are added per step.
PIPELINE_STAGES = ("retrieval", "render", "encode", "sample", "decode", "reconstruct", "segment", "update")
SERVER_STAGES = ("serialize_delta", "autosave")  # after the pipeline's total, before ClipDone goes out
# Untimed code between the pipeline's stages (array stacking, frame bookkeeping) measures ~0.2-0.5 ms per chunk;
# a descheduled process (shared cores) can stretch it, so the stages must cover the total to within this.
UNACCOUNTED_TOL_MS = 5.0
UNACCOUNTED_TOL_FRAC = 0.05
GOALS = {"first_frame_p50_ms": 300.0, "real_time_factor": 1.0}  # the shipped default on 2 CPU cores


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny",
                        help="shipped model name or checkpoint folder ('none' to time only --configs)")
    parser.add_argument("--configs", default="", help="presets timed with random weights, e.g. 'tiny,small'")
    parser.add_argument("--backends", default="eager,compile,tensorrt", help="comma list: eager, compile, tensorrt")
    parser.add_argument("--clients", default="1,2,4", help="concurrent explorers per run, comma list")
    parser.add_argument("--seconds", type=float, default=24.0, help="measured walk per run (s)")
    parser.add_argument("--warmup-clips", type=int, default=4,
                        help="clips per explorer before measuring (compile specialises on the reference count)")
    parser.add_argument("--warmup-s", type=float, default=4.0, help="walk after the warm-up clips, not measured (s)")
    parser.add_argument("--budget-s", type=float, default=120.0,
                        help="a model/backend whose first chunk takes longer is reported as skipped")
    parser.add_argument("--start-timeout-s", type=float, default=360.0,
                        help="server start-up limit (s; compile builds its graphs first: 214 s on an H200)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the server (default: its own)")
    parser.add_argument("--server-wait-policy", choices=("spin", "passive"), default="spin",
                        help="OpenMP wait policy of the server: spin (OpenMP's default, a server that owns its cores) "
                             "or passive (as when the explorer's viewer shares them)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                        help="the server's DiT precision (float16/bfloat16 for a GPU)")
    parser.add_argument("--server-args", default="",
                        help="more `spatia serve` options for every run, e.g. '--control-encoder vae' or '--workers 2'")
    parser.add_argument("--walk", type=Path, default=None, help="walk script (explorer script JSON; default built in)")
    parser.add_argument("--seed", type=int, default=0, help="procedural scene of the first explorer (+i for the i-th)")
    parser.add_argument("--out", type=Path, default=Path("out/bench-e2e"), help="folder for JSON and PNGs")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")


# --------------------------------------------------------------------------------------------- the server child
def read_rss_bytes(pid: int) -> int:
    """Resident set size of a process (VmRSS in /proc/<pid>/status), bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line")


def read_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


class ServerChild:
    """`spatia serve` as a child process on a free loopback port (explorer.client.LocalServer), stopped on exit."""

    def __init__(self, model: str, workdir: Path, backend: str = "eager", threads: int | None = None,
                 extra: tuple[str, ...] = (), wait_policy: str = "spin", dtype: str = "float32"):
        from explorer.client import LocalServer

        args = ["--backend", backend, "--dtype", dtype, "--log-level", "WARNING", *extra]
        if threads:
            args += ["--threads", str(threads)]
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}  # spin: OpenMP's default
        if wait_policy == "passive":
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        self.local = LocalServer.spatia_serve(model, workdir / "sessions", workdir / f"server-{backend}.log", args,
                                              env=env)

    @property
    def address(self) -> str:
        return self.local.address

    @property
    def pid(self) -> int:
        return self.local.process.pid

    def start(self, resume: bool = False) -> "ServerChild":
        self.local.start(resume=resume)
        return self

    def check_alive(self) -> None:
        code = self.local.poll()
        if code is not None:
            raise RuntimeError(f"the server exited with code {code}; its log ends:\n{self.local.log_tail()}")

    def rss_bytes(self) -> int:
        return read_rss_bytes(self.pid)

    def stop(self) -> None:
        self.local.stop()

    def __enter__(self) -> "ServerChild":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------- one explorer
def load_walk(path: Path | None):
    """The walk as an explorer Script (only camera input: key_down, key_up, mouse, scroll)."""
    from explorer.camera import KEYS
    from explorer.script import ScriptError, load_script, parse_script

    script = parse_script(DEFAULT_WALK, "<default walk>", KEYS) if path is None else load_script(path, KEYS)
    bad = [e for e in script.events if e.action not in WALK_ACTIONS]
    if bad:
        raise ScriptError(script.source, None, f"a walk holds camera input only ({', '.join(sorted(WALK_ACTIONS))}); "
                                               f"got {bad[0].action!r} at t={bad[0].t}")
    if not script.events:
        raise ScriptError(script.source, None, "the walk has no events")
    return script


@dataclass
class LatencySample:
    """The first frame of an input-driven chunk, and where the time from the input went (seconds, wall clock)."""

    seq: int
    t_input: float
    t_sent: float  # the Trajectory left the client
    t_received: float  # its first frame arrived
    since_start_ms: float  # server: chunk start -> first frame decoded
    decode_ms: float  # server: decode start -> first frame decoded
    sent_unix_ms: float  # server: wall clock when the frame was sent
    first_frame: int  # frame index, to find the chunk's ClipDone
    clip_timings: dict[str, float] | None = None

    @property
    def latency_ms(self) -> float:
        return (self.t_received - self.t_input) * 1e3

    def breakdown(self) -> dict[str, float] | None:
        """Input -> first frame split into consecutive parts that add up to the latency (ms); None without ClipDone."""
        t = self.clip_timings
        if t is None:
            return None
        chunk_start_ms = self.sent_unix_ms - self.since_start_ms  # server wall clock when the chunk began
        parts = {
            "input_to_send": (self.t_sent - self.t_input) * 1e3,
            "queue": chunk_start_ms - self.t_sent * 1e3,  # transfer of the chunk + waiting for the server
            "retrieval": t["retrieval"], "render": t["render"], "encode": t["encode"], "sample": t["sample"],
            "decode_first": self.decode_ms,
            "transfer": self.t_received * 1e3 - self.sent_unix_ms,
        }
        parts["server_other"] = self.since_start_ms - sum(parts[k] for k in ("retrieval", "render", "encode", "sample",
                                                                              "decode_first"))
        return parts


@dataclass
class Record:
    """What one explorer saw during the measured window."""

    latencies: list[LatencySample] = field(default_factory=list)
    clips: list[dict[str, float]] = field(default_factory=list)  # ClipDone timings
    transfer_ms: list[float] = field(default_factory=list)
    frames: int = 0
    demand_s: float = 0.0  # time with poses sent but not yet answered by frames
    errors: list[str] = field(default_factory=list)


class WalkClient:
    """One simulated explorer: Client + CameraController + PoseStreamer, the camera walked by a script."""

    def __init__(self, address: str, seed: int, walk, clock=time.time, client_config=None):
        from explorer.client import Client, ClientConfig, PoseStreamer

        # a silent server is the normal state during a long first chunk (compile): no reconnects while timing
        self.client = Client(address, config=client_config or ClientConfig(waiting_s=60.0, reconnect_s=600.0),
                             clock=clock)
        self.clock, self.seed, self.walk = clock, seed, walk
        self.streamer = PoseStreamer()
        self.camera = None
        self.caps = None
        self.player = None
        self.walk_t0 = 0.0
        self.last_tick: float | None = None
        self.ready = False  # session open and its start frame here
        self.walking = True  # the walk drives the camera (False: at rest, see come_to_rest)
        self.measuring = False
        self.measure_t0 = float("inf")
        self.clip_count = 0
        self.cancel_acked = False
        self.points = 0  # memory points the explorer holds (deltas applied as counts)
        self.rec = Record()
        self._pending: dict[tuple[int, int], LatencySample] = {}  # (seq, first frame) -> sample awaiting ClipDone

    # ------------------------------------------------------------------ messages
    def receive(self) -> int:
        msgs = self.client.poll(0)
        for msg in msgs:
            self.handle(msg, self.clock())
        return len(msgs)

    def handle(self, msg, now: float) -> None:
        from engine.geometry import fov_to_intrinsics
        from engine.server.protocol import OpenProcedural

        kind = msg.type
        if kind == "capabilities":
            self.caps = msg
            self.streamer.configure(msg.fps, msg.chunk_frames, fov_to_intrinsics(FOV_DEG, msg.width / msg.height))
            if self.client.open_message is None:
                self.client.open(OpenProcedural(seed=self.seed))
        elif kind == "memory_delta":
            self.points = (len(msg.added_ids) if msg.full else self.points + len(msg.added_ids) - len(msg.removed_ids))
        elif kind == "frame":
            self._on_frame(msg, now)
        elif kind == "clip_done":
            self.clip_count += 1
            sample = self._pending.pop((msg.seq, msg.first_frame), None)
            if sample is not None:
                sample.clip_timings = dict(msg.timings)
            if self.measuring:
                self.rec.clips.append(dict(msg.timings))
        elif kind == "ack" and msg.ref_type == "cancel":
            self.cancel_acked = True
        elif kind == "error":
            self.rec.errors.append(f"{msg.code.value} ({msg.ref_type}): {msg.message}")

    def _on_frame(self, frame, now: float) -> None:
        from explorer.camera import CameraController

        if frame.seq == 0:  # the start frame of the session: the camera starts where the scene was opened
            self.camera = CameraController.from_w2c(np.asarray(frame.w2c))
            self.streamer.reset()
            self.ready = True
            return
        self.streamer.on_frame(frame)
        chunk = self.streamer.chunks.get(frame.seq)
        lat = self.streamer.latency(frame, now)
        if not self.measuring:
            return
        self.rec.frames += 1
        sent = frame.timings.get("sent_unix_ms")
        if sent is not None:
            self.rec.transfer_ms.append(now * 1e3 - sent)
        if lat is not None and chunk is not None and sent is not None and chunk.t_input >= self.measure_t0:
            sample = LatencySample(frame.seq, frame.t_input, chunk.t_sent, now, frame.timings["since_start"],
                                   frame.timings["decode"], sent, frame.index)
            self.rec.latencies.append(sample)
            self._pending[(frame.seq, frame.index)] = sample

    # ------------------------------------------------------------------ input and streaming
    def tick(self, now: float) -> None:
        """One explorer frame: walk input, camera motion, the streamer's decision."""
        dt = 0.0 if self.last_tick is None else max(0.0, now - self.last_tick)
        self.last_tick = now
        if not self.ready:
            return
        if self.walking:
            self._walk(now)
        self.camera.update(dt)
        if self.measuring and self.streamer.pending > 0:
            self.rec.demand_s += dt
        traj = self.streamer.update(self.camera, now)
        if traj is not None:
            self.client.send(traj)

    def _walk(self, now: float) -> None:
        """Feed the walk's input due by now to the camera, as the app's input handlers do."""
        from explorer.script import ScriptPlayer

        if self.player is None:
            self.player, self.walk_t0 = ScriptPlayer(self.walk), now
        step = self.player.step(now - self.walk_t0)
        for e in step.events:
            if e.action == "key_down":
                self.camera.key_down(e.value)
            elif e.action == "key_up":
                self.camera.key_up(e.value)
            elif e.action == "scroll":
                self.camera.scroll(e.value)
            self.streamer.note_input(now)
        if step.look != (0.0, 0.0):
            self.camera.mouse_motion(*step.look)
            self.streamer.note_input(now)
        if step.ended:
            self.player = None  # loop the walk

    def come_to_rest(self, now: float) -> None:
        """Stop the walk and let go of every key (the camera coasts to rest; its final path is still streamed)."""
        self.walking = False
        self.player = None
        if self.camera is not None:
            self.camera.release_all()
            self.streamer.note_input(now)

    def begin_measurement(self, now: float) -> None:
        self.rec, self.measuring, self.measure_t0 = Record(), True, now
        self._pending.clear()

    def end_measurement(self) -> None:
        self.measuring = False

    def stop_walking(self) -> None:
        """Release every key and cancel what the server still has queued for this explorer."""
        from engine.server.protocol import Cancel

        if self.camera is not None:
            self.camera.release_all()
            self.camera.velocity[:] = 0.0
        self.player = None
        self.ready = False  # no more streaming
        self.cancel_acked = False
        self.client.send(Cancel(seq=-1))

    def close(self) -> None:
        self.client.close()


def drive(clients: list[WalkClient], server: ServerChild | None, seconds: float | None = None,
          until=None, timeout_s: float | None = None, on_tick=None) -> bool:
    """Run the explorers' loop: messages as they arrive, input and streaming at TICK_HZ.

    Stops after `seconds`, or when `until()` is true (returns True) or `timeout_s` passed (returns False).
    `on_tick(now)` runs once per tick (the load benchmark samples memory there).
    """
    import zmq

    start = time.time()
    limit = seconds if seconds is not None else timeout_s
    next_tick = start
    poller_sockets = None
    poller = zmq.Poller()
    while True:
        now = time.time()
        if until is not None and until():
            return True
        if limit is not None and now - start >= limit:
            return seconds is not None
        sockets = [c.client.socket for c in clients]
        if sockets != poller_sockets:  # a reconnect made a new socket
            poller = zmq.Poller()
            for s in sockets:
                poller.register(s, zmq.POLLIN)
            poller_sockets = sockets
        poller.poll(max(0.0, next_tick - now) * 1e3)
        for c in clients:
            c.receive()
        now = time.time()
        if now >= next_tick:
            for c in clients:
                c.tick(now)
            if on_tick is not None:
                on_tick(now)
            if server is not None:
                server.check_alive()
            next_tick = max(next_tick + 1.0 / TICK_HZ, now)


# --------------------------------------------------------------------------------------------- statistics
def percentiles(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    a = np.asarray(values, np.float64)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "max": float(a.max()), "n": len(a)}


def stage_breakdown(timings: dict[str, float]) -> dict[str, float]:
    """One clip's ClipDone timings -> consecutive stages that add up to the pipeline's total (ms).

    `between_steps` is sampling time outside the steps (the server answering messages between steps, solver
    set-up); `unaccounted` is the pipeline total minus its timed stages (bookkeeping between stages): small by
    construction of the pipeline, which `check_stage_sum` verifies. Decode includes sending each frame as it is
    decoded (serialisation of frames happens there); serialize_delta and autosave follow the total.
    Raises KeyError naming a missing stage.
    """
    missing = [k for k in (*PIPELINE_STAGES, "total") if k not in timings]
    if missing:
        raise KeyError(f"ClipDone timings lack {missing} (have {sorted(timings)})")
    steps = sorted((k for k in timings if k.startswith("step_")), key=lambda k: int(k.split("_")[1]))
    if not steps:
        raise KeyError(f"ClipDone timings have no sampler steps step_0..step_n (have {sorted(timings)})")
    out = {k: timings[k] for k in ("retrieval", "render", "encode")}
    out.update({k: timings[k] for k in steps})
    out["between_steps"] = timings["sample"] - sum(timings[k] for k in steps)
    out.update({k: timings[k] for k in ("decode", "reconstruct", "segment", "update")})
    out["unaccounted"] = timings["total"] - sum(timings[k] for k in PIPELINE_STAGES)
    return out


def check_stage_sum(timings: dict[str, float]) -> tuple[bool, float, float]:
    """(ok, unaccounted ms, tolerance ms): do the timed stages cover the total?"""
    stages = stage_breakdown(timings)
    tol = UNACCOUNTED_TOL_MS + UNACCOUNTED_TOL_FRAC * timings["total"]
    return abs(stages["unaccounted"]) <= tol and stages["between_steps"] >= -tol, stages["unaccounted"], tol


def _median_dict(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return {k: statistics.median(r[k] for r in rows if k in r) for k in keys}


def summarize(clients: list[WalkClient], seconds: float) -> dict:
    """One run's numbers from its explorers' records."""
    caps = clients[0].caps
    lat = [s for c in clients for s in c.rec.latencies]
    clips = [t for c in clients for t in c.rec.clips]
    fps = [c.rec.frames / c.rec.demand_s for c in clients if c.rec.demand_s > 0]
    stages = [stage_breakdown(t) for t in clips]
    server_after = [{k: t[k] for k in SERVER_STAGES if k in t} for t in clips]
    checks = [check_stage_sum(t) for t in clips]
    breakdowns = [b for s in lat if (b := s.breakdown()) is not None]
    transfer = [x for c in clients for x in c.rec.transfer_ms]
    stage_medians = _median_dict(stages) if stages else {}
    stage_medians.update(_median_dict([r for r in server_after if r]) if any(server_after) else {})
    if transfer:
        stage_medians["transfer"] = statistics.median(transfer)
    out = {
        "clients": len(clients),
        "playback_fps": caps.fps,
        "chunk_frames": caps.chunk_frames,
        "frame_size": [caps.width, caps.height],
        "measured_s": seconds,
        "motion_to_frame_ms": percentiles([s.latency_ms for s in lat]),
        "first_frame_breakdown_ms": _median_dict(breakdowns) if breakdowns else {},
        # causality checks: a chunk cannot start before it was sent, nor a frame arrive before it left
        "first_frame_parts_min_ms": {k: min(b[k] for b in breakdowns) for k in breakdowns[0]} if breakdowns else {},
        "generated_fps_per_client": statistics.median(fps) if fps else 0.0,
        "generated_fps_total": sum(fps),
        "real_time_factor": (statistics.median(fps) / caps.fps) if fps else 0.0,
        "stages_ms": stage_medians,
        "pipeline_total_ms": statistics.median(t["total"] for t in clips) if clips else None,
        "autosaved_clips": sum(1 for t in clips if "autosave" in t),
        "stage_sum": {"clips": len(checks), "ok": sum(ok for ok, _, _ in checks),
                      "max_abs_unaccounted_ms": max((abs(u) for _, u, _ in checks), default=0.0)},
        "clips": len(clips),
        "frames": sum(c.rec.frames for c in clients),
        "latency_samples": len(lat),
        # every sample's parts (they add up to its latency), so a slow one can be told apart from a slow median
        "first_frame_samples_ms": [{"latency": round(s.latency_ms, 1), **{k: round(v, 1) for k, v in b.items()}}
                                   for s in lat if (b := s.breakdown()) is not None],
        "errors": [e for c in clients for e in c.rec.errors][:20],
    }
    out["_samples"] = {"latency_ms": [s.latency_ms for s in lat], "breakdowns": breakdowns, "stages": stages}
    return out


# --------------------------------------------------------------------------------------------- one run
class BudgetExceeded(RuntimeError):
    """The first chunk did not finish within the run's time budget."""


def measure(server: ServerChild, n_clients: int, walk, args) -> dict:
    """M explorers on a running server: connect, open, warm up (first clip + warm-up walk), measure, cancel."""
    clients = [WalkClient(server.address, args.seed + i, walk) for i in range(n_clients)]
    try:
        if not drive(clients, server, until=lambda: all(c.ready for c in clients), timeout_s=args.start_timeout_s):
            raise RuntimeError(f"no session opened within {args.start_timeout_s} s; server log:\n"
                               f"{server.local.log_tail()}")
        t0 = time.time()
        if not drive(clients, server, until=lambda: all(c.clip_count >= 1 for c in clients), timeout_s=args.budget_s):
            raise BudgetExceeded(f"the first chunk took longer than --budget-s {args.budget_s:g} s")
        first_chunk_s = time.time() - t0
        if not drive(clients, server, until=lambda: all(c.clip_count >= args.warmup_clips for c in clients),
                     timeout_s=args.budget_s):
            raise BudgetExceeded(f"{args.warmup_clips} warm-up clips took longer than --budget-s {args.budget_s:g} s")
        warmup_clips_s = time.time() - t0
        drive(clients, server, seconds=args.warmup_s)
        rss_before = server.rss_bytes()
        cpu_before, bench_cpu_before = read_cpu_seconds(server.pid), time.process_time()
        now = time.time()
        for c in clients:
            c.begin_measurement(now)
        drive(clients, server, seconds=args.seconds)
        for c in clients:
            c.end_measurement()
        result = summarize(clients, args.seconds)
        # how much CPU the server got: on shared cores this, not the code, often sets the numbers
        result["server_cpu_cores"] = (read_cpu_seconds(server.pid) - cpu_before) / (time.time() - now)
        result["bench_client_cpu_cores"] = (time.process_time() - bench_cpu_before) / (time.time() - now)
        result["first_chunk_s"] = first_chunk_s
        result["warmup_clips_s"] = warmup_clips_s  # start-up cost: compile time shows here
        result["server_rss_mb"] = {"before": rss_before / 2**20, "after": server.rss_bytes() / 2**20}
        for c in clients:
            c.stop_walking()
        drive(clients, server, until=lambda: all(c.cancel_acked for c in clients), timeout_s=max(30.0, args.budget_s))
        return result
    finally:
        for c in clients:
            c.close()


# --------------------------------------------------------------------------------------------- models and backends
@dataclass
class ModelSpec:
    label: str
    path: str  # what `spatia serve --model` gets
    config: str
    weights: str  # "trained" (a checkpoint) or "random" (a preset timed with random weights)


def resolve_model(name: str) -> Path:
    """A shipped model name or a checkpoint folder -> its folder; FileNotFoundError says what exists."""
    from engine.pipeline import MODELS_DIR

    path = Path(name)
    if (path / "config.json").is_file():
        return path
    if (MODELS_DIR / name / "config.json").is_file():
        return MODELS_DIR / name
    shipped = sorted(p.parent.name for p in MODELS_DIR.glob("*/config.json"))
    raise FileNotFoundError(f"--model {name!r}: no checkpoint there and no shipped model of that name (shipped: "
                            f"{shipped or 'none'}); time a preset with random weights instead: --model none "
                            f"--configs {name if name in ('tiny', 'small') else 'tiny'}")


def random_checkpoint(config: str, folder: Path) -> Path:
    """A checkpoint of a preset with random weights (timing does not depend on weight values)."""
    import torch

    from engine.model.checkpoint import save_checkpoint
    from engine.model.configs import ModelConfig
    from engine.model.dit import SpatiaDiT
    from engine.model.vae import VideoVAE

    cfg = ModelConfig.from_name(config)
    torch.manual_seed(0)
    path = folder / f"{config}-random"
    save_checkpoint(path, cfg, dit=SpatiaDiT(cfg), vae=VideoVAE(cfg))
    return path


def model_specs(args, workdir: Path) -> list[ModelSpec]:
    from engine.model.checkpoint import read_config

    specs = []
    if args.model != "none":
        path = resolve_model(args.model)
        specs.append(ModelSpec(args.model, str(path), read_config(path)[0].name, "trained"))
    for config in _names(args.configs):
        specs.append(ModelSpec(f"{config} (random weights)", str(random_checkpoint(config, workdir)), config, "random"))
    if not specs:
        raise ValueError("nothing to time: give --model and/or --configs")
    return specs


def backend_unavailable(name: str) -> str | None:
    """Why a backend cannot run here, or None."""
    import importlib.util
    import shutil as _shutil

    from engine.model.backends import BACKENDS, tensorrt_available

    if name not in BACKENDS or name == "auto":
        return f"unknown backend {name!r} (eager, compile, tensorrt)"
    if name == "tensorrt" and not tensorrt_available():
        import torch

        missing = [what for what, there in (("an NVIDIA GPU", torch.cuda.is_available()),
                                            ("torch_tensorrt", importlib.util.find_spec("torch_tensorrt")))
                   if not there]
        return f"tensorrt needs an NVIDIA GPU and torch_tensorrt; missing here: {' and '.join(missing)}"
    if name == "compile":
        import torch

        if not torch.cuda.is_available():
            if _shutil.which("g++") is None and _shutil.which("clang++") is None:
                return "torch.compile on CPU needs a C++ compiler (g++ or clang++); none found"
            if not os.environ.get("SPATIA_BENCH_CPU_COMPILE"):
                return ("torch.compile on a CPU: the server builds a graph for every chunk shape before it answers, "
                        "minutes on a few cores (one shape took 79 s on 2); set SPATIA_BENCH_CPU_COMPILE=1 to time it")
    return None


def _names(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(s) for s in _names(text)]
    except ValueError:
        raise ValueError(f"{what} must be a comma list of integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"{what} must list integers >= 1, got {text!r}")
    return values


# --------------------------------------------------------------------------------------------- the benchmark
def run(args: argparse.Namespace) -> dict:
    from engine.bench.timing import machine_info

    clients_list = _ints(args.clients, "--clients")
    backends = _names(args.backends)
    if args.seconds <= 0 or args.budget_s <= 0:
        raise ValueError("--seconds and --budget-s must be positive")
    walk = load_walk(args.walk)
    workdir = Path(tempfile.mkdtemp(prefix="spatia-e2e-"))
    runs: list[dict] = []
    try:
        for spec in model_specs(args, workdir):
            for backend in backends:
                base = {"model": spec.label, "config": spec.config, "weights": spec.weights, "backend": backend}
                reason = backend_unavailable(backend)
                if reason:
                    runs += [{**base, "clients": m, "status": "skipped", "reason": reason} for m in clients_list]
                    continue
                runs += _runs_on_one_server(spec, backend, base, clients_list, walk, args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result = {
        "machine": machine_info(),
        "load_average_1m": os.getloadavg()[0],
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),  # of this (client) process
        "server_wait_policy": args.server_wait_policy,
        "dtype": args.dtype,
        "server_args": args.server_args,
        "walk": "default (forward, turn, stop, turn back, walk back)" if args.walk is None else str(args.walk),
        "goals": GOALS,
        "runs": runs,
    }
    ok = [r for r in runs if r.get("status") == "ok"]
    if ok:
        head = ok[0]
        result["headline"] = {
            "run": f"{head['model']} / {head['backend']} / {head['clients']} client(s)",
            "first_frame_p50_ms": head["motion_to_frame_ms"].get("p50"),
            "first_frame_p95_ms": head["motion_to_frame_ms"].get("p95"),
            "real_time_factor": head["real_time_factor"],
            "meets_latency_goal": (head["motion_to_frame_ms"].get("p50", float("inf")) <= GOALS["first_frame_p50_ms"]),
            "meets_real_time_goal": head["real_time_factor"] >= GOALS["real_time_factor"],
        }
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.no_plots and ok:
        result["plots"] = [str(p) for p in write_plots(runs, args.out)]
    for r in runs:
        r.pop("_samples", None)
    (args.out / "e2e.json").write_text(json.dumps(result, indent=2))
    return result


def _runs_on_one_server(spec: ModelSpec, backend: str, base: dict, clients_list: list[int], walk, args,
                        workdir: Path) -> list[dict]:
    runs = []
    server = ServerChild(spec.path, workdir, backend, args.threads, extra=tuple(shlex.split(args.server_args)),
                         wait_policy=args.server_wait_policy, dtype=args.dtype)
    with server:
        for i, m in enumerate(clients_list):
            try:
                runs.append({**base, "status": "ok", **measure(server, m, walk, args)})
            except BudgetExceeded as e:
                runs += [{**base, "clients": k, "status": "skipped", "reason": f"too slow here: {e}"}
                         for k in clients_list[i:]]
                break
            except RuntimeError as e:  # the server died or never answered: report, go on with the next backend
                runs += [{**base, "clients": k, "status": "failed", "reason": str(e)[-2000:]} for k in clients_list[i:]]
                break
    return runs


# --------------------------------------------------------------------------------------------- plots
def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # a bare Figure renders with Agg: no pyplot, no global backend

    return Figure(figsize=(width, height), dpi=100)


TIMELINE_PARTS = ("input_to_send", "queue", "retrieval", "render", "encode", "sample", "decode_first", "server_other",
                  "transfer")


def write_plots(runs: list[dict], out: Path) -> list[Path]:
    ok = [r for r in runs if r.get("status") == "ok" and r["_samples"]["latency_ms"]]
    if not ok:
        return []
    paths = [out / "e2e_timeline.png", out / "e2e_latency.png", out / "e2e_stages.png"]
    plot_timeline(ok[0], paths[0])
    plot_latency(ok, paths[1])
    plot_stages(ok, paths[2])
    return paths


def _label(r: dict) -> str:
    return f"{r['config']}{'*' if r['weights'] == 'random' else ''} {r['backend']} x{r['clients']}"


def plot_timeline(r: dict, path: Path) -> None:
    """One step, input to first frame (the median-latency sample), then the rest of its clip, as a Gantt chart."""
    from matplotlib import colormaps

    bds = sorted(r["_samples"]["breakdowns"], key=lambda b: sum(b[k] for k in TIMELINE_PARTS))
    if not bds:
        return
    b = bds[len(bds) // 2]
    fig = _figure(10, 3.6)
    ax = fig.subplots()
    cmap = colormaps["tab20"]
    t = 0.0
    for i, k in enumerate(TIMELINE_PARTS):
        w = max(0.0, b[k])
        ax.barh(1, w, left=t, color=cmap(i), edgecolor="black", linewidth=0.4, label=f"{k} {b[k]:.0f} ms")
        t += w
    first = t
    stages = r["stages_ms"]
    rest = [("decode (rest)", max(0.0, stages.get("decode", 0.0) - b["decode_first"])),
            *[(k, stages.get(k, 0.0)) for k in ("reconstruct", "segment", "update", "serialize_delta", "autosave")]]
    for j, (k, w) in enumerate(rest):
        ax.barh(0, w, left=t, color=cmap(len(TIMELINE_PARTS) + j), edgecolor="black", linewidth=0.4,
                label=f"{k} {w:.0f} ms")
        t += w
    ax.axvline(first, color="red", linestyle="--", linewidth=1)
    ax.set_yticks([0, 1], ["rest of the clip (medians)", "input -> first frame"])
    ax.set_xlabel("ms since the input event (the median-latency step)")
    ax.set_title(f"one step, {_label(r)}: motion-to-frame {first:.0f} ms", fontsize=9)
    ax.legend(fontsize=6, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.3))
    fig.tight_layout()
    fig.savefig(path)


def plot_latency(runs: list[dict], path: Path) -> None:
    fig = _figure(max(6.0, 1.1 * len(runs) + 2), 4)
    ax = fig.subplots()
    ax.boxplot([r["_samples"]["latency_ms"] for r in runs], whis=(5, 95), showfliers=True)
    ax.set_xticks(range(1, len(runs) + 1), [_label(r) for r in runs], rotation=30, ha="right", fontsize=7)
    ax.axhline(GOALS["first_frame_p50_ms"], color="red", linestyle="--", linewidth=1, label="p50 goal")
    ax.set_ylabel("motion-to-frame latency (ms)")
    ax.set_title("latency distributions (box: quartiles, whiskers: p5-p95; * = random weights)", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path)


def plot_stages(runs: list[dict], path: Path) -> None:
    fig = _figure(max(6.0, 1.1 * len(runs) + 3), 4.5)
    ax = fig.subplots()
    from matplotlib import colormaps

    keys = list(dict.fromkeys(k for r in runs for k in r["stages_ms"] if not k.startswith("step_")))
    cmap = colormaps["tab20"]
    for i, r in enumerate(runs):
        s = r["stages_ms"]
        bottom = 0.0
        steps = sum(v for k, v in s.items() if k.startswith("step_"))
        first = ("retrieval", "render", "encode")
        order = [*first, "steps", *[k for k in keys if k not in first]]
        for j, k in enumerate(order):
            v = steps if k == "steps" else s.get(k, 0.0)
            ax.bar(i, max(0.0, v), bottom=bottom, color=cmap(j % 20), label=k if i == 0 else None)
            bottom += max(0.0, v)
    ax.set_xticks(range(len(runs)), [_label(r) for r in runs], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("ms per clip (medians)")
    ax.set_title("where a clip's time goes (steps = all sampler steps)", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
