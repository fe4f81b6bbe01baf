"""First-person camera controller: keyboard and mouse in, OpenCV world-to-camera poses out.

Pure logic with no window, so it is tested directly: the app forwards input as key names ('w', 'a', 's', 'd',
'q', 'e', 'shift') and mouse deltas, calls `update(dt)` once per drawn frame and reads `.w2c` to draw the memory.
`predict(n, fps)` gives the poses the camera will have over the next n generated frames if the input stays as it
is: the chunk the client streams to the server as a Trajectory. Motion is a velocity that approaches the target
set by the keys with exponential damping, integrated in closed form, so any split of time into frames gives the
same path. The world is y-up (floor at y = 0); yaw turns about world up, pitch is clamped short of vertical and
there is no roll.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.geometry import invert_se3, look_at

KEYS = frozenset({"w", "a", "s", "d", "q", "e", "shift"})
WORLD_UP = np.array([0.0, 1.0, 0.0])
STOP_SPEED = 1e-4  # m/s: below this a coasting camera is snapped to rest, so predictions become static


@dataclass
class CameraConfig:
    """Feel of the controller; defaults suit metric indoor and street scenes."""

    speed: float = 1.5  # m/s walking speed at start
    min_speed: float = 0.05
    max_speed: float = 50.0
    fast_factor: float = 4.0  # Shift multiplies the speed
    scroll_factor: float = 1.25  # speed multiplier per wheel notch
    mouse_sensitivity: float = 0.0025  # radians per pixel of mouse motion
    pitch_limit_deg: float = 89.0  # short of vertical, where yaw would be undefined
    damping_time: float = 0.15  # s: velocity closes 63% of the gap to its target in this time

    def __post_init__(self) -> None:
        if not 0 < self.min_speed <= self.speed <= self.max_speed:
            raise ValueError(f"need 0 < min_speed <= speed <= max_speed, got {self.min_speed}, {self.speed}, "
                             f"{self.max_speed}")
        if self.damping_time <= 0 or self.fast_factor <= 0 or self.scroll_factor <= 1:
            raise ValueError("damping_time and fast_factor must be positive and scroll_factor > 1")
        if not 0 < self.pitch_limit_deg < 90:
            raise ValueError(f"pitch_limit_deg must be in (0, 90), got {self.pitch_limit_deg}")


def forward_vector(yaw: float, pitch: float) -> np.ndarray:
    """Viewing direction in the y-up world: yaw 0 looks along +z, positive yaw turns right, positive pitch up."""
    return np.array([-math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch)])


class CameraController:
    """WASD + mouse-look first-person camera with damped, frame-rate independent motion."""

    def __init__(self, position=(0.0, 1.6, 0.0), yaw: float = 0.0, pitch: float = 0.0,
                 config: CameraConfig | None = None):
        self.config = config or CameraConfig()
        self.position = np.asarray(position, np.float64).copy()  # [3] camera centre in world metres
        if self.position.shape != (3,) or not np.isfinite(self.position).all():
            raise ValueError(f"position must be 3 finite numbers, got {position!r}")
        self.velocity = np.zeros(3)  # [3] m/s in world
        self.yaw = float(yaw)
        self.pitch = 0.0
        self._set_pitch(pitch)
        self.speed = self.config.speed
        self.keys: set[str] = set()

    @classmethod
    def from_w2c(cls, w2c: np.ndarray, config: CameraConfig | None = None) -> "CameraController":
        """Start at a given pose (e.g. the session's first camera); any roll is dropped."""
        cam = cls(config=config)
        cam.set_pose(w2c)
        return cam

    def set_pose(self, w2c: np.ndarray) -> None:
        """Teleport to a world-to-camera pose and stop; yaw and pitch come from its viewing direction."""
        c2w = invert_se3(np.asarray(w2c, np.float64))
        if not np.isfinite(c2w).all():
            raise ValueError("set_pose: pose has non-finite values")
        f = c2w[:3, 2]
        self.position = c2w[:3, 3].copy()
        self.yaw = math.atan2(-f[0], f[2])
        self._set_pitch(math.asin(float(np.clip(f[1] / np.linalg.norm(f), -1.0, 1.0))))
        self.velocity[:] = 0.0

    # ----------------------------------------------------------------------------------------- input
    def key_down(self, key: str) -> None:
        self.keys.add(self._check_key(key))

    def key_up(self, key: str) -> None:
        self.keys.discard(self._check_key(key))

    def release_all(self) -> None:
        """Forget held keys (the window lost focus and will not see their release)."""
        self.keys.clear()

    def mouse_motion(self, dx: float, dy: float) -> None:
        """Mouse moved by (dx, dy) pixels, pyglet's convention: dx > 0 right, dy > 0 up. Turns at once."""
        s = self.config.mouse_sensitivity
        self.yaw = (self.yaw + dx * s + math.pi) % (2 * math.pi) - math.pi
        self._set_pitch(self.pitch + dy * s)

    def scroll(self, dy: float) -> None:
        """Wheel notches: up speeds up, down slows down, geometrically, within [min_speed, max_speed]."""
        c = self.config
        self.speed = float(np.clip(self.speed * c.scroll_factor ** dy, c.min_speed, c.max_speed))

    # ----------------------------------------------------------------------------------------- motion
    def update(self, dt: float) -> None:
        """Advance by dt seconds with the current input (closed form: independent of how time is split)."""
        if not dt >= 0 or not math.isfinite(dt):
            raise ValueError(f"dt must be finite and >= 0, got {dt}")
        target = self.target_velocity()
        decay = math.exp(-dt / self.config.damping_time)
        self.position += target * dt + (self.velocity - target) * self.config.damping_time * (1.0 - decay)
        self.velocity = target + (self.velocity - target) * decay
        if not self.keys and np.linalg.norm(self.velocity) < STOP_SPEED:
            self.velocity[:] = 0.0

    def target_velocity(self) -> np.ndarray:
        """World velocity [3] the held keys ask for: unit direction times speed (Shift: times fast_factor)."""
        k = self.keys
        fwd, right = self.ground_axes()
        direction = ((("w" in k) - ("s" in k)) * fwd + (("d" in k) - ("a" in k)) * right
                     + (("e" in k) - ("q" in k)) * WORLD_UP)
        norm = np.linalg.norm(direction)
        if norm == 0:
            return np.zeros(3)
        speed = self.speed * (self.config.fast_factor if "shift" in k else 1.0)
        return direction / norm * speed

    def predict(self, n: int, fps: float) -> np.ndarray:
        """Poses [n, 4, 4] at 1/fps, 2/fps, ..., n/fps seconds from now if the input stays as it is."""
        if n < 1 or not fps > 0:
            raise ValueError(f"predict needs n >= 1 and fps > 0, got n={n}, fps={fps}")
        t = np.arange(1, n + 1) / fps  # [n]
        target = self.target_velocity()
        tau = self.config.damping_time
        centres = (self.position + t[:, None] * target
                   + (1.0 - np.exp(-t / tau))[:, None] * tau * (self.velocity - target))  # [n, 3]
        rot = self.w2c[:3, :3]
        out = np.zeros((n, 4, 4))
        out[:, :3, :3] = rot
        out[:, :3, 3] = -centres @ rot.T  # t = -R c
        out[:, 3, 3] = 1.0
        return out

    # ----------------------------------------------------------------------------------------- pose
    @property
    def forward(self) -> np.ndarray:
        return forward_vector(self.yaw, self.pitch)

    def ground_axes(self) -> tuple[np.ndarray, np.ndarray]:
        """Forward (the camera's +z projected on the floor) and right, both unit and horizontal."""
        fwd = np.array([-math.sin(self.yaw), 0.0, math.cos(self.yaw)])
        return fwd, np.cross(fwd, WORLD_UP)

    @property
    def w2c(self) -> np.ndarray:
        """World-to-camera [4, 4] float64, OpenCV axes (x right, y down, z forward)."""
        return look_at(self.position, self.position + self.forward, WORLD_UP)

    @property
    def moving(self) -> bool:
        """Whether the pose changes if time passes (keys held or still coasting)."""
        return bool(self.keys) or bool(np.any(self.velocity))

    # ----------------------------------------------------------------------------------------- helpers
    def _set_pitch(self, pitch: float) -> None:
        limit = math.radians(self.config.pitch_limit_deg)
        self.pitch = float(np.clip(pitch, -limit, limit))

    @staticmethod
    def _check_key(key: str) -> str:
        if key not in KEYS:
            raise ValueError(f"unknown camera key {key!r}; the controller knows {sorted(KEYS)}")
        return key
