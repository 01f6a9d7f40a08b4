"""Body size from gravity in flight (finephys_core/gravity.py) and its use after the 2D fit."""
from __future__ import annotations

import numpy as np
import pytest

from finephys_core.camera import fuse_poses
from finephys_core.demo import SAMPLE_GT
from finephys_core.gravity import (APPARENT_G_SHARE, STATIC_CAMERA_GRAVITY_WEIGHT, G, centre_of_mass_2d,
                                   find_flight, fit_parabolas, gravity_size_factor, joint_mass_weights)
from finephys_core.sequence import Pose2D, Pose3D

FPS, PX_PER_M = 50.0, 300.0


def _body(frames: int) -> np.ndarray:
    """(T, 17, 3) root-relative poses of the shipped sample's salto, metres, camera frame."""
    with np.load(SAMPLE_GT) as z:
        x = z["joints"][:frames].astype(np.float64)
    return x - x[:, :1]


def _thrown(frames: int = 40, contact: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The salto's poses with their centre of mass thrown: standing still for ``contact`` frames, then in free
    fall. Gravity points down the image and APPARENT_G_SHARE of it lies in the image plane, as for a camera
    tilted by acos(0.966) ≈ 15°. Returns (root-relative 3D (T, 17, 3), weak-perspective 2D (T, 17, 2) px)."""
    rel = _body(frames)
    t = np.clip(np.arange(frames) - contact, 0, None) / FPS
    down = np.array([0.0, APPARENT_G_SHARE, np.sqrt(1 - APPARENT_G_SHARE ** 2)])
    com = np.outer(t, [1.0, -3.5, 0.5]) + 0.5 * G * np.outer(t ** 2, down)          # (T, 3), y down
    root = com - np.einsum("tjc,j->tc", rel, joint_mass_weights())
    world = rel + root[:, None]
    return rel, PX_PER_M * world[..., :2] + np.array([640.0, 360.0])


def test_mass_weights_sum_to_one_and_favour_the_trunk():
    w = joint_mass_weights()
    assert w.shape == (17,) and w.sum() == pytest.approx(1.0) and (w > 0).all()
    assert w[0] > w[13] and w[7] > w[3]      # pelvis over wrist, spine over ankle


def test_fit_parabolas_recovers_acceleration_exactly():
    t = np.arange(30) / FPS
    track = np.stack([3 + 2 * t, 1 - 4 * t + 0.5 * 7.5 * t * t], -1)
    accel, residual = fit_parabolas(track[None], FPS)
    assert accel[0] == pytest.approx([0.0, 7.5], abs=1e-9) and residual[0] < 1e-6


@pytest.mark.parametrize("lifted_size", [0.9, 1.0, 1.15])
def test_a_free_fall_gives_the_size_at_which_it_falls_at_g(lifted_size):
    rel, kp = _thrown()
    factor = gravity_size_factor(kp, lifted_size * rel, FPS, weight=1.0)
    assert factor * lifted_size == pytest.approx(1.0, rel=0.01)
    mixed = gravity_size_factor(kp, lifted_size * rel, FPS, weight=0.25)
    assert mixed == pytest.approx(factor ** 0.25, rel=1e-6)


def test_the_flight_is_found_after_the_contact_phase():
    rel, kp = _thrown(frames=60, contact=20)
    first, end, ratio = find_flight(centre_of_mass_2d(kp), np.full(60, PX_PER_M), FPS)
    assert 18 <= first <= 21 and end == 60          # a contact frame or two may pass the residual tolerance
    assert ratio == pytest.approx(1.0, rel=0.03)


def test_no_flight_no_change():
    rel, kp = _thrown()
    standing = np.repeat(kp[:1], len(kp), 0) + np.linspace(0, 50, len(kp))[:, None, None]   # gliding, no fall
    assert find_flight(centre_of_mass_2d(standing), np.full(len(kp), PX_PER_M), FPS) is None
    assert gravity_size_factor(standing, np.repeat(rel[:1], len(kp), 0), FPS) == 1.0
    assert gravity_size_factor(kp, rel, FPS, weight=0.0) == 1.0
    bad = kp.copy()
    bad[3, 5] = np.nan
    assert gravity_size_factor(bad, rel, FPS) == 1.0
    assert gravity_size_factor(kp[:5], rel[:5], FPS) == 1.0          # too short to be a flight


def test_fuse_poses_resizes_the_body_and_keeps_its_reprojection():
    rel, kp = _thrown()
    det = Pose2D(kp.astype(np.float32), np.ones(kp.shape[:2], np.float32), (1280, 720), FPS)
    small = Pose3D((0.9 * rel).astype(np.float32))
    pp = Pose3D((0.9 * rel).astype(np.float32), source="pp")
    kept, reproj_kept = fuse_poses(small, pp, det, fit_2d=50)                 # off by default: cameras may pan
    grown, reproj_grown = fuse_poses(small, pp, det, fit_2d=50, gravity_weight=STATIC_CAMERA_GRAVITY_WEIGHT)
    factor = grown.meta["gravity_size_factor"]
    assert kept.meta["gravity_size_factor"] == 1.0 and factor == pytest.approx(0.9 ** -0.25, rel=0.02)
    np.testing.assert_allclose(grown.joints, factor * kept.joints, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(reproj_grown.keypoints, reproj_kept.keypoints, atol=1e-3)
    assert grown.meta["weak_scale_px_per_m"] == pytest.approx(kept.meta["weak_scale_px_per_m"] / factor)
    perspective, reproj_p = fuse_poses(small, pp, det, fit_2d=50, camera_model="perspective",
                                       gravity_weight=STATIC_CAMERA_GRAVITY_WEIGHT)
    assert perspective.meta["gravity_size_factor"] > 1.0
    kept_p, reproj_kept_p = fuse_poses(small, pp, det, fit_2d=50, camera_model="perspective")
    np.testing.assert_allclose(reproj_p.keypoints, reproj_kept_p.keypoints, atol=1e-2)
