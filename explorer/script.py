"""Scripted input for headless tours: a JSON list of timed key, mouse and command events on a simulated clock.

`spatia explore --headless --script tour.json` replays a script through the same input methods the window's
handlers call, so a tour exercises exactly what a person at the keyboard would. A script is a list of events,
each an object with a time `t` in seconds and one action:

    {"t": 0.5, "key_down": "w"}            hold a key (camera keys w a s d q e shift, or any bound key)
    {"t": 2.0, "key_up": "w"}              release it
    {"t": 3.0, "key": "tab"}               press and release ("ctrl+z" holds ctrl around z)
    {"t": 2.5, "mouse": [40, 0]}           mouse-look by (dx, dy) pixels, dy > 0 looks up; "over": 1.5 spreads it
    {"t": 4.0, "scroll": 1}                wheel notches (speed up / down)
    {"t": 3.0, "toggle_view": true}        cycle how frames and memory share the window (same as Tab)
    {"t": 5.0, "drag": [[x0, y0], [x1, y1]], "over": 0.5}   left-drag in window pixels, origin top-left
    {"t": 5.5, "screenshot": "name"}       write name.png of the window
    {"t": 6.0, "end": true}                stop (default: one second after the last event)

Events fire on the first simulated frame at or after their time; spread motions ("over") are split across the
frames that fall inside their interval, in proportion to time, so the total is exact at any frame rate.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_TAIL_S = 1.0  # a script without an "end" event stops this long after its last event
ACTIONS = ("key_down", "key_up", "key", "mouse", "scroll", "toggle_view", "drag", "screenshot", "end")
SPREADABLE = ("mouse", "drag")  # the actions that accept "over"
DEFAULT_TOUR = Path(__file__).resolve().parent / "tours" / "default.json"


class ScriptError(ValueError):
    """A tour script that cannot be played; the message names the file, the event and the fault."""

    def __init__(self, source: str, index: int | None, problem: str):
        where = source if index is None else f"{source}: event {index}"
        super().__init__(f"{where}: {problem}")
        self.source, self.index, self.problem = source, index, problem


@dataclass(frozen=True)
class ScriptEvent:
    """One timed action. `value` by action: key name (key_down/up/key), (dx, dy) (mouse), notches (scroll),
    ((x0, y0), (x1, y1)) (drag), file stem (screenshot), True (toggle_view, end)."""

    t: float
    action: str
    value: Any
    over: float = 0.0  # seconds a mouse motion or drag is spread over (0: at once)


@dataclass(frozen=True)
class Script:
    events: tuple[ScriptEvent, ...]  # sorted by time, stable for equal times
    end_time: float
    source: str = "<script>"


# --------------------------------------------------------------------------------------------- parsing
def _number(value: Any, source: str, index: int, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ScriptError(source, index, f"{name} must be a finite number, got {value!r}")
    return float(value)


def _pair(value: Any, source: str, index: int, name: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ScriptError(source, index, f"{name} must be a list of two numbers [x, y], got {value!r}")
    return (_number(value[0], source, index, name), _number(value[1], source, index, name))


def _key(value: Any, source: str, index: int, known: Collection[str] | None, combos: bool) -> str:
    if not isinstance(value, str) or not value:
        raise ScriptError(source, index, f"key must be a non-empty string, got {value!r}")
    name = value.lower()
    parts = name.split("+")
    if len(parts) > 1 and not combos:
        raise ScriptError(source, index, f"key combinations like {value!r} only work with \"key\" (press and release)")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "ctrl"):
        raise ScriptError(source, index, f"only ctrl+KEY combinations are supported, got {value!r}")
    if known is not None and parts[-1] not in known:
        raise ScriptError(source, index, f"unknown key {parts[-1]!r}; known keys: {', '.join(sorted(known))}")
    return name


def parse_script(data: Any, source: str = "<script>", known_keys: Collection[str] | None = None) -> Script:
    """A decoded JSON list of event objects -> Script; ScriptError names the first bad event and why."""
    if not isinstance(data, list):
        raise ScriptError(source, None, f"a script is a JSON list of events, got {type(data).__name__}")
    events: list[ScriptEvent] = []
    end_time: float | None = None
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise ScriptError(source, i, f"each event is an object like {{\"t\": 0.5, \"key_down\": \"w\"}}, "
                                         f"got {item!r}")
        if "t" not in item:
            raise ScriptError(source, i, "missing the time \"t\" (seconds)")
        t = _number(item["t"], source, i, "t")
        if t < 0:
            raise ScriptError(source, i, f"t must be >= 0, got {t}")
        unknown = set(item) - {"t", "over", *ACTIONS}
        if unknown:
            raise ScriptError(source, i, f"unknown field(s) {sorted(unknown)}; actions are {', '.join(ACTIONS)}")
        actions = [a for a in ACTIONS if a in item]
        if len(actions) != 1:
            raise ScriptError(source, i, f"needs exactly one action of {', '.join(ACTIONS)}, got {actions or 'none'}")
        action = actions[0]
        raw = item[action]
        over = 0.0
        if "over" in item:
            if action not in SPREADABLE:
                raise ScriptError(source, i, f"\"over\" applies to {' and '.join(SPREADABLE)} only, not {action}")
            over = _number(item["over"], source, i, "over")
            if over < 0:
                raise ScriptError(source, i, f"over must be >= 0, got {over}")
        if action in ("key_down", "key_up", "key"):
            value: Any = _key(raw, source, i, known_keys, combos=action == "key")
        elif action == "mouse":
            value = _pair(raw, source, i, "mouse")
        elif action == "scroll":
            value = _number(raw, source, i, "scroll")
        elif action == "drag":
            if not isinstance(raw, (list, tuple)) or len(raw) != 2:
                raise ScriptError(source, i, f"drag must be [[x0, y0], [x1, y1]] in window pixels, got {raw!r}")
            value = (_pair(raw[0], source, i, "drag start"), _pair(raw[1], source, i, "drag end"))
        elif action == "screenshot":
            if not isinstance(raw, str) or not raw or any(c in raw for c in "/\\") or raw.startswith("."):
                raise ScriptError(source, i, f"screenshot takes a plain file stem like \"hall\", got {raw!r}")
            value = raw
        else:  # toggle_view, end
            if raw is not True:
                raise ScriptError(source, i, f"{action} takes true, got {raw!r}")
            value = True
        if action == "end":
            if end_time is not None:
                raise ScriptError(source, i, "a second \"end\" event")
            end_time = t
            continue
        events.append(ScriptEvent(t, action, value, over))
    events.sort(key=lambda e: e.t)  # stable: events at the same time keep their order in the file
    last = max((e.t + e.over for e in events), default=0.0)
    if end_time is None:
        end_time = last + DEFAULT_TAIL_S
    else:
        late = [e for e in events if e.t + e.over > end_time]
        if late:
            raise ScriptError(source, None, f"the {late[0].action} event at t={late[0].t} (over {late[0].over} s) "
                                            f"does not finish before the end at t={end_time}")
    return Script(tuple(events), end_time, source)


def load_script(path: str | Path, known_keys: Collection[str] | None = None) -> Script:
    """Read and check a JSON tour script (see the module docstring for its events)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ScriptError(str(path), None, "file not found") from None
    except UnicodeDecodeError:
        raise ScriptError(str(path), None, "not a text file") from None
    except json.JSONDecodeError as e:
        raise ScriptError(str(path), None, f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    return parse_script(data, str(path), known_keys)


# --------------------------------------------------------------------------------------------- playing
@dataclass
class Sweep:
    """A spread motion in progress: the share of `total` due by time t is linear over [start, start + over]."""

    event: ScriptEvent
    given: float = 0.0  # fraction of the motion already handed out

    def take(self, now: float) -> float:
        """Fraction of the whole motion newly due at `now` (the last call hands out the remainder)."""
        e = self.event
        due = 1.0 if e.over <= 0 else min(1.0, max(0.0, (now - e.t) / e.over))
        step, self.given = due - self.given, due
        return step

    @property
    def done(self) -> bool:
        return self.given >= 1.0


@dataclass
class Step:
    """What a script asks for at one simulated frame, in the order it should be applied."""

    events: list[ScriptEvent] = field(default_factory=list)  # instant events (keys, scroll, toggles, screenshots)
    look: tuple[float, float] = (0.0, 0.0)  # summed mouse-look (dx, dy) due this frame
    drags: list[tuple[str, tuple[float, float]]] = field(default_factory=list)  # ("press"|"move"|"release", (x, y))
    ended: bool = False


class ScriptPlayer:
    """Walks a Script along a simulated clock: `step(now)` returns what became due since the previous call."""

    def __init__(self, script: Script):
        self.script = script
        self.next = 0  # index of the first event not yet fired
        self.sweeps: list[Sweep] = []

    def step(self, now: float) -> Step:
        out = Step()
        events = self.script.events
        while self.next < len(events) and events[self.next].t <= now:
            e = events[self.next]
            self.next += 1
            if e.action in SPREADABLE:
                self.sweeps.append(Sweep(e))
                if e.action == "drag":
                    out.drags.append(("press", e.value[0]))
            else:
                out.events.append(e)
        dx = dy = 0.0
        for sweep in self.sweeps:
            frac = sweep.take(now)
            e = sweep.event
            if e.action == "mouse":
                dx, dy = dx + frac * e.value[0], dy + frac * e.value[1]
            else:
                (x0, y0), (x1, y1) = e.value
                a = sweep.given
                out.drags.append(("release" if sweep.done else "move", (x0 + a * (x1 - x0), y0 + a * (y1 - y0))))
        self.sweeps = [s for s in self.sweeps if not s.done]
        out.look = (dx, dy)
        out.ended = now >= self.script.end_time
        return out

    def frames(self, fps: float) -> int:
        """How many frames a run at `fps` draws: times 0, 1/fps, ... up to and including the end time."""
        return math.floor(self.script.end_time * fps + 1e-9) + 1
