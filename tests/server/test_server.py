"""The real server process: handshake, sessions, streaming, cancel-on-newer, SIGKILL + resume, broker, bad input."""

import os
import time

import numpy as np
import pytest
import zmq

from engine.server import protocol as P
from tests.reliability.helpers import (INTR, RawClient, ServerProc, forward_poses, inproc_server, kill_and_resume,
                                      open_image_session, wait_for, yawed)


def clip_done(msg) -> bool:
    return msg.type == "clip_done"


def open_session(client, seed=1):
    client.send(P.Hello(client="test"))
    caps = client.recv()
    assert caps.type == "capabilities" and (caps.width, caps.height) == (32, 32)
    client.send(P.OpenProcedural(seed=seed))
    msgs = [client.recv(), client.recv(), client.recv()]
    assert [m.type for m in msgs] == ["ack", "memory_delta", "frame"]
    assert msgs[1].full and len(msgs[1].added_ids) > 0
    return caps, msgs[1], msgs[2]




@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.term()


def test_stream_two_clients_and_edits(tiny_checkpoint, tmp_path, ctx):
    with ServerProc(tiny_checkpoint, tmp_path / "sessions", tmp_path / "server.log") as server, \
            RawClient(ctx, server.address) as a, RawClient(ctx, server.address) as b:
        caps, full_a, start_a = open_session(a, seed=1)
        _, full_b, start_b = open_session(b, seed=2)
        assert not np.array_equal(start_a.rgb, start_b.rgb)  # separate sessions, separate scenes
        n = caps.chunk_frames
        a.send(P.Trajectory(seq=1, w2c=forward_poses(start_a.w2c, n), intrinsics=INTR, t_input=1.5))
        b.send(P.Trajectory(seq=1, w2c=forward_poses(start_b.w2c, n), intrinsics=INTR, t_input=2.5))
        short = n // 2  # the first chunk of a path from rest has one of the test model's two latent frames
        for c, t_input in ((a, 1.5), (b, 2.5)):
            first = 1
            for size in (short, n - short):  # a short chunk, then the rest of the path
                msgs = c.recv_until(clip_done)
                frames = [m for m in msgs if m.type == "frame"]
                assert [f.index for f in frames] == list(range(first, first + size))
                assert all(f.seq == 1 and f.t_input == t_input for f in frames)
                delta = next(m for m in msgs if m.type == "memory_delta")
                done = msgs[-1]
                assert done.num_frames == size and done.memory_version == delta.version_to
                assert {"retrieval", "render", "encode", "sample", "decode", "update"} <= set(done.timings)
                first += size
        # an edit is acknowledged and answered with the delta that removes the points
        lo, hi = full_a.added_xyz.min(0) - 1, full_a.added_xyz.max(0) + 1
        a.send(P.EditRemoveBox(edit_id=7, box_min=lo.astype(np.float64), box_max=hi.astype(np.float64)))
        ack, delta = a.recv(), a.recv()
        assert ack.type == "ack" and ack.ref_id == 7
        assert delta.type == "memory_delta" and len(delta.removed_ids) > 0
        a.send(P.EditUndo(edit_id=8))
        ack, delta = a.recv(), a.recv()
        assert ack.ref_id == 8 and len(delta.added_ids) == len(np.unique(delta.added_ids)) > 0


def test_newer_trajectory_cancels_a_stale_chunk(tiny_checkpoint, tmp_path, ctx):
    with ServerProc(tiny_checkpoint, tmp_path / "sessions", tmp_path / "server.log") as server, \
            RawClient(ctx, server.address) as c:
        caps, _, start = open_session(c)
        n = caps.chunk_frames
        c.send(P.Trajectory(seq=1, w2c=forward_poses(start.w2c, 4 * n), intrinsics=INTR))
        # turn around: a path that leaves the one in flight; its frames must be the ones that arrive next
        back = forward_poses(start.w2c, n, step=-0.3)
        c.send(P.Trajectory(seq=2, w2c=back, intrinsics=INTR))
        c.send(P.Trajectory(seq=1, w2c=forward_poses(start.w2c, n), intrinsics=INTR))  # stale: ignored
        msgs = c.recv_until(clip_done)
        while msgs[-1].seq != 2:
            msgs = c.recv_until(clip_done)
        frames = [m for m in msgs if m.type == "frame"]
        while len(frames) < n:  # the turn's short first chunk, then the rest of its path
            frames += [m for m in c.recv_until(clip_done) if m.type == "frame"]
        assert len(frames) == n and all(m.seq == 2 for m in frames)
        np.testing.assert_allclose(np.stack([f.w2c for f in frames]), back)
        # nothing more is generated: the seq-1 remainder was replaced by seq 2
        with pytest.raises(TimeoutError):
            while True:
                m = c.recv(timeout=2.0)
                assert m.type != "frame" or m.seq == 2


def test_a_path_that_continues_the_one_in_flight_does_not_cancel_it(tiny_checkpoint, tmp_path, ctx):
    with ServerProc(tiny_checkpoint, tmp_path / "sessions", tmp_path / "server.log") as server, \
            RawClient(ctx, server.address) as c:
        caps, _, start = open_session(c)
        n = caps.chunk_frames
        walk = forward_poses(start.w2c, 4 * n)
        c.send(P.Trajectory(seq=1, w2c=walk, intrinsics=INTR))
        first = c.recv_until(lambda m: m.type == "frame")[-1]  # the short first chunk of a path from rest streams
        # the camera moved on along the same path (generation lags): the new path starts further along the old one
        c.send(P.Trajectory(seq=2, w2c=walk[2 * n:], intrinsics=INTR))
        msgs = [first] + c.recv_path(n + n // 2)  # the rest of the short chunk, then a full chunk of seq 2
        frames = [m for m in msgs if m.type == "frame"]
        done = [m for m in msgs if m.type == "clip_done"]
        assert [d.num_frames for d in done[:2]] == [n // 2, n]  # nothing cancelled, no second short chunk
        # the short chunk samples in one step (the server's default short_chunk_steps), the full one in the model's
        assert [sorted(k for k in d.timings if k.startswith("step_")) for d in done[:2]] == [
            ["step_0"], ["step_0", "step_1"]]
        assert [f.seq for f in frames[: n // 2]] == [1] * (n // 2) and all(f.seq == 2 for f in frames[n // 2:])
        np.testing.assert_allclose(frames[n // 2].w2c, walk[2 * n])  # it jumped ahead to the new start


def test_a_path_that_starts_on_generated_poses_is_not_generated_again(tiny_checkpoint, tmp_path, ctx):
    """A server faster than real time is ahead of the client's clock: the client's next path starts on poses whose
    frames it already has. They are skipped (generated again, the video would walk backwards)."""
    with ServerProc(tiny_checkpoint, tmp_path / "sessions", tmp_path / "server.log") as server, \
            RawClient(ctx, server.address) as c:
        caps, _, start = open_session(c)
        n = caps.chunk_frames
        walk = forward_poses(start.w2c, 4 * n)
        c.send(P.Trajectory(seq=1, w2c=walk[: n + n // 2], intrinsics=INTR))
        c.recv_path(n + n // 2)  # a short chunk, then a full one: walk[:1.5n] generated, the server idle
        c.send(P.Trajectory(seq=2, w2c=walk[n : 4 * n], intrinsics=INTR))  # starts half a chunk back
        msgs = c.recv_path(n)
        frames = [m for m in msgs if m.type == "frame"]
        done = [m for m in msgs if m.type == "clip_done"]
        assert done[0].num_frames == n  # it continues the path: a full chunk, not a fresh path's short one
        np.testing.assert_allclose(frames[0].w2c, walk[n + n // 2], atol=1e-6)  # after the last generated pose
        # a session opened anew has generated nothing: the same walk starts from its first pose, as a fresh path
        c.send(P.Cancel(seq=-1))  # seq 2's later chunks: stopped, or finished if their frames were going out
        c.send(P.OpenProcedural(seed=1))
        start2 = c.recv_until(lambda m: m.type == "frame" and m.seq == 0)[-1]
        np.testing.assert_allclose(start2.w2c, start.w2c)
        # the same scene from the same start: a path beginning where the old session's generation ended
        c.send(P.Trajectory(seq=3, w2c=walk[2 * n + n // 4 :], intrinsics=INTR))
        got = c.recv_until(lambda m: m.type == "clip_done" and m.seq == 3)
        msgs = [m for m in got if getattr(m, "seq", None) == 3]
        assert msgs[-1].num_frames == n // 2  # the new session has generated nothing: a fresh path's short chunk
        np.testing.assert_allclose(next(m for m in msgs if m.type == "frame").w2c, walk[2 * n + n // 4], atol=1e-6)


def test_a_continuing_path_follows_what_is_generated_and_skips_what_already_is():
    from engine.server.server import continuation

    walk = forward_poses(np.eye(4), 16)  # 4 cm per frame; the first 8 poses generated or in flight, 8 queued
    # yawed: the same centres, the view turning a little more every frame
    assert continuation(walk[3:11], walk, covered=8) == 5  # on the path, 5 of its poses are generated already
    assert continuation(yawed(walk[3:11], 5.0), walk, covered=8) is None  # a turn that begins on the path
    assert continuation(yawed(walk[3:11], 0.15), walk, covered=8) == 5  # within the follow tolerance
    assert continuation(yawed(walk[10:], 5.0), walk, covered=8) == 0  # lagging: it starts past what is generated
    assert continuation(forward_poses(np.eye(4), 8, step=-0.3), walk, covered=8) is None  # somewhere else
    stop = np.repeat(walk[3:4], 8, axis=0)  # the user stopped where the chunk in flight walks on
    assert continuation(stop, walk, covered=8) is None


def test_an_idle_server_prepares_the_next_chunk_and_an_edit_makes_it_stale(tiny_checkpoint, tmp_path, ctx):
    with inproc_server(tiny_checkpoint, tmp_path / "sessions") as server, \
            RawClient(ctx, server.transport.address) as c:
        caps, full, start = open_image_session(c)  # (a procedural scene would make a GL context in this process)
        session = lambda: next(iter(server.slots.values())).session  # noqa: E731
        wait_for(lambda: session() is not None and session().prepared, timeout=30)
        n = caps.chunk_frames
        c.send(P.Trajectory(seq=1, w2c=forward_poses(start.w2c, n // 2), intrinsics=INTR))
        done = c.recv_until(clip_done)[-1]
        assert done.timings["prepared_ms"] > 0 and done.timings["retrieval"] == 0.0  # it started from the context
        wait_for(lambda: session().prepared, timeout=30)  # idle again: the next one is prepared
        version = session().memory.version
        lo, hi = full.added_xyz.min(0), np.median(full.added_xyz, 0)
        c.send(P.EditRemoveBox(edit_id=1, box_min=lo.astype(np.float64), box_max=hi.astype(np.float64)))
        assert c.recv().type == "ack" and len(c.recv().removed_ids) > 0
        assert session().memory.version > version  # the context prepared before the edit is stale now ...
        wait_for(lambda: session().prepared, timeout=30)  # ... and spare time prepared it again


def test_the_server_reports_its_sessions_in_memory_bytes(tiny_checkpoint, tmp_path, ctx):
    import json

    from engine.bench.load import reported_heap_free_bytes, reported_session_bytes

    status_file = tmp_path / "sessions" / "status.json"
    assert np.isnan(reported_session_bytes(tmp_path / "sessions"))  # no status yet: unknown, not zero
    with inproc_server(tiny_checkpoint, tmp_path / "sessions") as server, \
            RawClient(ctx, server.transport.address) as c:
        caps, full, start = open_image_session(c)
        wait_for(lambda: status_file.exists() and json.loads(status_file.read_text())["sessions"], timeout=30)
        first = json.loads(status_file.read_text())
        session = next(iter(server.slots.values())).session
        assert first["sessions"][0]["points"] == len(full.added_ids)
        # the memory at its allocated capacity, with its indexes, and the stored start frame at least
        assert first["session_bytes"] >= full.added_xyz.nbytes + session.frames[0].rgb.nbytes
        c.send(P.Trajectory(seq=1, w2c=forward_poses(start.w2c, caps.chunk_frames), intrinsics=INTR))
        c.recv_until(clip_done)
        wait_for(lambda: json.loads(status_file.read_text())["chunks"] >= 1, timeout=30)
        after = json.loads(status_file.read_text())
        assert after["session_bytes"] > first["session_bytes"]  # new stored frames and their latents
        assert reported_session_bytes(tmp_path / "sessions") == after["session_bytes"]
        # and what the allocator holds free (glibc here): freed memory that still counts in RSS
        assert isinstance(after["heap_free_bytes"], int) and after["heap_free_bytes"] > 0
        assert reported_heap_free_bytes(tmp_path / "sessions") == after["heap_free_bytes"]


def test_a_failing_preparation_is_logged_once_and_the_chunk_still_comes(tiny_checkpoint, tmp_path, ctx):
    from engine.pipeline import WorldSession

    calls = []

    def broken_prepare(self, *args, **kwargs):
        calls.append(self.context_key)
        raise RuntimeError("no context today")

    original = WorldSession.prepare
    WorldSession.prepare = broken_prepare
    try:
        with inproc_server(tiny_checkpoint, tmp_path / "sessions") as server, \
                RawClient(ctx, server.transport.address) as c:
            caps, _, start = open_image_session(c)
            wait_for(lambda: len(calls) == 1, timeout=30)
            c.send(P.Heartbeat(t=0.0, seq=1))  # the loop went round since: the same context was not tried again
            assert c.recv().type == "heartbeat" and len(calls) == 1
            c.send(P.Trajectory(seq=1, w2c=forward_poses(start.w2c, caps.chunk_frames // 2), intrinsics=INTR))
            done = c.recv_until(clip_done)[-1]
            assert done.timings["retrieval"] > 0 and "prepared_ms" not in done.timings  # built in the chunk
            wait_for(lambda: len(calls) >= 2, timeout=30)  # a new history: tried once more ...
            c.send(P.Heartbeat(t=0.0, seq=2))
            assert c.recv().type == "heartbeat"
            time.sleep(0.3)  # ... and only once: the idle loop (20 ms) went round many times
            assert len(calls) == 2 and calls[0] != calls[1]
    finally:
        WorldSession.prepare = original


def test_sigkill_and_resume_loses_nothing_acknowledged(tiny_checkpoint, tmp_path, ctx):
    sessions = tmp_path / "sessions"
    server = ServerProc(tiny_checkpoint, sessions, tmp_path / "server.log")
    identity = b"explorer-" + os.urandom(4).hex().encode()
    c = RawClient(ctx, server.address, identity)
    caps, _, start = open_session(c)
    n = caps.chunk_frames
    c.send(P.Trajectory(seq=1, w2c=forward_poses(start.w2c, n), intrinsics=INTR))
    done = c.recv_path(n)[-1]
    c.send(P.EditRemoveBox(edit_id=1, box_min=np.full(3, -0.5), box_max=np.full(3, 0.5)))
    ack = c.recv()
    assert ack.type == "ack"
    version = c.recv().version_to
    server, c, _ = kill_and_resume(server, c, ctx, identity, version)
    with server, c:
        c.send(P.Trajectory(seq=2, w2c=forward_poses(start.w2c, n, offset=n + 1), intrinsics=INTR))
        frames = [m for m in c.recv_until(clip_done) if m.type == "frame"]
        assert frames[0].index == done.first_frame + done.num_frames  # the video continues where it was


def test_bad_input_gets_errors_and_server_keeps_serving(tiny_checkpoint, tmp_path, ctx):
    with ServerProc(tiny_checkpoint, tmp_path / "sessions", tmp_path / "server.log") as server, \
            RawClient(ctx, server.address) as c:
        c.sock.send_multipart([b"\x93garbage"])
        assert c.recv().code == P.ErrorCode.MALFORMED
        c.send(P.Trajectory(seq=1, w2c=forward_poses(np.eye(4), 2), intrinsics=INTR))
        assert c.recv().code == P.ErrorCode.NO_SESSION
        c.send(P.Frame.example())
        assert c.recv().code == P.ErrorCode.INVALID  # a server-to-client message
        c.send(P.Load(name="nothing_here"))
        assert c.recv().code == P.ErrorCode.NOT_FOUND
        frames = P.encode(P.Hello())
        header = frames[0]
        c.sock.send_multipart([bytes(header).replace(b"\x01", b"\x07", 1)])  # wrong protocol version
        assert c.recv().type == "error"
        caps, _, start = open_session(c)  # still serving
        bad = forward_poses(start.w2c, caps.chunk_frames)
        bad[1, 0, 0] = 2.0  # not a rotation (the protocol only checks finiteness and the last row)
        try:
            c.send(P.Trajectory(seq=1, w2c=bad, intrinsics=INTR))
        except P.ProtocolError:
            pass  # refused already at the sender
        else:
            assert c.recv().type == "error"
        c.send(P.Heartbeat(t=1.0, seq=3))
        assert c.recv().type == "heartbeat"


def test_broker_with_two_workers(tiny_checkpoint, tmp_path, ctx):
    server = ServerProc(tiny_checkpoint, tmp_path / "sessions", tmp_path / "server.log", extra=["--workers", "2"])
    clients = [RawClient(ctx, server.address) for _ in range(2)]
    try:
        for i, c in enumerate(clients):
            c.send(P.Hello())
            assert c.recv(timeout=60).type == "capabilities"
            c.send(P.OpenProcedural(seed=i))
            assert [c.recv().type for _ in range(3)] == ["ack", "memory_delta", "frame"]
        for c in clients:
            c.send(P.Heartbeat(t=0.0))
            assert c.recv().type == "heartbeat"
    finally:
        for c in clients:
            c.close()
        server.stop()


def test_an_input_stops_a_preparation_at_its_next_stage(tiny_checkpoint, tmp_path, ctx, monkeypatch):
    import inspect

    import engine.pipeline

    entered, stopped = [], []
    real = engine.pipeline.prepare_context

    def slow_prepare_context(*args):  # a preparation that would take 20 s unless asked to stop
        should_stop = inspect.signature(real).bind(*args).arguments["should_stop"]
        entered.append(time.monotonic())
        while time.monotonic() - entered[-1] < 20:
            if should_stop():
                stopped.append(time.monotonic())
                return None
            time.sleep(0.01)
        return real(*args)

    monkeypatch.setattr(engine.pipeline, "prepare_context", slow_prepare_context)
    with inproc_server(tiny_checkpoint, tmp_path / "sessions") as server, \
            RawClient(ctx, server.transport.address) as c:
        caps, _, start = open_image_session(c)
        wait_for(lambda: entered, timeout=30)
        t0 = time.monotonic()
        c.send(P.Trajectory(seq=1, w2c=forward_poses(start.w2c, caps.chunk_frames // 2), intrinsics=INTR))
        done = c.recv_until(clip_done)[-1]
        assert stopped and time.monotonic() - t0 < 10  # not after the preparation's 20 s
        assert "prepared_ms" not in done.timings and done.num_frames == caps.chunk_frames // 2
        session = next(iter(server.slots.values())).session
        assert session.num_frames == 1 + caps.chunk_frames // 2
