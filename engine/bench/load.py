"""Soak test: M explorers walking for minutes against one `spatia serve` child; memory, stalls, unanswered requests.

`spatia bench load --clients 4 --seconds 300` runs the e2e benchmark's explorers (the explorer's own Client,
PoseStreamer and CameraController, walked by a script) and, on top of their trajectories, has each send an edit
every `--edit-every-s` (a primitive inserted, then undone: each needs an autosave and an Ack). It reports:

- memory: the server's RSS (VmRSS of /proc/<pid>/status) sampled every `--sample-s`, against the sessions' own
  data, which grows by design as the walk adds frames: their bytes in memory as the server reports them in
  `<sessions>/status.json` (`WorldSession.nbytes`: points at allocated capacity, the voxel and id indexes, stored
  frames, cached latents), and for reference their autosave folders (~2.5x smaller: no indexes, no spare capacity).
  `unexplained_growth_mb` is RSS growth after warm-up minus in-memory session-data growth and minus the growth of
  the memory the allocator holds free (the server keeps freed heap for reuse, engine.runtime.tune_process, so
  transient arrays that grow with a session raise RSS without being in use; the status file reports it); a leak
  shows as steady growth beyond both;
- stalls: the longest gap between two messages reaching an explorer (the server answers heartbeats between sampler
  steps, so a gap longer than `--stall-s` means the loop stopped);
- answers: every edit gets an Ack or an Error; every trajectory is answered by frames or overtaken by a newer one
  (newest wins); at the end each explorer comes to rest and its last path must be generated in full;
- speed over time: per-minute medians of the clip stages, to show what grows with the length of a session.
Nothing here is a CI test (it runs for minutes); tests cover the same mechanics in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from engine.bench.e2e import ServerChild, WalkClient, drive, load_walk, resolve_model

TRACKED_STAGES = ("total", "retrieval", "render", "encode", "sample", "decode", "update", "autosave")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny", help="shipped model name or checkpoint folder")
    parser.add_argument("--clients", type=int, default=4, help="concurrent explorers")
    parser.add_argument("--seconds", type=float, default=300.0, help="length of the soak (s)")
    parser.add_argument("--warmup-s", type=float, default=10.0, help="walk before the memory baseline (s)")
    parser.add_argument("--sample-s", type=float, default=1.0, help="RSS sampling period (s)")
    parser.add_argument("--edit-every-s", type=float, default=15.0, help="each explorer edits this often (s)")
    parser.add_argument("--stall-s", type=float, default=5.0, help="a longer silence towards an explorer is a stall")
    parser.add_argument("--rss-slack-mb", type=float, default=64.0,
                        help="RSS growth beyond the sessions' data allowed before memory counts as growing")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the server")
    parser.add_argument("--seed", type=int, default=0, help="procedural scene of the first explorer (+i for the i-th)")
    parser.add_argument("--out", type=Path, default=Path("out/bench-load"), help="folder for JSON and PNG")
    parser.add_argument("--no-plots", action="store_true")


class LoadClient(WalkClient):
    """A walking explorer that also edits now and then and checks that every request is answered."""

    def __init__(self, *args, edit_every_s: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.edit_every_s = edit_every_s
        self.next_edit: float | None = None
        self.edit_id = 0
        self.edits_open: dict[int, float] = {}  # edit_id -> send time, until its Ack or Error
        self.edits_sent = self.acks = self.edit_errors = 0
        self.edit_latency_s: list[float] = []
        self.trajectories = 0
        self.answered_seqs: set[int] = set()  # trajectories with at least one frame back
        self.clip_log: list[tuple[float, dict]] = []  # (receive time, ClipDone timings) over the whole soak
        self.last_answer: float | None = None
        self.max_gap_s = 0.0
        self.max_gap_at = 0.0  # when the longest gap ended
        self.stall_limit_s = 5.0
        self.stalls: list[dict] = []  # gaps over the limit, with what this explorer did meanwhile
        self._sent_at_last = 0  # trajectories sent when the last message came
        self.frames_total = 0

    def receive(self) -> int:
        n = super().receive()
        # every message counts as an answer, heartbeats included (Client.poll consumes those itself, so the
        # time of the last one comes from the client's silence clock)
        last = self.clock() - self.client.silence_s
        if self.measuring and last != self.last_answer:
            gap = 0.0 if self.last_answer is None else last - self.last_answer
            if gap > self.max_gap_s:
                self.max_gap_s, self.max_gap_at = gap, last
            if gap > self.stall_limit_s:
                self.stalls.append({"ended_at": last - self.measure_t0, "gap_s": gap,
                                    "trajectories_sent": self.streamer.sent - self._sent_at_last})
            self.last_answer, self._sent_at_last = last, self.streamer.sent
        return n

    def handle(self, msg, now: float) -> None:
        if msg.type == "frame" and msg.seq > 0:
            self.answered_seqs.add(msg.seq)
            self.frames_total += 1
        elif msg.type == "clip_done":
            self.clip_log.append((now, dict(msg.timings)))
        elif msg.type in ("ack", "error") and msg.ref_type.startswith("edit_"):
            ref = getattr(msg, "ref_id", None)
            key = ref if ref in self.edits_open else next(iter(self.edits_open), None)  # Errors carry no id
            if key is not None:
                self.edit_latency_s.append(now - self.edits_open.pop(key))
                if msg.type == "ack":
                    self.acks += 1
                else:
                    self.edit_errors += 1
        super().handle(msg, now)

    def tick(self, now: float) -> None:
        sent = self.streamer.sent
        super().tick(now)
        self.trajectories += self.streamer.sent - sent
        if not (self.ready and self.measuring):
            return
        if self.next_edit is None:
            self.next_edit = now + self.edit_every_s * (1 + self.seed % 4) / 4  # explorers edit out of step
        if now >= self.next_edit:
            self._edit()
            self.next_edit = now + self.edit_every_s

    def _edit(self) -> None:
        from engine.server.protocol import EditInsertPrimitive, EditUndo, Primitive

        self.edit_id += 1
        if self.edit_id % 2:  # a small box in front of the camera, then undone
            c2w = np.linalg.inv(self.camera.w2c)
            centre = c2w[:3, 3] + 2.0 * c2w[:3, 2]
            msg = EditInsertPrimitive(edit_id=self.edit_id, shape=Primitive.BOX, center=centre,
                                      size=np.full(3, 0.3), rgb=np.array([230, 40, 40], np.uint8))
        else:
            msg = EditUndo(edit_id=self.edit_id)
        if self.client.send(msg):
            self.edits_open[self.edit_id] = self.clock()
            self.edits_sent += 1


def folder_bytes(path: Path) -> int:
    """Bytes of the files under `path`, read while the server writes there: its temporary and replaced folders
    (`.NAME.tmp`, `.NAME.old`) are left out, and files that vanish between listing and reading are skipped."""
    total = 0
    for root, dirs, files in os.walk(path):  # a folder renamed away mid-walk is skipped (os.walk ignores the error)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total


def _fit_slope(t: list[float], y: list[float]) -> float:
    """Least-squares slope dy/dt (per second); 0 with fewer than two points."""
    if len(t) < 2:
        return 0.0
    return float(np.polyfit(np.asarray(t), np.asarray(y), 1)[0])


def reported_session_bytes(sessions_dir: Path) -> float:
    """The live sessions' in-memory bytes from the server's status file (NaN when it is missing or unreadable)."""
    return _status_number(sessions_dir, "session_bytes")


def reported_heap_free_bytes(sessions_dir: Path) -> float:
    """Bytes the server's allocator holds free (freed, kept, counted in RSS) from its status file (NaN if unknown)."""
    return _status_number(sessions_dir, "heap_free_bytes")


def _status_number(sessions_dir: Path, key: str) -> float:
    try:
        return float(json.loads((sessions_dir / "status.json").read_text())[key])
    except (OSError, ValueError, KeyError, TypeError):
        return float("nan")


def run(args: argparse.Namespace) -> dict:
    from engine.bench.timing import machine_info

    if args.clients < 1 or args.seconds <= 0 or args.sample_s <= 0 or args.edit_every_s <= 0:
        raise ValueError("--clients >= 1 and positive --seconds, --sample-s, --edit-every-s are required")
    model = str(resolve_model(args.model))
    walk = load_walk(None)
    workdir = Path(tempfile.mkdtemp(prefix="spatia-load-"))
    # (s since start, RSS, autosaves, sessions in memory, allocator's free memory) MiB
    samples: list[tuple[float, float, float, float, float]] = []
    t_start = [0.0]
    try:
        with ServerChild(model, workdir, "eager", args.threads) as server:
            clients = [LoadClient(server.address, args.seed + i, walk, edit_every_s=args.edit_every_s)
                       for i in range(args.clients)]
            for c in clients:
                c.stall_limit_s = args.stall_s
            try:
                if not drive(clients, server, until=lambda: all(c.ready for c in clients), timeout_s=300.0):
                    raise RuntimeError(f"sessions did not open; server log:\n{server.local.log_tail()}")
                drive(clients, server, seconds=args.warmup_s)
                next_sample = [0.0]

                def sample(now: float) -> None:
                    if now >= next_sample[0]:
                        rss = server.rss_bytes() / 2**20
                        data = folder_bytes(workdir / "sessions" / "autosave") / 2**20
                        in_memory = reported_session_bytes(workdir / "sessions") / 2**20
                        heap_free = reported_heap_free_bytes(workdir / "sessions") / 2**20
                        samples.append((now - t_start[0], rss, data, in_memory, heap_free))
                        next_sample[0] = now + args.sample_s

                t_start[0] = time.time()
                for c in clients:
                    c.begin_measurement(t_start[0])
                drive(clients, server, seconds=args.seconds, on_tick=sample)
                # come to rest: the last path of every explorer must be generated in full
                now = time.time()
                for c in clients:
                    c.come_to_rest(now)
                complete = drive(clients, server, until=lambda: all(c.streamer.pending == 0 and not c.edits_open
                                                                    for c in clients), timeout_s=120.0)
                for c in clients:
                    c.end_measurement()
                    c.stop_walking()
                drive(clients, server, until=lambda: all(c.cancel_acked for c in clients), timeout_s=30.0)
                result = summarize(clients, samples, args, complete)
            finally:
                for c in clients:
                    c.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result["machine"] = machine_info()
    result["load_average_1m"] = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.no_plots and samples:
        result["plot"] = str(plot(samples, clients, t_start[0], args.out / "load.png"))
    (args.out / "load.json").write_text(json.dumps(result, indent=2))
    return result


def summarize(clients: list[LoadClient], samples, args, complete: bool) -> dict:
    t = [s[0] for s in samples]
    rss = [s[1] for s in samples]
    data = [s[2] for s in samples]
    in_memory = [s[3] for s in samples if np.isfinite(s[3])]
    heap_free = [s[4] for s in samples if np.isfinite(s[4])]
    half = len(samples) // 2
    growth = (rss[-1] - rss[0]) if rss else 0.0
    data_growth = (data[-1] - data[0]) if data else 0.0
    memory_growth = (in_memory[-1] - in_memory[0]) if len(in_memory) >= 2 else None
    free_growth = (heap_free[-1] - heap_free[0]) if len(heap_free) >= 2 else 0.0
    # against the sessions' bytes in memory when the server reported them, else (an older server) their autosaves
    beyond_data = growth - (data_growth if memory_growth is None else memory_growth)
    # and beyond what the allocator holds free: freed memory kept for reuse (tune_process) is not in use
    unexplained = beyond_data - free_growth
    t0 = clients[0].measure_t0
    by_minute: dict[str, list[dict[str, float]]] = {}
    for c in clients:
        for when, timings in c.clip_log:
            if when >= t0:
                by_minute.setdefault(str(int((when - t0) // 60)), []).append(timings)
    stage_trend = {}
    for minute in sorted(by_minute, key=int):
        rows = by_minute[minute]
        stage_trend[minute] = {k: statistics.median(r[k] for r in rows if k in r) for k in TRACKED_STAGES
                               if any(k in r for r in rows)} | {"clips": len(rows)}
    unanswered_edits = sum(len(c.edits_open) for c in clients)
    max_gap = max(c.max_gap_s for c in clients)
    out = {
        "clients": len(clients),
        "seconds": args.seconds,
        "frames": sum(c.frames_total for c in clients),
        "generated_fps_total": sum(c.frames_total for c in clients) / args.seconds,
        "requests": {
            "trajectories": sum(c.trajectories for c in clients),
            "trajectories_answered": sum(len(c.answered_seqs) for c in clients),  # the others: overtaken by newer
            "edits": sum(c.edits_sent for c in clients),
            "acks": sum(c.acks for c in clients),
            "edit_errors": sum(c.edit_errors for c in clients),
            "edits_unanswered": unanswered_edits,
            "edit_answer_s_max": max((x for c in clients for x in c.edit_latency_s), default=0.0),
            "final_paths_complete": complete,
        },
        "stall": {"max_gap_s": max_gap, "per_client_s": [c.max_gap_s for c in clients], "limit_s": args.stall_s,
                  "ended_at_s": [c.max_gap_at - t0 for c in clients],
                  "stalls": sorted((x | {"explorer": c.seed} for c in clients for x in c.stalls),
                                   key=lambda x: x["ended_at"])[:40]},
        "rss_mb": {"start": rss[0] if rss else None, "end": rss[-1] if rss else None, "max": max(rss, default=None),
                   "slope_mb_per_min_2nd_half": _fit_slope(t[half:], rss[half:]) * 60},
        "sessions_data_mb": {"start": data[0] if data else None, "end": data[-1] if data else None,
                             "slope_mb_per_min_2nd_half": _fit_slope(t[half:], data[half:]) * 60},
        "sessions_in_memory_mb": {"start": in_memory[0] if in_memory else None,
                                  "end": in_memory[-1] if in_memory else None,
                                  "reported": memory_growth is not None},
        "heap_free_mb": {"start": heap_free[0] if heap_free else None, "end": heap_free[-1] if heap_free else None,
                         "reported": len(heap_free) >= 2},
        "rss_growth_beyond_data_mb": beyond_data,
        "unexplained_growth_mb": unexplained,
        "stages_ms_by_minute": stage_trend,
        "errors": [e for c in clients for e in c.rec.errors][:20],
    }
    out["verdict"] = {
        "memory_bounded": unexplained <= args.rss_slack_mb,
        "no_stall": max_gap <= args.stall_s,
        "all_answered": unanswered_edits == 0 and complete,
    }
    return out


def plot(samples, clients: list[LoadClient], t0: float, path: Path) -> Path:
    from engine.bench.e2e import _figure

    fig = _figure(10, 4)
    ax1, ax2 = fig.subplots(1, 2)
    t = [s[0] for s in samples]
    ax1.plot(t, [s[1] for s in samples], label="server RSS")
    ax1.plot(t, [s[3] for s in samples], label="sessions' data in memory (server's status)")
    ax1.plot(t, [s[2] for s in samples], label="sessions' autosaves")
    ax1.plot(t, [s[4] for s in samples], label="held free by the allocator (server's status)")
    ax1.set_xlabel("s")
    ax1.set_ylabel("MiB")
    ax1.legend(fontsize=7)
    ax1.grid(alpha=0.3)
    for c in clients:
        pts = [(w - t0, tm["total"]) for w, tm in c.clip_log if w >= t0 and "total" in tm]
        if pts:
            ax2.plot(*zip(*pts), ".", markersize=2, label=f"explorer {c.seed}")
    ax2.set_xlabel("s")
    ax2.set_ylabel("clip total (ms)")
    ax2.legend(fontsize=7)
    ax2.grid(alpha=0.3)
    fig.suptitle(f"soak: {len(clients)} explorers", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return path
