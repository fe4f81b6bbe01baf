"""`masks`: user masks in the release's formats, replayed as the dynamic masks of generated frames.

The official release lets a user mark dynamic or editable foreground with binary PNGs (one file, or a folder of
files, one per frame) or one `.npy` array [N, H, W]. `read_masks` reads any of them into [N, H, W] bool with
errors that name the file at fault; `MaskSegmenter` hands them out frame by frame across clips (one mask means
the same mask for every frame: the start image's mask of a static camera-relative region).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from engine.segment import Prompt, Segmenter

FORMATS = "a binary PNG, a folder of binary PNGs, or a .npy array [N, H, W]"


class MaskFileError(ValueError):
    """A mask file or folder that cannot be used; the message names the file and the fault."""


def _natural_key(path: Path) -> list:
    """mask_2.png sorts before mask_10.png."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def _binarize(img: np.ndarray, path: Path) -> np.ndarray:
    """A grey, grey+alpha, RGB or RGBA image -> [H, W] bool (True = foreground)."""
    if img.ndim == 3:
        if img.shape[2] in (1, 2):
            img = img[..., 0]  # grey (+ alpha, ignored)
        elif img.shape[2] in (3, 4):
            img = img[..., :3].max(-1)  # any lit colour channel marks foreground; alpha ignored
        else:
            raise MaskFileError(f"{path}: unexpected {img.shape[2]} channels in a mask image")
    elif img.ndim != 2:
        raise MaskFileError(f"{path}: not a 2-D image (shape {img.shape})")
    if img.dtype == bool:
        return img
    # 0/1 masks and 0/255 masks are both common: threshold at half the range the file actually uses
    if img.max() <= 1:
        return img > 0
    top = np.iinfo(img.dtype).max if np.issubdtype(img.dtype, np.integer) else 1.0
    return img > top / 2


def _read_png(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    try:
        img = np.asarray(iio.imread(path, plugin="pillow"))
    except Exception as e:  # imageio raises many kinds for a broken file; the user needs the file name
        raise MaskFileError(f"{path}: cannot read this mask image ({type(e).__name__}: {e})") from e
    return _binarize(img, path)


def _read_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:
        raise MaskFileError(f"{path}: cannot read this .npy mask file ({type(e).__name__}: {e})") from e
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise MaskFileError(f"{path}: expected an array [N, H, W] (or [H, W]), got shape {arr.shape}")
    if not (arr.dtype == bool or np.issubdtype(arr.dtype, np.number)):
        raise MaskFileError(f"{path}: expected a boolean or numeric array, got dtype {arr.dtype}")
    return arr != 0


def read_masks(path: str | Path, height: int | None = None, width: int | None = None) -> np.ndarray:
    """Masks from a PNG, a folder of PNGs (natural name order) or a .npy -> [N, H, W] bool.

    With `height` and `width` given, every mask must have that size (the frames' size): masks are never resized,
    since a resized mask would silently shift the excluded region.
    """
    path = Path(path)
    if not path.exists():
        raise MaskFileError(f"{path}: no such mask file or folder (expected {FORMATS})")
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.suffix.lower() == ".png"), key=_natural_key)
        if not files:
            raise MaskFileError(f"{path}: folder holds no .png masks (expected {FORMATS})")
        masks = [_read_png(f) for f in files]
        sources = files
    elif path.suffix.lower() == ".png":
        masks, sources = [_read_png(path)], [path]
    elif path.suffix.lower() == ".npy":
        arr = _read_npy(path)
        masks, sources = list(arr), [path] * len(arr)
    else:
        raise MaskFileError(f"{path}: unsupported mask format '{path.suffix}' (expected {FORMATS})")
    first = masks[0].shape
    for m, src in zip(masks, sources):
        if height is not None and width is not None and m.shape != (height, width):
            raise MaskFileError(f"{src}: mask is {m.shape[1]}x{m.shape[0]} (WxH), frames are {width}x{height}")
        if m.shape != first:
            raise MaskFileError(f"{src}: mask is {m.shape[1]}x{m.shape[0]} (WxH), the first mask is "
                                f"{first[1]}x{first[0]}; all masks must have one size")
    return np.stack(masks)


class MaskSegmenter(Segmenter):
    """Replays user masks: mask i for the i-th frame seen since the last reset, or one mask for all frames."""

    name = "masks"

    def __init__(self, path: str | Path | None = None, masks: np.ndarray | None = None,
                 num_frames: int | None = None):
        if (path is None) == (masks is None):
            raise ValueError("the masks backend takes exactly one of path= (a mask file or folder) or masks=")
        if path is not None:
            self.masks, self.source = read_masks(path), str(path)
        else:
            arr = np.asarray(masks)
            arr = arr[None] if arr.ndim == 2 else arr
            if arr.ndim != 3:
                raise ValueError(f"masks must be [N, H, W] or [H, W], got shape {arr.shape}")
            self.masks, self.source = arr.astype(bool), "masks= argument"
        n = len(self.masks)
        if num_frames is not None and n not in (1, num_frames):
            raise MaskFileError(
                f"{self.source}: {n} masks for {num_frames} frames; give one mask (used for every frame) "
                f"or one per frame"
            )
        self.cursor = 0  # index of the next frame to hand a mask to

    def reset(self) -> None:
        self.cursor = 0

    def _segment(self, rgb, depth, render_rgb, render_depth, coverage, prompts: list[Prompt]) -> np.ndarray:
        F, H, W = rgb.shape[:3]
        n, mh, mw = self.masks.shape
        if (mh, mw) != (H, W):
            raise MaskFileError(f"{self.source}: masks are {mw}x{mh} (WxH), frames are {W}x{H}")
        if n == 1:
            return np.repeat(self.masks, F, axis=0)
        if self.cursor + F > n:
            raise MaskFileError(
                f"{self.source}: {n} masks, but frames {self.cursor}..{self.cursor + F - 1} were asked for; "
                "give one mask per generated frame, or a single mask for all of them"
            )
        out = self.masks[self.cursor : self.cursor + F].copy()
        self.cursor += F
        return out
