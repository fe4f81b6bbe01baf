"""Shared fixtures for the reconstruction tests: exact views of the analytic room, and a quiet torch."""

import pytest
import torch

from engine.bench.reconstruct import analytic_room_views


@pytest.fixture(autouse=True)
def single_thread_torch():
    # The test tensors are small: one thread avoids thread start-up and contention on shared CI cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def room_triplet():
    """Three 96x72 frames of a sideways dolly (16 cm steps) with exact depth."""
    return analytic_room_views(num_frames=3, width=96, height=72, step=0.16)
