"""The viewer's drawing modules inside a real pyglet window (OpenGL 3.3 core, as the app asks for).

The check runs in a fresh interpreter: once a process has made a standalone EGL context current (the other
explorer tests do), a GLX window context in the same thread is no longer detected reliably by moderngl.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from engine.geometry import fov_to_intrinsics, intrinsics_to_K, look_at
from engine.server.protocol import Frame, MemoryDelta

pytestmark = [pytest.mark.display,
              pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X display (make test runs Xvfb)")]


def test_memory_frames_and_hud_draw_in_a_pyglet_window():
    done = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "window check passed" in done.stdout


def window_check() -> None:
    import moderngl
    import pyglet

    from explorer.frames import FramePanel, PanelMode
    from explorer.gl import read_rgb
    from explorer.hud import Hud, HudState
    from explorer.memory_view import MemoryView

    config = pyglet.gl.Config(major_version=3, minor_version=3, forward_compatible=True, double_buffer=True,
                              depth_size=24)
    window = pyglet.window.Window(320, 120, config=config)  # mapped: a hidden window has no complete framebuffer
    try:
        window.switch_to()  # other contexts (EGL, earlier tests) may be current in this thread
        ctx = moderngl.create_context()
        W, H = window.get_framebuffer_size()
        view, panel, hud = MemoryView(ctx), FramePanel(ctx, mode=PanelMode.SIDE_BY_SIDE), Hud(ctx, font_size=9)
        ids = np.arange(3, dtype=np.int64)
        xyz = np.array([[0.0, 1.0, 0.0], [0.3, 1.0, 0.0], [-0.3, 1.0, 0.0]], np.float32)
        view.apply_delta(MemoryDelta(version_from=0, version_to=1, full=True, voxel_size=0.05, added_ids=ids,
                                     added_xyz=xyz, added_rgb=np.full((3, 3), [255, 0, 0], np.uint8),
                                     removed_ids=ids[:0], recolored_ids=ids[:0],
                                     recolored_rgb=np.zeros((0, 3), np.uint8)))
        panel.push(Frame(index=0, seq=0, rgb=np.full((9, 16, 3), [0, 255, 0], np.uint8), w2c=np.eye(4)), now=0.0)
        panel.update(0.0)
        hud.update(HudState(points=view.num_points), now=0.0)
        lay = panel.layout(W, H)
        mx, my, mw, mh = lay.memory
        K = intrinsics_to_K(fov_to_intrinsics(60.0, mw / mh), mw, mh)
        ctx.screen.use()
        ctx.clear()
        view.render(look_at(np.array([0.0, 1.0, -3.0]), np.array([0.0, 1.0, 0.0])), K, mw, mh, lay.memory)
        panel.draw(lay, (0, 0, W, H))
        img = read_rgb(ctx.screen)
        red = (img[..., 0] > 200) & (img[..., 1] < 50)
        green = (img[..., 1] > 200) & (img[..., 0] < 50)
        assert red[:, : W // 2].sum() >= 3 and not red[:, W // 2:].any()  # memory points on the left
        assert green[:, W // 2:].sum() > 0.9 * lay.frame[2] * lay.frame[3]  # the frame fills its rect on the right
        hud.draw((0, 0, W, H))
        with_hud = read_rgb(ctx.screen)
        tw, th = hud.quad.size
        assert (with_hud[:th + 10, :tw + 10] != img[:th + 10, :tw + 10]).any()  # the HUD box at the top-left
        assert (with_hud[th + 10:] == img[th + 10:]).all()
        assert ctx.error == "GL_NO_ERROR"
        window.flip()
        for obj in (view, panel, hud):
            obj.release()
    finally:
        window.close()  # pyglet checks GL errors here: a stray one left by the drawing code would raise
    print("window check passed")


if __name__ == "__main__":
    window_check()
