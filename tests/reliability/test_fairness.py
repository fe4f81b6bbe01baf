"""Several explorers with work queued share the server: chunks are served in turn, none starves."""

import time

from engine.server import protocol as P

from .helpers import INTR, RawClient, forward_poses, inproc_server, open_image_session


def test_explorers_with_queued_work_are_served_in_turn(tiny_checkpoint, tmp_path, ctx):
    with inproc_server(tiny_checkpoint, tmp_path / "sessions") as server:
        clients = [RawClient(ctx, server.transport.address) for _ in range(3)]
        try:
            for i, c in enumerate(clients):
                caps, _, start = open_image_session(c, seed=i)
                c.send(P.Trajectory(seq=1, w2c=forward_poses(start.w2c, 40 * caps.chunk_frames, step=0.01),
                                    intrinsics=INTR))
            done = [0] * len(clients)
            deadline = time.monotonic() + 60.0
            while sum(done) < 4 * len(clients) and time.monotonic() < deadline:
                for i, c in enumerate(clients):
                    for m in c.drain(quiet_s=0.02):
                        done[i] += m.type == "clip_done"
            # round robin: with every queue full, no explorer is more than one chunk ahead of another
            assert max(done) - min(done) <= 1, done  # (one: a ClipDone may still be on its way)
        finally:
            for c in clients:
                c.close()
