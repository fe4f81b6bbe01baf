"""Camera paths: inside free space, closed loops end exactly where they start, speeds and heights as asked."""

import numpy as np
import pytest

from engine.geometry import rotation_error
from engine.world.paths import (
    CLOSED_KINDS,
    PATH_KINDS,
    PathConfig,
    PathError,
    make_path,
    orbit_path,
    path_is_free,
    walk_path,
)
from engine.world.scene import generate_scene

FPS = 12.0
SCENES = [(1, "indoor"), (4, "indoor"), (2, "outdoor")]


@pytest.fixture(scope="module")
def scenes():
    return [generate_scene(seed, kind, dynamic=True) for seed, kind in SCENES]


@pytest.mark.parametrize("kind", sorted(PATH_KINDS))
def test_paths_stay_in_free_space_and_are_valid_cameras(scenes, kind):
    radius = PathConfig().radius
    for scene in scenes:
        try:
            path = make_path(kind, scene, 48, fps=FPS, speed=1.2, seed=scene.seed)
        except PathError:
            assert kind in ("orbit", "look_around", "return_walk"), f"{kind} should fit any scene"
            continue
        assert path.w2c.shape == (48, 4, 4) and path.intrinsics.shape == (4,)
        assert np.all(rotation_error(path.w2c[:, :3, :3]) < 1e-9)
        # never inside solid geometry, not even between frames (a hair under the radius the planner used)
        assert path_is_free(scene, path, radius * 0.99, dynamic=False), f"{kind} enters solid geometry"
        lo, hi = scene.eye_height
        assert np.all((path.centers[:, 1] >= lo - 1e-9) & (path.centers[:, 1] <= hi + 1e-9))


@pytest.mark.parametrize("kind", CLOSED_KINDS)
def test_closed_loops_end_exactly_at_the_start_pose(scenes, kind):
    made = 0
    for scene in scenes:
        try:
            path = make_path(kind, scene, 40, fps=FPS, speed=1.0, seed=scene.seed + 1)
        except PathError:
            continue
        assert np.array_equal(path.w2c[-1], path.w2c[0]) and path.is_closed
        # and the loop actually goes somewhere: the middle pose differs from the start
        assert not np.allclose(path.w2c[len(path) // 2], path.w2c[0])
        # no jump at the seam: the second-to-last pose is close to the start
        assert np.linalg.norm(path.centers[-2] - path.centers[0]) < 0.3
        made += 1
    assert made >= 2


def test_walk_speed_is_metres_per_second_at_fps(scenes):
    for speed in (0.5, 1.5):
        path = walk_path(scenes[2], 60, fps=FPS, speed=speed, seed=3)
        steps = np.linalg.norm(np.diff(path.centers, axis=0), axis=-1)
        assert steps.max() <= speed / FPS * (1 + 1e-6) + 1e-12
        assert steps.sum() > 0.2 * speed * 59 / FPS, "it walks, it does not only turn"


def test_long_walk_with_moving_entities_stays_clear(scenes):
    scene = scenes[0]
    path = walk_path(scene, 600, fps=FPS, speed=1.2, seed=11)
    assert path_is_free(scene, path, PathConfig().radius * 0.99, dynamic=False)
    assert path_is_free(scene, path, PathConfig().radius * 0.5, dynamic=True), "walks keep out of moving entities"
    assert not path.is_closed
    assert np.ptp(path.centers[:, [0, 2]], axis=0).max() > 1.5, "a long walk covers ground"


def test_open_orbit_keeps_the_target_centred(scenes):
    scene = scenes[2]
    path = orbit_path(scene, 30, fps=FPS, speed=1.0, seed=0, closed=False)
    # the optical axes of all frames pass near one common point (the target)
    c2w = np.linalg.inv(path.w2c)
    o, d = c2w[:, :3, 3], c2w[:, :3, 2]
    A = np.einsum("ni,nj->ij", d, d) - len(d) * np.eye(3)
    b = np.einsum("ni,nj,nj->i", d, d, o) - o.sum(0)
    target = np.linalg.solve(A, b)
    to_target = target - o
    along = np.einsum("ni,ni->n", to_target, d)
    off_axis = np.linalg.norm(to_target - along[:, None] * d, axis=-1)
    assert off_axis.max() < 1e-6 and np.all(along > 0)


def test_same_seed_same_path_and_seeds_differ(scenes):
    scene = scenes[1]
    a = walk_path(scene, 30, fps=FPS, seed=5)
    b = walk_path(scene, 30, fps=FPS, seed=5)
    c = walk_path(scene, 30, fps=FPS, seed=6)
    assert np.array_equal(a.w2c, b.w2c) and not np.array_equal(a.w2c, c.w2c)


def test_bad_input_is_named(scenes):
    with pytest.raises(ValueError, match="at least 2 frames"):
        walk_path(scenes[0], 1)
    with pytest.raises(ValueError, match="fps"):
        walk_path(scenes[0], 10, fps=0)
    with pytest.raises(ValueError, match="unknown path kind"):
        make_path("teleport", scenes[0], 10)
    with pytest.raises(ValueError, match="field of view"):
        walk_path(scenes[0], 10, fov_deg=179)
    with pytest.raises(ValueError, match="unknown actions"):
        walk_path(scenes[0], 10, actions={"jump": 1.0})


@pytest.mark.parametrize("kind", ["orbit", "loop", "forward_back", "return_walk"])
def test_closed_paths_move_at_about_the_asked_speed(scenes, kind):
    scene = scenes[2]
    for n in (40, 160):
        path = make_path(kind, scene, n, fps=FPS, speed=1.0, seed=4)
        steps = np.linalg.norm(np.diff(path.centers, axis=0), axis=-1)
        # eased motions peak at pi/2 times their mean speed; none of them runs
        assert steps.max() <= np.pi / 2 * 1.0 / FPS * 1.05, f"{kind} moves {steps.max() * FPS:.2f} m/s"
