"""The procedural dataset on disk: its format, the parallel resumable writer, and validated readers.

One folder per sequence (`seq_000123/`) holding rgb.npy uint8 [F, H, W, 3], depth.npy float16 [F, H, W]
(metric z, 0 = sky), ids.npy uint16 [F, H, W] (0 = static, > 0 = dynamic instance), the release's w2c.txt and
intrinsics.txt, and meta.json (written last). A sequence is rendered into a hidden temporary folder and renamed
into place, so a folder named seq_* is always complete and an interrupted run resumes where it stopped. Workers
are separate processes with one GL context each. docs/dataset.md describes the format for readers in other code.

This module does not import torch (writer processes stay light); the PyTorch Datasets are in
`engine.world.loader` and are re-exported here as `WorldDataset` and `Re10kDataset`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from engine.files import write_text_atomic
from engine.geometry import TrajectoryFileError, read_intrinsics_txt, read_w2c_txt, write_intrinsics_txt, write_w2c_txt

FORMAT_NAME = "spatia-world"
FORMAT_VERSION = 1
SEQ_PREFIX = "seq_"
TMP_PREFIX = ".tmp_"
ROOT_FILE = "dataset.json"
ARRAYS = {"rgb": ("rgb.npy", np.uint8), "depth": ("depth.npy", np.float16), "ids": ("ids.npy", np.uint16)}
TEXT_FILES = ("w2c.txt", "intrinsics.txt", "meta.json")


class DatasetError(RuntimeError):
    """A dataset, sequence or file that cannot be used; the message names the sequence and the file."""


def sequence_name(index: int) -> str:
    return f"{SEQ_PREFIX}{index:06d}"


@dataclass(frozen=True)
class DatasetConfig:
    """What `spatia world dataset` renders. Sequence i uses seed seed0 + i for its scene and path."""

    scenes: int
    frames: int
    width: int
    height: int
    fps: float = 12.0
    seed0: int = 0
    dynamic: bool = False
    kind: str = "auto"  # scene kind: auto, indoor or outdoor
    path_kinds: dict[str, float] = field(default_factory=lambda: {
        "walk": 0.35, "orbit": 0.15, "loop": 0.15, "forward_back": 0.1, "look_around": 0.1, "return_walk": 0.15})
    speed: tuple[float, float] = (0.6, 1.5)  # m/s, drawn per sequence
    fov_deg: tuple[float, float] = (55.0, 80.0)  # horizontal, drawn per sequence

    def __post_init__(self):
        for name in ("scenes", "frames", "width", "height"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"dataset {name} must be a positive integer, got {getattr(self, name)}")
        if self.frames < 2:
            raise ValueError(f"dataset frames must be >= 2 (a camera path needs two poses), got {self.frames}")
        if self.fps <= 0:
            raise ValueError(f"dataset fps must be > 0, got {self.fps}")
        if self.seed0 < 0:
            raise ValueError(f"seed0 must be >= 0, got {self.seed0}")

    def identity(self) -> dict:
        """The fields that must match for a resumed run to continue an existing dataset folder."""
        d = asdict(self)
        d.pop("scenes")  # asking for more scenes later extends the dataset
        return json.loads(json.dumps(d))


# ============================================================================================ writing
def render_sequence(renderer, cfg: DatasetConfig, index: int) -> tuple[dict[str, np.ndarray], dict]:
    """Scene, path and frames of sequence `index` -> (arrays in their stored dtypes, meta dict)."""
    from engine.world.paths import PathError, make_path, walk_path
    from engine.world.scene import GENERATOR_VERSION, generate_scene

    seed = cfg.seed0 + index
    scene = generate_scene(seed, cfg.kind, dynamic=cfg.dynamic)
    rng = np.random.default_rng([seed, 23])
    names, weights = zip(*cfg.path_kinds.items())
    kind = names[rng.choice(len(names), p=np.array(weights) / sum(weights))]
    speed, fov = float(rng.uniform(*cfg.speed)), float(rng.uniform(*cfg.fov_deg))
    common = dict(fps=cfg.fps, speed=speed, seed=seed, fov_deg=fov, aspect=cfg.width / cfg.height)
    try:
        path = make_path(kind, scene, cfg.frames, **common)
    except (PathError, ValueError):  # e.g. no free orbit in a cluttered room, or too few frames for a return
        path = walk_path(scene, cfg.frames, **common)
    out = renderer.render_batch(scene, path.w2c, path.K(cfg.width, cfg.height), path.times)
    if out.ids.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError(f"sequence {index}: instance ids exceed uint16")
    arrays = {"rgb": out.rgb, "depth": out.depth.astype(np.float16), "ids": out.ids.astype(np.uint16),
              "w2c": path.w2c, "intrinsics": path.intrinsics}
    meta = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "generator_version": GENERATOR_VERSION,
        "name": sequence_name(index), "seed": seed, "scene_kind": scene.kind, "dynamic": cfg.dynamic,
        "dynamic_ids": scene.dynamic_ids, "path_kind": path.kind, "closed_loop": path.is_closed,
        "fps": cfg.fps, "frames": cfg.frames, "width": cfg.width, "height": cfg.height,
        "speed_mps": speed, "fov_deg": fov, "depth_unit": "metre", "depth_sky": 0.0,
    }
    return arrays, meta


def write_sequence(root: str | Path, arrays: dict[str, np.ndarray], meta: dict) -> Path:
    """Write one sequence atomically: a hidden temp folder, meta.json last, then a rename into place.
    Returns the final folder; if it already exists (another writer finished first) the temp copy is dropped."""
    root = Path(root)
    final = root / meta["name"]
    tmp = root / f"{TMP_PREFIX}{meta['name']}_{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for key, (fname, dtype) in ARRAYS.items():
        np.save(tmp / fname, np.ascontiguousarray(arrays[key], dtype=dtype))
    write_w2c_txt(tmp / "w2c.txt", arrays["w2c"])
    write_intrinsics_txt(tmp / "intrinsics.txt", arrays["intrinsics"])
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    try:
        os.rename(tmp, final)
    except OSError:
        if not is_complete(final):
            raise
        shutil.rmtree(tmp)
    return final


def is_complete(seq_dir: Path) -> bool:
    return (Path(seq_dir) / "meta.json").is_file()


_WORKER = {}


def _worker_init(cfg: DatasetConfig, root: str, gl_threads: int) -> None:
    from engine.world.render import WorldRenderer, limit_rasterizer_threads

    limit_rasterizer_threads(gl_threads)
    _WORKER.update(cfg=cfg, root=root, renderer=WorldRenderer(cfg.width, cfg.height))


def _worker_run(index: int) -> tuple[int, float]:
    t0 = time.perf_counter()
    arrays, meta = render_sequence(_WORKER["renderer"], _WORKER["cfg"], index)
    write_sequence(_WORKER["root"], arrays, meta)
    return index, time.perf_counter() - t0


def _prepare_root(cfg: DatasetConfig, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    marker = root / ROOT_FILE
    if marker.exists():
        try:
            old = json.loads(marker.read_text())
        except json.JSONDecodeError as e:
            raise DatasetError(f"{marker}: not valid JSON ({e})") from None
        if old.get("config_identity") != cfg.identity():
            raise DatasetError(f"{root} already holds a dataset made with different settings "
                               f"({old.get('config_identity')}); choose another --out or the same settings")
    for stale in root.glob(f"{TMP_PREFIX}*"):  # left by an interrupted run
        shutil.rmtree(stale, ignore_errors=True)


def _write_root_file(cfg: DatasetConfig, root: Path) -> None:
    names = sorted(p.name for p in root.glob(f"{SEQ_PREFIX}*") if is_complete(p))
    info = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "config": json.loads(json.dumps(asdict(cfg))),
            "config_identity": cfg.identity(), "sequences": len(names)}
    write_text_atomic(root / ROOT_FILE, json.dumps(info, indent=1) + "\n", tmp=root / f"{TMP_PREFIX}{ROOT_FILE}")


def build_dataset(cfg: DatasetConfig, root: str | Path, workers: int = 1, progress: bool = True) -> dict:
    """Render every missing sequence of `cfg` into `root` with `workers` processes. Returns counts and timing."""
    import multiprocessing as mp

    from tqdm import tqdm

    root = Path(root)
    _prepare_root(cfg, root)
    _write_root_file(cfg, root)  # claims the folder for these settings before any work
    todo = [i for i in range(cfg.scenes) if not is_complete(root / sequence_name(i))]
    workers = max(1, min(int(workers), len(todo) or 1))
    gl_threads = max(1, (os.cpu_count() or 1) // workers)
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.scenes, initial=cfg.scenes - len(todo), unit="seq", disable=not progress,
               desc=f"world dataset -> {root.name}")
    durations = []  # seconds each sequence took in its worker
    pool = None
    try:
        if workers == 1:
            _worker_init(cfg, str(root), gl_threads)
            results = map(_worker_run, todo)
        else:
            # spawn: each worker starts clean and creates its own GL context
            pool = mp.get_context("spawn").Pool(workers, _worker_init, (cfg, str(root), gl_threads))
            results = pool.imap_unordered(_worker_run, todo)
        for _, secs in results:
            durations.append(secs)
            bar.update()
        if pool is not None:
            pool.close()
            pool.join()
    finally:
        if pool is not None:
            pool.terminate()  # after a clean join this is a no-op; after an error it stops the workers
        bar.close()
        _write_root_file(cfg, root)
    seconds = time.perf_counter() - t0
    frames = len(todo) * cfg.frames
    return {"written": len(todo), "skipped": cfg.scenes - len(todo), "seconds": seconds,
            "frames_per_s": frames / seconds if frames else math.nan, "workers": workers,
            "sequence_seconds": durations}


# ============================================================================================ reading
def _npy_header(path: Path, seq: str) -> tuple[tuple, np.dtype]:
    """Shape and dtype from a .npy header, checking the file holds all the data it announces."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            offset = f.tell()
    except FileNotFoundError:
        raise DatasetError(f"sequence {seq}: missing file {path.name} ({path})") from None
    except (ValueError, OSError, SyntaxError) as e:
        raise DatasetError(f"sequence {seq}: {path.name} is not a valid .npy file ({e})") from None
    need = offset + int(np.prod(shape)) * dtype.itemsize
    have = path.stat().st_size
    if have < need:
        raise DatasetError(f"sequence {seq}: {path.name} is truncated ({have} bytes, header announces {need})")
    if fortran:
        raise DatasetError(f"sequence {seq}: {path.name} is Fortran-ordered; the format stores C order")
    return tuple(shape), dtype


@dataclass
class SequenceInfo:
    """A validated sequence: its folder, meta.json, poses [F, 4, 4] and normalised intrinsics [F, 4]."""

    path: Path
    meta: dict
    w2c: np.ndarray
    intrinsics: np.ndarray

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def frames(self) -> int:
        return len(self.w2c)


def validate_sequence(seq_dir: str | Path) -> SequenceInfo:
    """Check one sequence folder without reading its images: files present, headers, shapes, dtypes, poses."""
    seq_dir = Path(seq_dir)
    seq = seq_dir.name
    if not seq_dir.is_dir():
        raise DatasetError(f"sequence {seq}: folder not found ({seq_dir})")
    meta_path = seq_dir / "meta.json"
    if not meta_path.is_file():
        raise DatasetError(f"sequence {seq}: missing file meta.json (incomplete sequence?) in {seq_dir}")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"sequence {seq}: meta.json is not valid JSON ({e})") from None
    for key in ("frames", "width", "height", "fps"):
        if key not in meta:
            raise DatasetError(f"sequence {seq}: meta.json lacks '{key}'")
    if meta.get("version", 0) > FORMAT_VERSION:
        raise DatasetError(f"sequence {seq}: meta.json has format version {meta['version']}, newer than "
                           f"this reader ({FORMAT_VERSION})")
    F, H, W = int(meta["frames"]), int(meta["height"]), int(meta["width"])
    want = {"rgb": (F, H, W, 3), "depth": (F, H, W), "ids": (F, H, W)}
    for key, (fname, dtype) in ARRAYS.items():
        shape, got = _npy_header(seq_dir / fname, seq)
        if shape != want[key]:
            raise DatasetError(f"sequence {seq}: {fname} has shape {shape}, meta.json says {want[key]}")
        if got != np.dtype(dtype):
            raise DatasetError(f"sequence {seq}: {fname} has dtype {got}, the format stores {np.dtype(dtype)}")
    try:
        w2c = read_w2c_txt(seq_dir / "w2c.txt")
        intr = read_intrinsics_txt(seq_dir / "intrinsics.txt")
    except TrajectoryFileError as e:
        raise DatasetError(f"sequence {seq}: {Path(e.path).name}: {e.problem}") from None
    if len(w2c) != F:
        raise DatasetError(f"sequence {seq}: w2c.txt has {len(w2c)} poses, meta.json says {F} frames")
    if len(intr) not in (1, F):
        raise DatasetError(f"sequence {seq}: intrinsics.txt has {len(intr)} lines; expected 1 or {F}")
    return SequenceInfo(seq_dir, meta, w2c, np.broadcast_to(intr, (F, 4)).copy())


def list_sequences(root: str | Path, names: list[str] | None = None) -> list[SequenceInfo]:
    """Validated sequences under `root` (all complete seq_* folders, or exactly `names`)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    if names is None:
        names = sorted(p.name for p in root.glob(f"{SEQ_PREFIX}*") if p.is_dir())
    if not names:
        raise DatasetError(f"no sequences ({SEQ_PREFIX}*) in {root}")
    return [validate_sequence(root / n) for n in names]


def load_array(info: SequenceInfo, key: str, mmap: bool = True) -> np.ndarray:
    """One of rgb / depth / ids of a validated sequence, memory-mapped by default."""
    fname = ARRAYS[key][0]
    try:
        return np.load(info.path / fname, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DatasetError(f"sequence {info.name}: cannot read {fname} ({e})") from None


def __getattr__(name: str):
    """The PyTorch Datasets live in engine.world.loader (which imports torch); reachable from here too."""
    if name in ("WorldDataset", "Re10kDataset"):
        from engine.world import loader

        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
