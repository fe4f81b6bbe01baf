"""residual on the real thing: a procedural world with moving entities, the memory built from its static pixels
and rendered back through the memory renderer; the segmenter must find the entities and little else."""

import numpy as np
import pytest
import torch

from engine.geometry import Camera, unproject
from engine.segment import get_segmenter


@pytest.fixture
def single_thread_torch():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_finds_moving_entities_against_the_memory_render(single_thread_torch):
    from engine import world
    from engine.memory.render import render

    W, H, n = 160, 120, 13
    scene = world.generate_scene(0, kind="indoor", dynamic=True)
    path = world.make_path("orbit", scene, n, seed=0, aspect=W / H, closed=False, avoid_dynamic=False, fps=12.0)
    K = path.K(W, H)
    renderer = world.WorldRenderer(W, H)
    try:
        out = renderer.render_batch(scene, path.w2c, K, path.times)
    finally:
        renderer.release()
    # the memory: static pixels of a few frames, unprojected with their true depth
    xyz, rgb = [], []
    for i in range(0, n, 3):
        keep = (out.ids[i] == 0) & (out.depth[i] > 0)
        xyz.append(unproject(out.depth[i], K, path.w2c[i])[keep])
        rgb.append(out.rgb[i][keep])
    mem = render((np.concatenate(xyz).astype(np.float32), np.concatenate(rgb)),
                 [Camera(T, K, W, H) for T in path.w2c], point_size=0.01)
    r_rgb = (mem.rgb.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)  # [F, H, W, 3]
    r_depth = mem.depth[:, 0].numpy()
    coverage = mem.coverage[:, 0].numpy() > 0.5
    dynamic = (out.ids > 0) & coverage  # [F, H, W] the truth
    assert dynamic[1::2].sum() > 0.01 * dynamic[1::2].size, "scene 0's entities should be in view"

    seg = get_segmenter("residual")
    cal, test = slice(0, n, 2), slice(1, n, 2)
    seg.calibrate(out.rgb[cal], r_rgb[cal], coverage[cal] & (out.ids[cal] == 0), out.depth[cal], r_depth[cal])
    m = seg.segment(out.rgb[test], depth=out.depth[test], render_rgb=r_rgb[test], render_depth=r_depth[test],
                    coverage=coverage[test])
    truth = dynamic[test]
    assert (m & truth).sum() / (m | truth).sum() > 0.8
    assert (m & ~truth).mean() < 0.002
