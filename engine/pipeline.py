"""The Spatia loop end to end: the only place where memory, model, reconstruction and segmentation meet.

One `WorldSession` holds a spatial memory, the frames generated so far with their cameras, and a world model.
`generate_chunk` makes one chunk of `cfg.chunk_frames` new frames along given poses:

    retrieve references  ->  render the memory along [history pose | target poses] (scene video + coverage)
    ->  encode history, references and control with the VAE  ->  sample the target latents with the DiT
    ->  decode frame by frame (each frame is handed out as soon as it exists)  ->  reconstruct depth
    ->  segment dynamic regions  ->  insert the static part into the memory  ->  MemoryDelta

Clips chain: the last frame of a chunk is the history of the next. `step` cuts a longer path into chunks. Every
stage is timed. `prepare` computes what the next chunk needs before its poses are known (references, the history's
control latents, the DiT's context keys/values; `engine.conditions`), so a chunk that starts on an input does less.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import typing
import zipfile
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from engine import geometry
from engine.conditions import PreparedContext, build_conditions, prepare_context, target_conditions
from engine.files import write_npz
from engine.memory.delta import MemoryDelta
from engine.memory.pointcloud import SpatialMemory
from engine.memory.primitives import primitive_surface
from engine.memory.render import render
from engine.memory.retrieval import RETRIEVERS, Candidate, retrieve
from engine.memory.update import depth_scale_to_memory, new_content
from engine.model.checkpoint import load_checkpoint
from engine.model.configs import CACHED_LAYOUTS, ModelConfig
from engine.model.dit import ContextCache
from engine.model.sampler import SamplingCancelled, StepInfo, sample

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
SESSION_FORMAT, SESSION_VERSION = "spatia-session", 1
CONTROL_ENCODERS = ("auto", "distilled", "vae")
MIN_RETRIEVAL_POSES = 4  # target poses of a chunk that retrieval looks from, whatever the number of references
# reference sets whose keys/values a session keeps (attention_layout "layered"; ~3.5 MB each for tiny): the last
# chunk's (a short chunk after a turn keeps them) and a preparation's
REFERENCE_CONTEXTS_KEPT = 3


class PipelineError(ValueError):
    """Bad input to a session (the session itself stays usable); the message says what and how to fix it."""


class ChunkCancelled(RuntimeError):
    """A chunk stopped between sampler steps because the caller asked; the session is unchanged."""


# --------------------------------------------------------------------------------------------- the model bundle
@dataclass
class WorldModel:
    """The networks a session generates with (the VAE and the DiT of one config), on one device."""

    cfg: ModelConfig
    vae: torch.nn.Module
    dit: torch.nn.Module
    name: str = "custom"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    control: torch.nn.Module | None = None  # distilled control encoder (ControlEncoder); None: the VAE's encoder

    @classmethod
    def load(cls, name_or_path: str | Path, device: str = "cpu", dit_dtype: torch.dtype | None = None,
             control_encoder: str = "auto") -> "WorldModel":
        """A shipped model by name (`models/<name>/`) or a checkpoint folder written by `save_checkpoint`.

        The networks compute in float32 (shipped weights may be stored in float16 to stay small); dit_dtype runs
        the DiT in another precision (float16 or bfloat16 on a GPU): the sampler casts its inputs and integrates in
        float32, and the VAE stays in float32. control_encoder picks what turns the scene video into control
        latents: "distilled" (the checkpoint's ControlEncoder, an error if it has none), "vae" (the VAE's encoder,
        the teacher) or "auto" (distilled where the checkpoint ships it)."""
        if control_encoder not in CONTROL_ENCODERS:
            raise ValueError(f"control_encoder must be one of {CONTROL_ENCODERS}, got {control_encoder!r}")
        path = Path(name_or_path)
        if not path.exists():
            path = MODELS_DIR / str(name_or_path)
        if not (path / "config.json").is_file():
            shipped = sorted(p.name for p in MODELS_DIR.iterdir() if (p / "config.json").is_file()) if MODELS_DIR.is_dir() else []
            raise FileNotFoundError(
                f"no model checkpoint at {name_or_path!r} (looked for {path / 'config.json'}); shipped models: "
                f"{shipped or 'none'}; train one with `spatia train`"
            )
        parts = ("dit", "vae") if control_encoder == "vae" else ("dit", "vae", "control")
        ckpt = load_checkpoint(path, device=device, dtype=torch.float32, parts=parts)
        if ckpt.vae is None or ckpt.dit is None:
            raise FileNotFoundError(f"checkpoint {path} lacks the {'vae' if ckpt.vae is None else 'dit'} weights")
        if control_encoder == "distilled" and ckpt.control is None:
            raise FileNotFoundError(f"checkpoint {path} has no distilled control encoder (control.safetensors); "
                                    "train one with a 'control' stage, or use the VAE's (control_encoder='vae')")
        if dit_dtype is not None:
            ckpt.dit.to(dit_dtype)
        return cls(ckpt.cfg, ckpt.vae.eval(), ckpt.dit.eval(), name=path.name, device=torch.device(device),
                   control=ckpt.control)

    def encode_control(self, scene: torch.Tensor, mask: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        """Control latents [B, 2z, f, h, w] of a scene video and its coverage (`VideoVAE.encode_control`'s
        contract, state included), from the distilled encoder where the model has one."""
        return (self.vae if self.control is None else self.control).encode_control(scene, mask, state=state)

    @classmethod
    def random(cls, cfg: ModelConfig, seed: int = 0, device: str = "cpu") -> "WorldModel":
        """Untrained networks of a config (tests and benchmarks of the mechanics, never the demo)."""
        from engine.model.dit import SpatiaDiT
        from engine.model.vae import VideoVAE

        torch.manual_seed(seed)
        return cls(cfg, VideoVAE(cfg).eval().to(device), SpatiaDiT(cfg).eval().to(device), name=f"{cfg.name}-random",
                   device=torch.device(device))


# --------------------------------------------------------------------------------------------- frames and options
@dataclass
class StoredFrame:
    """A frame of the session's video kept for retrieval and history."""

    index: int
    rgb: np.ndarray  # [H, W, 3] uint8
    depth: np.ndarray | None  # [H, W] float32 metric z, or None
    camera: geometry.Camera


@dataclass
class SessionOptions:
    retrieval: str = "release"  # "release" or "alg1" (engine.memory.retrieval)
    retrieval_candidates: int | None = 12  # release: only this many stored frames nearest in pose are scored
    num_refs: int | None = None  # None: the model's cfg.num_refs
    use_scene_video: bool = True  # ablation: no scene video (control branch fed nothing)
    use_references: bool = True  # ablation: no reference frames
    reconstruction: str = "model-depth"  # engine.reconstruct backend
    segmentation: str | None = "residual"  # engine.segment backend, or None to trust every pixel
    voxel_size: float = 0.02  # memory voxel (m); the paper uses 0.01 m at 720p, the tiny model sees 128 px
    point_size_growth: float = 0.0  # the release grows the render point size by 0.005 per round
    candidate_stride: int = 4  # every n-th generated frame is kept as a retrieval candidate
    update_stride: int = 1  # every n-th new frame updates the memory
    update_memory: bool = True  # False: the memory stays as opened and edited (a fixed-scene mode, and ablations)
    # True: new frames add points only where the memory's own render had none (new content). Where the memory already
    # covers a pixel the frame was generated to agree with it, so re-inserting it adds only reconstruction noise
    # (floaters in front of good points, which then steer the next scene video).
    update_uncovered_only: bool = True
    update_hole_px: int = 4  # with update_uncovered_only: gaps in the render up to this wide are not new content
    update_align_depth: bool = True  # scale each frame's depth to the memory's on the pixels both cover
    depth_range: tuple[float, float] = (0.05, 40.0)  # depths trusted for memory updates (m)
    max_stored_frames: int = 2048  # retrieval candidates kept (oldest dropped beyond it)
    steps: int | None = None  # sampler steps (None: cfg.sample_steps)
    seed: int = 0

    def __post_init__(self) -> None:
        """Types and ranges, so a damaged session file fails when loaded, not in the middle of a generation."""
        for name, tp in typing.get_type_hints(SessionOptions).items():
            v = getattr(self, name)
            args = typing.get_args(tp)
            if v is None and type(None) in args:
                continue
            base = next((a for a in args if a is not type(None)), tp) if type(None) in args else tp
            if typing.get_origin(base) is tuple and isinstance(v, list):  # JSON gives lists
                v = tuple(v)
                setattr(self, name, v)
            number = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)  # noqa: E731
            ok = (isinstance(v, tuple) and len(v) == len(typing.get_args(base)) and all(map(number, v))
                  if typing.get_origin(base) is tuple else number(v) if base is float
                  else isinstance(v, int) and not isinstance(v, bool) if base is int else isinstance(v, base))
            if not ok:
                raise ValueError(f"session option {name} must be {getattr(tp, '__name__', tp)}, got {v!r}")
        near, far = self.depth_range
        bad = [name for name, good in (
            ("retrieval", self.retrieval in RETRIEVERS), ("num_refs", self.num_refs is None or self.num_refs >= 0),
            ("voxel_size", self.voxel_size > 0), ("point_size_growth", self.point_size_growth >= 0),
            ("candidate_stride", self.candidate_stride >= 1), ("update_stride", self.update_stride >= 1),
            ("update_hole_px", self.update_hole_px >= 0),
            ("retrieval_candidates", self.retrieval_candidates is None or self.retrieval_candidates >= 1),
            ("depth_range", 0 <= near < far), ("max_stored_frames", self.max_stored_frames >= 1),
            ("steps", self.steps is None or self.steps >= 1), ("seed", 0 <= self.seed < 2**63)) if not good]
        if bad:
            raise ValueError(f"session option {bad[0]} out of range: {getattr(self, bad[0])!r}")


@dataclass
class ChunkResult:
    clip: int
    first_frame: int
    rgb: np.ndarray  # [F, H, W, 3] uint8
    depth: np.ndarray | None  # [F, H, W] float32
    w2c: np.ndarray  # [F, 4, 4]
    delta: MemoryDelta
    timings: dict[str, float]  # milliseconds per stage
    references: list[tuple[int, float]]
    scene_rgb: np.ndarray  # [F, H, W, 3] uint8, the memory rendered along the target poses
    coverage: np.ndarray  # [F, H, W] bool
    dynamic: np.ndarray  # [F, H, W] bool, what segmentation kept out of the memory


FrameCallback = Callable[[int, np.ndarray, np.ndarray | None, np.ndarray, dict], None]


# --------------------------------------------------------------------------------------------- shared with training
def retrieval_options(method: str, cfg: ModelConfig, k: int, max_candidates: int | None = None,
                      frames: int | None = None) -> dict:
    """Retrieval settings for one chunk of `frames` target poses (default cfg.chunk_frames): the release samples
    target poses, spaced so K references can be found and at least `MIN_RETRIEVAL_POSES` along the chunk (with
    one pose, K = 1 looked only from the chunk's first pose and found nothing where the chunk turns towards
    stored views), and scores at most `max_candidates` stored frames, the nearest in pose."""
    if method == "release":
        every = max(1, (cfg.chunk_frames if frames is None else frames) // max(k, MIN_RETRIEVAL_POSES))
        # visibility on 64-pixel renders: a 30k-point subsample of the memory picks the same frames as 100k in
        # a third of the time (measured on a 170k-point session)
        return {"k": k, "every": every, "max_candidates": max_candidates, "max_points": 30_000}
    return {"k": k}


def to_uint8(rgb: torch.Tensor) -> np.ndarray:
    """[..., 3, H, W] in [0, 1] -> [..., H, W, 3] uint8."""
    return (rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).movedim(-3, -1).cpu().numpy()


def fit_image(rgb: np.ndarray, depth: np.ndarray | None, intrinsics: np.ndarray, width: int, height: int):
    """Centre-crop an image (and depth) to the model's aspect and resize it; returns (rgb, depth, intrinsics)."""
    import cv2

    H, W = rgb.shape[:2]
    K = geometry.intrinsics_to_K(intrinsics, W, H)
    target = width / height
    cw, ch = (W, round(W / target)) if W / H < target else (round(H * target), H)
    x0, y0 = (W - cw) // 2, (H - ch) // 2
    K[0, 2] -= x0
    K[1, 2] -= y0
    sx, sy = width / cw, height / ch
    K[0] *= sx
    K[1] *= sy
    rgb = cv2.resize(np.ascontiguousarray(rgb[y0 : y0 + ch, x0 : x0 + cw]), (width, height), interpolation=cv2.INTER_AREA)
    if depth is not None:
        depth = cv2.resize(np.ascontiguousarray(depth[y0 : y0 + ch, x0 : x0 + cw], np.float32), (width, height),
                           interpolation=cv2.INTER_NEAREST)
    return rgb, depth, geometry.K_to_intrinsics(K, width, height)


# --------------------------------------------------------------------------------------------- the session
class WorldSession:
    """A memory, the video generated so far, and a model: generate chunk after chunk, edit, save and load."""

    def __init__(self, model: WorldModel, options: SessionOptions | None = None, prompt: str = ""):
        from engine.reconstruct import get_reconstructor
        from engine.segment import get_segmenter

        self.model = model
        self.cfg = model.cfg
        self.options = options or SessionOptions()
        self.prompt = prompt
        self.memory = SpatialMemory(voxel_size=self.options.voxel_size)
        self.frames: list[StoredFrame] = []  # retrieval candidates and the history frame
        self.num_frames = 0  # frames in the session's video (start frame included)
        self.clip = 0
        self.reconstructor = get_reconstructor(self.options.reconstruction)
        if self.reconstructor.needs_depth and not self.cfg.depth_channel:
            raise PipelineError(
                f"reconstruction {self.options.reconstruction!r} needs generated depth, but model {model.name!r} "
                "makes RGB only: use reconstruction='plane-sweep' or 'mapanything'"
            )
        self.segmenter = get_segmenter(self.options.segmentation) if self.options.segmentation else None
        self._ref_cache: dict[int, torch.Tensor] = {}
        # attention_layout "layered": the DiT's keys/values of recent reference sets (frame indices -> cache)
        self._ref_contexts: OrderedDict[tuple, ContextCache] = OrderedDict()  # (scene video on, *frame indices)
        self._prepared: PreparedContext | None = None  # the next chunk's context, see prepare()
        self._last_ref_ids: list[tuple[int, float]] = []  # the references of the last chunk: (frame index, score)
        self._undo: list[Callable[[], MemoryDelta]] = []
        self._generator = torch.Generator().manual_seed(self.options.seed)

    # ------------------------------------------------------------------ properties
    @property
    def width(self) -> int:
        return self.cfg.width

    @property
    def height(self) -> int:
        return self.cfg.height

    @property
    def chunk_frames(self) -> int:
        return self.cfg.chunk_frames

    @property
    def last_frame(self) -> StoredFrame:
        if not self.frames:
            raise PipelineError("the session has no start frame yet: open it from a scene, an image or points")
        return self.frames[-1]

    def camera(self, w2c: np.ndarray, intrinsics: np.ndarray) -> geometry.Camera:
        return geometry.Camera.from_normalized(w2c, intrinsics, self.width, self.height)

    # ------------------------------------------------------------------ opening
    def _start(self, rgb: np.ndarray, depth: np.ndarray | None, w2c: np.ndarray, intrinsics: np.ndarray,
               exclude: np.ndarray | None = None) -> MemoryDelta:
        self._reset()
        cam = self.camera(w2c, intrinsics)
        self.frames.append(StoredFrame(0, rgb, depth, cam))
        self.num_frames = 1
        if depth is None:
            return self.memory.snapshot()
        return self.memory.insert_rgbd(rgb, depth.astype(np.float32), cam.K, cam.w2c, frame_id=0, exclude=exclude,
                                       depth_range=self.options.depth_range)

    def _reset(self) -> None:
        self.memory = SpatialMemory(voxel_size=self.options.voxel_size)
        self.frames, self.num_frames, self.clip = [], 0, 0
        self._ref_cache.clear()
        self._ref_contexts.clear()
        self._prepared = None
        self._last_ref_ids = []
        self._undo.clear()
        if self.segmenter is not None:
            self.segmenter.reset()

    def open_rgbd(self, rgb: np.ndarray, depth: np.ndarray, w2c: np.ndarray, intrinsics: np.ndarray,
                  exclude: np.ndarray | None = None) -> MemoryDelta:
        """Start from an image with metric depth: the memory is its unprojection (dynamic pixels excluded)."""
        rgb, depth, w2c, intrinsics = self._check_image(rgb, depth, w2c, intrinsics)
        if exclude is not None:
            exclude = np.asarray(exclude, bool)
            if exclude.shape != depth.shape:
                raise PipelineError(f"mask of shape {exclude.shape} does not match the image {depth.shape}")
        rgb, depth, intrinsics, exclude = self._fit(rgb, depth, intrinsics, exclude)
        return self._start(rgb, depth, w2c, intrinsics, exclude=exclude)

    def open_points(self, xyz: np.ndarray, rgb: np.ndarray, w2c: np.ndarray, intrinsics: np.ndarray) -> MemoryDelta:
        """Start from a point cloud (a PLY's points); the start frame is the memory rendered at the start pose."""
        w2c = self._check_pose(w2c)
        intrinsics = self._check_intrinsics(intrinsics)
        self._reset()
        self.memory.insert_points(np.asarray(xyz, np.float32), np.asarray(rgb, np.uint8), frame_id=-1)
        cam = self.camera(w2c, intrinsics)
        out = render(self.memory, [cam])
        start_rgb = to_uint8(out.rgb[0])
        start_depth = out.depth[0, 0].numpy() if self.cfg.depth_channel else None
        self.frames.append(StoredFrame(0, start_rgb, start_depth, cam))
        self.num_frames = 1
        return self.memory.snapshot()

    def open_ply(self, path: str | Path, w2c: np.ndarray, intrinsics: np.ndarray) -> MemoryDelta:
        mem = SpatialMemory.from_ply(path, voxel_size=self.options.voxel_size)
        return self.open_points(mem.xyz, mem.rgb, w2c, intrinsics)

    def open_image(self, rgb: np.ndarray, w2c: np.ndarray, intrinsics: np.ndarray, exclude=None) -> MemoryDelta:
        """Start from an image alone: its depth comes from MapAnything (needs the package and local weights)."""
        from engine.reconstruct import ReconstructorUnavailable, get_reconstructor

        rgb, _, w2c, intrinsics = self._check_image(rgb, None, w2c, intrinsics)
        try:
            recon = get_reconstructor("mapanything")
        except ReconstructorUnavailable as e:
            raise PipelineError(
                f"an image alone needs a depth estimate, and MapAnything is not available here ({e}). Inputs that work "
                "without it: an image with a depth map, a PLY point cloud, or a procedural scene seed"
            ) from e
        H, W = rgb.shape[:2]
        K = geometry.intrinsics_to_K(intrinsics, W, H)
        rec = recon.reconstruct(rgb[None], K[None], w2c[None])
        depth = np.where(rec.valid[0], rec.depth[0], 0).astype(np.float32)
        return self.open_rgbd(rgb, depth, w2c, intrinsics, exclude=exclude)

    def open_procedural(self, seed: int, kind: str = "auto", init_views: int = 1, start_w2c: np.ndarray | None = None,
                        intrinsics: np.ndarray | None = None) -> MemoryDelta:
        """Start in the procedural world: its first frame with true depth (plus `init_views - 1` extra views from
        the start position, turning in place, for a richer starting memory). The start pose defaults to the first
        pose of the scene's seeded walk."""
        from engine.world.paths import walk_path
        from engine.world.render import WorldRenderer
        from engine.world.scene import generate_scene

        scene = generate_scene(int(seed), kind=kind)
        if start_w2c is None or intrinsics is None:
            path = walk_path(scene, 2, seed=int(seed), aspect=self.width / self.height)
        intr = path.intrinsics if intrinsics is None else self._check_intrinsics(intrinsics)
        renderer = WorldRenderer(self.width, self.height)
        try:
            start = path.w2c[0] if start_w2c is None else self._check_pose(start_w2c)
            cam = self.camera(start, intr)
            first = renderer.render(scene, cam.w2c, cam.K)
            delta = self._start(first.rgb, first.depth.astype(np.float32), start, intr, exclude=first.ids > 0)
            c2w = geometry.invert_se3(start)
            for i in range(1, int(init_views)):
                yaw = 2 * math.pi * i / init_views
                R = np.array([[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]])
                turned = c2w.copy()
                turned[:3, :3] = R @ c2w[:3, :3]
                view_w2c = geometry.invert_se3(turned)
                out = renderer.render(scene, view_w2c, cam.K)
                vcam = self.camera(view_w2c, intr)
                delta = delta.merge(self.memory.insert_rgbd(out.rgb, out.depth.astype(np.float32), vcam.K, vcam.w2c,
                                                            frame_id=-1, exclude=out.ids > 0,
                                                            depth_range=self.options.depth_range))
        finally:
            renderer.release()
        self.scene = scene
        return delta

    # ------------------------------------------------------------------ input checks
    def _fit(self, rgb, depth, intrinsics, exclude):
        """An image, its depth and mask cropped and resized to the model's frame size (intrinsics adjusted)."""
        if rgb.shape[:2] == (self.height, self.width):
            return rgb, depth, intrinsics, exclude
        fitted_rgb, fitted_depth, fitted_intr = fit_image(rgb, depth, intrinsics, self.width, self.height)
        if exclude is not None:
            m, _, _ = fit_image(np.repeat(exclude[..., None].astype(np.uint8) * 255, 3, -1), None, intrinsics,
                                self.width, self.height)
            exclude = m[..., 0] > 127
        return fitted_rgb, fitted_depth, fitted_intr, exclude

    @staticmethod
    def _check_pose(w2c) -> np.ndarray:
        w2c = np.asarray(w2c, np.float64)
        if w2c.shape not in ((4, 4), (3, 4)):
            raise PipelineError(f"a pose must be a 3x4 or 4x4 world-to-camera matrix, got shape {w2c.shape}")
        if not np.isfinite(w2c).all():
            raise PipelineError("the pose contains NaN or inf")
        w2c = geometry.as_se3(w2c)
        if geometry.rotation_error(w2c[:3, :3]) > geometry.ORTHONORMAL_TOL:
            raise PipelineError("the pose's rotation is not orthonormal")
        return w2c

    @staticmethod
    def _check_intrinsics(intrinsics) -> np.ndarray:
        intr = np.asarray(intrinsics, np.float64).reshape(-1)
        if intr.shape != (4,) or not np.isfinite(intr).all() or intr[0] <= 0 or intr[1] <= 0:
            raise PipelineError(f"intrinsics must be four finite numbers [fx fy cx cy] with positive focals, got {intr.tolist()}")
        return intr

    def _check_image(self, rgb, depth, w2c, intrinsics):
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or min(rgb.shape[:2]) < 8:
            raise PipelineError(f"the image must be uint8 [H, W, 3] (at least 8x8), got {rgb.dtype} {rgb.shape}")
        if depth is not None:
            depth = np.asarray(depth, np.float32)
            if depth.shape != rgb.shape[:2]:
                raise PipelineError(f"depth of shape {depth.shape} does not match the image {rgb.shape[:2]}")
            depth = np.where(np.isfinite(depth), depth, 0).astype(np.float32)
        return rgb, depth, self._check_pose(w2c), self._check_intrinsics(intrinsics)

    def check_trajectory(self, w2c: np.ndarray, intrinsics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w2c = np.asarray(w2c, np.float64)
        if w2c.ndim != 3 or w2c.shape[1:] not in ((4, 4), (3, 4)) or len(w2c) == 0:
            raise PipelineError(f"a trajectory must be [N, 4, 4] (or [N, 3, 4]) poses, got shape {w2c.shape}")
        bad = np.flatnonzero(~np.isfinite(w2c).reshape(len(w2c), -1).all(1))
        if len(bad):
            raise PipelineError(f"trajectory pose {int(bad[0])} contains NaN or inf")
        w2c = geometry.as_se3(w2c)
        err = geometry.rotation_error(w2c[:, :3, :3])
        if (err > geometry.ORTHONORMAL_TOL).any():
            raise PipelineError(f"trajectory pose {int(np.argmax(err))} has a rotation that is not orthonormal")
        return w2c, self._check_intrinsics(intrinsics)

    # ------------------------------------------------------------------ generation
    def step(self, w2c: np.ndarray, intrinsics: np.ndarray, prompt: str | None = None, on_frame: FrameCallback | None = None,
             should_stop: Callable[[], bool] | None = None) -> list[ChunkResult]:
        """Generate along N poses: ceil(N / chunk_frames) chunks; the last chunk repeats the final pose if short."""
        w2c, intrinsics = self.check_trajectory(w2c, intrinsics)
        results = []
        for start in range(0, len(w2c), self.chunk_frames):
            part = w2c[start : start + self.chunk_frames]
            results.append(self.generate_chunk(part, intrinsics, prompt, on_frame, should_stop))
        return results

    def _retrieve(self, targets: list[geometry.Camera]) -> tuple[list[tuple[int, float]], list[StoredFrame]]:
        """The references for a chunk along `targets`: (frame index, score) pairs and the stored frames."""
        cfg, opt = self.cfg, self.options
        k = cfg.num_refs if opt.num_refs is None else min(opt.num_refs, cfg.num_refs)
        ref_ids: list[tuple[int, float]] = []
        if opt.use_references and k > 0 and len(self.frames) > 1:
            if opt.retrieval == "alg1":  # Algorithm 1 registers point sets: frames without depth cannot take part
                candidates = [Candidate(f.index, f.camera, pts) for f in self.frames[:-1]
                              if (pts := self._frame_points(f)) is not None and len(pts)]
            else:
                candidates = [Candidate(f.index, f.camera) for f in self.frames[:-1]]
            if candidates:
                ref_ids = retrieve(opt.retrieval, targets, candidates, self.memory,
                                   **retrieval_options(opt.retrieval, cfg, k, opt.retrieval_candidates, len(targets)))
        return self._stored_refs(ref_ids)

    def _previous_refs(self) -> tuple[list[tuple[int, float]], list[StoredFrame]]:
        """The last chunk's references that are still stored, as `_retrieve` returns them."""
        return self._stored_refs(self._last_ref_ids)

    def _stored_refs(self, ref_ids: list[tuple[int, float]]) -> tuple[list[tuple[int, float]], list[StoredFrame]]:
        """(frame index, score) pairs of frames still stored, and those frames."""
        by_index = {f.index: f for f in self.frames}
        ref_ids = [(i, score) for i, score in ref_ids if i in by_index]
        return ref_ids, [by_index[i] for i, _ in ref_ids]

    def _reference_context(self, ref_ids: list[tuple[int, float]]) -> tuple[tuple, ContextCache | None]:
        """attention_layout "layered" without guidance: the key of these references' keys/values and, when an
        earlier chunk computed them, a cache holding them (a fork: the chunk extends it with its history).
        ((), None) for other models, or without references."""
        if self.cfg.attention_layout != "layered" or self.cfg.cfg_scale != 1.0 or not ref_ids:
            return (), None
        # the control branch's blocks hold the references' keys/values only when it ran (the scene video is on)
        key = (self.options.use_scene_video, *(i for i, _ in ref_ids))
        known = self._ref_contexts.get(key)
        if known is None:
            return key, None
        self._ref_contexts.move_to_end(key)
        return key, known.fork()

    def _remember_references(self, key: tuple, cache: ContextCache) -> None:
        """Keep the references' part of a filled cache for later chunks with the same references."""
        if key and cache.filled and key not in self._ref_contexts:
            self._ref_contexts[key] = cache.references()
            while len(self._ref_contexts) > REFERENCE_CONTEXTS_KEPT:
                self._ref_contexts.popitem(last=False)

    @property
    def nbytes(self) -> int:
        """Bytes of the session's data in memory: the spatial memory (with its indexes), the stored frames and their
        cached latents, the kept references' keys/values. (A prepared context adds a few MB while it is current.)"""
        frames = sum(f.rgb.nbytes + (0 if f.depth is None else f.depth.nbytes) for f in self.frames)
        latents = sum(t.numel() * t.element_size() for t in self._ref_cache.values())
        return self.memory.nbytes + frames + latents + sum(c.nbytes for c in self._ref_contexts.values())

    @property
    def point_size(self) -> float:
        """The scene video's point size for the next chunk (the release grows it with every clip)."""
        return self.options.voxel_size + self.options.point_size_growth * self.clip

    @property
    def context_key(self) -> tuple:
        """What a prepared context depends on besides the model: the history frame, the memory, the clip count."""
        return (self.last_frame.index, self.memory.version, self.clip)

    @property
    def can_prepare(self) -> bool:
        """Whether this model and these options let the next chunk's context be prepared ahead of its poses."""
        return (self.cfg.attention_layout in CACHED_LAYOUTS and self.cfg.cfg_scale == 1.0 and self.options.use_scene_video
                and bool(self.frames))

    @property
    def prepared(self) -> bool:
        """Is the next chunk's context prepared (for the current history, memory and clip)?"""
        return self._prepared is not None and self._prepared.key == self.context_key and self.can_prepare

    def prepare(self, w2c: np.ndarray | None = None, intrinsics: np.ndarray | None = None,
                previous_refs: bool = False, should_stop: Callable[[], bool] | None = None) -> float | None:
        """Compute the next chunk's context before its poses are known (the server does this while it waits for
        input): references for the expected path w2c [N, 4, 4] (default: the history pose; previous_refs: the last
        chunk's, as the server's short chunk takes them), the history's control latents and the DiT's keys/values
        of [references | history]. The next `generate_chunk` uses it if the history, memory and clip count are
        still the same. should_stop() is polled between the stages: True abandons the preparation (what it
        computed stays in the session's caches). Returns the milliseconds spent (None: nothing to do, or stopped)."""
        if not self.can_prepare:
            return None
        if self.prepared:
            return 0.0
        key = self.context_key
        history = self.last_frame
        if w2c is None or not len(w2c):
            targets = [history.camera]
        else:
            w2c, intrinsics = self.check_trajectory(np.asarray(w2c)[: self.chunk_frames], intrinsics)
            targets = [self.camera(p, intrinsics) for p in w2c]
        t0 = time.perf_counter()
        ref_ids, refs = self._previous_refs() if previous_refs else ([], [])
        if not ref_ids:
            ref_ids, refs = self._retrieve(targets)
        if should_stop is not None and should_stop():
            return None
        ref_key, context = self._reference_context(ref_ids)
        prepared = prepare_context(self.model, self.memory, history, refs, ref_ids, self.point_size,
                                   self._ref_cache, key, context, should_stop)
        if prepared is None:
            return None
        self._prepared = prepared
        self._remember_references(ref_key, prepared.cache)
        prepared.ms = (time.perf_counter() - t0) * 1e3
        return prepared.ms

    def generate_chunk(self, w2c: np.ndarray, intrinsics: np.ndarray, prompt: str | None = None,
                       on_frame: FrameCallback | None = None, should_stop: Callable[[], bool] | None = None,
                       latent_frames: int | None = None, steps: int | None = None,
                       previous_refs: bool = False) -> ChunkResult:
        """One chunk of `chunk_frames` frames along w2c [<= chunk_frames, 4, 4] (padded with its last pose).

        latent_frames (1 .. cfg.chunk_latent_frames, default all) shortens the chunk to latent_frames *
        temporal_compression frames: less work before the first frame (the server's short chunk after a turn).
        steps: sampler steps of this chunk (default: options.steps, else the model's).
        previous_refs: take the last chunk's references (those still stored) instead of retrieving for these poses,
        as a prepared context does (the server's short chunk after a turn: its first frame sooner).

        on_frame(index, rgb [H, W, 3], depth [H, W] | None, w2c [4, 4], timings) is called as each frame is decoded.
        should_stop() is polled after retrieval, after the conditions and between sampler steps (everything before
        the first frame); True raises ChunkCancelled and leaves the session unchanged. It is polled again before
        each later latent frame is decoded: True then ends the chunk with the frames already handed out (their
        memory update included), as if its poses had been those.
        """
        w2c, intrinsics = self.check_trajectory(w2c, intrinsics)
        cfg, opt, model = self.cfg, self.options, self.model
        n_lat = cfg.chunk_latent_frames if latent_frames is None else int(latent_frames)
        if not 1 <= n_lat <= cfg.chunk_latent_frames:
            raise PipelineError(f"latent_frames must be in [1, {cfg.chunk_latent_frames}], got {latent_frames}")
        steps = opt.steps if steps is None else steps
        if steps is not None and not (isinstance(steps, int) and steps >= 1):
            raise PipelineError(f"steps must be an integer >= 1, got {steps!r}")
        chunk_frames = n_lat * cfg.temporal_compression
        if len(w2c) > chunk_frames:
            raise PipelineError(f"a chunk takes at most {chunk_frames} poses, got {len(w2c)}; use step()")
        if prompt:
            self.prompt = prompt
        n_new = len(w2c)
        poses = np.concatenate([w2c, np.repeat(w2c[-1:], chunk_frames - n_new, 0)])
        history = self.last_frame
        targets = [self.camera(p, intrinsics) for p in poses]
        timings: dict[str, float] = {}
        t_start = time.perf_counter()

        def stop_if_asked(after: str) -> None:
            if should_stop is not None and should_stop():
                raise ChunkCancelled(f"chunk cancelled after {after}")

        # retrieval, scene video and latents: the prepared context when it fits (references chosen before the
        # poses came, history and its keys/values computed while waiting), else all of it now
        point_size = self.point_size
        prepared = self._prepared if self.prepared else None
        ref_key: tuple = ()
        if prepared is not None:
            timings["retrieval"] = 0.0
            timings["prepared_ms"] = prepared.ms  # spent before the chunk, outside its total
            cond = target_conditions(model, self.memory, targets, prepared, point_size=point_size, timings=timings)
        else:
            t0 = time.perf_counter()
            ref_ids, refs = self._previous_refs() if previous_refs else ([], [])
            if not ref_ids:
                ref_ids, refs = self._retrieve(targets)
            timings["retrieval"] = (time.perf_counter() - t0) * 1e3
            stop_if_asked("retrieval")
            cond = build_conditions(model, self.memory, history.rgb, history.depth, [history.camera, *targets], refs,
                                    ref_ids, use_scene_video=opt.use_scene_video, point_size=point_size,
                                    ref_latent_cache=self._ref_cache, timings=timings, history_index=history.index)
        stop_if_asked("conditions")

        # sampling, cancellable between steps
        def callback(info: StepInfo) -> bool:
            timings[f"step_{info.step}"] = info.step_ms
            return bool(should_stop and should_stop())

        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                if prepared is not None:  # the context is in its cache: every step runs the target tokens only
                    given = dict(control=cond.control[:, :, 1:], context=prepared.cache)
                else:
                    given = dict(history=cond.history, refs=cond.refs, control=cond.control)
                    ref_key, context = self._reference_context(cond.ref_ids)
                    if ref_key:  # layout "layered": the references' keys/values from an earlier chunk, or kept now
                        given.update(context=context or ContextCache(), refs=None if context else cond.refs)
                latents = sample(model.dit, cfg, **given, target_frames=n_lat, steps=steps,
                                 generator=self._generator, callback=callback)
                latents = latents.to(cond.history.dtype)  # the DiT's precision -> the VAE's (history came from it)
        except SamplingCancelled as e:
            raise ChunkCancelled(str(e)) from e
        timings["sample"] = (time.perf_counter() - t0) * 1e3
        if prepared is None and ref_key:
            self._remember_references(ref_key, given["context"])

        # streaming decode: the history latent warms the causal cache, then each target latent yields frames
        t0 = time.perf_counter()
        first_index = self.num_frames
        rgb_out, depth_out = [], []
        with torch.no_grad():
            if prepared is not None:
                cache = prepared.decode.fork()
            else:
                cache = model.vae.new_decode_cache()
                model.vae.decode_step(cond.history, cache)
            produced = 0
            for i in range(latents.shape[2]):
                if produced and produced < n_new and should_stop is not None and should_stop():
                    n_new = produced  # a newer path: the chunk ends with the frames already out
                    break
                video = model.vae.decode_step(latents[:, :, i : i + 1], cache)[0]  # [C, n, H, W]
                for j in range(video.shape[1]):
                    if produced >= n_new:
                        break
                    rgb = to_uint8(video[:3, j])
                    depth = video[3, j].float().cpu().numpy() if cfg.depth_channel else None
                    rgb_out.append(rgb)
                    depth_out.append(depth)
                    if on_frame is not None:
                        on_frame(first_index + produced, rgb, depth, poses[produced],
                                 {"decode": (time.perf_counter() - t0) * 1e3, "since_start": (time.perf_counter() - t_start) * 1e3})
                    produced += 1
        timings["decode"] = (time.perf_counter() - t0) * 1e3
        rgb_arr = np.stack(rgb_out)  # [F, H, W, 3]
        depth_arr = np.stack(depth_out) if cfg.depth_channel else None
        Ks = np.stack([c.K for c in targets[:n_new]])

        # reconstruction
        t0 = time.perf_counter()
        recon = self.reconstructor.reconstruct(rgb_arr, Ks, poses[:n_new], depth_arr)
        timings["reconstruct"] = (time.perf_counter() - t0) * 1e3

        # segmentation of dynamic regions against the memory's own render at the same poses
        t0 = time.perf_counter()
        scene_rgb = to_uint8(cond.scene_rgb[1 : 1 + n_new])
        scene_depth = cond.scene_depth[1 : 1 + n_new, 0].numpy()
        coverage = cond.coverage[1 : 1 + n_new, 0].numpy() > 0.5
        dynamic = np.zeros(rgb_arr.shape[:3], bool)
        if self.segmenter is not None:
            dynamic = self.segmenter.segment(rgb_arr, depth=recon.depth, render_rgb=scene_rgb, render_depth=scene_depth,
                                             coverage=coverage)
        timings["segment"] = (time.perf_counter() - t0) * 1e3

        # memory update with the static, valid pixels
        t0 = time.perf_counter()
        delta = MemoryDelta.empty(self.memory.version)
        for i in range(0, n_new if opt.update_memory else 0, max(1, opt.update_stride)):
            static = recon.valid[i] & ~dynamic[i]
            keep = static & new_content(coverage[i], opt.update_hole_px) if opt.update_uncovered_only else static
            scale = (depth_scale_to_memory(recon.depth[i], static, scene_depth[i], coverage[i])
                     if opt.update_align_depth else 1.0)
            depth_i = np.where(keep, recon.depth[i] * scale, np.nan).astype(np.float32)
            delta = delta.merge(self.memory.insert_rgbd(rgb_arr[i], depth_i, Ks[i], poses[i], frame_id=first_index + i,
                                                        confidence=recon.confidence[i], depth_range=opt.depth_range))
        timings["update"] = (time.perf_counter() - t0) * 1e3

        # bookkeeping: new frames become candidates (every n-th) and the last one the next history
        for i in range(n_new):
            index = first_index + i
            if i == n_new - 1 or index % max(1, opt.candidate_stride) == 0:
                # copies: a view would keep the whole chunk's arrays alive (4x the stored frames' memory)
                self.frames.append(StoredFrame(index, rgb_arr[i].copy(), None if depth_arr is None else depth_arr[i].copy(),
                                               targets[i]))
        self._drop_old_frames()
        self._last_ref_ids = list(cond.ref_ids)
        self.num_frames += n_new
        self.clip += 1
        timings["total"] = (time.perf_counter() - t_start) * 1e3
        return ChunkResult(self.clip - 1, first_index, rgb_arr, depth_arr, poses[:n_new], delta, timings, cond.ref_ids,
                           scene_rgb, coverage, dynamic)

    def _frame_points(self, frame: StoredFrame, voxel: float = 0.05) -> np.ndarray | None:
        """A frame's back-projected points, one per `voxel` (Algorithm 1's IoU grid) so the IoU is not biased."""
        if frame.depth is None:
            return None
        pts = geometry.unproject(frame.depth, frame.camera.K, frame.camera.w2c).reshape(-1, 3)
        d = frame.depth.reshape(-1)
        pts = pts[(d > self.options.depth_range[0]) & (d < self.options.depth_range[1])]
        _, first = np.unique(np.floor(pts / voxel).astype(np.int64), axis=0, return_index=True)
        return pts[np.sort(first)].astype(np.float32)

    def _drop_old_frames(self) -> None:
        excess = len(self.frames) - self.options.max_stored_frames
        if excess > 0:
            for f in self.frames[:excess]:
                self._ref_cache.pop(f.index, None)
            self.frames = self.frames[excess:]

    # ------------------------------------------------------------------ editing (the next scene video shows it)
    def remove_box(self, lo, hi) -> MemoryDelta:
        return self._removal(self.memory.select_box(lo, hi))

    def remove_ids(self, ids) -> MemoryDelta:
        ids = np.asarray(ids, np.int64)
        return self._removal(ids[np.isin(ids, self.memory.ids)])

    def remove_in_rect(self, camera: geometry.Camera, rect) -> MemoryDelta:
        return self._removal(self.memory.select_in_rect(camera, rect, visible_only=True))

    def _removal(self, ids: np.ndarray) -> MemoryDelta:
        rows = self.memory.rows_of(ids)
        xyz, rgb, conf = self.memory.xyz[rows].copy(), self.memory.rgb[rows].copy(), self.memory.confidence[rows].copy()
        delta = self.memory.remove_ids(ids)
        self._undo.append(lambda: self.memory.insert_points(xyz, rgb, conf))
        return delta

    def recolor(self, ids, rgb) -> MemoryDelta:
        """New colours rgb [M, 3] (or one [3]) for the points with these ids; unknown ids are skipped."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        rgb = np.broadcast_to(np.asarray(rgb, np.uint8), (len(ids), 3))
        known = np.isin(ids, self.memory.ids)
        ids, rgb = ids[known], rgb[known]
        old = self.memory.rgb[self.memory.rows_of(ids)].copy()
        delta = self.memory.recolor(ids, rgb)

        def restore() -> MemoryDelta:
            alive = np.isin(ids, self.memory.ids)
            return self.memory.recolor(ids[alive], old[alive])

        self._undo.append(restore)
        return delta

    def insert_primitive(self, shape: str, center, size, rgb) -> MemoryDelta:
        pts = primitive_surface(shape, center, size, spacing=self.memory.voxel_size)
        return self.insert_points(pts, np.broadcast_to(np.asarray(rgb, np.uint8), pts.shape).copy())

    def insert_points(self, xyz, rgb) -> MemoryDelta:
        delta = self.memory.insert_points(xyz, rgb, confidence=np.full(len(xyz), 2.0, np.float32))
        added = delta.added_ids.copy()
        self._undo.append(lambda: self.memory.remove_ids(added[np.isin(added, self.memory.ids)]))
        return delta

    def undo(self) -> MemoryDelta:
        if not self._undo:
            raise PipelineError("nothing to undo")
        return self._undo.pop()()

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        """Write the session atomically: a temporary folder beside `directory`, then a rename over it."""
        directory = Path(directory)
        tmp = directory.with_name(f".{directory.name}.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        self.memory.save(tmp / "memory.safetensors")
        # the stored frames go out one by one (stacking them would copy them all at every autosave)
        arrays = {
            "index": np.array([f.index for f in self.frames], np.int64),
            "rgb": [f.rgb for f in self.frames] if self.frames else np.zeros((0, self.height, self.width, 3), np.uint8),
            "w2c": np.stack([f.camera.w2c for f in self.frames]) if self.frames else np.zeros((0, 4, 4)),
            "K": np.stack([f.camera.K for f in self.frames]) if self.frames else np.zeros((0, 3, 3)),
        }
        if self.frames and self.frames[0].depth is not None:
            arrays["depth"] = [f.depth for f in self.frames]
        write_npz(tmp / "frames.npz", arrays)
        meta = {"format": SESSION_FORMAT, "version": SESSION_VERSION, "model": self.model.name,
                "width": self.width, "height": self.height, "num_frames": self.num_frames, "clip": self.clip,
                "prompt": self.prompt, "options": asdict(self.options)}
        (tmp / "session.json").write_text(json.dumps(meta, indent=1))
        old = directory.with_name(f".{directory.name}.old")
        if directory.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(directory, old)
        os.replace(tmp, directory)
        if old.exists():
            shutil.rmtree(old)
        return directory

    @classmethod
    def load(cls, directory: str | Path, model: WorldModel) -> "WorldSession":
        directory = Path(directory)
        old = directory.with_name(f".{directory.name}.old")
        if not directory.exists() and (old / "session.json").is_file():
            directory = old  # killed between save()'s two renames: the previous save is complete in `.old`
        meta_file = directory / "session.json"
        part = meta_file.name  # the file being read, for the error message
        try:
            meta = json.loads(meta_file.read_text())
            if meta.get("format") != SESSION_FORMAT:
                raise ValueError(f"format is {meta.get('format')!r}, not {SESSION_FORMAT!r}")
            if (meta["width"], meta["height"]) != (model.cfg.width, model.cfg.height):
                raise ValueError(f"saved at {meta['width']}x{meta['height']}, the model makes {model.cfg.width}x{model.cfg.height}")
            options = SessionOptions(**{**meta["options"], "depth_range": tuple(meta["options"]["depth_range"])})
            session = cls(model, options, prompt=meta.get("prompt", ""))
            part = "memory.safetensors"
            session.memory = SpatialMemory.load(directory / part)
            part = "frames.npz"
            with np.load(directory / part) as z:
                depth = z["depth"] if "depth" in z else None
                session.frames = [
                    StoredFrame(int(i), z["rgb"][n], None if depth is None else depth[n],
                                geometry.Camera(z["w2c"][n], z["K"][n], model.cfg.width, model.cfg.height))
                    for n, i in enumerate(z["index"])
                ]
            part = meta_file.name
            session.num_frames, session.clip = int(meta["num_frames"]), int(meta["clip"])
            last = max((f.index for f in session.frames), default=-1)
            if not (last < session.num_frames < 2**62 and 0 <= session.clip <= session.num_frames):
                raise ValueError(f"num_frames {session.num_frames} / clip {session.clip} do not fit the stored frames")
        except (OSError, ValueError, KeyError, TypeError, OverflowError, EOFError, zipfile.BadZipFile) as e:  # damage
            raise PipelineError(f"cannot load session {directory} ({part}): {type(e).__name__}: {e}") from e
        return session
