"""Assemble a shippable model folder from the training stages' EMA exports (weights stored in float16).

    python -m engine.train.assemble --dit runs/tiny-dit/export --vae runs/tiny-vae/export --out models/tiny

The DiT export already holds the VAE it was trained with; --vae overrides it (e.g. a decoder fine-tune whose encoder
and latent statistics are unchanged). --control takes the distilled control encoder from a model folder (it depends
on the VAE only, so a new DiT keeps it). Loss curves found beside the exports are copied along.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from engine.model.checkpoint import load_checkpoint, save_checkpoint


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dit", required=True)
    p.add_argument("--vae", default=None)
    p.add_argument("--control", default=None, help="a model folder whose distilled control encoder to ship along")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    ckpt = load_checkpoint(args.dit)
    vae = load_checkpoint(args.vae, parts=("vae",)).vae if args.vae else ckpt.vae
    extra = {**ckpt.extra, "stored_dtype": "float16"}
    control = None
    if args.control:
        source = load_checkpoint(args.control, parts=("control",))
        if source.control is None:
            raise SystemExit(f"{args.control} has no control part")
        control = source.control  # as stored (float32: 1.5 MB)
        extra["control"] = source.extra.get("control", {"from": str(args.control)})
    out = Path(args.out)
    save_checkpoint(out, ckpt.cfg, dit=ckpt.dit.to(torch.float16), vae=vae.to(torch.float16), extra=extra,
                    control=control)
    for src in (args.dit, args.vae):
        if src and (Path(src).parent / "loss.png").exists():
            shutil.copy(Path(src).parent / "loss.png", out / f"loss-{Path(src).parent.name}.png")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
