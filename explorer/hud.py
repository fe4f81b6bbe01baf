"""Heads-up display: the viewer's vital numbers as text in a corner of the window.

The app fills a `HudState` every frame (view and generation rates from `RateMeter`s, motion-to-frame latency,
memory size, backend, queue depth, connection state); `Hud` renders its lines with Pillow into an RGBA image
only when the text changed (at most `refresh_hz` times a second) and draws that texture with ModernGL. It needs
no window toolkit's text, so it works the same in a pyglet window and in a headless EGL context.
"""

from __future__ import annotations

import collections
import enum
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import moderngl
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from explorer.gl import Rect, TexturedQuad


class Connection(enum.Enum):
    OFFLINE = "offline"  # no server configured: browsing a memory alone
    CONNECTING = "connecting"
    CONNECTED = "connected"
    LOST = "lost"  # no heartbeat for too long


@dataclass
class HudState:
    view_fps: float = 0.0
    gen_fps: float = 0.0
    latency_ms: float | None = None  # motion-to-frame: input event to the frame answering it on screen
    points: int = 0
    points_drawn: int = 0
    backend: str = "-"
    queue_depth: int = 0
    connection: Connection = Connection.OFFLINE
    mode: str = ""
    message: str = ""  # last error or notice, shown until replaced


def format_lines(s: HudState) -> list[str]:
    """The HUD's text, one string per line (pure, so tests read it without any GL)."""
    latency = "-" if s.latency_ms is None else f"{s.latency_ms:7.0f} ms"
    drawn = "" if s.points_drawn >= s.points else f"  (drawing {s.points_drawn:,})"
    lines = [
        f"view      {s.view_fps:5.1f} fps",
        f"generated {s.gen_fps:5.1f} fps",
        f"latency   {latency}",
        f"memory    {s.points:,} points{drawn}",
        f"queue     {s.queue_depth} frames",
        f"backend   {s.backend}",
        f"server    {s.connection.value}",
    ]
    if s.mode:
        lines.append(f"view mode {s.mode}")
    if s.message:
        lines.append(s.message)
    return lines


class RateMeter:
    """Events per second over a sliding window of recent event times (view frames, generated frames)."""

    def __init__(self, window_s: float = 1.0):
        self.window_s = window_s
        self.times: collections.deque[float] = collections.deque()
        self.first: float | None = None  # the first event ever: before a whole window has passed, rate from the span

    def tick(self, now: float) -> None:
        if self.first is None:
            self.first = now
        self.times.append(now)
        self._trim(now)

    def rate(self, now: float | None = None) -> float:
        """Events per second: those of the last window over its length once a whole window has passed (frames that
        arrive in bursts, a chunk at a time, count at their average rate), before that over their own span."""
        if now is not None:
            self._trim(now)
        if len(self.times) < 2:
            return 0.0
        now = self.times[-1] if now is None else now
        if now - self.first >= self.window_s:
            return sum(t > now - self.window_s for t in self.times) / self.window_s
        span = self.times[-1] - self.times[0]
        return (len(self.times) - 1) / span if span > 0 else 0.0

    def _trim(self, now: float) -> None:
        while self.times and self.times[0] < now - self.window_s:
            self.times.popleft()


def _monospace_font(size: int) -> ImageFont.ImageFont:
    """DejaVu Sans Mono as shipped inside matplotlib (found without importing it), else Pillow's own font."""
    spec = importlib.util.find_spec("matplotlib")
    if spec and spec.submodule_search_locations:
        path = Path(spec.submodule_search_locations[0]) / "mpl-data" / "fonts" / "ttf" / "DejaVuSansMono.ttf"
        if path.is_file():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size)


def render_text(lines: list[str], font: ImageFont.ImageFont, padding: int = 6,
                color=(235, 235, 235, 255), background=(0, 0, 0, 150)) -> np.ndarray:
    """Lines of text on a translucent box -> RGBA uint8 [H, W, 4], top row first."""
    line_h = sum(font.getmetrics()) + 2
    width = max((font.getbbox(line)[2] for line in lines), default=0) + 2 * padding
    image = Image.new("RGBA", (max(width, 1), line_h * len(lines) + 2 * padding), background)
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((padding, padding + i * line_h), line, font=font, fill=color)
    return np.asarray(image)


class Hud:
    """Draws the HUD text in the top-left corner of a viewport."""

    def __init__(self, ctx: moderngl.Context, font_size: int = 14, refresh_hz: float = 4.0, margin: int = 10):
        self.quad = TexturedQuad(ctx, filter_linear=False)  # text pixels map 1:1 to the screen
        self.font = _monospace_font(font_size)
        self.refresh_s = 1.0 / refresh_hz
        self.margin = margin
        self.lines: list[str] = []
        self._last_refresh = -float("inf")

    def update(self, state: HudState, now: float, force: bool = False) -> bool:
        """Re-render the text if it changed and the refresh interval passed; True when the texture changed."""
        lines = format_lines(state)
        if lines == self.lines or (not force and now - self._last_refresh < self.refresh_s):
            return False
        self.quad.upload(render_text(lines, self.font))
        self.lines, self._last_refresh = lines, now
        return True

    def draw(self, viewport: Rect) -> None:
        if self.quad.size is None:
            return
        x, y, w, h = viewport
        tw, th = self.quad.size
        self.quad.draw((x + self.margin, y + h - self.margin - th, tw, th), viewport, 1.0)

    def release(self) -> None:
        self.quad.release()

