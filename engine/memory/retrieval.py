"""Reference-frame retrieval: which earlier frames see the 3D region the next clip's cameras will see.

Two variants, selected by name through `retrieve(method, ...)`:

- "alg1", the supplementary's Algorithm 1: for every K-th target frame (K = number of references), score each
  candidate by SPATIALOVERLAP, the 3D IoU of voxel occupancies of the two views' point sets after registering
  the candidate's points to the target's (open3d point-to-point ICP from identity, few iterations); keep the
  best candidate if its score exceeds epsilon, never twice, at most K. A target view's point set is the part of
  the memory that wins its z-buffer; a candidate's is its own stored points (`Candidate.points`).
- "release", the public code's approximation: target poses subsampled (to `sample_fps` given `fps`, or every
  n-th), z-buffer-visible point sets of the global cloud per camera (the renderer at low resolution), raw
  intersection counts between each target and each candidate, one-to-one assignment by
  `scipy.optimize.linear_sum_assignment` (maximised), up to K, no threshold and no registration. With
  `max_candidates`, only that many candidates nearest to the targets in pose (`nearest_candidates`) are rendered,
  so a chunk's retrieval cost stays flat as a session stores more frames.

Both return [(frame_id, score)] best first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np
import scipy.sparse
from scipy.optimize import linear_sum_assignment

from engine import geometry
from engine.memory.render import prepare_points, render

DEFAULT_K = 7  # the paper's number of reference frames


@dataclass(frozen=True)
class Candidate:
    """An earlier frame that may serve as a reference."""

    frame_id: int
    camera: geometry.Camera  # its pose and intrinsics
    points: np.ndarray | None = None  # [P, 3] float world points back-projected from it (needed by "alg1")


def _memory_arrays(memory) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(memory, "xyz") and hasattr(memory, "rgb"):
        return np.asarray(memory.xyz), np.asarray(memory.rgb)
    try:
        xyz, rgb = memory
    except (TypeError, ValueError):
        raise TypeError("retrieval: memory must be a SpatialMemory or a pair (xyz [N, 3], rgb [N, 3])") from None
    return np.asarray(xyz), np.asarray(rgb)


def _check(targets, candidates, k: int) -> tuple[list[geometry.Camera], list[Candidate]]:
    targets, candidates = list(targets), list(candidates)
    if k < 1:
        raise ValueError(f"retrieval: k must be >= 1, got {k}")
    if not targets:
        raise ValueError("retrieval: no target cameras")
    if not all(isinstance(t, geometry.Camera) for t in targets):
        raise TypeError("retrieval: targets must be engine.geometry.Camera objects")
    if not all(isinstance(c, Candidate) for c in candidates):
        raise TypeError("retrieval: candidates must be Candidate objects")
    ids = [c.frame_id for c in candidates]
    if len(set(ids)) != len(ids):
        raise ValueError("retrieval: candidate frame ids must be distinct")
    return targets, candidates


def _vis_resolution(camera: geometry.Camera, width: int) -> tuple[int, int]:
    return int(width), max(1, round(width * camera.height / camera.width))


def visible_sets(memory, cameras: Sequence[geometry.Camera], width: int, max_points: int | None = None,
                 chunk: int = 64) -> list[np.ndarray]:
    """Rows of the memory's points that win each camera's z-buffer at `width` pixels wide (aspect kept).

    With `max_points`, an even subsample of the rows stands in for the cloud (rows keep their memory indices).
    """
    xyz, rgb = _memory_arrays(memory)
    rows = None
    if max_points is not None and len(xyz) > max_points:
        rows = np.linspace(0, len(xyz) - 1, max_points).astype(np.int64)
        xyz, rgb = xyz[rows], rgb[rows]
    voxel = getattr(memory, "voxel_size", None)
    pp = prepare_points((xyz, rgb))
    size = _vis_resolution(cameras[0], width) if cameras else (width, width)
    out = []
    for i in range(0, len(cameras), chunk):
        res = render(pp, cameras[i:i + chunk], resolution=size, point_size=voxel, return_visible=True)
        out += [v.numpy() if rows is None else rows[v.numpy()] for v in res.visible]
    return out


def nearest_candidates(targets: Sequence[geometry.Camera], candidates: Sequence[Candidate], n: int,
                       turn_m: float = 2.0) -> list[Candidate]:
    """The n candidates nearest to any target by pose: centre distance (m) + turn_m * (1 - cos(view angle)),
    in their original order."""
    if len(candidates) <= n:
        return list(candidates)

    def centres_and_axes(cams):
        w2c = np.stack([c.w2c for c in cams])  # [N, 4, 4]
        R, t = w2c[:, :3, :3], w2c[:, :3, 3]
        return -np.einsum("nji,nj->ni", R, t), R[:, 2]  # centre c = -R^T t; view axis = third row of R

    tc, ta = centres_and_axes(targets)  # [T, 3] each
    cc, ca = centres_and_axes([c.camera for c in candidates])  # [C, 3] each
    dist = np.linalg.norm(cc[:, None] - tc[None], axis=-1) + turn_m * (1 - ca @ ta.T)  # [C, T]
    keep = np.sort(np.argpartition(dist.min(1), n - 1)[:n])
    return [candidates[i] for i in keep]


# --------------------------------------------------------------------------------------------- release
@dataclass
class ReleaseRetrieval:
    """The public release's retrieval (see the module docstring)."""

    k: int = DEFAULT_K
    fps: float = 24.0  # frame rate of the target trajectory
    sample_fps: float = 2.0  # target poses are taken at this rate...
    every: int | None = None  # ...or every n-th pose when set
    vis_width: int = 64  # visibility is judged on renders this wide
    max_points: int | None = 100_000  # even subsample of the memory for visibility (None: all points)
    max_candidates: int | None = None  # render only this many candidates nearest in pose (None: all)

    def target_indices(self, n: int) -> np.ndarray:
        if self.every is not None:
            if self.every < 1:
                raise ValueError(f"release retrieval: every must be >= 1, got {self.every}")
            step = self.every
        else:
            if not (self.fps > 0 and self.sample_fps > 0):
                raise ValueError("release retrieval: fps and sample_fps must be positive")
            step = max(1, round(self.fps / self.sample_fps))
        return np.arange(0, n, step)

    def __call__(self, targets, candidates, memory) -> list[tuple[int, float]]:
        targets, candidates = _check(targets, candidates, self.k)
        if not candidates:
            return []
        chosen = [targets[i] for i in self.target_indices(len(targets))]
        if self.max_candidates is not None:
            if self.max_candidates < 1:
                raise ValueError(f"release retrieval: max_candidates must be >= 1, got {self.max_candidates}")
            candidates = nearest_candidates(chosen, candidates, self.max_candidates)
        sets = visible_sets(memory, chosen + [c.camera for c in candidates], self.vis_width, self.max_points)
        n_points = len(_memory_arrays(memory)[0])
        counts = _intersection_counts(sets[:len(chosen)], sets[len(chosen):], n_points)  # [T, C]
        rows, cols = linear_sum_assignment(counts, maximize=True)
        picks = [(candidates[c].frame_id, float(counts[r, c])) for r, c in zip(rows, cols) if counts[r, c] > 0]
        picks.sort(key=lambda p: -p[1])
        return picks[: self.k]


def _intersection_counts(a: list[np.ndarray], b: list[np.ndarray], n: int) -> np.ndarray:
    """|a_i & b_j| for sets of point rows, as a dense [len(a), len(b)] array (one sparse product)."""

    def incidence(sets):
        indptr = np.concatenate([[0], np.cumsum([len(s) for s in sets])])
        idx = np.concatenate(sets) if sets else np.zeros(0, np.int64)
        return scipy.sparse.csr_matrix((np.ones(len(idx), np.float32), idx, indptr), shape=(len(sets), max(n, 1)))

    return np.asarray((incidence(a) @ incidence(b).T).todense())


# --------------------------------------------------------------------------------------------- alg1
@dataclass
class Alg1Retrieval:
    """The supplementary's Algorithm 1 (see the module docstring)."""

    k: int = DEFAULT_K
    stride: int | None = None  # score every stride-th target frame (default: k, as in the algorithm)
    epsilon: float = 0.1  # minimum IoU for a reference
    iou_voxel: float = 0.05  # voxel size of the occupancy grids compared by IoU (metres)
    icp_max_distance: float = 0.1  # correspondence radius of ICP (metres)
    icp_iterations: int = 10
    # Target point sets: the memory points winning a render this wide. It must sample surfaces at least as
    # finely as iou_voxel (and a candidate's points must too), or sparse sets make the occupancy IoU small.
    vis_width: int = 256

    def __call__(self, targets, candidates, memory) -> list[tuple[int, float]]:
        import open3d as o3d

        targets, candidates = _check(targets, candidates, self.k)
        stride = self.k if self.stride is None else self.stride
        if stride < 1 or not (self.iou_voxel > 0 and self.icp_max_distance > 0) or self.icp_iterations < 1:
            raise ValueError("alg1 retrieval: stride, iou_voxel, icp_max_distance and icp_iterations must be positive")
        missing = [c.frame_id for c in candidates if c.points is None]
        if missing:
            raise ValueError(f"alg1 retrieval needs each candidate's points; frames without: {missing[:10]}")
        if not candidates:
            return []
        xyz, _ = _memory_arrays(memory)
        chosen = [targets[i] for i in range(0, len(targets), stride)]
        target_sets = visible_sets(memory, chosen, self.vis_width)
        # Clouds with no pair of points closer than `reach` cannot have an ICP correspondence (ICP then keeps
        # the identity) nor share an occupancy voxel: their IoU is exactly 0 and their ICP is skipped.
        reach = max(self.icp_max_distance, self.iou_voxel * math.sqrt(3))
        cands = [_Cloud.make(np.asarray(c.points, np.float64), self.iou_voxel, reach) for c in candidates]
        icp = o3d.pipelines.registration
        criteria = icp.ICPConvergenceCriteria(max_iteration=self.icp_iterations)
        estimation = icp.TransformationEstimationPointToPoint()
        picks: list[tuple[int, float]] = []
        taken: set[int] = set()
        for rows in target_sets:
            if len(picks) >= self.k:
                break
            tgt = _Cloud.make(xyz[rows].astype(np.float64), self.iou_voxel, reach)
            near = tgt.near_cells()
            best, best_score = None, 0.0
            for j, cand in enumerate(cands):
                if j in taken or not cand.meets(near):
                    continue
                result = icp.registration_icp(cand.pcd, tgt.pcd, self.icp_max_distance, np.eye(4), estimation,
                                              criteria)
                score = tgt.iou(cand.transformed_keys(result.transformation, self.iou_voxel))
                if score > best_score:
                    best, best_score = j, score
            if best is not None and best_score > self.epsilon:
                taken.add(best)
                picks.append((candidates[best].frame_id, best_score))
        picks.sort(key=lambda p: -p[1])
        return picks


@dataclass
class _Cloud:
    """A point set voxel-downsampled for ICP, with its occupancy keys and its cells of side `reach`."""

    pcd: object  # open3d PointCloud of the downsampled points
    points: np.ndarray  # [P, 3] float64 downsampled points
    keys: np.ndarray  # [V] sorted unique int64 voxel keys of the occupancy
    cells: np.ndarray  # [G, 3] int64 unique cells of side `reach` holding points

    @classmethod
    def make(cls, pts: np.ndarray, voxel: float, reach: float) -> "_Cloud":
        import open3d as o3d

        pts = pts[np.isfinite(pts).all(axis=1)] if len(pts) else np.zeros((0, 3))
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
        if len(pts):
            pcd = pcd.voxel_down_sample(voxel)
        down = np.asarray(pcd.points)
        cells = np.unique(np.floor(down / reach).astype(np.int64), axis=0) if len(down) else np.zeros((0, 3), np.int64)
        return cls(pcd, down, _occupancy(down, voxel), cells)

    def near_cells(self) -> np.ndarray:
        """Sorted keys of the cells within one cell of this cloud's: any point closer than `reach` is in one."""
        offsets = np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)  # [27, 3]
        return np.unique(_cell_key((self.cells[:, None] + offsets[None]).reshape(-1, 3)))

    def meets(self, near: np.ndarray) -> bool:
        if not len(self.cells) or not len(near):
            return False
        k = _cell_key(self.cells)
        pos = np.minimum(np.searchsorted(near, k), len(near) - 1)
        return bool((near[pos] == k).any())

    def transformed_keys(self, T: np.ndarray, voxel: float) -> np.ndarray:
        return _occupancy(geometry.transform_points(T, self.points), voxel)

    def iou(self, keys: np.ndarray) -> float:
        inter = len(np.intersect1d(self.keys, keys, assume_unique=True))
        union = len(self.keys) + len(keys) - inter
        return inter / union if union else 0.0


def _cell_key(c: np.ndarray) -> np.ndarray:
    c = np.clip(c + (1 << 20), 0, (1 << 21) - 1)
    return (c[:, 0] << 42) | (c[:, 1] << 21) | c[:, 2]


def _occupancy(pts: np.ndarray, voxel: float) -> np.ndarray:
    """Sorted unique voxel keys [V] int64 of points [P, 3] (21 bits per axis, as in the memory).

    The grid is offset by half a voxel: surfaces at round coordinates (floors at y = 0, walls of rooms built
    on whole metres) would otherwise lie exactly on cell borders, where a registration error of a hair flips
    every point into the neighbouring cell and the IoU collapses.
    """
    if not len(pts):
        return np.zeros(0, np.int64)
    c = np.floor(pts / voxel + 0.5).astype(np.int64) + (1 << 20)
    c = np.clip(c, 0, (1 << 21) - 1)
    return np.unique((c[:, 0] << 42) | (c[:, 1] << 21) | c[:, 2])


# --------------------------------------------------------------------------------------------- registry
RETRIEVERS = {"alg1": Alg1Retrieval, "release": ReleaseRetrieval}


def retrieve(method: str, targets: Sequence[geometry.Camera], candidates: Sequence[Candidate], memory,
             **options) -> list[tuple[int, float]]:
    """Pick up to k reference frames for a target trajectory. method: "alg1" or "release"; options: the
    fields of that variant's dataclass (k, epsilon, fps, ...). Returns [(frame_id, score)] best first."""
    if method not in RETRIEVERS:
        raise ValueError(f"unknown retrieval method {method!r}; choose one of {sorted(RETRIEVERS)}")
    cls = RETRIEVERS[method]
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"{method} retrieval has no option(s) {unknown}; it takes {sorted(known)}")
    return cls(**options)(targets, candidates, memory)
