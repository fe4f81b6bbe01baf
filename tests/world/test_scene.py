"""Scenes: reproducible from the seed, rooms joined by doorways, exact free-space queries, moving entities."""

import math

import numpy as np
import pytest

from engine.world.scene import Motion, Primitive, Scene, SceneConfig, _sdf_local, generate_scene, yaw_pose
from engine.world.textures import Material, Texture


def _fingerprint(scene: Scene) -> list:
    return [(p.shape, p.size.tolist(), p.pose.tolist(), p.material, p.instance_id, p.motion, p.name)
            for p in scene.primitives]


@pytest.mark.parametrize("seed", [0, 5])
def test_same_seed_same_scene_and_seeds_differ(seed):
    a, b = generate_scene(seed, dynamic=True), generate_scene(seed, dynamic=True)
    assert _fingerprint(a) == _fingerprint(b)
    assert np.array_equal(a.light_dir, b.light_dir)
    assert _fingerprint(generate_scene(seed + 1, dynamic=True)) != _fingerprint(a)


def test_auto_gives_both_kinds_and_kinds_are_respected():
    kinds = {generate_scene(s).kind for s in range(12)}
    assert kinds == {"indoor", "outdoor"}
    assert generate_scene(3, "outdoor").kind == "outdoor"
    assert generate_scene(0, "indoor").kind == "indoor"


def test_indoor_rooms_have_floor_ceiling_walls_and_connected_doorways():
    for seed in range(6):
        s = generate_scene(seed, "indoor")
        names = {p.name for p in s.primitives}
        assert {"floor", "ceiling", "wall"} <= names
        if len(s.rooms) == 1:
            continue
        # every room reachable from the first through doorways
        def room_of(x, z):
            return [i for i, (x0, z0, x1, z1) in enumerate(s.rooms) if x0 - 0.2 <= x <= x1 + 0.2 and z0 - 0.2 <= z <= z1 + 0.2]
        edges = [room_of(x, z) for x, z, _, _ in s.doorways]
        assert all(len(e) == 2 for e in edges)
        seen, todo = {0}, [0]
        while todo:
            r = todo.pop()
            for a, b in edges:
                for u, v in ((a, b), (b, a)):
                    if u == r and v not in seen:
                        seen.add(v)
                        todo.append(v)
        assert seen == set(range(len(s.rooms))), f"seed {seed}: rooms not all connected"
        for x, z, w, axis in s.doorways:
            centre = np.array([[x, 1.0, z]])
            assert s.is_free(centre, 0.3)[0], "a person fits through the doorway"
            # just beside the opening the wall is solid
            off = np.array([[w / 2 + 0.1, 0, 0]]) if axis == "x" else np.array([[0, 0, w / 2 + 0.1]])
            assert s.distance(centre + off)[0] <= 1e-9 and s.distance(centre - off)[0] <= 1e-9  # on the wall line
            assert not s.is_free(centre + [0, 1.3, 0], 0.05)[0], "the lintel closes the opening above door height"


def test_sdf_matches_closed_forms():
    rng = np.random.default_rng(0)
    p = rng.uniform(-3, 3, (500, 3))
    size = np.array([0.5, 1.0, 1.5])
    d = _sdf_local("box", p, size)
    q = np.abs(p) - size
    inside = np.all(q < 0, -1)
    assert np.allclose(d[inside], q[inside].max(-1))
    assert np.allclose(d[~inside], np.linalg.norm(np.maximum(q[~inside], 0), axis=-1))
    ds = _sdf_local("sphere", p, np.array([0.7, 0.7, 0.7]))
    assert np.allclose(ds, np.linalg.norm(p, axis=-1) - 0.7)
    dc = _sdf_local("cylinder", p, np.array([0.5, 1.0, 0.5]))
    r = np.hypot(p[:, 0], p[:, 2])
    side = (np.abs(p[:, 1]) <= 1.0) & (r > 0.5)
    assert np.allclose(dc[side], r[side] - 0.5)
    cap = (r <= 0.5) & (np.abs(p[:, 1]) > 1.0)
    assert np.allclose(dc[cap], np.abs(p[cap, 1]) - 1.0)


def test_is_free_against_a_hand_made_scene():
    mat = Material(Texture.CHECKER, (1, 0, 0), (0, 0, 1), 0.5)
    box = Primitive("box", (1.0, 1.0, 1.0), yaw_pose((0, 1, 0), math.pi / 4), mat)
    scene = Scene(0, "indoor", [box], np.array([-5, 0, -5.0]), np.array([5, 3, 5.0]), np.array([0, 1, 0.0]),
                  np.ones(3), np.zeros(3), np.zeros(3), np.zeros(3), np.zeros(3), (1.2, 1.7))
    # the box is turned 45 degrees: its corner reaches sqrt(2) along x
    assert not scene.is_free([[1.35, 1.0, 0.0]], 0.0)[0]
    assert scene.is_free([[1.5, 1.0, 0.0]], 0.05)[0]
    assert not scene.is_free([[1.5, 1.0, 0.0]], 0.1)[0]
    assert np.isclose(scene.distance([[3.0, 1.0, 0.0]])[0], 3.0 - math.sqrt(2))
    assert not scene.is_free([[4.9, 1.0, 0.0]], 0.2)[0], "outside the walkable box"
    with pytest.raises(ValueError, match="radius"):
        scene.is_free([[0, 0, 0]], -1.0)


def test_dynamic_entities_have_ids_move_and_avoid_static_obstacles():
    cfg = SceneConfig()
    for seed in range(4):
        s = generate_scene(seed, dynamic=True)
        ids = s.dynamic_ids
        assert ids == list(range(1, len(ids) + 1)) and len(ids) >= 1
        assert all(p.instance_id == 0 for p in s.primitives if not p.dynamic)
        assert not generate_scene(seed).dynamic_ids
        for p in s.primitives:
            if p.dynamic:
                a, b = p.pose_at(0.0), p.pose_at(1.0)
                assert not np.allclose(a[:3, 3], b[:3, 3]), "entities move"
        # sampled over time, entity centres stay out of furniture and walls (floors are what they move on)
        for p in s.primitives:
            if p.dynamic and p.name == "ball":
                c = p.pose_at(np.linspace(0, 20, 200))[:, :3, 3]
                assert np.all(s.distance(c, surfaces=False) > p.size[0])
                assert np.allclose(c[:, 1], p.size[0]), "balls roll on the floor"
    assert cfg.dynamic_count[0] >= 1


def test_motion_routes_are_closed():
    circle = Motion("circle", (0, 1, 0), speed=1.0, radius=2.0)
    period = 2 * math.pi * 2.0
    assert np.allclose(circle.transform(0.3), circle.transform(0.3 + period))
    assert np.isclose(np.linalg.norm(circle.transform(1.7)[[0, 2], 3]), 2.0)
    shuttle = Motion("shuttle", (0, 0, 0), speed=0.5, end=(2, 0, 0))
    assert np.allclose(shuttle.transform(0.0), shuttle.transform(8.0))
    assert np.allclose(shuttle.transform(4.0)[:3, 3], [2, 0, 0])
    ts = np.array([0.0, 1.0, 2.0])
    assert np.allclose(shuttle.transform(ts)[1], shuttle.transform(1.0))
    with pytest.raises(ValueError, match="kind"):
        Motion("teleport", (0, 0, 0), speed=1.0)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="castle"):
        generate_scene(0, "castle")
    with pytest.raises(ValueError, match="seed"):
        generate_scene(-1)
    mat = Material(Texture.SOLID, (1, 1, 1), (0, 0, 0), 1.0)
    with pytest.raises(ValueError, match="shape"):
        Primitive("cone", (1, 1, 1), np.eye(4), mat)
    with pytest.raises(ValueError, match="half-size"):
        Primitive("box", (1, 0, 1), np.eye(4), mat, name="flat")
    with pytest.raises(ValueError, match="color_a"):
        Material(Texture.SOLID, (2, 0, 0), (0, 0, 0), 1.0)


@pytest.mark.parametrize("t", [None, 1.5, "per-point"])
def test_distance_is_the_exact_minimum_over_all_primitives(t):
    from engine.geometry import invert_se3, transform_points

    scene = generate_scene(4, dynamic=True)
    rng = np.random.default_rng(3)
    # clustered probes (the culled fast path) and points spread over and beyond the whole scene
    pts = np.concatenate([rng.normal(scene.sample_free_points(rng, 1, 1.5, 0.3)[0], 0.3, (50, 3)),
                          rng.uniform(scene.free_min - 3, scene.free_max + 3, (200, 3))])
    times = rng.uniform(0, 10, len(pts)) if t == "per-point" else t
    brute = np.full(len(pts), np.inf)
    for p in scene.primitives:
        if p.dynamic and times is None:
            continue
        if p.dynamic and np.ndim(times):
            local = np.stack([transform_points(invert_se3(p.pose_at(ti)), x[None])[0] for ti, x in zip(times, pts)])
        else:
            local = transform_points(invert_se3(p.pose_at(0.0 if times is None else times)), pts)
        brute = np.minimum(brute, _sdf_local(p.shape, local, p.size))
    assert np.allclose(scene.distance(pts, t=times), brute)
    with pytest.raises(ValueError, match="one time per point"):
        scene.distance(pts, t=np.zeros(3))
