"""Inference backends: names resolve, missing TensorRT is a clear error, and fast paths match eager."""

import copy

import pytest
import torch

from engine.model.backends import BackendUnavailable, apply_backend, resolve_backend, tensorrt_available
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


@pytest.mark.slow
def test_compile_matches_eager():
    cfg = tiny_test_config()
    torch.manual_seed(0)
    dit = SpatiaDiT(cfg).eval()
    x, t, refs, control = example_inputs(cfg, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        want = dit(x, t, refs=refs, control=control)
        compiled, name = apply_backend(dit, cfg, "compile")
        got = compiled(x, t, refs=refs, control=control)
    assert name == "compile"
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


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
