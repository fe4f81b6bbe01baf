"""Writing what the explorer shows: MP4 videos (through imageio-ffmpeg) and PNG screenshots.

`VideoWriter` appends uint8 [H, W, 3] images to an H.264 MP4 at a fixed rate, cropping odd sizes to even ones
(4:2:0 chroma needs them) and keeping the first frame's size for the whole file. `GeneratedRecorder` is the R key:
it records the generated frames as they arrive from the server, at the generation fps, into a new numbered file
each time it starts. Headless tours write the composited window with a `VideoWriter` of their own.
"""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np

DEFAULT_QUALITY = 8  # imageio-ffmpeg's 0-10 scale: 8 keeps the HUD's text legible at modest file sizes


def next_free(directory: str | Path, stem: str, suffix: str) -> Path:
    """directory/stem-001.suffix, -002, ... : the first name not taken (recordings never overwrite)."""
    directory = Path(directory)
    for i in range(1, 100_000):
        path = directory / f"{stem}-{i:03d}{suffix}"
        if not path.exists():
            return path
    raise FileExistsError(f"no free {stem}-NNN{suffix} name left in {directory}")


def even_crop(image: np.ndarray) -> np.ndarray:
    """Drop a last odd row and column: H.264 with 4:2:0 chroma needs even sizes."""
    h, w = image.shape[:2]
    return image[: h - h % 2, : w - w % 2]


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """A uint8 [H, W, 3] image (top row first) to a PNG file, creating the folder."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"a screenshot is a uint8 [H, W, 3|4] image, got {image.dtype} {image.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.imwrite(path, image)
    return path


class VideoWriter:
    """Appends frames to one MP4 at a fixed fps; every frame must have the first one's size."""

    def __init__(self, path: str | Path, fps: float, quality: int = DEFAULT_QUALITY):
        if not fps > 0:
            raise ValueError(f"video fps must be positive, got {fps}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps = float(fps)
        self.quality = quality
        self.frames = 0
        self.size: tuple[int, int] | None = None  # (H, W) after cropping
        self._writer = None

    def append(self, image: np.ndarray) -> None:
        """One uint8 [H, W, 3] frame, top row first."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"video frames are uint8 [H, W, 3], got {image.dtype} {image.shape}")
        image = even_crop(image)
        if image.shape[0] < 2 or image.shape[1] < 2:
            raise ValueError(f"video frames must be at least 2x2 pixels, got {image.shape[:2]}")
        if self._writer is None:
            self.size = image.shape[:2]
            # macro_block_size=1: the size is already even, so imageio must not rescale it
            self._writer = imageio.get_writer(self.path, fps=self.fps, codec="libx264", quality=self.quality,
                                              pixelformat="yuv420p", macro_block_size=1, ffmpeg_log_level="error")
        elif image.shape[:2] != self.size:
            raise ValueError(f"{self.path.name}: frame of size {image.shape[:2]} after frames of size {self.size}")
        self._writer.append_data(np.ascontiguousarray(image))
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class GeneratedRecorder:
    """The R key: records generated frames as they arrive, at the generation fps, one numbered MP4 per take.

    Frames are written in arrival order, not as played back, so a take holds every frame the server sent
    (playback may skip frames to keep up). A frame of another size (a new session at another resolution) ends
    the take and starts the next file.
    """

    def __init__(self, directory: str | Path, stem: str = "generated"):
        self.directory = Path(directory)
        self.stem = stem
        self.writer: VideoWriter | None = None
        self.fps = 24.0
        self.takes: list[Path] = []

    @property
    def recording(self) -> bool:
        return self.writer is not None

    def start(self, fps: float | None = None, path: str | Path | None = None) -> Path:
        self.stop()
        if fps is not None:
            self.fps = fps
        path = Path(path) if path is not None else next_free(self.directory, self.stem, ".mp4")
        self.writer = VideoWriter(path, self.fps)
        self.takes.append(path)
        return path

    def stop(self) -> Path | None:
        """End the take; its path, or None when nothing was recording."""
        if self.writer is None:
            return None
        writer, self.writer = self.writer, None
        writer.close()
        return writer.path

    def toggle(self, fps: float | None = None) -> tuple[bool, Path | None]:
        """Start or stop; (recording now, the file started or finished)."""
        if self.recording:
            return False, self.stop()
        return True, self.start(fps)

    def add(self, rgb: np.ndarray) -> None:
        if self.writer is None:
            return
        size = even_crop(rgb).shape[:2]
        if self.writer.size is not None and size != self.writer.size:
            self.start()  # a new resolution: a new take
        self.writer.append(rgb)

    @property
    def frames(self) -> int:
        return 0 if self.writer is None else self.writer.frames
