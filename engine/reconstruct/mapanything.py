"""`mapanything`: MapAnything (feed-forward metric 3D reconstruction) from a local checkpoint, with known cameras.

This is the reconstruction the paper's release runs to build and update the memory. The `mapanything` package is
imported only here, when the backend is built; weights come from a local directory in the Hugging Face layout
(`config.json` + `model.safetensors`), named by argument or by SPATIA_MAPANYTHING_WEIGHTS. Nothing is downloaded:
the checkpoint loads with `local_files_only`, the DINOv2 encoder is built without its torch-hub pretrained weights
(the checkpoint overwrites them anyway), and the torch-hub code it is built from must already be in the cache.
Frames go in with their intrinsics and camera-to-world poses (metric), optionally with the generated depth; the
package resizes and crops them to its working resolution, and the outputs are mapped back to the input pixels
through the intrinsics the package reports for its crop.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.geometry import invert_se3
from engine.reconstruct import Reconstruction, Reconstructor, ReconstructorUnavailable

WEIGHTS_ENV = "SPATIA_MAPANYTHING_WEIGHTS"
WITHOUT_IT = (
    "without it, use 'model-depth' (needs the depth generated with the frames) or "
    "'plane-sweep' (RGB frames with known poses, no weights)"
)


@dataclass(frozen=True)
class MapAnythingConfig:
    weights: str | None = None  # local checkpoint directory; None reads SPATIA_MAPANYTHING_WEIGHTS
    device: str = "auto"  # "auto": cuda when available
    use_amp: bool = True  # mixed precision, as the package recommends
    amp_dtype: str = "bf16"
    memory_efficient: bool = True  # the package's chunked dense heads: more views per GPU at little cost
    use_generated_depth: bool = False  # also feed the model's generated depth as a metric depth input
    mask_edges: bool = True  # the package's normal/depth edge mask against flying pixels
    resize_mode: str = "fixed_mapping"  # the package's resize policy (its default aspect-ratio table)


def _package_note() -> str:
    import importlib.util

    found = importlib.util.find_spec("mapanything") is not None
    return "the mapanything package is installed" if found else "the mapanything package is not installed either"


def resolve_weights(weights: str | None) -> Path:
    """The checkpoint directory from the argument or the environment; clear errors when absent."""
    raw = weights if weights is not None else os.environ.get(WEIGHTS_ENV)
    if not raw:
        raise ReconstructorUnavailable(
            f"mapanything needs a local checkpoint directory: pass weights=PATH or set {WEIGHTS_ENV} "
            f"(nothing is downloaded; {_package_note()}); {WITHOUT_IT}"
        )
    path = Path(raw).expanduser()
    source = "argument weights" if weights is not None else WEIGHTS_ENV
    if not path.is_dir():
        raise ReconstructorUnavailable(
            f"mapanything weights not found: tried {path} (from {source}; {_package_note()}); {WITHOUT_IT}"
        )
    if not (path / "config.json").is_file():
        raise ReconstructorUnavailable(
            f"{path} (from {source}) has no config.json: expected a Hugging Face-layout MapAnything checkpoint "
            f"(config.json + model.safetensors); {WITHOUT_IT}"
        )
    return path


def _check_torch_hub_cache(config: dict, path: Path) -> dict:
    """Encoder settings that build offline: no torch-hub weights, and the hub code must be cached already."""
    enc = dict(config.get("encoder_config") or {})
    if not enc.get("uses_torch_hub"):
        return enc
    import torch

    hub = Path(torch.hub.get_dir())
    if "dinov2" not in str(enc.get("encoder_str", "")):
        raise ReconstructorUnavailable(
            f"the checkpoint at {path} builds a {enc.get('encoder_str')!r} encoder through torch.hub, which could "
            f"download; only the released DINOv2 encoder is supported offline; {WITHOUT_IT}"
        )
    repo = "facebookresearch_dinov2"
    if not any((hub / f"{repo}_{ref}").is_dir() for ref in ("main", "master")):
        raise ReconstructorUnavailable(
            f"the checkpoint at {path} builds its encoder through torch.hub, whose code is not cached in {hub} "
            f"(looked for {repo}_main); nothing is downloaded, so copy that cache there first; {WITHOUT_IT}"
        )
    enc["torch_hub_pretrained"] = False  # the checkpoint holds the encoder weights
    return enc


def resample_to_input(
    values: np.ndarray, K_in: np.ndarray, K_proc: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Map a map at the package's resolution back to the input pixels (nearest sample).

    The package only scales and crops, so processed pixel coordinates are an affine function of input ones:
    u' = (fx'/fx) u + (cx' - fx'/fx cx), and likewise for v (pixel centres at +0.5 on both sides).
    values [h, w, ...] -> ([height, width, ...], inside [height, width] bool: input pixels the crop kept).
    """
    h, w = values.shape[:2]
    ax, ay = K_proc[0, 0] / K_in[0, 0], K_proc[1, 1] / K_in[1, 1]
    bx, by = K_proc[0, 2] - ax * K_in[0, 2], K_proc[1, 2] - ay * K_in[1, 2]
    col = np.floor(ax * (np.arange(width) + 0.5) + bx).astype(np.int64)  # [width]
    row = np.floor(ay * (np.arange(height) + 0.5) + by).astype(np.int64)  # [height]
    inside = ((row >= 0) & (row < h))[:, None] & ((col >= 0) & (col < w))[None, :]
    out = values[row.clip(0, h - 1)[:, None], col.clip(0, w - 1)[None, :]]
    return out, inside


def confidence_to_unit(conf: np.ndarray) -> np.ndarray:
    """MapAnything's confidence is 1 + exp(x) >= 1 (DUSt3R style); 1 - 1/conf maps it monotonically to [0, 1)."""
    return np.clip(1.0 - 1.0 / np.maximum(conf, 1.0), 0.0, 1.0).astype(np.float32)


class MapAnythingReconstructor(Reconstructor):
    name = "mapanything"
    needs_depth = False

    def __init__(self, **kw):
        self.config = cfg = MapAnythingConfig(**kw)
        path = resolve_weights(cfg.weights)
        try:
            import torch
            from mapanything.models import MapAnything
            from mapanything.utils.image import preprocess_inputs
        except ImportError as e:
            raise ReconstructorUnavailable(
                f"mapanything backend: the `mapanything` package is not importable ({e}); install it from its "
                f"source release (facebookresearch/map-anything) to use the weights at {path}; {WITHOUT_IT}"
            ) from e
        self._torch = torch
        self._preprocess = preprocess_inputs
        device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(device)
        config = json.loads((path / "config.json").read_text())
        encoder_config = _check_torch_hub_cache(config, path)
        try:
            model = MapAnything.from_pretrained(str(path), local_files_only=True, encoder_config=encoder_config)
        except Exception as e:  # the package raises many kinds; the user needs the path and the cause
            raise ReconstructorUnavailable(f"mapanything: could not load the checkpoint at {path}: {e}") from e
        self.model = model.to(self.device).eval()
        self.weights = path

    def _reconstruct(self, rgb, K, w2c, depth) -> Reconstruction:
        torch, cfg = self._torch, self.config
        Fn, H, W = rgb.shape[:3]
        c2w = invert_se3(w2c).astype(np.float32)  # [F, 4, 4] the package takes OpenCV cam-to-world poses
        views = []
        for i in range(Fn):
            view = {
                "img": rgb[i],  # [H, W, 3] uint8
                "intrinsics": K[i].astype(np.float32),
                "camera_poses": c2w[i],
                "is_metric_scale": torch.tensor([True]),
            }
            if cfg.use_generated_depth and depth is not None:
                view["depth_z"] = np.nan_to_num(depth[i], nan=0.0, posinf=0.0).astype(np.float32)
            views.append(view)
        processed = self._preprocess(views, resize_mode=cfg.resize_mode)
        # the intrinsics of the package's scale+crop, read before inference (which may move or convert them)
        K_procs = [np.asarray(pv["intrinsics"][0], np.float64) for pv in processed]  # [3, 3] each
        with torch.no_grad():
            preds = self.model.infer(
                processed,
                memory_efficient_inference=cfg.memory_efficient,
                use_amp=cfg.use_amp,
                amp_dtype=cfg.amp_dtype,
                apply_mask=True,
                mask_edges=cfg.mask_edges,
            )
        out_d = np.zeros((Fn, H, W), np.float32)
        out_c = np.zeros((Fn, H, W), np.float32)
        out_v = np.zeros((Fn, H, W), bool)
        for i, (K_proc, pred) in enumerate(zip(K_procs, preds)):
            d = pred["depth_z"][0, ..., 0].float().cpu().numpy()  # [h, w]
            c = confidence_to_unit(pred["conf"][0].float().cpu().numpy())
            m = pred["mask"][0, ..., 0].bool().cpu().numpy()
            stacked = np.stack([d, c, m.astype(np.float32)], -1)  # [h, w, 3]
            back, inside = resample_to_input(stacked, K[i], K_proc, H, W)
            valid = inside & (back[..., 2] > 0.5) & np.isfinite(back[..., 0]) & (back[..., 0] > 0)
            out_d[i] = np.where(valid, back[..., 0], 0.0)
            out_c[i] = np.where(valid, back[..., 1], 0.0)
            out_v[i] = valid
        return Reconstruction(depth=out_d, confidence=out_c, valid=out_v)
