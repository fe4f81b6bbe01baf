"""`plane-sweep`: multi-view stereo on generated RGB frames with their known cameras, in PyTorch, no weights.

For a world model that outputs RGB only, the memory update still needs depth. Every frame is a reference in turn:
its neighbouring frames are warped onto fronto-parallel planes spaced evenly in inverse depth (one homography per
plane, all planes of a chunk in one `F.grid_sample`), scored with zero-mean normalised cross-correlation over a
box window (robust to the exposure drift of generated video), and aggregated over the better half of the
neighbours (so a pixel occluded in one neighbour still matches in another). Winner-take-all picks a plane, a
parabola through its neighbours refines it below the plane spacing, and the confidence multiplies the match
quality by the distinctiveness of the minimum (best against second-best cost away from it). Finally a forward-
backward reprojection check between each reference and its neighbours keeps only geometrically consistent depth.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engine.reconstruct import Reconstruction, Reconstructor

# ITU-R BT.601 luma weights: matching runs on one intensity channel, 3x cheaper than per-channel ZNCC.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class PlaneSweepConfig:
    min_depth: float = 0.3  # metres: nearest plane
    max_depth: float = 30.0  # metres: farthest plane
    num_planes: int = 96  # planes evenly spaced in inverse depth between the two
    num_neighbors: int = 2  # source frames per reference frame
    # neighbours: the frames whose camera centre lies closest to this baseline from the reference (one before and
    # one after it first, so a pixel occluded on one side is seen on the other); None: pick by index distance
    neighbor_baseline: float | None = 0.15  # metres: a few percent of indoor depths, the usual stereo ratio
    neighbor_gap: int = 1  # with neighbor_baseline=None: preferred distance in frames
    window: int = 7  # side of the ZNCC window (odd)
    min_texture: float = 0.01  # intensity std (0..1) in the window below which a pixel cannot be matched
    min_ncc: float = 0.5  # best-plane ZNCC below this is a failed match
    min_confidence: float = 0.15  # confidence below this is not valid
    consistency_px: float = 1.0  # forward-backward reprojection error allowed, pixels
    consistency_rel: float = 0.02  # relative depth difference allowed in the consistency check
    min_consistent: int = 1  # neighbours that must agree for a pixel to stay valid
    plane_chunk: int = 16  # planes warped per batch (bounds memory: chunk x H x W floats per buffer)
    device: str = "cpu"

    def __post_init__(self):
        if not 0 < self.min_depth < self.max_depth:
            raise ValueError(f"need 0 < min_depth < max_depth, got {self.min_depth}, {self.max_depth}")
        if self.num_planes < 3:
            raise ValueError(f"num_planes must be at least 3 (sub-plane refinement), got {self.num_planes}")
        if self.window < 3 or self.window % 2 == 0:
            raise ValueError(f"window must be odd and >= 3, got {self.window}")
        if self.num_neighbors < 1 or self.neighbor_gap < 1 or self.plane_chunk < 1:
            raise ValueError("num_neighbors, neighbor_gap and plane_chunk must be >= 1")
        if self.neighbor_baseline is not None and self.neighbor_baseline <= 0:
            raise ValueError(f"neighbor_baseline must be positive or None, got {self.neighbor_baseline}")
        if not 1 <= self.min_consistent <= self.num_neighbors:
            raise ValueError(f"min_consistent must be in 1..num_neighbors, got {self.min_consistent}")


# --------------------------------------------------------------------------------------------- helpers
def select_neighbors(
    num_frames: int, count: int, gap: int, centers: np.ndarray | None = None, baseline: float | None = None
) -> list[list[int]]:
    """Up to `count` source frames per reference frame.

    With `centers` [F, 3] and `baseline`: ranked by |distance between camera centres - baseline|, the best frame
    before and the best after the reference first (two viewing sides), the rest after them. Otherwise: frames
    whose index distance is closest to `gap` (earlier first on ties).
    """
    out = []
    for i in range(num_frames):
        others = [j for j in range(num_frames) if j != i]
        if centers is None or baseline is None:
            others.sort(key=lambda j: (abs(abs(j - i) - gap), abs(j - i), j > i))
            out.append(others[:count])
            continue
        dist = np.linalg.norm(centers - centers[i], axis=1)
        score = {j: abs(dist[j] - baseline) for j in others}
        ranked = sorted(others, key=lambda j: (score[j], abs(j - i)))
        sides = [min(side, key=lambda j: (score[j], abs(j - i))) for side in ([j for j in others if j < i],
                                                                              [j for j in others if j > i]) if side]
        first = sorted(sides, key=lambda j: (score[j], abs(j - i))) if count > 1 else ranked[:1]
        out.append((first + [j for j in ranked if j not in first])[:count])
    return out


def to_gray(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> luma in [0, 1], [F, 1, H, W] float32."""
    x = torch.from_numpy(np.ascontiguousarray(rgb)).to(device=device, dtype=torch.float32) / 255.0  # [F, H, W, 3]
    w = torch.tensor(LUMA_WEIGHTS, device=device)
    return (x @ w)[:, None]


def box(x: torch.Tensor, window: int) -> torch.Tensor:
    """Mean over a window x window box, same size out; at borders, the mean of the pixels inside the image.

    Summed-area table (two cumsums), O(1) per pixel whatever the window: several times faster on CPU than
    avg_pool2d, which loops over the window. x [..., H, W].
    """
    r = window // 2
    return _box_padded(F.pad(x, (r + 1, r, r + 1, r)), window)


def box_channels(channels: list[torch.Tensor], window: int) -> torch.Tensor:
    """`box` of several [d, H, W] maps at once -> [d, C, H, W], written straight into one padded buffer."""
    d, H, W = channels[0].shape
    r = window // 2
    padded = channels[0].new_zeros(d, len(channels), H + window, W + window)  # zeros outside + a leading zero
    for i, c in enumerate(channels):
        padded[:, i, r + 1 : r + 1 + H, r + 1 : r + 1 + W] = c
    return _box_padded(padded, window)


def _box_padded(p: torch.Tensor, window: int) -> torch.Tensor:
    """Box means of a map already padded by (window // 2 + 1, window // 2) zeros on each axis."""
    c = p.cumsum(-2)
    c = c[..., window:, :] - c[..., :-window, :]
    c = c.cumsum(-1)
    c = c[..., window:] - c[..., :-window]
    H, W = c.shape[-2:]
    return c.div_(_box_counts(H, W, window, p.device))


def _box_counts(H: int, W: int, window: int, device: torch.device) -> torch.Tensor:
    """Pixels of each window that lie inside the image, [H, W]."""
    r = window // 2
    rows = torch.arange(H, device=device)
    cols = torch.arange(W, device=device)
    ny = (rows + r).clamp_max(H - 1) - (rows - r).clamp_min(0) + 1
    nx = (cols + r).clamp_max(W - 1) - (cols - r).clamp_min(0) + 1
    return (ny[:, None] * nx[None, :]).float()


def _pixel_rays(K: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """K^-1 [u, v, 1] for every pixel centre (+0.5), [3, H*W]."""
    v, u = torch.meshgrid(
        torch.arange(H, dtype=K.dtype, device=K.device) + 0.5,
        torch.arange(W, dtype=K.dtype, device=K.device) + 0.5,
        indexing="ij",
    )
    pix = torch.stack([u.reshape(-1), v.reshape(-1), torch.ones_like(u).reshape(-1)])  # [3, H*W]
    return torch.linalg.inv(K) @ pix


def _relative_pose(w2c_src: torch.Tensor, w2c_ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation [3, 3] and translation [3] taking reference-camera points into the source camera."""
    T = w2c_src @ torch.linalg.inv(w2c_ref)
    return T[:3, :3], T[:3, 3]


# --------------------------------------------------------------------------------------------- sweep
@torch.no_grad()
def sweep_frame(
    gray: torch.Tensor,
    K: torch.Tensor,
    w2c: torch.Tensor,
    ref: int,
    neighbors: list[int],
    inv_depths: torch.Tensor,
    cfg: PlaneSweepConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Depth [H, W], confidence [H, W] and validity [H, W] of frame `ref`, before the consistency check."""
    _, _, H, W = gray.shape
    D = len(inv_depths)
    win = cfg.window
    I = gray[ref : ref + 1]  # [1, 1, H, W]
    mean_I = box(I, win)
    var_I = (box(I * I, win) - mean_I**2).clamp_min(0)  # [1, 1, H, W]
    rays = _pixel_rays(K[ref].double(), H, W)  # [3, H*W]
    # Per neighbour: the plane-independent part A = K_s R K_r^-1 p and the per-plane offset b = K_s t, so the
    # homography of the plane at inverse depth rho maps p to A + b * rho (up to scale).
    A_list, b_list = [], []
    for s in neighbors:
        R, t = _relative_pose(w2c[s].double(), w2c[ref].double())
        A_list.append((K[s].double() @ R @ rays).float())  # [3, H*W]
        b_list.append((K[s].double() @ t).float())  # [3]
    cost = torch.empty(D, H, W, device=gray.device)  # [D, H, W] aggregated 1 - ZNCC, +inf where unseen
    keep = math.ceil(len(neighbors) / 2)  # the better half of the neighbours scores each plane
    r = win // 2  # a sample is scored only when its window lies inside the source image
    for lo in range(0, D, cfg.plane_chunk):
        rho = inv_depths[lo : lo + cfg.plane_chunk]  # [d]
        d = len(rho)
        per_src = []
        for s, A, b in zip(neighbors, A_list, b_list):
            q = A[None] + b[None, :, None] * rho[:, None, None]  # [d, 3, H*W]
            z = q[:, 2]
            in_front = z > 1e-6
            z = torch.where(in_front, z, torch.ones_like(z))
            u = q[:, 0] / z
            v = q[:, 1] / z
            # the window around the sample inside the source (to within the warp's local scale, near 1 for the
            # small viewpoint changes between neighbouring frames)
            seen = (in_front & (u >= r) & (u <= W - r) & (v >= r) & (v <= H - r)).view(d, 1, H, W)
            # grid_sample with align_corners=False: -1 and +1 are the outer image edges, matching +0.5 centres
            grid = torch.stack([2 * u / W - 1, 2 * v / H - 1], -1).view(1, d * H, W, 2)
            J = F.grid_sample(gray[s : s + 1], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            J = J.view(d, H, W)  # [d, H, W]
            # one summed-area pass for the three window means: [d, 3, H, W]
            stats = box_channels([J, J * J, I[0] * J], win)
            mean_J, mean_JJ, mean_IJ = stats.split(1, dim=1)
            var_J = (mean_JJ - mean_J**2).clamp_min(0)
            cov = mean_IJ - mean_I * mean_J
            ncc = cov / torch.sqrt((var_I * var_J).clamp_min(1e-12))
            per_src.append(torch.where(seen, 1.0 - ncc.clamp(-1, 1), torch.inf)[:, 0])  # [d, H, W]
        if keep == 1:  # the best neighbour alone (inf only where no neighbour sees the sample)
            cost[lo : lo + d] = functools.reduce(torch.minimum, per_src)
        else:
            best = torch.topk(torch.stack(per_src), keep, dim=0, largest=False).values  # [keep, d, H, W]
            finite = torch.isfinite(best)
            n = finite.sum(0)
            agg = torch.where(finite, best, 0.0).sum(0) / n.clamp_min(1)
            cost[lo : lo + d] = torch.where(n > 0, agg, torch.inf)
    return _winner_take_all(cost, inv_depths, var_I[0, 0], cfg)


def _winner_take_all(
    cost: torch.Tensor, inv_depths: torch.Tensor, var_I: torch.Tensor, cfg: PlaneSweepConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Arg-min plane, parabola refinement in inverse depth, confidence and validity. cost [D, H, W]."""
    D = cost.shape[0]
    c0, idx = cost.min(0)  # [H, W]
    lo = (idx - 1).clamp_min(0)
    hi = (idx + 1).clamp_max(D - 1)
    c_lo = cost.gather(0, lo[None])[0]
    c_hi = cost.gather(0, hi[None])[0]
    interior = (idx > 0) & (idx < D - 1) & torch.isfinite(c_lo) & torch.isfinite(c_hi)
    curvature = c_lo - 2 * c0 + c_hi
    safe = torch.where(curvature > 0, curvature, torch.ones_like(curvature))
    offset = torch.where(interior & (curvature > 0), 0.5 * (c_lo - c_hi) / safe, 0.0).clamp(-0.5, 0.5)
    step = inv_depths[1] - inv_depths[0]
    rho = inv_depths[0] + (idx.float() + offset) * step
    depth = 1.0 / rho.clamp_min(1e-12)

    # second-best cost away from the winner's basin (the winner and its two neighbour planes excluded)
    away = cost.clone()
    for nb in (lo, idx, hi):
        away.scatter_(0, nb[None], torch.inf)
    c2 = away.min(0).values
    distinct = torch.where(torch.isfinite(c2), (1.0 - c0 / c2.clamp_min(1e-6)).clamp(0, 1), 0.0)
    match = (1.0 - c0).clamp(0, 1)  # best ZNCC clamped to [0, 1]
    confidence = torch.where(torch.isfinite(c0), match * distinct, 0.0)

    valid = (
        interior
        & (var_I.sqrt() >= cfg.min_texture)
        & (match >= cfg.min_ncc)
        & (confidence >= cfg.min_confidence)
    )
    return depth, torch.where(valid, confidence, 0.0), valid


# --------------------------------------------------------------------------------------------- consistency
@torch.no_grad()
def consistency_votes(
    depth: torch.Tensor,
    valid: torch.Tensor,
    K: torch.Tensor,
    w2c: torch.Tensor,
    neighbors: list[list[int]],
    cfg: PlaneSweepConfig,
) -> torch.Tensor:
    """Per pixel, how many neighbours agree with its depth after a forward-backward reprojection. [F, H, W] int."""
    Fn, H, W = depth.shape
    votes = torch.zeros(Fn, H, W, dtype=torch.int64, device=depth.device)
    for r in range(Fn):
        rays = _pixel_rays(K[r].double(), H, W).float()  # [3, H*W]
        X_r = rays * depth[r].reshape(1, -1)  # [3, H*W] points in the reference camera
        pix_r = (K[r].float() @ rays)[:2]  # [2, H*W] the pixel centres themselves
        for s in neighbors[r]:
            R, t = (x.float() for x in _relative_pose(w2c[s].double(), w2c[r].double()))
            X_s = R @ X_r + t[:, None]
            z_s = X_s[2]
            front = z_s > 1e-6
            uv_s = (K[s].float() @ (X_s / torch.where(front, z_s, torch.ones_like(z_s))))[:2]  # [2, H*W]
            col = uv_s[0].floor().long()
            row = uv_s[1].floor().long()
            inside = front & (col >= 0) & (col < W) & (row >= 0) & (row < H)
            col, row = col.clamp(0, W - 1), row.clamp(0, H - 1)
            d_s = depth[s, row, col]
            ok_s = valid[s, row, col] & inside
            # back from the source pixel, at the source's own depth, into the reference
            ray_s = torch.linalg.inv(K[s].double()).float() @ torch.cat([uv_s, torch.ones_like(uv_s[:1])])
            X_back = R.T @ (ray_s * d_s[None] - t[:, None])  # [3, H*W]
            z_back = X_back[2]
            uv_back = (K[r].float() @ (X_back / torch.where(z_back > 1e-6, z_back, torch.ones_like(z_back))))[:2]
            du, dv = uv_back[0] - pix_r[0], uv_back[1] - pix_r[1]
            err_rel = (z_back - X_r[2]).abs() / X_r[2].clamp_min(1e-6)
            agree = ok_s & (z_back > 1e-6) & (du * du + dv * dv <= cfg.consistency_px**2)
            agree &= err_rel <= cfg.consistency_rel
            votes[r] += agree.view(H, W).long()
    return votes


class PlaneSweepReconstructor(Reconstructor):
    name = "plane-sweep"
    needs_depth = False

    def __init__(self, **kw):
        self.config = PlaneSweepConfig(**kw)

    def _reconstruct(self, rgb, K, w2c, depth) -> Reconstruction:
        cfg = self.config
        Fn, H, W = rgb.shape[:3]
        if Fn < 2:
            raise ValueError(f"plane-sweep needs at least 2 frames with different camera centres, got {Fn}")
        if min(H, W) < cfg.window:
            raise ValueError(f"frames of {W}x{H} are smaller than the matching window ({cfg.window})")
        dev = torch.device(cfg.device)
        gray = to_gray(rgb, dev)  # [F, 1, H, W]
        Kt = torch.from_numpy(K).to(dev)  # [F, 3, 3] float64
        Tt = torch.from_numpy(w2c).to(dev)  # [F, 4, 4] float64
        inv_depths = torch.linspace(1.0 / cfg.max_depth, 1.0 / cfg.min_depth, cfg.num_planes, device=dev)  # [D]
        centers = np.linalg.inv(w2c)[:, :3, 3]  # [F, 3] camera centres in the world
        neighbors = select_neighbors(Fn, cfg.num_neighbors, cfg.neighbor_gap, centers, cfg.neighbor_baseline)
        results = [sweep_frame(gray, Kt, Tt, r, neighbors[r], inv_depths, cfg) for r in range(Fn)]
        d = torch.stack([x[0] for x in results])  # [F, H, W]
        conf = torch.stack([x[1] for x in results])
        valid = torch.stack([x[2] for x in results])
        needed = min(cfg.min_consistent, min(len(n) for n in neighbors))
        valid &= consistency_votes(d, valid, Kt, Tt, neighbors, cfg) >= needed
        return Reconstruction(
            depth=torch.where(valid, d, 0.0).float().cpu().numpy(),
            confidence=torch.where(valid, conf, 0.0).float().cpu().numpy(),
            valid=valid.cpu().numpy(),
        )
