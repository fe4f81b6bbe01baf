"""Scene layouts: indoor houses (a grid of rooms, doorways, furniture, wall decor) and outdoor yards (fence,
house, trees, street furniture, skyline), plus moving entities on closed routes through the free space.

Everything is drawn from one NumPy generator in a fixed order, so a seed always gives the same scene (bump
scene.GENERATOR_VERSION when a change here alters what a seed produces). Placement works on axis-aligned floor
footprints with a safety gap, and keeps doorways and a share of each room clear, so cameras can walk.
"""

from __future__ import annotations

import math

import numpy as np

from engine.world.scene import Motion, Primitive, Scene, SceneConfig, yaw_pose
from engine.world.textures import Texture, random_color, random_material


class Builder:
    """Shared placement machinery: footprints on the floor plan, furniture makers, lighting."""

    def __init__(self, rng: np.random.Generator, cfg: SceneConfig):
        self.rng, self.cfg = rng, cfg
        self.prims: list[Primitive] = []
        self.footprints: list[tuple[float, float, float, float]] = []  # (x0, z0, x1, z1) blocked floor
        self.landmarks: list[np.ndarray] = []

    def add(self, shape, size, pose, material, name):
        self.prims.append(Primitive(shape, size, pose, material, name=name))

    def box(self, lo, hi, material, name, yaw=0.0):
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        self.add("box", (hi - lo) / 2, yaw_pose((lo + hi) / 2, yaw), material, name)

    def overlaps(self, rect, extra: list | None = None) -> bool:
        g = self.cfg.gap
        for o in self.footprints + (extra or []):
            if rect[0] < o[2] + g and o[0] < rect[2] + g and rect[1] < o[3] + g and o[1] < rect[3] + g:
                return True
        return False

    # ---- furniture: each maker puts an object centred at (x, z) with yaw a multiple of 90 degrees, and returns
    # its footprint half-extents along its own x and z (before the yaw).
    def furniture(self, kind: str, x: float, z: float, yaw: float, room_h: float):
        r, mat = self.rng, lambda **kw: random_material(self.rng, **kw)
        if kind == "table":
            hx, hz, h = r.uniform(0.4, 0.9), r.uniform(0.35, 0.6), r.uniform(0.7, 0.8)
            top = mat(kinds=(Texture.STRIPES, Texture.NOISE, Texture.SOLID, Texture.CHECKER))
            legs = mat(kinds=(Texture.SOLID, Texture.GRADIENT), val=(0.15, 0.5))
            parts = [("box", (hx, 0.03, hz), (0, h - 0.03, 0), top)]
            for sx in (-1, 1):
                for sz in (-1, 1):
                    parts.append(("cylinder", (0.035, (h - 0.06) / 2, 0.035),
                                  (sx * (hx - 0.08), (h - 0.06) / 2, sz * (hz - 0.08)), legs))
        elif kind == "chair":
            hx = hz = r.uniform(0.2, 0.26)
            seat = mat(kinds=(Texture.SOLID, Texture.STRIPES, Texture.NOISE))
            parts = [("box", (hx, 0.225, hz), (0, 0.225, 0), seat),
                     ("box", (hx, 0.3, 0.03), (0, 0.75, -hz + 0.03), seat)]
        elif kind == "shelf":
            hx, hz, h = r.uniform(0.4, 0.9), r.uniform(0.15, 0.25), r.uniform(1.2, min(2.2, room_h - 0.3))
            body = mat(kinds=(Texture.STRIPES, Texture.NOISE, Texture.SOLID))
            parts = [("box", (hx, h / 2, hz), (0, h / 2, 0), body)]
            n = int(r.integers(2, 5))
            for k in range(n):  # rows of coloured "books" sticking out a little
                y = h * (k + 0.5) / n
                parts.append(("box", (hx * 0.9, h / (2.6 * n), 0.02), (0, y, hz + 0.01),
                              mat(kinds=(Texture.STRIPES, Texture.CHECKER), sat=(0.5, 0.9))))
        elif kind == "sofa":
            hx, hz = r.uniform(0.8, 1.2), r.uniform(0.4, 0.5)
            cloth = mat(kinds=(Texture.NOISE, Texture.CHECKER, Texture.STRIPES, Texture.SOLID), sat=(0.3, 0.8))
            parts = [("box", (hx, 0.22, hz), (0, 0.22, 0), cloth),
                     ("box", (hx, 0.25, 0.12), (0, 0.65, -hz + 0.12), cloth),
                     ("box", (0.12, 0.15, hz), (-hx + 0.12, 0.55, 0), cloth),
                     ("box", (0.12, 0.15, hz), (hx - 0.12, 0.55, 0), cloth)]
        elif kind == "bed":
            hx, hz = r.uniform(0.5, 0.9), r.uniform(0.95, 1.05)
            frame = mat(kinds=(Texture.STRIPES, Texture.SOLID))
            sheet = mat(kinds=(Texture.CHECKER, Texture.STRIPES, Texture.NOISE, Texture.SOLID), val=(0.6, 0.95))
            parts = [("box", (hx, 0.2, hz), (0, 0.2, 0), frame),
                     ("box", (hx - 0.03, 0.08, hz - 0.05), (0, 0.48, 0.02), sheet),
                     ("box", (hx, 0.45, 0.05), (0, 0.45, -hz + 0.05), frame)]
        elif kind == "cabinet":
            hx, hz, h = r.uniform(0.3, 0.6), r.uniform(0.2, 0.3), r.uniform(0.6, 1.1)
            body = mat(kinds=(Texture.SOLID, Texture.GRADIENT, Texture.STRIPES, Texture.NOISE))
            parts = [("box", (hx, h / 2, hz), (0, h / 2, 0), body),
                     ("sphere", (0.05,) * 3, (0, h + 0.05, 0), mat(kinds=(Texture.CHECKER,), sat=(0.6, 1.0)))]
        elif kind == "column":
            rad = r.uniform(0.15, 0.3)
            hx = hz = rad
            parts = [("cylinder", (rad, room_h / 2, rad), (0, room_h / 2, 0),
                      mat(kinds=(Texture.STRIPES, Texture.NOISE, Texture.GRADIENT, Texture.BRICKS)))]
        elif kind == "lamp":
            hx = hz = 0.2
            h = r.uniform(1.3, 1.8)
            parts = [("cylinder", (0.2, 0.02, 0.2), (0, 0.02, 0), mat(kinds=(Texture.SOLID,), val=(0.1, 0.4))),
                     ("cylinder", (0.025, h / 2, 0.025), (0, h / 2, 0), mat(kinds=(Texture.SOLID,))),
                     ("sphere", (0.18,) * 3, (0, h + 0.1, 0), mat(kinds=(Texture.SOLID, Texture.NOISE), val=(0.8, 1.0)))]
        elif kind == "crates":
            s = r.uniform(0.2, 0.35)
            hx = hz = s
            wood = mat(kinds=(Texture.STRIPES, Texture.TILES, Texture.CHECKER), hue=(0.05, 0.15))
            n = int(r.integers(1, 4))
            parts = [("box", (s * 0.97,) * 3, (r.uniform(-0.03, 0.03), s * (2 * k + 1), r.uniform(-0.03, 0.03)), wood)
                     for k in range(n)]
        elif kind == "rug":
            hx, hz = r.uniform(0.6, 1.3), r.uniform(0.5, 1.0)
            parts = [("box", (hx, 0.005, hz), (0, 0.005, 0), mat(kinds=(Texture.CHECKER, Texture.STRIPES, Texture.TILES),
                                                              sat=(0.4, 0.9)))]
        elif kind == "tree":
            trunk_r, trunk_h = r.uniform(0.12, 0.3), r.uniform(2.4, 4.0)
            crown = r.uniform(0.9, 1.8)
            hx = hz = trunk_r
            parts = [("cylinder", (trunk_r, trunk_h / 2, trunk_r), (0, trunk_h / 2, 0),
                      mat(kinds=(Texture.STRIPES, Texture.NOISE), hue=(0.05, 0.1), val=(0.2, 0.45))),
                     ("sphere", (crown,) * 3, (0, trunk_h + crown * 0.6, 0),
                      mat(kinds=(Texture.NOISE,), hue=(0.22, 0.38), sat=(0.4, 0.8), val=(0.25, 0.6)))]
        elif kind == "rock":
            rad = r.uniform(0.3, 0.8)
            hx = hz = rad
            parts = [("sphere", (rad,) * 3, (0, rad * r.uniform(0.2, 0.6), 0),
                      mat(kinds=(Texture.NOISE,), sat=(0.0, 0.2), val=(0.35, 0.7)))]
        elif kind == "bench":
            hx, hz = r.uniform(0.7, 1.1), 0.22
            wood = mat(kinds=(Texture.STRIPES,), hue=(0.04, 0.12))
            parts = [("box", (hx, 0.03, hz), (0, 0.45, 0), wood)]
            for sx in (-1, 1):
                parts.append(("box", (0.04, 0.21, hz * 0.9), (sx * (hx - 0.1), 0.21, 0),
                              mat(kinds=(Texture.SOLID,), val=(0.1, 0.3))))
        elif kind == "lamppost":
            hx = hz = 0.12
            h = r.uniform(2.6, 3.6)
            parts = [("cylinder", (0.06, h / 2, 0.06), (0, h / 2, 0), mat(kinds=(Texture.SOLID, Texture.STRIPES))),
                     ("sphere", (0.2,) * 3, (0, h + 0.15, 0), mat(kinds=(Texture.SOLID,), sat=(0.0, 0.3), val=(0.85, 1.0)))]
        elif kind == "planter":
            rad = r.uniform(0.3, 0.6)
            hx = hz = rad
            h = r.uniform(0.3, 0.6)
            parts = [("cylinder", (rad, h / 2, rad), (0, h / 2, 0), mat(kinds=(Texture.TILES, Texture.BRICKS, Texture.STRIPES))),
                     ("sphere", (rad * 0.9,) * 3, (0, h + rad * 0.5, 0),
                      mat(kinds=(Texture.NOISE,), hue=(0.2, 0.4), sat=(0.5, 0.9), val=(0.3, 0.7)))]
        elif kind == "pillar":
            s = r.uniform(0.2, 0.45)
            hx = hz = s
            h = r.uniform(1.0, 3.0)
            parts = [("box", (s, h / 2, s), (0, h / 2, 0), mat(kinds=(Texture.BRICKS, Texture.TILES, Texture.GRADIENT)))]
        else:
            raise ValueError(f"unknown furniture kind {kind!r}")
        base = yaw_pose((x, 0.0, z), yaw)
        for shape, size, offset, m in parts:
            self.add(shape, size, base @ yaw_pose(offset), m, f"{kind}")
        self.landmarks.append(np.array([x, min(1.0, room_h / 2), z]))
        return hx, hz

    def place(self, kinds: tuple[str, ...], area: tuple, count: int, room_h: float, keep_out: list,
              wall_kinds: tuple[str, ...] = ()) -> None:
        """Put `count` objects in `area` (x0, z0, x1, z1): wall kinds back against a wall, others anywhere."""
        x0, z0, x1, z1 = area
        budget = self.cfg.max_furnished_fraction * (x1 - x0) * (z1 - z0)
        sizes = {"table": (0.9, 0.6), "chair": (0.26, 0.26), "shelf": (0.9, 0.25), "sofa": (1.2, 0.5),
                 "bed": (0.9, 1.05), "cabinet": (0.6, 0.3), "column": (0.3, 0.3), "lamp": (0.2, 0.2),
                 "crates": (0.35, 0.35), "rug": (1.3, 1.0), "tree": (0.3, 0.3), "rock": (0.8, 0.8),
                 "bench": (1.1, 0.22), "lamppost": (0.12, 0.12), "planter": (0.6, 0.6), "pillar": (0.45, 0.45)}
        used = 0.0
        for _ in range(count):
            kind = kinds[self.rng.integers(len(kinds))]
            hx, hz = sizes[kind]  # conservative maxima, so the real object fits in the reserved rect
            for _ in range(self.cfg.placement_tries):
                k = int(self.rng.integers(4))
                yaw = k * math.pi / 2
                ex, ez = (hx, hz) if k % 2 == 0 else (hz, hx)
                if kind in wall_kinds:  # back to a random wall, facing into the room
                    side = int(self.rng.integers(4))
                    yaw = (0.0, math.pi, math.pi / 2, -math.pi / 2)[side]
                    ex, ez = (hx, hz) if side < 2 else (hz, hx)
                    if side == 0:
                        x, z = self.rng.uniform(x0 + ex, x1 - ex), z0 + ez + 0.01
                    elif side == 1:
                        x, z = self.rng.uniform(x0 + ex, x1 - ex), z1 - ez - 0.01
                    elif side == 2:
                        x, z = x0 + ex + 0.01, self.rng.uniform(z0 + ez, z1 - ez)
                    else:
                        x, z = x1 - ex - 0.01, self.rng.uniform(z0 + ez, z1 - ez)
                else:
                    if x1 - x0 < 2 * ex + 2 * self.cfg.gap or z1 - z0 < 2 * ez + 2 * self.cfg.gap:
                        continue
                    x = self.rng.uniform(x0 + ex + self.cfg.gap, x1 - ex - self.cfg.gap)
                    z = self.rng.uniform(z0 + ez + self.cfg.gap, z1 - ez - self.cfg.gap)
                rect = (x - ex, z - ez, x + ex, z + ez)
                area_k = 4 * ex * ez
                if used + area_k > budget or self.overlaps(rect, keep_out):
                    continue
                if kind != "rug":  # a rug is walked over: it blocks nothing
                    self.footprints.append(rect)
                self.furniture(kind, x, z, yaw, room_h)
                used += area_k
                break

    def lighting(self, elevation: tuple[float, float], ambient: float, key: float, fill: float):
        az = self.rng.uniform(0, 2 * math.pi)
        el = math.radians(self.rng.uniform(*elevation))
        d = np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
        tint = np.array(random_color(self.rng, hue=(0.05, 0.15), sat=(0.0, 0.25), val=(1.0, 1.0)))
        return d, key * tint, fill * np.ones(3), ambient * np.ones(3)


class IndoorBuilder(Builder):
    def build(self, seed: int) -> Scene:
        cfg, rng = self.cfg, self.rng
        rows = int(rng.integers(cfg.grid_rows[0], cfg.grid_rows[1] + 1))
        cols = int(rng.integers(cfg.grid_cols[0], cfg.grid_cols[1] + 1))
        xs = np.concatenate([[0], np.cumsum(rng.uniform(*cfg.room_size, cols))])
        zs = np.concatenate([[0], np.cumsum(rng.uniform(*cfg.room_size, rows))])
        xs -= xs[-1] / 2
        zs -= zs[-1] / 2
        H, T, S = rng.uniform(*cfg.room_height), cfg.wall_thickness, cfg.slab_thickness
        door_h = rng.uniform(*cfg.door_height)
        cells = [(r, c) for r in range(rows) for c in range(cols)]
        # Walls get structured patterns (plain walls give feature matching nothing to hold on to).
        wall_mat = {rc: random_material(rng, kinds=(Texture.BRICKS, Texture.STRIPES, Texture.NOISE, Texture.TILES,
                                                    Texture.CHECKER), sat=(0.05, 0.5), val=(0.55, 0.95))
                    for rc in cells}
        wall_mat[None] = random_material(rng, kinds=(Texture.SOLID,), val=(0.5, 0.8))  # outside faces
        # Doorways: a random spanning tree over the grid keeps every room reachable; extra doors make loops.
        edges = [((r, c), (r, c + 1)) for r in range(rows) for c in range(cols - 1)]
        edges += [((r, c), (r + 1, c)) for r in range(rows - 1) for c in range(cols)]
        order = rng.permutation(len(edges))
        parent = {rc: rc for rc in cells}

        def root(a):
            while parent[a] != a:
                a = parent[a]
            return a

        doors = {}  # edge -> (centre along the wall, width)
        for i in order:
            a, b = edges[i]
            joins = root(a) != root(b)
            if joins or rng.random() < cfg.extra_door_prob:
                parent[root(a)] = root(b)
                horizontal = a[0] == b[0]  # neighbours along x share a wall of constant x
                lo, hi = (zs[a[0]], zs[a[0] + 1]) if horizontal else (xs[a[1]], xs[a[1] + 1])
                w = rng.uniform(*cfg.door_width)
                margin = w / 2 + T + 0.2
                if hi - lo > 2 * margin:
                    doors[(a, b)] = (rng.uniform(lo + margin, hi - margin), w)
        keep_out = []  # floor kept clear around doorways, in both rooms
        cl = cfg.door_clearance
        for (a, b), (u, w) in doors.items():
            if a[0] == b[0]:
                x = xs[b[1]]
                keep_out.append((x - cl, u - w / 2 - 0.1, x + cl, u + w / 2 + 0.1))
            else:
                z = zs[b[0]]
                keep_out.append((u - w / 2 - 0.1, z - cl, u + w / 2 + 0.1, z + cl))

        def wall_run(axis: str, fixed: float, lo: float, hi: float, side_cells, door_list):
            """Two half-thickness boxes along [lo, hi] (one per side, each with its room's material), cut by
            doorways; axis 'x' = the wall runs along x at z = fixed."""
            cuts = sorted((u - w / 2, u + w / 2) for u, w in door_list)
            pieces, start = [], lo
            for d0, d1 in cuts:
                pieces.append((start, d0, 0.0, H))
                pieces.append((d0, d1, door_h, H))  # lintel
                start = d1
            pieces.append((start, hi, 0.0, H))
            for s, (cell, sign) in enumerate(zip(side_cells, (-1, 1))):
                m = wall_mat[cell]
                for a0, a1, y0, y1 in pieces:
                    if a1 - a0 <= 1e-6:
                        continue
                    f0, f1 = sorted((fixed, fixed + sign * T / 2))
                    if axis == "x":
                        self.box((a0, y0, f0), (a1, y1, f1), m, "wall")
                    else:
                        self.box((f0, y0, a0), (f1, y1, a1), m, "wall")

        for j, z in enumerate(zs):  # walls of constant z run the full width of the house
            for c in range(cols):
                below = (j - 1, c) if j > 0 else None
                above = (j, c) if j < rows else None
                lo = xs[c] - (T / 2 if c == 0 else 0)
                hi = xs[c + 1] + (T / 2 if c == cols - 1 else 0)
                dl = [doors[e] for e in doors if e == (below, above)]
                wall_run("x", z, lo, hi, (below, above), dl)
        for i, x in enumerate(xs):  # walls of constant x fit between them
            for r in range(rows):
                left = (r, i - 1) if i > 0 else None
                right = (r, i) if i < cols else None
                dl = [doors[e] for e in doors if e == (left, right)]
                wall_run("z", x, zs[r] + T / 2, zs[r + 1] - T / 2, (left, right), dl)

        rooms = []
        for r, c in cells:
            x0, x1, z0, z1 = xs[c], xs[c + 1], zs[r], zs[r + 1]
            floor = random_material(rng, kinds=(Texture.TILES, Texture.CHECKER, Texture.STRIPES, Texture.NOISE),
                                    val=(0.3, 0.8))
            ceil = random_material(rng, kinds=(Texture.SOLID, Texture.NOISE, Texture.TILES), sat=(0.0, 0.15),
                                   val=(0.75, 0.95))
            self.box((x0, -S, z0), (x1, 0.0, z1), floor, "floor")
            self.box((x0, H, z0), (x1, H + S, z1), ceil, "ceiling")
            inner = (x0 + T / 2, z0 + T / 2, x1 - T / 2, z1 - T / 2)
            rooms.append(inner)
            n = int(rng.integers(cfg.furniture_per_room[0], cfg.furniture_per_room[1] + 1))
            self.place(("table", "chair", "column", "lamp", "crates", "rug", "chair"), inner, n, H, keep_out,
                       wall_kinds=("shelf", "sofa", "bed", "cabinet"))
            self.place(("shelf", "sofa", "bed", "cabinet"), inner, 1 + int(rng.integers(2)), H, keep_out,
                       wall_kinds=("shelf", "sofa", "bed", "cabinet"))
            outer = [side for side, edge in enumerate((r == 0, r == rows - 1, c == 0, c == cols - 1)) if edge]
            self.wall_decor(inner, H, doors, xs, zs, outer)
        light, key, fill, amb = self.lighting((35, 70), ambient=0.45, key=0.6, fill=0.15)
        doorways = [(float(xs[b[1]]), float(u), float(w), "z") if a[0] == b[0] else (float(u), float(zs[b[0]]), float(w), "x")
                    for (a, b), (u, w) in doors.items()]
        return Scene(seed, "indoor", self.prims, np.array([xs[0] + T / 2, 0.0, zs[0] + T / 2]),
                     np.array([xs[-1] - T / 2, H, zs[-1] - T / 2]), light, key, fill, amb,
                     np.zeros(3), np.zeros(3), cfg.eye_height, rooms, np.array(self.landmarks).reshape(-1, 3),
                     doorways)

    def wall_decor(self, inner, H, doors, xs, zs, outer_sides):
        """Paintings (strong unique patterns at eye level help place recognition) and, on outside walls, bright
        windows with a sill; all are thin slabs standing slightly proud of the wall."""
        x0, z0, x1, z1 = inner
        items = [("painting", int(self.rng.integers(4))) for _ in range(int(self.rng.integers(1, 4)))]
        items += [("window", side) for side in outer_sides if self.rng.random() < self.cfg.window_prob]
        glass = random_material(self.rng, kinds=(Texture.GRADIENT,), hue=(0.52, 0.62), sat=(0.1, 0.35),
                                val=(0.85, 1.0), contrast=(0.1, 0.25))
        for kind, side in items:
            if kind == "painting":
                w, h = self.rng.uniform(0.4, 1.0), self.rng.uniform(0.3, 0.7)
                y = self.rng.uniform(1.2, max(1.2, min(2.0, H - h - 0.1)))
                m = random_material(self.rng, kinds=(Texture.CHECKER, Texture.STRIPES, Texture.NOISE, Texture.TILES),
                                    sat=(0.5, 1.0), val=(0.5, 1.0))
            else:
                w, h, y, m = self.rng.uniform(1.0, 1.6), self.rng.uniform(1.0, 1.3), 0.9, glass
            span = (x1 - x0) if side < 2 else (z1 - z0)
            if span < w + 0.4:
                continue
            along = self.rng.uniform(w / 2 + 0.2, span - w / 2 - 0.2)
            if side < 2:
                x, z = x0 + along, (z0 + 0.02 if side == 0 else z1 - 0.02)
                rect = (x - w / 2, z - 0.3, x + w / 2, z + 0.3)
            else:
                x, z = (x0 + 0.02 if side == 2 else x1 - 0.02), z0 + along
                rect = (x - 0.3, z - w / 2, x + 0.3, z + w / 2)
            if kind == "painting" and (self.overlaps(rect, []) or
                                       any(self._near_door(rect, e, d, xs, zs) for e, d in doors.items())):
                continue
            yaw = 0.0 if side < 2 else math.pi / 2
            self.add("box", (w / 2, h / 2, 0.02), yaw_pose((x, y + h / 2, z), yaw), m, kind)
            if kind == "window":
                inward = {0: (0, 0, 1), 1: (0, 0, -1), 2: (1, 0, 0), 3: (-1, 0, 0)}[side]
                sill = np.array([x, y - 0.03, z]) + 0.04 * np.array(inward)
                self.add("box", (w / 2 + 0.05, 0.03, 0.06), yaw_pose(sill, yaw),
                         random_material(self.rng, kinds=(Texture.SOLID,), sat=(0.0, 0.1), val=(0.85, 1.0)), "sill")

    @staticmethod
    def _near_door(rect, edge, door, xs, zs):
        (a, b), (u, w) = edge, door
        if a[0] == b[0]:
            x = xs[b[1]]
            d = (x - 0.4, u - w / 2 - 0.5, x + 0.4, u + w / 2 + 0.5)
        else:
            z = zs[b[0]]
            d = (u - w / 2 - 0.5, z - 0.4, u + w / 2 + 0.5, z + 0.4)
        return rect[0] < d[2] and d[0] < rect[2] and rect[1] < d[3] and d[1] < rect[3]


class OutdoorBuilder(Builder):
    def build(self, seed: int) -> Scene:
        cfg, rng = self.cfg, self.rng
        X, Z = rng.uniform(*cfg.yard_size, 2)
        fh, ft = rng.uniform(*cfg.fence_height), rng.uniform(0.1, 0.2)
        M, S = cfg.ground_margin, cfg.slab_thickness
        grass = random_material(rng, kinds=(Texture.NOISE,), hue=(0.18, 0.35), sat=(0.35, 0.75), val=(0.3, 0.6))
        self.box((-X / 2 - M, -S, -Z / 2 - M), (X / 2 + M, 0.0, Z / 2 + M), grass, "ground")
        fence = random_material(rng, kinds=(Texture.STRIPES, Texture.BRICKS, Texture.NOISE, Texture.TILES),
                                val=(0.35, 0.85))
        self.box((-X / 2 - ft, 0, -Z / 2 - ft), (X / 2 + ft, fh, -Z / 2), fence, "fence")
        self.box((-X / 2 - ft, 0, Z / 2), (X / 2 + ft, fh, Z / 2 + ft), fence, "fence")
        self.box((-X / 2 - ft, 0, -Z / 2), (-X / 2, fh, Z / 2), fence, "fence")
        self.box((X / 2, 0, -Z / 2), (X / 2 + ft, fh, Z / 2), fence, "fence")
        self.house(X, Z)
        self.paving(X, Z)
        n = int(rng.integers(cfg.yard_objects[0], cfg.yard_objects[1] + 1))
        area = (-X / 2, -Z / 2, X / 2, Z / 2)
        self.place(("tree", "tree", "rock", "bench", "lamppost", "planter", "pillar", "crates", "table"),
                   area, n, cfg.sky_height, [])
        self.skyline(X, Z)
        light, key, fill, amb = self.lighting((25, 65), ambient=0.4, key=0.75, fill=0.1)
        sky_top = np.array(random_color(rng, hue=(0.55, 0.65), sat=(0.35, 0.7), val=(0.7, 0.95)))
        sky_horizon = np.clip(sky_top + rng.uniform(0.15, 0.3), 0, 1)
        return Scene(seed, "outdoor", self.prims, np.array([-X / 2, 0.0, -Z / 2]),
                     np.array([X / 2, cfg.sky_height, Z / 2]), light, key, fill, amb, sky_top, sky_horizon,
                     cfg.eye_height, [(-X / 2, -Z / 2, X / 2, Z / 2)], np.array(self.landmarks).reshape(-1, 3))

    def house(self, X, Z):
        """A house against one side of the yard: walls, a roof slab with overhang, windows and a door."""
        rng = self.rng
        w, d, h = rng.uniform(5, min(10, X - 2)), rng.uniform(3, 5), rng.uniform(3, 5)
        cx = rng.uniform(-X / 2 + w / 2 + 0.5, X / 2 - w / 2 - 0.5)
        front = -Z / 2 + d  # the house stands against the z = -Z/2 fence, facing +z
        body = random_material(rng, kinds=(Texture.BRICKS, Texture.SOLID, Texture.STRIPES, Texture.TILES),
                               val=(0.45, 0.9))
        self.box((cx - w / 2, 0, -Z / 2), (cx + w / 2, h, front), body, "house")
        roof = random_material(rng, kinds=(Texture.TILES, Texture.STRIPES), val=(0.2, 0.55))
        self.box((cx - w / 2 - 0.3, h, -Z / 2 - 0.1), (cx + w / 2 + 0.3, h + 0.25, front + 0.4), roof, "roof")
        glass = random_material(rng, kinds=(Texture.GRADIENT,), hue=(0.5, 0.65), sat=(0.2, 0.5), val=(0.25, 0.5))
        door_x = rng.uniform(cx - w / 2 + 0.8, cx + w / 2 - 0.8)
        self.box((door_x - 0.5, 0, front), (door_x + 0.5, 2.1, front + 0.04),
                 random_material(rng, kinds=(Texture.STRIPES, Texture.SOLID), val=(0.2, 0.6)), "door")
        for wx in np.arange(cx - w / 2 + 0.9, cx + w / 2 - 0.6, 1.6):
            if abs(wx - door_x) > 1.1:
                self.box((wx - 0.4, 1.0, front), (wx + 0.4, 2.0, front + 0.03), glass, "window")
        self.footprints.append((cx - w / 2, -Z / 2, cx + w / 2, front + 0.6))
        self.landmarks.append(np.array([door_x, 1.0, front]))

    def paving(self, X, Z):
        """Paved patches on the grass; each one a little higher than the last so none share a plane."""
        for k in range(int(self.rng.integers(1, 4))):
            m = random_material(self.rng, kinds=(Texture.TILES, Texture.BRICKS, Texture.CHECKER), sat=(0.0, 0.35))
            pw, pd = self.rng.uniform(1.0, 3.0), self.rng.uniform(2.0, Z * 0.6)
            px, pz = self.rng.uniform(-X / 2 + pw, X / 2 - pw), self.rng.uniform(-Z / 2 + pd / 2, Z / 2 - pd / 2)
            top = 0.01 * (k + 1)
            if self.rng.random() < 0.5:
                self.box((px - pw / 2, 0.0, pz - pd / 2), (px + pw / 2, top, pz + pd / 2), m, "paving")
            else:
                self.box((pz - pd / 2, 0.0, px - pw / 2), (pz + pd / 2, top, px + pw / 2), m, "paving")

    def skyline(self, X, Z):
        """Buildings outside the fence: far parallax and a recognisable horizon in every direction."""
        for _ in range(int(self.rng.integers(self.cfg.skyline_buildings[0], self.cfg.skyline_buildings[1] + 1))):
            ang = self.rng.uniform(0, 2 * math.pi)
            dist = self.rng.uniform(4, 25) + max(X, Z) / 2
            cx, cz = dist * math.sin(ang), dist * math.cos(ang)
            w, d, h = self.rng.uniform(3, 10), self.rng.uniform(3, 10), self.rng.uniform(3, 18)
            m = random_material(self.rng, kinds=(Texture.TILES, Texture.BRICKS, Texture.STRIPES, Texture.GRADIENT),
                                sat=(0.0, 0.4), val=(0.35, 0.9))
            self.add("box", (w / 2, h / 2, d / 2), yaw_pose((cx, h / 2, cz), self.rng.uniform(0, math.pi)), m, "building")


def add_dynamic_entities(scene: Scene, rng: np.random.Generator, cfg: SceneConfig) -> None:
    """Balls, robots and floating cubes on closed routes through free space, with instance ids 1, 2, ..."""
    want = int(rng.integers(cfg.dynamic_count[0], cfg.dynamic_count[1] + 1))
    ids = 0
    for _ in range(cfg.placement_tries):
        if ids == want:
            break
        kind = ("ball", "robot", "cube")[int(rng.integers(3))]
        mat = random_material(rng, kinds=(Texture.CHECKER, Texture.STRIPES, Texture.TILES), sat=(0.7, 1.0),
                              val=(0.7, 1.0), contrast=(0.4, 0.6))
        if kind == "ball":
            r = rng.uniform(0.15, 0.35)
            parts = [("sphere", (r, r, r), (0, 0, 0))]
            centre_y, roll, bob = r, r, 0.0
            probes = [(0.0, r)]  # (height above the route point, radius) balls that enclose the entity
        elif kind == "robot":
            r, h = rng.uniform(0.2, 0.3), rng.uniform(0.5, 0.9)
            parts = [("cylinder", (r, h / 2, r), (0, h / 2, 0)), ("sphere", (r * 0.8,) * 3, (0, h + r * 0.6, 0)),
                     ("box", (r * 0.5, 0.05, 0.08), (0, h + r * 0.6, r * 0.75))]
            centre_y, roll, bob = 0.0, 0.0, 0.0
            probes = [(float(y), r) for y in np.linspace(r, h + r * 0.6, 4)]
        else:
            s = rng.uniform(0.15, 0.3)
            parts = [("box", (s, s, s), (0, 0, 0))]
            centre_y, roll, bob = rng.uniform(0.8, 1.6), 0.0, rng.uniform(0.1, 0.3)
            probes = [(0.0, s * math.sqrt(3)), (bob, s * math.sqrt(3))]
        speed = rng.uniform(*cfg.dynamic_speed)
        room = scene.rooms[int(rng.integers(len(scene.rooms)))]
        start = rng.uniform((room[0], room[1]), (room[2], room[3]))
        if rng.random() < 0.5:
            radius = rng.uniform(0.6, 2.0)
            motion = Motion("circle", (start[0], centre_y, start[1]), speed, radius=radius,
                            phase=rng.uniform(0, 10), roll_radius=roll, bob=bob)
        else:
            ang = rng.uniform(0, 2 * math.pi)
            length = rng.uniform(1.5, 5.0)
            end = (start[0] + length * math.sin(ang), centre_y, start[1] + length * math.cos(ang))
            motion = Motion("shuttle", (start[0], centre_y, start[1]), speed, end=end,
                            phase=rng.uniform(0, 10), roll_radius=roll, bob=bob)
        # The whole route (and its bounce) must stay clear of static obstacles; floors, rugs and paving are
        # surfaces the entity moves on, so they are left out of the test.
        period = 2 * math.pi * motion.radius / speed if motion.kind == "circle" else 2 * length / speed
        route = motion.transform(np.linspace(0, period, 96))[:, :3, 3]  # [96, 3]
        ok = True
        for dy, reach in probes:
            probe = route + np.array([0.0, dy, 0.0])
            inside = np.all((probe[:, [0, 2]] >= scene.free_min[[0, 2]] + reach)
                            & (probe[:, [0, 2]] <= scene.free_max[[0, 2]] - reach))
            ok &= bool(inside) and bool(np.all(scene.distance(probe, surfaces=False) > reach + cfg.gap / 5))
        if not ok:
            continue
        ids += 1
        scene.add_primitives([Primitive(shape, size, yaw_pose(offset), mat, ids, motion, name=kind)
                              for shape, size, offset in parts])
