"""Procedural materials of the world: the texture kinds, how a scene picks their parameters, and their GLSL.

Textures are not images: each primitive carries a kind, two colours and a period in metres, and the fragment
shader evaluates the pattern from the surface's world (static) or object (dynamic) coordinates. They are sharp at
any resolution, cost no memory, and the same numbering is used on both sides because the GLSL lives here next
to the enum. Edges are box-filtered with screen-space derivatives so low-resolution renders do not alias.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from enum import IntEnum

import numpy as np


class Texture(IntEnum):
    SOLID = 0  # colour A with a faint fine-grained noise (so plain walls still give matchable features)
    CHECKER = 1
    STRIPES = 2
    NOISE = 3  # fractal value noise blending A and B (stone, grass, plaster)
    GRADIENT = 4  # smooth triangle wave A->B->A along the vertical, period = scale
    TILES = 5  # square tiles of A (brightness jitter per tile) with grout lines of B
    BRICKS = 6  # running-bond bricks of A (jittered) with mortar of B


@dataclass(frozen=True)
class Material:
    """What a surface looks like: pattern kind, two colours (RGB in [0, 1]) and the pattern period in metres."""

    texture: Texture
    color_a: tuple[float, float, float]
    color_b: tuple[float, float, float]
    scale: float  # metres per pattern period
    detail: float = 0.08  # amplitude of the fine noise laid over every pattern

    def __post_init__(self):
        for name in ("color_a", "color_b"):
            c = getattr(self, name)
            if len(c) != 3 or not all(0.0 <= float(v) <= 1.0 for v in c):
                raise ValueError(f"Material.{name} must be three values in [0, 1], got {c}")
        if not self.scale > 0:
            raise ValueError(f"Material.scale must be > 0 metres, got {self.scale}")

    def as_array(self) -> np.ndarray:
        """[8] float32: kind, scale, detail, 0, A.rgb... laid out as the renderer's per-instance attributes."""
        return np.array([int(self.texture), self.scale, self.detail, 0.0, *self.color_a, *self.color_b], np.float32)


# Period ranges (metres) per kind: wide enough for variety, never so fine that a 128-pixel view turns grey.
SCALE_RANGE: dict[Texture, tuple[float, float]] = {
    Texture.SOLID: (1.0, 1.0),
    Texture.CHECKER: (0.25, 1.2),
    Texture.STRIPES: (0.15, 0.6),
    Texture.NOISE: (0.3, 1.5),
    Texture.GRADIENT: (0.8, 3.0),
    Texture.TILES: (0.25, 0.8),
    Texture.BRICKS: (0.3, 0.6),
}


DETAIL_RANGE = (0.06, 0.16)  # amplitude of the fine grain on every surface


def random_color(rng: np.random.Generator, hue=(0.0, 1.0), sat=(0.2, 0.8), val=(0.3, 0.95)) -> tuple:
    """An RGB colour from ranges in HSV, which is where 'muted wall' or 'bright toy' is easy to say."""
    h = rng.uniform(*hue) % 1.0
    return tuple(float(c) for c in colorsys.hsv_to_rgb(h, rng.uniform(*sat), rng.uniform(*val)))


def random_material(
    rng: np.random.Generator,
    kinds: tuple[Texture, ...] = tuple(Texture),
    hue=(0.0, 1.0),
    sat=(0.2, 0.8),
    val=(0.3, 0.95),
    contrast: tuple[float, float] = (0.25, 0.6),
) -> Material:
    """A material with a random kind from `kinds`; colour B is A shifted in value (and a little in hue)."""
    kind = Texture(kinds[rng.integers(len(kinds))])
    a = random_color(rng, hue, sat, val)
    h, s, v = colorsys.rgb_to_hsv(*a)
    dv = rng.uniform(*contrast) * (1 if v < 0.55 else -1)
    b = colorsys.hsv_to_rgb((h + rng.uniform(-0.08, 0.08)) % 1.0, min(1.0, s * rng.uniform(0.6, 1.3)), v + dv)
    b = tuple(float(np.clip(c, 0.0, 1.0)) for c in b)
    lo, hi = SCALE_RANGE[kind]
    return Material(kind, a, b, float(rng.uniform(lo, hi)), float(rng.uniform(*DETAIL_RANGE)))


# ------------------------------------------------------------------------------------------------ GLSL
# Included in the fragment shader. `p` is the 3D texture-space position in metres, `n` the texture-space normal;
# a 2D coordinate is taken on the plane facing the dominant normal axis so walls, floors and box faces all get
# undistorted patterns. Integer hashing keeps the noise identical from run to run on one driver.
GLSL_TEXTURES = """
uint hash_u(uvec3 v) {
    v = v * 1664525u + 1013904223u;
    v.x += v.y * v.z; v.y += v.z * v.x; v.z += v.x * v.y;
    v ^= v >> 16u;
    v.x += v.y * v.z; v.y += v.z * v.x; v.z += v.x * v.y;
    return v.x ^ v.y ^ v.z;
}
float hash3(vec3 c) { return float(hash_u(uvec3(ivec3(floor(c)) + 1048576)) & 0xffffffu) / 16777215.0; }

float value_noise(vec3 p) {
    vec3 i = floor(p), f = fract(p);
    vec3 u = f * f * (3.0 - 2.0 * f);
    float a = mix(mix(hash3(i), hash3(i + vec3(1,0,0)), u.x), mix(hash3(i + vec3(0,1,0)), hash3(i + vec3(1,1,0)), u.x), u.y);
    float b = mix(mix(hash3(i + vec3(0,0,1)), hash3(i + vec3(1,0,1)), u.x), mix(hash3(i + vec3(0,1,1)), hash3(i + vec3(1,1,1)), u.x), u.y);
    return mix(a, b, u.z);
}

// Fractal noise whose octaves fade out once they get finer than a pixel (fw = footprint in noise units).
float fbm(vec3 p, float fw, int octaves) {
    float s = 0.0, amp = 0.5, norm = 0.0;
    for (int o = 0; o < octaves; o++) {
        float fade = 1.0 - smoothstep(0.25, 0.5, fw);
        s += amp * (fade > 0.0 ? mix(0.5, value_noise(p), fade) : 0.5);
        norm += amp; amp *= 0.5; p *= 2.03; fw *= 2.03;
    }
    return s / norm;  // faded octaves contribute their mean, so the average brightness never drifts
}

// Box-filtered square wave in [0, 1] (1 on odd half-periods), w = filter width in periods.
float filtered_square(float x, float w) {
    w = max(w, 1e-4);
    float i = 2.0 * (abs(fract((x - 0.5 * w) * 0.5) - 0.5) - abs(fract((x + 0.5 * w) * 0.5) - 0.5)) / w;
    return 0.5 - 0.5 * clamp(i, -1.0, 1.0);
}

// 1 inside a line of relative width `lw` at integer positions of x, box-filtered.
float filtered_line(float x, float lw, float w) {
    float d = abs(fract(x + 0.5) - 0.5);
    return 1.0 - smoothstep(lw * 0.5 - 0.5 * w, lw * 0.5 + 0.5 * w + 1e-4, d);
}

vec2 plane_coords(vec3 p, vec3 n) {
    vec3 a = abs(n);
    if (a.y >= a.x && a.y >= a.z) return p.xz;
    if (a.x >= a.z) return vec2(p.z, p.y);
    return p.xy;
}

vec3 procedural_albedo(int kind, vec3 p, vec3 n, float scale, float detail, vec3 ca, vec3 cb) {
    vec3 q = p / scale;
    vec2 uv = plane_coords(q, n);
    vec2 fw = fwidth(uv);
    float t = 0.0;
    vec3 col;
    if (kind == 1) {          // checker
        float cx = filtered_square(uv.x, fw.x), cy = filtered_square(uv.y, fw.y);
        t = cx + cy - 2.0 * cx * cy;
        col = mix(ca, cb, t);
    } else if (kind == 2) {   // stripes
        col = mix(ca, cb, filtered_square(uv.x, fw.x));
    } else if (kind == 3) {   // noise
        t = fbm(q * 2.0, 2.0 * max(fw.x, fw.y), 5);
        col = mix(ca, cb, smoothstep(0.25, 0.75, t));
    } else if (kind == 4) {   // gradient along the vertical
        t = abs(fract(q.y * 0.5) * 2.0 - 1.0);
        col = mix(ca, cb, t);
    } else if (kind == 5) {   // tiles
        float jitter = hash3(vec3(floor(uv), 7.0)) - 0.5;
        float grout = max(filtered_line(uv.x, 0.06, fw.x), filtered_line(uv.y, 0.06, fw.y));
        col = mix(ca * (1.0 + 0.25 * jitter), cb, grout);
    } else if (kind == 6) {   // bricks: rows of height scale/2, every other row shifted by half a brick
        vec2 b = vec2(uv.x, uv.y * 2.0);
        float row = floor(b.y);
        b.x += 0.5 * mod(row, 2.0);
        float jitter = hash3(vec3(floor(b.x), row, 11.0)) - 0.5;
        vec2 fb = fwidth(b);
        float mortar = max(filtered_line(b.x, 0.05, fb.x), filtered_line(b.y, 0.1, fb.y));
        col = mix(ca * (1.0 + 0.3 * jitter), cb, mortar);
    } else {
        col = ca;
    }
    // Fine grain on every surface: gives feature matchers something to hold on to, fades when sub-pixel.
    vec3 g = p * 24.0;
    float grain = fbm(g, 24.0 * max(fwidth(p.x), max(fwidth(p.y), fwidth(p.z))), 3) - 0.5;
    return clamp(col * (1.0 + 2.0 * detail * grain), 0.0, 1.0);
}
"""
