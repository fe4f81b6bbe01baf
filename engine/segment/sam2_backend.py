"""`sam2`: SAM 2's video predictor tracks prompted dynamic entities through generated clips, clip after clip.

The paper's disentanglement step: a user prompts the moving entities (points, a box or a mask) on the first frame,
SAM 2 tracks them, and their masks are excluded from the memory update while the video keeps them. The `sam2`
package is imported only here, when the backend is built, from its shipped hydra config and a local checkpoint
(argument or SPATIA_SAM2_CHECKPOINT; nothing is downloaded). The package's own `init_state` reads a JPEG folder
or an mp4; generated frames are already in memory and arrive one clip at a time, so this module feeds the
predictor preprocessed frame tensors through a frame window, appends each new clip to the same tracking session,
and prunes per-frame outputs older than the model's memory reach, so tracking continues across clips with
bounded state. Only `sam2.build_sam` and `sam2.sam2_video_predictor` are used: neither imports torchvision
(in sam2 1.1 only `automatic_mask_generator` and `utils.transforms` do, for the image predictor).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.segment import Prompt, Segmenter, SegmenterUnavailable

CHECKPOINT_ENV = "SPATIA_SAM2_CHECKPOINT"
DEFAULT_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
WITHOUT_IT = (
    "without it, use 'residual' (compares frames with the memory's render, no weights) or "
    "'masks' (replays user mask files)"
)
INSTALL_HINT = (
    "install it with `SAM2_BUILD_CUDA=0 pip install --no-build-isolation --no-deps 'sam2>=1.1'` then "
    "`pip install hydra-core iopath` (no-deps: sam2 pins a torchvision that this torch cannot sit beside, "
    "and the video predictor does not need it)"
)
MIN_VERSION = (1, 1)  # the per-object inference-state layout `_new_state` mirrors
BACKBONE_STRIDE = 16  # SAM 2's image embedding is image_size / 16 on a side (its `backbone_stride`)


@dataclass(frozen=True)
class Sam2Config:
    checkpoint: str | None = None  # local .pt; None reads SPATIA_SAM2_CHECKPOINT
    config: str | None = None  # the package's config name; None picks it from the checkpoint's file name
    image_size: int | None = None  # override the config's input size (multiple of 16); None keeps it
    random_init: bool = False  # build without a checkpoint (random weights): tests and smoke runs only
    device: str = "auto"  # "auto": cuda when available
    autocast_bf16: bool = True  # on CUDA, run in bfloat16 as the package's demos do
    mask_threshold: float = 0.0  # logit above which a pixel belongs to a tracked object

    def __post_init__(self):
        if self.image_size is not None and (self.image_size <= 0 or self.image_size % BACKBONE_STRIDE):
            raise ValueError(f"image_size must be a positive multiple of {BACKBONE_STRIDE}, got {self.image_size}")


def _import_sam2():
    if importlib.util.find_spec("sam2") is None:
        raise SegmenterUnavailable(f"sam2 backend: the `sam2` package is not installed; {INSTALL_HINT}; {WITHOUT_IT}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("sam2")
    except PackageNotFoundError:
        found = None  # a source checkout on the path: trust it
    if found is not None and tuple(int(p) for p in found.split(".")[:2] if p.isdigit()) < MIN_VERSION:
        raise SegmenterUnavailable(
            f"sam2 backend: sam2 {found} is installed, this backend drives the video predictor state of "
            f"{'.'.join(map(str, MIN_VERSION))}+; {INSTALL_HINT}; {WITHOUT_IT}"
        )
    try:
        from sam2 import build_sam
        from sam2.utils import misc
    except ImportError as e:
        raise SegmenterUnavailable(f"sam2 backend: importing sam2 failed ({e}); {INSTALL_HINT}; {WITHOUT_IT}") from e
    return build_sam, misc


def resolve_checkpoint_and_config(cfg: Sam2Config, build_sam) -> tuple[Path | None, str]:
    """The checkpoint path (None for random init) and the config name; errors name the path tried."""
    if cfg.random_init:
        return None, cfg.config or DEFAULT_CONFIG
    raw = cfg.checkpoint if cfg.checkpoint is not None else os.environ.get(CHECKPOINT_ENV)
    if not raw:
        raise SegmenterUnavailable(
            f"sam2 needs a local checkpoint: pass checkpoint=PATH or set {CHECKPOINT_ENV} (nothing is downloaded); "
            f"{WITHOUT_IT}"
        )
    path = Path(raw).expanduser()
    if not path.is_file():
        source = "argument checkpoint" if cfg.checkpoint is not None else CHECKPOINT_ENV
        raise SegmenterUnavailable(f"sam2 checkpoint not found: tried {path} (from {source}); {WITHOUT_IT}")
    if cfg.config is not None:
        return path, cfg.config
    # the package's own table pairs each released checkpoint file with its config
    by_file = {ckpt: conf for conf, ckpt in build_sam.HF_MODEL_ID_TO_FILENAMES.values()}
    if path.name not in by_file:
        raise ValueError(
            f"cannot tell the sam2 config for checkpoint {path.name}; pass config= one of: "
            f"{', '.join(sorted(set(by_file.values())))}"
        )
    return path, by_file[path.name]


class FrameWindow:
    """The predictor's `images`: frames addressed by absolute index, holding only the current clip.

    SAM 2 reads `images[frame_idx]` for the frame it is tracking and `len(images)` for the video length; earlier
    clips' pixels are never read again (their memory lives in the tracking outputs), so they are dropped.
    """

    def __init__(self):
        self.start = 0
        self.frames = None  # [F, 3, S, S] normalised tensor of the current clip
        self.total = 0

    def append_clip(self, frames) -> int:
        """Replace the held clip with the next one; returns the absolute index of its first frame."""
        self.start, self.frames = self.total, frames
        self.total += len(frames)
        return self.start

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, idx: int):
        if self.frames is None or not self.start <= idx < self.total:
            raise IndexError(f"sam2 asked for frame {idx}, but only frames {self.start}..{self.total - 1} are held")
        return self.frames[idx - self.start]


class Sam2Segmenter(Segmenter):
    name = "sam2"
    needs_prompt = True

    def __init__(self, **kw):
        self.config = cfg = Sam2Config(**kw)
        build_sam, misc = _import_sam2()
        import torch

        self._torch = torch
        checkpoint, config_name = resolve_checkpoint_and_config(cfg, build_sam)
        device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        overrides = []
        if cfg.image_size is not None:
            side = cfg.image_size // BACKBONE_STRIDE
            overrides += [
                f"++model.image_size={cfg.image_size}",
                f"++model.memory_attention.layer.self_attention.feat_sizes=[{side},{side}]",
                f"++model.memory_attention.layer.cross_attention.feat_sizes=[{side},{side}]",
            ]
        try:
            self.predictor = build_sam.build_sam2_video_predictor(
                config_name, ckpt_path=None if checkpoint is None else str(checkpoint), device=device,
                hydra_overrides_extra=overrides,
            )
        except Exception as e:  # hydra and torch.load raise many kinds; the user needs the files involved
            raise SegmenterUnavailable(
                f"sam2: could not build {config_name} from {checkpoint or 'random weights'}: {e}"
            ) from e
        if importlib.util.find_spec("sam2._C") is None:
            # the hole-filling post-process needs the package's CUDA extension; without it, sam2 warns per frame
            self.predictor.fill_hole_area = 0
        # the package's own input normalisation (the defaults its frame loaders apply)
        params = inspect.signature(misc.load_video_frames).parameters
        self._mean = torch.tensor(params["img_mean"].default, dtype=torch.float32, device=device)[:, None, None]
        self._std = torch.tensor(params["img_std"].default, dtype=torch.float32, device=device)[:, None, None]
        self.device = torch.device(device)
        self.checkpoint, self.config_name = checkpoint, config_name
        # outputs older than this many frames are never read again: mask memory and object pointers reach back
        # at most max(num_maskmem, max_obj_ptrs_in_encoder) frames at the evaluation stride
        p = self.predictor
        self.memory_reach = max(p.num_maskmem, p.max_obj_ptrs_in_encoder) * p.memory_temporal_stride_for_eval
        self.state = None

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        self.state = None

    def _new_state(self, height: int, width: int) -> dict:
        """What `SAM2VideoPredictor.init_state` builds (sam2 1.1), over a FrameWindow instead of files."""
        dev = self.device
        return {
            "images": FrameWindow(),
            "num_frames": 0,
            "offload_video_to_cpu": False,
            "offload_state_to_cpu": False,
            "video_height": height,
            "video_width": width,
            "device": dev,
            "storage_device": dev,
            "point_inputs_per_obj": {},
            "mask_inputs_per_obj": {},
            "cached_features": {},
            "constants": {},
            "obj_id_to_idx": OrderedDict(),
            "obj_idx_to_id": OrderedDict(),
            "obj_ids": [],
            "output_dict_per_obj": {},
            "temp_output_dict_per_obj": {},
            "frames_tracked_per_obj": {},
        }

    def _preprocess(self, rgb: np.ndarray):
        """[F, H, W, 3] uint8 or float -> [F, 3, S, S] normalised as the package's loaders do."""
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        x = x.permute(0, 3, 1, 2)  # [F, 3, H, W]
        S = self.predictor.image_size
        x = torch.nn.functional.interpolate(x, size=(S, S), mode="bilinear", align_corners=False, antialias=True)
        return (x - self._mean) / self._std

    def _prune(self) -> None:
        """Drop per-frame outputs beyond the model's memory reach (prompted frames are always kept)."""
        oldest = self.state["num_frames"] - self.memory_reach
        for out in self.state["output_dict_per_obj"].values():
            for t in [t for t in out["non_cond_frame_outputs"] if t < oldest]:
                del out["non_cond_frame_outputs"][t]
        for tracked in self.state["frames_tracked_per_obj"].values():
            for t in [t for t in tracked if t < oldest]:
                del tracked[t]

    # ------------------------------------------------------------------ segment
    def _add_prompt(self, frame_idx: int, p: Prompt, height: int, width: int) -> None:
        pred = self.predictor
        if p.mask is not None:
            if p.mask.shape != (height, width):
                raise ValueError(f"Prompt.mask is {p.mask.shape[::-1]} (WxH), frames are {width}x{height}")
            pred.add_new_mask(self.state, frame_idx, p.obj_id, self._torch.from_numpy(p.mask))
        else:
            pred.add_new_points_or_box(
                self.state, frame_idx, p.obj_id, points=p.points, labels=p.labels, box=p.box, normalize_coords=True
            )

    def _segment(self, rgb, depth, render_rgb, render_depth, coverage, prompts: list[Prompt]) -> np.ndarray:
        torch = self._torch
        Fn, H, W = rgb.shape[:3]
        if self.state is None:
            if not prompts:
                raise ValueError("sam2 needs a Prompt (points, a box or a mask) on the first frame it tracks")
            self.state = self._new_state(H, W)
        elif (self.state["video_height"], self.state["video_width"]) != (H, W):
            raise ValueError(
                f"sam2 is tracking {self.state['video_width']}x{self.state['video_height']} frames; got {W}x{H} "
                "(call reset() to start a new video)"
            )
        use_bf16 = self.config.autocast_bf16 and self.device.type == "cuda"
        out = np.zeros((Fn, H, W), bool)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            start = self.state["images"].append_clip(self._preprocess(rgb))
            self.state["num_frames"] = len(self.state["images"])
            self.state["cached_features"] = {}
            for p in prompts:
                self._add_prompt(start, p, H, W)
            for frame_idx, _, logits in self.predictor.propagate_in_video(
                self.state, start_frame_idx=start, max_frame_num_to_track=Fn - 1
            ):
                # logits [objects, 1, H, W] at the input resolution; a pixel is dynamic if any object claims it
                out[frame_idx - start] = (logits[:, 0] > self.config.mask_threshold).any(0).cpu().numpy()
        self._prune()
        return out
