"""`spatia bench e2e` at CI size: a real server child, the explorer's client code, a few seconds of the walk."""

import argparse
import json
import os
import shutil

import pytest
import torch

from engine.bench import e2e


def _args(tmp_path, checkpoint, **over):
    parser = argparse.ArgumentParser()
    e2e.add_arguments(parser)
    args = vars(parser.parse_args([]))  # the command's defaults, so a new option cannot be missing here
    args.update(model=str(checkpoint), backends="eager,tensorrt", clients="1", seconds=3.0, warmup_s=0.5,
                warmup_clips=1, budget_s=60.0, start_timeout_s=90.0, threads=1, server_wait_policy="passive",
                out=tmp_path / "out")
    args.update(over)
    return argparse.Namespace(**args)


def test_short_run_times_every_stage_and_the_stages_add_up(tiny_checkpoint, tmp_path):
    result = e2e.run(_args(tmp_path, tiny_checkpoint))
    runs = {r["backend"]: r for r in result["runs"]}
    trt = runs["tensorrt"]
    if trt["status"] == "skipped":  # a CPU machine: skipped, and the reason says why
        assert "tensorrt" in trt["reason"] and "GPU" in trt["reason"]
    r = runs["eager"]
    assert r["status"] == "ok", r
    assert not r["errors"]

    # motion-to-frame latency: measured on several input events, ordered percentiles
    lat = r["motion_to_frame_ms"]
    assert lat["n"] >= 2 and 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    parts = r["first_frame_breakdown_ms"]
    assert set(parts) == set(e2e.TIMELINE_PARTS)
    mins = r["first_frame_parts_min_ms"]
    # one wall clock on one machine: a chunk starts after it was sent, a frame arrives after it left the server,
    # and the pipeline's timed stages fit inside the frame's own since_start
    assert mins["queue"] > -2.0 and mins["transfer"] > -2.0 and mins["server_other"] > -2.0
    assert mins["input_to_send"] >= 0.0

    # every stage is timed: pipeline stages, each sampler step, delta serialisation, autosave, transfer
    stages = r["stages_ms"]
    steps = [k for k in stages if k.startswith("step_")]
    assert steps == [f"step_{i}" for i in range(len(steps))] and len(steps) >= 1
    for name in ("retrieval", "render", "encode", "between_steps", "decode", "reconstruct", "segment", "update",
                 "unaccounted", "serialize_delta", "autosave", "transfer"):
        assert name in stages, name
    assert all(stages[k] >= 0 for k in stages if k not in ("unaccounted", "between_steps"))
    assert r["autosaved_clips"] >= 1  # the queue runs dry whenever the walk stops
    # the stages add up to the pipeline's total on every clip (tolerance: untimed bookkeeping, see e2e)
    assert r["clips"] >= 3 and r["stage_sum"]["ok"] == r["stage_sum"]["clips"] == r["clips"]
    total = sum(v for k, v in stages.items() if k not in e2e.SERVER_STAGES + ("transfer",))
    assert total == pytest.approx(r["pipeline_total_ms"], rel=0.25)  # medians of parts vs median of totals

    # sustained rate and real-time factor against the playback rate
    assert r["generated_fps_per_client"] > 0 and r["playback_fps"] > 0
    assert r["real_time_factor"] == pytest.approx(r["generated_fps_per_client"] / r["playback_fps"])
    assert r["frames"] >= r["clips"]
    assert 0 < r["server_cpu_cores"] <= (os.cpu_count() or 1) + 0.5

    # the JSON on disk and the plots
    on_disk = json.loads((tmp_path / "out" / "e2e.json").read_text())
    assert on_disk["runs"][0]["stages_ms"] == pytest.approx(stages)
    assert "_samples" not in on_disk["runs"][0]
    for path in result["plots"]:
        assert (tmp_path / "out").joinpath(path.split("/")[-1]).stat().st_size > 5000
    assert result["headline"]["first_frame_p50_ms"] == lat["p50"]


def test_stage_breakdown_and_its_checks():
    t = {"retrieval": 5.0, "render": 10.0, "encode": 20.0, "step_0": 7.0, "step_1": 8.0, "step_10": 1.0,
         "sample": 17.0, "decode": 30.0, "reconstruct": 1.0, "segment": 2.0, "update": 3.0, "total": 89.0}
    s = e2e.stage_breakdown(t)
    assert list(s)[3:6] == ["step_0", "step_1", "step_10"]  # numeric order
    assert s["between_steps"] == pytest.approx(1.0) and s["unaccounted"] == pytest.approx(1.0)
    assert sum(s.values()) == pytest.approx(t["total"])  # by construction the parts add up to the total
    assert e2e.check_stage_sum(t)[0]
    assert not e2e.check_stage_sum({**t, "total": 200.0})[0]  # 111 ms nobody timed
    with pytest.raises(KeyError, match="decode"):
        e2e.stage_breakdown({k: v for k, v in t.items() if k != "decode"})
    with pytest.raises(KeyError, match="sampler steps"):
        e2e.stage_breakdown({k: v for k, v in t.items() if not k.startswith("step_")})


def test_latency_breakdown_parts_add_up_to_the_latency():
    s = e2e.LatencySample(seq=3, t_input=100.0, t_sent=100.05, t_received=100.4, since_start_ms=200.0, decode_ms=30.0,
                          sent_unix_ms=100_390.0, first_frame=17,
                          clip_timings={"retrieval": 10.0, "render": 20.0, "encode": 40.0, "sample": 90.0})
    b = s.breakdown()
    assert b["input_to_send"] == pytest.approx(50.0) and b["queue"] == pytest.approx(140.0)
    assert b["transfer"] == pytest.approx(10.0) and b["server_other"] == pytest.approx(10.0)
    assert sum(b.values()) == pytest.approx(s.latency_ms)
    assert e2e.LatencySample(1, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1).breakdown() is None  # no ClipDone yet


def test_bad_arguments_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="--configs"):
        e2e.resolve_model(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="--clients"):
        e2e._ints("1,two", "--clients")
    walk = tmp_path / "walk.json"
    walk.write_text('[{"t": 0.5, "key_down": "w"}, {"t": 1.0, "screenshot": "x"}]')
    from explorer.script import ScriptError

    with pytest.raises(ScriptError, match="camera input only"):
        e2e.load_walk(walk)
    assert "unknown backend" in e2e.backend_unavailable("warp")


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU compile is timed like eager")
def test_compile_on_a_cpu_is_skipped_with_its_reason_unless_asked_for(monkeypatch):
    """The server builds a compiled graph for every chunk shape before it answers: minutes on a CPU."""
    monkeypatch.delenv("SPATIA_BENCH_CPU_COMPILE", raising=False)
    reason = e2e.backend_unavailable("compile")
    assert reason and "torch.compile on" in reason
    monkeypatch.setenv("SPATIA_BENCH_CPU_COMPILE", "1")
    if shutil.which("g++") or shutil.which("clang++"):
        assert e2e.backend_unavailable("compile") is None
