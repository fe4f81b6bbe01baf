"""What a long session keeps in memory is what it means to keep: stored frames own their pixels."""

import numpy as np

from engine import geometry
from engine.pipeline import WorldModel, WorldSession

from .helpers import image_open_message


def test_stored_frames_do_not_pin_their_whole_chunk(tiny_checkpoint):
    model = WorldModel.load(tiny_checkpoint)
    session = WorldSession(model)
    start = image_open_message(1, model.cfg.width)
    session.open_rgbd(start.rgb, start.depth, start.w2c, start.intrinsics)
    for k in range(3):
        c2w = geometry.invert_se3(start.w2c)
        c2w[:3, 3] += c2w[:3, 2] * 0.05 * (k + 1)
        session.generate_chunk(np.stack([geometry.invert_se3(c2w)] * model.cfg.chunk_frames), start.intrinsics)
    generated = [f for f in session.frames if f.index > 0]
    assert len(generated) >= 3
    # a view of the chunk's [F, H, W, 3] array would keep all F frames alive for each stored one (4x the memory
    # a long session is meant to hold: max_stored_frames frames)
    for f in generated:
        for a in (f.rgb, f.depth):
            assert a.base is None or a.base.nbytes == a.nbytes, (f.index, a.base.shape)
