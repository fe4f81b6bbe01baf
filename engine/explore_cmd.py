"""`spatia explore`: the desktop explorer (a window, or a headless scripted tour) with its generation server.

Without `--connect`, a local server is started as a child process (`spatia serve --model tiny --bind <free
loopback port> --sessions DIR`) and stopped on exit; with `--connect ADDRESS` (and `--keys DIR` for CURVE) the
explorer joins a running server. The session starts from the procedural scene (`--seed`), an image with depth
(`--image --depth`), a PLY point cloud (`--ply`), the official release's inputs (`--image --w2c --intrinsics
--prompt`) or a saved session (`--load NAME`). This module turns the arguments into the session's opening message
and reads the files for it; only `run` imports the explorer (and so pyglet and ModernGL).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np

VIEW_MODES = ("side_by_side", "pip", "blend", "frame", "memory")
PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2", "ushort": "u2",
             "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4", "float": "f4", "float32": "f4",
             "double": "f8", "float64": "f8"}
PLY_GREY = 128  # colour of points in a PLY without colours
DEPTH_PNG_SCALE = 1000.0  # 16-bit depth PNGs hold millimetres (the common RGB-D convention)
START_EYE_HEIGHT = 1.6  # metres: a standing person's eye, for starts without a pose


class InputError(ValueError):
    """An input file or argument combination that cannot start a session; the message names it."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    s = parser.add_argument_group("session (default: the procedural scene of --seed)")
    s.add_argument("--seed", type=int, default=0, help="seed of the procedural scene")
    s.add_argument("--prompt", default="", help="text prompt, or a .txt file (one line, or one per round)")
    s.add_argument("--image", type=Path, help="start image (with --depth, or with --w2c and --intrinsics)")
    s.add_argument("--depth", type=Path, help="metric depth of --image: .npy float [H,W] or 16-bit PNG (mm)")
    s.add_argument("--w2c", type=Path, help="the release's w2c.txt (first pose = the start camera)")
    s.add_argument("--intrinsics", type=Path, help="the release's intrinsics.txt (normalised fx fy cx cy)")
    s.add_argument("--masks", type=Path, help="dynamic-region masks: .npy [N,H,W], a PNG, or a folder of PNGs")
    s.add_argument("--ply", type=Path, help="start from a PLY point cloud (world metres, y up)")
    s.add_argument("--fov", type=float, default=60.0, help="horizontal field of view (deg) when none is given")
    s.add_argument("--load", metavar="NAME", help="open a session saved on the server")
    v = parser.add_argument_group("server")
    v.add_argument("--connect", metavar="ADDRESS", help="join a running server (e.g. tcp://host:5555)")
    v.add_argument("--keys", type=Path, help="CURVE key folder from `spatia keys` (for --connect beyond loopback)")
    v.add_argument("--model", default="tiny", help="model of the local server (default: the shipped tiny model)")
    v.add_argument("--sessions", type=Path, help="session folder of the local server (default: user cache)")
    v.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for the local `spatia serve` (repeatable)")
    v.add_argument("--offline", action="store_true", help="no server: browse the --ply points alone")
    w = parser.add_argument_group("view")
    w.add_argument("--size", default=None, help="window or video size WxH (default 1280x720; headless 960x540)")
    w.add_argument("--view", choices=VIEW_MODES, default="side_by_side", help="initial layout (Tab cycles)")
    w.add_argument("--session-name", default="explorer", help="name F5 saves and F9 loads")
    w.add_argument("--out", type=Path, help="folder for recordings and screenshots (headless: required)")
    h = parser.add_argument_group("headless")
    h.add_argument("--headless", action="store_true", help="run offscreen with scripted input, write MP4 + PNGs")
    h.add_argument("--script", type=Path, help="tour script (JSON; default: the packaged tour)")
    h.add_argument("--fps", type=float, default=24.0, help="simulated frame rate of the tour video")
    h.add_argument("--max-wait", type=float, default=60.0, help="seconds to wait for a silent server per frame")


# --------------------------------------------------------------------------------------------- reading inputs
def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--size must look like 1280x720, got {text!r}") from None
    if w < 16 or h < 16:
        raise InputError(f"--size must be at least 16x16, got {text!r}")
    return w, h


def read_prompts(value: str) -> list[str]:
    """--prompt: a .txt file's non-empty lines (one per round), else the text itself."""
    if value.endswith(".txt"):
        path = Path(value)
        if not path.is_file():
            raise InputError(f"--prompt {value}: file not found")
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        if not lines:
            raise InputError(f"--prompt {value}: the file holds no prompt")
        return lines
    return [value]


def read_image(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    try:
        img = np.asarray(iio.imread(path))
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except Exception as e:  # imageio raises many types for unreadable files
        raise InputError(f"{path}: not a readable image ({e})") from None
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise InputError(f"{path}: expected an RGB image, got shape {img.shape}")
    if img.dtype == np.uint16:
        img = (img // 257).astype(np.uint8)
    if img.dtype != np.uint8:
        raise InputError(f"{path}: expected 8-bit colour, got {img.dtype}")
    return np.ascontiguousarray(img[..., :3])


def read_depth(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Metric z-depth float32 [H, W] from .npy (metres) or a 16-bit PNG (millimetres); 0 = unknown."""
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if path.suffix.lower() == ".npy":
        depth = np.load(path, allow_pickle=False)
    elif path.suffix.lower() == ".png":
        import imageio.v3 as iio

        raw = np.asarray(iio.imread(path))
        if raw.dtype != np.uint16 or raw.ndim != 2:
            raise InputError(f"{path}: a depth PNG must be 16-bit single-channel (millimetres), got {raw.dtype} "
                             f"{raw.shape}")
        depth = raw.astype(np.float32) / DEPTH_PNG_SCALE
    else:
        raise InputError(f"{path}: depth must be .npy (metres) or a 16-bit .png (millimetres)")
    depth = np.squeeze(np.asarray(depth, np.float32))
    if depth.shape != shape:
        raise InputError(f"{path}: depth is {depth.shape[::-1] if depth.ndim == 2 else depth.shape}, the image is "
                         f"{shape[1]}x{shape[0]}: they must match")
    if not np.isfinite(depth).all() or (depth < 0).any():
        raise InputError(f"{path}: depth must be finite and non-negative (0 marks unknown)")
    return depth


def read_masks(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """uint8 [F, H, W] (non-zero = dynamic) from .npy [F,H,W] or [H,W], a PNG, or a folder of PNGs."""
    import imageio.v3 as iio

    if path.is_dir():
        files = sorted(path.glob("*.png"))
        if not files:
            raise InputError(f"{path}: no PNG masks in the folder")
        masks = np.stack([np.asarray(iio.imread(f)) for f in files])
    elif path.suffix.lower() == ".npy":
        masks = np.load(path, allow_pickle=False)
    elif path.is_file():
        masks = np.asarray(iio.imread(path))[None]
    else:
        raise InputError(f"{path}: file not found")
    if masks.ndim == 4:
        masks = masks[..., 0]
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3 or masks.shape[1:] != shape:
        raise InputError(f"{path}: masks must be [N, {shape[0]}, {shape[1]}] like the image, got {masks.shape}")
    return (masks != 0).astype(np.uint8)


def read_ply(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of a PLY file: xyz float32 [N, 3] and rgb uint8 [N, 3] (grey without colours).

    A small NumPy reader for ascii and binary PLY whose vertex element has scalar properties (what point clouds
    use); anything else (list properties before or in the vertices) goes to open3d, imported only then.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise InputError(f"{path}: not a PLY file (no 'ply' magic or no end_header)")
    body = data.index(b"\n", end) + 1
    header = data[:end].decode("ascii", errors="replace").splitlines()
    fmt, elements = None, []  # elements: [name, count, [(prop, dtype or None for lists)]]
    for line in header[1:]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format" and len(words) >= 2:
            fmt = words[1]
        elif words[0] == "element" and len(words) == 3:
            if not (words[2].isascii() and words[2].isdigit()):
                raise InputError(f"{path}: bad PLY element line {line!r} (the count must be a whole number)")
            elements.append([words[1], int(words[2]), []])
        elif words[0] == "property" and elements:
            if len(words) < 3:
                raise InputError(f"{path}: unsupported PLY property line {line!r}")
            if words[1] == "list":
                elements[-1][2].append((words[-1], None))
            elif words[1] in PLY_TYPES and len(words) == 3:
                elements[-1][2].append((words[2], PLY_TYPES[words[1]]))
            else:
                raise InputError(f"{path}: unsupported PLY property line {line!r}")
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise InputError(f"{path}: unknown PLY format {fmt!r}")
    names = [e[0] for e in elements]
    if "vertex" not in names:
        raise InputError(f"{path}: no vertex element")
    vi = names.index("vertex")
    before = elements[:vi]
    if any(t is None for e in elements[: vi + 1] for _, t in e[2]):
        return _read_ply_open3d(path)
    name, count, props = elements[vi]
    if fmt == "ascii":
        lines = data[body:].decode("ascii", errors="replace").splitlines()
        skip = sum(e[1] for e in before)
        try:
            table = np.array([ln.split()[: len(props)] for ln in lines[skip: skip + count]], np.float64)
        except ValueError:
            raise InputError(f"{path}: malformed ascii vertex data") from None
        if table.shape != (count, len(props)):
            raise InputError(f"{path}: expected {count} vertices of {len(props)} values")
        cols = {p: table[:, i] for i, (p, _) in enumerate(props)}
    else:
        order = "<" if fmt == "binary_little_endian" else ">"
        dtype = np.dtype([(p, order + t) for p, t in props])
        offset = body + sum(e[1] * np.dtype([(p, order + t) for p, t in e[2]]).itemsize for e in before)
        if len(data) < offset + count * dtype.itemsize:
            raise InputError(f"{path}: truncated: {count} vertices need {count * dtype.itemsize} bytes")
        table = np.frombuffer(data, dtype, count=count, offset=offset)
        cols = {p: table[p] for p, _ in props}
    if not {"x", "y", "z"} <= cols.keys():
        raise InputError(f"{path}: vertices lack x, y, z")
    xyz = np.stack([cols["x"], cols["y"], cols["z"]], 1).astype(np.float32)
    rgb = np.full((count, 3), PLY_GREY, np.uint8)
    for names3 in (("red", "green", "blue"), ("r", "g", "b"), ("diffuse_red", "diffuse_green", "diffuse_blue")):
        if set(names3) <= cols.keys():
            c = np.stack([np.asarray(cols[n], np.float64) for n in names3], 1)
            is_float = dict(props)[names3[0]].startswith("f")
            rgb = np.clip(np.round(c * 255.0 if is_float else c), 0, 255).astype(np.uint8)
            break
    return _finite_points(path, xyz, rgb)


def _read_ply_open3d(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        import open3d as o3d
    except ImportError:
        raise InputError(f"{path}: this PLY layout needs open3d, which is not installed") from None
    pcd = o3d.io.read_point_cloud(str(path), format="ply")
    xyz = np.asarray(pcd.points, np.float32)
    rgb = (np.clip(np.asarray(pcd.colors) * 255.0, 0, 255).round().astype(np.uint8) if pcd.has_colors()
           else np.full((len(xyz), 3), PLY_GREY, np.uint8))
    return _finite_points(path, xyz, rgb)


def _finite_points(path: Path, xyz: np.ndarray, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ok = np.isfinite(xyz).all(1)
    if not ok.any():
        raise InputError(f"{path}: no finite points")
    return np.ascontiguousarray(xyz[ok]), np.ascontiguousarray(rgb[ok])


def default_start(xyz: np.ndarray | None = None) -> np.ndarray:
    """A start camera w2c: at eye height looking along +z, or, for a point cloud, back from its middle far enough
    to see it."""
    from engine.geometry import look_at

    if xyz is None or not len(xyz):
        eye = np.array([0.0, START_EYE_HEIGHT, 0.0])
        return look_at(eye, eye + [0.0, 0.0, 1.0])
    lo, hi = np.percentile(xyz, 2, axis=0), np.percentile(xyz, 98, axis=0)  # robust to stray points
    centre = (lo + hi) / 2
    eye = centre - np.array([0.0, 0.0, 0.75 * float(np.max(hi - lo)) + 0.5])
    return look_at(eye, centre)


def open_message(args: argparse.Namespace):
    """The session's opening message from the arguments (reading every file it needs)."""
    from engine.geometry import TrajectoryFileError, fov_to_intrinsics, read_intrinsics_txt, read_w2c_txt
    from engine.server.protocol import (Load, OpenImage, OpenPoints, OpenProcedural, OpenRelease, ProtocolError,
                                        check_session_name)

    prompts = read_prompts(args.prompt) if args.prompt else [""]
    chosen = [n for n, v in (("--ply", args.ply), ("--image", args.image), ("--load", args.load)) if v]
    if len(chosen) > 1:
        raise InputError(f"choose one session source, got {' and '.join(chosen)}")
    if args.image is None and (args.depth or args.w2c or args.intrinsics or args.masks) and not args.ply:
        raise InputError("--depth, --w2c, --intrinsics and --masks go with --image")
    try:
        if args.load:
            return Load(name=check_session_name(args.load, "--load"))
        if args.ply:
            xyz, rgb = read_ply(args.ply)
            w2c = read_w2c_txt(args.w2c)[0] if args.w2c else default_start(xyz)
            intr = read_intrinsics_txt(args.intrinsics)[0] if args.intrinsics else fov_to_intrinsics(args.fov, 16 / 9)
            return OpenPoints(xyz=xyz, rgb=rgb, w2c=w2c, intrinsics=intr, prompt=prompts[0], source=args.ply.name)
        if args.image:
            rgb = read_image(args.image)
            h, w = rgb.shape[:2]
            if args.depth:
                w2c = read_w2c_txt(args.w2c)[0] if args.w2c else default_start()
                intr = (read_intrinsics_txt(args.intrinsics)[0] if args.intrinsics
                        else fov_to_intrinsics(args.fov, w / h))
                return OpenImage(rgb=rgb, depth=read_depth(args.depth, (h, w)), w2c=w2c, intrinsics=intr,
                                 prompt=prompts[0])
            if args.w2c is None or args.intrinsics is None:
                raise InputError("--image needs --depth (an image with depth) or --w2c and --intrinsics "
                                 "(the release's inputs)")
            masks = read_masks(args.masks, (h, w)) if args.masks else None
            return OpenRelease(image=rgb, w2c=read_w2c_txt(args.w2c), intrinsics=read_intrinsics_txt(args.intrinsics),
                               prompts=prompts, masks=masks)
        return OpenProcedural(seed=args.seed, prompt=prompts[0])
    except TrajectoryFileError as e:
        raise InputError(str(e)) from None
    except ProtocolError as e:
        raise InputError(e.message) from None


def default_sessions_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "spatia" / "sessions"


# --------------------------------------------------------------------------------------------- running
def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.headless and args.out is None:
        raise InputError("--headless needs --out DIR for the video and screenshots")
    if args.offline and (args.connect or args.load):
        raise InputError("--offline runs without a server: it cannot --connect or --load")
    if args.keys and not args.connect:
        raise InputError("--keys goes with --connect (a local server needs no keys)")
    if not args.headless and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise InputError("no display: run with --headless --out DIR (or under xvfb-run)")
    size = parse_size(args.size) if args.size else ((960, 540) if args.headless else (1280, 720))
    msg = open_message(args)
    script = None
    if args.headless:
        from explorer.app import KEY_NAMES
        from explorer.script import DEFAULT_TOUR, ScriptError, load_script

        try:
            script = load_script(args.script or DEFAULT_TOUR, known_keys=KEY_NAMES)
        except ScriptError as e:
            raise InputError(str(e)) from None

    from engine.server.protocol import MemoryDelta
    from explorer.app import AppConfig, ExplorerApp, HeadlessConfig, run_headless, run_window
    from explorer.client import Client, LocalServer
    from explorer.frames import PanelMode

    out_dir = args.out or Path("spatia-explorer")
    config = AppConfig(width=size[0], height=size[1], fov_deg=args.fov, session_name=args.session_name,
                       out_dir=out_dir, mode=PanelMode(args.view))
    client = server = offline = None
    if args.offline:
        if getattr(msg, "xyz", None) is not None:
            n = len(msg.xyz)
            offline = MemoryDelta(version_from=0, version_to=1, full=True, added_ids=np.arange(n, dtype=np.int64),
                                  added_xyz=msg.xyz, added_rgb=msg.rgb, removed_ids=np.zeros(0, np.int64),
                                  recolored_ids=np.zeros(0, np.int64), recolored_rgb=np.zeros((0, 3), np.uint8))
    elif args.connect:
        client = Client(args.connect, keys_dir=args.keys, config=config.client)
    else:
        sessions = args.sessions or default_sessions_dir()
        server = LocalServer.spatia_serve(args.model, sessions, sessions / "server.log", args.server_arg)
        server.start()
        print(f"started a local server on {server.address} (log: {server.log_path})", file=sys.stderr)
        client = Client(server.address, config=config.client)

    def make_app(ctx, clock=None):
        import time

        app = ExplorerApp(ctx, config, client, msg, server, clock=clock or time.monotonic, offline_memory=offline)
        if offline is not None:
            app.camera.set_pose(np.asarray(msg.w2c))
        return app

    # a terminated explorer still stops its server: SIGTERM unwinds like Ctrl+C, through the finally below
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        if args.headless:
            hc = HeadlessConfig(fps=args.fps, width=size[0], height=size[1], max_wait_s=args.max_wait)
            try:
                summary = run_headless(make_app, script, out_dir, hc)
            except RuntimeError as e:
                tail = server.log_tail() if server is not None else ""
                print(f"error: {e}" + (f"\nlocal server log ({server.log_path}):\n{tail}" if tail else ""),
                      file=sys.stderr)
                return 1
            print(json.dumps(summary, indent=2, default=str))
        else:
            run_window(make_app, size[0], size[1])
    finally:
        if client is not None:
            client.close()
        if server is not None:
            server.stop()
    return 0
