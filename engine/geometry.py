"""Cameras, rigid poses and trajectory files: the shared vocabulary of every other module.

Conventions (the official release's): OpenCV cameras (x right, y down, z forward), poses are world-to-camera
4x4 matrices (`w2c`), intrinsics are pixel matrices `K` [3,3] or the release's normalised `[fx, fy, cx, cy]`
(fx, cx divided by image width; fy, cy by image height). Everything here is NumPy, float64 unless noted, and
batched over a leading axis where that is natural. This module imports nothing of the project.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

ORTHONORMAL_TOL = 1e-3


class TrajectoryFileError(ValueError):
    """A camera or trajectory file that cannot be used; the message names the file, the line and the fault."""

    def __init__(self, path: str | Path, line: int | None, problem: str):
        where = f"{path}" if line is None else f"{path}:{line}"
        super().__init__(f"{where}: {problem}")
        self.path, self.line, self.problem = str(path), line, problem


# --------------------------------------------------------------------------------------------- intrinsics
def intrinsics_to_K(norm: np.ndarray, width: int, height: int) -> np.ndarray:
    """Normalised `[..., 4]` (fx, fy, cx, cy) -> pixel K `[..., 3, 3]` for an image of `width` x `height`."""
    norm = np.asarray(norm, dtype=np.float64)
    K = np.zeros(norm.shape[:-1] + (3, 3))
    K[..., 0, 0] = norm[..., 0] * width
    K[..., 1, 1] = norm[..., 1] * height
    K[..., 0, 2] = norm[..., 2] * width
    K[..., 1, 2] = norm[..., 3] * height
    K[..., 2, 2] = 1.0
    return K


def K_to_intrinsics(K: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixel K `[..., 3, 3]` -> normalised `[..., 4]` (fx/W, fy/H, cx/W, cy/H)."""
    K = np.asarray(K, dtype=np.float64)
    return np.stack([K[..., 0, 0] / width, K[..., 1, 1] / height, K[..., 0, 2] / width, K[..., 1, 2] / height], -1)


def fov_to_intrinsics(fov_x_deg: float, aspect: float = 1.0) -> np.ndarray:
    """Normalised intrinsics of a centred pinhole with horizontal field of view `fov_x_deg`; aspect = W / H."""
    fx = 0.5 / math.tan(math.radians(fov_x_deg) / 2)
    return np.array([fx, fx * aspect, 0.5, 0.5])


@dataclass(frozen=True)
class Camera:
    """One pinhole view: world-to-camera pose, pixel intrinsics, and the image size they refer to."""

    w2c: np.ndarray  # [4, 4] float64, OpenCV world-to-camera
    K: np.ndarray  # [3, 3] float64, pixels
    width: int
    height: int

    @classmethod
    def from_normalized(cls, w2c: np.ndarray, norm: np.ndarray, width: int, height: int) -> "Camera":
        return cls(as_se3(w2c), intrinsics_to_K(norm, width, height), int(width), int(height))

    @property
    def c2w(self) -> np.ndarray:
        return invert_se3(self.w2c)

    @property
    def center(self) -> np.ndarray:
        """Camera centre in world coordinates [3]."""
        return self.c2w[:3, 3]


# --------------------------------------------------------------------------------------------- SE(3)
def as_se3(m: np.ndarray) -> np.ndarray:
    """A 3x4 or 4x4 (or a batch of them) -> 4x4 float64 with the last row [0 0 0 1]."""
    m = np.asarray(m, dtype=np.float64)
    if m.shape[-2:] == (4, 4):
        return m.copy()
    if m.shape[-2:] != (3, 4):
        raise ValueError(f"expected [..., 3, 4] or [..., 4, 4] poses, got shape {m.shape}")
    out = np.zeros(m.shape[:-2] + (4, 4))
    out[..., :3, :] = m
    out[..., 3, 3] = 1.0
    return out


def make_se3(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Rotation [..., 3, 3] and translation [..., 3] -> [..., 4, 4]."""
    R, t = np.asarray(R, np.float64), np.asarray(t, np.float64)
    out = np.zeros(R.shape[:-2] + (4, 4))
    out[..., :3, :3] = R
    out[..., :3, 3] = t
    out[..., 3, 3] = 1.0
    return out


def invert_se3(T: np.ndarray) -> np.ndarray:
    """Closed-form inverse of rigid transforms [..., 4, 4] (R^T, -R^T t)."""
    T = as_se3(T)
    R = T[..., :3, :3]
    t = T[..., :3, 3]
    Rt = np.swapaxes(R, -1, -2)
    return make_se3(Rt, -np.einsum("...ij,...j->...i", Rt, t))


def compose_se3(*Ts: np.ndarray) -> np.ndarray:
    """compose_se3(A, B, C) = A @ B @ C, broadcasting over batches."""
    out = as_se3(Ts[0])
    for T in Ts[1:]:
        out = out @ as_se3(T)
    return out


def rotation_error(R: np.ndarray) -> np.ndarray:
    """How far [..., 3, 3] is from a proper rotation: max |R R^T - I| and |det - 1|."""
    R = np.asarray(R, np.float64)
    ortho = np.abs(R @ np.swapaxes(R, -1, -2) - np.eye(3)).max(axis=(-1, -2))
    return np.maximum(ortho, np.abs(np.linalg.det(R) - 1.0))


def pose_distance(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How far apart two w2c poses [..., 4, 4] are (broadcasting): (metres between the camera centres, degrees
    between the views), each [...]."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    centre = lambda m: -np.einsum("...ji,...j->...i", m[..., :3, :3], m[..., :3, 3])  # noqa: E731  c = -R^T t
    metres = np.linalg.norm(centre(a) - centre(b), axis=-1)
    cos = (np.einsum("...ij,...ij->...", a[..., :3, :3], b[..., :3, :3]) - 1.0) / 2.0  # trace(R_a R_b^T)
    return metres, np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def interpolate_se3(T0: np.ndarray, T1: np.ndarray, alpha: np.ndarray | float) -> np.ndarray:
    """Interpolate two poses: slerp on rotation, linear on the camera centre. alpha [N] -> [N, 4, 4].

    Works on camera-to-world motion so the camera centre moves on a straight line whichever way the
    pose is stored; the result is returned in the same convention as the inputs.
    """
    alpha = np.atleast_1d(np.asarray(alpha, np.float64))
    A, B = invert_se3(T0), invert_se3(T1)  # camera-to-world
    slerp = Slerp([0.0, 1.0], Rotation.from_matrix(np.stack([A[:3, :3], B[:3, :3]])))
    R = slerp(alpha).as_matrix()
    c = (1 - alpha)[:, None] * A[:3, 3] + alpha[:, None] * B[:3, 3]
    return invert_se3(make_se3(R, c))


def resample_trajectory(w2c: np.ndarray, n: int) -> np.ndarray:
    """Resample a trajectory [M, 4, 4] to n poses evenly spaced in its frame index (slerp between keys)."""
    w2c = as_se3(w2c)
    if len(w2c) == 1:
        return np.repeat(w2c, n, axis=0)
    pos = np.linspace(0, len(w2c) - 1, n)
    out = np.empty((n, 4, 4))
    for i, p in enumerate(pos):
        k = min(int(p), len(w2c) - 2)
        out[i] = interpolate_se3(w2c[k], w2c[k + 1], p - k)[0]
    return out


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = (0.0, 1.0, 0.0)) -> np.ndarray:
    """World-to-camera pose of an OpenCV camera at `eye` looking at `target`, with `up` the world's up.

    The project's world is y-up (floor at y = 0); the camera's own y axis points down, against `up`.
    """
    eye, target, up = (np.asarray(v, np.float64) for v in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)  # right-handed: x = y_cam cross z with y_cam = -up
    if np.linalg.norm(x) < 1e-9:
        raise ValueError("look_at: view direction is parallel to up")
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = make_se3(np.stack([x, y, z], axis=1), eye)
    return invert_se3(c2w)


# --------------------------------------------------------------------------------------------- projection
def transform_points(T: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply [4, 4] (or [B, 4, 4]) to points [N, 3] (or [B, N, 3])."""
    T = np.asarray(T)
    return pts @ np.swapaxes(T[..., :3, :3], -1, -2) + T[..., None, :3, 3]


def project(pts_world: np.ndarray, w2c: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points [..., N, 3] into pixels. Returns uv [..., N, 2] (pixel centres at +0.5) and depth [..., N].

    Batched over cameras when w2c is [B, 4, 4] and K is [B, 3, 3] (points [N, 3] or [B, N, 3]).
    Points behind the camera get depth <= 0 and uv that must not be used.
    """
    cam = transform_points(w2c, pts_world)
    z = cam[..., 2]
    safe = np.where(np.abs(z) < 1e-12, 1e-12, z)
    K = np.asarray(K)
    u = K[..., None, 0, 0] * cam[..., 0] / safe + K[..., None, 0, 2]
    v = K[..., None, 1, 1] * cam[..., 1] / safe + K[..., None, 1, 2]
    return np.stack([u, v], -1), z


def pixel_grid(width: int, height: int) -> np.ndarray:
    """Pixel-centre coordinates [H, W, 2] (u, v) with centres at +0.5."""
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    return np.stack([u, v], -1)


def unproject(depth: np.ndarray, K: np.ndarray, w2c: np.ndarray) -> np.ndarray:
    """Depth map [H, W] (metric z) -> world points [H, W, 3] for a camera with pixel K and pose w2c."""
    H, W = depth.shape
    uv = pixel_grid(W, H)
    K = np.asarray(K, np.float64)
    x = (uv[..., 0] - K[0, 2]) / K[0, 0] * depth
    y = (uv[..., 1] - K[1, 2]) / K[1, 1] * depth
    cam = np.stack([x, y, depth], -1)
    return transform_points(invert_se3(w2c), cam.reshape(-1, 3)).reshape(H, W, 3)


# --------------------------------------------------------------------------------------------- files
def _check_pose(path, line_no: int, m: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(m)):
        raise TrajectoryFileError(path, line_no, "non-finite value (NaN or inf) in pose")
    m = as_se3(m)
    if not np.allclose(m[3], [0, 0, 0, 1], atol=1e-6):
        raise TrajectoryFileError(path, line_no, f"last row of a 4x4 pose must be [0 0 0 1], got {m[3].tolist()}")
    err = float(rotation_error(m[:3, :3]))
    if err > ORTHONORMAL_TOL:
        raise TrajectoryFileError(path, line_no, f"rotation is not orthonormal (error {err:.3g} > {ORTHONORMAL_TOL})")
    return m


def _lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise TrajectoryFileError(path, None, "file not found") from None
    except UnicodeDecodeError:
        raise TrajectoryFileError(path, None, "not a text file") from None
    return [(i + 1, s.strip()) for i, s in enumerate(text.splitlines()) if s.strip()]


def read_w2c_txt(path: str | Path) -> np.ndarray:
    """The release's `w2c.txt`: one JSON-style 3x4 or 4x4 world-to-camera matrix per line -> [N, 4, 4]."""
    poses = []
    for line_no, s in _lines(Path(path)):
        try:
            m = np.asarray(json.loads(s.replace("nan", "NaN").replace("inf", "Infinity")), dtype=np.float64)
        except (json.JSONDecodeError, ValueError, TypeError, OverflowError):  # OverflowError: ints beyond float64
            raise TrajectoryFileError(path, line_no, "not a JSON-style nested list of numbers") from None
        if m.shape not in ((3, 4), (4, 4)):
            raise TrajectoryFileError(path, line_no, f"expected a 3x4 or 4x4 matrix, got shape {m.shape}")
        poses.append(_check_pose(path, line_no, m))
    if not poses:
        raise TrajectoryFileError(path, None, "no poses in file")
    return np.stack(poses)


def write_w2c_txt(path: str | Path, w2c: np.ndarray) -> None:
    """Write [N, 4, 4] (or 3x4) poses in the release's format, one 4x4 nested list per line."""
    w2c = as_se3(w2c)
    Path(path).write_text("".join(json.dumps(m.tolist()) + "\n" for m in w2c))


def read_intrinsics_txt(path: str | Path) -> np.ndarray:
    """The release's `intrinsics.txt`: normalised `[fx fy cx cy]` per line (one line or one per frame) -> [N, 4]."""
    rows = []
    for line_no, s in _lines(Path(path)):
        parts = s.strip("[]").replace(",", " ").split()
        try:
            v = np.array([float(p) for p in parts])
        except ValueError:
            raise TrajectoryFileError(path, line_no, "intrinsics must be four numbers [fx fy cx cy]") from None
        if v.shape != (4,):
            raise TrajectoryFileError(path, line_no, f"expected 4 numbers [fx fy cx cy], got {len(v)}")
        if not np.all(np.isfinite(v)):
            raise TrajectoryFileError(path, line_no, "non-finite value in intrinsics")
        if v[0] <= 0 or v[1] <= 0:
            raise TrajectoryFileError(path, line_no, "focal lengths must be positive")
        rows.append(v)
    if not rows:
        raise TrajectoryFileError(path, None, "no intrinsics in file")
    return np.stack(rows)


def write_intrinsics_txt(path: str | Path, intrinsics: np.ndarray) -> None:
    rows = np.atleast_2d(np.asarray(intrinsics, np.float64))
    Path(path).write_text("".join("[" + " ".join(f"{x:.9g}" for x in r) + "]\n" for r in rows))


@dataclass
class Re10kTrajectory:
    """A RealEstate10K camera file: source URL, per-frame timestamps (microseconds), intrinsics and poses."""

    url: str
    timestamps: np.ndarray  # [N] int64
    intrinsics: np.ndarray  # [N, 4] normalised fx fy cx cy
    w2c: np.ndarray  # [N, 4, 4]


def read_re10k(path: str | Path) -> Re10kTrajectory:
    """A URL line, then per frame: `timestamp fx fy cx cy 0 0` and 12 numbers of a row-major 3x4 w2c."""
    lines = _lines(Path(path))
    if not lines:
        raise TrajectoryFileError(path, None, "empty file")
    url = lines[0][1]
    ts, intr, poses = [], [], []
    for line_no, s in lines[1:]:
        parts = s.split()
        if len(parts) != 19:
            raise TrajectoryFileError(path, line_no, f"expected 19 numbers per frame, got {len(parts)}")
        try:
            t = int(np.int64(parts[0]))  # timestamps are int64 microseconds: larger ones are refused here
            v = np.array([float(p) for p in parts[1:]])
        except (ValueError, OverflowError):
            raise TrajectoryFileError(path, line_no, "not a number") from None
        if not np.all(np.isfinite(v)):
            raise TrajectoryFileError(path, line_no, "non-finite value")
        ts.append(t)
        intr.append(v[:4])
        poses.append(_check_pose(path, line_no, v[6:].reshape(3, 4)))
    if not poses:
        raise TrajectoryFileError(path, None, "no frames after the URL line")
    return Re10kTrajectory(url, np.array(ts, np.int64), np.stack(intr), np.stack(poses))


def write_re10k(path: str | Path, traj: Re10kTrajectory) -> None:
    out = [traj.url + "\n"]
    for t, k, m in zip(traj.timestamps, traj.intrinsics, as_se3(traj.w2c)):
        nums = [f"{x:.9g}" for x in k] + ["0", "0"] + [f"{x:.9g}" for x in m[:3].reshape(-1)]
        out.append(f"{int(t)} " + " ".join(nums) + "\n")
    Path(path).write_text("".join(out))
