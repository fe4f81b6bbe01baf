"""Scene-video renderer: the spatial memory seen from a batch of cameras, as the model's control input.

Points splat as small squares whose side follows the projected voxel (side ~ fx * point_size / z pixels,
clamped to 1..max_splat), with an exact z-buffer: each point's depth bits and row index are packed into one
int64 key and `scatter_reduce(amin)` keeps the nearest point per pixel in a single pass, so depth and colour
come from the same winner (ties go to the smaller row). Black background; `coverage` marks pixels where any
point landed. `return_visible` gives the z-buffer winners per camera, which retrieval counts.

Speed: `prepare_points` sorts the points into a coarse grid of cells once (radix sort, O(N)); each camera then
keeps only the cells whose box meets its frustum, so it touches the points it can see rather than all N.
Per-point work is vectorised (a Python loop runs over cameras and the few footprint offsets only).
`render_reference` is the plain-loop definition the fast path is tested against.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from engine import geometry

DEFAULT_MAX_SPLAT = 3  # pixels: the largest square a point covers (near points; the memory is dense)
DEFAULT_NEAR = 0.01  # metres: points closer to the camera plane than this are not drawn
DEFAULT_CELLS_PER_AXIS = 24  # culling grid: up to 24^3 cells over the cloud's bounding cube
CULL_KEEP_ALL = 0.7  # when a camera sees more than this fraction of the points, skip the gather
_EMPTY = torch.iinfo(torch.int64).max
_LOW32 = 0xFFFFFFFF


@dataclass
class RenderOutput:
    rgb: torch.Tensor  # [B, 3, H, W] float32 in [0, 1], black where empty
    depth: torch.Tensor  # [B, 1, H, W] float32 metric z of the nearest point, 0 where empty
    coverage: torch.Tensor  # [B, 1, H, W] float32, 1 where any point landed
    visible: list[torch.Tensor] | None = None  # per camera: sorted int64 indices of the points that won a pixel


def _source_tensors(source, device) -> tuple[torch.Tensor, torch.Tensor, float | None]:
    """(xyz [N, 3] float32, rgb [N, 3] uint8, the memory's voxel size or None) from a memory or two arrays."""
    if hasattr(source, "xyz") and hasattr(source, "rgb") and hasattr(source, "voxel_size"):
        xyz, rgb, voxel = source.xyz, source.rgb, float(source.voxel_size)
    else:
        try:
            xyz, rgb = source
        except (TypeError, ValueError):
            raise TypeError("render: source must be a SpatialMemory or a pair (xyz [N, 3], rgb [N, 3])") from None
        voxel = None
    with warnings.catch_warnings():  # the memory's read-only views: the renderer never writes to its inputs
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        xyz = torch.as_tensor(xyz)
        rgb = torch.as_tensor(rgb)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or not xyz.is_floating_point():
        raise ValueError(f"render: xyz must be float [N, 3], got {xyz.dtype} {tuple(xyz.shape)}")
    if rgb.shape != xyz.shape or rgb.dtype != torch.uint8:
        raise ValueError(f"render: rgb must be uint8 [N, 3] like xyz, got {rgb.dtype} {tuple(rgb.shape)}")
    if xyz.shape[0] >= 1 << 32:
        raise ValueError("render: at most 2^32 points (indices are packed into 32 bits)")
    device = torch.device(device) if device is not None else xyz.device
    return xyz.to(device, torch.float32), rgb.to(device), voxel


@dataclass
class PreparedPoints:
    """Points sorted by grid cell for frustum culling. Build once per memory version with `prepare_points`."""

    xyz_h: torch.Tensor  # [4, N] float32 homogeneous positions, sorted by cell
    order: torch.Tensor  # [N] int64 source row of each sorted point
    rgb: torch.Tensor  # [N, 3] uint8 colours in source row order
    cell_lo: np.ndarray  # [C, 3] float64 bounding box of each non-empty cell
    cell_hi: np.ndarray  # [C, 3]
    cell_start: np.ndarray  # [C] int64 first sorted position of each cell
    cell_count: np.ndarray  # [C] int64
    voxel_size: float | None  # the memory's voxel size, the default point size

    def __len__(self) -> int:
        return self.xyz_h.shape[1]


def prepare_points(source, cells_per_axis: int = DEFAULT_CELLS_PER_AXIS,
                   device: str | torch.device | None = None) -> PreparedPoints:
    """Sort a SpatialMemory or (xyz, rgb) pair into at most cells_per_axis^3 cells (cubic, over its bounds)."""
    if isinstance(source, PreparedPoints):
        return source
    if not 1 <= cells_per_axis <= 40:  # 40^3 cells still fit the uint16 radix sort below
        raise ValueError(f"cells_per_axis must be in 1..40, got {cells_per_axis}")
    xyz, rgb, voxel = _source_tensors(source, device)
    dev, N = xyz.device, xyz.shape[0]
    if N:
        lo_t, hi_t = torch.aminmax(xyz, dim=0)
        lo, hi = lo_t.double().cpu().numpy(), hi_t.double().cpu().numpy()
        cell = max(float((hi - lo).max()) / cells_per_axis, 1e-6)
        dims = np.minimum(np.floor((hi - lo) / cell).astype(np.int64) + 1, cells_per_axis)  # [3]
        c = ((xyz - lo_t) / cell).to(torch.int32)  # [N, 3] cell coordinates (truncation: xyz >= lo)
        c = torch.minimum(c, torch.as_tensor(dims - 1, dtype=torch.int32, device=dev))
        key = (c[:, 0] * int(dims[1] * dims[2]) + c[:, 1] * int(dims[2]) + c[:, 2]).cpu().numpy()  # [N]
        order = np.argsort(key.astype(np.uint16), kind="stable")  # radix sort for 16-bit keys: O(N)
        count = np.bincount(key, minlength=int(dims.prod()))
        cells = np.flatnonzero(count)
        start = (np.cumsum(count) - count)[cells]
        count = count[cells]
        cidx = np.stack(np.unravel_index(cells, tuple(dims)), axis=1)  # [C, 3] cell coordinates
        # Boxes from the grid, padded so that float rounding at cell borders can never cull a point.
        pad = 1e-5 * max(1.0, float(np.abs(np.concatenate([lo, hi])).max()))
        cell_lo = lo + cidx * cell - pad
        cell_hi = lo + (cidx + 1) * cell + pad
        order_t = torch.from_numpy(order).to(dev)
        if dev.type == "cpu":  # NumPy's gather is several times faster than torch's on CPU; written in place
            xyz_h_np = np.empty((4, N), np.float32)
            np.take(xyz.numpy().T, order, axis=1, out=xyz_h_np[:3])
            xyz_h_np[3] = 1.0
            xyz_h = torch.from_numpy(xyz_h_np)
        else:
            xyz_h = torch.cat([xyz.index_select(0, order_t).t(), torch.ones(1, N, device=dev)])
    else:
        order_t = torch.zeros(0, dtype=torch.int64, device=dev)
        cell_lo = cell_hi = np.zeros((0, 3))
        start = count = np.zeros(0, np.int64)
        xyz_h = torch.cat([xyz.t(), torch.ones(1, N, device=dev)])  # [4, N] rows contiguous
    return PreparedPoints(xyz_h, order_t, rgb, cell_lo, cell_hi,
                          start.astype(np.int64), count.astype(np.int64), voxel)


def _cells_in_frustum(pp: PreparedPoints, w2c: np.ndarray, K: np.ndarray, W: int, H: int, near: float,
                      margin: float) -> np.ndarray:
    """Which cells [B, C] bool meet each camera's frustum, widened by `margin` pixels (a splat's half side)."""
    R, t = w2c[:, :3, :3], w2c[:, :3, 3]  # [B, 3, 3], [B, 3]
    fx, fy, cx, cy = K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2]
    zero, one = np.zeros_like(fx), np.ones_like(fx)
    # Half-spaces n . p_cam + d >= 0: near plane, left, right, top, bottom.
    n = np.stack([np.stack([zero, zero, one], -1), np.stack([fx, zero, cx + margin], -1),
                  np.stack([-fx, zero, W + margin - cx], -1), np.stack([zero, fy, cy + margin], -1),
                  np.stack([zero, -fy, H + margin - cy], -1)], 1)  # [B, 5, 3]
    nw = n @ R  # [B, 5, 3] in world coordinates: n . (R p + t) = (R^T n) . p + n . t
    dw = np.einsum("bpi,bi->bp", n, t)  # [B, 5]
    dw[:, 0] -= near
    # A box is outside a plane when even its corner furthest along the normal is: that corner's distance is
    # n . centre + |n| . half_size, so all cameras and planes take two matrix products.
    centre = (pp.cell_lo + pp.cell_hi) / 2  # [C, 3]
    half = (pp.cell_hi - pp.cell_lo) / 2
    reach = centre @ nw.reshape(-1, 3).T + half @ np.abs(nw).reshape(-1, 3).T  # [C, B * 5]
    inside = (reach.reshape(len(centre), -1, 5) + dw[None] >= 0).all(axis=2)  # [C, B]
    return inside.T


def _positions(pp: PreparedPoints, cells: np.ndarray) -> np.ndarray | None:
    """Sorted positions [M] of the points in the given cells [C] bool; None when that is (nearly) all."""
    count = pp.cell_count[cells]
    total = int(count.sum())
    if total > CULL_KEEP_ALL * len(pp):
        return None  # gathering would copy almost everything: render all points directly
    start = pp.cell_start[cells]
    # Concatenated ranges [start, start + count) without a Python loop.
    return np.arange(total) + np.repeat(start - (np.cumsum(count) - count), count)


def _visible_positions(pp: PreparedPoints, w2c: np.ndarray, K: np.ndarray, W: int, H: int, near: float,
                       margin: float) -> np.ndarray | None:
    """Positions of the points one camera may see (cells meeting its frustum); None when nearly all."""
    return _positions(pp, _cells_in_frustum(pp, w2c[None], K[None], W, H, near, margin)[0])


def _camera_batch(cameras, resolution) -> tuple[np.ndarray, np.ndarray, int, int]:
    """w2c [B, 4, 4], K [B, 3, 3] at the output resolution, and that resolution (W, H)."""
    if isinstance(cameras, geometry.Camera):
        cameras = [cameras]
    cameras = list(cameras)
    if not cameras:
        raise ValueError("render: no cameras")
    if not all(isinstance(c, geometry.Camera) for c in cameras):
        raise TypeError("render: cameras must be engine.geometry.Camera objects")
    sizes = {(c.width, c.height) for c in cameras}
    if resolution is None:
        if len(sizes) > 1:
            raise ValueError(f"render: cameras have different sizes {sorted(sizes)}; pass resolution=(W, H)")
        W, H = sizes.pop()
    else:
        W, H = (int(x) for x in resolution)
    if W < 1 or H < 1:
        raise ValueError(f"render: resolution must be positive, got {W}x{H}")
    w2c = np.stack([geometry.as_se3(c.w2c) for c in cameras])
    K = np.stack([np.asarray(c.K, np.float64) for c in cameras])
    scale = np.array([[W / c.width, H / c.height] for c in cameras])  # [B, 2] per-camera resize
    K = K.copy()
    K[:, 0, :] *= scale[:, :1]
    K[:, 1, :] *= scale[:, 1:]
    if not (np.isfinite(w2c).all() and np.isfinite(K).all()) or (K[:, 0, 0] <= 0).any() or (K[:, 1, 1] <= 0).any():
        raise ValueError("render: camera poses and intrinsics must be finite with positive focal lengths")
    return w2c, K, W, H


@torch.no_grad()
def render(source, cameras: geometry.Camera | Sequence[geometry.Camera], *,
           resolution: tuple[int, int] | None = None, point_size: float | None = None,
           max_splat: int = DEFAULT_MAX_SPLAT, near: float = DEFAULT_NEAR, return_visible: bool = False,
           device: str | torch.device | None = None) -> RenderOutput:
    """Render points into every camera.

    source: a SpatialMemory, (xyz [N, 3] float, rgb [N, 3] uint8) as NumPy arrays or tensors, or the
    `prepare_points` of either (reuse it while the memory's version is unchanged). cameras: Camera or a
    sequence of them; all of one size unless `resolution=(W, H)` is given (then each camera's intrinsics are
    rescaled to it). point_size: the world size of a point (default: the memory's voxel size, else 0.01 m);
    the release grows it as rounds go on. max_splat: the largest square side in pixels. device: where to
    render (default: where the points are). Visible indices are rows of the source.
    """
    pp = prepare_points(source, device=device)
    w2c, K, W, H = _camera_batch(cameras, resolution)
    point_size = float(point_size if point_size is not None else (pp.voxel_size or 0.01))
    if not (math.isfinite(point_size) and point_size > 0):
        raise ValueError(f"render: point_size must be positive, got {point_size}")
    if int(max_splat) < 1:
        raise ValueError(f"render: max_splat must be >= 1, got {max_splat}")
    max_splat = int(max_splat)
    dev = pp.xyz_h.device
    B, N = len(w2c), len(pp)
    Wp, Hp = W + 2, H + 2  # a one-pixel border collects every point that misses the image (cheaper than masks)
    zbuf = torch.full((B * Hp * Wp,), _EMPTY, dtype=torch.int64, device=dev)  # [B * Hp * Wp] packed (z, row)
    if N:
        # Projection rows K @ [R | t] with the principal point shifted by the border: (u*z, v*z, z) = P @ [X; 1].
        P = np.einsum("bij,bjk->bik", K, w2c[:, :3, :])  # [B, 3, 4]
        P[:, 0, :] += P[:, 2, :]
        P[:, 1, :] += P[:, 2, :]
        P = torch.as_tensor(P, dtype=torch.float32, device=dev)
        cells = _cells_in_frustum(pp, w2c, K, W, H, near, max_splat / 2 + 1)  # [B, C]
        for b in range(B):
            pos = _positions(pp, cells[b])
            if pos is None:
                pts, rows = pp.xyz_h, pp.order
            elif not len(pos):
                continue
            else:
                pos = torch.from_numpy(pos).to(dev)
                pts, rows = pp.xyz_h.index_select(1, pos), pp.order.index_select(0, pos)  # [4, M], [M]
            _splat_camera(zbuf[b * Hp * Wp:(b + 1) * Hp * Wp], pts, rows, P[b], float(K[b, 0, 0]),
                          W, H, point_size, max_splat, near)
    zbuf = zbuf.view(B, Hp, Wp)[:, 1:H + 1, 1:W + 1]  # [B, H, W] drop the border
    hit = zbuf != _EMPTY  # [B, H, W]
    idx = torch.where(hit, zbuf & _LOW32, 0)  # [B, H, W] winning source row per pixel
    depth = (zbuf >> 32).to(torch.int32).view(torch.float32)  # [B, H, W]: the key's high half is z's bit pattern
    depth = torch.where(hit, depth, 0.0)
    if N:
        colour = pp.rgb.index_select(0, idx.reshape(-1)).view(B, H, W, 3)  # (index_select: ~3x faster than [])
    else:
        colour = torch.zeros(B, H, W, 3, dtype=torch.uint8, device=dev)
    colour = colour.permute(0, 3, 1, 2).float().div_(255.0) * hit[:, None]  # [B, 3, H, W]
    visible = None
    if return_visible:  # one sort for the whole batch: rows offset by camera, then split
        flat = (idx + torch.arange(B, device=dev)[:, None, None] * max(N, 1))[hit]
        rows = torch.unique(flat)
        bounds = torch.searchsorted(rows, torch.arange(B + 1, device=dev) * max(N, 1)).tolist()
        visible = [rows[bounds[b]:bounds[b + 1]] - b * max(N, 1) for b in range(B)]
    return RenderOutput(colour, depth[:, None], hit[:, None].float(), visible)


def _splat_camera(zbuf: torch.Tensor, pts_h: torch.Tensor, index: torch.Tensor, P: torch.Tensor, fx: float,
                  W: int, H: int, point_size: float, max_splat: int, near: float) -> None:
    """Scatter every point of one camera into its bordered z-buffer [(H+2) * (W+2)] (in place).

    The per-point arithmetic uses float and int64 ops only: on CPU, bool masks over a million points cost
    several times more than float ops, so culling is done by arithmetic and by sending points to the border.
    """
    Wp = W + 2
    uvz = torch.mm(P, pts_h)  # [3, N] (u*z, v*z, z), u and v shifted by the border
    z = uvz[2]
    inv = torch.reciprocal(z)  # [N]
    # 1.0 in front of the near plane, 0.0 elsewhere, without a bool mask; a zero inverse depth sends the point
    # to the border pixel (0, 0).
    inv.mul_((z - near).clamp_(min=0).mul_(1e30).clamp_(max=1))
    inv.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)  # z == 0 exactly gives inf * 0 = NaN: send it to the border
    u = uvz[0].mul_(inv)  # [N] in place: uvz[:2] now holds unclamped (u, v), read again by the big-point pass
    v = uvz[1].mul_(inv)
    col = u.clamp(0, W + 1).floor_()  # off-image points land on the border columns/rows
    row = v.clamp(0, H + 1).floor_()
    pix = torch.add(col, row, alpha=Wp).long()  # [N] exact in float32 for any realistic image size
    key = z.view(torch.int32).to(torch.int64).bitwise_left_shift_(32).bitwise_or_(index)  # [N] (z bits, index)
    zbuf.scatter_reduce_(0, pix, key, "amin")
    # Points near enough to cover more than one pixel (fx * point_size / z > 1) add the rest of their square,
    # which always contains the centre pixel drawn above. inv is 0 behind the near plane, so one test suffices.
    if max_splat < 2 or fx * point_size <= near:
        return
    big = torch.nonzero(inv > 1.0 / (fx * point_size)).squeeze(1)  # [M]
    if not big.numel():
        return
    ub, vb, zb = uvz.index_select(1, big)  # [3, M] one gather for all three rows
    kb = zb.view(torch.int32).to(torch.int64).bitwise_left_shift_(32).bitwise_or_(index.index_select(0, big))  # [M]
    side = torch.ceil(fx * point_size / zb).clamp_(1, max_splat)  # [M] square side in pixels
    for s in range(2, max_splat + 1):
        group = torch.nonzero(side == s).squeeze(1) if s < max_splat else torch.nonzero(side >= s).squeeze(1)
        if not group.numel():
            continue
        x0 = torch.floor(ub.index_select(0, group) + (0.5 - s / 2))  # [G] first column of the square (bordered)
        y0 = torch.floor(vb.index_select(0, group) + (0.5 - s / 2))
        kg = kb.index_select(0, group)
        for dy in range(s):
            rows = (y0 + dy).clamp_(0, H + 1).mul_(Wp)
            for dx in range(s):
                zbuf.scatter_reduce_(0, (x0 + dx).clamp_(0, W + 1).add_(rows).long(), kg, "amin")


def render_reference(xyz: np.ndarray, rgb: np.ndarray, cameras: Sequence[geometry.Camera], point_size: float,
                     max_splat: int = DEFAULT_MAX_SPLAT, near: float = DEFAULT_NEAR):
    """The renderer's definition as plain loops in float64 (tests only; slow). Same outputs as `render`, NumPy."""
    cameras = list(cameras)
    W, H = cameras[0].width, cameras[0].height
    B = len(cameras)
    best = np.full((B, H, W), np.inf)
    best_i = np.full((B, H, W), np.iinfo(np.int64).max)  # ties in depth go to the smaller index, as in `render`
    for b, cam in enumerate(cameras):
        uv, z = geometry.project(np.asarray(xyz, np.float64), cam.w2c, cam.K)
        fx = cam.K[0, 0]
        for i in range(len(xyz)):
            if z[i] <= near:
                continue
            side = int(min(max(math.ceil(fx * point_size / z[i]), 1), max_splat))
            x0 = math.floor(uv[i, 0] + 0.5 - side / 2) if side > 1 else math.floor(uv[i, 0])
            y0 = math.floor(uv[i, 1] + 0.5 - side / 2) if side > 1 else math.floor(uv[i, 1])
            for y in range(y0, y0 + side):
                for x in range(x0, x0 + side):
                    if 0 <= x < W and 0 <= y < H and (z[i], i) < (best[b, y, x], best_i[b, y, x]):
                        best[b, y, x], best_i[b, y, x] = z[i], i
    hit = np.isfinite(best)
    best_i = np.where(hit, best_i, -1)
    colour = np.where(hit[..., None], np.asarray(rgb)[np.maximum(best_i, 0)], 0).astype(np.float32) / 255.0
    depth = np.where(hit, best, 0.0)
    return colour.transpose(0, 3, 1, 2), depth[:, None], hit[:, None].astype(np.float32), best_i
