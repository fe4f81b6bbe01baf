"""Procedural scenes as plain data, and `generate_scene(seed)` (the layouts themselves are in layout.py).

A `Scene` is a list of `Primitive`s (box, cylinder, sphere; a slab is a flat box) with rigid poses, half-sizes,
procedural materials and instance ids (0 = static background, > 0 = a dynamic entity that moves along a closed
route as a function of time). The same list feeds the ground-truth renderer and the free-space queries that
camera paths use (`Scene.distance`, `Scene.is_free`), so what the camera avoids is exactly what it would see.
`generate_scene(seed)` is a pure function of the seed and the `SceneConfig`. The world is metric and y-up with
the floor at y = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from engine.geometry import invert_se3, make_se3
from engine.world.textures import Material

SHAPES = ("box", "cylinder", "sphere")
SURFACE_NAMES = frozenset({"floor", "ground", "rug", "paving"})  # walked on: ignored when placing moving entities
KINDS = ("indoor", "outdoor")
GENERATOR_VERSION = 1  # bump when the same seed would give a different scene


@dataclass(frozen=True)
class SceneConfig:
    """Ranges the generator draws from (metres, counts); every number that shapes a scene lives here."""

    indoor_fraction: float = 0.6  # share of "auto" scenes that are indoor
    # indoor: a grid of rooms with doorways between neighbours
    grid_rows: tuple[int, int] = (1, 2)
    grid_cols: tuple[int, int] = (1, 3)
    room_size: tuple[float, float] = (4.0, 7.5)
    room_height: tuple[float, float] = (2.6, 3.4)
    wall_thickness: float = 0.16
    slab_thickness: float = 0.1
    door_width: tuple[float, float] = (1.0, 1.5)
    door_height: tuple[float, float] = (2.05, 2.3)
    extra_door_prob: float = 0.4  # doors beyond a spanning tree, so houses have loops
    furniture_per_room: tuple[int, int] = (3, 6)
    max_furnished_fraction: float = 0.35  # of the floor area, so there is always room to walk
    window_prob: float = 0.6  # chance of a window on each outside wall of a room
    # outdoor: a fenced yard with a house, trees and street furniture, distant buildings beyond the fence
    yard_size: tuple[float, float] = (12.0, 22.0)
    fence_height: tuple[float, float] = (1.0, 2.2)
    yard_objects: tuple[int, int] = (10, 18)
    ground_margin: float = 60.0  # how far the ground extends beyond the fence
    skyline_buildings: tuple[int, int] = (8, 16)
    sky_height: float = 8.0  # top of the walkable volume outdoors
    # both
    eye_height: tuple[float, float] = (1.2, 1.7)
    door_clearance: float = 0.9  # kept free in front of doorways
    gap: float = 0.25  # minimum free margin between placed footprints
    dynamic_count: tuple[int, int] = (1, 3)
    dynamic_speed: tuple[float, float] = (0.3, 1.0)
    placement_tries: int = 80


def yaw_pose(center, yaw: float = 0.0) -> np.ndarray:
    """Object-to-world [4, 4]: rotation by `yaw` about +y (turning +z towards +x), then translation."""
    c, s = math.cos(yaw), math.sin(yaw)
    R = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    return make_se3(R, np.asarray(center, np.float64))


@dataclass(frozen=True)
class Motion:
    """A dynamic entity's closed route; `transform(t)` is its object-to-world pose at time t (seconds).

    circle: around `center` with `radius`, facing along the tangent. shuttle: back and forth between `center`
    and `end`, facing `end`. `roll_radius` > 0 spins the entity about its own x axis like a rolling ball of
    that radius; `bob` adds a bounce of that height at `bob_hz`.
    """

    kind: str
    center: tuple[float, float, float]
    speed: float  # metres per second along the route
    radius: float = 1.0
    end: tuple[float, float, float] = (0.0, 0.0, 0.0)
    phase: float = 0.0  # seconds
    roll_radius: float = 0.0
    bob: float = 0.0
    bob_hz: float = 1.0

    def __post_init__(self):
        if self.kind not in ("circle", "shuttle"):
            raise ValueError(f"Motion.kind must be 'circle' or 'shuttle', got {self.kind!r}")

    def transform(self, t) -> np.ndarray:
        """t scalar or [T] -> [4, 4] or [T, 4, 4]."""
        t = np.asarray(t, np.float64)
        tt = np.atleast_1d(t) + self.phase
        c = np.asarray(self.center, np.float64)
        if self.kind == "circle":
            a = tt * self.speed / self.radius
            pos = c + self.radius * np.stack([np.sin(a), np.zeros_like(a), np.cos(a)], -1)
            yaw = a + math.pi / 2  # tangent direction (cos a, 0, -sin a)
            travelled = tt * self.speed
        else:
            d = np.asarray(self.end, np.float64) - c
            length = float(np.linalg.norm(d))
            s = np.mod(tt * self.speed, 2 * length)
            along = np.where(s < length, s, 2 * length - s)
            pos = c + along[:, None] * d / length
            yaw = np.full_like(tt, math.atan2(d[0], d[2]))
            travelled = along
        if self.bob > 0:
            pos[:, 1] += self.bob * np.abs(np.sin(math.pi * self.bob_hz * tt))
        cy, sy = np.cos(yaw), np.sin(yaw)
        R = np.zeros(tt.shape + (3, 3))
        R[:, 0, 0], R[:, 0, 2], R[:, 1, 1], R[:, 2, 0], R[:, 2, 2] = cy, sy, 1.0, -sy, cy
        if self.roll_radius > 0:
            th = travelled / self.roll_radius
            Rx = np.zeros(tt.shape + (3, 3))
            Rx[:, 0, 0] = 1.0
            Rx[:, 1, 1], Rx[:, 1, 2], Rx[:, 2, 1], Rx[:, 2, 2] = np.cos(th), -np.sin(th), np.sin(th), np.cos(th)
            R = R @ Rx
        out = make_se3(R, pos)
        return out[0] if t.ndim == 0 else out


@dataclass
class Primitive:
    """One solid: shape, half-size, rigid pose, material, instance id; a moving one also has a `motion`.

    size is the half-extent [3]: a box's half-widths, (radius, half-height, radius) for a y-axis cylinder,
    (r, r, r) for a sphere. A dynamic primitive's world pose at t is `motion.transform(t) @ pose`.
    """

    shape: str
    size: np.ndarray  # [3] float64 half-extents, metres
    pose: np.ndarray  # [4, 4] float64 object-to-world (or object-to-entity when dynamic)
    material: Material
    instance_id: int = 0
    motion: Motion | None = None
    name: str = ""

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"Primitive.shape must be one of {SHAPES}, got {self.shape!r}")
        self.size = np.asarray(self.size, np.float64).reshape(3)
        if np.any(self.size <= 0):
            raise ValueError(f"Primitive {self.name!r}: half-size must be positive, got {self.size.tolist()}")
        self.pose = np.asarray(self.pose, np.float64)
        if (self.motion is None) != (self.instance_id == 0):
            raise ValueError(f"Primitive {self.name!r}: a moving primitive needs an instance id > 0 and vice versa")

    @property
    def dynamic(self) -> bool:
        return self.motion is not None

    def pose_at(self, t) -> np.ndarray:
        """World pose [4, 4] (or [T, 4, 4] for t [T])."""
        if self.motion is None:
            return self.pose if np.ndim(t) == 0 else np.broadcast_to(self.pose, np.shape(t) + (4, 4))
        return self.motion.transform(t) @ self.pose


def _sdf_local(shape: str, p: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Signed distance of local points p [..., 3] to a centred shape of half-size [..., 3] (broadcast)."""
    if shape == "box":
        q = np.abs(p) - size
        return np.linalg.norm(np.maximum(q, 0.0), axis=-1) + np.minimum(q.max(-1), 0.0)
    if shape == "cylinder":
        dr = np.linalg.norm(p[..., [0, 2]], axis=-1) - size[..., 0]
        dh = np.abs(p[..., 1]) - size[..., 1]
        return np.minimum(np.maximum(dr, dh), 0.0) + np.hypot(np.maximum(dr, 0.0), np.maximum(dh, 0.0))
    return np.linalg.norm(p, axis=-1) - size[..., 0]


def _bound_radius(shape: str, size: np.ndarray) -> np.ndarray:
    """Radius [M] of a ball around each primitive's centre that contains it."""
    return np.linalg.norm(size, axis=-1) if shape == "box" else np.hypot(size[:, 0], size[:, 1])


class _Solids:
    """Static primitives as arrays for fast exact distance queries.

    Primitives are skipped while a lower bound on their distance to every query point (centre distance minus
    both bounding radii) exceeds what the query already found, so a probe near a wall never touches the far
    side of the house, yet the result is the exact minimum over all primitives.
    """

    def __init__(self, prims: list[Primitive]):
        self.shapes, self.inv, self.size, self.centre, self.bound = [], [], [], [], []
        for shape in SHAPES:
            sel = [p for p in prims if p.shape == shape]
            if sel:
                size = np.stack([p.size for p in sel])
                poses = np.stack([p.pose for p in sel])
                self.shapes.append(shape)
                self.inv.append(invert_se3(poses))  # [M, 4, 4] world-to-object
                self.size.append(size)
                self.centre.append(poses[:, :3, 3])
                self.bound.append(_bound_radius(shape, size))

    def distance(self, points: np.ndarray, best: np.ndarray, first_pass: float = 1.0) -> np.ndarray:
        """min(best, distance to the nearest primitive) for points [N, 3]."""
        if not len(points):
            return best
        qc = (points.min(0) + points.max(0)) / 2
        rq = float(np.linalg.norm(points - qc, axis=1).max())
        lbs = [np.linalg.norm(c - qc, axis=1) - b - rq for c, b in zip(self.centre, self.bound)]  # [M] each
        done = [np.zeros(len(lb), bool) for lb in lbs]
        for cut in (first_pass, None):  # near primitives first, then whatever could still be closer
            for k, shape in enumerate(self.shapes):
                limit = first_pass if cut is not None else best.max()
                sel = ~done[k] & (lbs[k] <= limit)
                if not sel.any():
                    continue
                done[k] |= sel
                inv, size = self.inv[k][sel], self.size[k][sel]
                local = points[None] @ np.swapaxes(inv[:, :3, :3], 1, 2) + inv[:, None, :3, 3]  # [M, N, 3]
                best = np.minimum(best, _sdf_local(shape, local, size[:, None, :]).min(0))
        return best


@dataclass(eq=False)  # identity semantics: renderers cache GPU buffers per scene object
class Scene:
    """A generated world: its primitives, the walkable box, lighting, sky and a few points of interest."""

    seed: int
    kind: str
    primitives: list[Primitive]
    free_min: np.ndarray  # [3] walkable axis-aligned region (cameras stay inside it)
    free_max: np.ndarray  # [3]
    light_dir: np.ndarray  # [3] unit vector towards the key light
    light_color: np.ndarray  # [3]
    fill_color: np.ndarray  # [3] weak light from the opposite direction
    ambient: np.ndarray  # [3]
    sky_top: np.ndarray  # [3] colour straight up (outdoor; indoor scenes never show the sky)
    sky_horizon: np.ndarray  # [3]
    eye_height: tuple[float, float]
    rooms: list[tuple[float, float, float, float]] = field(default_factory=list)  # (x0, z0, x1, z1) floor areas
    landmarks: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # [L, 3] centres of objects
    # indoor openings between rooms: (x, z) of the opening's centre, its width, and the axis it spans ("x"/"z")
    doorways: list[tuple[float, float, float, str]] = field(default_factory=list)

    def __post_init__(self):
        self._index()

    def add_primitives(self, prims: list[Primitive]) -> None:
        """Append primitives (e.g. moving entities) and refresh the query structures."""
        self.primitives.extend(prims)
        self._index()

    def _index(self) -> None:
        self.revision = getattr(self, "revision", -1) + 1  # renderers re-upload a scene whose revision changed
        static = [p for p in self.primitives if not p.dynamic]
        self._static = _Solids(static)
        self._obstacles = _Solids([p for p in static if p.name not in SURFACE_NAMES])
        # moving parts grouped by entity: one route evaluation per entity and query
        self._entities: dict[int, tuple[Motion, list[Primitive]]] = {}
        for p in self.primitives:
            if p.dynamic:
                self._entities.setdefault(p.instance_id, (p.motion, []))[1].append(p)

    @property
    def dynamic_ids(self) -> list[int]:
        return sorted(self._entities)

    @property
    def has_sky(self) -> bool:
        return self.kind == "outdoor"

    def distance(self, points: np.ndarray, t=None, surfaces: bool = True, static: bool = True) -> np.ndarray:
        """Distance [N] from points [N, 3] to the nearest solid (negative inside one).

        t: None for static geometry only; a scalar or [N] times (one per point) to include dynamic entities.
        surfaces=False leaves out floors, rugs and paving (what things stand on); static=False measures to the
        dynamic entities only.
        """
        points = np.asarray(points, np.float64).reshape(-1, 3)
        best = np.full(len(points), np.inf)
        if static:
            best = (self._static if surfaces else self._obstacles).distance(points, best)
        if t is None or not self._entities:
            return best
        tt = np.asarray(t, np.float64)
        if tt.ndim and tt.shape != (len(points),):
            raise ValueError(f"distance: t must be a scalar or one time per point ({len(points)}), got {tt.shape}")
        for motion, parts in self._entities.values():
            T = motion.transform(tt)  # [4, 4] or [N, 4, 4]
            for p in parts:
                inv = invert_se3(T @ p.pose)
                if inv.ndim == 2:
                    local = points @ inv[:3, :3].T + inv[:3, 3]
                else:  # one pose per point, at that point's time
                    local = (inv[:, :3, :3] @ points[:, :, None])[..., 0] + inv[:, :3, 3]
                best = np.minimum(best, _sdf_local(p.shape, local, p.size))
        return best

    def inside_bounds(self, points: np.ndarray, radius: float = 0.0) -> np.ndarray:
        points = np.asarray(points, np.float64).reshape(-1, 3)
        return np.all((points >= self.free_min + radius) & (points <= self.free_max - radius), axis=-1)

    def is_free(self, points: np.ndarray, radius: float = 0.0, t=None) -> np.ndarray:
        """bool [N]: a ball of `radius` at each point lies in the walkable region and touches no solid."""
        if radius < 0:
            raise ValueError(f"is_free: radius must be >= 0, got {radius}")
        points = np.asarray(points, np.float64).reshape(-1, 3)
        return self.inside_bounds(points, radius) & (self.distance(points, t) > radius)

    def sample_free_points(self, rng: np.random.Generator, n: int, height: float, radius: float,
                           tries: int = 4096, chunk: int = 128) -> np.ndarray:
        """Up to n random free points [k, 3] at a given height (k < n only if the scene is very cluttered)."""
        lo, hi = self.free_min + radius, self.free_max - radius
        found = []
        for _ in range(max(1, tries // chunk)):
            cand = rng.uniform(lo, hi, size=(chunk, 3))
            cand[:, 1] = height
            found.append(cand[self.is_free(cand, radius)])
            if sum(map(len, found)) >= n:
                break
        return np.concatenate(found)[:n]


# =========================================================================================== generation
def generate_scene(seed: int, kind: str = "auto", dynamic: bool = False, config: SceneConfig | None = None) -> Scene:
    """The scene of `seed`: indoor rooms or an outdoor yard ("auto" lets the seed choose), optionally with moving
    entities. Identical seeds (and configs) give identical scenes."""
    if kind not in ("auto",) + KINDS:
        raise ValueError(f"scene kind must be 'auto', 'indoor' or 'outdoor', got {kind!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"scene seed must be a non-negative integer, got {seed!r}")
    # layout.py builds on the data classes of this module, hence the import here rather than at the top
    from engine.world.layout import IndoorBuilder, OutdoorBuilder, add_dynamic_entities

    cfg = config or SceneConfig()
    rng = np.random.default_rng([int(seed), GENERATOR_VERSION])
    if kind == "auto":
        kind = "indoor" if rng.random() < cfg.indoor_fraction else "outdoor"
    builder = IndoorBuilder(rng, cfg) if kind == "indoor" else OutdoorBuilder(rng, cfg)
    scene = builder.build(int(seed))
    if dynamic:
        add_dynamic_entities(scene, rng, cfg)
    return scene
