"""The evaluation suite end to end on a tiny random model (mechanics, not quality), the variant plan, scoring on
constructed loops, the quality-bar checklist and `spatia eval`."""

import importlib.util
import json
import math

import numpy as np
import pytest

from engine.eval.matching import SiftMatcher
from engine.eval.report import jsonable, quality_checks, write_report
from engine.eval.suite import EvalConfig, plan_variants, run_suite, score_run
from engine.pipeline import WorldModel
from tests.conftest import tiny_test_config
from tests.eval.test_metrics import texture

TINY = dict(scenes=1, chunks=1, clips=(1, 2), ks=(1, 2, 5), voxels=(0.02, 0.05), strip_scenes=1, strip_frames=4)


@pytest.fixture(scope="module")
def model():
    return WorldModel.random(tiny_test_config())


def test_plan_shares_variants_between_tables_and_caps_k():
    cfg = EvalConfig()  # the paper's settings: K 1/3/5/7, clips 2/4/6, four voxel sizes
    plan = plan_variants(cfg, num_refs=3, default_voxel=0.02)
    full = plan.full.key
    assert [r[0]["K"] for r in plan.tables["table5"]] == [1, 3]  # 5 and 7 capped at the model's 3
    assert plan.tables["main"][0][1] == full
    assert plan.tables["table4"][-1] == ({"scene_video": True, "references": True}, full)
    assert plan.tables["table5"][-1][1] == full
    assert ({"clips": 4, "memory": True}, full) in plan.tables["table6"]
    assert ({"voxel": 0.02}, full) in plan.tables["table7"]
    # refs off means no K: the no-memory row of Table 6 at 4 clips is Table 4's (no, no) row
    no_mem = plan.tables["table4"][0][1]
    assert plan.variants[no_mem].k == 0 and ({"clips": 4, "memory": False}, no_mem) in plan.tables["table6"]
    # 1 full + 3 ablations + K=1 + 4 other loop lengths (2 and 6, with and without memory) + 3 other voxels
    assert len(plan.variants) == 12


def test_config_refuses_training_seeds_and_open_paths():
    with pytest.raises(ValueError, match="overlaps the training scenes"):
        EvalConfig(seed0=10)
    with pytest.raises(ValueError, match="closed kind"):
        EvalConfig(path="walk")
    with pytest.raises(ValueError, match="at least one scene"):
        EvalConfig(scenes=0)
    quick = EvalConfig.quick(scenes=1)
    assert quick.scenes == 1 and quick.chunks == 2 and quick.clips == (2, 4)


def test_score_run_on_a_perfect_and_a_drifting_loop():
    truth = np.stack([texture(64, s) for s in range(5)])  # [5, 64, 64, 3]
    truth[-1] = truth[0]  # a closed loop: the last pose is the first
    coverage = np.zeros((4, 64, 64), bool)
    coverage[:, :32] = True
    sift = SiftMatcher()
    perfect = score_run(truth, truth[1:].copy(), coverage, sift, None)
    assert perfect["psnr"] == perfect["psnr_c"] == perfect["psnr_covered"] == math.inf
    assert perfect["ssim"] == perfect["ssim_c"] == 1.0
    assert perfect["match_acc"] == 1.0 and perfect["coverage"] == 0.5
    assert math.isnan(perfect["lpips"]) and math.isnan(perfect["lpips_c"])
    drift = truth[1:].copy()
    drift[-1] = np.roll(truth[0], 6, axis=1)  # the loop ends a few pixels off
    drift[:-1, :, 32:] = 0  # and the uncovered half of the frames on the way is wrong
    scores = score_run(truth, drift, coverage, sift, None)
    assert scores["psnr_covered"] > scores["psnr_uncovered"]
    assert 0 < scores["match_acc"] < 1 and scores["ssim_c"] < 1 and np.isfinite(scores["psnr_c"])
    assert jsonable(perfect)["psnr"] == "inf" and jsonable({"x": math.nan}) == {"x": None}


def _results(table4, table5, table6, main=None):
    full = main or table4[-1]
    return {"tables": {"main": [full], "table4": table4, "table5": table5, "table6": table6},
            "model": {"num_refs": 3}, "backends": {"match": {"name": "sift"}}}


def _row(**kw):
    base = dict(psnr_c=20.0, ssim_c=0.6, lpips_c=math.nan, match_acc=0.8, psnr_covered=25.0, coverage=0.5)
    return {**base, **kw}


def test_quality_checks_pass_fail_and_not_measurable():
    t4 = [_row(scene_video=sv, references=r, psnr_c=15.0 + 2 * sv + r, ssim_c=0.4 + 0.05 * (sv + r),
               match_acc=0.55 + 0.1 * (sv + r))
          for sv in (False, True) for r in (False, True)]
    t5 = [_row(K=1, match_acc=0.6), _row(K=3, match_acc=0.7)]
    t6 = [_row(clips=2, memory=True, psnr_c=19.0), _row(clips=6, memory=True, psnr_c=18.0),
          _row(clips=2, memory=False, psnr_c=13.0), _row(clips=6, memory=False, psnr_c=10.0)]
    checks = {c["name"].split(" (")[0]: c for c in quality_checks(_results(t4, t5, t6))}
    assert len(checks) == 5 and all(c["passed"] is True for c in checks.values())
    assert "0.600" in checks["Match Accuracy rises with K"]["measured"]

    t4[0]["psnr_c"] = 30.0  # an ablation beats the full model
    t5 = [_row(K=1, match_acc=0.7), _row(K=3, match_acc=0.6)]
    t6[1]["psnr_c"] = 17.0  # a 2 dB drop
    full = _row(scene_video=True, references=True, psnr_c=18.0, match_acc=0.5, psnr_covered=20.0)
    failed = quality_checks(_results(t4[:3] + [full], t5, t6, main=full))
    assert [c["passed"] for c in failed] == [False, False, False, False, False]

    undefined = _row(scene_video=True, references=True, psnr_c=math.nan, ssim_c=math.nan, match_acc=math.nan,
                     psnr_covered=math.nan)
    one_k = quality_checks(_results([undefined] * 4, [_row(K=1)], t6[:1], main=undefined))
    assert [c["passed"] for c in one_k] == [None] * 5
    assert "one K only" in one_k[1]["measured"]


def test_suite_end_to_end_on_a_tiny_random_model(model, tmp_path):
    suite = run_suite(model, EvalConfig(**TINY), progress=False)
    paths = write_report(suite, tmp_path / "out")
    for name in ("results.json", "report.md", "samples.png", "metric_vs_k.png", "metric_vs_clips.png",
                 "metric_vs_voxel.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0, name
    res = json.loads(paths["results"].read_text())
    assert {"model", "config", "backends", "scenes", "runs", "tables", "checks", "timing", "full"} <= set(res)
    assert [s["seed"] for s in res["scenes"]] == [10000] and res["scenes"][0]["frames"] == {"1": 9, "2": 17}
    t = res["tables"]
    assert len(t["table4"]) == 4 and [r["K"] for r in t["table5"]] == [1, 2]  # K=5 capped at the model's 2
    assert [(r["clips"], r["memory"]) for r in t["table6"]] == [(1, True), (1, False), (2, True), (2, False)]
    assert [r["voxel"] for r in t["table7"]] == [0.02, 0.05]
    full = t["main"][0]
    assert 0 < full["psnr"] < 60 and -1 <= full["ssim"] <= 1 and 0 <= full["coverage"] <= 1
    assert full["psnr_c"] is not None and full["ssim_c"] is not None
    # Match Accuracy at 32x32 is either a value or undefined with the reason said
    for run in res["runs"].values():
        for s in run["per_scene"]:
            assert s["match"]["backend"] == "sift"
            assert (s["match_acc"] is None) == bool(s["match"]["reason"])
    assert res["backends"]["match"]["name"] == "sift"
    if importlib.util.find_spec("lpips") is None:
        assert res["backends"]["lpips"]["available"] is False and "lpips" in res["backends"]["lpips"]["reason"]
        assert full["lpips"] is None
    assert len(res["checks"]) == 5 and all(c["passed"] in (True, False, None) for c in res["checks"])
    # each run generated its whole loop
    assert res["runs"][res["full"]]["per_scene"][0]["chunks"] == 1
    assert sum(r["variant"]["clips"] for r in res["runs"].values()) * model.cfg.chunk_frames == sum(
        r["per_scene"][0]["chunks"] * model.cfg.chunk_frames for r in res["runs"].values())
    report = paths["report"].read_text()
    for heading in ("## Quality bars", "## Table 4", "## Table 5", "## Table 6", "## Table 7", "sift", "LPIPS: "):
        assert heading in report
    assert report.count("| PASS |") + report.count("| FAIL |") + report.count("| N/A |") == 5
    assert len(suite.samples) == 1 and suite.samples[0].truth.shape[1:] == (32, 32, 3)
    assert suite.samples[0].frame_index[0] == 0 and suite.samples[0].frame_index[-1] == 8


def test_spatia_eval_command(tiny_checkpoint, tmp_path, capsys):
    from engine.cli import main

    out = tmp_path / "cli"
    args = ["eval", "--model", str(tiny_checkpoint), "--scenes", "1", "--chunks", "1", "--clips", "1", "--ks", "1",
            "--voxels", "0.02", "--seed0", "10003", "--matcher", "sift", "--threads", "1", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "report:" in printed and printed.count("] ") >= 5
    res = json.loads((out / "results.json").read_text())
    assert res["model"]["name"] == tiny_checkpoint.name and res["scenes"][0]["seed"] >= 10003
    assert main(["eval", "--model", str(tiny_checkpoint), "--seed0", "5", "--out", str(out)]) == 2
    assert "training scenes" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path / "no-model"), "--out", str(out)]) == 2
    assert "no model checkpoint" in capsys.readouterr().err
