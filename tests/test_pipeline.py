"""WorldSession mechanics on a tiny random model: memory growth, dynamic exclusion, chaining, edits, bad input."""

import numpy as np
import pytest

from engine import geometry
from engine.pipeline import ChunkCancelled, PipelineError, SessionOptions, WorldModel, WorldSession
from tests.conftest import tiny_test_config

INTR = geometry.fov_to_intrinsics(70.0)


@pytest.fixture(scope="module")
def model():
    return WorldModel.random(tiny_test_config())


def room_rgbd(width=32, height=32, dist=3.0):
    """A camera at the origin facing +z at a textured wall `dist` metres away, with a 'dynamic' blob in the middle."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    depth = np.full((height, width), dist, np.float32)
    dynamic = np.zeros((height, width), bool)
    dynamic[12:20, 12:20] = True
    return rgb, depth, dynamic


def turn(w2c, yaw_deg):
    c2w = geometry.invert_se3(w2c)
    a = np.radians(yaw_deg)
    R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    c2w[:3, :3] = R @ c2w[:3, :3]
    return geometry.invert_se3(c2w)


def test_three_clips_grow_memory_where_the_camera_looked_and_chain(model):
    session = WorldSession(model, SessionOptions(segmentation=None, voxel_size=0.05))
    rgb, depth, dynamic = room_rgbd()
    start = np.eye(4)
    delta = session.open_rgbd(rgb, depth, start, INTR, exclude=dynamic)
    n0 = len(session.memory)
    assert delta.num_added == n0 > 0
    # dynamic pixels stayed out: no memory point projects into the blob from the start camera
    cam = session.camera(start, INTR)
    uv, z = geometry.project(session.memory.xyz.astype(np.float64), cam.w2c, cam.K)
    inside = (uv[:, 0] > 13) & (uv[:, 0] < 19) & (uv[:, 1] > 13) & (uv[:, 1] < 19)
    assert inside.sum() == 0

    n = session.chunk_frames
    got = []
    results = []
    for clip in range(3):  # turn right a little more each clip: new regions come into view
        poses = np.stack([turn(start, 15 * clip + 15 * (i + 1) / n) for i in range(n)])
        results += session.step(poses, INTR, on_frame=lambda i, *rest: got.append(i))
    assert got == list(range(1, 3 * n + 1))  # frames stream in order, the video continues across clips
    assert session.num_frames == 1 + 3 * n and session.clip == 3
    assert len(session.memory) > n0
    # the new points lie where the last camera looked: in front of it
    last = session.camera(results[-1].w2c[-1], INTR)
    added = results[-1].delta.added_xyz.astype(np.float64)
    _, z = geometry.project(added, last.w2c, last.K)
    assert (z > 0).mean() > 0.95
    # history chains: each clip's scene video starts from the previous clip's last pose
    for r in results:
        assert {"retrieval", "render", "encode", "sample", "decode", "reconstruct", "update", "total"} <= set(r.timings)
        assert r.rgb.shape == (n, 32, 32, 3) and r.depth.shape == (n, 32, 32)
    assert results[-1].first_frame == 1 + 2 * n


def test_edit_changes_the_next_scene_video_and_undo_restores(model):
    # random-weight frames would add random depth to the memory: keep it as opened so only the edits change it
    session = WorldSession(model, SessionOptions(segmentation=None, voxel_size=0.05, update_memory=False))
    rgb, depth, _ = room_rgbd()
    session.open_rgbd(rgb, depth, np.eye(4), INTR)
    poses = np.repeat(np.eye(4)[None], session.chunk_frames, 0)
    before = session.generate_chunk(poses, INTR).coverage.mean()
    n = len(session.memory)
    session.remove_box([-0.5, -0.5, 0], [0.5, 0.5, 10])  # a hole in the middle of the wall
    assert len(session.memory) < n
    after = session.generate_chunk(poses, INTR)
    assert after.coverage.mean() < before
    assert not after.coverage[:, 15:17, 15:17].any()  # the hole shows in the scene video
    m = len(session.memory)
    session.insert_primitive("box", [0, 0, 2.0], [0.4, 0.4, 0.4], [255, 0, 0])
    red = session.generate_chunk(poses, INTR).scene_rgb[:, 16, 16]
    assert (red[:, 0] > 200).all() and (red[:, 1] < 50).all()
    session.undo()
    assert len(session.memory) == m


def test_cancel_leaves_the_session_unchanged(model):
    session = WorldSession(model, SessionOptions(segmentation=None))
    rgb, depth, _ = room_rgbd()
    session.open_rgbd(rgb, depth, np.eye(4), INTR)
    version, frames = session.memory.version, session.num_frames
    # polled after retrieval, after the conditions, then after every sampler step: each point stops the chunk
    for polls, where in ((1, "after retrieval"), (2, "after conditions"), (3, "after step 1")):
        asked = []

        def should_stop():
            asked.append(1)
            return len(asked) >= polls

        with pytest.raises(ChunkCancelled, match=where):
            session.generate_chunk(np.eye(4)[None], INTR, should_stop=should_stop)
        assert (session.memory.version, session.num_frames) == (version, frames)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda s: s.open_rgbd(np.zeros((4, 4), np.uint8), np.ones((4, 4)), np.eye(4), INTR), "uint8"),
        (lambda s: s.open_rgbd(np.zeros((32, 32, 3), np.uint8), np.ones((16, 16)), np.eye(4), INTR), "does not match"),
        (lambda s: s.open_rgbd(np.zeros((32, 32, 3), np.uint8), np.ones((32, 32)), np.full((4, 4), np.nan), INTR), "NaN"),
        (lambda s: s.open_rgbd(np.zeros((32, 32, 3), np.uint8), np.ones((32, 32)), np.eye(4), INTR,
                               exclude=np.zeros((8, 8), bool)), "mask"),
        (lambda s: s.step(np.stack([np.eye(4), np.full((4, 4), np.nan)]), INTR), "pose 1 contains NaN"),
        (lambda s: s.step(np.eye(4)[None], [0.5, 0.5]), "intrinsics"),
        (lambda s: s.generate_chunk(np.repeat(np.eye(4)[None], 99, 0), INTR), "at most"),
        (lambda s: s.undo(), "nothing to undo"),
        (lambda s: s.open_image(np.zeros((32, 32, 3), np.uint8), np.eye(4), INTR), "image with a depth map"),
    ],
)
def test_bad_input_gets_a_clear_error_and_the_session_stays_usable(model, make, match):
    session = WorldSession(model, SessionOptions(segmentation=None))
    rgb, depth, _ = room_rgbd()
    session.open_rgbd(rgb, depth, np.eye(4), INTR)
    with pytest.raises(PipelineError, match=match):
        make(session)
    result = session.generate_chunk(np.eye(4)[None], INTR)  # still works
    assert result.rgb.shape == (1, 32, 32, 3)


def test_save_and_load_round_trip(model, tmp_path):
    session = WorldSession(model, SessionOptions(segmentation=None))
    rgb, depth, _ = room_rgbd()
    session.open_rgbd(rgb, depth, np.eye(4), INTR)
    session.generate_chunk(np.eye(4)[None], INTR)
    session.save(tmp_path / "s")
    back = WorldSession.load(tmp_path / "s", model)
    np.testing.assert_array_equal(back.memory.xyz, session.memory.xyz)
    assert back.num_frames == session.num_frames and back.last_frame.index == session.last_frame.index
    (tmp_path / "s" / "session.json").write_text("{broken")
    with pytest.raises(PipelineError, match="cannot load session"):
        WorldSession.load(tmp_path / "s", model)


def test_frames_add_points_only_where_the_memory_had_none(model):
    rgb, depth, _ = room_rgbd()
    added = {}
    for only_new in (True, False):
        session = WorldSession(model, SessionOptions(segmentation=None, voxel_size=0.05, update_uncovered_only=only_new))
        session.open_rgbd(rgb, depth, np.eye(4), INTR)
        result = session.generate_chunk(np.eye(4)[None], INTR)  # the start view again: all of it is covered
        assert result.coverage.mean() > 0.9
        added[only_new] = result.delta.num_added
    assert added[True] <= 0.1 * 32 * 32 < added[False]


def test_load_survives_a_kill_between_the_two_renames_of_save(model, tmp_path):
    session = WorldSession(model, SessionOptions(segmentation=None))
    rgb, depth, _ = room_rgbd()
    session.open_rgbd(rgb, depth, np.eye(4), INTR)
    session.save(tmp_path / "s")
    (tmp_path / "s").rename(tmp_path / ".s.old")  # the state after the first rename, before the second
    back = WorldSession.load(tmp_path / "s", model)
    assert len(back.memory) == len(session.memory)


def test_an_image_of_another_size_is_cropped_and_resized_with_its_mask(model):
    session = WorldSession(model, SessionOptions(segmentation=None))
    rgb = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    depth = np.full((48, 64), 2.0, np.float32)
    mask = np.zeros((48, 64), bool)
    mask[:, 32:] = True  # the right half is dynamic
    session.open_rgbd(rgb, depth, np.eye(4), geometry.fov_to_intrinsics(70.0, 64 / 48), exclude=mask)
    assert session.last_frame.rgb.shape == (32, 32, 3)
    cam = session.last_frame.camera
    uv, _ = geometry.project(session.memory.xyz.astype(np.float64), cam.w2c, cam.K)
    assert len(uv) > 0 and uv[:, 0].max() < 17  # only the static left half went into the memory


def test_short_chunk_and_each_stored_frame_is_encoded_once(model):
    session = WorldSession(model, SessionOptions(segmentation=None, voxel_size=0.05))
    rgb, depth, _ = room_rgbd()
    session.open_rgbd(rgb, depth, np.eye(4), INTR)
    tc = model.cfg.temporal_compression
    encoded = []
    encode = model.vae.encode
    model.vae.encode = lambda x, *a, **k: (encoded.append(x.shape[0] * x.shape[2]), encode(x, *a, **k))[1]
    try:
        short = session.generate_chunk(np.stack([turn(np.eye(4), 2 * (i + 1)) for i in range(tc)]), INTR,
                                       latent_frames=1)
        assert short.rgb.shape[0] == tc and session.num_frames == 1 + tc
        assert encoded == [1]  # the opening frame as history; no references yet
        encoded.clear()
        cached = set(session._ref_cache)
        assert cached == {0}  # the opening frame, encoded as history, waits there to serve as a reference
        full = session.generate_chunk(np.stack([turn(np.eye(4), 8 + i) for i in range(session.chunk_frames)]), INTR)
        assert full.rgb.shape[0] == session.chunk_frames
        # the new history (the short chunk's last frame) is encoded; references already encoded are not again
        refs = {i for i, _ in full.references}
        assert refs and encoded[0] == 1 and sum(encoded[1:]) == len(refs - cached)
        assert short.first_frame + tc - 1 in session._ref_cache
    finally:
        model.vae.encode = encode
    one_step = session.generate_chunk(np.stack([turn(np.eye(4), 20 + i) for i in range(tc)]), INTR, latent_frames=1,
                                      steps=1, previous_refs=True)
    assert "step_0" in one_step.timings and "step_1" not in one_step.timings  # a chunk's own sampler steps
    assert one_step.references == full.references  # the last chunk's references, not retrieved for the new poses
    retrieved = []
    retrieve = session._retrieve
    session._retrieve = lambda targets: (retrieved.append(len(targets)), retrieve(targets))[1]
    try:
        again = session.generate_chunk(np.stack([turn(np.eye(4), 40 + i) for i in range(tc)]), INTR, latent_frames=1,
                                       previous_refs=True)
        assert not retrieved and again.references == one_step.references
        session._last_ref_ids = [(10**6, 1.0)]  # references no longer stored: retrieved after all
        session.generate_chunk(np.stack([turn(np.eye(4), 45 + i) for i in range(tc)]), INTR, latent_frames=1,
                               previous_refs=True)
        assert retrieved == [tc]
    finally:
        session._retrieve = retrieve
    assert "step_1" in full.timings  # the model's (tiny test config: 2)
    with pytest.raises(PipelineError, match="steps must be an integer >= 1"):
        session.generate_chunk(np.eye(4)[None], INTR, steps=0)
    with pytest.raises(PipelineError, match="latent_frames must be in"):
        session.generate_chunk(np.eye(4)[None], INTR, latent_frames=0)
    with pytest.raises(PipelineError, match=f"at most {tc} poses"):
        session.generate_chunk(np.stack([np.eye(4)] * (tc + 1)), INTR, latent_frames=1)


def test_a_prepared_context_gives_the_chunk_it_would_have_made_anyway(model):
    def session_after_one_chunk():
        s = WorldSession(model, SessionOptions(segmentation=None, voxel_size=0.05, seed=3))
        rgb, depth, _ = room_rgbd()
        s.open_rgbd(rgb, depth, np.eye(4), INTR)
        s.generate_chunk(np.stack([turn(np.eye(4), 3 * (i + 1)) for i in range(s.chunk_frames)]), INTR)
        return s

    plain, ready = session_after_one_chunk(), session_after_one_chunk()
    n = plain.chunk_frames
    poses = np.stack([turn(np.eye(4), 24 + 3 * (i + 1)) for i in range(n)])
    assert ready.can_prepare and ready.prepare(poses, INTR, should_stop=lambda: True) is None  # stopped: no context
    assert not ready.prepared
    assert ready.can_prepare and ready.prepare(poses, INTR) > 0
    assert ready.prepare(poses, INTR) == 0.0  # already prepared for this history and memory
    with pytest.raises(ChunkCancelled):  # a cancelled chunk leaves the prepared context usable
        ready.generate_chunk(poses, INTR, should_stop=lambda: True)
    a, b = plain.generate_chunk(poses, INTR), ready.generate_chunk(poses, INTR)
    assert "prepared_ms" in b.timings and b.timings["retrieval"] == 0.0 and "prepared_ms" not in a.timings
    assert a.references == b.references
    assert np.abs(a.rgb.astype(int) - b.rgb.astype(int)).max() <= 2  # the same frames up to float rounding
    np.testing.assert_array_equal(a.coverage, b.coverage)
    # a context is stale once the history, the memory or the clip changed: the next chunk builds its own
    ready.prepare(None, None)
    ready.remove_box(np.full(3, -10.0), np.full(3, -9.0))
    ready.insert_points(np.array([[0.0, 0.0, 2.0]]), np.array([[255, 0, 0]], np.uint8))
    c = ready.generate_chunk(poses[: n // 2], INTR, latent_frames=1)
    assert "prepared_ms" not in c.timings and len(c.rgb) == n // 2


@pytest.mark.parametrize("k", [1, 2, 3])
def test_retrieval_looks_from_along_the_whole_chunk_for_any_number_of_references(k):
    from engine.memory.retrieval import ReleaseRetrieval
    from engine.pipeline import retrieval_options

    cfg = tiny_test_config()
    n = cfg.chunk_frames
    chosen = ReleaseRetrieval(**retrieval_options("release", cfg, k)).target_indices(n)
    assert len(chosen) >= min(4, n) and chosen[-1] >= n // 2  # not only the chunk's first pose (K = 1 did that)
    short = ReleaseRetrieval(**retrieval_options("release", cfg, k, frames=n // 2)).target_indices(n // 2)
    assert len(short) == n // 2  # a short chunk: every pose


def test_layered_model_reuses_the_references_keys_and_values_across_chunks():
    model = WorldModel.random(tiny_test_config(attention_layout="layered"), seed=1)
    embedded = []  # frames of latents each DiT forward turns into tokens
    embed = model.dit._embed
    model.dit._embed = lambda conv, x: (conv is model.dit.patch_embed and embedded.append(x.shape[2]), embed(conv, x))[1]

    def session_after_two_chunks(keep: bool):
        s = WorldSession(model, SessionOptions(segmentation=None, voxel_size=0.05, seed=3))
        rgb, depth, _ = room_rgbd()
        s.open_rgbd(rgb, depth, np.eye(4), INTR)
        for start in (0, 8):
            if not keep:
                s._ref_contexts.clear()
            s.generate_chunk(np.stack([turn(np.eye(4), start + i + 1) for i in range(s.chunk_frames)]), INTR)
        return s

    kept, plain = session_after_two_chunks(True), session_after_two_chunks(False)
    refs = tuple(i for i, _ in kept._last_ref_ids)
    assert len(refs) >= 1 and (True, *refs) in kept._ref_contexts
    tc = model.cfg.temporal_compression
    poses = np.stack([turn(np.eye(4), 20 + i) for i in range(tc)])
    embedded.clear()
    a = kept.generate_chunk(poses, INTR, latent_frames=1, previous_refs=True)
    assert embedded[0] == 2  # history + target: no reference frame computed
    plain._ref_contexts.clear()
    embedded.clear()
    b = plain.generate_chunk(poses, INTR, latent_frames=1, previous_refs=True)
    assert embedded[0] == len(refs) + 2 and a.references == b.references
    assert np.abs(a.rgb.astype(int) - b.rgb.astype(int)).max() <= 2  # the same frames up to float rounding
    # preparing a context keeps its references' keys/values, and a later preparation with them computes the history
    assert kept.prepare(None, None) > 0
    prepared_refs = tuple(i for i, _ in kept._prepared.cond.ref_ids)
    assert (True, *prepared_refs) in kept._ref_contexts
    kept._prepared = None
    embedded.clear()
    assert kept.prepare(None, None) > 0 and embedded == [1]
    assert len(kept._ref_contexts) <= 3
    before, saved = kept.nbytes, dict(kept._ref_contexts)  # the kept keys/values count in the session's bytes
    kept._ref_contexts.clear()
    assert before - kept.nbytes == sum(c.nbytes for c in saved.values()) > 0
    kept._ref_contexts.update(saved)
    # without the scene video the control branch does not run: its references' keys/values are kept apart
    kept.options.use_scene_video = False
    off = kept.generate_chunk(poses, INTR, latent_frames=1, previous_refs=True)
    assert (False, *(i for i, _ in off.references)) in kept._ref_contexts
    kept.options.use_scene_video = True
    kept.generate_chunk(poses, INTR, latent_frames=1, previous_refs=True)
    model.dit._embed = embed


def test_a_stop_after_the_first_frames_ends_the_chunk_with_the_frames_handed_out(model):
    session = WorldSession(model, SessionOptions(segmentation=None, voxel_size=0.05))
    rgb, depth, _ = room_rgbd()
    session.open_rgbd(rgb, depth, np.eye(4), INTR)
    n, tc = session.chunk_frames, model.cfg.temporal_compression
    poses = np.stack([turn(np.eye(4), i + 1) for i in range(n)])
    out = []
    result = session.generate_chunk(poses, INTR, on_frame=lambda index, *rest: out.append(index),
                                    should_stop=lambda: bool(out))  # a newer path came once frames were out
    assert out == list(range(1, 1 + tc)) and len(result.rgb) == tc and len(result.w2c) == tc
    assert session.num_frames == 1 + tc and session.last_frame.index == tc
    np.testing.assert_array_equal(session.last_frame.camera.w2c, poses[tc - 1])
    follow = session.generate_chunk(poses[tc:], INTR)
    assert follow.first_frame == 1 + tc and session.num_frames == 1 + n
