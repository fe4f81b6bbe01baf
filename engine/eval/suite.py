"""The evaluation suite: held-out procedural scenes, closed camera loops, the full model and the paper's ablations.

For each scene (seeds from `seed0` up, never the training seeds) the suite builds a closed path (the last pose is the
first) of `clips` chunks, renders the world's ground truth along it at the model's resolution, opens a session on
the true first frame (its depth, with dynamic pixels kept out, as `open_procedural` does) and generates every
chunk. Each generated video is scored against the true frames at the same poses (PSNR, SSIM, LPIPS; PSNR apart on
the pixels the memory covered and on the rest) and as a closed loop (first frame against the last: PSNR_C, SSIM_C,
LPIPS_C and Match Accuracy). One run per (scene, variant); variants are the rows of the paper's tables on our
world, shared where two tables ask for the same configuration:

- Table 4: scene video on/off x references on/off.
- Table 5: K reference frames in `ks`, capped at the model's num_refs.
- Table 6: loops of 2/4/6 clips, the full model against the same model with no memory (no scene video, no
  references: the analogue of the paper's plain Wan2.2 rows).
- Table 7: memory voxel size.

All variants of a scene share the sampler seed, so their differences come from the conditions alone.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from engine.eval.matching import RomaConfig, get_matcher
from engine.eval.metrics import MetricUnavailable, load_lpips, masked_psnr, match_accuracy, psnr, ssim

TRAINING_SEEDS = 600  # the shipped models were trained on procedural scenes 0..599; evaluation stays clear of them
CLOSED_PATHS = ("loop", "return_walk", "orbit", "forward_back", "look_around")


class EvalError(RuntimeError):
    """The evaluation cannot run as configured (e.g. too few held-out scenes fit the path); the message says why."""


METRICS = ("psnr", "ssim", "lpips", "psnr_covered", "psnr_uncovered", "coverage", "psnr_c", "ssim_c", "lpips_c",
           "match_acc")


@dataclass
class EvalConfig:
    scenes: int = 8  # held-out scenes evaluated
    seed0: int = 10000  # first scene seed; seeds that fit no path are skipped and the next ones taken
    chunks: int = 4  # closed-loop length (in chunks) of the main table and Tables 4, 5 and 7
    clips: tuple[int, ...] = (2, 4, 6)  # Table 6: loop lengths in chunks
    ks: tuple[int, ...] = (1, 3, 5, 7)  # Table 5: reference counts (capped at the model's num_refs)
    voxels: tuple[float, ...] = (0.02, 0.04, 0.06, 0.08)  # Table 7: memory voxel sizes (m)
    path: str = "loop"  # closed path kind (engine.world.paths)
    matcher: str = "auto"  # match backend: auto (RoMa if local, else SIFT), sift, roma
    roma_weights: str | None = None
    roma_dinov2_weights: str | None = None
    lpips_weights: str | None = None  # LPIPS backbone weights (local file); None: env or torch-hub cache
    retrieval: str = "release"
    reconstruction: str = "model-depth"
    segmentation: str | None = "residual"
    steps: int | None = None  # sampler steps (None: the model's)
    voxel: float | None = None  # the full model's memory voxel (None: SessionOptions' default)
    strip_scenes: int = 2  # scenes whose full-model frames are kept for the sample strips
    strip_frames: int = 8  # frames per sample strip
    seed_tries: int = 4  # seeds tried per wanted scene before giving up

    def __post_init__(self):
        self.clips, self.ks = tuple(int(c) for c in self.clips), tuple(int(k) for k in self.ks)
        self.voxels = tuple(float(v) for v in self.voxels)
        if self.scenes < 1 or self.chunks < 1:
            raise ValueError(f"need at least one scene and one chunk, got scenes={self.scenes}, chunks={self.chunks}")
        if self.seed0 < TRAINING_SEEDS:
            raise ValueError(f"seed0={self.seed0} overlaps the training scenes (seeds 0..{TRAINING_SEEDS - 1}); "
                             f"evaluate on held-out seeds >= {TRAINING_SEEDS} (default 10000)")
        if any(c < 1 for c in self.clips) or any(k < 1 for k in self.ks) or any(v <= 0 for v in self.voxels):
            raise ValueError(f"clips and ks must be >= 1 and voxels > 0, got {self.clips}, {self.ks}, {self.voxels}")
        if self.path not in CLOSED_PATHS:
            raise ValueError(f"path must be a closed kind, one of {CLOSED_PATHS}, got {self.path!r}")

    @classmethod
    def quick(cls, **overrides) -> "EvalConfig":
        """A small run: two scenes, two-chunk loops, two loop lengths and two voxel sizes."""
        return cls(**{**dict(scenes=2, chunks=2, clips=(2, 4), voxels=(0.02, 0.06), strip_scenes=1), **overrides})


@dataclass(frozen=True)
class Variant:
    """One configuration of the session: what conditions the model gets, the memory voxel and the loop length."""

    scene_video: bool
    references: bool
    k: int  # reference frames (0 when references are off)
    voxel: float
    clips: int

    @property
    def key(self) -> str:
        return f"sv{int(self.scene_video)}-ref{int(self.references)}-k{self.k}-vox{self.voxel:g}-clips{self.clips}"


@dataclass
class Plan:
    """The variants of every table, by key (a variant asked for by several tables runs once)."""

    full: Variant
    tables: dict[str, list[tuple[dict, str]]]  # table -> rows of (row labels, variant key)
    variants: dict[str, Variant]


def plan_variants(cfg: EvalConfig, num_refs: int, default_voxel: float) -> Plan:
    voxel = default_voxel if cfg.voxel is None else cfg.voxel
    variants: dict[str, Variant] = {}

    def add(sv: bool, ref: bool, k: int, vox: float, clips: int) -> str:
        v = Variant(sv, ref and k > 0, k if ref else 0, vox, clips)
        variants.setdefault(v.key, v)
        return v.key

    full = add(True, True, num_refs, voxel, cfg.chunks)
    tables = {
        "main": [({}, full)],
        "table4": [({"scene_video": sv, "references": ref}, add(sv, ref, num_refs, voxel, cfg.chunks))
                   for sv in (False, True) for ref in (False, True)],
        "table5": [({"K": k}, add(True, True, k, voxel, cfg.chunks))
                   for k in sorted({min(k, num_refs) for k in cfg.ks}) if k > 0],
        "table6": [({"clips": c, "memory": mem}, add(mem, mem, num_refs, voxel, c))
                   for c in sorted(set(cfg.clips)) for mem in (True, False)],
        "table7": [({"voxel": v}, add(True, True, num_refs, v, cfg.chunks)) for v in sorted(set(cfg.voxels))],
    }
    return Plan(variants[full], tables, variants)


@dataclass
class SceneCase:
    """A held-out scene with one closed path (and its ground truth) per loop length."""

    seed: int
    scene: object  # engine.world.Scene
    paths: dict[int, object]  # clips -> CameraPath with clips * chunk_frames + 1 poses
    truth: dict[int, object]  # clips -> RenderOutput along that path


def prepare_scenes(cfg: EvalConfig, model_cfg, renderer, lengths: set[int]) -> tuple[list[SceneCase], list[dict]]:
    """`cfg.scenes` scenes whose closed paths of every length fit in free space; the seeds skipped and why."""
    from engine.world import PathError, generate_scene, make_path

    fps = float(getattr(model_cfg, "fps", 16.0))
    aspect = model_cfg.width / model_cfg.height
    cases, skipped = [], []
    for seed in range(cfg.seed0, cfg.seed0 + cfg.scenes * cfg.seed_tries):
        if len(cases) == cfg.scenes:
            break
        scene = generate_scene(seed)
        try:
            paths = {c: make_path(cfg.path, scene, c * model_cfg.chunk_frames + 1, seed=seed, fps=fps, aspect=aspect)
                     for c in sorted(lengths)}
        except PathError as e:
            skipped.append({"seed": seed, "reason": str(e)})
            continue
        truth = {c: renderer.render_batch(scene, p.w2c, p.K(model_cfg.width, model_cfg.height)) for c, p in paths.items()}
        cases.append(SceneCase(seed, scene, paths, truth))
    if len(cases) < cfg.scenes:
        raise EvalError(f"only {len(cases)} of {cfg.scenes} scenes from seed {cfg.seed0} fit a closed "
                           f"{cfg.path!r} path; skipped: {skipped}")
    return cases, skipped


@dataclass
class Sample:
    """Frames kept for a sample strip: ground truth, generated and the memory's render, at the same poses."""

    seed: int
    frame_index: np.ndarray  # [S] indices into the video (0 = start frame)
    truth: np.ndarray  # [S, H, W, 3] uint8
    generated: np.ndarray  # [S, H, W, 3]
    scene_video: np.ndarray  # [S, H, W, 3]


@dataclass
class SuiteResult:
    results: dict  # JSON-able: config, backends, scenes, runs, tables, timing
    samples: list[Sample] = field(default_factory=list)


def score_run(truth_rgb: np.ndarray, generated: np.ndarray, coverage: np.ndarray, matcher, lpips) -> dict:
    """Metrics of one generated loop. truth_rgb [N, H, W, 3] includes the start frame; generated [N-1, ...]."""
    target = truth_rgb[1:]
    first, last = truth_rgb[0], generated[-1]
    out = {
        "psnr": float(np.mean(psnr(generated, target))),
        "ssim": float(np.mean(ssim(generated, target))),
        "psnr_covered": masked_psnr(generated, target, coverage),
        "psnr_uncovered": masked_psnr(generated, target, ~coverage),
        "coverage": float(coverage.mean()),
        "psnr_c": psnr(last, first),
        "ssim_c": ssim(last, first),
        "lpips": math.nan,
        "lpips_c": math.nan,
    }
    if lpips is not None:
        out["lpips"] = float(np.mean(lpips(generated, target)))
        out["lpips_c"] = lpips(last, first)
    ma = match_accuracy(first, last, matcher)
    out["match_acc"] = ma.value
    out["match"] = ma.to_dict()
    return out


def run_variant(model, case: SceneCase, variant: Variant, base_options, on_frame=None) -> tuple[dict, dict]:
    """Generate one closed loop with one variant; returns the raw frames and timings of the run."""
    from engine.pipeline import WorldSession

    opts = replace(base_options, use_scene_video=variant.scene_video, use_references=variant.references,
                   num_refs=variant.k, voxel_size=variant.voxel, seed=case.seed)
    path, truth = case.paths[variant.clips], case.truth[variant.clips]
    session = WorldSession(model, opts)
    # what open_procedural does for one start view, from the truth already rendered (no second scene build)
    session.open_rgbd(truth.rgb[0], truth.depth[0], path.w2c[0], path.intrinsics, exclude=truth.ids[0] > 0)
    t0 = time.perf_counter()
    chunks = session.step(path.w2c[1:], path.intrinsics, on_frame=on_frame)
    frames = {
        "rgb": np.concatenate([c.rgb for c in chunks]),  # [N-1, H, W, 3]
        "coverage": np.concatenate([c.coverage for c in chunks]),  # [N-1, H, W]
        "scene_rgb": np.concatenate([c.scene_rgb for c in chunks]),  # [N-1, H, W, 3]
    }
    timing = {"seconds": time.perf_counter() - t0, "chunks": len(chunks),
              "chunk_ms": float(np.median([c.timings["total"] for c in chunks])),
              "references": float(np.mean([len(c.references) for c in chunks]))}
    return frames, timing


def aggregate(per_scene: list[dict]) -> dict:
    """Mean of each metric over the scenes where it is defined, and how many those were."""
    out = {}
    for m in METRICS:
        vals = np.array([r[m] for r in per_scene], np.float64)
        ok = ~np.isnan(vals)
        out[m] = float(vals[ok].mean()) if ok.any() else math.nan
        out[f"{m}_n"] = int(ok.sum())
    return out


def _strip(case: SceneCase, variant: Variant, frames: dict, count: int) -> Sample:
    truth = case.truth[variant.clips].rgb
    idx = np.unique(np.linspace(0, len(truth) - 1, max(2, count)).round().astype(int))  # includes start and end
    gen = np.concatenate([truth[:1], frames["rgb"]])  # the video: start frame, then generated frames
    scene = np.concatenate([np.zeros_like(truth[:1]), frames["scene_rgb"]])
    return Sample(case.seed, idx, truth[idx], gen[idx], scene[idx])


def run_suite(model, cfg: EvalConfig, progress: bool = True) -> SuiteResult:
    """Every variant of every table on every scene; returns the results (JSON-able) and sample frames."""
    from tqdm import tqdm

    from engine.pipeline import SessionOptions
    from engine.world import WorldRenderer

    mcfg = model.cfg
    base = SessionOptions(retrieval=cfg.retrieval, reconstruction=cfg.reconstruction, segmentation=cfg.segmentation,
                          steps=cfg.steps)
    plan = plan_variants(cfg, mcfg.num_refs, base.voxel_size)
    matcher = get_matcher(cfg.matcher, RomaConfig(cfg.roma_weights, cfg.roma_dinov2_weights))
    try:
        lpips = load_lpips(cfg.lpips_weights)
        lpips_info = lpips.describe()
    except MetricUnavailable as e:
        lpips, lpips_info = None, {"available": False, "reason": str(e)}

    t_start = time.perf_counter()
    renderer = WorldRenderer(mcfg.width, mcfg.height)
    try:
        cases, skipped = prepare_scenes(cfg, mcfg, renderer, {v.clips for v in plan.variants.values()})
    finally:
        renderer.release()
    total = sum(v.clips * mcfg.chunk_frames for v in plan.variants.values()) * len(cases)
    runs: dict[str, dict] = {k: {"variant": asdict(v), "per_scene": []} for k, v in plan.variants.items()}
    samples: list[Sample] = []
    with tqdm(total=total, unit="frame", desc="eval", disable=not progress) as bar:
        for i, case in enumerate(cases):
            for key, variant in plan.variants.items():
                bar.set_postfix_str(f"seed {case.seed} {key}")
                frames, timing = run_variant(model, case, variant, base, on_frame=lambda *a: bar.update(1))
                scores = score_run(case.truth[variant.clips].rgb, frames["rgb"], frames["coverage"], matcher, lpips)
                runs[key]["per_scene"].append({"seed": case.seed, **scores, **timing})
                if variant == plan.full and i < cfg.strip_scenes:
                    samples.append(_strip(case, variant, frames, cfg.strip_frames))
    for run in runs.values():
        run["mean"] = aggregate(run["per_scene"])
    tables = {name: [{**labels, "variant": key, **runs[key]["mean"]} for labels, key in rows]
              for name, rows in plan.tables.items()}
    chunk_ms = [r["chunk_ms"] for run in runs.values() for r in run["per_scene"]]
    results = {
        "model": {"name": model.name, "width": mcfg.width, "height": mcfg.height, "chunk_frames": mcfg.chunk_frames,
                  "num_refs": mcfg.num_refs, "fps": float(getattr(mcfg, "fps", 16.0))},
        "config": asdict(cfg),
        "session": asdict(base),
        "backends": {"match": matcher.describe(), "lpips": lpips_info},
        "scenes": [{"seed": c.seed, "kind": c.scene.kind, "path": cfg.path,
                    "frames": {str(k): len(p) for k, p in c.paths.items()}} for c in cases],
        "skipped_seeds": skipped,
        "full": plan.full.key,
        "runs": runs,
        "tables": tables,
        "timing": {"seconds": time.perf_counter() - t_start, "runs": len(runs) * len(cases),
                   "chunk_ms_median": float(np.median(chunk_ms)) if chunk_ms else math.nan},
    }
    return SuiteResult(results, samples)
