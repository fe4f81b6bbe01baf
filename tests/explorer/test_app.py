"""The explorer app end to end: headless (EGL) against a scripted ROUTER server, `spatia explore --headless` through
the CLI and with the real generation server, and a real pyglet window driven by synthetic events (Xvfb).

Screens are checked by content (where red, green and yellow pixels are), never pixel by pixel. The window test runs
in a fresh interpreter: a process that has made an EGL context current no longer finds a window's GLX context.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import pytest

from engine.geometry import look_at, project, write_w2c_txt
from engine.server.protocol import (EditInsertPrimitive, EditRemoveIds, EditUndo, OpenPoints, OpenProcedural,
                                    Trajectory)
from explorer.app import AppConfig, ExplorerApp, HeadlessConfig, SimClock, run_headless
from explorer.client import Client, ClientConfig
from explorer.frames import PanelMode
from explorer.script import parse_script

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from scripted_server import RED, ScriptedServer, scene  # noqa: E402

W, H = 192, 108
FAST = ClientConfig(heartbeat_s=0.2, waiting_s=1.0, reconnect_s=3.0)


def red(img):
    return (img[..., 0] > 160) & (img[..., 1] < 70) & (img[..., 2] < 70)


def green(img):  # the scripted server's frames are (30, 200, 60)
    return (img[..., 1] > 160) & (img[..., 0] < 80) & (img[..., 2] < 100)


def bbox(mask):
    ys, xs = np.nonzero(mask)
    return xs.min(), ys.min(), xs.max(), ys.max()


class Harness:
    """An ExplorerApp drawing offscreen (EGL) on a manual clock, connected to a scripted server."""

    def __init__(self, server, open_message=None, **config):
        from explorer.gl import offscreen, standalone_context

        self.ctx = standalone_context()
        self.fbo = offscreen(self.ctx, W, H)
        self.clock = SimClock()
        self.client = Client(server.address, config=FAST)
        # no HUD and no notices by default: a window this small would be mostly text
        cfg = AppConfig(width=W, height=H, out_dir=config.pop("out_dir", Path("unused")), hud=config.pop("hud", False),
                        notice_s=config.pop("notice_s", 0.0), **config)
        self.app = ExplorerApp(self.ctx, cfg, self.client, open_message or OpenProcedural(seed=1), clock=self.clock)
        self.app.size = (W, H)

    def tick(self, dt=0.05, wait_ms=5):
        self.clock.t += dt
        self.app.pump(wait_ms)
        self.app.tick(self.fbo, (W, H))

    def until(self, pred, timeout_s=10.0, dt=0.05):
        deadline = time.monotonic() + timeout_s
        while not pred():
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met (notice: {self.app.notice!r}, link {self.client.state})")
            self.tick(dt)

    def image(self):
        from explorer.gl import read_rgb

        return read_rgb(self.fbo)

    def close(self):
        self.app.release()
        self.client.close()
        self.fbo.release()
        self.ctx.release()


def window_rect_of(app, xyz, pad=3.0):
    """Framebuffer rectangle (y up) around the projections of world points in the app's memory view."""
    w2c, K, (mx, my, mw, mh) = app.memory_camera()
    uv, _ = project(np.asarray(xyz, np.float64), w2c, K)
    u0, v0 = uv.min(0) - pad
    u1, v1 = uv.max(0) + pad
    return (mx + u0, my + mh - v0), (mx + u1, my + mh - v1)


# --------------------------------------------------------------------------------------------- headless app
def test_memory_frames_and_camera_in_the_drawn_image():
    with ScriptedServer() as server:
        h = Harness(server)
        try:
            h.app.draw(h.fbo, 0.0)  # before any message is handled
            assert not red(h.image()).any() and h.app.alert(0.0) == ""  # nothing in memory yet, no trouble
            h.until(lambda: h.app.session_ready)
            h.tick()
            img = h.image()
            lay = h.app.panel.layout(W, H)
            mx, my, mw, mh = lay.memory
            fx, fy, fw, fh = lay.frame
            # the memory delta's red block sits in the middle of the memory view; the start frame fills its panel
            x0, y0, x1, y1 = bbox(red(img))
            assert mx <= x0 and x1 < mx + mw and abs((x0 + x1) / 2 - (mx + mw / 2)) < 3
            assert green(img)[H - fy - fh: H - fy, fx: fx + fw].mean() > 0.9
            assert h.app.view.num_points == len(scene(0.05)[0])
            # walking forward: a trajectory goes out, frames come back, the block grows as the camera nears it
            width_before = x1 - x0
            h.app.key_press("w")
            for _ in range(20):  # one second of simulated time
                h.tick()
            h.app.key_release("w")
            h.until(lambda: h.app.frames_received >= 9 and not h.app.camera.moving)
            h.tick()
            traj = server.messages(Trajectory)[0]
            assert traj.seq == 1 and len(traj.w2c) == 2 * server.chunk_frames
            centres = -np.einsum("nji,nj->ni", traj.w2c[:, :3, :3], traj.w2c[:, :3, 3])
            assert (np.diff(centres[:, 2]) > 0).all() and np.allclose(centres[:, [0, 1]], [0.0, 1.6], atol=1e-6)
            assert 1.0 < h.app.camera.position[2] < 1.6  # 1.5 m/s for a second, less the damped start and stop
            x0, _, x1, _ = bbox(red(h.image()))
            assert x1 - x0 > width_before * 1.1
            assert h.app.latency_ms is not None and h.app.latency_ms > 0
            assert h.app.view.num_points > len(scene(0.05)[0])  # the clips' memory updates arrived (yellow)
            state = h.app.hud_state(h.clock.t)
            assert state.connection.value == "connected" and state.backend.startswith("scripted")
        finally:
            h.close()


def test_box_select_delete_insert_and_undo_go_to_the_server():
    with ScriptedServer() as server:
        h = Harness(server, mode=PanelMode.MEMORY)
        try:
            h.until(lambda: h.app.session_ready)
            h.tick()
            xyz, _ = scene(0.05)
            block = (xyz[:, 2] == 2.0) & (xyz[:, 1] > 1.0)  # the red block's points, in front of the blue wall
            a, b = window_rect_of(h.app, xyz[block])
            h.app.key_press("x")
            h.app.mouse_press(*a, "left")
            h.app.mouse_motion(*b, 0, 0)
            h.tick()
            assert (h.image()[..., 0] > 200).any()  # the drag rectangle is drawn
            h.app.mouse_release(*b, "left")
            np.testing.assert_array_equal(h.app.editor.selected, np.nonzero(block)[0])  # not the wall behind
            h.tick()
            h.app.key_press("delete")
            h.until(lambda: not red(h.image()).any())
            edit = server.messages(EditRemoveIds)[0]
            np.testing.assert_array_equal(np.sort(edit.ids), np.nonzero(block)[0])
            assert "delete" in h.app.notice and len(h.app.editor.selected) == 0
            h.app.key_press("b")
            h.until(lambda: len(server.messages(EditInsertPrimitive)) == 1 and h.app.view.num_points
                    > len(xyz) - block.sum() + 50)
            box = server.messages(EditInsertPrimitive)[0]
            np.testing.assert_allclose(box.center, [0.0, 1.6, 2.0], atol=1e-9)
            h.app.key_press("u")  # undo the box ...
            h.until(lambda: h.app.view.num_points == len(xyz) - block.sum())
            h.app.key_press("z", ctrl=True)  # ... and the deletion
            h.until(lambda: red(h.image()).any())
            assert len(server.messages(EditUndo)) == 2
        finally:
            h.close()


def test_a_y_down_world_is_shown_upright():
    # the release's convention: the first camera is the identity, so the world's up is -y
    xyz = np.array([[0.0, -0.5, 2.0]] * 50 + [[0.0, 0.5, 2.0]] * 50, np.float32)
    xyz += np.random.default_rng(0).normal(0, 0.05, xyz.shape).astype(np.float32)
    rgb = np.array([RED] * 50 + [(30, 60, 220)] * 50, np.uint8)
    opener = OpenPoints(xyz=xyz, rgb=rgb, w2c=np.eye(4), intrinsics=np.array([0.8, 1.4, 0.5, 0.5]))
    with ScriptedServer() as server:
        h = Harness(server, opener, mode=PanelMode.MEMORY)
        try:
            h.until(lambda: h.app.session_ready)
            h.tick()
            img = h.image()
            blue = (img[..., 2] > 160) & (img[..., 0] < 80)
            assert bbox(red(img))[3] < bbox(blue)[1]  # red (world -y = up) above blue on screen
            assert abs(h.app.camera.pitch) < 1e-9
            h.app.key_press("w")
            h.until(lambda: len(server.messages(Trajectory)) >= 1)
            traj = server.messages(Trajectory)[0]
            centres = -np.einsum("nji,nj->ni", traj.w2c[:, :3, :3], traj.w2c[:, :3, 3])
            assert (np.diff(centres[:, 2]) > 0).all()  # forward is +z of the server's world too
            np.testing.assert_allclose(traj.w2c[0][:3, :3], np.eye(3), atol=1e-9)
        finally:
            h.close()


def test_server_restart_shows_reconnecting_and_the_app_carries_on():
    with ScriptedServer() as server:
        h = Harness(server)
        try:
            h.until(lambda: h.app.session_ready)
            server.stop()  # the server goes away (its sessions stay, as with `spatia serve --resume`) ...
            h.until(lambda: "reconnecting" in h.app.alert(h.clock.t))
            assert h.app.hud_state(h.clock.t).connection.value == "lost"
            for _ in range(5):
                h.tick()
            assert "reconnecting" in h.app.alert(h.clock.t)
            server.start()  # ... and comes back on the same address
            h.until(lambda: h.client.notices == [] and "resumed" in h.app.notice)
            h.app.key_press("w")
            n = h.app.frames_received
            h.until(lambda: h.app.frames_received >= n + 4)  # generation goes on after the resume
        finally:
            h.close()


def test_headless_tour_writes_the_video_and_screenshots(tmp_path):
    script = parse_script([
        {"t": 0.2, "screenshot": "start"}, {"t": 0.3, "key_down": "w"}, {"t": 1.3, "key_up": "w"},
        {"t": 1.5, "screenshot": "walked"}, {"t": 1.6, "toggle_view": True}, {"t": 1.7, "screenshot": "pip"},
        {"t": 1.8, "key": "h"}, {"t": 1.9, "screenshot": "hud"},
        {"t": 2.0, "end": True}])
    with ScriptedServer(clip_delay_s=0.05) as server:
        client = Client(server.address, config=FAST)
        try:
            summary = run_headless(
                lambda ctx, clock: ExplorerApp(ctx, AppConfig(width=W, height=H, out_dir=tmp_path, hud=False,
                                                              notice_s=0.0, font_size=8), client,
                                               OpenProcedural(seed=2), clock=clock),
                script, tmp_path, HeadlessConfig(fps=10, width=W, height=H))
        finally:
            client.close()
    assert summary["frames"] == 21 and summary["stalls"] == 0
    assert imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "window.mp4"))[0] == 21
    assert imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "generated.mp4"))[0] == summary["generated_frames"]
    assert summary["generated_frames"] > 8 and summary["trajectories_sent"] >= 1
    assert json.loads((tmp_path / "summary.json").read_text())["frames"] == 21
    start, walked, pip, hud = (iio.imread(tmp_path / f"{n}.png") for n in ("start", "walked", "pip", "hud"))
    assert start.shape == (H, W, 3)
    # side by side: memory (red block) on the left, the generated frame (green) on the right
    assert bbox(red(start))[2] < W // 2 and green(start)[:, W // 2:].mean() > 0.4
    sx0, _, sx1, _ = bbox(red(start))
    wx0, _, wx1, _ = bbox(red(walked))
    assert wx1 - wx0 > (sx1 - sx0) * 1.1  # closer after walking
    # picture in picture: memory fills the window, the frame sits in the bottom-right corner
    g = green(pip)
    assert g[H // 2:, W // 2:].mean() > 0.2 and g[: H // 3].mean() < 0.05
    text = (hud.min(axis=-1) > 200)[: H // 2, : W // 2]  # the HUD's light text, shown by the scripted H key
    assert text.sum() > 20 and not (pip.min(axis=-1) > 200)[: H // 2, : W // 2].any()


def test_spatia_explore_headless_through_the_cli(tmp_path):
    from engine.cli import main

    (tmp_path / "tour.json").write_text(json.dumps([{"t": 0.1, "key_down": "d"}, {"t": 0.6, "key_up": "d"},
                                                    {"t": 0.8, "screenshot": "end"}, {"t": 1.0, "end": True}]))
    with ScriptedServer() as server:
        code = main(["explore", "--headless", "--connect", server.address, "--script", str(tmp_path / "tour.json"),
                     "--out", str(tmp_path / "out"), "--size", "160x90", "--fps", "8", "--seed", "5"])
        assert code == 0
        assert server.messages(OpenProcedural)[0].seed == 5
    assert imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "out" / "window.mp4"))[0] == 9
    assert iio.imread(tmp_path / "out" / "end.png").shape == (90, 160, 3)
    assert main(["explore", "--headless", "--out", str(tmp_path), "--script", str(tmp_path / "nope.json"),
                 "--offline"]) == 2
    # offline: a PLY browsed without any server, drawn from the explorer's own copy
    xyz, rgb = scene(0.05)
    header = (f"ply\nformat binary_little_endian 1.0\nelement vertex {len(xyz)}\nproperty float x\nproperty float y\n"
              "property float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    rows = np.zeros(len(xyz), [("xyz", "<f4", 3), ("rgb", "u1", 3)])
    rows["xyz"], rows["rgb"] = xyz, rgb
    (tmp_path / "scene.ply").write_bytes(header.encode() + rows.tobytes())
    assert main(["explore", "--headless", "--offline", "--ply", str(tmp_path / "scene.ply"), "--w2c",
                 str(tmp_path / "start.txt"), "--script", str(tmp_path / "tour.json"), "--out", str(tmp_path / "off"),
                 "--size", "160x90", "--fps", "8", "--view", "memory"]) == 2  # start.txt is missing: named error
    write_w2c_txt(tmp_path / "start.txt", look_at(np.array([0.0, 1.6, 0.0]), np.array([0.0, 1.6, 1.0]))[None])
    (tmp_path / "hidden.json").write_text(json.dumps([{"t": 0.0, "key": "h"}, {"t": 0.2, "screenshot": "end"},
                                                      {"t": 0.25, "end": True}]))
    assert main(["explore", "--headless", "--offline", "--ply", str(tmp_path / "scene.ply"), "--w2c",
                 str(tmp_path / "start.txt"), "--script", str(tmp_path / "hidden.json"), "--out",
                 str(tmp_path / "off"), "--size", "160x90", "--fps", "8", "--view", "memory"]) == 0
    shot = iio.imread(tmp_path / "off" / "end.png")
    x0, y0, x1, y1 = bbox(red(shot))  # the block straight ahead, in the middle of the window
    assert abs((x0 + x1) / 2 - 80) < 3 and abs((y0 + y1) / 2 - 45) < 3 and (shot[..., 2] > 180).any()


def test_spatia_explore_with_the_real_generation_server(tiny_checkpoint, tmp_path):
    """The whole stack: `spatia explore` starts `spatia serve` with a (random-weight) model as its child."""
    tour = tmp_path / "tour.json"
    tour.write_text(json.dumps([{"t": 0.1, "key_down": "w"}, {"t": 0.8, "key_up": "w"}, {"t": 1.2, "end": True}]))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "engine.cli", "explore", "--headless", "--model", str(tiny_checkpoint),
           "--sessions", str(tmp_path / "sessions"), "--out", str(out), "--script", str(tour), "--size", "128x72",
           "--fps", "10", "--server-arg=--threads", "--server-arg=1", "--server-arg=--backend",
           "--server-arg=eager"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 13 and summary["trajectories_sent"] >= 1
    assert summary["generated_frames"] >= 2 and summary["server"]["width"] == 32
    assert summary["memory_points"] > 0
    assert imageio_ffmpeg.count_frames_and_secs(str(out / "generated.mp4"))[0] == summary["generated_frames"]
    assert (tmp_path / "sessions" / "autosave").is_dir()  # the child server used the asked session folder


# --------------------------------------------------------------------------------------------- real window
@pytest.mark.display
@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X display (make test runs Xvfb)")
def test_a_real_window_driven_by_synthetic_events(tmp_path):
    done = subprocess.run([sys.executable, __file__, str(tmp_path)], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "window app check passed" in done.stdout
    shot = iio.imread(tmp_path / "screenshot-001.png")
    assert red(shot).any() and green(shot).any()


def window_check(out_dir: Path) -> None:
    from pyglet.window import key, mouse

    from explorer.app import WindowInput, open_window
    from explorer.gl import read_rgb

    window, ctx = open_window(320, 180)
    server = ScriptedServer().start()
    client = Client(server.address, config=FAST)
    app = ExplorerApp(ctx, AppConfig(width=320, height=180, out_dir=out_dir, mode=PanelMode.SIDE_BY_SIDE, hud=False,
                                     notice_s=0.0), client, OpenProcedural(seed=1))
    handlers = WindowInput(window, app)
    window.push_handlers(handlers)

    def frame():
        window.dispatch_events()
        app.tick(ctx.screen, window.get_framebuffer_size())
        image = read_rgb(ctx.screen)
        window.flip()
        return image

    def run_until(pred, timeout_s=20.0):
        deadline = time.monotonic() + timeout_s
        while not pred():
            assert time.monotonic() < deadline, f"timed out ({app.notice!r})"
            client.socket.poll(5)
            frame()

    try:
        run_until(lambda: app.session_ready)
        image = frame()
        fw, fh = window.get_framebuffer_size()
        assert red(image)[:, : fw // 2].any() and green(image)[:, fw // 2:].mean() > 0.4

        # pyglet queues events dispatched outside its event loop: send() delivers them with dispatch_events()
        def send(*event):
            window.dispatch_event(*event)
            window.dispatch_events()

        # edit: X, drag a box over the red block (mouse in window units, y up), Delete -> EditRemoveIds
        frame()
        xyz, _ = scene(0.05)
        block = np.nonzero((xyz[:, 2] == 2.0) & (xyz[:, 1] > 1.0))[0]
        (ax, ay), (bx, by) = window_rect_of(app, xyz[block])
        s = fw / window.width
        send("on_key_press", key.X, 0)
        send("on_mouse_press", ax / s, ay / s, mouse.LEFT, 0)
        send("on_mouse_drag", bx / s, by / s, 5, 5, mouse.LEFT, 0)
        assert not app.pointer_captured and app.drag is not None  # edit mode: the left button drags a box
        send("on_mouse_release", bx / s, by / s, mouse.LEFT, 0)
        assert set(app.editor.selected.tolist()) == set(block.tolist())
        send("on_key_press", key.DELETE, 0)
        run_until(lambda: len(server.messages(EditRemoveIds)) == 1)
        assert sorted(server.messages(EditRemoveIds)[0].ids.tolist()) == block.tolist()
        run_until(lambda: not red(frame())[:, : fw // 2].any())
        send("on_key_press", key.Z, key.MOD_CTRL)  # undo brings the block back
        run_until(lambda: red(frame())[:, : fw // 2].any())
        send("on_key_press", key.X, 0)  # edit mode off
        assert not app.editor.active
        # keys: W held moves the camera forward (+z), its release stops it
        window.dispatch_event("on_key_press", key.W, 0)
        t0 = time.monotonic()
        run_until(lambda: time.monotonic() - t0 > 0.6)
        window.dispatch_event("on_key_release", key.W, 0)
        run_until(lambda: not app.camera.moving)
        assert app.camera.position[2] > 0.3 and abs(app.camera.position[0]) < 1e-6
        # mouse: right-drag looks around; the pointer is captured while the button is held
        yaw = app.camera.yaw
        send("on_mouse_press", 100, 100, mouse.RIGHT, 0)
        assert app.looking
        send("on_mouse_drag", 110, 100, 40, 0, mouse.RIGHT, 0)
        send("on_mouse_release", 110, 100, mouse.RIGHT, 0)
        assert app.camera.yaw == pytest.approx(yaw + 40 * app.camera.config.mouse_sensitivity)
        send("on_mouse_motion", 120, 100, -40, 0)
        assert not app.looking and app.camera.yaw == pytest.approx(yaw + 40 * app.camera.config.mouse_sensitivity)
        # a click captures the pointer, Esc releases it and does not close the window
        send("on_mouse_press", 50, 50, mouse.LEFT, 0)
        assert app.pointer_captured
        send("on_mouse_motion", 60, 50, -40, 0)
        assert app.camera.yaw == pytest.approx(yaw)  # captured: plain motion looks
        send("on_mouse_release", 50, 50, mouse.LEFT, 0)
        send("on_key_press", key.ESCAPE, 0)
        assert not app.pointer_captured and not handlers.closed and not app.should_close
        frame()
        # Tab cycles the layout
        send("on_key_press", key.TAB, 0)
        assert app.panel.mode is PanelMode.PIP
        for _ in range(4):
            send("on_key_press", key.TAB, 0)
        assert app.panel.mode is PanelMode.SIDE_BY_SIDE
        send("on_key_press", key.F12, 0)
        frame()
        assert (out_dir / "screenshot-001.png").is_file()
        assert ctx.error == "GL_NO_ERROR"
    finally:
        app.release()
        window.close()  # pyglet checks GL errors here: a stray one left by the drawing code would raise
        client.close()
        server.close()
    print("window app check passed")


if __name__ == "__main__":
    window_check(Path(sys.argv[1]))
