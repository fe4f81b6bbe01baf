"""Shared fixtures for the procedural world's tests: a few generated scenes and small renderers."""

import pytest

from engine.world.scene import generate_scene


@pytest.fixture(scope="session")
def indoor():
    return generate_scene(1, "indoor", dynamic=True)


@pytest.fixture(scope="session")
def outdoor():
    return generate_scene(2, "outdoor", dynamic=True)


@pytest.fixture(scope="session")
def renderer():
    from engine.world.render import WorldRenderer

    r = WorldRenderer(96, 72)  # not square, so width/height mix-ups show
    yield r
    r.release()
