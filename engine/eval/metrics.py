"""Image metrics of the evaluation: PSNR (whole frame or under a mask), SSIM, LPIPS when its weights are local,
and the closed-loop Match Accuracy.

Frames are uint8 RGB, [H, W, 3] or a batch [F, H, W, 3]; every metric returns one value per frame (a float for a
single frame) so the suite can average per frame, as video papers do. PSNR and SSIM follow their usual
definitions on the 0..255 range (SSIM: Wang et al. 2004, 11x11 Gaussian window of sigma 1.5, K1 0.01, K2 0.03,
averaged over the window positions that fit inside the image and over the channels). LPIPS runs the `lpips`
package only from local files: the package's own linear heads plus backbone weights at a given path (or in the
torch-hub cache); when either is missing it is reported as unavailable with the reason, never downloaded.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from engine.eval.matching import Matcher

LPIPS_WEIGHTS_ENV = "SPATIA_LPIPS_WEIGHTS"
# torchvision's file names of the backbones LPIPS builds on (what a torch-hub cache holds if they were ever fetched)
LPIPS_BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}


class MetricUnavailable(RuntimeError):
    """A metric that cannot be computed here (package or local weights missing); the message says why."""


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Two uint8 frames or batches of the same shape -> [F, H, W, 3] each, and whether a single frame came in."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"frames to compare must have the same shape, got {a.shape} and {b.shape}")
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 RGB, got {a.dtype} and {b.dtype}")
    if a.ndim not in (3, 4) or a.shape[-1] != 3:
        raise ValueError(f"frames must be [H, W, 3] or [F, H, W, 3], got shape {a.shape}")
    single = a.ndim == 3
    return (a[None], b[None], True) if single else (a, b, False)


def _out(values: np.ndarray, single: bool):
    return float(values[0]) if single else values


# --------------------------------------------------------------------------------------------- PSNR
def psnr_from_mse(mse: np.ndarray | float, data_range: float = 255.0) -> np.ndarray | float:
    """10 log10(range^2 / mse); inf where the frames are identical."""
    mse = np.asarray(mse, np.float64)
    with np.errstate(divide="ignore"):
        out = np.where(mse > 0, 10.0 * np.log10(data_range**2 / np.maximum(mse, 1e-300)), np.inf)
    return float(out) if out.ndim == 0 else out


def psnr(a: np.ndarray, b: np.ndarray):
    """Per-frame PSNR (dB) of uint8 RGB frames: a float for one frame, [F] for a batch."""
    a, b, single = _pair(a, b)
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))  # [F]
    return _out(psnr_from_mse(mse), single)


def masked_psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """PSNR over the pixels where mask [F, H, W] (or [H, W]) is True, pooled over all frames (a region can be a
    handful of pixels in one frame, so per-frame values would be noise). NaN when the mask is empty."""
    a, b, single = _pair(a, b)
    mask = np.asarray(mask, bool)
    if single and mask.ndim == 2:
        mask = mask[None]
    if mask.shape != a.shape[:3]:
        raise ValueError(f"mask of shape {mask.shape} does not match frames {a.shape[:3]}")
    if not mask.any():
        return math.nan
    diff = a[mask].astype(np.float64) - b[mask].astype(np.float64)  # [P, 3]
    return psnr_from_mse(float((diff**2).mean()))


# --------------------------------------------------------------------------------------------- SSIM
@dataclass(frozen=True)
class SsimConfig:
    sigma: float = 1.5  # Gaussian window (Wang et al. 2004)
    radius: int = 5  # window half-width: an 11x11 window
    k1: float = 0.01
    k2: float = 0.03
    data_range: float = 255.0


def ssim(a: np.ndarray, b: np.ndarray, config: SsimConfig | None = None):
    """Per-frame SSIM of uint8 RGB frames (mean over valid window positions and channels)."""
    cfg = config or SsimConfig()
    a, b, single = _pair(a, b)
    r = cfg.radius
    if min(a.shape[1:3]) < 2 * r + 1:
        raise ValueError(f"SSIM needs frames of at least {2 * r + 1}x{2 * r + 1} pixels, got {a.shape[1:3]}")
    x, y = a.astype(np.float64), b.astype(np.float64)  # [F, H, W, 3]
    sigma = (0.0, cfg.sigma, cfg.sigma, 0.0)  # blur rows and columns only

    def blur(v):
        # truncate so the window is exactly 2r+1 wide; the border crop below keeps only windows inside the image
        return gaussian_filter(v, sigma, truncate=r / cfg.sigma, mode="constant")[:, r:-r, r:-r]

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    c1, c2 = (cfg.k1 * cfg.data_range) ** 2, (cfg.k2 * cfg.data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))  # [F, h, w, 3]
    return _out(s.mean(axis=(1, 2, 3)), single)


# --------------------------------------------------------------------------------------------- LPIPS
class Lpips:
    """LPIPS from local files only. `load_lpips` builds it or raises MetricUnavailable with the reason."""

    def __init__(self, model, net: str, source: str):
        self.model, self.net, self.source = model, net, source

    def __call__(self, a: np.ndarray, b: np.ndarray):
        import torch

        a, b, single = _pair(a, b)

        def tensor(v):  # [F, 3, H, W] in [-1, 1], as LPIPS expects
            return torch.from_numpy(v).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)

        with torch.no_grad():
            d = self.model(tensor(a), tensor(b)).reshape(len(a)).double().numpy()  # [F]
        return _out(d, single)

    def describe(self) -> dict:
        return {"available": True, "net": self.net, "weights": self.source}


def lpips_backbone_path(weights: str | None, net: str) -> Path:
    """Where the backbone weights are: the argument, SPATIA_LPIPS_WEIGHTS, or the torch-hub cache."""
    raw = weights if weights is not None else os.environ.get(LPIPS_WEIGHTS_ENV)
    if raw:
        path = Path(raw).expanduser()
        if not path.is_file():
            source = "argument" if weights is not None else LPIPS_WEIGHTS_ENV
            raise MetricUnavailable(f"LPIPS backbone weights not found at {path} (from {source})")
        return path
    import torch

    cached = Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONE_FILES[net]
    if not cached.is_file():
        raise MetricUnavailable(
            f"no local {net} backbone weights for LPIPS: pass --lpips-weights or set {LPIPS_WEIGHTS_ENV} to "
            f"torchvision's {LPIPS_BACKBONE_FILES[net]} (not in the torch-hub cache either; nothing is downloaded)"
        )
    return cached


def load_lpips(weights: str | None = None, net: str = "alex") -> Lpips:
    """The LPIPS metric built offline: the package's linear heads, backbone weights from a local file."""
    import importlib.util

    if net not in LPIPS_BACKBONE_FILES:
        raise ValueError(f"LPIPS backbone must be one of {sorted(LPIPS_BACKBONE_FILES)}, got {net!r}")
    if importlib.util.find_spec("lpips") is None:
        raise MetricUnavailable("the `lpips` package is not installed (it needs torchvision, which this project "
                                "does not install)")
    path = lpips_backbone_path(weights, net)
    import lpips
    import torch

    # pnet_rand: build the backbone without torchvision's download; its weights come from the local file instead
    model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False).eval()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises many kinds for a broken file
        raise MetricUnavailable(f"cannot read LPIPS backbone weights {path}: {e}") from e
    # lpips slices torchvision's `features` into stages whose children keep their index in `features`
    features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    for stage in (m for n, m in model.net.named_children() if n.startswith("slice")):
        for idx, layer in stage.named_children():
            for pname, param in layer.named_parameters(recurse=False):
                key = f"{idx}.{pname}"
                if key not in features:
                    raise MetricUnavailable(f"{path} is not torchvision {net} weights: it lacks features.{key}")
                param.data.copy_(features[key])
    return Lpips(model, net, str(path))


# --------------------------------------------------------------------------------------------- Match Accuracy
@dataclass
class MatchAccuracy:
    """Closed-loop Match Accuracy: high-confidence matches first->last over first->first (NaN with a reason when
    the first frame has no self-matches to count against)."""

    value: float
    matches: int  # high-confidence matches between the first and the last frame
    self_matches: int  # high-confidence matches of the first frame with itself
    backend: str
    reason: str = ""

    def to_dict(self) -> dict:
        return {"value": self.value, "matches": self.matches, "self_matches": self.self_matches,
                "backend": self.backend, "reason": self.reason}


def match_accuracy(first: np.ndarray, last: np.ndarray, matcher: Matcher) -> MatchAccuracy:
    """Supplementary definition: matches(first, last) / matches(first, first), high-confidence ones only."""
    own = matcher.self_count(first)
    if own == 0:
        return MatchAccuracy(math.nan, 0, 0, matcher.name,
                             f"the first frame {tuple(np.shape(first)[:2])} has no high-confidence {matcher.name} "
                             "self-matches (too small or untextured)")
    n = matcher.count(first, last)
    return MatchAccuracy(n / own, n, own, matcher.name)
