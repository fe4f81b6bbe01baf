"""Bad-input fuzzing: thousands of malformed inputs through the protocol decoder and every file reader.

`spatia bench fuzz --cases N` mutates valid inputs with a seeded generator (so a case number reproduces its input)
and feeds each to its reader in a worker process; a case that kills the worker (a segfault in a native reader, an
out-of-memory kill) is recorded as a crash and the worker restarts, a case that runs past `--case-timeout-s` as a
hang. Every other case must end in one of two ways:

- accepted: the reader returned a value that passes the reader's own contract (finite rigid poses, a message that
  re-encodes, points with colours, ...): a mutation may leave an input valid;
- refused clearly: the reader raised its documented exception type with a non-empty message (CLEAR_ERRORS).
Anything else (another exception type, a bad accepted value, a crash, a hang) is a failure, reported with its case
number and its input written to `--out/failures/`.

Targets and their seeds: `protocol` (every message class's example, encoded; mutated at the byte, frame and header
level), `w2c`, `intrinsics`, `re10k` (engine.geometry's readers of the release's files; mutated at the byte and
token level), `ply` (SpatialMemory.from_ply on binary and ascii PLY), `ply_explore` (the explorer's `--ply`
reader), `masks` (engine.segment.masks.read_masks on PNG and .npy), `image` (the explorer's `--image` reader,
imageio underneath, on PNG and JPEG) and `session` (WorldSession.load on a saved session folder, one of its three
files mutated).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import random
import shutil
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# target -> the exception types that count as a clear refusal ("module:Class"; resolved in the worker)
CLEAR_ERRORS: dict[str, tuple[str, ...]] = {
    "protocol": ("engine.server.protocol:ProtocolError",),
    "w2c": ("engine.geometry:TrajectoryFileError",),
    "intrinsics": ("engine.geometry:TrajectoryFileError",),
    "re10k": ("engine.geometry:TrajectoryFileError",),
    "ply": ("engine.memory.pointcloud:MemoryFileError",),
    "ply_explore": ("engine.explore_cmd:InputError",),
    "masks": ("engine.segment.masks:MaskFileError",),
    "image": ("engine.explore_cmd:InputError",),
    "session": ("engine.pipeline:PipelineError",),
}
TARGETS = tuple(CLEAR_ERRORS)
TEXT_TARGETS = frozenset({"w2c", "intrinsics", "re10k"})
# Replacement tokens for text formats: the values parsers trip on (non-finite, overflow, denormal, empty, junk).
BAD_TOKENS = ("nan", "NaN", "inf", "-inf", "Infinity", "1e309", "-1e400", "1e-320", "0", "-0", "", "abc", "[", "]]",
              "[[", ",", "0x1p3", "1_000", "9" * 400, "\x00", "\u2028", "1e", "--1", "null", "true", '"1"', "{}")
# Values a msgpack header field may be swapped for: wrong types, extremes, nesting.
BAD_VALUES = (None, True, -1, 0, 2**63, -(2**63), 2**64 - 1, 1.5, float("nan"), float("inf"), "", "x" * 9000,
              "float64", "object", "<U8", "V8", "|S0", "O", [], [[]], [-1], [2**40, 2**40], [1.5], [True], {},
              {"a": 1}, b"\x00" * 8)
WORKER_MEMORY_BYTES = 3 * 2**30  # address space a worker may add: a header claiming terabytes fails, not the host


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", type=int, default=2000, help="malformed inputs per target")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma list of {', '.join(TARGETS)}")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mutations (a case reproduces from it)")
    parser.add_argument("--case-timeout-s", type=float, default=20.0, help="a case running longer is a hang")
    parser.add_argument("--out", type=Path, default=Path("out/bench-fuzz"), help="report and failing inputs")


# --------------------------------------------------------------------------------------------- mutations
def mutate_bytes(data: bytes, rng: random.Random, others: list[bytes]) -> bytes:
    """One to three random byte-level edits (bit flips, special bytes, insert, delete, truncate, repeat, splice)."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(7)
        n = len(b)
        if op == 0 and n:  # flip bits
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(n)
                b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:  # interesting byte values
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(n)] = rng.choice((0x00, 0xFF, 0x7F, 0x80, 0x01, 0x20, 0x0A))
        elif op == 2:  # insert random bytes
            i = rng.randint(0, n)
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        elif op == 3 and n:  # delete a range
            i = rng.randrange(n)
            del b[i : i + rng.randint(1, max(1, n // 8))]
        elif op == 4:  # truncate
            del b[rng.randint(0, n) :]
        elif op == 5 and n:  # repeat a range
            i = rng.randrange(n)
            j = min(n, i + rng.randint(1, 256))
            b[j:j] = b[i:j] * rng.randint(1, 4)
        elif op == 6 and others:  # splice with another valid input
            o = rng.choice(others)
            i, j = rng.randint(0, n), rng.randint(0, len(o))
            b = b[:i] + bytearray(o[j:])
    return bytes(b)


def mutate_text(text: str, rng: random.Random) -> str:
    """Token- and line-level edits of a text file (numbers swapped for bad tokens, lines dropped or repeated)."""
    lines = text.splitlines()
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(5)
        if op == 0 and lines:  # replace one token of a line
            i = rng.randrange(len(lines))
            toks = lines[i].replace("[", " [ ").replace("]", " ] ").replace(",", " , ").split()
            if toks:
                toks[rng.randrange(len(toks))] = rng.choice(BAD_TOKENS)
                lines[i] = " ".join(toks)
        elif op == 1 and lines:  # drop a line
            del lines[rng.randrange(len(lines))]
        elif op == 2 and lines:  # repeat a line, or a long run of it
            i = rng.randrange(len(lines))
            lines[i:i] = [lines[i]] * rng.choice((1, 2, 1000))
        elif op == 3:  # a garbage line
            lines.insert(rng.randint(0, len(lines)), rng.choice(BAD_TOKENS) * rng.randint(1, 4))
        elif op == 4 and lines:  # cut a line short
            i = rng.randrange(len(lines))
            lines[i] = lines[i][: rng.randint(0, len(lines[i]))]
    return "\n".join(lines) + rng.choice(("\n", "", "\r\n"))


def mutate_header(header: dict, rng: random.Random) -> dict:
    """A structure-aware edit of a decoded protocol header (a key, a field value, an array entry)."""
    import copy

    h = copy.deepcopy(header)
    op = rng.randrange(6)
    if op == 0:  # drop or swap a top-level key
        key = rng.choice(list(h))
        if rng.random() < 0.5:
            del h[key]
        else:
            h[key] = rng.choice(BAD_VALUES)
    elif op == 1 and h.get("fields"):  # a scalar field gets a bad value
        h["fields"][rng.choice(list(h["fields"]))] = rng.choice(BAD_VALUES)
    elif op == 2:  # an unknown field
        h.setdefault("fields", {})["zz_unknown"] = 1
    elif op == 3 and h.get("arrays"):  # an array entry's dtype, shape, frame or name
        entry = rng.choice(h["arrays"])
        entry[rng.choice(("dtype", "shape", "frame", "name"))] = rng.choice(BAD_VALUES)
    elif op == 4 and h.get("arrays"):  # a plausible shape that disagrees with the buffer or the spec
        entry = rng.choice(h["arrays"])
        entry["shape"] = [rng.choice((0, 1, 2, 3, 4, 7, 4096, 2**31)) for _ in range(rng.randint(0, 4))]
    else:  # another message type with these fields
        from engine.server.protocol import REGISTRY

        h["type"] = rng.choice(sorted(REGISTRY))
    return h


def mutate_frames(frames: list[bytes], rng: random.Random, others: list[bytes]) -> list[bytes]:
    """A protocol message's frames: header edits, byte edits of any frame, frames dropped, added or swapped."""
    import msgpack

    frames = list(frames)
    op = rng.randrange(6)
    if op == 0:
        header = msgpack.unpackb(frames[0], raw=False)
        frames[0] = msgpack.packb(mutate_header(header, rng), use_bin_type=True)
    elif op == 1:
        i = rng.randrange(len(frames))
        frames[i] = mutate_bytes(frames[i], rng, others)
    elif op == 2 and len(frames) > 1:
        del frames[rng.randrange(1, len(frames))]
    elif op == 3:
        frames.insert(rng.randint(1, len(frames)), bytes(rng.randrange(256) for _ in range(rng.randint(0, 64))))
    elif op == 4 and len(frames) > 2:  # buffers in the wrong order
        i, j = rng.sample(range(1, len(frames)), 2)
        frames[i], frames[j] = frames[j], frames[i]
    else:  # a float buffer filled with a NaN pattern (or anything) keeping its length
        i = rng.randrange(len(frames))
        frames[i] = (b"\x00\x00\x00\x00\x00\x00\xf8\x7f" * (len(frames[i]) // 8 + 1))[: len(frames[i])]
    return frames


# --------------------------------------------------------------------------------------------- targets (worker side)
@dataclass
class Target:
    """Seeds (valid inputs) and the reader of one target; `check` enforces the reader's contract on a value."""

    name: str
    seeds: list  # bytes per file, list[bytes] per protocol message, dict[str, bytes] per session folder
    suffixes: list[str]  # file suffix per seed ("" for protocol)
    read: object  # callable(input) -> value
    check: object  # callable(value) -> None, raises AssertionError on a contract breach
    clear: tuple[type, ...]


def _resolve(spec: str) -> type:
    import importlib

    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def build_target(name: str, workdir: Path) -> Target:
    """The seeds and reader of a target (imports happen here, in the worker)."""
    import numpy as np

    from engine import geometry

    clear = tuple(_resolve(s) for s in CLEAR_ERRORS[name])
    rng = np.random.default_rng(0)
    poses = np.stack([geometry.look_at(np.array([0.3 * i, 1.6, -2.0]), np.array([0.0, 1.0, 2.0])) for i in range(4)])

    def finite_rigid(w2c):
        assert np.isfinite(w2c).all() and w2c.shape[-2:] == (4, 4)
        assert float(np.max(geometry.rotation_error(w2c[..., :3, :3]))) <= geometry.ORTHONORMAL_TOL

    if name == "protocol":
        from engine.server import protocol as P

        seeds = [[bytes(f) for f in P.encode(cls.example())] for cls in P.message_classes().values()]
        return Target(name, seeds, [""] * len(seeds), P.decode, lambda msg: P.encode(msg), clear)
    if name in ("w2c", "intrinsics", "re10k"):
        path = workdir / f"seed.{name}.txt"
        if name == "w2c":
            geometry.write_w2c_txt(path, poses)
            read, check = geometry.read_w2c_txt, finite_rigid
        elif name == "intrinsics":
            geometry.write_intrinsics_txt(path, np.array([[0.8, 1.4, 0.5, 0.5], [0.7, 1.2, 0.49, 0.52]]))
            read = geometry.read_intrinsics_txt

            def check(v):
                assert v.ndim == 2 and v.shape[1] == 4 and np.isfinite(v).all() and (v[:, :2] > 0).all()
        else:
            traj = geometry.Re10kTrajectory("https://example.com/v", np.arange(4, dtype=np.int64) * 33366,
                                            np.tile([0.8, 1.4, 0.5, 0.5], (4, 1)), poses)
            geometry.write_re10k(path, traj)
            read = geometry.read_re10k

            def check(v):
                finite_rigid(v.w2c)
                assert np.isfinite(v.intrinsics).all() and len(v.timestamps) == len(v.w2c) == len(v.intrinsics)
        return Target(name, [path.read_bytes()], [".txt"], read, check, clear)
    if name in ("ply", "ply_explore"):
        import open3d as o3d

        xyz = rng.normal(size=(200, 3))
        seeds = []
        for ascii_, colors in ((False, True), (True, True), (False, False)):
            pcd = o3d.geometry.PointCloud()
            pcd.points = o3d.utility.Vector3dVector(xyz)
            if colors:
                pcd.colors = o3d.utility.Vector3dVector(rng.random((200, 3)))
            p = workdir / "seed.ply"
            o3d.io.write_point_cloud(str(p), pcd, write_ascii=ascii_)
            seeds.append(p.read_bytes())
        if name == "ply":
            from engine.memory.pointcloud import SpatialMemory

            def check(mem):
                assert len(mem) > 0 and np.isfinite(mem.xyz).all()

            return Target(name, seeds, [".ply"] * 3, SpatialMemory.from_ply, check, clear)
        from engine.explore_cmd import read_ply

        def check(v):
            xyz_, rgb_ = v
            assert len(xyz_) > 0 and np.isfinite(xyz_).all() and rgb_.dtype == np.uint8 and rgb_.shape == xyz_.shape

        return Target(name, seeds, [".ply"] * 3, lambda p: read_ply(Path(p)), check, clear)
    if name == "masks":
        import imageio.v3 as iio

        from engine.segment.masks import read_masks

        m = rng.random((3, 24, 32)) > 0.5
        iio.imwrite(workdir / "seed.png", (m[0] * 255).astype(np.uint8))
        np.save(workdir / "seed.npy", m)

        def check(v):
            assert v.dtype == bool and v.ndim == 3 and v.shape[0] >= 1

        return Target(name, [(workdir / "seed.png").read_bytes(), (workdir / "seed.npy").read_bytes()],
                      [".png", ".npy"], read_masks, check, clear)
    if name == "image":
        import imageio.v3 as iio

        from engine.explore_cmd import read_image

        img = (rng.random((24, 32, 3)) * 255).astype(np.uint8)
        iio.imwrite(workdir / "seed.png", img)
        iio.imwrite(workdir / "seed.jpg", img)

        def check(v):
            assert v.dtype == np.uint8 and v.ndim == 3 and v.shape[2] == 3

        return Target(name, [(workdir / "seed.png").read_bytes(), (workdir / "seed.jpg").read_bytes()],
                      [".png", ".jpg"], lambda p: read_image(Path(p)), check, clear)
    if name == "session":
        return _session_target(workdir, clear)
    raise ValueError(f"unknown fuzz target {name!r}; choose from {', '.join(TARGETS)}")


def _session_target(workdir: Path, clear) -> Target:
    import numpy as np
    import torch

    from engine import geometry
    from engine.model.configs import ModelConfig
    from engine.pipeline import PipelineError, WorldModel, WorldSession

    torch.set_num_threads(1)
    # a 32x32 two-layer model: session files depend on the frame size only, not on the network
    cfg = ModelConfig.from_name("tiny", height=32, width=32, dim=64, num_heads=2, num_layers=2, ffn_dim=128,
                                control_layers=(0,), vae_dim=8, vae_dec_dim=8, latent_channels=8, num_refs=2)
    model = WorldModel.random(cfg)
    session = WorldSession(model)
    session.open_procedural(1)
    start = session.last_frame.camera.w2c
    c2w = geometry.invert_se3(start)
    c2w[:3, 3] += c2w[:3, 2] * 0.1
    session.generate_chunk(np.stack([geometry.invert_se3(c2w)] * cfg.chunk_frames), geometry.fov_to_intrinsics(60.0))
    folder = session.save(workdir / "seed_session")
    files = {p.name: p.read_bytes() for p in folder.iterdir()}

    poses = np.stack([geometry.invert_se3(c2w)] * cfg.chunk_frames)

    def check(s):
        """A loaded session must generate: a refusal must be a PipelineError, nothing else."""
        assert isinstance(s, WorldSession)
        try:
            s.generate_chunk(poses, geometry.fov_to_intrinsics(60.0))
        except PipelineError:
            pass

    return Target("session", [files], [""], lambda d: WorldSession.load(d, model), check, clear)


def make_case(target: Target, case: int, seed: int):
    """The malformed input of case number `case` (deterministic in (seed, target, case))."""
    rng = random.Random(f"{seed}:{target.name}:{case}")
    k = rng.randrange(len(target.seeds))
    base = target.seeds[k]
    if target.name == "protocol":
        return mutate_frames(base, rng, [f for s in target.seeds for f in s[:1]]), target.suffixes[k]
    if target.name == "session":
        name = rng.choice(sorted(base))
        files = dict(base)
        if name.endswith(".json") and rng.random() < 0.5:
            files[name] = _mutate_json(base[name], rng)
        else:
            files[name] = mutate_bytes(base[name], rng, [])
        return files, ""
    flat = [s for s in target.seeds if isinstance(s, bytes)]
    if target.name in TEXT_TARGETS and rng.random() < 0.6:
        return mutate_text(base.decode(), rng).encode("utf-8", "surrogatepass"), target.suffixes[k]
    return mutate_bytes(base, rng, flat), target.suffixes[k]


def _mutate_json(data: bytes, rng: random.Random) -> bytes:
    """session.json with one key dropped or given a bad value (nested options included)."""
    meta = json.loads(data)
    where = meta["options"] if rng.random() < 0.4 else meta
    key = rng.choice(sorted(where))
    if rng.random() < 0.3:
        del where[key]
    else:
        value = rng.choice(BAD_VALUES)
        where[key] = value.hex() if isinstance(value, bytes) else value
    return json.dumps(meta, allow_nan=True).encode()


def _materialise(value, suffix: str, workdir: Path):
    """Bytes -> a file, a dict of files -> a folder; protocol frames stay a list."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        folder = workdir / "case_session"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        for name, data in value.items():
            (folder / name).write_bytes(data)
        return folder
    path = workdir / f"case{suffix}"
    path.write_bytes(value)
    return path


def run_case(target: Target, case: int, seed: int, workdir: Path) -> dict:
    """Feed one malformed input to its reader; classify the outcome."""
    value, suffix = make_case(target, case, seed)
    t0 = time.perf_counter()
    try:
        result = target.read(_materialise(value, suffix, workdir))
    except target.clear as e:
        outcome = "clear" if str(e).strip() else "unclear"
        info = {"type": type(e).__name__, "message": str(e)[:300]}
    except Exception as e:  # noqa: BLE001 - any other type is exactly what this benchmark looks for
        outcome = "unclear"
        info = {"type": type(e).__name__, "message": str(e)[:300], "where": traceback.format_exc()[-1200:]}
    else:
        try:
            target.check(result)
            outcome, info = "accepted", {}
        except Exception as e:  # noqa: BLE001 - a contract breach of an accepted value
            outcome, info = "bad_value", {"type": type(e).__name__, "message": str(e)[:300] or "contract check failed"}
    return {"case": case, "outcome": outcome, "ms": (time.perf_counter() - t0) * 1e3, **info}


# --------------------------------------------------------------------------------------------- worker process
def _set_memory_limit(extra_bytes: int | None) -> None:
    """Cap the worker's address space at its current size plus extra_bytes (None lifts the cap)."""
    import resource

    if extra_bytes is None:
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        return
    vm = next(int(line.split()[1]) * 1024 for line in Path("/proc/self/status").read_text().splitlines()
              if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + extra_bytes, resource.RLIM_INFINITY))


def _worker(conn, seed: int, workdir: str) -> None:
    import warnings

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    work = Path(workdir)
    targets: dict[str, Target] = {}
    # native readers (RPly, open3d) print every complaint; keep the parent's stdout clean JSON
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    warnings.simplefilter("ignore")  # overflow warnings of NumPy casts on garbage values
    conn.send("ready")
    while True:
        request = conn.recv()
        if request is None:
            return
        name, case = request
        if name not in targets:  # built lazily, without the cap (imports map a lot of address space)
            _set_memory_limit(None)
            (work / name).mkdir(exist_ok=True)
            try:
                targets[name] = build_target(name, work / name)
            except Exception:  # noqa: BLE001 - the harness itself failed: the parent reports it
                conn.send({"case": case, "outcome": "setup_failed", "message": traceback.format_exc()[-3000:]})
                continue
            _set_memory_limit(WORKER_MEMORY_BYTES)
        conn.send(run_case(targets[name], case, seed, work / name))


class Worker:
    """A fuzz worker process (targets built on first use); restarted after a crash or a hang."""

    def __init__(self, seed: int, workdir: Path):
        self.seed, self.workdir = seed, workdir
        self.ctx = mp.get_context("spawn")
        self.proc = None
        self.conn = None
        self.starts = 0

    def start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker, args=(child, self.seed, str(self.workdir)), daemon=True)
        self.proc.start()
        child.close()
        self.starts += 1
        if not self.conn.poll(300) or self.conn.recv() != "ready":
            raise RuntimeError(f"the fuzz worker did not start (exit code {self.proc.exitcode})")

    def run(self, target: str, case: int, timeout_s: float) -> dict:
        if self.proc is None or not self.proc.is_alive():
            self.start()
        self.conn.send((target, case))
        try:
            if self.conn.poll(timeout_s):
                return self.conn.recv()
        except (EOFError, ConnectionResetError):
            pass
        if self.proc.is_alive():  # still running: a hang
            self.proc.kill()
            self.proc.join(10)
            self.proc = None
            return {"case": case, "outcome": "hang", "type": "timeout", "message": f"no answer in {timeout_s:g} s"}
        self.proc.join(10)
        code = self.proc.exitcode
        self.proc = None
        return {"case": case, "outcome": "crash", "type": "process died", "message": f"worker exit code {code}"}

    def stop(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.conn.send(None)
            self.proc.join(10)
            if self.proc.is_alive():
                self.proc.kill()


FAILURES = ("unclear", "bad_value", "crash", "hang")


def fuzz_target(worker: Worker, name: str, cases: int, seed: int, timeout_s: float, out: Path | None = None) -> dict:
    """Run `cases` malformed inputs of one target; outcome counts, error types and the failing cases."""
    counts, types, failures, ms = Counter(), Counter(), [], []
    starts = worker.starts
    t0 = time.perf_counter()
    for case in range(cases):
        # a generous first-case limit: the worker builds the target (imports, seed files) on its first case
        r = worker.run(name, case, timeout_s if case else max(timeout_s, 300.0))
        if r["outcome"] == "setup_failed":
            raise RuntimeError(f"fuzz target {name} could not be set up:\n{r['message']}")
        counts[r["outcome"]] += 1
        ms.append(r.get("ms", 0.0))
        if r["outcome"] in ("clear", "unclear", "bad_value"):
            types[f"{r['outcome']}:{r['type']}"] += 1
        if r["outcome"] in FAILURES:
            failures.append(r)
            if out is not None:
                _save_failure(name, case, seed, out)
    return {"cases": cases, **{k: counts.get(k, 0) for k in ("accepted", "clear", *FAILURES)},
            "error_types": dict(types.most_common()), "worker_restarts": worker.starts - starts,
            "case_ms_median": sorted(ms)[len(ms) // 2] if ms else 0.0, "seconds": time.perf_counter() - t0,
            "failures": failures[:20]}


def fuzz(targets: list[str], cases: int, seed: int = 0, timeout_s: float = 20.0, out: Path | None = None) -> dict:
    """Fuzz several targets in one worker process (restarted when a case kills it)."""
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        raise ValueError(f"unknown fuzz target(s) {unknown}; choose from {', '.join(TARGETS)}")
    workdir = Path(tempfile.mkdtemp(prefix="spatia-fuzz-"))
    worker = Worker(seed, workdir)
    try:
        per_target = {t: fuzz_target(worker, t, cases, seed, timeout_s, out) for t in targets}
    finally:
        worker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "cases": sum(r["cases"] for r in per_target.values()),
        "failures": sum(r[k] for r in per_target.values() for k in FAILURES),
        "clear_error_types": {t: [s.split(":")[1] for s in CLEAR_ERRORS[t]] for t in targets},
        "seed": seed,
        "targets": per_target,
    }


def _save_failure(name: str, case: int, seed: int, out: Path) -> None:
    """Write a failing case's input to out/failures/ (recomputed: the worker may be gone)."""
    folder = out / "failures"
    folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="spatia-fuzz-save-"))
    try:
        value, suffix = make_case(build_target(name, work), case, seed)
        stem = folder / f"{name}-{case}"
        if isinstance(value, list):
            stem.with_suffix(".frames.json").write_text(json.dumps([v.hex() for v in value]))
        elif isinstance(value, dict):
            stem.mkdir(exist_ok=True)
            for fname, data in value.items():
                (stem / fname).write_bytes(data)
        else:
            Path(f"{stem}{suffix}").write_bytes(value)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace) -> dict:
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if args.cases < 1 or not math.isfinite(args.case_timeout_s) or args.case_timeout_s <= 0:
        raise ValueError("--cases must be >= 1 and --case-timeout-s positive")
    args.out.mkdir(parents=True, exist_ok=True)
    result = fuzz(targets, args.cases, args.seed, args.case_timeout_s, args.out)
    (args.out / "fuzz.json").write_text(json.dumps(result, indent=2))
    return result
