"""Fault injection on the generation server: SIGKILL mid-clip and resume, a client killed mid-stream, a full disk on
autosave, corrupt session files. Each fault must leave the server serving and nothing acknowledged lost."""

import errno
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from engine.pipeline import WorldModel, WorldSession
from engine.server import protocol as P

from .helpers import (INTR, RawClient, ServerProc, forward_poses, inproc_server, kill, kill_and_resume,
                      open_image_session, open_session, turn_poses, wait_for)


def test_sigkill_mid_clip_then_resume_keeps_everything_acknowledged(tiny_checkpoint, tmp_path, ctx):
    sessions = tmp_path / "sessions"
    server = ServerProc(tiny_checkpoint, sessions, tmp_path / "server.log")
    identity = b"explorer-" + os.urandom(4).hex().encode()
    c = RawClient(ctx, server.address, identity)
    caps, full, start = open_session(c)
    n = caps.chunk_frames
    points = dict(zip(full.added_ids.tolist(), full.added_xyz.tolist()))  # the client's copy of the memory

    def apply(delta):
        for i in delta.removed_ids.tolist():
            points.pop(i, None)
        points.update(zip(delta.added_ids.tolist(), delta.added_xyz.tolist()))

    c.send(P.Trajectory(seq=1, w2c=forward_poses(start.w2c, n), intrinsics=INTR))
    msgs = c.recv_path(n)
    for m in msgs:
        if m.type == "memory_delta":
            apply(m)
    done = msgs[-1]
    # an edit: acknowledged only after the autosave that holds it
    c.send(P.EditInsertPrimitive(edit_id=1, shape=P.Primitive.BOX, center=np.array([0.0, 1.0, 2.0]),
                                 size=np.array([0.3, 0.3, 0.3]), rgb=np.array([250, 0, 0], np.uint8)))
    ack, delta = c.recv(), c.recv()
    assert ack.type == "ack" and ack.ref_id == 1 and delta.type == "memory_delta"
    apply(delta)
    acked_version = delta.version_to
    # a long walk; kill the server as soon as its first clip streams (mid-clip: decode still running, the
    # clip's memory update and ClipDone not yet done)
    c.send(P.Trajectory(seq=2, w2c=forward_poses(start.w2c, 6 * n, offset=n + 1), intrinsics=INTR))
    first = c.recv_until(lambda m: m.type == "frame")[-1]
    assert first.seq == 2
    # back at the state the client had acknowledged: the edit's version, point for point (the killed clip is gone,
    # its memory update never happened; it started less than the autosave interval after the edit's save)
    server, c, resumed = kill_and_resume(server, c, ctx, identity, acked_version)
    with server, c:
        order = np.argsort(resumed.added_ids)
        ids = sorted(points)
        np.testing.assert_array_equal(resumed.added_ids[order], ids)
        np.testing.assert_array_equal(resumed.added_xyz[order], np.array([points[i] for i in ids], np.float32))
        # turning shows space the memory has not seen, so the clip adds points to the resumed memory
        c.send(P.Trajectory(seq=3, w2c=turn_poses(start.w2c, n), intrinsics=INTR))
        msgs = c.recv_path(n)
        frames = [m for m in msgs if m.type == "frame"]
        # the video continues after the last completed clip: the killed clip's frames are generated again
        assert [f.index for f in frames] == list(range(done.first_frame + done.num_frames,
                                                       done.first_frame + done.num_frames + n))
        assert msgs[-1].memory_version > acked_version


DEAD_CLIENT = textwrap.dedent("""
    import sys, numpy as np
    from explorer.client import Client
    from engine.server import protocol as P
    from engine import geometry
    from tests.reliability.helpers import image_open_message
    c = Client(sys.argv[1])
    opened = False
    while True:
        for m in c.poll(100):
            if m.type == "capabilities" and not opened:
                c.open(image_open_message(5, m.width)); opened = True
            elif m.type == "frame" and m.seq == 0:
                c2w = geometry.invert_se3(np.asarray(m.w2c))
                poses = []
                for i in range(1, int(sys.argv[2]) + 1):
                    p = c2w.copy(); p[:3, 3] += p[:3, 2] * 0.01 * i; poses.append(geometry.invert_se3(p))
                c.send(P.Trajectory(seq=1, w2c=np.stack(poses), intrinsics=geometry.fov_to_intrinsics(60.0)))
            elif m.type == "frame":
                print("STREAMING", flush=True)
""")


def test_client_killed_mid_stream_others_served_and_its_generation_stops(tiny_checkpoint, tmp_path, ctx):
    timeout_s = 1.5  # `spatia serve` uses 30 s; the in-process server takes a short one so the test stays short
    with inproc_server(tiny_checkpoint, tmp_path / "sessions", client_timeout_s=timeout_s) as server:
        address = server.transport.address
        poses = 64 * 8  # far more than the server can generate before the timeout
        dead = subprocess.Popen([sys.executable, "-c", DEAD_CLIENT, address, str(poses)], stdout=subprocess.PIPE,
                                text=True, cwd=Path(__file__).resolve().parents[2])
        try:
            assert dead.stdout.readline().strip() == "STREAMING"
        finally:
            kill(dead)
            dead.stdout.close()
        t_killed = time.monotonic()
        slot = next(s for s in server.slots.values() if s.session is not None)
        other = RawClient(ctx, address)
        try:
            caps, _, start = open_image_session(other, seed=2)
            # the other explorer keeps being served while the dead one's clips are still queued
            other.send(P.Trajectory(seq=1, w2c=forward_poses(start.w2c, caps.chunk_frames), intrinsics=INTR))
            msgs = other.recv_path(caps.chunk_frames)
            assert [m.index for m in msgs if m.type == "frame"] == list(range(1, caps.chunk_frames + 1))
            # after the timeout (and the chunk in flight then) nothing more is generated for the dead client
            wait_for(lambda: time.monotonic() - t_killed > timeout_s and server.active is not slot, timeout=30)
            left = len(slot.queue)
            frames = server.stats["frames"]
            time.sleep(1.0)
            assert len(slot.queue) == left > 0  # its poses wait (resume on reconnect) but are not generated
            assert server.stats["frames"] == frames  # the server idles: nobody else asked for anything
            other.send(P.Heartbeat(t=1.0, seq=9))
            assert other.recv(5.0).type == "heartbeat"
        finally:
            other.close()


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (root can mount one; else None and the test simulates ENOSPC in-process)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
                             capture_output=True).returncode == 0
    yield disk if mounted else None
    if mounted:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> Path:
    """Write a filler file until the file system is full (ENOSPC)."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


def test_full_disk_on_autosave_gives_clear_errors_and_keeps_the_previous_save(tiny_checkpoint, small_disk, tmp_path,
                                                                              ctx, monkeypatch):
    model = WorldModel.load(tiny_checkpoint)
    if small_disk is not None:  # a real full file system under a real server process
        sessions = small_disk / "sessions"
        server = ServerProc(tiny_checkpoint, sessions, tmp_path / "server.log")
        address, alive = server.address, lambda: server.alive
    else:  # no mount: the same server in-process, its frames writer failing like a full disk
        pytest.skip("cannot mount a tmpfs here (not root?): the simulated variant runs in test_full_disk_simulated")
    identity = b"disk-" + os.urandom(4).hex().encode()
    c = RawClient(ctx, address, identity)
    try:
        caps, _, start = open_session(c)
        saved = sessions / "autosave" / identity.hex()
        version_saved = WorldSession.load(saved, model).memory.version
        filler = _fill(small_disk)
        # an edit needs an autosave before its Ack: with the disk full it is refused, saying why
        c.send(P.EditInsertPrimitive(edit_id=1, shape=P.Primitive.SPHERE, center=np.array([0.0, 1.0, 2.0]),
                                     size=np.array([0.4, 0.4, 0.4]), rgb=np.array([0, 250, 0], np.uint8)))
        err = c.recv()
        assert err.type == "error" and err.code == P.ErrorCode.INTERNAL and err.ref_type == "edit_insert_primitive"
        assert "could not save the session" in err.message and "No space left on device" in err.message
        # a clip ends with an autosave (its queue runs dry): the failure is reported, the server keeps serving
        c.send(P.Trajectory(seq=1, w2c=forward_poses(start.w2c, caps.chunk_frames), intrinsics=INTR))
        msgs = c.recv_path(caps.chunk_frames)
        errors = [m for m in msgs if m.type == "error"]
        assert errors and "No space left on device" in errors[0].message
        assert alive()
        # the previous save is intact and loadable
        assert WorldSession.load(saved, model).memory.version == version_saved
        # space again: the next change is saved and acknowledged
        filler.unlink()
        c.send(P.EditUndo(edit_id=2))
        ack = c.recv()
        assert ack.type == "ack" and ack.ref_id == 2
        delta = c.recv()
        assert WorldSession.load(saved, model).memory.version == delta.version_to > version_saved
    finally:
        c.close()
        server.stop()


def test_full_disk_simulated_in_process(tiny_checkpoint, tmp_path, ctx, monkeypatch):
    """Where no tmpfs can be mounted: the frames file write raises ENOSPC inside a server in this process."""
    import engine.pipeline as pipeline

    model = WorldModel.load(tiny_checkpoint)
    with inproc_server(tiny_checkpoint, tmp_path / "sessions") as server:
        c = RawClient(ctx, server.transport.address, b"simulated-disk")
        try:
            open_image_session(c)
            saved = tmp_path / "sessions" / "autosave" / b"simulated-disk".hex()
            version_saved = WorldSession.load(saved, model).memory.version

            def full_disk(*args, **kwargs):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            monkeypatch.setattr(pipeline, "write_npz", full_disk)
            c.send(P.EditRemoveBox(edit_id=1, box_min=np.full(3, -0.5), box_max=np.full(3, 0.5)))
            err = c.recv()
            assert err.type == "error" and "No space left on device" in err.message
            assert WorldSession.load(saved, model).memory.version == version_saved
            monkeypatch.undo()
            c.send(P.EditUndo(edit_id=2))
            assert c.recv().type == "ack"
        finally:
            c.close()


def test_corrupt_session_files_are_refused_clearly_and_others_unaffected(tiny_checkpoint, tmp_path, ctx):
    sessions = tmp_path / "sessions"
    victim = b"victim-" + os.urandom(4).hex().encode()
    session = WorldSession(WorldModel.load(tiny_checkpoint))  # sessions written as the server writes them
    session.open_procedural(1)
    for name in ("good", "torn_frames", "torn_memory", "garbled_meta"):
        session.save(sessions / "saved" / name)
    session.save(sessions / "autosave" / victim.hex())
    saved = sessions / "saved"
    (saved / "torn_frames" / "frames.npz").write_bytes((saved / "torn_frames" / "frames.npz").read_bytes()[:300])
    memory_file = saved / "torn_memory" / "memory.safetensors"
    memory_file.write_bytes(memory_file.read_bytes()[:-100])
    (saved / "garbled_meta" / "session.json").write_text('{"format": "spatia-session", "width": ')
    autosave = sessions / "autosave" / victim.hex() / "frames.npz"
    autosave.write_bytes(b"PK\x03\x04" + os.urandom(200))  # a zip header, then garbage

    server = ServerProc(tiny_checkpoint, sessions, tmp_path / "server.log", extra=["--resume"])
    a, v = RawClient(ctx, server.address), RawClient(ctx, server.address, victim)
    try:
        a.send(P.Hello())
        assert a.recv().type == "capabilities"
        for name, fault in (("torn_frames", "frames.npz"), ("torn_memory", "memory.safetensors"),
                            ("garbled_meta", "session.json")):
            a.send(P.Load(name=name))
            err = a.recv()
            assert err.type == "error" and err.ref_type == "load", err
            assert err.code == P.ErrorCode.INVALID and "cannot load session" in err.message and name in err.message
            if fault != "session.json":
                assert fault in err.message  # names the damaged file
        # the victim's autosave is damaged: it is told it has no session (and can open a new one)
        v.send(P.Hello())
        assert v.recv().type == "capabilities"
        v.send(P.Resync(have_version=3))
        err = v.recv()
        assert err.type == "error" and err.code == P.ErrorCode.NO_SESSION
        assert server.alive
        assert "autosave" in server.log() and "unusable" in server.log()
        # others are unaffected: the intact save loads, and a fresh session streams
        a.send(P.Load(name="good"))
        assert [a.recv().type for _ in range(3)] == ["ack", "memory_delta", "frame"]
        caps, _, start = open_session(v, seed=4)
        v.send(P.Trajectory(seq=1, w2c=forward_poses(start.w2c, caps.chunk_frames), intrinsics=INTR))
        assert sum(m.type == "frame" for m in v.recv_path(caps.chunk_frames)) == caps.chunk_frames
    finally:
        a.close()
        v.close()
        server.stop()


def test_a_slow_autosave_is_spaced_out_while_the_session_streams(tiny_checkpoint, tmp_path, ctx, monkeypatch):
    """A long session's autosave writes every stored frame and point, so it slows down as the session grows; while
    it streams, its autosaves take at most `autosave_share` of the time instead of running every interval."""
    saves = []
    save = WorldSession.save

    def slow_save(self, directory):
        time.sleep(0.05)  # a grown session
        saves.append(time.monotonic())
        return save(self, directory)

    monkeypatch.setattr(WorldSession, "save", slow_save)
    with inproc_server(tiny_checkpoint, tmp_path / "sessions", autosave_interval_s=0.1, autosave_share=0.1) as server:
        c = RawClient(ctx, server.transport.address, b"slow-autosave")
        try:
            caps, _, start = open_image_session(c)
            opened = len(saves)
            n = 12 * caps.chunk_frames
            t0 = time.monotonic()
            c.send(P.Trajectory(seq=1, w2c=forward_poses(start.w2c, n), intrinsics=INTR))
            c.recv_path(n)
            streamed = time.monotonic() - t0
        finally:
            c.close()
    during = [t for t in saves[opened:] if t < t0 + streamed]
    gaps = np.diff(during)
    # every 0.5 s at most (0.05 s / 0.1) instead of every 0.1 s; the last save (the queue ran dry) may come sooner
    assert len(during) >= 2 and (gaps[:-1] >= 0.45).all(), (streamed, gaps)
    assert len(during) <= streamed / 0.45 + 2
