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

