"""Encoded DiT training samples on disk: build once with the frozen VAE, then train for many epochs at the cost of
the DiT alone.

Building a sample (memory, renders, retrieval) and encoding it (clip, references, control) costs far more on a CPU
than one DiT training step, and the VAE is frozen in the DiT stage, so the encoded latents are stored in float16
memory maps:

    <dir>/x0.npy        [N, z, Fh + Ft, h, w]   history + target latents
    <dir>/refs.npy      [N, z, K, h, w]          reference latents (each encoded alone)
    <dir>/control.npy   [N, 2z, Fh + Ft, h, w]   scene-video ++ coverage latents
    <dir>/meta.json     sample indices, the config, and `done` (samples written); building resumes from `done`
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from engine.files import write_text_atomic
from engine.model.configs import ModelConfig

FORMAT = "spatia-dit-cache"


# Fields that shape the transformer or the sampler only: the cached latents do not depend on them, so a cache
# serves any DiT trained on the same VAE, data and clip layout.
DIT_ONLY_FIELDS = frozenset({
    "name", "dim", "num_heads", "num_layers", "ffn_dim", "act", "freq_dim", "text_dim", "text_len", "eps",
    "rope_theta", "num_train_timesteps", "control_layers", "control_scale", "attention_layout", "sample_steps",
    "sample_shift", "sample_solver", "cfg_scale", "cfg_drop", "control_encoder_dim", "control_encoder_group_dim",
})


def cache_fields(model: dict) -> dict:
    """The part of a ModelConfig dict that determines the cached latents."""
    return {k: v for k, v in model.items() if k not in DIT_ONLY_FIELDS}


def _shapes(cfg: ModelConfig) -> dict[str, tuple]:
    """One sample's arrays."""
    f = cfg.history_latent_frames + cfg.chunk_latent_frames
    z, h, w = cfg.latent_channels, cfg.latent_height, cfg.latent_width
    return {"x0": (z, f, h, w), "refs": (z, cfg.num_refs, h, w), "control": (2 * z, f, h, w)}


def build_cache(samples: Dataset, vae: torch.nn.Module, cfg: ModelConfig, out: str | Path, every: int = 1,
                batch_size: int = 8, workers: int = 1, progress: bool = True) -> Path:
    """Encode every `every`-th sample of `samples` into `out` (resumable: finished batches are kept)."""
    from engine.train.dit import encode_batch

    vae = vae.eval()

    def encode(batch: dict) -> dict[str, torch.Tensor]:
        x0, refs, control = encode_batch(vae, batch)
        return {"x0": x0, "refs": refs, "control": control}

    shapes = {k: (s, np.float16) for k, s in _shapes(cfg).items()}
    return build_arrays(samples, encode, shapes, cfg, out, FORMAT, every, batch_size, workers, progress,
                        "encode samples")


def build_arrays(samples: Dataset, encode, shapes: dict[str, tuple[tuple, type]], cfg: ModelConfig, out: str | Path,
                 fmt: str, every: int = 1, batch_size: int = 8, workers: int = 1, progress: bool = True,
                 desc: str = "samples") -> Path:
    """Write `encode(batch)` (key -> [B, ...] tensor) for every `every`-th sample of `samples` into memory-mapped
    `<out>/<key>.npy` arrays [N, *shape] of the given per-sample (shape, dtype).
    Resumable: meta.json records how many samples are on disk, only after they are."""
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    indices = list(range(0, len(samples), every))
    meta_file = out / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else None
    if meta is not None and (meta.get("format") != fmt or meta["indices"] != indices
                             or cache_fields(meta["model"]) != cache_fields(cfg.to_dict())):
        raise ValueError(f"{out} holds a cache of other samples or another config; remove it or choose another folder")
    done = meta["done"] if meta else 0
    mode = "r+" if meta else "w+"
    arrays = {k: np.lib.format.open_memmap(out / f"{k}.npy", mode=mode, dtype=dtype, shape=(len(indices), *s))
              for k, (s, dtype) in shapes.items()}
    meta = {"format": fmt, "indices": indices, "model": cfg.to_dict(), "done": done}
    loader = DataLoader(Subset(samples, indices[done:]), batch_size=batch_size, num_workers=workers,
                        persistent_workers=False)
    bar = tqdm(total=len(indices), initial=done, disable=not progress, unit="sample", desc=desc)
    for batch in loader:
        encoded = encode(batch)
        n = next(iter(encoded.values())).shape[0]
        for k, v in encoded.items():
            arrays[k][done : done + n] = v.cpu().numpy().astype(arrays[k].dtype)
        done += n
        for a in arrays.values():
            a.flush()
        meta["done"] = done
        write_text_atomic(meta_file, json.dumps(meta))  # progress is recorded only after the data it counts is on disk
        bar.update(n)
    bar.close()
    return out


class CachedArrays(Dataset):
    """The samples of a finished `build_arrays` folder: key -> float32 tensor per sample."""

    def __init__(self, root: str | Path, cfg: ModelConfig, fmt: str, keys: tuple[str, ...], what: str, how: str):
        root = Path(root)
        meta_file = root / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"no {what} at {root} ({how})")
        meta = json.loads(meta_file.read_text())
        if meta.get("format") != fmt or cache_fields(meta["model"]) != cache_fields(cfg.to_dict()):
            raise ValueError(f"{root} is not a {what} for this model config")
        if meta["done"] < len(meta["indices"]):
            raise ValueError(f"{root} is unfinished ({meta['done']} of {len(meta['indices'])} samples)")
        self.arrays = {k: np.load(root / f"{k}.npy", mmap_mode="r") for k in keys}

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def __getitem__(self, i: int) -> dict:
        return {k: torch.from_numpy(np.asarray(a[i], np.float32)) for k, a in self.arrays.items()}


class CachedSamples(CachedArrays):
    """The encoded samples of a finished DiT cache, as float32 tensors."""

    def __init__(self, root: str | Path, cfg: ModelConfig):
        super().__init__(root, cfg, FORMAT, ("x0", "refs", "control"), "DiT sample cache",
                         "build it with the dit stage's 'cache' option")
