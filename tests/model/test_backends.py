"""Inference backends: names resolve, missing TensorRT is a clear error, and fast paths match eager."""

import copy

import pytest
import torch

from engine.model.backends import (BackendUnavailable, apply_backend, resolve_backend, tensorrt_available, warm_up,
                                   warm_up_shapes)
from engine.model.dit import SpatiaDiT
from engine.model.backends.tensorrt import example_inputs
from tests.conftest import tiny_test_config


def test_names_resolve_and_unknown_is_refused():
    assert resolve_backend("eager") == "eager"
    assert resolve_backend("auto") == ("tensorrt" if tensorrt_available() else "eager")
    with pytest.raises(ValueError, match="unknown backend"):
        resolve_backend("fast")


@pytest.mark.skipif(tensorrt_available(), reason="TensorRT is present here")
def test_tensorrt_without_gpu_or_package_says_what_is_missing():
    cfg = tiny_test_config()
    with pytest.raises(BackendUnavailable, match="NVIDIA GPU|gpu extra"):
        apply_backend(SpatiaDiT(cfg), cfg, "tensorrt")


@pytest.mark.parametrize("device, tol", [
    pytest.param("cpu", 1e-4, marks=pytest.mark.slow),
    pytest.param("cuda", 1e-3, marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                           reason="needs an NVIDIA GPU")]),
])
def test_compile_matches_eager(device, tol):
    cfg = tiny_test_config()
    torch.manual_seed(0)
    dit = SpatiaDiT(cfg).eval().to(device)
    x, t, refs, control = example_inputs(cfg, device=device, dtype=torch.float32)
    with torch.no_grad():
        want = dit(x, t, refs=refs, control=control)
        compiled, name = apply_backend(dit, cfg, "compile")
        got = compiled(x, t, refs=refs, control=control)
    assert name == "compile"
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.gpu
@pytest.mark.skipif(not tensorrt_available(), reason="needs an NVIDIA GPU with torch-tensorrt")
def test_tensorrt_matches_eager(tmp_path):
    cfg = tiny_test_config()
    torch.manual_seed(0)
    dit = SpatiaDiT(cfg).eval().cuda()
    x, t, refs, control = example_inputs(cfg, device="cuda", dtype=torch.float32)
    with torch.no_grad():
        want = dit(x, t, refs=refs, control=control).float()
        trt, name = apply_backend(copy.deepcopy(dit), cfg, "tensorrt", cache_dir=tmp_path)  # TensorRT converts to fp16
        got = trt(x, t, refs=refs, control=control).float()
    assert name == "tensorrt"
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)  # fp16 engine against fp32 eager
    assert list(tmp_path.glob("dit-*.ep"))  # the engine is cached on disk


def test_warm_up_runs_the_dit_on_every_shape_a_session_brings():
    cfg = tiny_test_config()
    dit = SpatiaDiT(cfg).eval()
    seen = set()

    def record(module, args, kwargs):
        refs = kwargs.get("refs")
        cached = kwargs.get("cache") is not None and kwargs["cache"].filled
        seen.add((0 if refs is None else refs.shape[2], args[0].shape[2], cached))

    dit.register_forward_pre_hook(record, with_kwargs=True)
    assert warm_up_shapes(cfg) == [(k, f) for k in range(cfg.num_refs + 1) for f in (1, cfg.chunk_latent_frames)]
    assert warm_up(dit, cfg) > 0
    fh = cfg.history_latent_frames
    for k, f in warm_up_shapes(cfg):
        assert (k, fh + f, False) in seen  # the step that fills the context cache: references + history + targets
        assert (0, f, True) in seen  # the cached steps: the targets alone


def test_compile_warm_up_leaves_nothing_to_compile_during_a_session(monkeypatch):
    """After `warm_up`, a session's chunks reuse graphs whatever their path: full chunks, the server's 1-step short
    chunks with the last chunk's references, and chunks from a prepared context. A recompile in the middle of a
    walk stalls it for seconds (seen on a GPU: the RoPE cache, then strides of sliced conditions and of context
    keys/values filled within a chunk). Dynamo alone is enough to see recompiles, so the graphs run eagerly here
    instead of being code-generated."""
    import numpy as np
    import torch._dynamo
    from torch._dynamo.utils import counters

    from engine.pipeline import SessionOptions, WorldModel, WorldSession
    from tests.test_pipeline import INTR, room_rgbd, turn

    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, **kw: compile_(module, backend="eager", **kw))
    torch._dynamo.reset()
    counters.clear()
    cfg = tiny_test_config(num_refs=1)  # shapes: 0 or 1 reference x a short or a full chunk
    model = WorldModel.random(cfg)
    model.dit, _ = apply_backend(model.dit, cfg, "compile")
    warm_up(model.dit, cfg)
    built = counters["frames"]["total"]
    assert built >= len(warm_up_shapes(cfg))

    session = WorldSession(model, SessionOptions(segmentation=None, voxel_size=0.05, seed=3))
    rgb, depth, _ = room_rgbd()
    session.open_rgbd(rgb, depth, np.eye(4), INTR)
    yaw = 0.0

    def path(n):
        nonlocal yaw
        yaw += 3.0 * n
        return np.stack([turn(np.eye(4), yaw - 3.0 * (n - 1 - i)) for i in range(n)])

    tc, n = cfg.temporal_compression, session.chunk_frames
    for _ in range(2):  # the first round has no references yet, the second has one
        session.generate_chunk(path(n), INTR)
        session.generate_chunk(path(tc), INTR, latent_frames=1, steps=1, previous_refs=True)  # the server's short chunk
        assert session.prepare(None, None) > 0
        session.generate_chunk(path(tc), INTR, latent_frames=1, steps=1, previous_refs=True)
        assert session.prepare(None, None) > 0
        assert "prepared_ms" in session.generate_chunk(path(n), INTR).timings
    assert counters["frames"]["total"] == built  # nothing compiled after the warm-up
    torch._dynamo.reset()
