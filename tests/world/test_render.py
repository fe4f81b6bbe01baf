"""Ground-truth renderer: deterministic, geometrically exact depth from the OpenCV K, ids that are the masks."""

import math

import numpy as np
import pytest

from engine.geometry import fov_to_intrinsics, intrinsics_to_K, look_at, project, unproject
from engine.world.render import WorldRenderer, opencv_projection, unit_mesh
from engine.world.scene import Primitive, Scene, generate_scene, yaw_pose
from engine.world.textures import Material, Texture

W, H = 96, 72  # the conftest renderer's size


def _scene(prims, kind="indoor") -> Scene:
    return Scene(0, kind, prims, np.array([-50, 0, -50.0]), np.array([50, 10, 50.0]),
                 np.array([0.3, 0.9, 0.3]) / np.linalg.norm([0.3, 0.9, 0.3]), np.full(3, 0.6), np.full(3, 0.1),
                 np.full(3, 0.4), np.array([0.3, 0.5, 0.9]), np.array([0.8, 0.9, 1.0]), (1.2, 1.7))


def _K(cx_frac=0.5, cy_frac=0.5, fov=70.0, aspect=W / H):
    norm = fov_to_intrinsics(fov, aspect)
    norm[2], norm[3] = cx_frac, cy_frac
    return intrinsics_to_K(norm, W, H)


MAT = Material(Texture.CHECKER, (0.8, 0.2, 0.2), (0.2, 0.2, 0.8), 0.5)
FLOOR = Primitive("box", (40, 0.05, 40), yaw_pose((0, -0.05, 0)), MAT, name="floor")


def test_unit_meshes_are_closed_and_outward():
    for shape in ("box", "cylinder", "sphere"):
        verts, tris = unit_mesh(shape)
        pos = verts[:, :3].astype(np.float64)
        a, b, c = pos[tris[:, 0]], pos[tris[:, 1]], pos[tris[:, 2]]
        # divergence theorem: the signed volume of a closed, outward-wound mesh is positive
        vol = np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6
        expected = {"box": 8.0, "cylinder": 2 * math.pi, "sphere": 4 / 3 * math.pi}[shape]
        assert 0.9 * expected < vol <= expected + 1e-6


def test_projection_maps_pixel_centres_exactly():
    K = _K(0.43, 0.58)
    P = opencv_projection(K, W, H, 0.1, 100.0)
    pts = np.array([[0.3, -0.2, 2.0], [-1.0, 0.5, 7.0]])
    uv, z = project(pts, np.eye(4), K)
    clip = np.c_[pts, np.ones(2)] @ P.T
    ndc = clip[:, :3] / clip[:, 3:]
    assert np.allclose((ndc[:, 0] + 1) / 2 * W, uv[:, 0]) and np.allclose((ndc[:, 1] + 1) / 2 * H, uv[:, 1])
    assert np.allclose(ndc[:, 2], [(100.1 - 2 * 100 * 0.1 / zz) / 99.9 for zz in z])


def test_fronto_parallel_wall_has_constant_metric_depth_and_exact_edges(renderer):
    # A wall 5 m ahead, seen by a camera with an off-centre principal point and fx != fy.
    wall = Primitive("box", (1.0, 10.0, 0.1), yaw_pose((0.4, 1.5, 5.1)), MAT, name="wall")
    scene = _scene([wall])
    w2c = look_at((0, 1.5, 0), (0, 1.5, 1))
    K = _K(0.43, 0.58, fov=60.0, aspect=1.1)
    out = renderer.render(scene, w2c, K)
    hit = out.depth > 0
    assert np.allclose(out.depth[hit], 5.0, atol=1e-4), "z along the optical axis, not distance along the ray"
    # the wall's side edges at world x = -0.6 and 1.4 -> image columns through engine.geometry.project
    (ua, _), (ub, _) = project(np.array([[-0.6, 1.5, 5.0], [1.4, 1.5, 5.0]]), w2c, K)[0]
    lo, hi = sorted((ua, ub))
    centres = np.arange(W) + 0.5
    row = hit[H // 2]
    assert np.all(row[(centres > lo + 0.01) & (centres < hi - 0.01)])
    assert not np.any(row[(centres < lo - 0.01) | (centres > hi + 0.01)])
    assert np.all(out.ids == 0)


def test_floor_depth_follows_the_vertical_intrinsics(renderer):
    scene = _scene([FLOOR])
    h = 1.3
    w2c = look_at((0, h, 0), (0, h, 1))  # looking level: the floor fills the rows below the horizon
    K = _K(0.5, 0.4, fov=80.0)
    out = renderer.render(scene, w2c, K)
    v = np.arange(H) + 0.5
    below = v > K[1, 2] + 2
    expected = h * K[1, 1] / (v[below] - K[1, 2])  # camera y points down, the floor is h below
    got = out.depth[below, W // 2]
    near = expected < 30
    assert np.allclose(got[near], expected[near], rtol=1e-3)


def _first_visible_pair(scene):
    """Two nearby views into the room of an indoor scene that both look at something close."""
    rng = np.random.default_rng(0)
    for eye in scene.sample_free_points(rng, 20, 1.5, 0.5):
        for yaw in np.linspace(0, 2 * math.pi, 8, endpoint=False):
            d = np.array([math.sin(yaw), -0.25, math.cos(yaw)])
            if scene.distance(eye + 2.0 * d)[0] < 0.1:
                continue
            a = look_at(eye, eye + d)
            side = np.array([math.cos(yaw), 0, -math.sin(yaw)])
            eye_b = eye + 0.3 * side + 0.2 * d
            if scene.is_free(eye_b[None], 0.2)[0]:
                rot = np.array([math.sin(yaw + 0.15), -0.2, math.cos(yaw + 0.15)])
                return a, look_at(eye_b, eye_b + rot)
    raise AssertionError("no view pair found")


def test_depth_reprojects_between_views_with_matching_colour(renderer):
    scene = generate_scene(3, "indoor")
    w2c_a, w2c_b = _first_visible_pair(scene)
    K = _K()
    a, b = renderer.render(scene, w2c_a, K), renderer.render(scene, w2c_b, K)
    pts = unproject(a.depth.astype(np.float64), K, w2c_a)  # [H, W, 3]
    uv, z = project(pts.reshape(-1, 3), w2c_b, K)
    u, v = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
    ok = (a.depth.reshape(-1) > 0) & (z > 0.1) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
    assert ok.mean() > 0.5, "the views overlap"
    zb = b.depth[v[ok], u[ok]]
    agree = np.abs(zb - z[ok]) / z[ok] < 0.02  # sub-pixel offsets on slanted surfaces, occlusions
    assert agree.mean() > 0.85, f"only {agree.mean():.1%} of reprojected depths agree"
    col_a = a.rgb.reshape(-1, 3)[ok][agree].astype(float)
    col_b = b.rgb[v[ok], u[ok]][agree].astype(float)
    diff = np.abs(col_a - col_b).mean(-1)
    assert np.median(diff) < 10, "lighting is view-independent, so the same surface point has the same colour"


def test_same_seed_same_pixels_across_scene_objects_and_renderers(renderer):
    w2c = look_at((0.3, 1.5, 0.2), (1.5, 1.2, 2.0))
    K = _K()
    a = renderer.render(generate_scene(7, dynamic=True), w2c, K, t=1.25)
    b = renderer.render(generate_scene(7, dynamic=True), w2c, K, t=1.25)
    other = WorldRenderer(W, H)
    c = other.render(generate_scene(7, dynamic=True), w2c, K, t=1.25)
    other.release()
    for x in (b, c):
        assert np.array_equal(a.rgb, x.rgb) and np.array_equal(a.depth, x.depth) and np.array_equal(a.ids, x.ids)
    assert a.rgb.std() > 10, "a textured, lit scene, not a flat image"


def test_batch_equals_single_renders(renderer, indoor):
    rng = np.random.default_rng(1)
    eyes = indoor.sample_free_points(rng, 3, 1.5, 0.3)
    w2c = np.stack([look_at(e, e + [1, -0.1, 0.3]) for e in eyes])
    K = _K()
    t = np.array([0.0, 0.5, 3.0])
    batch = renderer.render_batch(indoor, w2c, K, t)
    assert batch.rgb.shape == (3, H, W, 3) and batch.depth.dtype == np.float32 and batch.ids.dtype == np.int32
    for i in range(3):
        one = renderer.render(indoor, w2c[i], K, t[i])
        assert np.array_equal(one.rgb, batch.rgb[i]) and np.array_equal(one.depth, batch.depth[i])


def _views_of_entities(scene):
    """Cameras 2.5 m from each entity, at several angles, looking at it (time 0)."""
    for p in scene.primitives:
        if not p.dynamic:
            continue
        c = p.pose_at(0.0)[:3, 3]
        for ang in np.linspace(0, 2 * math.pi, 8, endpoint=False):
            eye = np.array([c[0] + 2.5 * math.sin(ang), 1.4, c[2] + 2.5 * math.cos(ang)])
            if scene.is_free(eye[None], 0.1)[0]:
                yield look_at(eye, c + [0, 0.1, 0])


@pytest.mark.parametrize("which", ["indoor", "outdoor"])
def test_ids_cover_the_moving_entities_and_nothing_else(renderer, which, request):
    scene = request.getfixturevalue(which)
    static = _scene([p for p in scene.primitives if not p.dynamic], scene.kind)
    moving = _scene([p for p in scene.primitives if p.dynamic], scene.kind)
    K = _K()
    covered = 0
    for w2c in _views_of_entities(scene):
        full, s, m = (renderer.render(x, w2c, K, t=0.0) for x in (scene, static, moving))
        expected = (m.depth > 0) & ((s.depth == 0) | (m.depth < s.depth))
        got = full.ids > 0
        mismatch = (got != expected).sum()
        assert mismatch <= 2 + 0.01 * expected.sum(), f"{mismatch} pixels disagree with the entity-only render"
        assert np.all(full.ids[got & expected] == m.ids[got & expected]), "each pixel carries its entity's id"
        assert np.array_equal(full.depth[got], m.depth[got])
        covered += int(expected.sum())
    assert covered > 50, "some entity was in view"


def test_sky_is_zero_depth_and_static(renderer):
    scene = generate_scene(0, "outdoor")
    eye = np.array([0.0, 1.5, 0.0])
    out = renderer.render(scene, look_at(eye, eye + [0.2, 2.0, 1.0]), _K())
    top = out.depth[:5]
    assert np.all(top == 0) and np.all(out.ids[:5] == 0)
    assert out.rgb[:5, :, 2].mean() > out.rgb[:5, :, 0].mean(), "blue sky"


def test_bad_input_is_named(renderer, indoor):
    K = _K()
    with pytest.raises(ValueError, match="w2c"):
        renderer.render(indoor, np.eye(3), K)
    with pytest.raises(ValueError, match="focal"):
        renderer.render(indoor, np.eye(4), np.diag([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="size"):
        WorldRenderer(0, 10)
    with pytest.raises(ValueError, match="finite"):
        renderer.render_batch(indoor, np.eye(4)[None], K, np.array([np.nan]))
    with pytest.raises(ValueError, match="K must be"):
        renderer.render(indoor, np.eye(4), np.eye(2))


def test_changed_scene_is_uploaded_again(renderer):
    from engine.world.render import shared_renderer

    scene = _scene([FLOOR])
    w2c = look_at((0, 1.3, 0), (0, 0.5, 2))
    K = _K()
    before = renderer.render(scene, w2c, K)
    scene.add_primitives([Primitive("sphere", (0.5, 0.5, 0.5), yaw_pose((0, 0.5, 2.0)), MAT, name="ball")])
    after = renderer.render(scene, w2c, K)
    assert (after.depth < before.depth - 0.1).sum() > 100, "the new sphere shows up"
    assert shared_renderer(W, H) is shared_renderer(W, H)
