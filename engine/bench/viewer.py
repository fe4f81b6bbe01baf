"""Viewer frame rate: a 1M-point memory drawn at 1280x720 with the automatic point budget, and at full size.

Draws the explorer's memory view (coverage pass, point sprites, grid, camera path) plus the HUD into an offscreen
framebuffer of a standalone EGL context, finishing the GL queue each frame as a window's present would. The
camera walks through a synthetic room so every frame differs. First every point is drawn (the reference), then
the budget adapts to the measured frame time for the target rate and the steady state is measured. Also times
applying a full 1M-point memory delta and an incremental one.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--points", type=int, default=1_000_000, help="points in the memory")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--target-fps", type=float, default=30.0, help="frame rate the point budget aims for")
    parser.add_argument("--frames", type=int, default=30, help="frames measured at the adapted budget")
    parser.add_argument("--full-frames", type=int, default=6, help="frames measured drawing every point")
    parser.add_argument("--adapt-frames", type=int, default=60, help="frames given to the budget to settle")
    parser.add_argument("--delta-points", type=int, default=50_000, help="points in the incremental delta timed")
    parser.add_argument("--screenshot", default="", help="write the last adapted frame to this PNG")
    parser.add_argument("--seed", type=int, default=0)


def synthetic_room(n: int, seed: int = 0, size: float = 8.0, height: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """n points on the floor, walls and a few boxes of a room, coloured by surface: xyz float32 [n, 3], rgb [n, 3]."""
    rng = np.random.default_rng(seed)
    u = rng.random((n, 2))
    surface = rng.integers(0, 7, n)  # floor, 4 walls, 2 boxes
    half = size / 2
    a, b = (u[:, 0] - 0.5) * size, u[:, 1]
    xyz = np.empty((n, 3))
    planes = [
        np.stack([a, np.zeros(n), (b - 0.5) * size], 1),  # floor
        np.stack([a, b * height, np.full(n, half)], 1),
        np.stack([a, b * height, np.full(n, -half)], 1),
        np.stack([np.full(n, half), b * height, a], 1),
        np.stack([np.full(n, -half), b * height, a], 1),
        np.stack([1.0 + u[:, 0], b * 1.2, np.full(n, 1.5)], 1),  # a box face
        np.stack([-2.0 + u[:, 0] * 0.8, np.full(n, 0.9), -1.0 + b * 0.8], 1),  # a table top
    ]
    palette = np.array([[120, 100, 80], [200, 190, 170], [180, 200, 210], [210, 180, 160], [170, 190, 160],
                        [200, 60, 50], [60, 90, 160]], np.float64)
    for k, p in enumerate(planes):
        xyz[surface == k] = p[surface == k]
    shade = 0.75 + 0.25 * np.sin(xyz[:, 0] * 3.0) * np.cos(xyz[:, 2] * 3.0)  # texture so motion is visible
    rgb = np.clip(palette[surface] * shade[:, None] + rng.normal(0, 6, (n, 3)), 0, 255)
    return xyz.astype(np.float32), rgb.astype(np.uint8)


def walk(i: int, height: float = 1.6) -> np.ndarray:
    """Pose i of a slow loop through the room, looking ahead and a little down."""
    from engine.geometry import look_at

    t = i * 0.02
    eye = np.array([2.2 * math.cos(t), height, 2.2 * math.sin(t)])
    ahead = np.array([2.2 * math.cos(t + 0.6), 1.0, 2.2 * math.sin(t + 0.6)])
    return look_at(eye, ahead)


def run(args: argparse.Namespace) -> dict:
    from engine.geometry import fov_to_intrinsics, intrinsics_to_K
    from engine.server.protocol import MemoryDelta
    from explorer.gl import offscreen, read_rgb, renderer_name, standalone_context
    from explorer.hud import Hud, HudState
    from explorer.memory_view import MemoryView, MemoryViewConfig

    W, H, n = args.width, args.height, args.points
    ctx = standalone_context()
    fbo = offscreen(ctx, W, H)
    fbo.use()
    view = MemoryView(ctx, MemoryViewConfig(target_fps=args.target_fps, initial_budget=max(n, 20_000)),
                      seed=args.seed)
    hud = Hud(ctx)
    K = intrinsics_to_K(fov_to_intrinsics(75.0, W / H), W, H)

    xyz, rgb = synthetic_room(n + args.delta_points, args.seed)
    none = np.zeros(0, np.int64)
    full = MemoryDelta(version_from=0, version_to=1, full=True, added_ids=np.arange(n, dtype=np.int64),
                       added_xyz=xyz[:n], added_rgb=rgb[:n], removed_ids=none, recolored_ids=none,
                       recolored_rgb=np.zeros((0, 3), np.uint8))
    t0 = time.perf_counter()
    view.apply_delta(full)
    ctx.finish()
    apply_full_ms = (time.perf_counter() - t0) * 1e3
    m = args.delta_points
    inc = MemoryDelta(version_from=1, version_to=2, added_ids=np.arange(n, n + m, dtype=np.int64),
                      added_xyz=xyz[n:], added_rgb=rgb[n:], removed_ids=np.arange(0, m // 10, dtype=np.int64),
                      recolored_ids=none, recolored_rgb=np.zeros((0, 3), np.uint8))
    t0 = time.perf_counter()
    view.apply_delta(inc)
    ctx.finish()
    apply_delta_ms = (time.perf_counter() - t0) * 1e3

    frame_no = 0

    def frame() -> float:
        """Draw one frame like the app does and return its time in ms (GL finished, as after a present)."""
        nonlocal frame_no
        t0 = time.perf_counter()
        w2c = walk(frame_no)
        view.add_camera(w2c)
        view.render(w2c, K, W, H, (0, 0, W, H))
        hud.update(HudState(points=view.num_points, points_drawn=view.points_drawn), now=t0)
        hud.draw((0, 0, W, H))
        ctx.finish()
        frame_no += 1
        return (time.perf_counter() - t0) * 1e3

    # reference: every point, every frame
    view.config.auto_budget = False
    view.budget = view.controller.max_budget
    frame()
    full_ms = statistics.median(frame() for _ in range(args.full_frames))
    full_drawn = view.points_drawn

    # automatic budget: let it settle, then measure while it keeps adapting
    view.config.auto_budget = True
    view.budget = view.num_points
    for _ in range(args.adapt_frames):
        view.report_frame_time(frame())
    times, drawn = [], []
    for _ in range(args.frames):
        ms = frame()
        view.report_frame_time(ms)
        times.append(ms)
        drawn.append(view.points_drawn)
    if args.screenshot:
        import imageio.v3 as iio

        iio.imwrite(args.screenshot, read_rgb(fbo))
    ms = statistics.median(times)
    result = {
        "renderer": renderer_name(ctx),
        "width": W,
        "height": H,
        "points": view.num_points,
        "target_fps": args.target_fps,
        "fps": round(1000.0 / ms, 2),
        "frame_ms": round(ms, 2),
        "points_drawn": int(statistics.median(drawn)),
        "budget": view.budget,
        "fps_full": round(1000.0 / full_ms, 2),
        "frame_ms_full": round(full_ms, 2),
        "points_drawn_full": full_drawn,
        "apply_full_delta_ms": round(apply_full_ms, 1),
        f"apply_delta_{m}_ms": round(apply_delta_ms, 1),
        "cores": os.cpu_count(),
    }
    hud.release()
    view.release()
    fbo.release()
    ctx.release()
    return result
