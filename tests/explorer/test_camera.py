"""Camera controller: key sequences move it as expected, mouse turns it, motion does not depend on frame rate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.geometry import fov_to_intrinsics, intrinsics_to_K, invert_se3, look_at, project, rotation_error
from explorer.camera import CameraConfig, CameraController

W, H = 320, 180


def centre(cam: CameraController) -> np.ndarray:
    return invert_se3(cam.w2c)[:3, 3]


def hold(cam: CameraController, keys: str | list[str], seconds: float, fps: float = 60.0) -> None:
    for k in [keys] if isinstance(keys, str) else keys:
        cam.key_down(k)
    for _ in range(round(seconds * fps)):
        cam.update(1.0 / fps)


def test_pose_is_opencv_and_roll_free():
    cam = CameraController(position=(1.0, 1.6, -2.0), yaw=0.3, pitch=-0.2)
    w2c = cam.w2c
    assert rotation_error(w2c[:3, :3]) < 1e-12
    K = intrinsics_to_K(fov_to_intrinsics(90.0, W / H), W, H)
    ahead = cam.position + cam.forward
    uv, z = project(np.stack([ahead, ahead + [0, 0.1, 0]]), w2c, K)
    np.testing.assert_allclose(uv[0], [W / 2, H / 2], atol=1e-9)  # straight ahead is the image centre
    assert z[0] > 0 and uv[1, 1] < H / 2  # world up is image up (OpenCV y points down)
    assert abs(invert_se3(w2c)[1, 0]) < 1e-12  # camera x stays horizontal: no roll


def test_from_w2c_recovers_look_at():
    w2c = look_at(np.array([2.0, 1.5, -3.0]), np.array([0.0, 1.0, 0.0]))
    cam = CameraController.from_w2c(w2c)
    np.testing.assert_allclose(cam.w2c, w2c, atol=1e-12)


def test_forward_is_camera_z_projected_on_the_ground():
    cam = CameraController(position=(0.0, 1.6, 0.0), yaw=0.7, pitch=-0.6)  # looking down at the floor
    start = centre(cam)
    hold(cam, "w", 2.0)
    step = centre(cam) - start
    assert abs(step[1]) < 1e-12  # stays at eye height
    z_cam = invert_se3(cam.w2c)[:3, 2]
    ground = np.array([z_cam[0], 0.0, z_cam[2]])
    assert np.dot(step, ground / np.linalg.norm(ground)) == pytest.approx(np.linalg.norm(step), rel=1e-9)
    # exact closed form: x(t) = v t - v tau (1 - exp(-t / tau)) from rest
    tau, v = cam.config.damping_time, cam.config.speed
    assert np.linalg.norm(step) == pytest.approx(v * 2.0 - v * tau * (1 - math.exp(-2.0 / tau)), rel=1e-9)


def test_strafe_back_up_down():
    cam = CameraController()
    x_cam = invert_se3(cam.w2c)[:3, 0]
    p0 = centre(cam)
    hold(cam, "d", 1.0)
    assert np.dot(centre(cam) - p0, x_cam) > 1.0  # 'd' moves along the camera's right
    cam.release_all()
    p1 = centre(cam)
    hold(cam, "a", 1.0)
    assert np.dot(centre(cam) - p1, x_cam) < -0.5
    cam.release_all()
    p2 = centre(cam)
    hold(cam, "e", 1.0)
    assert centre(cam)[1] - p2[1] > 1.0  # 'e' up
    cam.release_all()
    p3 = centre(cam)
    hold(cam, "q", 1.0)
    assert centre(cam)[1] - p3[1] < -0.5  # 'q' down
    cam.release_all()
    p4 = centre(cam)
    hold(cam, "s", 1.0)
    assert np.dot(centre(cam) - p4, cam.forward) < -0.5  # 's' back


def test_diagonal_is_not_faster_and_shift_is():
    a, b, c = CameraController(), CameraController(), CameraController()
    hold(a, "w", 3.0)
    hold(b, ["w", "d"], 3.0)
    hold(c, ["w", "shift"], 3.0)
    da, db, dc = (np.linalg.norm(centre(x) - [0, 1.6, 0]) for x in (a, b, c))
    assert db == pytest.approx(da, rel=1e-9)
    assert dc / da == pytest.approx(a.config.fast_factor, rel=0.02)


def test_mouse_yaw_and_clamped_pitch():
    cam = CameraController()
    x_cam = invert_se3(cam.w2c)[:3, 0]
    cam.mouse_motion(100, 0)  # mouse right: turn right
    assert np.dot(cam.forward, x_cam) > 0.2
    assert cam.yaw == pytest.approx(100 * cam.config.mouse_sensitivity)
    cam.mouse_motion(0, 100)  # mouse up: look up
    assert cam.forward[1] > 0.2
    cam.mouse_motion(0, 1e6)
    assert math.degrees(cam.pitch) == pytest.approx(cam.config.pitch_limit_deg)
    assert np.isfinite(cam.w2c).all()
    cam.mouse_motion(0, -1e7)
    assert math.degrees(cam.pitch) == pytest.approx(-cam.config.pitch_limit_deg)


def test_scroll_sets_speed_within_limits():
    cam = CameraController(config=CameraConfig(speed=1.0, min_speed=0.1, max_speed=10.0, scroll_factor=2.0))
    cam.scroll(1)
    assert cam.speed == 2.0
    cam.scroll(-2)
    assert cam.speed == 0.5
    cam.scroll(100)
    assert cam.speed == 10.0
    cam.scroll(-100)
    assert cam.speed == 0.1


def test_frame_rate_independence():
    a, b = CameraController(yaw=0.4), CameraController(yaw=0.4)
    for cam in (a, b):
        cam.key_down("w")
        cam.key_down("e")
        cam.update(0.05)  # some velocity already built up before the comparison
    a.update(0.1)
    for _ in range(10):
        b.update(0.01)
    np.testing.assert_allclose(a.w2c, b.w2c, atol=1e-12)
    np.testing.assert_allclose(a.velocity, b.velocity, atol=1e-12)


def test_damping_coasts_then_stops():
    cam = CameraController()
    hold(cam, "w", 1.0)
    cam.key_up("w")
    before = centre(cam)
    cam.update(0.05)
    assert np.linalg.norm(centre(cam) - before) > 0  # it coasts, no hard stop
    cam.update(5.0)
    assert not cam.moving and not np.any(cam.velocity)
    np.testing.assert_allclose(cam.predict(3, 24.0), np.repeat(cam.w2c[None], 3, 0), atol=1e-12)


def test_predict_matches_future_updates_and_keeps_state():
    cam = CameraController(yaw=-0.3)
    hold(cam, ["w", "d"], 0.1)
    pose_now = cam.w2c.copy()
    pred = cam.predict(12, 24.0)
    assert pred.shape == (12, 4, 4)
    np.testing.assert_array_equal(cam.w2c, pose_now)  # predict does not move the camera
    for k in range(12):
        cam.update(1 / 24.0)
        np.testing.assert_allclose(pred[k], cam.w2c, atol=1e-12)


def test_bad_input_is_named():
    cam = CameraController()
    with pytest.raises(ValueError, match="unknown camera key 'x'"):
        cam.key_down("x")
    with pytest.raises(ValueError, match="dt"):
        cam.update(-0.1)
    with pytest.raises(ValueError, match="n >= 1"):
        cam.predict(0, 24.0)
    with pytest.raises(ValueError, match="min_speed"):
        CameraConfig(speed=100.0, max_speed=10.0)
