"""The frame panel: generated frames from the server, played back at the generation rate beside or over the memory.

Frames arrive in bursts, as the server decodes them; `PlaybackQueue` turns the bursts into steady playback at
the generation fps and stays near real time: it holds at most `max_lag_s` of frames and drops the oldest when
playback falls further behind. `layout()` places the memory view and the frame for each `PanelMode` (the app
toggles modes with a key); `FramePanel` owns the texture and draws the current frame where the layout says.
"""

from __future__ import annotations

import collections
import enum
import math
from dataclasses import dataclass
from typing import Any

import moderngl
import numpy as np

from engine.server.protocol import Frame
from explorer.gl import Rect, TexturedQuad


class PanelMode(enum.Enum):
    """How generated frames and the memory view share the window."""

    MEMORY = "memory"  # memory view only
    SIDE_BY_SIDE = "side_by_side"  # memory left, generated frame right, same aspect ratio
    PIP = "pip"  # memory fills the window, the frame sits small in a corner
    BLEND = "blend"  # the frame over the memory, both with the frame's aspect, semi-transparent
    FRAME = "frame"  # generated frame only

    def next(self) -> "PanelMode":
        """The mode after this one, for a toggle key."""
        modes = list(PanelMode)
        return modes[(modes.index(self) + 1) % len(modes)]


@dataclass(frozen=True)
class Layout:
    memory: Rect | None  # where to draw the memory view, None when hidden
    frame: Rect | None  # where to draw the generated frame, None when hidden
    frame_alpha: float


def fit(area: Rect, aspect: float) -> Rect:
    """The largest rectangle of width/height `aspect` centred in `area` (letterbox)."""
    x, y, w, h = area
    if w <= 0 or h <= 0:
        return (x, y, max(w, 0), max(h, 0))
    fw, fh = (w, round(w / aspect)) if w / h < aspect else (round(h * aspect), h)
    return (x + (w - fw) // 2, y + (h - fh) // 2, fw, fh)


def layout(mode: PanelMode, width: int, height: int, frame_aspect: float, pip_fraction: float = 0.3,
           blend_alpha: float = 0.5, margin: int = 12) -> Layout:
    """Rectangles for the memory view and the frame in a width x height window."""
    if not frame_aspect > 0:
        raise ValueError(f"frame_aspect must be positive, got {frame_aspect}")
    full = (0, 0, width, height)
    if mode is PanelMode.MEMORY:
        return Layout(full, None, 0.0)
    if mode is PanelMode.FRAME:
        return Layout(None, fit(full, frame_aspect), 1.0)
    if mode is PanelMode.SIDE_BY_SIDE:
        half = width // 2
        return Layout(fit((0, 0, half, height), frame_aspect), fit((half, 0, width - half, height), frame_aspect), 1.0)
    if mode is PanelMode.BLEND:
        rect = fit(full, frame_aspect)
        return Layout(rect, rect, blend_alpha)
    fw = max(1, round(width * pip_fraction))
    fh = max(1, round(fw / frame_aspect))
    return Layout(full, (width - fw - margin, margin, fw, fh), 1.0)  # PIP: bottom-right corner


class PlaybackQueue:
    """Bounded FIFO that releases items at a fixed rate, dropping the oldest when playback lags too far."""

    def __init__(self, fps: float, max_lag_s: float = 1.0):
        self.fps = fps
        self.max_lag_s = max_lag_s
        self.items: collections.deque[Any] = collections.deque()
        self.next_due = -math.inf  # clock time at which the next item may be shown
        self.dropped = 0

    @property
    def fps(self) -> float:
        return self._fps

    @fps.setter
    def fps(self, value: float) -> None:
        if not value > 0:
            raise ValueError(f"playback fps must be positive, got {value}")
        self._fps = float(value)

    @property
    def max_items(self) -> int:
        return max(1, math.ceil(self.max_lag_s * self.fps))

    def __len__(self) -> int:
        return len(self.items)

    def push(self, item: Any, now: float) -> None:
        if not self.items and self.next_due < now:
            self.next_due = now  # idle: the first frame of a burst shows at once
        self.items.append(item)
        while len(self.items) > self.max_items:  # far behind: skip ahead rather than drift from real time
            self.items.popleft()
            self.dropped += 1

    def poll(self, now: float) -> Any | None:
        """The item to show now, or None to keep showing the current one.

        When polled less often than fps (a slow viewer), the frames whose time has passed are skipped so
        playback keeps the generation's pace.
        """
        if not self.items or now < self.next_due:
            return None
        period = 1.0 / self.fps
        due = min(len(self.items), int((now - self.next_due) / period) + 1)
        for _ in range(due - 1):
            self.items.popleft()
            self.dropped += 1
        self.next_due = max(self.next_due + due * period, now - period)  # never bank more than one frame of slack
        return self.items.popleft()

    def clear(self) -> None:
        self.items.clear()
        self.next_due = -math.inf


class FramePanel:
    """The generated-frame texture with its playback queue; draws the current frame where the layout says."""

    def __init__(self, ctx: moderngl.Context, fps: float = 24.0, max_lag_s: float = 1.0,
                 mode: PanelMode = PanelMode.SIDE_BY_SIDE):
        self.queue = PlaybackQueue(fps, max_lag_s)
        self.quad = TexturedQuad(ctx)
        self.mode = mode
        self.current: Frame | None = None  # the frame on screen (its index, seq and t_input feed the HUD)
        self.shown = 0
        self.pushed = 0

    def push(self, frame: Frame | np.ndarray, now: float) -> None:
        """Queue a decoded frame (a protocol Frame, or a bare uint8 [H, W, 3] image)."""
        if isinstance(frame, np.ndarray):  # a local image (a preview, a test): numbered by arrival
            frame = Frame(index=self.pushed, seq=0, rgb=frame, w2c=np.eye(4))
        if not isinstance(frame, Frame):
            raise TypeError(f"FramePanel.push takes a protocol Frame or a uint8 image, got {type(frame).__name__}")
        self.queue.push(frame, now)
        self.pushed += 1

    def update(self, now: float) -> bool:
        """Advance playback; uploads and returns True when a new frame became current."""
        frame = self.queue.poll(now)
        if frame is None:
            return False
        self.quad.upload(frame.rgb)
        self.current = frame
        self.shown += 1
        return True

    @property
    def aspect(self) -> float:
        """Aspect ratio of the frames (width / height); 16:9 until the first frame arrives."""
        if self.current is None:
            return 16 / 9
        h, w = self.current.rgb.shape[:2]
        return w / h

    def layout(self, width: int, height: int) -> Layout:
        return layout(self.mode, width, height, self.aspect)

    def draw(self, lay: Layout, viewport: Rect) -> None:
        """Draw the current frame into `lay.frame` (nothing before the first frame or when hidden)."""
        if lay.frame is not None and self.current is not None:
            self.quad.draw(lay.frame, viewport, lay.frame_alpha)

    def release(self) -> None:
        self.quad.release()
