"""`spatia generate`: offline long-horizon generation, from the release's inputs or a procedural scene.

    spatia generate --world-seed 3 [--path walk|loop|orbit|...] [--frames 64] --out out/
    spatia generate --image start.png --w2c w2c.txt --intrinsics intrinsics.txt [--prompt TEXT | --prompt-file F]
                    [--mask mask.png|masks/|masks.npy] (--depth depth.npy | --memory start.ply) --out out/

Writes out/video.mp4 (start frame + generated frames), out/scene_videos/clip_NNN.mp4 (the memory rendered along each
clip's poses, the model's control input), out/memory.ply (the final memory) and out/log.json (per-clip stage timings
and references), with a progress bar.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("start (one of)")
    src.add_argument("--world-seed", type=int, default=None, help="a procedural scene and its camera path")
    src.add_argument("--image", help="start image (the release's inputs)")
    parser.add_argument("--path", default="walk", help="world path kind: walk, loop, orbit, forward_back, look_around, return_walk")
    parser.add_argument("--frames", type=int, default=64, help="world path length in generated frames")
    parser.add_argument("--w2c", help="the release's w2c.txt (first pose = the image's)")
    parser.add_argument("--intrinsics", help="the release's intrinsics.txt")
    parser.add_argument("--prompt", default="", help="text prompt (one for all rounds)")
    parser.add_argument("--prompt-file", help="prompt.txt: one line for all rounds or one per round")
    parser.add_argument("--mask", help="dynamic-region masks: a PNG, a folder of PNGs, or a .npy [N, H, W]")
    parser.add_argument("--depth", help="metric depth of the start image (.npy [H, W])")
    parser.add_argument("--memory", help="a PLY point cloud as the starting memory")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--retrieval", default="release", choices=("release", "alg1"))
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    parser.add_argument("--no-scene-video", action="store_true", help="ablation: no scene video")
    parser.add_argument("--no-refs", action="store_true", help="ablation: no reference frames")
    parser.add_argument("--segmentation", default="residual", choices=("residual", "masks", "sam2", "none"))
    parser.add_argument("--reconstruction", default="model-depth", choices=("model-depth", "plane-sweep", "mapanything"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", required=True)


def _prompts(args) -> list[str]:
    if args.prompt_file:
        lines = [s.strip() for s in Path(args.prompt_file).read_text().splitlines() if s.strip()]
        if not lines:
            raise ValueError(f"{args.prompt_file}: no prompt lines")
        return lines
    return [args.prompt]


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from engine import geometry
    from engine.pipeline import PipelineError, SessionOptions, WorldModel, WorldSession
    from engine.runtime import set_threads, tune_process

    tune_process()
    set_threads(args.threads)
    if (args.world_seed is None) == (args.image is None):
        print("error: give either --world-seed or --image (with --w2c and --intrinsics)", file=sys.stderr)
        return 2
    try:
        model = WorldModel.load(args.model)
        seg = None if args.segmentation == "none" else args.segmentation
        options = SessionOptions(retrieval=args.retrieval, steps=args.steps, use_scene_video=not args.no_scene_video,
                                 use_references=not args.no_refs, segmentation=seg if seg != "masks" else None,
                                 reconstruction=args.reconstruction)
        prompts = _prompts(args)
        session = WorldSession(model, options, prompt=prompts[0])
        if args.world_seed is not None:
            from engine.world.paths import make_path
            from engine.world.scene import generate_scene

            scene = generate_scene(args.world_seed)
            path = make_path(args.path, scene, args.frames + 1, seed=args.world_seed, fps=model.cfg.fps,
                             aspect=model.cfg.width / model.cfg.height)
            w2c, intr = path.w2c, path.intrinsics
            session.open_procedural(args.world_seed, start_w2c=w2c[0], intrinsics=intr)
        else:
            w2c, intr = _open_release(args, session, geometry, np)
    except (PipelineError, FileNotFoundError, ValueError, geometry.TrajectoryFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return _generate(args, session, w2c[1:], intr, prompts)


def _open_release(args, session, geometry, np):
    import imageio.v3 as iio

    from engine.segment.masks import read_masks

    if not (args.w2c and args.intrinsics):
        raise ValueError("--image needs --w2c and --intrinsics")
    try:
        image = iio.imread(args.image)
    except Exception as e:  # noqa: BLE001 - imageio raises many kinds for unreadable files
        raise ValueError(f"cannot read image {args.image}: {e}") from None
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, -1)
    image = np.ascontiguousarray(image[..., :3]).astype(np.uint8)
    w2c = geometry.read_w2c_txt(args.w2c)
    intr = geometry.read_intrinsics_txt(args.intrinsics)
    if len(intr) not in (1, len(w2c)):
        raise ValueError(f"{args.intrinsics} has {len(intr)} rows; {args.w2c} has {len(w2c)} poses (need 1 or equal)")
    exclude = None
    if args.mask:
        exclude = read_masks(args.mask, *image.shape[:2])[0]
    if args.depth:
        depth = np.load(args.depth)
        session.open_rgbd(image, depth, w2c[0], intr[0], exclude=exclude)
    elif args.memory:
        session.open_ply(args.memory, w2c[0], intr[0])
    else:
        session.open_image(image, w2c[0], intr[0], exclude=exclude)
    return w2c, intr[0]


def _generate(args, session, poses, intr, prompts) -> int:
    import imageio.v3 as iio
    import numpy as np
    from tqdm import tqdm

    out = Path(args.out)
    (out / "scene_videos").mkdir(parents=True, exist_ok=True)
    fps = session.model.cfg.fps
    frames = [session.last_frame.rgb]
    log = {"model": session.model.name, "options": vars(args), "clips": []}
    n = session.chunk_frames
    t0 = time.perf_counter()
    with tqdm(total=len(poses), unit="frame", desc="generate") as bar:
        for c, start in enumerate(range(0, len(poses), n)):
            prompt = prompts[min(c, len(prompts) - 1)]
            result = session.generate_chunk(poses[start : start + n], intr, prompt=prompt,
                                            on_frame=lambda *a: bar.update(1))
            frames.extend(result.rgb)
            iio.imwrite(out / "scene_videos" / f"clip_{c:03d}.mp4", result.scene_rgb, fps=fps, macro_block_size=1)
            log["clips"].append({"clip": c, "first_frame": result.first_frame, "frames": len(result.rgb),
                                 "timings_ms": result.timings, "references": result.references,
                                 "memory_points": len(session.memory), "memory_added": result.delta.num_added})
    log["seconds"] = time.perf_counter() - t0
    iio.imwrite(out / "video.mp4", np.stack(frames), fps=fps, macro_block_size=1)
    session.memory.export_ply(out / "memory.ply")
    (out / "log.json").write_text(json.dumps(log, indent=1, default=str))
    print(json.dumps({"video": str(out / "video.mp4"), "frames": len(frames), "memory_points": len(session.memory),
                      "seconds": round(log["seconds"], 1)}))
    return 0
