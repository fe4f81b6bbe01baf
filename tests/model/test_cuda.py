"""The model and a whole session on an NVIDIA GPU give what the CPU gives (skipped without CUDA; `compile` on CUDA
is checked in test_backends.py).

The CPU path is the reference every other test checks; these tests hold the GPU path to it: the same seeds give the
same chunk (noise is drawn on the CPU), up to float32 rounding and cuDNN's TF32 convolutions.
"""

import numpy as np
import pytest
import torch

from engine import geometry
from engine.eval.metrics import psnr
from engine.model.backends.tensorrt import example_inputs
from engine.model.dit import SpatiaDiT
from engine.model.sampler import sample
from engine.pipeline import SessionOptions, WorldModel, WorldSession
from tests.conftest import tiny_test_config
from tests.reliability.helpers import yawed

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]

INTR = geometry.fov_to_intrinsics(70.0)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR pooled over a chunk's frames [n, H, W, 3] (the frames stacked into one image)."""
    return psnr(np.concatenate(a), np.concatenate(b))


def _wall(width=32, height=32, dist=3.0):
    rgb = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    return rgb, np.full((height, width), dist, np.float32)


def test_dit_forward_on_cuda_matches_cpu():
    cfg = tiny_test_config()
    torch.manual_seed(0)
    dit = SpatiaDiT(cfg).eval()
    x, t, refs, control = example_inputs(cfg, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        want = dit(x, t, refs=refs, control=control)
        got = dit.cuda()(x.cuda(), t.cuda(), refs=refs.cuda(), control=control.cuda()).cpu()
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


def test_sampled_chunk_on_cuda_matches_cpu_with_and_without_the_context_cache():
    cfg = tiny_test_config()
    torch.manual_seed(0)
    dit = SpatiaDiT(cfg).eval()
    g = torch.Generator().manual_seed(0)
    z, h, w = cfg.latent_channels, cfg.latent_height, cfg.latent_width
    history = torch.randn(1, z, cfg.history_latent_frames, h, w, generator=g)
    refs = torch.randn(1, z, cfg.num_refs, h, w, generator=g)
    control = torch.randn(1, 2 * z, cfg.history_latent_frames + cfg.chunk_latent_frames, h, w, generator=g)

    def chunk(net, device, cached):
        return sample(net, cfg, history=history.to(device), refs=refs.to(device), control=control.to(device),
                      generator=torch.Generator().manual_seed(1), context_cache=cached).cpu()

    with torch.no_grad():
        want = chunk(dit, "cpu", True)
        dit.cuda()
        for cached in (True, False):
            torch.testing.assert_close(chunk(dit, "cuda", cached), want, rtol=2e-3, atol=2e-3)


def _three_chunks(model: WorldModel) -> tuple[list[np.ndarray], int]:
    """Open a wall, prepare, then generate three chunks turning right: (every chunk's RGB, final memory size)."""
    session = WorldSession(model, SessionOptions(segmentation=None, voxel_size=0.05))
    rgb, depth = _wall(model.cfg.width, model.cfg.height)
    session.open_rgbd(rgb, depth, np.eye(4), INTR)
    n = session.chunk_frames
    frames = []
    for clip in range(3):
        if clip == 1:
            session.prepare()  # the prepared-context path as well as the one-go path
        poses = yawed(np.repeat(np.eye(4)[None], n, 0), 10 / n, offset=clip * n + 1)  # 10 degrees a chunk
        frames.append(session.generate_chunk(poses, INTR).rgb)
    return frames, len(session.memory)


def test_session_on_cuda_generates_what_the_cpu_generates():
    cpu_frames, cpu_points = _three_chunks(WorldModel.random(tiny_test_config(), device="cpu"))
    gpu_frames, gpu_points = _three_chunks(WorldModel.random(tiny_test_config(), device="cuda"))
    for a, b in zip(cpu_frames, gpu_frames):
        assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
        assert _psnr(a, b) > 35.0  # same seeds: rounding differences only
    assert abs(gpu_points - cpu_points) <= 0.02 * cpu_points


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_shipped_model_runs_its_dit_in_half_precision_on_cuda(dtype):
    full = _three_chunks(WorldModel.load("tiny", device="cuda"))[0]
    half_model = WorldModel.load("tiny", device="cuda", dit_dtype=dtype)
    assert next(half_model.dit.parameters()).dtype == dtype
    assert next(half_model.vae.parameters()).dtype == torch.float32
    half = _three_chunks(half_model)[0]
    assert _psnr(full[0], half[0]) > 25.0  # the first chunk: close to the float32 one
