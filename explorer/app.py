"""The explorer application: one class that owns the view, the frames, the HUD, the edit tools and the client.

`ExplorerApp` is toolkit-free: input arrives as key names and mouse coordinates (`key_press("w")`, `look(dx, dy)`,
`mouse_press(x, y, "left")`), and `tick(fbo, size)` runs one frame: it drains the server's messages, moves the
camera, streams the predicted path, advances playback and draws memory, frame, selection, HUD and status into
the framebuffer. Two runners drive it:

- `run_window`: a pyglet window (OpenGL 3.3 core); `WindowInput` turns pyglet events into the app's input calls.
- `run_headless`: a standalone EGL context and an offscreen framebuffer, input from a `Script` on a simulated
  clock, every frame written to an MP4 (see `run_headless` for how the clock waits for generation).

Coordinates: the server's world is what the memory, frames and edits use. The camera controller assumes a y-up
world; when a session's start camera says the world is y-down (the release's convention when its first camera is
the identity), a fixed flip `world_T` (server -> viewer world) keeps the view upright; poses cross it both ways.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import moderngl
import numpy as np

from engine.geometry import fov_to_intrinsics, invert_se3
from engine.server.protocol import (Ack, Capabilities, ClipDone, Error, Frame, Load, MemoryDelta, Message, Resync,
                                    Save)
from explorer.camera import KEYS as CAMERA_KEYS
from explorer.camera import CameraConfig, CameraController
from explorer.client import OPEN_TYPES, Client, ClientConfig, LinkState, LocalServer, PoseStreamer, StreamConfig
from explorer.edit import EditConfig, Editor, SelectionOverlay, normalize_rect, select_in_rect
from explorer.frames import FramePanel, PanelMode
from explorer.gl import Rect, TexturedQuad, gl_projection, offscreen, read_rgb, standalone_context
from explorer.hud import Connection, Hud, HudState, RateMeter, render_text
from explorer.memory_view import DeltaError, MemoryView, MemoryViewConfig
from explorer.recorder import GeneratedRecorder, VideoWriter, next_free, write_png
from explorer.script import Script, ScriptPlayer, Step

# every key name the app reacts to (docs/explorer.md says what each does); scripts may use any of them
KEY_NAMES = CAMERA_KEYS | frozenset({"tab", "x", "delete", "backspace", "c", "b", "u", "z", "ctrl", "f5", "f9", "f12",
                                     "r", "h", "escape"})
STATUS_DELAY_S = 0.5  # a connecting state shorter than this is not worth a centred message


@dataclass
class AppConfig:
    """Everything the app needs to know that is not a live object."""

    width: int = 1280
    height: int = 720
    fov_deg: float = 60.0  # horizontal field of view when the session brings no intrinsics (procedural, load)
    session_name: str = "explorer"  # F5 saves and F9 loads this name on the server
    out_dir: Path = Path("explorer-output")  # recordings and screenshots
    mode: PanelMode = PanelMode.SIDE_BY_SIDE
    font_size: int = 14
    hud: bool = True  # show the HUD (H toggles)
    notice_s: float = 4.0  # how long a notice stays at the bottom of the screen
    max_lag_s: float = 1.0  # playback holds at most this much video before skipping ahead
    max_server_restarts: int = 3  # a local server that dies is restarted (with --resume) this often
    background: tuple[float, float, float] = (0.04, 0.04, 0.05)
    camera: CameraConfig = field(default_factory=CameraConfig)
    view: MemoryViewConfig = field(default_factory=MemoryViewConfig)
    edit: EditConfig = field(default_factory=EditConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    client: ClientConfig = field(default_factory=ClientConfig)

    def __post_init__(self) -> None:
        if self.width < 16 or self.height < 16:
            raise ValueError(f"window size must be at least 16x16, got {self.width}x{self.height}")
        if not 1.0 <= self.fov_deg <= 170.0:
            raise ValueError(f"fov_deg must be in [1, 170], got {self.fov_deg}")
        self.out_dir = Path(self.out_dir)


def up_frame(start_w2c: np.ndarray) -> np.ndarray:
    """Server -> viewer world [4, 4]: identity when the start camera's up points along +y, else a flip about x.

    The flip (y -> -y, z -> -z) keeps the floor plane y = 0 and axis-aligned boxes as they are.
    """
    up = -np.asarray(start_w2c)[1, :3]  # the camera's up (-y_cam) in world coordinates: minus row 1 of R
    return np.eye(4) if up[1] >= 0 else np.diag([1.0, -1.0, -1.0, 1.0])


def viewport_K(intrinsics: np.ndarray, vw: int, vh: int, frame_aspect: float) -> np.ndarray:
    """Pixel K [3, 3] for a vw x vh viewport showing the session's camera (normalised intrinsics [4] of frames
    with aspect `frame_aspect`): the horizontal field of view and pixel aspect are kept, so a viewport with the
    frames' aspect shows exactly the generated view and a wider or taller one shows more or less of it."""
    fx, fy, cx, cy = np.asarray(intrinsics, np.float64)
    K = np.eye(3)
    K[0, 0], K[1, 1] = fx * vw, fy * vw / frame_aspect
    K[0, 2], K[1, 2] = cx * vw, cy * vh
    return K


class StatusText:
    """One line of text, centred or at the bottom centre (connection trouble, notices), rendered like the HUD."""

    def __init__(self, ctx: moderngl.Context, font):
        self.quad = TexturedQuad(ctx, filter_linear=False)
        self.font = font
        self.text = ""

    def draw(self, text: str, viewport: Rect, centred: bool = True, margin: int = 12) -> None:
        if not text:
            return
        if text != self.text:
            self.quad.upload(render_text([text], self.font, padding=8, background=(0, 0, 0, 190)))
            self.text = text
        x, y, w, h = viewport
        tw, th = self.quad.size
        self.quad.draw((x + (w - tw) // 2, y + ((h - th) // 2 if centred else margin), tw, th), viewport)

    def release(self) -> None:
        self.quad.release()


class ExplorerApp:
    """The explorer: input in, one frame per `tick`, protocol messages to and from the server."""

    def __init__(self, ctx: moderngl.Context, config: AppConfig | None = None, client: Client | None = None,
                 open_message: Message | None = None, local_server: LocalServer | None = None,
                 clock: Callable[[], float] = time.monotonic, offline_memory: MemoryDelta | None = None):
        self.ctx = ctx
        self.config = c = config or AppConfig()
        self.client, self.open_message, self.local_server, self.clock = client, open_message, local_server, clock
        self.camera = CameraController(config=c.camera)
        self.view = MemoryView(ctx, c.view)
        self.panel = FramePanel(ctx, fps=24.0, max_lag_s=c.max_lag_s, mode=c.mode)
        self.hud = Hud(ctx, font_size=c.font_size)
        self.show_hud = c.hud
        self.status = StatusText(ctx, self.hud.font)
        self.notice_text = StatusText(ctx, self.hud.font)
        self.editor = Editor(c.edit)
        self.overlay = SelectionOverlay(ctx, c.edit.highlight_rgb)
        self.streamer = PoseStreamer(c.stream)
        self.recorder = GeneratedRecorder(c.out_dir)
        self.capabilities: Capabilities | None = None
        self.world_T = np.eye(4)  # server world -> viewer world (see up_frame)
        self.intrinsics: np.ndarray | None = self._intrinsics_of(open_message)  # session's normalised [4]
        self.view_rate, self.gen_rate = RateMeter(), RateMeter()  # view: app clock; generation: wall clock
        self.latency_ms: float | None = None
        self.latencies_ms: list[float] = []
        self.real_latencies_ms: list[float] = []
        self.notice, self.notice_until = "", -math.inf
        self.pointer_captured = False  # look follows the mouse (after a click, until Esc)
        self.right_look = False  # look while the right button is held
        self.drag: tuple[tuple[float, float], tuple[float, float]] | None = None  # framebuffer px, y up
        self.should_close = False
        self.await_start = False  # put the camera at the next start frame (seq 0)
        self.awaiting_full = False  # a Resync is out: incremental deltas are skipped until the full one
        self.session_ready = False  # memory and start frame arrived
        self.frames_received = self.frames_drawn = 0
        self.last_clip: ClipDone | None = None
        self.server_restarts = 0
        self.fatal = ""  # a failure the app cannot recover from (shown centred; headless runs stop on it)
        self.screenshot_requests: list[Path] = []
        self.screenshots: list[Path] = []
        self.size = (c.width, c.height)
        self._last_tick: float | None = None
        if client is None and offline_memory is not None:
            self._apply_delta(offline_memory)
            self.session_ready = True

    # ----------------------------------------------------------------------------------------- session
    @staticmethod
    def _intrinsics_of(msg: Message | None) -> np.ndarray | None:
        intr = getattr(msg, "intrinsics", None)
        return None if intr is None else np.asarray(intr, np.float64).reshape(-1, 4)[0]

    def _open(self, msg: Message) -> None:
        """Open a session (the start one, or F9's load): the camera goes to its start frame when it arrives."""
        if self.client is None:
            self.say("offline: no server to open a session on")
            return
        if msg.type not in OPEN_TYPES:
            raise ValueError(f"not a session-opening message: {msg.type}")
        intr = self._intrinsics_of(msg)
        if intr is not None:
            self.intrinsics = intr
        caps = self.capabilities
        if caps is not None:
            self.streamer.configure(caps.fps, caps.chunk_frames, self.session_intrinsics())
        self.await_start = True
        self.client.open(msg)

    def say(self, text: str) -> None:
        """A notice: at the bottom of the screen for a few seconds, then kept on the HUD's last line."""
        self.notice, self.notice_until = text, self.clock() + self.config.notice_s

    @property
    def frame_aspect(self) -> float:
        caps = self.capabilities
        return caps.width / caps.height if caps else self.panel.aspect

    def session_intrinsics(self) -> np.ndarray:
        if self.intrinsics is None:
            return fov_to_intrinsics(self.config.fov_deg, self.frame_aspect)
        return self.intrinsics

    def to_server(self, w2c: np.ndarray) -> np.ndarray:
        """Viewer-world poses [..., 4, 4] -> server world."""
        return w2c @ self.world_T

    def from_server(self, w2c: np.ndarray) -> np.ndarray:
        return w2c @ invert_se3(self.world_T)

    # ----------------------------------------------------------------------------------------- messages
    def pump(self, timeout_ms: int = 0) -> int:
        """Handle what the server sent (waiting up to timeout_ms); returns how many messages came."""
        if self.client is None:
            return 0
        msgs = self.client.poll(timeout_ms)
        for notice in self.client.notices:
            self.say(notice)
        self.client.notices.clear()
        for msg in msgs:
            self.handle(msg)
        return len(msgs)

    def handle(self, msg: Message) -> None:
        now = self.clock()
        if isinstance(msg, Frame):
            self._on_frame(msg, now)
        elif isinstance(msg, MemoryDelta):
            self._on_delta(msg)
        elif isinstance(msg, Capabilities):
            self._on_capabilities(msg)
        elif isinstance(msg, Ack):
            self._on_ack(msg)
        elif isinstance(msg, Error):
            line = self.editor.resolve(msg)
            self.say(line or f"server error ({msg.code.value}{', ' + msg.ref_type if msg.ref_type else ''}): "
                              f"{msg.message}")
        elif isinstance(msg, ClipDone):
            self.last_clip = msg

    def _on_capabilities(self, caps: Capabilities) -> None:
        self.capabilities = caps
        self.panel.queue.fps = caps.fps
        self.recorder.fps = caps.fps
        self.streamer.configure(caps.fps, caps.chunk_frames, self.session_intrinsics())
        self.streamer.reset()  # a new connection: whatever the server had queued is gone
        if not self.client.session_open and self.open_message is not None:
            self._open(self.open_message if self.client.open_message is None else self.client.open_message)

    def _on_ack(self, ack: Ack) -> None:
        if ack.ref_type in OPEN_TYPES:
            self.say(ack.message or "session open")
        elif ack.ref_type == "save":
            self.say(ack.message or f"saved session {self.config.session_name!r}")
        else:
            line = self.editor.resolve(ack)
            if line:
                self.say(line)

    def _on_delta(self, delta: MemoryDelta) -> None:
        if self.awaiting_full and not delta.full:
            return  # out of step until the full delta answering our Resync arrives
        try:
            self._apply_delta(delta)
        except DeltaError as e:
            self.awaiting_full = True
            self.say(f"memory out of step ({e}): asking for a full copy")
            if self.client is not None:
                self.client.send(Resync(have_version=-1 if self.view.version is None else self.view.version))
            return
        if delta.full:
            self.awaiting_full = False

    def _apply_delta(self, delta: MemoryDelta) -> None:
        self.view.apply_delta(delta)
        if self.client is not None:
            self.client.have_version = self.view.version
        if len(self.editor.selected):
            slot_of = self.view.slots.slot_of
            self.editor.prune(np.fromiter(map(slot_of.__contains__, self.editor.selected.tolist()), bool,
                                          len(self.editor.selected)))
            self._upload_selection()

    def _on_frame(self, frame: Frame, now: float) -> None:
        self.frames_received += 1
        self.gen_rate.tick(time.monotonic())  # the server's real rate, also when the app's clock is simulated
        self.streamer.on_frame(frame)
        self.recorder.add(np.asarray(frame.rgb))
        if frame.seq == 0 and self.await_start:  # the start frame of an open or load (trajectories count from 1)
            self.await_start = False
            self.world_T = up_frame(frame.w2c)
            self.camera.set_pose(self.from_server(np.asarray(frame.w2c)))
            self.view.clear_path()
            self.panel.queue.clear()
            self.streamer.reset()
            self.session_ready = True
        self.panel.push(frame, now)

    # ----------------------------------------------------------------------------------------- input
    def key_press(self, name: str, ctrl: bool = False) -> None:
        """A key went down (a name of KEY_NAMES; ctrl: the ctrl modifier is held)."""
        name = name.lower()
        if name in CAMERA_KEYS and not (ctrl and name == "q"):
            self.camera.key_down(name)
            self.streamer.note_input(self.clock())
            return
        send = self.client.send if self.client is not None else (lambda _: self.say("offline: this needs a server"))
        if name == "tab":
            self.panel.mode = self.panel.mode.next()
            self.say(f"view: {self.panel.mode.value.replace('_', ' ')}")
        elif name == "x":
            on = self.editor.toggle()
            if on:
                self.pointer_captured = False
            else:
                self.editor.clear()
                self.drag = None
                self._upload_selection()
            self.say("edit mode: drag a box to select, Delete, C recolour, B box, U undo" if on else "edit mode off")
        elif name in ("delete", "backspace"):
            msg = self.editor.delete()
            if msg is None:
                self.say("nothing selected (X, then drag a box)")
            else:
                send(msg)
                self._upload_selection()
        elif name == "c":
            msg = self.editor.recolor()
            if msg is None:
                self.say("nothing selected (X, then drag a box)")
            else:
                send(msg)
        elif name == "b":
            msg = self.editor.insert_box(self.to_server(self.camera.w2c))
            send(msg)
        elif name == "u" or (name == "z" and ctrl):
            send(self.editor.undo())
            self.say("undo")
        elif name == "q" and ctrl:
            self.should_close = True
        elif name == "f5":
            send(Save(name=self.config.session_name))
        elif name == "f9":
            self._open(Load(name=self.config.session_name))
            self.say(f"loading session {self.config.session_name!r}")
        elif name == "f12":
            self.screenshot_requests.append(next_free(self.config.out_dir, "screenshot", ".png"))
        elif name == "r":
            fps = self.capabilities.fps if self.capabilities else None
            on, path = self.recorder.toggle(fps)
            self.say(f"recording generated frames to {path}" if on else f"saved {path}")
        elif name == "h":
            self.show_hud = not self.show_hud
        elif name == "escape":
            if self.pointer_captured:
                self.pointer_captured = False
            elif self.drag is not None:
                self.drag = None
            elif self.editor.active:
                self.key_press("x")

    def key_release(self, name: str) -> None:
        name = name.lower()
        if name in CAMERA_KEYS:
            self.camera.key_up(name)
            self.streamer.note_input(self.clock())

    def release_all(self) -> None:
        """Focus lost: held keys and the pointer are let go (their release events will not come)."""
        had = bool(self.camera.keys)
        self.camera.release_all()
        self.pointer_captured = self.right_look = False
        if had:
            self.streamer.note_input(self.clock())

    def look(self, dx: float, dy: float) -> None:
        """Mouse-look by (dx, dy) pixels, dx > 0 right, dy > 0 up."""
        if dx or dy:
            self.camera.mouse_motion(dx, dy)
            self.streamer.note_input(self.clock())

    def scroll(self, dy: float) -> None:
        self.camera.scroll(dy)
        self.streamer.note_input(self.clock())
        self.say(f"speed {self.camera.speed:.2f} m/s")

    @property
    def looking(self) -> bool:
        return self.pointer_captured or self.right_look

    def mouse_press(self, x: float, y: float, button: str) -> None:
        """A button went down at framebuffer pixel (x, y), y up."""
        if button == "right":
            self.right_look = True
        elif button == "left":
            if self.editor.active:
                self.drag = ((x, y), (x, y))
            else:
                self.pointer_captured = True

    def mouse_motion(self, x: float, y: float, dx: float, dy: float) -> None:
        if self.drag is not None:
            self.drag = (self.drag[0], (x, y))
        elif self.looking:
            self.look(dx, dy)

    def mouse_release(self, x: float, y: float, button: str) -> None:
        if button == "right":
            self.right_look = False
        elif button == "left" and self.drag is not None:
            start, _ = self.drag
            self.drag = None
            self.select_rect(start, (x, y), add="shift" in self.camera.keys)

    # ----------------------------------------------------------------------------------------- selection
    def memory_camera(self) -> tuple[np.ndarray, np.ndarray, Rect] | None:
        """(server-world w2c, pixel K, viewport) the memory is drawn with now, None when it is hidden."""
        W, H = self.size
        lay = self.panel.layout(W, H)
        if lay.memory is None or lay.memory[2] <= 0 or lay.memory[3] <= 0:
            return None
        _, _, mw, mh = lay.memory
        if self.panel.mode is PanelMode.BLEND and self.panel.current is not None:
            w2c = np.asarray(self.panel.current.w2c)  # blended frames are compared at their own pose
        else:
            w2c = self.to_server(self.camera.w2c)
        return w2c, viewport_K(self.session_intrinsics(), mw, mh, self.frame_aspect), lay.memory

    def sprite(self) -> tuple[float, tuple[float, float]]:
        """Sprite diameter in metres and pixel clamp, as the memory view draws them now."""
        c, n = self.view.config, self.view.num_points
        fraction = 1.0 if n <= self.view.budget else self.view.budget / n
        growth = min(fraction ** -c.lod_growth_exponent, c.lod_max_growth)
        return self.view.voxel_size * c.point_scale * growth, (c.min_point_px, c.max_point_px)

    def select_rect(self, a: tuple[float, float], b: tuple[float, float], add: bool = False) -> int:
        """Select the visible memory points inside the framebuffer rectangle with corners a, b (y up)."""
        cam = self.memory_camera()
        if cam is None:
            self.say("the memory view is hidden (Tab)")
            return 0
        w2c, K, (mx, my, mw, mh) = cam
        # framebuffer (y up) -> memory viewport pixels (origin top-left), the convention of K
        u0, v0, u1, v1 = normalize_rect(a[0] - mx, my + mh - a[1], b[0] - mx, my + mh - b[1])
        s = self.view.slots
        live = s.ids[: s.end] >= 0
        sprite_m, px_range = self.sprite()
        ids = select_in_rect(s.ids[: s.end][live], s.xyz[: s.end][live], w2c, K, mw, mh, (u0, v0, u1, v1),
                             sprite_m, px_range, self.view.voxel_size, self.editor.config)
        count = self.editor.select(ids, add=add)
        self._upload_selection()
        self.say(f"{count:,} points selected" if count else "no visible points in the box")
        return count

    def _upload_selection(self) -> None:
        sel = self.editor.selected
        slots = self.view.slots
        xyz = slots.xyz[slots.lookup(sel, "selection")] if len(sel) else np.zeros((0, 3), np.float32)
        self.overlay.set_points(xyz)

    # ----------------------------------------------------------------------------------------- frame
    def tick(self, fbo: moderngl.Framebuffer, size: tuple[int, int]) -> None:
        """One frame: messages, camera, streaming, playback, drawing (into `fbo`, `size` pixels), screenshots."""
        now = self.clock()
        dt = 0.0 if self._last_tick is None else max(0.0, now - self._last_tick)
        self._last_tick = now
        self.size = (int(size[0]), int(size[1]))
        self.pump(0)
        self.watch_local_server()
        self.camera.update(dt)
        linked = self.client is not None and self.client.state in (LinkState.CONNECTED, LinkState.WAITING)
        if linked and self.session_ready and not self.await_start:  # poses sent into a dead link would go stale
            traj = self.streamer.update(self.camera, now, self.to_server)
            if traj is not None:
                self.client.send(traj)
        if self.panel.update(now):
            lat = self.streamer.latency(self.panel.current, now)
            if lat is not None:
                self.latency_ms = lat[0] * 1e3
                self.latencies_ms.append(self.latency_ms)
                self.real_latencies_ms.append(lat[1] * 1e3)
        self.draw(fbo, now)
        self.view_rate.tick(now)
        self.frames_drawn += 1
        if self.screenshot_requests:
            image = read_rgb(fbo)
            for path in self.screenshot_requests:
                self.screenshots.append(write_png(path, image))
            self.say(f"screenshot {self.screenshots[-1]}")
            self.screenshot_requests.clear()

    def draw(self, fbo: moderngl.Framebuffer, now: float) -> None:
        ctx, (W, H) = self.ctx, self.size
        full = (0, 0, W, H)
        fbo.use()
        ctx.viewport = full
        ctx.clear(*self.config.background, 1.0, depth=1.0)
        cam = self.memory_camera()
        if cam is not None:
            w2c, K, vp = cam
            _, _, mw, mh = vp
            self.view.add_camera(self.to_server(self.camera.w2c))
            self.view.render(w2c, K, mw, mh, vp)
            if self.overlay.count:
                c = self.view.config
                mvp = gl_projection(K, mw, mh, c.near, c.far) @ w2c
                sprite_m, px_range = self.sprite()
                self.overlay.draw_points(mvp, K[0, 0], sprite_m, px_range, vp)
        lay = self.panel.layout(W, H)
        self.panel.draw(lay, full)
        if self.drag is not None:
            (x0, y0), (x1, y1) = self.drag
            self.overlay.draw_rect((int(min(x0, x1)), int(min(y0, y1)), int(abs(x1 - x0)), int(abs(y1 - y0))), full)
        if self.show_hud:
            self.hud.update(self.hud_state(now), now)
            self.hud.draw(full)
        alert = self.alert(now)
        self.status.draw(alert, full, centred=True)
        if not alert and now < self.notice_until:
            self.notice_text.draw(self.notice, full, centred=False)

    # ----------------------------------------------------------------------------------------- HUD
    def hud_state(self, now: float) -> HudState:
        caps = self.capabilities
        backend = f"{caps.model} / {caps.backend}, {caps.width}x{caps.height} @ {caps.fps:g} fps" if caps else "-"
        mode = self.panel.mode.value.replace("_", " ")
        if self.editor.active:
            mode += f" | edit ({len(self.editor.selected):,} selected)"
        if self.recorder.recording:
            mode += f" | REC {self.recorder.frames}"
        return HudState(view_fps=self.view_rate.rate(now), gen_fps=self.gen_rate.rate(time.monotonic()),
                        latency_ms=self.latency_ms, points=self.view.num_points, points_drawn=self.view.points_drawn,
                        backend=backend, queue_depth=self.streamer.pending, connection=self.connection(), mode=mode,
                        message=self.notice)

    def connection(self) -> Connection:
        if self.client is None:
            return Connection.OFFLINE
        return {LinkState.CONNECTING: Connection.CONNECTING, LinkState.CONNECTED: Connection.CONNECTED,
                LinkState.WAITING: Connection.CONNECTED, LinkState.RECONNECTING: Connection.LOST}[self.client.state]

    def alert(self, now: float) -> str:
        """The centred message: what is wrong with the connection or the session, empty when all is well."""
        if self.fatal:
            return self.fatal
        cl = self.client
        if cl is not None:
            if cl.state is LinkState.RECONNECTING:
                return f"lost the server: reconnecting to {cl.address} (attempt {cl.reconnects})"
            if cl.state is LinkState.CONNECTING and cl.silence_s > STATUS_DELAY_S:
                return f"connecting to {cl.address} ... {cl.silence_s:.0f} s"
            if cl.state is LinkState.WAITING:
                return f"waiting for the server (silent for {cl.silence_s:.0f} s)"
            if not self.session_ready and cl.state is LinkState.CONNECTED:
                return "opening the session ..."
        return ""

    # ----------------------------------------------------------------------------------------- upkeep
    def watch_local_server(self) -> None:
        """Restart a local server that died (with --resume); a server that never answered is fatal."""
        server = self.local_server
        if server is None or server.process is None:
            return
        code = server.poll()
        if code is None:
            return
        if self.capabilities is None:  # it never answered: restarting would fail the same way
            last = server.log_tail(1).strip()
            self.fatal = f"the local server exited (code {code}) before answering{': ' + last if last else ''}"
            server.process = None
            return
        if self.server_restarts >= self.config.max_server_restarts:
            self.say(f"the local server keeps exiting (code {code}); see {server.log_path}")
            server.process = None  # stop watching: nothing left to do but report
            return
        self.server_restarts += 1
        self.say(f"the local server exited (code {code}): restarting it with --resume")
        server.restart()

    def release(self) -> None:
        self.recorder.stop()
        for obj in (self.view, self.panel, self.hud, self.status, self.notice_text, self.overlay):
            obj.release()


# --------------------------------------------------------------------------------------------- window
class WindowInput:
    """pyglet event handlers (pushed on the window) that turn events into ExplorerApp input calls.

    They return True (handled) so pyglet's defaults do not act: Esc must release the pointer, not close the window.
    """

    def __init__(self, window, app: ExplorerApp):
        from pyglet.window import key, mouse

        self.window, self.app, self.key, self.mouse = window, app, key, mouse
        self.closed = False
        self._exclusive = False

    def key_name(self, symbol: int) -> str:
        name = self.key.symbol_string(symbol).lower()
        return {"lshift": "shift", "rshift": "shift", "lctrl": "ctrl", "rctrl": "ctrl"}.get(name, name)

    def _scale(self) -> float:
        """Framebuffer pixels per window unit (HiDPI screens have more than one)."""
        fw, _ = self.window.get_framebuffer_size()
        return fw / max(self.window.width, 1)

    def _button(self, button: int) -> str:
        return {self.mouse.LEFT: "left", self.mouse.RIGHT: "right", self.mouse.MIDDLE: "middle"}.get(button, "other")

    def _sync_pointer(self) -> None:
        want = self.app.looking
        if want != self._exclusive:
            self.window.set_exclusive_mouse(want)
            self._exclusive = want

    def on_key_press(self, symbol, modifiers):
        self.app.key_press(self.key_name(symbol), ctrl=bool(modifiers & self.key.MOD_CTRL))
        self._sync_pointer()
        return True

    def on_key_release(self, symbol, modifiers):
        self.app.key_release(self.key_name(symbol))
        return True

    def on_mouse_press(self, x, y, button, modifiers):
        s = self._scale()
        self.app.mouse_press(x * s, y * s, self._button(button))
        self._sync_pointer()
        return True

    def on_mouse_release(self, x, y, button, modifiers):
        s = self._scale()
        self.app.mouse_release(x * s, y * s, self._button(button))
        self._sync_pointer()
        return True

    def on_mouse_motion(self, x, y, dx, dy):
        s = self._scale()
        self.app.mouse_motion(x * s, y * s, dx, dy)
        return True

    def on_mouse_drag(self, x, y, dx, dy, buttons, modifiers):
        s = self._scale()
        self.app.mouse_motion(x * s, y * s, dx, dy)
        return True

    def on_mouse_scroll(self, x, y, scroll_x, scroll_y):
        self.app.scroll(scroll_y)
        return True

    def on_deactivate(self):
        self.app.release_all()
        self._sync_pointer()

    def on_close(self):
        self.closed = True
        return True  # the loop closes the window after releasing GL objects


def open_window(width: int, height: int, title: str = "Spatia Explorer", visible: bool = True):
    """A pyglet window with an OpenGL 3.3 core context, and a moderngl context on it."""
    import pyglet

    config = pyglet.gl.Config(major_version=3, minor_version=3, forward_compatible=True, double_buffer=True,
                              depth_size=24)
    window = pyglet.window.Window(width, height, caption=title, resizable=True, config=config, visible=visible)
    window.switch_to()  # other contexts may be current in this thread
    return window, moderngl.create_context()


def run_window(make_app: Callable[[moderngl.Context], ExplorerApp], width: int, height: int,
               max_fps: float = 120.0, max_frames: int | None = None) -> ExplorerApp:
    """Open the window and run the app until it is closed (or max_frames were drawn); returns the app."""
    window, ctx = open_window(width, height)
    app = make_app(ctx)
    handlers = WindowInput(window, app)
    window.push_handlers(handlers)
    min_period = 1.0 / max_fps
    last = time.perf_counter()
    try:
        while not (app.should_close or handlers.closed) and (max_frames is None or app.frames_drawn < max_frames):
            start = time.perf_counter()
            window.dispatch_events()
            app.tick(ctx.screen, window.get_framebuffer_size())
            window.flip()
            end = time.perf_counter()
            app.view.report_frame_time((end - last) * 1e3)  # whole frames, presentation included
            last = end
            if end - start < min_period:
                time.sleep(min_period - (end - start))  # no vsync (Xvfb, some drivers): do not spin
                last = time.perf_counter()
    finally:
        app.release()
        window.close()
    return app


# --------------------------------------------------------------------------------------------- headless
@dataclass
class HeadlessConfig:
    """How a scripted tour runs offscreen.

    The clock is simulated: frame k is drawn at t = k / fps, so the video has exactly the script's frames at any
    speed of the machine. The script must not outrun the server: before each frame, while the server still owes
    frames of the path and the simulated camera is more than `lead_chunks` chunks ahead of the newest generated
    pose, the runner waits in real time for frames (at most `max_wait_s` per frame; after a timeout it stops
    waiting until frames flow again). A fast server is never waited for; a slow one slows the tour in real time,
    not in the video, as a user would wait for generated frames.
    """

    fps: float = 24.0
    width: int = 960
    height: int = 540
    lead_chunks: float = 1.0
    max_wait_s: float = 60.0
    startup_timeout_s: float = 300.0  # the server may load a model first
    video_name: str = "window.mp4"
    generated_name: str = "generated.mp4"


class SimClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def apply_step(app: ExplorerApp, step: Step, out_dir: Path) -> None:
    """Feed one frame's worth of script input to the app."""
    W, H = app.size
    for e in step.events:
        if e.action == "key_down":
            app.key_press(e.value)
        elif e.action == "key_up":
            app.key_release(e.value)
        elif e.action == "key":
            ctrl, name = (True, e.value.split("+")[1]) if "+" in e.value else (False, e.value)
            app.key_press(name, ctrl=ctrl)
            app.key_release(name)
        elif e.action == "scroll":
            app.scroll(e.value)
        elif e.action == "toggle_view":
            app.key_press("tab")
        elif e.action == "screenshot":
            app.screenshot_requests.append(out_dir / f"{e.value}.png")
    if step.look != (0.0, 0.0):
        app.look(*step.look)
    for phase, (x, y) in step.drags:  # script pixels have their origin top-left; the app's are y up
        if phase == "press":
            app.mouse_press(x, H - y, "left")
        elif phase == "move":
            app.mouse_motion(x, H - y, 0.0, 0.0)
        else:
            app.mouse_motion(x, H - y, 0.0, 0.0)
            app.mouse_release(x, H - y, "left")


def _wait(app: ExplorerApp, done: Callable[[], bool], timeout_s: float) -> bool:
    """Poll the server in real time until done() or the timeout; True when done. Raises on a fatal failure."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if app.fatal:
            raise RuntimeError(app.fatal)
        if time.monotonic() > deadline:
            return False
        app.pump(timeout_ms=20)
        app.watch_local_server()
    return True


def run_headless(make_app: Callable[[moderngl.Context, Callable[[], float]], ExplorerApp], script: Script,
                 out_dir: str | Path, config: HeadlessConfig | None = None,
                 progress: Callable[[int, int], None] | None = None) -> dict:
    """Play `script` offscreen; writes out_dir/window.mp4, generated.mp4, screenshots and summary.json.

    Returns the summary (frames written, generated frames received, trajectories sent, latencies, waits).
    """
    hc = config or HeadlessConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = standalone_context()
    fbo = offscreen(ctx, hc.width, hc.height)
    clock = SimClock()
    app = make_app(ctx, clock)
    app.size = (hc.width, hc.height)
    real_start = time.monotonic()
    waited = 0.0
    stalls = 0
    try:
        if app.client is not None:
            if not _wait(app, lambda: app.capabilities is not None, hc.startup_timeout_s):
                raise RuntimeError(f"no answer from the server at {app.client.address} within "
                                   f"{hc.startup_timeout_s:.0f} s ({app.notice or app.client.state.value})")
            app.recorder.start(app.capabilities.fps, out / hc.generated_name)
            if not _wait(app, lambda: app.session_ready, hc.startup_timeout_s):
                raise RuntimeError(f"the session did not open within {hc.startup_timeout_s:.0f} s"
                                   f"{': ' + app.notice if app.notice else ''}")
        player = ScriptPlayer(script)
        total = player.frames(hc.fps)
        stalled, stall_mark = False, 0
        with VideoWriter(out / hc.video_name, hc.fps) as video:
            for k in range(total):
                clock.t = k / hc.fps
                apply_step(app, player.step(clock.t), out)
                if app.client is not None and app.capabilities is not None:
                    lead = hc.lead_chunks * app.capabilities.chunk_frames / app.capabilities.fps
                    stalled = stalled and app.frames_received == stall_mark  # frames flow again: wait again

                    def caught_up(lead: float = lead) -> bool:
                        return app.streamer.pending == 0 or clock.t <= app.streamer.covered_until() + lead

                    if not stalled and not caught_up():
                        t0 = time.monotonic()
                        if not _wait(app, caught_up, hc.max_wait_s):
                            stalled, stall_mark, stalls = True, app.frames_received, stalls + 1
                            app.say(f"the server sent nothing for {hc.max_wait_s:.0f} s: going on without it")
                        waited += time.monotonic() - t0
                # no frame times are reported: the video's rate is simulated, so the point budget stays whole
                app.tick(fbo, (hc.width, hc.height))
                video.append(read_rgb(fbo))
                if progress is not None:
                    progress(k + 1, total)
            frames = video.frames
    finally:
        generated = app.recorder.stop()
        summary_app = _summary(app)
        app.release()
        fbo.release()
        ctx.release()
    summary = {
        "frames": frames, "fps": hc.fps, "size": [hc.width, hc.height], "script": script.source,
        "video": hc.video_name, "generated_video": generated.name if generated else None,
        "screenshots": [p.name for p in app.screenshots], "real_s": round(time.monotonic() - real_start, 3),
        "waited_for_server_s": round(waited, 3), "stalls": stalls, "config": asdict(hc), **summary_app,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _summary(app: ExplorerApp) -> dict:
    med = lambda xs: round(statistics.median(xs), 1) if xs else None  # noqa: E731
    caps = app.capabilities
    return {
        "generated_frames": app.frames_received, "trajectories_sent": app.streamer.sent,
        "memory_points": app.view.num_points,
        "latency_ms_median": med(app.latencies_ms), "send_to_screen_real_ms_median": med(app.real_latencies_ms),
        "server": None if caps is None else {"model": caps.model, "backend": caps.backend, "width": caps.width,
                                              "height": caps.height, "fps": caps.fps,
                                              "chunk_frames": caps.chunk_frames},
    }
