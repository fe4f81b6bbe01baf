"""A quick look at a scene: render a tour along a camera path to MP4, plus a contact sheet PNG of it.

The sheet has three rows over evenly spaced frames: colour, inverse depth (turbo; sky black) and the colour
dimmed with moving entities painted by instance id, so a glance shows whether depth and masks line up.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SHEET_COLUMNS = 8


def colorize_depth(depth: np.ndarray) -> np.ndarray:
    """[..., H, W] metric depth -> uint8 [..., H, W, 3] turbo of inverse depth; 0 (sky) stays black."""
    from matplotlib import colormaps

    valid = depth > 0
    inv = np.where(valid, 1.0 / np.maximum(depth, 1e-6), 0.0)
    hi = np.percentile(inv[valid], 99) if valid.any() else 1.0
    rgb = colormaps["turbo"](np.clip(inv / hi, 0, 1))[..., :3]
    return (rgb * 255 * valid[..., None]).astype(np.uint8)


def colorize_ids(rgb: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Dim the colour image and paint each dynamic instance a fixed hue."""
    palette = np.array([[255, 64, 64], [64, 255, 64], [64, 128, 255], [255, 220, 0], [255, 0, 255], [0, 255, 255]],
                       np.uint8)
    out = (rgb * 0.35).astype(np.uint8)
    dyn = ids > 0
    out[dyn] = palette[(ids[dyn] - 1) % len(palette)]
    return out


def contact_sheet(rgb: np.ndarray, depth: np.ndarray, ids: np.ndarray, columns: int = SHEET_COLUMNS) -> np.ndarray:
    """[N, H, W, 3], [N, H, W], [N, H, W] -> one uint8 image with rows colour / depth / ids."""
    pick = np.linspace(0, len(rgb) - 1, min(columns, len(rgb))).round().astype(int)
    rows = [rgb[pick], colorize_depth(depth[pick]), colorize_ids(rgb[pick], ids[pick])]
    return np.concatenate([np.concatenate(list(r), 1) for r in rows], 0)


def write_preview(seed: int, out: str | Path, res: tuple[int, int], frames: int, fps: float = 24.0,
                  kind: str = "auto", path: str = "walk", speed: float = 1.2, dynamic: bool = False) -> Path:
    """Render the tour of scene `seed` to `out` (.mp4) and its contact sheet to the same name .png."""
    import imageio.v2 as imageio

    from engine.world.paths import make_path
    from engine.world.render import WorldRenderer
    from engine.world.scene import generate_scene

    width, height = res
    if width % 2 or height % 2:
        raise ValueError(f"MP4 (yuv420p) needs even image sizes, got {width}x{height}")
    scene = generate_scene(seed, kind, dynamic=dynamic)
    cam = make_path(path, scene, frames, fps=fps, speed=speed, seed=seed, aspect=width / height)
    renderer = WorldRenderer(width, height)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    K = cam.K(width, height)
    # Render in chunks so long tours never hold every frame's depth in memory.
    chunk, sheet_frames = 64, []
    picks = set(np.linspace(0, frames - 1, min(SHEET_COLUMNS, frames)).round().astype(int).tolist())
    with imageio.get_writer(out, fps=fps, codec="libx264", quality=8, macro_block_size=2) as writer:
        for a in range(0, frames, chunk):
            b = min(frames, a + chunk)
            r = renderer.render_batch(scene, cam.w2c[a:b], K, cam.times[a:b])
            for i in range(b - a):
                writer.append_data(r.rgb[i])
                if a + i in picks:
                    sheet_frames.append((r.rgb[i], r.depth[i], r.ids[i]))
    renderer.release()
    rgb, depth, ids = (np.stack(x) for x in zip(*sheet_frames))
    sheet_path = out.with_suffix(".png")
    imageio.imwrite(sheet_path, contact_sheet(rgb, depth, ids))
    return sheet_path
