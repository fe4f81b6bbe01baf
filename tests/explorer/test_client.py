"""The client against a real ROUTER: handshake, reconnect with the same identity and session resume, heartbeats,
CURVE; the pose streamer's send rules; the local server process; session inputs read by `spatia explore`."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from engine.geometry import look_at, write_intrinsics_txt, write_w2c_txt
from engine.server.protocol import (Ack, Capabilities, Frame, Heartbeat, Hello, MemoryDelta, OpenImage, OpenPoints,
                                    OpenProcedural, OpenRelease, Resync, Trajectory, decode)
from explorer.camera import CameraController
from explorer.client import Client, ClientConfig, LinkState, LocalServer, PoseStreamer, StreamConfig, free_tcp_address

sys.path.insert(0, str(Path(__file__).parent))
from scripted_server import ScriptedServer  # noqa: E402

FAST = ClientConfig(heartbeat_s=0.1, waiting_s=0.4, reconnect_s=1.2)


def pump_until(client, pred, timeout_s=10.0):
    """Poll the client until pred(list of all messages so far) holds; returns the messages."""
    got = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got += client.poll(20)
        if pred(got):
            return got
    raise TimeoutError(f"condition not met; got {[m.type for m in got]}, state {client.state}, "
                       f"notices {client.notices}")


def has(kind, n=1):
    return lambda msgs: sum(isinstance(m, kind) for m in msgs) >= n


def open_session(client):
    """Wait for Capabilities, open a procedural session, wait for its memory and start frame; all messages."""
    first = pump_until(client, has(Capabilities))
    client.open(OpenProcedural(seed=3))
    return first + pump_until(client, lambda ms: has(MemoryDelta)(ms) and has(Frame)(ms))


# --------------------------------------------------------------------------------------------- the link
def test_handshake_open_and_heartbeats():
    with ScriptedServer() as server:
        client = Client(server.address, config=FAST)
        try:
            assert client.state is LinkState.CONNECTING
            msgs = open_session(client)
            assert client.state is LinkState.CONNECTED and client.session_open
            assert [m.type for m in msgs] == ["capabilities", "ack", "memory_delta", "frame"]
            assert msgs[2].full and msgs[3].seq == 0
            time.sleep(0.3)
            pump_until(client, lambda _: len(server.messages(Heartbeat)) >= 2)
            assert client.state is LinkState.CONNECTED  # heartbeats answered: still connected, nothing returned
            assert server.identities() == [client.identity] and len(client.identity) == 32
        finally:
            client.close()


def test_server_restart_reconnects_with_the_same_identity_and_resumes():
    with ScriptedServer() as server:
        client = Client(server.address, config=FAST)
        try:
            open_session(client)
            client.have_version = 1
            server.restart(keep_sessions=True, down_s=0.5)  # like `spatia serve --resume` coming back
            msgs = pump_until(client, lambda ms: any(isinstance(m, MemoryDelta) and m.full for m in ms))
            assert client.reconnects >= 1 and client.state is LinkState.CONNECTED
            assert server.identities() == [client.identity]  # one identity across both sockets
            kinds = [type(m) for m in server.messages()]
            assert kinds.count(Hello) >= 2 and Resync in kinds[kinds.index(Hello, 1):]
            assert server.messages(Resync)[-1].have_version == 1
            assert any(isinstance(m, Capabilities) for m in msgs)
            assert any("resumed" in n for n in client.notices) and any("reconnecting" in n for n in client.notices)
        finally:
            client.close()


def test_a_server_that_lost_the_session_gets_it_opened_again():
    with ScriptedServer() as server:
        client = Client(server.address, config=FAST)
        try:
            open_session(client)
            server.restart(keep_sessions=False)
            pump_until(client, lambda ms: any(isinstance(m, Ack) and m.ref_type == "open_procedural" for m in ms))
            opens = server.messages(OpenProcedural)
            assert len(opens) == 2 and opens[1].seed == 3  # the remembered open message, sent again
            assert any("opening it again" in n for n in client.notices)
            assert client.session_open
        finally:
            client.close()


def test_a_silent_server_means_waiting_then_a_new_socket():
    with ScriptedServer() as server:
        client = Client(server.address, config=FAST)
        try:
            open_session(client)
            server.silent = True
            pump_until(client, lambda _: client.state is LinkState.WAITING, timeout_s=3)
            pump_until(client, lambda _: client.reconnects >= 1, timeout_s=5)
            assert client.state is LinkState.RECONNECTING
            server.silent = False
            pump_until(client, lambda ms: any(isinstance(m, MemoryDelta) and m.full for m in ms))
            assert client.state is LinkState.CONNECTED
            assert len(server.messages(Hello)) >= 2 and server.identities() == [client.identity]
        finally:
            client.close()


def test_curve_keys(tmp_path):
    from engine.server.security import ServerSecurity, make_keys

    keys = make_keys(tmp_path / "keys")
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    security = ServerSecurity(ctx, keys.root)
    address = free_tcp_address()
    security.prepare(router, address)
    router.bind(address)
    client = Client(address, keys_dir=keys.root, config=FAST)
    try:
        assert router.poll(5000)
        frames = router.recv_multipart()
        assert frames[0] == client.identity and isinstance(decode(frames[1:]), Hello)
    finally:
        client.close()
        router.close(0)
        security.close()
        ctx.term()
    with pytest.raises(FileNotFoundError, match="client.key_secret"):
        Client(address, keys_dir=tmp_path / "nowhere")


# --------------------------------------------------------------------------------------------- streaming
def fresh_streamer(**kw) -> PoseStreamer:
    s = PoseStreamer(StreamConfig(**kw))
    s.configure(fps=10.0, chunk_frames=4, intrinsics=np.array([0.8, 1.4, 0.5, 0.5]))
    return s


def answer(streamer, traj, n, t_input=None):
    for i in range(n):
        streamer.on_frame(Frame(index=100 + i, seq=traj.seq, rgb=np.zeros((2, 2, 3), np.uint8), w2c=traj.w2c[i],
                                t_input=traj.t_input if t_input is None else t_input))


def test_streamer_sends_on_input_feeds_while_moving_and_rests():
    s, cam = fresh_streamer(min_interval_s=0.2, stall_s=5.0), CameraController()
    assert s.update(cam, 0.0) is None  # still camera: nothing to send
    cam.key_down("w")
    s.note_input(0.05)
    traj = s.update(cam, 0.1)
    assert isinstance(traj, Trajectory) and traj.seq == 1 and len(traj.w2c) == 8  # two chunks of 4
    assert traj.t_input == 0.05
    np.testing.assert_allclose(traj.w2c, cam.predict(8, 10.0))
    for t in (0.2, 0.5, 1.0):  # holding w: no new input, the server still owes poses
        cam.update(0.1)
        assert s.update(cam, t) is None
    answer(s, traj, 4)
    assert s.pending == 4 and s.update(cam, 1.1) is None  # half answered: not low yet
    answer(s, traj, 1)
    feed = s.update(cam, 1.2)  # fewer than a chunk of poses left: keep the server fed
    assert feed is not None and feed.seq == 2 and feed.t_input == 1.2
    cam.key_up("w")
    s.note_input(1.3)
    stop = s.update(cam, 1.3)  # a change overtakes a feed chunk at once: the path now slows to a halt
    assert stop is not None and stop.seq == 3 and stop.t_input == 1.3
    cam.key_down("a")
    s.note_input(1.35)
    assert s.update(cam, 1.4) is None  # but waits for an input-driven chunk's first frame ...
    answer(s, stop, 1)
    assert s.update(cam, 1.45) is None  # ... and min_interval_s since it went out ...
    strafe = s.update(cam, 1.55)
    assert strafe is not None and strafe.seq == 4 and strafe.t_input == 1.35  # ... then goes out
    cam.key_up("a")
    s.note_input(1.6)
    answer(s, strafe, 1)
    stop = s.update(cam, 1.8)
    assert stop is not None and stop.seq == 5
    answer(s, stop, 8)
    for _ in range(20):
        cam.update(0.1)
    assert not cam.moving and s.update(cam, 3.5) is None  # resting: the server idles


def test_streamer_counts_poses_the_server_skipped_as_answered():
    s, cam = fresh_streamer(), CameraController()
    cam.key_down("w")
    s.note_input(0.0)
    traj = s.update(cam, 0.0)  # 8 poses
    answer(s, traj, 5)
    feed = s.update(cam, 0.1)  # fewer than a chunk of poses left: the next path
    assert feed is not None and feed.seq == 2 and s.pending == len(feed.w2c)
    # the server skips the poses of the new path it had generated: its first frame shows the path's 4th pose
    s.on_frame(Frame(index=200, seq=feed.seq, rgb=np.zeros((2, 2, 3), np.uint8), w2c=feed.w2c[3], t_input=0.1))
    assert s.pending == len(feed.w2c) - 4 and s.current.received == 1
    assert s.covered_until() == pytest.approx(0.1 + 4 / 10.0)
    # a path coming to rest repeats its last pose: each frame of it answers the next one
    rest = np.repeat(feed.w2c[4:5], 4, axis=0)
    s.current.sent_w2c = np.concatenate([feed.w2c[:4], rest])
    for _ in range(4):
        s.on_frame(Frame(index=201, seq=feed.seq, rgb=np.zeros((2, 2, 3), np.uint8), w2c=rest[0], t_input=0.1))
    assert s.pending == 0


def test_streamer_ignores_input_that_leaves_the_path_as_it_was_and_honours_the_interval():
    s, cam = fresh_streamer(min_interval_s=0.5, stall_s=1.0), CameraController()
    clock = [0.0]

    def at(t):  # the camera lives on the same clock as the streamer
        cam.update(t - clock[0])
        clock[0] = t
        return t

    cam.key_down("w")
    s.note_input(0.0)
    first = s.update(cam, at(0.0))
    answer(s, first, 1)
    s.note_input(0.2)  # an event that does not change the motion (a key repeat, say)
    assert s.update(cam, at(0.6)) is None and not s.input_dirty
    cam.mouse_motion(200, 0)  # a real turn
    s.note_input(0.65)
    assert s.update(cam, at(0.7)) is not None
    cam.mouse_motion(200, 0)
    s.note_input(0.75)
    assert s.update(cam, at(0.8)) is None  # within min_interval and unanswered
    assert s.update(cam, at(1.75)) is not None  # stall_s passed without frames: sent anyway


def test_latency_is_measured_once_per_input_chunk_and_poses_cross_to_the_server_world():
    flip = np.diag([1.0, -1.0, -1.0, 1.0])
    s, cam = fresh_streamer(), CameraController()
    cam.key_down("d")
    s.note_input(2.0)
    traj = s.update(cam, 2.1, to_server=lambda w: w @ flip)
    np.testing.assert_allclose(traj.w2c, cam.predict(8, 10.0) @ flip)
    frame = Frame(index=5, seq=traj.seq, rgb=np.zeros((2, 2, 3), np.uint8), w2c=traj.w2c[0], t_input=traj.t_input)
    lat = s.latency(frame, 2.9)
    assert lat[0] == pytest.approx(0.9) and lat[1] >= 0
    assert s.latency(frame, 3.0) is None
    answer(s, traj, 7)
    feed = s.update(cam, 3.0)
    assert s.latency(Frame(index=9, seq=feed.seq, rgb=frame.rgb, w2c=frame.w2c, t_input=feed.t_input), 3.2) is None
    s.reset()
    assert s.pending == 0 and s.update(cam, 3.3).seq == feed.seq + 1  # seq keeps growing after a reset


# --------------------------------------------------------------------------------------------- local server
def test_local_server_process_restart_and_stop(tmp_path):
    script = Path(__file__).parent / "scripted_server.py"
    server = LocalServer(lambda address, resume: [sys.executable, str(script), "--bind", address,
                                                  *(["--resume"] if resume else [])], tmp_path / "server.log")
    server.start()
    client = Client(server.address, config=FAST)
    try:
        open_session(client)
        os.kill(server.process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.poll() == -signal.SIGKILL
        server.restart()  # a fresh process on the same address: it never saw this session
        pump_until(client, lambda ms: any(isinstance(m, Ack) and m.ref_type == "open_procedural" for m in ms),
                   timeout_s=15)
        assert client.reconnects >= 1 and server.starts == 2
        assert "READY" in server.log_tail()
        proc = server.process
        server.stop()
        assert proc.poll() is not None and server.poll() is None
    finally:
        client.close()
        server.stop()


# --------------------------------------------------------------------------------------------- session inputs
def explore_args(tmp_path, *argv):
    import argparse

    from engine.explore_cmd import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


def test_ply_reader_reads_what_open3d_writes_and_ascii(tmp_path):
    import open3d as o3d

    from engine.explore_cmd import read_ply

    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(50, 3))
    rgb = rng.integers(0, 256, (50, 3))
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz))
    pcd.colors = o3d.utility.Vector3dVector(rgb / 255.0)
    for ascii_ in (False, True):
        path = tmp_path / f"c{int(ascii_)}.ply"
        o3d.io.write_point_cloud(str(path), pcd, write_ascii=ascii_)
        got_xyz, got_rgb = read_ply(path)
        np.testing.assert_allclose(got_xyz, xyz.astype(np.float32), atol=1e-5)  # ascii keeps ~6 decimals
        np.testing.assert_array_equal(got_rgb, rgb)
    # a mesh PLY with faces after the vertices, big-endian, no colours -> grey
    body = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], ">f4").tobytes() + b"\x03" + np.array([0, 1, 2], ">i4").tobytes()
    header = (b"ply\nformat binary_big_endian 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
              b"property float z\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n")
    (tmp_path / "m.ply").write_bytes(header + body)
    got_xyz, got_rgb = read_ply(tmp_path / "m.ply")
    np.testing.assert_array_equal(got_xyz[1], [1, 0, 0])
    assert (got_rgb == 128).all()


def test_explore_arguments_become_open_messages(tmp_path):
    import imageio.v3 as iio

    from engine.explore_cmd import InputError, open_message

    assert isinstance(open_message(explore_args(tmp_path, "--seed", "4")), OpenProcedural)
    img = np.random.default_rng(1).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    iio.imwrite(tmp_path / "img.png", img)
    depth = np.full((12, 16), 2.5, np.float32)
    np.save(tmp_path / "depth.npy", depth)
    msg = open_message(explore_args(tmp_path, "--image", str(tmp_path / "img.png"), "--depth",
                                    str(tmp_path / "depth.npy"), "--prompt", "a hall"))
    assert isinstance(msg, OpenImage) and (msg.rgb == img).all() and msg.prompt == "a hall"
    assert msg.intrinsics[0] == pytest.approx(0.8660, abs=1e-3)  # 60 degrees across
    iio.imwrite(tmp_path / "depth.png", (depth * 1000).astype(np.uint16))  # millimetres
    msg = open_message(explore_args(tmp_path, "--image", str(tmp_path / "img.png"), "--depth",
                                    str(tmp_path / "depth.png")))
    np.testing.assert_allclose(msg.depth, 2.5)
    # the release's inputs
    poses = np.stack([look_at(np.array([0.0, 0.0, -0.1 * i]), np.array([0.0, 0.0, 5.0]), up=(0, -1, 0))
                      for i in range(3)])
    write_w2c_txt(tmp_path / "w2c.txt", poses)
    write_intrinsics_txt(tmp_path / "intrinsics.txt", np.array([0.9, 1.2, 0.5, 0.5]))
    (tmp_path / "prompt.txt").write_text("round one\nround two\n")
    np.save(tmp_path / "masks.npy", np.zeros((2, 12, 16), np.uint8))
    msg = open_message(explore_args(tmp_path, "--image", str(tmp_path / "img.png"), "--w2c", str(tmp_path / "w2c.txt"),
                                    "--intrinsics", str(tmp_path / "intrinsics.txt"), "--prompt",
                                    str(tmp_path / "prompt.txt"), "--masks", str(tmp_path / "masks.npy")))
    assert isinstance(msg, OpenRelease) and msg.prompts == ["round one", "round two"] and msg.masks.shape == (2, 12, 16)
    np.testing.assert_allclose(msg.w2c, poses, atol=1e-9)
    # bad input names what is wrong
    with pytest.raises(InputError, match="--image needs --depth"):
        open_message(explore_args(tmp_path, "--image", str(tmp_path / "img.png")))
    np.save(tmp_path / "small.npy", np.ones((3, 3), np.float32))
    with pytest.raises(InputError, match="small.npy: depth is .*must match"):
        open_message(explore_args(tmp_path, "--image", str(tmp_path / "img.png"), "--depth",
                                  str(tmp_path / "small.npy")))
    with pytest.raises(InputError, match="choose one session source"):
        open_message(explore_args(tmp_path, "--ply", "a.ply", "--load", "x"))
    with pytest.raises(InputError, match="session name must match"):
        open_message(explore_args(tmp_path, "--load", "../etc"))
    (tmp_path / "bad.txt").write_text("[1 2 3]\n")
    with pytest.raises(InputError, match=r"bad.txt:1: expected 4 numbers"):
        open_message(explore_args(tmp_path, "--image", str(tmp_path / "img.png"), "--w2c", str(tmp_path / "w2c.txt"),
                                  "--intrinsics", str(tmp_path / "bad.txt")))
    ply = tmp_path / "pts.ply"
    ply.write_text("ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\nproperty float z\n"
                   "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
                   "0 0 1 255 0 0\n1 1 3 0 255 0\n")
    msg = open_message(explore_args(tmp_path, "--ply", str(ply)))
    assert isinstance(msg, OpenPoints) and msg.source == "pts.ply" and msg.rgb.tolist() == [[255, 0, 0], [0, 255, 0]]


def test_explore_command_module_loads_without_the_viewer():
    import subprocess

    code = ("import sys, argparse, engine.explore_cmd as m; m.add_arguments(argparse.ArgumentParser()); "
            "bad = [k for k in sys.modules if k.split('.')[0] in ('explorer', 'pyglet', 'moderngl', 'torch')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
