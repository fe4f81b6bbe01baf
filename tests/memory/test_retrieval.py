"""Reference-frame retrieval on a constructed room: both variants pick the frames that really overlap."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from engine import geometry
from engine.bench.reconstruct import AnalyticRoom, render_analytic
from engine.memory import SpatialMemory
from engine.memory.retrieval import Alg1Retrieval, Candidate, ReleaseRetrieval, nearest_candidates, retrieve

S = 48  # frame size in pixels
EYE = np.array([0.0, 1.5, -2.0])
DIRS = {"+x": (1, 0, 0), "-x": (-1, 0, 0), "+z": (0, 0, 1), "-z": (0, 0, -1)}
FRAME_OF = {"+x": 10, "-x": 11, "+z": 12, "-z": 13}
# The memory's 5 cm voxels and 48-pixel views sample the walls every 5-12 cm: the occupancy grid compared by
# Algorithm 1 must be coarser than that, and ICP's radius must reach across a cell.
ALG1 = {"iou_voxel": 0.2, "icp_max_distance": 0.3}


def view(direction, eye=EYE, jitter=0.0):
    K = geometry.intrinsics_to_K(geometry.fov_to_intrinsics(70.0), S, S)
    eye = np.asarray(eye, float) + jitter
    return geometry.Camera(geometry.look_at(eye, eye + np.asarray(DIRS[direction], float)), K, S, S)


@pytest.fixture(scope="module")
def room():
    """A memory of the whole analytic room, and one candidate frame per direction with its own points."""
    r = AnalyticRoom()
    tex = r.textures()
    mem = SpatialMemory(voxel_size=0.05)
    for a in np.linspace(0, 2 * np.pi, 12, endpoint=False):
        K = geometry.intrinsics_to_K(geometry.fov_to_intrinsics(70.0), S, S)
        w2c = geometry.look_at(EYE, EYE + [np.cos(a), -0.1, np.sin(a)])
        rgb, depth = render_analytic(r, w2c, K, S, S, True, tex)
        mem.insert_rgbd(rgb, depth, K, w2c, frame_id=0)
    cands = []
    for name, fid in FRAME_OF.items():
        c = view(name)
        _, depth = render_analytic(r, c.w2c, c.K, S, S, True, tex)
        cands.append(Candidate(fid, c, geometry.unproject(depth, c.K, c.w2c).reshape(-1, 3).astype(np.float32)))
    return mem, cands


def test_release_picks_the_overlapping_frames_one_to_one(room):
    mem, cands = room
    # 24 fps, 2 fps sampling: targets 0 and 12 are used; 0 looks +z, 12 looks +x, the rest look -x
    targets = [view("-x", jitter=0.01 * i) for i in range(24)]
    targets[0], targets[12] = view("+z", jitter=0.02), view("+x", jitter=0.02)
    picks = retrieve("release", targets, cands, mem, k=7, fps=24.0, sample_fps=2.0)
    assert sorted(f for f, _ in picks) == [FRAME_OF["+x"], FRAME_OF["+z"]]
    assert all(score > 0 for _, score in picks)
    assert [s for _, s in picks] == sorted((s for _, s in picks), reverse=True)
    # the same directions twice: one-to-one assignment gives the second target the next best, never a repeat
    twice = retrieve("release", [view("+z"), view("+z", jitter=0.05)], cands, mem, every=1)
    assert twice[0][0] == FRAME_OF["+z"] and len({f for f, _ in twice}) == len(twice)
    assert retrieve("release", targets, cands, mem, k=1)[0][0] in (FRAME_OF["+x"], FRAME_OF["+z"])
    assert len(retrieve("release", targets, cands, mem, k=1)) == 1


def test_nearest_candidates_prefilter_by_pose(room):
    mem, cands = room
    far = [Candidate(100 + i, view("+z", eye=EYE + [0.0, 0.0, 30.0 + i])) for i in range(5)]  # 30 m away
    turned = [Candidate(200, view("-z"))]  # here, looking the other way
    pool = far + cands + turned
    assert nearest_candidates([view("+z")], pool, 3) == [cands[0], cands[1], cands[2]]  # order kept
    picked = [c.frame_id for c in nearest_candidates([view("+z")], pool, 1)]
    assert picked == [FRAME_OF["+z"]]
    assert nearest_candidates([view("+z")], pool, 100) == pool
    # the prefilter keeps retrieval's answer when the right frames are among the nearest
    targets = [view("+z"), view("+x", jitter=0.02)]
    full = retrieve("release", targets, pool, mem, every=1)
    assert retrieve("release", targets, pool, mem, every=1, max_candidates=4) == full
    with pytest.raises(ValueError, match="max_candidates"):
        retrieve("release", targets, pool, mem, max_candidates=0)


def test_release_target_sampling():
    assert ReleaseRetrieval(fps=24.0, sample_fps=2.0).target_indices(81).tolist() == list(range(0, 81, 12))
    assert ReleaseRetrieval(every=5).target_indices(12).tolist() == [0, 5, 10]
    with pytest.raises(ValueError, match="every"):
        ReleaseRetrieval(every=0).target_indices(5)


def test_alg1_scores_every_kth_target_and_keeps_the_best(room):
    mem, cands = room
    # k = 2: only targets 0, 2, 4, ... are scored. They look +z and +x; the others look -z.
    targets = [view("-z", jitter=0.01 * i) for i in range(6)]
    targets[0], targets[2], targets[4] = view("+z"), view("+x"), view("+z", jitter=0.03)
    picks = retrieve("alg1", targets, cands, mem, k=2, **ALG1)
    assert [f for f, _ in picks] == [f for f, _ in sorted(picks, key=lambda p: -p[1])]
    assert sorted(f for f, _ in picks) == [FRAME_OF["+x"], FRAME_OF["+z"]]  # at most k, never -z
    assert all(score > 0.1 for _, score in picks)
    # scoring every target (stride 1) finds the -z frame as well
    every = retrieve("alg1", targets, cands, mem, k=3, stride=1, **ALG1)
    assert FRAME_OF["-z"] in {f for f, _ in every} and len(every) == 3
    # no candidate clears a threshold of 0.999
    assert retrieve("alg1", targets, cands, mem, k=2, epsilon=0.999, **ALG1) == []


def test_alg1_registration_recovers_a_shifted_candidate(room):
    mem, cands = room
    plus_x = next(c for c in cands if c.frame_id == FRAME_OF["+x"])
    shifted = Candidate(99, plus_x.camera, plus_x.points + np.float32([0.15, 0.0, 0.075]))
    targets = [view("+x")]
    with_icp = Alg1Retrieval(k=1, icp_iterations=20, **ALG1)(targets, [shifted], mem)
    # a correspondence radius of 0.1 mm pairs nothing: the score is the IoU without registration
    without = Alg1Retrieval(k=1, iou_voxel=0.2, icp_max_distance=1e-4, epsilon=0.0)(targets, [shifted], mem)
    assert with_icp and without
    assert with_icp[0][1] > without[0][1] + 0.3


def test_retrieval_errors(room):
    mem, cands = room
    t = [view("+z")]
    with pytest.raises(ValueError, match="unknown retrieval method"):
        retrieve("nearest", t, cands, mem)
    with pytest.raises(ValueError, match="no option"):
        retrieve("release", t, cands, mem, epsilon=0.5)
    with pytest.raises(ValueError, match="needs each candidate's points"):
        retrieve("alg1", t, [Candidate(5, t[0])], mem)
    with pytest.raises(ValueError, match="distinct"):
        retrieve("release", t, [cands[0], cands[0]], mem)
    assert retrieve("release", t, [], mem) == []


def test_memory_benchmark_runs_tiny():
    from engine.bench import memory as bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--points", "3000", "--size", "32", "--batch", "2", "--candidates", "6",
                              "--alg1-candidates", "3", "--targets", "14", "--repeat", "1", "--no-tune"])
    result = bench.run(args)
    for key in ("insert_mpts_per_s", "render_ms_per_frame_256", "retrieval_ms_1000", "retrieval_alg1_ms_100",
                "update_rule_ms_per_frame"):
        assert result[key] > 0, key
        assert result[key.replace("_mpts_per_s", "").replace("_ms_per_frame_256", "").replace("_ms_1000", "")
                      .replace("_ms_100", "").replace("_ms_per_frame", "") + "_note"]
    assert result["memory_points"] == 3000 and result["machine"]["cores"] >= 1
