"""PyTorch Datasets of clips: the procedural world's sequences and RealEstate10K-style folders.

Both return the same dict per clip, so training and evaluation code can take either: rgb [F, 3, H, W] float in
[0, 1], w2c [F, 4, 4], K [F, 3, 3] (pixels), seq (name), frames [F] (indices in the sequence). The procedural
dataset adds depth [F, 1, H, W] (metric z, 0 = sky), dynamic_mask [F, 1, H, W] (1 on moving entities) and
ids [F, 1, H, W]; RealEstate10K has no depth or masks, so those keys are absent (not None, which the default
collate cannot batch). Sequences are validated when the Dataset is built; arrays are memory-mapped, so a clip
reads only its own frames.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from engine.geometry import TrajectoryFileError, intrinsics_to_K, read_re10k
from engine.world.dataset import DatasetError, SequenceInfo, list_sequences, load_array

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
OPEN_SEQUENCES = 32  # memory-mapped sequences kept open per process


def clip_starts(n_frames: int, clip_len: int, stride: int, step: int) -> range:
    """First frames of the clips that fit in a sequence of n_frames."""
    span = (clip_len - 1) * stride + 1
    return range(0, max(0, n_frames - span + 1), step)


class _ClipDataset(Dataset):
    """Index of (sequence, start) pairs shared by both datasets."""

    def __init__(self, lengths: list[int], clip_len: int, stride: int, step: int | None):
        if clip_len < 1 or stride < 1:
            raise ValueError(f"clip_len and stride must be >= 1, got clip_len={clip_len}, stride={stride}")
        self.clip_len, self.stride = int(clip_len), int(stride)
        self.step = int(step) if step is not None else self.clip_len * self.stride
        if self.step < 1:
            raise ValueError(f"step must be >= 1, got {step}")
        self.index = [(s, start) for s, n in enumerate(lengths)
                      for start in clip_starts(n, self.clip_len, self.stride, self.step)]

    def __len__(self) -> int:
        return len(self.index)

    def _frames(self, i: int) -> tuple[int, np.ndarray]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"clip {i} out of range ({len(self)} clips)")
        s, start = self.index[i]
        return s, start + self.stride * np.arange(self.clip_len)


class WorldDataset(_ClipDataset):
    """Clips of `clip_len` frames, `stride` frames apart, starting every `step` frames (default: back to back)
    from a folder written by `spatia world dataset`. `sequences` limits it to those folder names."""

    def __init__(self, root: str | Path, clip_len: int, stride: int = 1, step: int | None = None,
                 sequences: list[str] | None = None):
        self.root = Path(root)
        self.sequences: list[SequenceInfo] = list_sequences(self.root, sequences)
        super().__init__([s.frames for s in self.sequences], clip_len, stride, step)
        if not self.index:
            raise DatasetError(f"{self.root}: no sequence is long enough for clips of {clip_len} frames "
                               f"with stride {stride}")
        self._open: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()

    def _arrays(self, s: int) -> dict[str, np.ndarray]:
        if s in self._open:
            self._open.move_to_end(s)
            return self._open[s]
        arrays = {k: load_array(self.sequences[s], k) for k in ("rgb", "depth", "ids")}
        self._open[s] = arrays
        while len(self._open) > OPEN_SEQUENCES:
            self._open.popitem(last=False)
        return arrays

    def __getitem__(self, i: int) -> dict:
        s, frames = self._frames(i)
        info, arrays = self.sequences[s], self._arrays(s)
        sel = slice(frames[0], frames[-1] + 1) if self.stride == 1 else frames
        try:
            rgb = np.array(arrays["rgb"][sel])  # [F, H, W, 3] uint8, copied out of the read-only map
            depth = np.asarray(arrays["depth"][sel], np.float32)  # [F, H, W]
            ids = np.asarray(arrays["ids"][sel], np.int32)  # [F, H, W]
        except (OSError, ValueError) as e:
            raise DatasetError(f"sequence {info.name}: reading frames {frames.tolist()} failed ({e})") from None
        H, W = rgb.shape[1:3]
        return {
            "rgb": torch.from_numpy(rgb).permute(0, 3, 1, 2).float().div_(255.0),  # [F, 3, H, W]
            "depth": torch.from_numpy(depth)[:, None],  # [F, 1, H, W]
            "dynamic_mask": torch.from_numpy(ids > 0).float()[:, None],  # [F, 1, H, W]
            "ids": torch.from_numpy(ids)[:, None],  # [F, 1, H, W]
            "w2c": torch.from_numpy(info.w2c[frames]).float(),  # [F, 4, 4]
            "K": torch.from_numpy(intrinsics_to_K(info.intrinsics[frames], W, H)).float(),  # [F, 3, 3]
            "seq": info.name,
            "frames": torch.from_numpy(frames),  # [F]
        }


class Re10kDataset(_ClipDataset):
    """RealEstate10K-style sequences: `root/<cameras>/<name>.txt` camera files (engine.geometry.read_re10k) and
    `root/<frames>/<name>/` images, named by timestamp (`<timestamp>.png|jpg`) or, failing that, in sorted order
    with one image per camera line. `size=(W, H)` resizes frames (intrinsics are normalised, so K follows).
    No depth or masks: those keys are absent from the items."""

    def __init__(self, root: str | Path, clip_len: int, stride: int = 1, step: int | None = None,
                 size: tuple[int, int] | None = None, cameras: str = "cameras", frames: str = "frames"):
        self.root = Path(root)
        cam_dir, frame_dir = self.root / cameras, self.root / frames
        if not cam_dir.is_dir():
            raise DatasetError(f"RealEstate10K folder {self.root}: no camera folder '{cameras}/'")
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.items = []  # (name, trajectory, [N] image paths)
        for cam_file in sorted(cam_dir.glob("*.txt")):
            name = cam_file.stem
            try:
                traj = read_re10k(cam_file)
            except TrajectoryFileError as e:
                raise DatasetError(f"sequence {name}: {e}") from None
            self.items.append((name, traj, self._match_images(name, frame_dir / name, traj.timestamps)))
        if not self.items:
            raise DatasetError(f"RealEstate10K folder {self.root}: no camera files in {cameras}/")
        super().__init__([len(t.timestamps) for _, t, _ in self.items], clip_len, stride, step)

    @staticmethod
    def _match_images(name: str, folder: Path, timestamps: np.ndarray) -> list[Path]:
        if not folder.is_dir():
            raise DatasetError(f"sequence {name}: frame folder not found ({folder})")
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        by_stem = {p.stem: p for p in images}
        if all(s.isdigit() for s in by_stem):
            missing = [int(t) for t in timestamps if str(int(t)) not in by_stem]
            if not missing:
                return [by_stem[str(int(t))] for t in timestamps]
        if len(images) != len(timestamps):
            raise DatasetError(f"sequence {name}: {len(images)} images in {folder} for {len(timestamps)} cameras, "
                               "and their names are not the camera timestamps")
        return images

    def _read(self, name: str, path: Path) -> np.ndarray:
        import imageio.v3 as iio

        try:
            img = np.asarray(iio.imread(path))
        except Exception as e:  # imageio raises many kinds; the file name is what matters
            raise DatasetError(f"sequence {name}: cannot read image {path.name} ({e})") from None
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, -1)
        img = img[..., :3]
        if self.size is not None and img.shape[1::-1] != self.size:
            import cv2

            img = cv2.resize(img, self.size, interpolation=cv2.INTER_AREA)
        return img

    def __getitem__(self, i: int) -> dict:
        s, frames = self._frames(i)
        name, traj, paths = self.items[s]
        rgb = np.stack([self._read(name, paths[f]) for f in frames])  # [F, H, W, 3] uint8
        H, W = rgb.shape[1:3]
        return {
            "rgb": torch.from_numpy(rgb).permute(0, 3, 1, 2).float().div_(255.0),  # [F, 3, H, W]
            "w2c": torch.from_numpy(traj.w2c[frames]).float(),  # [F, 4, 4]
            "K": torch.from_numpy(intrinsics_to_K(traj.intrinsics[frames], W, H)).float(),  # [F, 3, 3]
            "seq": name,
            "frames": torch.from_numpy(frames),  # [F]
        }
