"""Frame panel (playback pacing, layouts, drawing) and HUD (text, rates, drawing) in a headless EGL context."""

from __future__ import annotations

import numpy as np
import pytest

from engine.server.protocol import Frame
from explorer.frames import FramePanel, PanelMode, PlaybackQueue, fit, layout
from explorer.hud import Connection, Hud, HudState, RateMeter, format_lines

W, H = 160, 90


# --------------------------------------------------------------------------------------------- pure logic
def test_playback_paces_a_burst_at_the_generation_rate():
    q = PlaybackQueue(fps=10.0, max_lag_s=2.0)
    for i in range(5):
        q.push(i, now=0.0)  # a burst: five frames decoded at once
    shown = []
    for step in range(60):  # the viewer draws at 60 Hz
        item = q.poll(step / 60 + 1e-6)
        if item is not None:
            shown.append((item, step))
    assert [i for i, _ in shown] == [0, 1, 2, 3, 4]
    assert [s for _, s in shown] == [0, 6, 12, 18, 24]  # one every 1/10 s
    assert q.dropped == 0


def test_playback_drops_oldest_when_far_behind_and_skips_for_slow_viewers():
    q = PlaybackQueue(fps=10.0, max_lag_s=0.5)  # holds at most 5 frames
    for i in range(12):
        q.push(i, now=0.0)
    assert len(q) == 5 and q.dropped == 7
    assert q.poll(0.0) == 7  # the oldest kept
    assert q.poll(0.25) == 9  # polled late: the frame due at 0.1 is skipped, 0.2's is shown
    assert q.dropped == 8
    assert q.poll(0.26) is None  # next one is due at 0.3


def test_playback_restarts_at_once_after_idle():
    q = PlaybackQueue(fps=24.0)
    q.push("a", now=0.0)
    assert q.poll(0.0) == "a" and q.poll(5.0) is None
    q.push("b", now=5.0)
    assert q.poll(5.0) == "b"
    with pytest.raises(ValueError, match="fps"):
        PlaybackQueue(fps=0)


def test_layouts_keep_the_frame_aspect():
    assert fit((0, 0, 200, 100), 1.0) == (50, 0, 100, 100)
    assert fit((0, 0, 100, 200), 2.0) == (0, 75, 100, 50)
    sbs = layout(PanelMode.SIDE_BY_SIDE, 1280, 720, 16 / 9)
    assert sbs.memory == (0, 180, 640, 360) and sbs.frame == (640, 180, 640, 360)
    blend = layout(PanelMode.BLEND, 1280, 720, 4 / 3, blend_alpha=0.4)
    assert blend.memory == blend.frame == (160, 0, 960, 720) and blend.frame_alpha == 0.4
    pip = layout(PanelMode.PIP, 1000, 600, 2.0, pip_fraction=0.2, margin=10)
    assert pip.memory == (0, 0, 1000, 600) and pip.frame == (790, 10, 200, 100)
    assert layout(PanelMode.MEMORY, 10, 10, 1.0).frame is None
    assert layout(PanelMode.FRAME, 10, 10, 1.0).memory is None
    assert [m.next() for m in PanelMode][-1] is PanelMode.MEMORY  # the toggle cycles


def test_hud_lines_and_rates():
    lines = format_lines(HudState(view_fps=29.96, gen_fps=12.0, latency_ms=612.4, points=1_500_000,
                                  points_drawn=200_000, backend="eager", queue_depth=4,
                                  connection=Connection.CONNECTED, message="error: busy"))
    text = "\n".join(lines)
    for part in ["30.0 fps", "12.0 fps", "612 ms", "1,500,000 points", "drawing 200,000", "4 frames", "eager",
                 "connected", "error: busy"]:
        assert part in text
    assert "latency   -" in "\n".join(format_lines(HudState()))
    meter = RateMeter(window_s=1.0)
    for i in range(31):
        meter.tick(i / 30)
    assert meter.rate() == pytest.approx(30.0)
    assert meter.rate(now=10.0) == 0.0  # nothing in the last second
    bursts = RateMeter(window_s=1.0)  # generated frames arrive a chunk at a time: 4 within 3 ms every 0.5 s
    for chunk in range(6):
        for j in range(4):
            bursts.tick(chunk * 0.5 + j * 0.001)
    assert bursts.rate() == pytest.approx(8.0)  # their average rate, not the rate inside a burst


# --------------------------------------------------------------------------------------------- drawing
@pytest.fixture(scope="module")
def gl():
    gl_mod = pytest.importorskip("explorer.gl")
    try:
        ctx = gl_mod.standalone_context()
    except RuntimeError as e:
        pytest.skip(str(e))
    fbo = gl_mod.offscreen(ctx, W, H)
    yield ctx, fbo, gl_mod
    fbo.release()
    ctx.release()


def quadrant_image(h: int, w: int) -> np.ndarray:
    """Red top-left, green top-right, blue bottom-left, white bottom-right."""
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2, : w // 2] = [255, 0, 0]
    img[: h // 2, w // 2:] = [0, 255, 0]
    img[h // 2:, : w // 2] = [0, 0, 255]
    img[h // 2:, w // 2:] = [255, 255, 255]
    return img


def test_frame_panel_draws_the_current_frame_upright(gl):
    ctx, fbo, gl_mod = gl
    panel = FramePanel(ctx, fps=24.0, mode=PanelMode.SIDE_BY_SIDE)
    fbo.use()
    ctx.clear()
    lay = panel.layout(W, H)
    panel.draw(lay, (0, 0, W, H))  # nothing yet: draws nothing
    assert not gl_mod.read_rgb(fbo).any()
    frame = Frame(index=5, seq=2, rgb=quadrant_image(36, 64), w2c=np.eye(4), t_input=1.5)
    panel.push(frame, now=0.0)
    assert panel.update(0.0) and panel.current is frame and not panel.update(0.001)
    lay = panel.layout(W, H)
    x, y, w, h = lay.frame
    assert (x, w) == (80, 80) and h == 45
    panel.draw(lay, (0, 0, W, H))
    img = gl_mod.read_rgb(fbo)
    top = H - (y + h)  # the rect's top row in the top-down image
    probe = lambda fx, fy: img[top + int(fy * h), x + int(fx * w)]  # noqa: E731
    np.testing.assert_array_equal(probe(0.25, 0.25), [255, 0, 0])
    np.testing.assert_array_equal(probe(0.75, 0.25), [0, 255, 0])
    np.testing.assert_array_equal(probe(0.25, 0.75), [0, 0, 255])
    np.testing.assert_array_equal(probe(0.75, 0.75), [255, 255, 255])
    assert not img[:, :x].any()  # the memory half is left alone

    panel.mode = PanelMode.BLEND
    ctx.clear()
    lay = panel.layout(W, H)
    panel.draw(lay, (0, 0, W, H))
    x, y, w, h = lay.frame
    img = gl_mod.read_rgb(fbo)
    np.testing.assert_allclose(img[H - (y + h) + h // 4, x + w // 4], [127, 0, 0], atol=2)  # half over black
    panel.release()


def test_frame_panel_takes_bare_images_and_refuses_others(gl):
    ctx, fbo, gl_mod = gl
    panel = FramePanel(ctx)
    panel.push(quadrant_image(8, 8), now=0.0)
    assert panel.update(0.0) and panel.aspect == 1.0
    with pytest.raises(TypeError, match="protocol Frame"):
        panel.push("frame.png", now=0.0)
    panel.release()


def test_hud_draws_text_in_the_top_left_only_when_changed(gl):
    ctx, fbo, gl_mod = gl
    hud = Hud(ctx, font_size=10, refresh_hz=4.0, margin=4)
    fbo.use()
    ctx.clear()
    state = HudState(view_fps=30.0, points=10)
    assert hud.update(state, now=0.0)
    state.view_fps = 31.0
    assert not hud.update(state, now=0.1)  # changed, but within 1/refresh_hz of the last render
    assert hud.update(state, now=0.3) and hud.lines == format_lines(state)
    assert not hud.update(state, now=0.9)  # same text: no re-render
    hud.draw((0, 0, W, H))
    img = gl_mod.read_rgb(fbo).astype(int)
    bright = img.sum(-1) > 300
    rows, cols = np.nonzero(bright)
    assert len(rows) > 20  # some text was drawn
    tw, th = hud.quad.size
    assert rows.max() < 4 + th and cols.max() < 4 + tw  # all of it inside the box at the top-left margin
    hud.release()
