"""residual on the real thing: a procedural world with moving entities, the memory built from its static pixels
and rendered back through the memory renderer; the segmenter must find the entities and little else."""

import numpy as np
import pytest
import torch

from engine.geometry import Camera, unproject
from engine.segment import get_segmenter

W, H, N = 160, 120, 13


@pytest.fixture
def single_thread_torch():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _world_and_memory(world, renderer, seed: int):
    """Frames of an orbit in scene `seed` and the memory's render of them (memory: the static pixels of every
    third frame, unprojected with their true depth), or None when no orbit fits the scene."""
    from engine.memory.render import render

    scene = world.generate_scene(seed, kind="indoor", dynamic=True)
    try:
        path = world.make_path("orbit", scene, N, seed=seed, aspect=W / H, closed=False, avoid_dynamic=False,
                               fps=12.0)
    except world.PathError:
        return None
    K = path.K(W, H)
    out = renderer.render_batch(scene, path.w2c, K, path.times)
    xyz, rgb = [], []
    for i in range(0, N, 3):
        keep = (out.ids[i] == 0) & (out.depth[i] > 0)
        xyz.append(unproject(out.depth[i], K, path.w2c[i])[keep])
        rgb.append(out.rgb[i][keep])
    mem = render((np.concatenate(xyz).astype(np.float32), np.concatenate(rgb)),
                 [Camera(T, K, W, H) for T in path.w2c], point_size=0.01)
    r_rgb = (mem.rgb.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)  # [F, H, W, 3]
    return out, r_rgb, mem.depth[:, 0].numpy(), mem.coverage[:, 0].numpy() > 0.5


def test_finds_moving_entities_against_the_memory_render(single_thread_torch):
    from engine import world

    renderer = world.WorldRenderer(W, H)
    try:
        # the first scene where the memory covers the background behind a moving entity over a good area (where
        # the memory has nothing, there is nothing to disagree with, and the segmenter rightly stays silent)
        for seed in range(16):
            found = _world_and_memory(world, renderer, seed)
            if found is not None and ((found[0].ids > 0) & found[3]).mean() > 0.01:
                break
        else:
            pytest.fail("no scene among seeds 0..15 shows a moving entity in front of covered background")
    finally:
        renderer.release()
    out, r_rgb, r_depth, coverage = found
    seg = get_segmenter("residual")
    cal, test = slice(0, N, 2), slice(1, N, 2)
    seg.calibrate(out.rgb[cal], r_rgb[cal], coverage[cal] & (out.ids[cal] == 0), out.depth[cal], r_depth[cal])
    m = seg.segment(out.rgb[test], depth=out.depth[test], render_rgb=r_rgb[test], render_depth=r_depth[test],
                    coverage=coverage[test])
    truth = (out.ids[test] > 0) & coverage[test]
    assert (m & truth).sum() / (m | truth).sum() > 0.8
    assert (m & ~truth).mean() < 0.002
