"""Match backends for the closed-loop Match Accuracy: how many confident correspondences two frames share.

The supplementary's Match Accuracy matches the first and the last frame of a closed loop densely, keeps the
high-confidence matches and divides their number by the high-confidence count of matching the first frame with
itself. Every backend here answers the two counts that needs, `count(a, b)` and `self_count(a)`:

- `roma`: RoMa dense matching (the paper's matcher). Needs the `romatch` package and two local checkpoints (RoMa
  outdoor and its DINOv2 encoder), named by argument or by SPATIA_ROMA_WEIGHTS / SPATIA_ROMA_DINOV2_WEIGHTS;
  nothing is downloaded. High confidence: a warp-grid cell of the first image whose certainty exceeds
  `threshold`.
- `sift`: OpenCV SIFT, always available. High confidence: a keypoint of the first image whose nearest descriptor
  in the second passes Lowe's ratio test and is an inlier of a RANSAC homography between the two frames. A
  homography rather than a fundamental matrix because the first and last pose of a closed loop coincide: with no
  baseline the epipolar geometry is degenerate, while a consistent last frame maps onto the first by (nearly) the
  identity. The self count is the number of keypoints that match themselves when the first frame is matched
  with itself, so identical frames give exactly 1.

`get_matcher("auto")` takes RoMa where it can run and SIFT otherwise, and says why in `Matcher.note`.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROMA_WEIGHTS_ENV = "SPATIA_ROMA_WEIGHTS"
ROMA_DINOV2_ENV = "SPATIA_ROMA_DINOV2_WEIGHTS"
BACKENDS = ("auto", "sift", "roma")


class MatcherUnavailable(RuntimeError):
    """A match backend that cannot run here (package or local weights missing); the message says what to do."""


def check_image(img: np.ndarray, name: str = "image") -> np.ndarray:
    """An RGB frame as uint8 [H, W, 3]; anything else is refused with its dtype and shape."""
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"{name} must be an RGB image uint8 [H, W, 3], got {img.dtype} {img.shape}")
    return img


class Matcher(ABC):
    """One match backend: high-confidence match counts between two frames and of a frame with itself."""

    name: str = ""
    note: str = ""  # why this backend was chosen (auto) or how it defines high confidence

    @abstractmethod
    def count(self, a: np.ndarray, b: np.ndarray) -> int:
        """High-confidence matches from frame a [H, W, 3] uint8 to frame b."""

    def self_count(self, a: np.ndarray) -> int:
        """High-confidence matches of a frame with itself (the Match Accuracy's denominator)."""
        return self.count(a, a)

    def describe(self) -> dict:
        return {"name": self.name, "note": self.note}


# --------------------------------------------------------------------------------------------- SIFT
@dataclass(frozen=True)
class SiftConfig:
    ratio: float = 0.75  # Lowe's ratio test: best descriptor distance < ratio x second best
    ransac_fraction: float = 0.02  # RANSAC reprojection threshold as a fraction of the image width
    ransac_confidence: float = 0.999
    ransac_iterations: int = 2000
    contrast_threshold: float = 0.04  # OpenCV's default; lower finds more keypoints on flat frames
    seed: int = 0  # OpenCV's RNG seed before RANSAC, so counts are reproducible


@dataclass
class SiftMatches:
    """Matches of the first image's keypoints into the second: what passed each stage."""

    keypoints_a: int
    keypoints_b: int
    query: np.ndarray  # [M] int, keypoint index in a of each ratio-test match
    train: np.ndarray  # [M] int, matched keypoint index in b
    inlier: np.ndarray  # [M] bool, RANSAC homography inlier (the high-confidence matches)

    @property
    def high_confidence(self) -> int:
        return int(self.inlier.sum())


class SiftMatcher(Matcher):
    name = "sift"

    def __init__(self, config: SiftConfig | None = None):
        import cv2

        self.cv2 = cv2
        self.config = config or SiftConfig()
        self.sift = cv2.SIFT_create(contrastThreshold=self.config.contrast_threshold)
        self.note = (f"OpenCV SIFT; high confidence = Lowe ratio test < {self.config.ratio} and inlier of a RANSAC "
                     f"homography (threshold {self.config.ransac_fraction:g} x image width)")

    def _features(self, img: np.ndarray):
        gray = self.cv2.cvtColor(img, self.cv2.COLOR_RGB2GRAY)
        kp, desc = self.sift.detectAndCompute(gray, None)
        pts = np.array([k.pt for k in kp], np.float32).reshape(-1, 2)  # [N, 2] pixel (x, y)
        return pts, desc

    def match(self, a: np.ndarray, b: np.ndarray) -> SiftMatches:
        a, b = check_image(a, "first frame"), check_image(b, "second frame")
        cfg = self.config
        pts_a, desc_a = self._features(a)
        pts_b, desc_b = self._features(b)
        empty = np.zeros(0, np.int64)
        if desc_a is None or desc_b is None or len(pts_b) < 2:
            return SiftMatches(len(pts_a), len(pts_b), empty, empty, np.zeros(0, bool))
        knn = self.cv2.BFMatcher(self.cv2.NORM_L2).knnMatch(desc_a, desc_b, k=2)
        good = [p[0] for p in knn if len(p) == 2 and p[0].distance < cfg.ratio * p[1].distance]
        query = np.array([m.queryIdx for m in good], np.int64)
        train = np.array([m.trainIdx for m in good], np.int64)
        inlier = np.zeros(len(good), bool)
        if len(good) >= 4:  # a homography needs four correspondences
            self.cv2.setRNGSeed(cfg.seed)
            _, mask = self.cv2.findHomography(pts_a[query], pts_b[train], self.cv2.RANSAC,
                                              cfg.ransac_fraction * a.shape[1], maxIters=cfg.ransac_iterations,
                                              confidence=cfg.ransac_confidence)
            if mask is not None:
                inlier = mask.reshape(-1).astype(bool)
        return SiftMatches(len(pts_a), len(pts_b), query, train, inlier)

    def count(self, a: np.ndarray, b: np.ndarray) -> int:
        return self.match(a, b).high_confidence

    def self_count(self, a: np.ndarray) -> int:
        m = self.match(a, a)
        return int((m.inlier & (m.query == m.train)).sum())


# --------------------------------------------------------------------------------------------- RoMa
@dataclass(frozen=True)
class RomaConfig:
    weights: str | None = None  # RoMa outdoor checkpoint (.pth); None reads SPATIA_ROMA_WEIGHTS
    dinov2_weights: str | None = None  # its DINOv2 ViT-L/14 encoder (.pth); None reads SPATIA_ROMA_DINOV2_WEIGHTS
    threshold: float = 0.5  # certainty above which a warp cell counts as a high-confidence match
    device: str = "auto"  # "auto": cuda when available


def _local_file(value: str | None, env: str, what: str) -> Path:
    raw = value if value is not None else os.environ.get(env)
    if not raw:
        raise MatcherUnavailable(f"RoMa needs local {what} weights: pass a path or set {env} (nothing is downloaded)")
    path = Path(raw).expanduser()
    if not path.is_file():
        source = "argument" if value is not None else env
        raise MatcherUnavailable(f"RoMa {what} weights not found at {path} (from {source})")
    return path


class RomaMatcher(Matcher):
    name = "roma"

    def __init__(self, config: RomaConfig | None = None):
        import importlib.util

        import torch

        self.config = cfg = config or RomaConfig()
        weights = _local_file(cfg.weights, ROMA_WEIGHTS_ENV, "RoMa outdoor")
        dinov2 = _local_file(cfg.dinov2_weights, ROMA_DINOV2_ENV, "DINOv2 encoder")
        if importlib.util.find_spec("romatch") is None:
            raise MatcherUnavailable("RoMa needs the `romatch` package (pip install romatch); it is not installed")
        import romatch

        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
        try:
            state = torch.load(weights, map_location=self.device, weights_only=True)
            dino_state = torch.load(dinov2, map_location=self.device, weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch.load raises many kinds for a broken file
            raise MatcherUnavailable(f"cannot read RoMa weights {weights} / {dinov2}: {e}") from e
        self.model = romatch.roma_outdoor(device=self.device, weights=state, dinov2_weights=dino_state)
        self.note = f"RoMa outdoor ({weights.name}); high confidence = warp certainty > {cfg.threshold:g}"

    def count(self, a: np.ndarray, b: np.ndarray) -> int:
        from PIL import Image

        a, b = check_image(a, "first frame"), check_image(b, "second frame")
        _, certainty = self.model.match(Image.fromarray(a), Image.fromarray(b), device=self.device)
        if getattr(self.model, "symmetric", False):  # [H, 2W]: the A->B half is the left one
            certainty = certainty[..., : certainty.shape[-1] // 2]
        return int((certainty > self.config.threshold).sum().item())


# --------------------------------------------------------------------------------------------- factory
def get_matcher(name: str = "auto", roma: RomaConfig | None = None, sift: SiftConfig | None = None) -> Matcher:
    """A backend by name; "auto" is RoMa where its package and local weights are present, SIFT otherwise."""
    if name not in BACKENDS:
        raise ValueError(f"unknown match backend {name!r}; expected one of {BACKENDS}")
    if name == "sift":
        return SiftMatcher(sift)
    if name == "roma":
        return RomaMatcher(roma)
    try:
        return RomaMatcher(roma)
    except MatcherUnavailable as e:
        matcher = SiftMatcher(sift)
        matcher.note = f"{matcher.note} (RoMa not used: {e})"
        return matcher
