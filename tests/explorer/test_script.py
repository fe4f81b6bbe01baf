"""Tour scripts: parsing with named errors, events firing on the simulated clock, spread motions summing exactly."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from explorer.app import KEY_NAMES
from explorer.camera import KEYS as CAMERA_KEYS
from explorer.camera import CameraController
from explorer.script import DEFAULT_TOUR, ScriptError, ScriptPlayer, load_script, parse_script


def play(script, fps):
    player = ScriptPlayer(script)
    return [player.step(k / fps) for k in range(player.frames(fps))]


def test_events_fire_on_the_first_frame_at_or_after_their_time():
    s = parse_script([{"t": 0.5, "key_down": "w"}, {"t": 2.0, "key_up": "w"}, {"t": 3, "toggle_view": True},
                      {"t": 6, "end": True}], known_keys=KEY_NAMES)
    steps = play(s, fps=4)
    assert len(steps) == 25  # t = 0, 0.25, ..., 6.0
    fired = {k: [(e.action, e.value) for e in st.events] for k, st in enumerate(steps) if st.events}
    assert fired == {2: [("key_down", "w")], 8: [("key_up", "w")], 12: [("toggle_view", True)]}
    assert [k for k, st in enumerate(steps) if st.ended] == [24]
    # a frame rate whose frames miss the exact times fires each event once, on the next frame
    steps = play(s, fps=3)
    downs = [k for k, st in enumerate(steps) for e in st.events if e.action == "key_down"]
    assert downs == [2]  # t = 0.667 is the first frame at or after 0.5


@pytest.mark.parametrize("fps", [7, 24, 60])
def test_spread_mouse_motion_sums_exactly_at_any_frame_rate(fps):
    s = parse_script([{"t": 1.0, "mouse": [400, -30], "over": 1.5}, {"t": 1.0, "mouse": [10, 0]}])
    steps = play(s, fps)
    total = (sum(st.look[0] for st in steps), sum(st.look[1] for st in steps))
    assert total == pytest.approx((410, -30))
    moving = [k / fps for k, st in enumerate(steps) if st.look != (0.0, 0.0)]
    assert min(moving) >= 1.0 and max(moving) <= 2.5 + 1 / fps
    # linear in time: half the motion is handed out by the middle of the interval
    half = sum(st.look[0] for k, st in enumerate(steps) if k / fps <= 1.75)
    assert half == pytest.approx(10 + 200, abs=400 / (1.5 * fps) + 1e-9)


def test_drag_presses_moves_and_releases_along_the_line():
    s = parse_script([{"t": 0.0, "drag": [[10, 20], [110, 220]], "over": 1.0}])
    phases = [d for st in play(s, fps=4) for d in st.drags]
    assert phases[0] == ("press", (10.0, 20.0))
    assert [p for p, _ in phases[1:-1]] == ["move"] * (len(phases) - 2)
    assert phases[-1] == ("release", (110.0, 220.0))
    xs = [xy[0] for _, xy in phases]
    assert xs == sorted(xs)
    instant = parse_script([{"t": 0.0, "drag": [[1, 2], [3, 4]]}])
    assert [d for st in play(instant, 10) for d in st.drags] == [("press", (1.0, 2.0)), ("release", (3.0, 4.0))]


def test_default_end_and_frame_count():
    s = parse_script([{"t": 2.0, "mouse": [1, 0], "over": 0.5}])
    assert s.end_time == pytest.approx(3.5)  # last event's end plus the one-second tail
    assert ScriptPlayer(s).frames(10) == 36


@pytest.mark.parametrize("data, fragment", [
    ({"t": 1}, "a JSON list"),
    ([[1, 2]], "event 0: each event is an object"),
    ([{"key_down": "w"}], "event 0: missing the time"),
    ([{"t": -1, "key_down": "w"}], "t must be >= 0"),
    ([{"t": "soon", "key_down": "w"}], "t must be a finite number"),
    ([{"t": 0, "key_down": "w", "key_up": "w"}], "exactly one action"),
    ([{"t": 0}], "exactly one action"),
    ([{"t": 0, "jump": True}], "unknown field(s) ['jump']"),
    ([{"t": 0, "key_down": "k"}], "unknown key 'k'"),
    ([{"t": 0, "key_down": "ctrl+z"}], "only work with \"key\""),
    ([{"t": 0, "key": "alt+z"}], "only ctrl+KEY"),
    ([{"t": 0, "mouse": [1]}], "mouse must be a list of two numbers"),
    ([{"t": 0, "mouse": [1, 2], "over": -1}], "over must be >= 0"),
    ([{"t": 0, "key": "x", "over": 1}], "\"over\" applies to mouse and drag only"),
    ([{"t": 0, "drag": [1, 2]}], "drag start must be a list of two numbers"),
    ([{"t": 0, "screenshot": "../x"}], "plain file stem"),
    ([{"t": 0, "end": False}], "end takes true"),
    ([{"t": 0, "end": True}, {"t": 1, "end": True}], "a second \"end\""),
    ([{"t": 2, "key": "x"}, {"t": 1, "end": True}], "does not finish before the end"),
    ([{"t": 0.5, "mouse": [1, 1], "over": 1}, {"t": 1, "end": True}], "does not finish before the end"),
])
def test_bad_scripts_name_the_event_and_the_fault(data, fragment):
    with pytest.raises(ScriptError) as err:
        parse_script(data, "tour.json", known_keys=KEY_NAMES)
    assert fragment in str(err.value) and str(err.value).startswith("tour.json")


def test_files_load_and_errors_name_them(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps([{"t": 0, "key": "ctrl+z"}, {"t": 0.5, "end": True}]))
    s = load_script(path, KEY_NAMES)
    assert s.events[0].value == "ctrl+z" and s.end_time == 0.5 and s.source == str(path)
    path.write_text("[{\"t\": 0,}")
    with pytest.raises(ScriptError, match=r"t.json: not valid JSON \(line 1"):
        load_script(path)
    with pytest.raises(ScriptError, match="file not found"):
        load_script(tmp_path / "missing.json")


def test_the_packaged_tour_walks_out_looks_around_and_returns():
    s = load_script(DEFAULT_TOUR, KEY_NAMES)
    cam = CameraController()
    start, fps, farthest = cam.position.copy(), 24, 0.0
    for st in play(s, fps):
        for e in st.events:
            if e.action == "key_down" and e.value in CAMERA_KEYS:
                cam.key_down(e.value)
            elif e.action == "key_up" and e.value in CAMERA_KEYS:
                cam.key_up(e.value)
        cam.mouse_motion(*st.look)
        cam.update(1 / fps)
        farthest = max(farthest, float(np.linalg.norm(cam.position - start)))
    assert farthest > 3.0  # it walks out ...
    assert np.linalg.norm(cam.position - start) < 0.1  # ... and comes back
    assert abs(math.remainder(cam.yaw, 2 * math.pi)) < 0.02  # facing the way it started
    assert {e.value for e in s.events if e.action == "screenshot"} >= {"start", "edit", "return"}
