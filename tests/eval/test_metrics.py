"""Evaluation metrics on constructed cases: PSNR (whole and masked), SSIM against a direct reference, LPIPS's
local-only loading, and Match Accuracy's definition."""

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from engine.eval.matching import SiftMatcher
from engine.eval.metrics import (
    LPIPS_WEIGHTS_ENV,
    MetricUnavailable,
    SsimConfig,
    load_lpips,
    lpips_backbone_path,
    masked_psnr,
    match_accuracy,
    psnr,
    psnr_from_mse,
    ssim,
)


def texture(size=96, seed=0) -> np.ndarray:
    """A textured RGB image (blurred noise at two scales): plenty of SIFT keypoints, like the world's frames."""
    rng = np.random.default_rng(seed)
    coarse = gaussian_filter(rng.normal(size=(size, size, 3)), (4, 4, 0))
    fine = gaussian_filter(rng.normal(size=(size, size, 3)), (1, 1, 0))
    img = 0.7 * coarse / coarse.std() + 0.3 * fine / fine.std()
    return np.clip(128 + 40 * img, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------- PSNR
def test_psnr_identical_is_infinite_and_known_errors_give_known_values():
    a = texture(32)
    assert psnr(a, a) == math.inf
    assert np.all(psnr(np.stack([a, a]), np.stack([a, a])) == math.inf)
    zero = np.zeros((8, 8, 3), np.uint8)
    ten = np.full((8, 8, 3), 10, np.uint8)
    assert psnr(zero, ten) == pytest.approx(10 * math.log10(255**2 / 100))
    # per frame: the second frame's error is twice the first's
    batch = psnr(np.stack([zero, zero]), np.stack([ten, np.full_like(ten, 20)]))
    assert batch.shape == (2,)
    assert batch[0] - batch[1] == pytest.approx(20 * math.log10(2))


def test_psnr_of_noise_matches_its_variance():
    a = np.full((64, 64, 3), 128, np.uint8)
    rng = np.random.default_rng(1)
    for sigma in (2.0, 8.0):
        b = np.clip(a + rng.normal(0, sigma, a.shape).round(), 0, 255).astype(np.uint8)
        mse = ((b.astype(float) - a) ** 2).mean()
        assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / mse))
        assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / sigma**2), abs=0.3)
    assert psnr_from_mse(0.0) == math.inf


def test_masked_psnr_separates_covered_and_uncovered_pixels():
    a = np.stack([texture(16, 0), texture(16, 1)])  # [2, 16, 16, 3]
    b = a.copy()
    mask = np.zeros((2, 16, 16), bool)
    mask[:, :, :8] = True  # "covered": left half
    b[:, :, 8:] = np.clip(b[:, :, 8:].astype(int) + 10, 0, 255)  # errors only on the right
    assert masked_psnr(b, a, mask) == math.inf
    diff = (b[:, :, 8:].astype(float) - a[:, :, 8:]) ** 2
    assert masked_psnr(b, a, ~mask) == pytest.approx(10 * math.log10(255**2 / diff.mean()))
    assert math.isnan(masked_psnr(b, a, np.zeros_like(mask)))
    assert masked_psnr(b[0], a[0], ~mask[0]) < 40  # one frame with an [H, W] mask
    with pytest.raises(ValueError, match="mask of shape"):
        masked_psnr(b, a, mask[:, :8])


def test_bad_frames_are_refused_with_their_shapes():
    a = texture(16)
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, a[:8])
    with pytest.raises(ValueError, match="uint8"):
        psnr(a.astype(np.float32), a.astype(np.float32))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        ssim(a[..., 0], a[..., 0])


# --------------------------------------------------------------------------------------------- SSIM
def ssim_reference(a: np.ndarray, b: np.ndarray, cfg=SsimConfig()) -> float:
    """SSIM written out window by window: Gaussian-weighted statistics of every 11x11 window inside the image."""
    r = cfg.radius
    g = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * cfg.sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (cfg.k1 * 255) ** 2, (cfg.k2 * 255) ** 2
    vals = []
    for ch in range(3):
        x, y = a[..., ch].astype(float), b[..., ch].astype(float)
        for i in range(r, x.shape[0] - r):
            for j in range(r, x.shape[1] - r):
                px, py = x[i - r : i + r + 1, j - r : j + r + 1], y[i - r : i + r + 1, j - r : j + r + 1]
                mx, my = (w * px).sum(), (w * py).sum()
                vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
                cxy = (w * (px - mx) * (py - my)).sum()
                vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_matches_a_window_by_window_reference():
    a = texture(16, 3)
    rng = np.random.default_rng(4)
    b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255).astype(np.uint8)
    assert ssim(a, b) == pytest.approx(ssim_reference(a, b), abs=1e-9)
    c = np.roll(a, 2, axis=1)
    assert ssim(a, c) == pytest.approx(ssim_reference(a, c), abs=1e-9)


def test_ssim_is_one_for_identical_frames_and_falls_with_noise_and_shift():
    a = texture(48, 5)
    assert ssim(a, a) == 1.0
    rng = np.random.default_rng(6)
    noisy = [ssim(a, np.clip(a + rng.normal(0, s, a.shape), 0, 255).astype(np.uint8)) for s in (3, 10, 30)]
    assert 1.0 > noisy[0] > noisy[1] > noisy[2] > 0
    shifted = [ssim(a, np.roll(a, s, axis=1)) for s in (1, 4)]
    assert 1.0 > shifted[0] > shifted[1]
    batch = ssim(np.stack([a, a]), np.stack([a, np.roll(a, 4, axis=1)]))
    assert batch.shape == (2,) and batch[0] == 1.0 and batch[1] == pytest.approx(shifted[1])
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(a[:8, :8], a[:8, :8])


# --------------------------------------------------------------------------------------------- LPIPS
def test_lpips_never_downloads_and_says_why_it_is_unavailable(tmp_path, monkeypatch):
    monkeypatch.delenv(LPIPS_WEIGHTS_ENV, raising=False)
    with pytest.raises(MetricUnavailable, match="not found at .*missing.pth"):
        lpips_backbone_path(str(tmp_path / "missing.pth"), "alex")
    monkeypatch.setenv(LPIPS_WEIGHTS_ENV, str(tmp_path / "env.pth"))
    with pytest.raises(MetricUnavailable, match=LPIPS_WEIGHTS_ENV):
        lpips_backbone_path(None, "alex")
    with pytest.raises(ValueError, match="backbone"):
        load_lpips(net="resnet")
    import importlib.util

    if importlib.util.find_spec("lpips") is None:
        with pytest.raises(MetricUnavailable, match="lpips` package is not installed"):
            load_lpips()


# --------------------------------------------------------------------------------------------- Match Accuracy
def test_match_accuracy_definition():
    sift = SiftMatcher()
    a = texture(96, 7)
    same = match_accuracy(a, a, sift)
    assert same.value == 1.0 and same.matches == same.self_matches > 20 and not same.reason
    # a small camera shift: most of the view is still there, the strip that left the frame is lost
    shifted = np.roll(a, 8, axis=1)
    part = match_accuracy(a, shifted, sift)
    assert 0.5 < part.value < 1.0
    # a different view altogether: hardly anything matches
    other = match_accuracy(a, texture(96, 8), sift)
    assert other.value < 0.2
    # noise lowers it, but less than changing the content
    rng = np.random.default_rng(9)
    noisy = np.clip(a + rng.normal(0, 6, a.shape), 0, 255).astype(np.uint8)
    assert other.value < match_accuracy(a, noisy, sift).value < 1.0
    # a flat first frame has nothing to match: undefined, with the reason
    flat = match_accuracy(np.full_like(a, 90), a, sift)
    assert math.isnan(flat.value) and "no high-confidence sift self-matches" in flat.reason
    assert flat.to_dict()["backend"] == "sift"
