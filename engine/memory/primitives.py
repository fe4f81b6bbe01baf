"""Points on the surface of simple solids, for inserting objects into the memory (3D-aware editing).

Surfaces are sampled on a regular grid at the memory's voxel spacing, so an inserted object is as dense as the
scene around it and survives voxel de-duplication without holes.
"""

from __future__ import annotations

import numpy as np

SHAPES = ("box", "sphere")


def box_surface(center, size, spacing: float) -> np.ndarray:
    """Points [N, 3] float32 on the six faces of an axis-aligned box of full extents `size` [3] around `center`."""
    center, size = np.asarray(center, np.float64), np.asarray(size, np.float64)
    _check(size, spacing)
    half = size / 2
    counts = np.maximum(2, np.ceil(size / spacing).astype(int) + 1)
    axes = [np.linspace(-h, h, n) for h, n in zip(half, counts)]
    faces = []
    for a in range(3):
        b, c = [i for i in range(3) if i != a]
        gb, gc = np.meshgrid(axes[b], axes[c], indexing="ij")
        for sign in (-1.0, 1.0):
            f = np.empty(gb.shape + (3,))
            f[..., a], f[..., b], f[..., c] = sign * half[a], gb, gc
            faces.append(f.reshape(-1, 3))
    return (np.concatenate(faces) + center).astype(np.float32)


def sphere_surface(center, size, spacing: float) -> np.ndarray:
    """Points [N, 3] float32 on an ellipsoid with diameters `size` [3]: a Fibonacci lattice at ~`spacing`."""
    center, size = np.asarray(center, np.float64), np.asarray(size, np.float64)
    _check(size, spacing)
    radii = size / 2
    # surface area of the ellipsoid (Knud Thomsen's approximation) / spacing^2 points
    p = 1.6075
    a, b, c = radii
    area = 4 * np.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)
    n = max(16, int(np.ceil(area / spacing**2)))
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = np.pi * (1 + 5**0.5) * i
    unit = np.stack([np.cos(theta) * np.sin(phi), np.cos(phi), np.sin(theta) * np.sin(phi)], -1)
    return (unit * radii + center).astype(np.float32)


def primitive_surface(shape: str, center, size, spacing: float) -> np.ndarray:
    if shape == "box":
        return box_surface(center, size, spacing)
    if shape == "sphere":
        return sphere_surface(center, size, spacing)
    raise ValueError(f"unknown primitive {shape!r}; choose one of {SHAPES}")


def _check(size: np.ndarray, spacing: float) -> None:
    if size.shape != (3,) or not np.all(np.isfinite(size)) or np.any(size <= 0):
        raise ValueError(f"primitive size must be three positive extents, got {size.tolist()}")
    if not spacing > 0:
        raise ValueError(f"spacing must be positive, got {spacing}")
    if np.prod(size / spacing) > 1e9:
        raise ValueError(f"primitive of size {size.tolist()} m at {spacing} m spacing is too large")
