"""engine.geometry: intrinsics, SE(3), projection, and the two trajectory file formats."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from engine import geometry as g


def random_poses(n, seed=0):
    rng = np.random.default_rng(seed)
    R = Rotation.random(n, random_state=seed).as_matrix()
    t = rng.normal(size=(n, 3))
    return g.make_se3(R, t)


def test_intrinsics_round_trip():
    norm = np.array([[0.9, 1.6, 0.5, 0.45], [0.7, 1.2, 0.52, 0.5]])
    K = g.intrinsics_to_K(norm, 1248, 704)
    assert K.shape == (2, 3, 3)
    assert K[0, 0, 0] == pytest.approx(0.9 * 1248) and K[0, 1, 2] == pytest.approx(0.45 * 704)
    np.testing.assert_allclose(g.K_to_intrinsics(K, 1248, 704), norm)


def test_invert_and_compose():
    T = random_poses(10)
    I = g.compose_se3(T, g.invert_se3(T))
    np.testing.assert_allclose(I, np.broadcast_to(np.eye(4), I.shape), atol=1e-12)
    np.testing.assert_allclose(g.invert_se3(T), np.linalg.inv(T), atol=1e-12)


def test_interpolate_endpoints_and_midpoint():
    A, B = random_poses(2, seed=3)
    out = g.interpolate_se3(A, B, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(out[0], A, atol=1e-9)
    np.testing.assert_allclose(out[2], B, atol=1e-9)
    # midpoint: camera centre halfway, rotation halfway along the geodesic
    cA, cB, cM = (g.invert_se3(x)[:3, 3] for x in (A, B, out[1]))
    np.testing.assert_allclose(cM, (cA + cB) / 2, atol=1e-9)
    rA, rB, rM = (Rotation.from_matrix(g.invert_se3(x)[:3, :3]) for x in (A, B, out[1]))
    assert (rA.inv() * rM).magnitude() == pytest.approx((rM.inv() * rB).magnitude(), abs=1e-9)
    assert g.rotation_error(out[:, :3, :3]).max() < 1e-9


def test_resample_trajectory_keeps_keys():
    T = random_poses(5, seed=1)
    out = g.resample_trajectory(T, 9)  # every other pose is an original key
    np.testing.assert_allclose(out[::2], T, atol=1e-9)


def test_look_at_points_camera_at_target():
    eye, target = np.array([1.0, 1.5, -2.0]), np.array([0.0, 1.0, 3.0])
    w2c = g.look_at(eye, target)
    K = g.intrinsics_to_K(g.fov_to_intrinsics(60), 64, 64)
    uv, z = g.project(target[None], w2c, K)
    np.testing.assert_allclose(uv[0], [32, 32], atol=1e-9)
    assert z[0] > 0
    # world up (+y) appears upwards in the image (smaller v)
    uv_up, _ = g.project((target + [0, 0.1, 0])[None], w2c, K)
    assert uv_up[0, 1] < 32


def test_project_unproject_round_trip():
    rng = np.random.default_rng(0)
    w2c = random_poses(1, seed=5)[0]
    K = g.intrinsics_to_K([0.8, 0.8, 0.5, 0.5], 32, 24)
    depth = rng.uniform(1, 5, size=(24, 32))
    pts = g.unproject(depth, K, w2c)
    uv, z = g.project(pts.reshape(-1, 3), w2c, K)
    np.testing.assert_allclose(z, depth.reshape(-1), atol=1e-9)
    np.testing.assert_allclose(uv, g.pixel_grid(32, 24).reshape(-1, 2), atol=1e-8)


def test_project_batched_cameras():
    w2c = random_poses(3, seed=2)
    K = np.repeat(g.intrinsics_to_K([0.8, 0.8, 0.5, 0.5], 32, 32)[None], 3, 0)
    pts = np.random.default_rng(1).normal(size=(7, 3))
    uv, z = g.project(pts, w2c, K)
    assert uv.shape == (3, 7, 2) and z.shape == (3, 7)
    uv1, z1 = g.project(pts, w2c[1], K[1])
    np.testing.assert_allclose(uv[1], uv1)
    np.testing.assert_allclose(z[1], z1)


def test_w2c_and_intrinsics_files_round_trip(tmp_path):
    T = random_poses(300, seed=7)
    g.write_w2c_txt(tmp_path / "w2c.txt", T)
    np.testing.assert_allclose(g.read_w2c_txt(tmp_path / "w2c.txt"), T, atol=1e-12)
    # 3x4 rows are accepted too
    (tmp_path / "w2c34.txt").write_text("\n".join(str(m[:3].tolist()) for m in T[:4]))
    np.testing.assert_allclose(g.read_w2c_txt(tmp_path / "w2c34.txt"), T[:4], atol=1e-12)
    g.write_intrinsics_txt(tmp_path / "intrinsics.txt", [0.9, 1.6, 0.5, 0.5])
    np.testing.assert_allclose(g.read_intrinsics_txt(tmp_path / "intrinsics.txt"), [[0.9, 1.6, 0.5, 0.5]])


def test_re10k_round_trip(tmp_path):
    T = random_poses(200, seed=9)
    traj = g.Re10kTrajectory(
        url="https://www.youtube.com/watch?v=abc",
        timestamps=np.arange(200, dtype=np.int64) * 33366,
        intrinsics=np.tile([0.5, 0.9, 0.5, 0.5], (200, 1)),
        w2c=T,
    )
    g.write_re10k(tmp_path / "cam.txt", traj)
    back = g.read_re10k(tmp_path / "cam.txt")
    assert back.url == traj.url
    np.testing.assert_array_equal(back.timestamps, traj.timestamps)
    np.testing.assert_allclose(back.intrinsics, traj.intrinsics)
    np.testing.assert_allclose(back.w2c, T, atol=1e-7)


@pytest.mark.parametrize(
    "content, fragment, line",
    [
        ("[[1,0,0,0],[0,1,0,0],[0,0,1,NaN]]", "non-finite", 1),
        ("[[1,0,0,0],[0,1,0,0],[0,0,1,0]]\n[[1,0,0],[0,1,0]]", "3x4 or 4x4", 2),
        ("[[2,0,0,0],[0,1,0,0],[0,0,1,0]]", "not orthonormal", 1),
        ("[[1,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,1,1]]", "last row", 1),
        ("hello", "JSON-style", 1),
        ("", "no poses", None),
    ],
)
def test_bad_w2c_files_name_file_line_and_fault(tmp_path, content, fragment, line):
    p = tmp_path / "w2c.txt"
    p.write_text(content)
    with pytest.raises(g.TrajectoryFileError) as err:
        g.read_w2c_txt(p)
    assert fragment in str(err.value) and str(p) in str(err.value)
    assert err.value.line == line


@pytest.mark.parametrize(
    "content, fragment",
    [("[0.5 0.5 0.5]", "4 numbers"), ("[a b c d]", "four numbers"), ("[0.5 inf 0.5 0.5]", "non-finite"), ("[0 1 .5 .5]", "positive")],
)
def test_bad_intrinsics_files(tmp_path, content, fragment):
    p = tmp_path / "intrinsics.txt"
    p.write_text(content)
    with pytest.raises(g.TrajectoryFileError, match=fragment):
        g.read_intrinsics_txt(p)


def test_bad_re10k_files(tmp_path):
    p = tmp_path / "cam.txt"
    p.write_text("url\n0 0.5 0.9 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1\n")
    with pytest.raises(g.TrajectoryFileError, match=r"cam.txt:2: expected 19 numbers"):
        g.read_re10k(p)
    p.write_text("url\n0 0.5 0.9 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1 nan\n")
    with pytest.raises(g.TrajectoryFileError, match="non-finite"):
        g.read_re10k(p)
    with pytest.raises(g.TrajectoryFileError, match="file not found"):
        g.read_re10k(tmp_path / "missing.txt")


def test_pose_distance_is_centre_metres_and_view_degrees_broadcast():
    a = g.look_at(np.zeros(3), np.array([0.0, 0.0, 1.0]))
    yaw = np.radians(30)
    b = g.look_at(np.array([3.0, 4.0, 0.0]), np.array([3.0 + np.sin(yaw), 4.0, np.cos(yaw)]))
    metres, degrees = g.pose_distance(a, b)
    assert metres == pytest.approx(5.0) and degrees == pytest.approx(30.0)
    metres, degrees = g.pose_distance(a, np.stack([a, b]))  # one pose against many
    np.testing.assert_allclose(metres, [0.0, 5.0], atol=1e-12)
    np.testing.assert_allclose(degrees, [0.0, 30.0], atol=1e-6)
