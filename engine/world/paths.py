"""Camera paths through a generated scene, in engine.geometry's representation (w2c [N, 4, 4] + normalised K).

Walks imitate a player on a keyboard and mouse (WASD moves, yaw and pitch look around) and never leave free
space: every step is checked against the scene's solids (and its moving entities at that time) with a camera
radius. Orbits circle an object, loops and forward-and-back dollies return exactly to the start pose (the last
w2c equals the first, bit for bit), and return walks go somewhere and come back the same way, which is what
closed-loop consistency is measured on. Speeds are metres per second at the path's fps; the eye stays at a
standing height. A path that cannot fit in a scene raises `PathError` rather than passing through a wall.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.geometry import fov_to_intrinsics, intrinsics_to_K, look_at
from engine.world.scene import Scene


class PathError(RuntimeError):
    """No path of the asked kind fits in free space in this scene."""


@dataclass(frozen=True)
class PathConfig:
    """Motion limits shared by all path kinds (metres, seconds, degrees)."""

    radius: float = 0.3  # camera collision radius
    turn_rate_deg: float = 70.0  # yaw speed while turning
    pitch_range_deg: float = 15.0  # looks up/down at most this much
    smoothing_s: float = 0.3  # time constant of velocity changes (no instant starts and stops)
    hold_s: tuple[float, float] = (0.7, 2.2)  # how long one WASD action is held
    probe_distance: float = 3.0  # how far ahead the walker looks for open space
    min_ahead: float = 1.5  # a walker stops and turns away when less free floor than this lies ahead
    steer_distance: float = 2.8  # ... and veers away from obstacles closer than this
    steer_probe_deg: float = 35.0  # side probes for choosing which way to veer
    blocked_turn_factor: float = 1.8  # turning away from a wall is quicker than a leisurely look around
    open_side_bias: float = 0.8  # chance that a chosen turn or strafe goes towards the more open side
    probe_step: float = 0.1
    probe_yaws: int = 16
    orbit_radius: tuple[float, float] = (0.9, 3.5)
    loop_radius: tuple[float, float] = (0.35, 2.5)
    tries: int = 60


@dataclass
class CameraPath:
    """Poses over time: w2c [N, 4, 4] (OpenCV, world-to-camera), normalised intrinsics [4], frame rate."""

    w2c: np.ndarray
    intrinsics: np.ndarray  # [4] fx/W, fy/H, cx/W, cy/H, the same for every frame
    fps: float
    kind: str

    def __len__(self) -> int:
        return len(self.w2c)

    @property
    def times(self) -> np.ndarray:
        """[N] seconds of each frame (frame 0 at t = 0)."""
        return np.arange(len(self.w2c)) / self.fps

    @property
    def centers(self) -> np.ndarray:
        """[N, 3] camera centres in world coordinates."""
        R, t = self.w2c[:, :3, :3], self.w2c[:, :3, 3]
        return -np.einsum("nji,nj->ni", R, t)

    def K(self, width: int, height: int) -> np.ndarray:
        """[3, 3] pixel intrinsics for an image of width x height."""
        return intrinsics_to_K(self.intrinsics, width, height)

    @property
    def is_closed(self) -> bool:
        return bool(np.array_equal(self.w2c[0], self.w2c[-1]))


def direction(yaw: np.ndarray, pitch: np.ndarray) -> np.ndarray:
    """Unit view directions [..., 3] in the y-up world: yaw about +y (0 = looking along +z), pitch up > 0."""
    yaw, pitch = np.asarray(yaw, np.float64), np.asarray(pitch, np.float64)
    return np.stack([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)], -1)


def poses_from_yaw_pitch(eyes: np.ndarray, yaw: np.ndarray, pitch: np.ndarray) -> np.ndarray:
    """[N, 3] eyes, [N] yaw and pitch (radians) -> w2c [N, 4, 4]."""
    d = direction(yaw, pitch)
    return np.stack([look_at(e, e + v) for e, v in zip(np.asarray(eyes, np.float64), d)])


def path_is_free(scene: Scene, path: CameraPath, radius: float, dynamic: bool = True, substeps: int = 4) -> bool:
    """Whether a ball of `radius` around the camera stays in free space along the whole path, including
    between frames (sampled `substeps` times per frame) and, if `dynamic`, against moving entities."""
    c = path.centers
    if len(c) == 1:
        pts, times = c, path.times
    else:
        a = np.linspace(0, 1, substeps, endpoint=False)
        pts = np.concatenate([(c[:-1, None] * (1 - a)[:, None] + c[1:, None] * a[:, None]).reshape(-1, 3), c[-1:]])
        times = np.concatenate([(path.times[:-1, None] + a / path.fps).reshape(-1), path.times[-1:]])
    return bool(np.all(scene.is_free(pts, radius, t=times if dynamic else None)))


def _intrinsics(fov_deg: float, aspect: float) -> np.ndarray:
    if not 10.0 <= fov_deg <= 150.0:
        raise ValueError(f"field of view must be in [10, 150] degrees, got {fov_deg}")
    return fov_to_intrinsics(fov_deg, aspect)


def _check_common(n_frames: int, fps: float, speed: float, minimum: int = 2) -> None:
    if int(n_frames) < minimum:
        raise ValueError(f"a path needs at least {minimum} frames, got {n_frames}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if not speed >= 0:
        raise ValueError(f"speed must be >= 0 m/s, got {speed}")


def _eye_height(scene: Scene, rng: np.random.Generator, cfg: PathConfig) -> float:
    lo, hi = scene.eye_height
    return float(min(rng.uniform(lo, hi), scene.free_max[1] - cfg.radius - 0.05))


def _start(scene: Scene, rng: np.random.Generator, height: float, clearance: float,
           avoid_until: float = 0.0, candidates: int = 64) -> np.ndarray:
    """A random free standing point, drawn among the roomiest quarter of `candidates` free points (paths that
    start in a corner spend their first seconds staring at a wall); with avoid_until > 0 s, also clear of
    moving entities until then."""
    for c in (clearance, clearance * 0.5):
        pts = scene.sample_free_points(rng, candidates, height, c)
        if len(pts) == 0:
            continue
        if avoid_until > 0 and scene.dynamic_ids:
            gap = np.min([scene.distance(pts, t=t, static=False) for t in np.linspace(0, avoid_until, 5)], 0)
            if np.any(gap > c + 0.5):
                pts = pts[gap > c + 0.5]
            else:
                pts = pts[np.argmax(gap)][None]
        room = scene.distance(pts, surfaces=False)
        roomy = np.argsort(-room)[: max(1, len(pts) // 4)]
        return pts[rng.choice(roomy)]
    raise PathError(f"scene {scene.seed} ({scene.kind}): no free standing point at height {height:.2f} m")


def _open_distances(scene: Scene, eye: np.ndarray, yaws: np.ndarray, cfg: PathConfig, t: float | None) -> np.ndarray:
    """How far [Y] one can walk from `eye` along each yaw before hitting something."""
    steps = np.arange(1, int(cfg.probe_distance / cfg.probe_step) + 1) * cfg.probe_step  # [S]
    d = direction(yaws, np.zeros_like(yaws))  # [Y, 3]
    pts = eye + d[:, None, :] * steps[None, :, None]  # [Y, S, 3]
    free = scene.is_free(pts.reshape(-1, 3), cfg.radius, t).reshape(len(yaws), len(steps))
    blocked = ~free
    first = np.where(blocked.any(1), blocked.argmax(1), len(steps))
    return np.where(first > 0, steps[np.maximum(first - 1, 0)], 0.0)


def _most_open_yaw(scene, eye, rng, cfg, t) -> float:
    yaws = rng.uniform(0, 2 * math.pi) + np.arange(cfg.probe_yaws) * 2 * math.pi / cfg.probe_yaws
    dist = _open_distances(scene, eye, yaws, cfg, t)
    good = np.flatnonzero(dist >= dist.max() - 1e-9)
    return float(yaws[rng.choice(good)])


# ============================================================================================== paths
WALK_ACTIONS = {"forward": 0.4, "forward_turn": 0.25, "strafe": 0.1, "turn": 0.1, "back": 0.05, "pause": 0.05,
                "look": 0.05}  # relative frequency of each held action
OUTBOUND_ACTIONS = {"forward": 0.6, "forward_turn": 0.4}  # a return walk's way out keeps going somewhere


def walk_path(scene: Scene, n_frames: int, *, fps: float = 24.0, speed: float = 1.2, seed: int = 0,
              fov_deg: float = 65.0, aspect: float = 1.0, config: PathConfig | None = None,
              avoid_dynamic: bool = True, actions: dict[str, float] | None = None) -> CameraPath:
    """A WASD-style walk of any length: held actions (forward, forward while turning, strafe, back, turn in place,
    pause, look) drawn with the weights of `actions` (default WALK_ACTIONS) and smoothed velocities; blocked
    steps slide along walls or turn towards open space."""
    _check_common(n_frames, fps, speed)
    cfg, rng = config or PathConfig(), np.random.default_rng([int(seed), 7])
    dt, r = 1.0 / fps, cfg.radius
    alpha = 1.0 - math.exp(-dt / cfg.smoothing_s)
    turn = math.radians(cfg.turn_rate_deg)
    turn_blocked = turn * cfg.blocked_turn_factor
    steer_angle = math.radians(cfg.steer_probe_deg)
    pitch_max = math.radians(cfg.pitch_range_deg)
    height = _eye_height(scene, rng, cfg)
    eye = _start(scene, rng, height, r * 2, avoid_until=1.0 if avoid_dynamic else 0.0)
    yaw = _most_open_yaw(scene, eye, rng, cfg, 0.0 if avoid_dynamic else None)
    pitch = 0.0
    vel = np.zeros(2)  # forward, right (m/s)
    yaw_rate = 0.0
    cmd_vel, cmd_yaw, cmd_pitch, hold = np.zeros(2), 0.0, 0.0, 0.0
    target_yaw = None  # set when blocked: turn in place towards open space
    eyes, yaws, pitches = np.zeros((n_frames, 3)), np.zeros(n_frames), np.zeros(n_frames)
    moving_entities = avoid_dynamic and bool(scene.dynamic_ids)
    entity_margin = (speed + max((p.motion.speed for p in scene.primitives if p.dynamic), default=0.0)) * dt
    dodge = speed * dt * direction(np.arange(8) * math.pi / 4, np.zeros(8))  # [8, 3] sidesteps
    actions = actions or WALK_ACTIONS
    unknown = set(actions) - set(WALK_ACTIONS)
    if unknown:
        raise ValueError(f"walk_path: unknown actions {sorted(unknown)}; expected some of {sorted(WALK_ACTIONS)}")
    names, weights = zip(*actions.items())
    for k in range(n_frames):
        eyes[k], yaws[k], pitches[k] = eye, yaw, pitch
        t = (k + 1) * dt if avoid_dynamic else None
        hold -= dt
        # Free floor ahead, and to either side of the view direction.
        left, ahead, right_open = _open_distances(scene, eye, yaw + np.array([-1, 0, 1]) * steer_angle, cfg, None)
        if target_yaw is None and ahead < cfg.min_ahead:
            # A wall (or furniture) fills the view: turn towards open space before walking into it.
            target_yaw = _most_open_yaw(scene, eye, rng, cfg, None)
        steer = 0.0
        if target_yaw is None and ahead < cfg.steer_distance and vel[0] > 0:
            # Veer towards the roomier side while walking, the closer the obstacle the harder.
            steer = math.copysign(turn * (1 - ahead / cfg.steer_distance), right_open - left)
        if target_yaw is not None:
            diff = (target_yaw - yaw + math.pi) % (2 * math.pi) - math.pi
            cmd_vel[:] = 0.0
            cmd_yaw = float(np.clip(diff / dt, -turn_blocked, turn_blocked))
            if abs(diff) < math.radians(5):
                target_yaw, hold, cmd_vel[:] = None, rng.uniform(*cfg.hold_s), (speed, 0.0)
        elif hold <= 0:
            action = names[rng.choice(len(names), p=np.array(weights) / sum(weights))]
            hold = rng.uniform(*cfg.hold_s)
            # Turns mostly go towards the roomier side, as a player looks where there is something to see.
            roomier = 1.0 if right_open >= left else -1.0
            side = roomier if rng.random() < cfg.open_side_bias else -roomier
            # positive yaw turns towards the `right_open` probe; the `right` vector points to the `left` probe
            cmd_vel[:] = {"forward": (speed, 0), "forward_turn": (speed, 0), "strafe": (0, -side * speed * 0.6),
                          "back": (-speed * 0.5, 0)}.get(action, (0.0, 0.0))
            cmd_yaw = {"forward_turn": side * turn * rng.uniform(0.3, 0.8), "turn": side * turn,
                       "look": side * turn * 0.3}.get(action, 0.0)
            if action in ("look", "forward", "turn") or rng.random() < 0.3:
                cmd_pitch = rng.uniform(-pitch_max, pitch_max) * (0.4 if action != "look" else 1.0)
        vel += (cmd_vel - vel) * alpha
        yaw_rate += (cmd_yaw + steer - yaw_rate) * alpha
        yaw += yaw_rate * dt
        pitch += (cmd_pitch - pitch) * alpha
        fwd = np.array([math.sin(yaw), 0.0, math.cos(yaw)])
        right = np.array([-math.cos(yaw), 0.0, math.sin(yaw)])
        move = (vel[0] * fwd + vel[1] * right) * dt
        # Candidates: the step, sliding along x or z, staying, or (if an entity comes at us) a sidestep.
        cands = np.concatenate([eye + np.stack([move, move * [1, 0, 0], move * [0, 0, 1], 0 * move]), eye + dodge])
        static_ok = scene.is_free(np.concatenate([cands, (eye + cands) / 2]), r)
        static_ok = static_ok[: len(cands)] & static_ok[len(cands):]
        gap = np.full(len(cands), np.inf)  # distance to the nearest moving entity over this frame and the next
        if moving_entities:
            gap = np.minimum(scene.distance(cands, t=t, static=False), scene.distance(cands, t=t + dt, static=False))
        safe = static_ok & (gap > r + entity_margin)
        if safe[0] and np.any(move):
            eye = cands[0]
        elif (safe[1] or safe[2]) and np.any(move):
            eye = cands[1] if safe[1] else cands[2]
            vel *= 0.5
        elif safe[3]:
            if np.any(move):  # blocked: stop and turn towards open space
                vel[:] = 0.0
                yaw_rate = 0.0
                target_yaw = _most_open_yaw(scene, eye, rng, cfg, t)
        else:  # an entity is coming at us: step to whichever free spot keeps furthest from it
            best = int(np.argmax(np.where(static_ok, gap, -np.inf)))
            eye = cands[best]
            vel[:] = 0.0
    return CameraPath(poses_from_yaw_pitch(eyes, yaws, pitches), _intrinsics(fov_deg, aspect), fps, "walk")


def orbit_path(scene: Scene, n_frames: int, *, fps: float = 24.0, speed: float = 1.0, seed: int = 0,
               closed: bool = True, fov_deg: float = 65.0, aspect: float = 1.0,
               config: PathConfig | None = None, avoid_dynamic: bool = True) -> CameraPath:
    """Circle an object of the scene while looking at it, at `speed` on average. closed=True ends at the first
    pose: one full turn where the path is long enough to walk a circle of at least the smallest orbit radius
    (and one is free), else a swing out along an arc and back; closed=False is an arc."""
    _check_common(n_frames, fps, speed)
    cfg, rng = config or PathConfig(), np.random.default_rng([int(seed), 11])
    if len(scene.landmarks) == 0:
        raise PathError(f"scene {scene.seed} ({scene.kind}) has no objects to orbit")
    height = _eye_height(scene, rng, cfg)
    duration = (n_frames - 1) / fps
    s = np.linspace(0.0, 1.0, n_frames)
    full_radius = speed * duration / (2 * math.pi)  # the circle walked once in the path's duration
    lo, hi = cfg.orbit_radius
    for attempt in range(cfg.tries):
        target = scene.landmarks[rng.integers(len(scene.landmarks))]
        sign = rng.choice((-1.0, 1.0))
        if closed and full_radius >= lo and attempt < cfg.tries // 2:  # one full turn (slower if capped)
            rad = min(full_radius, hi) * rng.uniform(0.8, 1.0) if full_radius > lo / 0.8 else full_radius
            ang = sign * 2 * math.pi * s
        elif closed:  # too short for a full turn, or too cluttered: swing out along an arc and back
            rad = rng.uniform(lo, hi)
            ang = sign * min(math.pi, speed * duration / (2 * rad)) * (1 - np.cos(2 * math.pi * s)) / 2
        else:
            rad = rng.uniform(lo, hi)
            ang = sign * min(2 * math.pi, speed * duration / rad) * s
        ang = ang + rng.uniform(0, 2 * math.pi)
        eyes = np.stack([target[0] + rad * np.sin(ang), np.full(n_frames, height), target[2] + rad * np.cos(ang)], -1)
        if not np.all(scene.is_free(eyes, cfg.radius)):
            continue
        w2c = np.stack([look_at(e, target) for e in eyes])
        if closed:
            w2c[-1] = w2c[0]
        path = CameraPath(w2c, _intrinsics(fov_deg, aspect), fps, "orbit")
        if path_is_free(scene, path, cfg.radius, dynamic=avoid_dynamic):
            return path
    raise PathError(f"scene {scene.seed} ({scene.kind}): no free orbit found in {cfg.tries} tries")


def loop_path(scene: Scene, n_frames: int, *, fps: float = 24.0, speed: float = 1.0, seed: int = 0,
              fov_deg: float = 65.0, aspect: float = 1.0, config: PathConfig | None = None,
              avoid_dynamic: bool = True) -> CameraPath:
    """Walk once around a circle looking where it goes, ending exactly at the start pose. The circle's length is
    what `speed` covers in the path's duration, shrunk (slower) where the free space is smaller."""
    _check_common(n_frames, fps, speed)
    cfg, rng = config or PathConfig(), np.random.default_rng([int(seed), 13])
    height = _eye_height(scene, rng, cfg)
    want = speed * (n_frames - 1) / fps / (2 * math.pi)
    for attempt in range(cfg.tries):
        shrink = 1.0 - attempt / cfg.tries  # later tries use smaller circles
        rad = float(np.clip(want * shrink, *cfg.loop_radius))
        centre = _start(scene, rng, height, cfg.radius)
        sign = rng.choice((-1.0, 1.0))
        ang = rng.uniform(0, 2 * math.pi) + sign * np.linspace(0.0, 2 * math.pi, n_frames)
        eyes = np.stack([centre[0] + rad * np.sin(ang), np.full(n_frames, height), centre[2] + rad * np.cos(ang)], -1)
        if not np.all(scene.is_free(eyes, cfg.radius)):
            continue
        pitch = math.radians(cfg.pitch_range_deg) * 0.3 * np.sin(ang - ang[0])
        w2c = poses_from_yaw_pitch(eyes, ang + sign * math.pi / 2, pitch)
        w2c[-1] = w2c[0]
        path = CameraPath(w2c, _intrinsics(fov_deg, aspect), fps, "loop")
        if path_is_free(scene, path, cfg.radius, dynamic=avoid_dynamic):
            return path
    raise PathError(f"scene {scene.seed} ({scene.kind}): no free loop found in {cfg.tries} tries")


def forward_back_path(scene: Scene, n_frames: int, *, fps: float = 24.0, speed: float = 1.0, seed: int = 0,
                      fov_deg: float = 65.0, aspect: float = 1.0, config: PathConfig | None = None,
                      avoid_dynamic: bool = True) -> CameraPath:
    """Dolly forward along open floor and back again, facing the same way; eases in and out, ends at the start."""
    _check_common(n_frames, fps, speed)
    cfg, rng = config or PathConfig(), np.random.default_rng([int(seed), 17])
    height = _eye_height(scene, rng, cfg)
    duration = (n_frames - 1) / fps
    for _ in range(cfg.tries):
        eye = _start(scene, rng, height, cfg.radius)
        yaw = _most_open_yaw(scene, eye, rng, cfg, None)
        room = _open_distances(scene, eye, np.array([yaw]), cfg, None)[0] - cfg.probe_step
        # the mean speed of the eased out-and-back motion is 2 D / duration
        dist = min(speed * duration / 2, room)
        if dist <= 0:
            continue
        s = dist * (1 - np.cos(np.linspace(0, 2 * math.pi, n_frames))) / 2
        pitch = math.radians(rng.uniform(-1, 1) * cfg.pitch_range_deg * 0.5)
        eyes = eye + s[:, None] * direction(yaw, 0.0)
        w2c = poses_from_yaw_pitch(eyes, np.full(n_frames, yaw), np.full(n_frames, pitch))
        w2c[-1] = w2c[0]
        path = CameraPath(w2c, _intrinsics(fov_deg, aspect), fps, "forward_back")
        if path_is_free(scene, path, cfg.radius, dynamic=avoid_dynamic):
            return path
    raise PathError(f"scene {scene.seed} ({scene.kind}): no free forward-and-back line found")


def look_around_path(scene: Scene, n_frames: int, *, fps: float = 24.0, speed: float = 0.0, seed: int = 0,
                     fov_deg: float = 65.0, aspect: float = 1.0, config: PathConfig | None = None,
                     avoid_dynamic: bool = True) -> CameraPath:
    """Stand still and pan: either a full turn or out to one side and back; ends at the start pose.
    (`speed` is accepted for a uniform signature; the eye does not move.)"""
    _check_common(n_frames, fps, speed)
    cfg, rng = config or PathConfig(), np.random.default_rng([int(seed), 19])
    eye = _start(scene, rng, _eye_height(scene, rng, cfg), cfg.radius)
    s = np.linspace(0, 1, n_frames)
    yaw0 = rng.uniform(0, 2 * math.pi)
    if rng.random() < 0.5:
        yaw = yaw0 + rng.choice((-1.0, 1.0)) * 2 * math.pi * s
    else:
        yaw = yaw0 + math.radians(rng.uniform(60, 150)) * rng.choice((-1.0, 1.0)) * np.sin(math.pi * s)
    pitch = math.radians(cfg.pitch_range_deg) * 0.5 * np.sin(2 * math.pi * s) * rng.choice((-1.0, 1.0))
    w2c = poses_from_yaw_pitch(np.repeat(eye[None], n_frames, 0), yaw, pitch)
    w2c[-1] = w2c[0]
    path = CameraPath(w2c, _intrinsics(fov_deg, aspect), fps, "look_around")
    if avoid_dynamic and not path_is_free(scene, path, cfg.radius, dynamic=True):
        raise PathError(f"scene {scene.seed} ({scene.kind}): a moving entity crosses the look-around spot")
    return path


def return_walk_path(scene: Scene, n_frames: int, *, fps: float = 24.0, speed: float = 1.2, seed: int = 0,
                     fov_deg: float = 65.0, aspect: float = 1.0, config: PathConfig | None = None,
                     avoid_dynamic: bool = True) -> CameraPath:
    """Walk out, turn around, walk back along the same route looking the other way, turn to the starting view:
    a long closed loop that revisits everything it saw (the last pose is the first)."""
    _check_common(n_frames, fps, speed, minimum=8)
    cfg = config or PathConfig()
    turn_frames = int(np.clip(math.ceil(math.pi / math.radians(cfg.turn_rate_deg) * fps), 2, n_frames // 4))
    out_frames = (n_frames - 2 * turn_frames) // 2
    extra = n_frames - 2 * out_frames - 2 * turn_frames  # odd leftovers go to the last turn
    # The route itself is a static-only walk: on the way back the entities have moved, checked below.
    out = walk_path(scene, out_frames, fps=fps, speed=speed, seed=seed, fov_deg=fov_deg, aspect=aspect,
                    config=cfg, avoid_dynamic=False, actions=OUTBOUND_ACTIONS)
    eyes = out.centers
    fwd = np.linalg.inv(out.w2c)[:, :3, 2]  # camera z axis in the world = view direction
    yaw_out = np.arctan2(fwd[:, 0], fwd[:, 2])
    pitch_out = np.arcsin(np.clip(fwd[:, 1], -1, 1))
    sign = 1.0 if seed % 2 == 0 else -1.0
    ease = lambda n: (1 - np.cos(np.linspace(0, math.pi, n + 1)[1:])) / 2  # noqa: E731
    # Each turn continues in the same direction by half a revolution, so the final yaw is the first plus a
    # full turn: the same view. Both turns start from the pose they follow, so yaw is continuous throughout.
    turn1 = yaw_out[-1] + sign * math.pi * ease(turn_frames)
    back_yaw = yaw_out[::-1] + sign * math.pi
    turn2 = back_yaw[-1] + sign * math.pi * ease(turn_frames + extra)
    yaw = np.concatenate([yaw_out, turn1, back_yaw, turn2])
    pitch = np.concatenate([pitch_out, np.full(turn_frames, pitch_out[-1]), pitch_out[::-1],
                            np.full(turn_frames + extra, pitch_out[0])])
    all_eyes = np.concatenate([eyes, np.repeat(eyes[-1:], turn_frames, 0), eyes[::-1],
                               np.repeat(eyes[:1], turn_frames + extra, 0)])
    w2c = poses_from_yaw_pitch(all_eyes, yaw, pitch)
    w2c[-1] = w2c[0]
    path = CameraPath(w2c, out.intrinsics, fps, "return_walk")
    if avoid_dynamic and not path_is_free(scene, path, cfg.radius, dynamic=True):
        raise PathError(f"scene {scene.seed} ({scene.kind}): a moving entity blocks the way back")
    return path


PATH_KINDS = {
    "walk": walk_path,
    "orbit": orbit_path,
    "loop": loop_path,
    "forward_back": forward_back_path,
    "look_around": look_around_path,
    "return_walk": return_walk_path,
}
CLOSED_KINDS = ("orbit", "loop", "forward_back", "look_around", "return_walk")


def make_path(kind: str, scene: Scene, n_frames: int, **kwargs) -> CameraPath:
    """Dispatch by name (one of PATH_KINDS); keyword arguments go to the path function."""
    if kind not in PATH_KINDS:
        raise ValueError(f"unknown path kind {kind!r}; expected one of {sorted(PATH_KINDS)}")
    return PATH_KINDS[kind](scene, n_frames, **kwargs)
