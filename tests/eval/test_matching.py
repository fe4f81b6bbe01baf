"""Match backends: SIFT's high-confidence matches (ratio test + RANSAC homography) on constructed image pairs and the
world's own frames, RoMa's local-only loading, and the auto choice."""

import importlib.util

import numpy as np
import pytest

from engine.eval.matching import (
    ROMA_DINOV2_ENV,
    ROMA_WEIGHTS_ENV,
    MatcherUnavailable,
    RomaConfig,
    SiftConfig,
    SiftMatcher,
    get_matcher,
)
from tests.eval.test_metrics import texture


@pytest.fixture(scope="module")
def sift():
    return SiftMatcher()


def test_sift_self_matches_are_every_keypoint_that_finds_itself(sift):
    a = texture(96, 1)
    m = sift.match(a, a)
    assert m.keypoints_a == m.keypoints_b > 20
    assert sift.self_count(a) == sift.count(a, a) == m.high_confidence
    assert np.array_equal(m.query[m.inlier], m.train[m.inlier])  # identical frames: each keypoint matches itself
    assert sift.count(a, a) == sift.count(a, a)  # RANSAC is seeded: counts are reproducible


def test_sift_inliers_follow_the_true_motion(sift):
    a = texture(96, 2)
    b = np.roll(a, (5, -7), axis=(0, 1))  # content moves 7 px left and 5 px down
    m = sift.match(a, b)
    assert 0 < m.high_confidence <= sift.self_count(a)
    pa, _ = sift._features(a)
    pb, _ = sift._features(b)
    motion = pb[m.train[m.inlier]] - pa[m.query[m.inlier]]  # [I, 2] (x, y)
    np.testing.assert_allclose(np.median(motion, 0), [-7, 5], atol=0.5)


def test_sift_finds_few_matches_between_unrelated_frames_and_none_on_flat_ones(sift):
    a = texture(96, 3)
    assert sift.count(a, texture(96, 4)) < 0.2 * sift.self_count(a)
    flat = np.full((64, 64, 3), 77, np.uint8)
    assert sift.self_count(flat) == 0 and sift.count(flat, a) == 0


def test_sift_on_a_world_frame_and_a_slightly_turned_view(sift):
    """The procedural world's frames at the model's resolution are textured enough for SIFT."""
    from engine.world import WorldRenderer, generate_scene, make_path

    scene = generate_scene(10001)
    path = make_path("loop", scene, 17, seed=10001, fps=16.0)
    renderer = WorldRenderer(128, 128)
    try:
        K = path.K(128, 128)
        out = renderer.render_batch(scene, path.w2c[:2], K)
    finally:
        renderer.release()
    own = sift.self_count(out.rgb[0])
    assert own >= 10
    assert 0 < sift.count(out.rgb[0], out.rgb[1]) <= own


def test_sift_rejects_bad_frames(sift):
    with pytest.raises(ValueError, match="first frame must be an RGB image uint8"):
        sift.count(np.zeros((32, 32), np.uint8), np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="second frame"):
        sift.count(np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32, 3), np.float32))


def test_stricter_ratio_keeps_fewer_matches():
    a = texture(96, 5)
    b = np.clip(a + np.random.default_rng(0).normal(0, 8, a.shape), 0, 255).astype(np.uint8)
    loose, strict = SiftMatcher(SiftConfig(ratio=0.9)), SiftMatcher(SiftConfig(ratio=0.5))
    assert strict.count(a, b) < loose.count(a, b)


def test_roma_needs_local_weights_and_the_package(tmp_path, monkeypatch):
    monkeypatch.delenv(ROMA_WEIGHTS_ENV, raising=False)
    monkeypatch.delenv(ROMA_DINOV2_ENV, raising=False)
    with pytest.raises(MatcherUnavailable, match=ROMA_WEIGHTS_ENV):
        get_matcher("roma")
    with pytest.raises(MatcherUnavailable, match="not found at .*nope.pth"):
        get_matcher("roma", RomaConfig(weights=str(tmp_path / "nope.pth")))
    roma = tmp_path / "roma_outdoor.pth"
    roma.write_bytes(b"")
    with pytest.raises(MatcherUnavailable, match=ROMA_DINOV2_ENV):
        get_matcher("roma", RomaConfig(weights=str(roma)))
    if importlib.util.find_spec("romatch") is None:
        dino = tmp_path / "dinov2.pth"
        dino.write_bytes(b"")
        with pytest.raises(MatcherUnavailable, match="romatch"):
            get_matcher("roma", RomaConfig(weights=str(roma), dinov2_weights=str(dino)))


def test_auto_falls_back_to_sift_and_says_why(monkeypatch):
    monkeypatch.delenv(ROMA_WEIGHTS_ENV, raising=False)
    m = get_matcher("auto")
    assert m.name == "sift"
    assert "RoMa not used" in m.note and ROMA_WEIGHTS_ENV in m.note
    assert m.describe() == {"name": "sift", "note": m.note}
    with pytest.raises(ValueError, match="unknown match backend"):
        get_matcher("orb")
