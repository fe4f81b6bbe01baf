"""Reconstruction backends against true depth: `spatia bench reconstruct --json` prints abs_rel and ms_per_frame.

Frames come from the procedural world (engine.world's generate_scene, a camera path and WorldRenderer) by
default, or, with `--scene analytic` or when the world cannot render here, from a small analytic scene defined
here: a textured room with a box in it, ray-cast exactly in NumPy (`analytic_room_views`), so the tests too have
true depth without any renderer. Each backend reconstructs the same frames with the same known cameras; abs_rel
is the mean |d - d_true| / d_true over the pixels the backend marks valid, and `valid_fraction` says how many
those are. A backend that cannot run here (the optional MapAnything package or its weights missing) is reported
as unavailable, with the reason.
"""

from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass

import numpy as np

from engine.geometry import fov_to_intrinsics, intrinsics_to_K, look_at


# --------------------------------------------------------------------------------------------- analytic scene
@dataclass(frozen=True)
class AnalyticRoom:
    """An axis-aligned room (seen from inside) and one solid box, every face with its own smooth random texture."""

    room_min: tuple[float, float, float] = (-4.0, 0.0, -4.0)  # metres, y-up, floor at y = 0
    room_max: tuple[float, float, float] = (4.0, 3.0, 4.0)
    box_min: tuple[float, float, float] = (-0.6, 0.0, 0.8)
    box_max: tuple[float, float, float] = (0.6, 1.2, 1.8)
    texel: float = 0.02  # metres per texture sample: about one pixel at 256 px across a 60 degree view at 4 m
    texture_size: int = 512  # texels per texture side; the pattern repeats beyond 10 m
    texture_blur: float = 1.0  # texels: smooths the noise so bilinear sampling is not aliased
    seed: int = 0

    def textures(self) -> np.ndarray:
        """[12, T, T, 3] float in [0, 1]: 6 room faces then 6 box faces (order: -x, +x, -y, +y, -z, +z)."""
        return _room_textures(self)


@functools.lru_cache(maxsize=4)
def _room_textures(room: AnalyticRoom) -> np.ndarray:
    """Cached per room: the textures are a pure function of its settings (read-only: do not modify)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(room.seed)
    T = room.texture_size
    noise = rng.random((12, T, T, 3))
    tex = gaussian_filter(noise, sigma=(0, room.texture_blur, room.texture_blur, 0), mode="wrap")
    # stretch each face's contrast back to the full range and give it its own tint, so faces differ
    lo = tex.min(axis=(1, 2, 3), keepdims=True)
    hi = tex.max(axis=(1, 2, 3), keepdims=True)
    tint = rng.uniform(0.5, 1.0, size=(12, 1, 1, 3))
    return (tex - lo) / (hi - lo) * tint


def _sample_texture(tex: np.ndarray, a: np.ndarray, b: np.ndarray, texel: float) -> np.ndarray:
    """Bilinear lookup of tex [T, T, 3] at surface coordinates (a, b) in metres, wrapping. -> [N, 3]."""
    from scipy.ndimage import map_coordinates

    coords = np.stack([a / texel, b / texel])
    return np.stack([map_coordinates(tex[..., c], coords, order=1, mode="grid-wrap") for c in range(3)], -1)


def render_analytic(
    room: AnalyticRoom, w2c: np.ndarray, K: np.ndarray, width: int, height: int, with_box: bool = True,
    textures: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast one view: rgb uint8 [H, W, 3] and metric z-depth float32 [H, W] (pixel centres at +0.5)."""
    from engine.geometry import invert_se3, pixel_grid

    tex = room.textures() if textures is None else textures
    c2w = invert_se3(w2c)
    uv = pixel_grid(width, height).reshape(-1, 2)
    d_cam = np.stack([(uv[:, 0] - K[0, 2]) / K[0, 0], (uv[:, 1] - K[1, 2]) / K[1, 1], np.ones(len(uv))], -1)
    d = d_cam @ c2w[:3, :3].T  # [N, 3] world ray directions, unit z in the camera so t is the z-depth
    o = c2w[:3, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        # inside the room: the exit distance along each axis; the nearest one is the wall hit
        t_room = np.where(d > 0, (np.array(room.room_max) - o) * inv, (np.array(room.room_min) - o) * inv)
        t_room = np.where(np.isfinite(t_room) & (t_room > 0), t_room, np.inf)
        axis = t_room.argmin(1)
        t = t_room[np.arange(len(d)), axis]
        face = 2 * axis + (d[np.arange(len(d)), axis] > 0)  # exits through -axis face (0) or +axis face (1)
        if with_box:  # slab test: entry distance of the box
            t0 = (np.array(room.box_min) - o) * inv
            t1 = (np.array(room.box_max) - o) * inv
            t_near = np.minimum(t0, t1)
            t_enter = t_near.max(1)
            t_exit = np.maximum(t0, t1).min(1)
            hit = (t_enter <= t_exit) & (t_enter > 0) & (t_enter < t)
            box_axis = t_near.argmax(1)
            box_face = 6 + 2 * box_axis + (d[np.arange(len(d)), box_axis] <= 0)  # entering -x face when moving +x
            t = np.where(hit, t_enter, t)
            face = np.where(hit, box_face, face)
    p = o + d * t[:, None]
    rgb = np.zeros((len(d), 3))
    for f in np.unique(face):
        sel = face == f
        ax = (f % 6) // 2
        a_ax, b_ax = [i for i in range(3) if i != ax]
        rgb[sel] = _sample_texture(tex[f], p[sel, a_ax], p[sel, b_ax], room.texel)
    rgb8 = np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8).reshape(height, width, 3)
    return rgb8, t.astype(np.float32).reshape(height, width)


def analytic_room_views(
    num_frames: int = 4, width: int = 128, height: int = 96, fov_deg: float = 60.0, step: float = 0.08,
    with_box: bool = True, room: AnalyticRoom | None = None,
) -> dict:
    """A sideways dolly across the room looking at the box and the far wall.

    Returns {"rgb" [F, H, W, 3] uint8, "depth" [F, H, W] float32, "K" [F, 3, 3], "w2c" [F, 4, 4]}.
    """
    room = room or AnalyticRoom()
    tex = room.textures()
    K = intrinsics_to_K(fov_to_intrinsics(fov_deg, width / height), width, height)
    xs = (np.arange(num_frames) - (num_frames - 1) / 2) * step
    w2c = np.stack([look_at((x, 1.5, -2.5), (x * 0.5, 0.9, 4.0)) for x in xs])
    views = [render_analytic(room, T, K, width, height, with_box, tex) for T in w2c]
    return {
        "rgb": np.stack([v[0] for v in views]),
        "depth": np.stack([v[1] for v in views]),
        "K": np.repeat(K[None], num_frames, 0),
        "w2c": w2c,
    }


# --------------------------------------------------------------------------------------------- benchmark
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=5, help="frames per reconstruction call")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--backends", default="model-depth,plane-sweep,mapanything", help="comma-separated names")
    parser.add_argument("--repeat", type=int, default=3, help="timed repeats per backend (median reported)")
    parser.add_argument("--depth-noise", type=float, default=0.0,
                        help="relative std of log-normal noise put on the true depth fed to model-depth")
    parser.add_argument("--device", default="cpu", help="torch device for plane-sweep")
    parser.add_argument("--scene", choices=("world", "analytic"), default="world",
                        help="procedural world scene (falls back to the analytic room if it cannot render)")
    parser.add_argument("--seed", type=int, default=0, help="world scene seed")
    parser.add_argument("--path", default="orbit", help="world camera path kind (engine.world PATH_KINDS)")
    parser.add_argument("--stride", type=int, default=4, help="take every stride-th frame of the 24 fps path")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")


def abs_rel(pred: np.ndarray, true: np.ndarray, valid: np.ndarray) -> float:
    m = valid & np.isfinite(true) & (true > 0)
    if not m.any():
        return float("nan")
    return float(np.mean(np.abs(pred[m] - true[m]) / true[m]))


def world_views(num_frames: int, width: int, height: int, seed: int, path_kind: str, stride: int) -> dict:
    """Frames of a procedural world scene along a camera path, every `stride`-th frame (24 fps paths move a few
    centimetres per frame; stereo wants a wider baseline, as the release subsamples to a few fps)."""
    from engine.world import WorldRenderer, generate_scene, make_path

    scene = generate_scene(seed, kind="indoor")
    extra = {"closed": False} if path_kind == "orbit" else {}  # an arc at walking speed, not one full turn
    path = make_path(path_kind, scene, (num_frames - 1) * stride + 1, seed=seed, aspect=width / height, **extra)
    w2c = path.w2c[::stride]
    K = path.K(width, height)
    renderer = WorldRenderer(width, height)
    try:
        out = renderer.render_batch(scene, w2c, K, path.times[::stride])
    finally:
        renderer.release()
    return {"rgb": out.rgb, "depth": out.depth, "K": np.repeat(K[None], len(w2c), 0), "w2c": w2c}


def load_frames(args: argparse.Namespace) -> tuple[dict, str]:
    """Frames with true depth: the procedural world when it can render them, else the analytic room."""
    if args.scene == "world":
        try:
            views = world_views(args.frames, args.width, args.height, args.seed, args.path, args.stride)
            return views, f"world(seed={args.seed}, path={args.path}, stride={args.stride})"
        except Exception as e:  # no GL context, or no free path in this scene: say so and use the analytic room
            return analytic_room_views(args.frames, args.width, args.height), f"analytic-room (world failed: {e})"
    return analytic_room_views(args.frames, args.width, args.height), "analytic-room"


def run(args: argparse.Namespace) -> dict:
    from engine.bench.timing import machine_info, median_ms
    from engine.reconstruct import ReconstructorUnavailable, get_reconstructor

    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    views, source = load_frames(args)
    rng = np.random.default_rng(0)
    gen_depth = views["depth"] * np.exp(rng.normal(0.0, args.depth_noise, views["depth"].shape)).astype(np.float32)
    F, H, W = views["depth"].shape
    out: dict = {"source": source, "frames": F, "width": W, "height": H, "backends": {}, "machine": machine_info()}
    for name in [b.strip() for b in args.backends.split(",") if b.strip()]:
        kw = {"device": args.device} if name in ("plane-sweep", "mapanything") else {}
        try:
            rec = get_reconstructor(name, **kw)
        except ReconstructorUnavailable as e:
            out["backends"][name] = {"available": False, "reason": str(e)}
            continue
        depth_in = gen_depth if rec.needs_depth else None
        result = {}

        def once():
            result["r"] = rec.reconstruct(views["rgb"], views["K"], views["w2c"], depth_in)

        ms = median_ms(once, warmup=1, repeat=args.repeat)
        r = result["r"]
        out["backends"][name] = {
            "available": True,
            "abs_rel": abs_rel(r.depth, views["depth"], r.valid),
            "valid_fraction": float(r.valid.mean()),
            "ms_per_frame": ms / F,
        }
    return out
