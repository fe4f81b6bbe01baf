"""Shared fixtures for the segmentation tests: the analytic room with and without an object in it."""

import numpy as np
import pytest

from engine.bench.reconstruct import analytic_room_views


@pytest.fixture(scope="session")
def room_with_and_without_box():
    """Two 96x72 frames: 'gen' shows the box, 'mem' is the static room without it (what the memory renders)."""
    gen = analytic_room_views(num_frames=2, width=96, height=72, with_box=True)
    mem = analytic_room_views(num_frames=2, width=96, height=72, with_box=False)
    box_mask = np.abs(gen["depth"] - mem["depth"]) > 1e-3  # [F, H, W] exactly where the box is seen
    return gen, mem, box_mask


def noisy(rgb: np.ndarray, std: float, seed: int) -> np.ndarray:
    """A generated frame never matches a splatted render exactly: add per-pixel colour noise (8-bit units)."""
    rng = np.random.default_rng(seed)
    return np.clip(rgb + rng.normal(0, std, rgb.shape), 0, 255).astype(np.uint8)
