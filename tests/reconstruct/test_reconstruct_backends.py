"""Factory errors, the MapAnything backend's offline errors and its output mapping, and the benchmark command."""

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest

from engine.bench import reconstruct as bench
from engine.reconstruct import ReconstructorUnavailable, available_reconstructors, get_reconstructor
from engine.reconstruct.mapanything import WEIGHTS_ENV, confidence_to_unit, resample_to_input


def test_unknown_backend_lists_the_names():
    with pytest.raises(ValueError, match="unknown reconstruction backend 'colmap'.*plane-sweep"):
        get_reconstructor("colmap")
    assert set(available_reconstructors()) == {"model-depth", "plane-sweep", "mapanything"}


def test_unknown_setting_is_an_error():
    with pytest.raises(TypeError, match="num_plane"):
        get_reconstructor("plane-sweep", num_plane=4)


def test_mapanything_without_weights_says_what_works_instead(monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    with pytest.raises(ReconstructorUnavailable, match=f"{WEIGHTS_ENV}.*'plane-sweep'"):
        get_reconstructor("mapanything")


def test_mapanything_names_the_path_it_tried(monkeypatch, tmp_path):
    missing = tmp_path / "no-such-checkpoint"
    monkeypatch.setenv(WEIGHTS_ENV, str(missing))
    with pytest.raises(ReconstructorUnavailable, match=f"tried {missing}.*{WEIGHTS_ENV}.*'model-depth'"):
        get_reconstructor("mapanything")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReconstructorUnavailable, match="no config.json"):
        get_reconstructor("mapanything", weights=str(tmp_path / "empty"))


def test_mapanything_without_the_package(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "mapanything", None)  # how Python marks a package as not importable
    with pytest.raises(ReconstructorUnavailable, match="package is not installed either"):
        get_reconstructor("mapanything", weights=str(tmp_path / "missing"))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ReconstructorUnavailable, match=f"`mapanything` package is not importable.*{tmp_path}"):
        get_reconstructor("mapanything", weights=str(tmp_path))


def test_outputs_map_back_through_a_scale_and_crop():
    # input 40x30 with K; the package scaled by 0.5 then cropped 2 px off the left: u' = 0.5 u - 2
    H, W = 30, 40
    K_in = np.array([[40.0, 0, 20.0], [0, 40.0, 15.0], [0, 0, 1]])
    K_proc = np.array([[20.0, 0, 8.0], [0, 20.0, 7.5], [0, 0, 1]])
    h, w = 15, 16
    proc = np.arange(h * w, dtype=np.float32).reshape(h, w)  # each processed pixel holds its own index
    back, inside = resample_to_input(proc, K_in, K_proc, H, W)
    assert back.shape == (H, W) and inside.shape == (H, W)
    for v, u in [(0, 4), (10, 20), (29, 35)]:
        col, row = int(0.5 * (u + 0.5) - 2), int(0.5 * (v + 0.5))
        assert inside[v, u] and back[v, u] == row * w + col
    assert not inside[:, :4].any()  # cropped away on the left
    assert not inside[:, 36:].any()  # and on the right (16 processed columns cover input 4..35)


def test_confidence_maps_to_unit_interval():
    c = confidence_to_unit(np.array([1.0, 2.0, 11.0, 1e6, 0.5]))
    np.testing.assert_allclose(c, [0.0, 0.5, 1 - 1 / 11, 1 - 1e-6, 0.0], rtol=1e-6)


def _bench_args(**kw):
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    args = p.parse_args([])
    for k, v in dict(frames=3, width=64, height=48, repeat=1, scene="analytic", **kw).items():
        setattr(args, k, v)
    return args


def test_benchmark_reports_each_backend(monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    out = bench.run(_bench_args(depth_noise=0.01))
    b = out["backends"]
    assert b["mapanything"]["available"] is False and WEIGHTS_ENV in b["mapanything"]["reason"]
    assert 0.0 < b["model-depth"]["abs_rel"] < 0.02  # 1 % log-normal noise -> about 0.8 % mean abs rel
    # 64x48 frames 8 cm apart: about one pixel of disparity, so few pixels pass, but those are right
    assert b["plane-sweep"]["abs_rel"] < 0.1 and b["plane-sweep"]["valid_fraction"] > 0.1
    for name in ("model-depth", "plane-sweep"):
        assert b[name]["ms_per_frame"] > 0
    json.dumps(out)  # the CLI prints it as JSON


@pytest.mark.slow
def test_bench_command_line():
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "bench", "reconstruct", "--json", "--frames", "3", "--width", "64",
         "--height", "48", "--repeat", "1", "--backends", "model-depth,mapanything"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["backends"]["model-depth"]["abs_rel"] == 0.0
    assert out["source"].startswith("world(")  # the procedural world rendered the frames


def test_mapanything_encoder_builds_offline_or_says_why(tmp_path):
    import torch

    from engine.reconstruct.mapanything import _check_torch_hub_cache

    enc = {"encoder_str": "dinov2", "uses_torch_hub": True, "size": "giant"}
    before = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        with pytest.raises(ReconstructorUnavailable, match="facebookresearch_dinov2_main.*nothing is downloaded"):
            _check_torch_hub_cache({"encoder_config": enc}, tmp_path)
        (tmp_path / "hub" / "facebookresearch_dinov2_main").mkdir(parents=True)
        out = _check_torch_hub_cache({"encoder_config": enc}, tmp_path)
        assert out["torch_hub_pretrained"] is False and out["size"] == "giant"  # no hub weights fetched
        with pytest.raises(ReconstructorUnavailable, match="'radio'"):
            _check_torch_hub_cache({"encoder_config": {"encoder_str": "radio", "uses_torch_hub": True}}, tmp_path)
    finally:
        torch.hub.set_dir(before)
    plain = {"encoder_str": "pixio", "uses_torch_hub": False}
    assert _check_torch_hub_cache({"encoder_config": plain}, tmp_path) == plain
