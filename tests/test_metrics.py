"""Metrics and filters against hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest

from finephys_core import filters, metrics


def _pose(seed=0, t=10):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(t, 17, 3))


def _rot_z(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def test_mpjpe_hand_value():
    gt = np.zeros((2, 17, 3))
    pred = gt.copy()
    pred[..., 0] = 3.0
    pred[..., 1] = 4.0           # every joint off by a 3-4-5 triangle
    assert metrics.mpjpe(pred, gt) == pytest.approx(5.0)
    pred[1] = 0.0                # half the frames exact
    assert metrics.mpjpe(pred, gt) == pytest.approx(2.5)


def test_shape_mismatch_is_named():
    with pytest.raises(ValueError, match="J, 3"):
        metrics.mpjpe(np.zeros((2, 17, 3)), np.zeros((2, 16, 3)))


def test_n_mpjpe_removes_scale_only():
    gt = _pose()
    assert np.allclose(metrics.scale_align(1.7 * gt, gt), gt)
    assert metrics.n_mpjpe(1.7 * gt, gt) == pytest.approx(0.0, abs=1e-9)
    assert metrics.mpjpe(1.7 * gt, gt) > 0.1
    shifted = gt + np.array([0.5, 0, 0])
    assert metrics.n_mpjpe(shifted, gt) > 0.05


def test_pa_mpjpe_removes_similarity_but_not_reflection():
    gt = _pose(1)
    pred = 0.8 * gt @ _rot_z(0.7).T + np.array([1.0, -2.0, 0.5])
    assert metrics.pa_mpjpe(pred, gt) == pytest.approx(0.0, abs=1e-9)
    mirrored = gt * np.array([-1.0, 1.0, 1.0])
    assert metrics.pa_mpjpe(mirrored, gt) > 0.1  # a reflection is not a rotation


def test_velocity_and_acceleration_errors():
    t = np.arange(6, dtype=float)
    gt = np.zeros((6, 17, 3))
    pred = gt.copy()
    pred[..., 0] = t[:, None]            # constant velocity 1 per frame along x
    assert metrics.mpjve(pred, gt) == pytest.approx(1.0)
    assert metrics.accel_error(pred, gt) == pytest.approx(0.0)
    pred[..., 0] = 0.5 * t[:, None] ** 2  # constant acceleration 1 per frame²
    assert metrics.accel_error(pred, gt) == pytest.approx(1.0)
    assert metrics.jitter(pred) == pytest.approx(0.0)  # a parabola has no third difference


def test_jitter_hand_value():
    x = np.zeros((5, 17, 3))
    x[2, :, 1] = 1.0                     # one spike [0,0,1,0,0]: Δ=[0,1,-1,0], Δ²=[1,-2,1], Δ³=[-3,3]
    assert metrics.jitter(x) == pytest.approx(3.0)


def test_bone_length_std():
    gt = _pose(2, t=1).repeat(4, axis=0)
    assert metrics.bone_length_std(gt) == pytest.approx(0.0, abs=1e-12)
    x = np.zeros((2, 17, 3))
    x[1, 3, 0] = 2.0                      # ankle moves 2 off the knee in frame 1: bone (2,3) is 0 then 2
    assert metrics.bone_length_std(x) == pytest.approx(1.0 / 16)   # std 1 on one of 16 bones


def test_ballistic_fit_recovers_gravity():
    fps = 50.0
    t = np.arange(40) / fps
    traj = np.stack([0.3 + 1.2 * t, 1.0 - 3.0 * t + 0.5 * 9.81 * t ** 2, 4 + 0 * t], -1)
    flight = np.zeros(40, bool)
    flight[5:20] = flight[25:40] = True
    traj[25:] += 0.7                     # a different offset in the second flight: still one g
    res, g = metrics.ballistic_fit(traj, fps, flight)
    assert res == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(g, [0, 9.81, 0], atol=1e-8)
    assert metrics.ballistic_fit(traj, fps, np.zeros(40, bool)) is None


def test_pose_metrics_in_mm():
    gt = _pose(3) * 0.3
    pred = gt + 0.01
    m = metrics.pose_metrics(pred, gt)
    assert m["mpjpe"] == pytest.approx(10 * np.sqrt(3))
    assert m["pa_mpjpe"] == pytest.approx(0.0, abs=1e-6)
    assert set(m) == {"mpjpe", "n_mpjpe", "pa_mpjpe", "mpjve", "accel_error", "bone_std", "jitter"}


# ------------------------------------------------------------------------------------------------ filters

def test_savgol_keeps_quadratics_and_matches_scipy():
    t = np.arange(20, dtype=float)
    quad = (0.3 * t ** 2 - 2 * t + 1)[:, None, None] * np.ones((1, 17, 3))
    np.testing.assert_allclose(filters.savgol(quad, 7, 2), quad, atol=1e-9)
    signal = pytest.importorskip("scipy.signal")
    x = _pose(4, t=30)
    np.testing.assert_allclose(filters.savgol(x, 7, 2), signal.savgol_filter(x, 7, 2, axis=0), atol=1e-10)


def test_savgol_short_clip_and_bad_window():
    x = _pose(5, t=4)
    assert filters.savgol(x).shape == x.shape   # window shrinks to 3
    with pytest.raises(ValueError, match="odd"):
        filters.savgol(x, window=6)


def test_savgol_reduces_noise():
    rng = np.random.default_rng(0)
    clean = np.sin(np.linspace(0, 3, 100))[:, None]
    noisy = clean + rng.normal(0, 0.1, clean.shape)
    assert np.abs(filters.savgol(noisy) - clean).mean() < 0.7 * np.abs(noisy - clean).mean()


def test_low_pass_keeps_slow_removes_fast_and_splits_energy():
    t, fps = 50, 50.0                                    # mirrored FFT bins every fps / 2t = 0.5 Hz
    n = np.arange(t)[:, None, None]
    slow = 0.3 * np.cos(np.pi * 2 * (n + 0.5) / t) * np.ones((1, 17, 3))    # 1 Hz, exactly on a bin
    fast = 0.1 * np.cos(np.pi * 20 * (n + 0.5) / t) * np.ones((1, 17, 3))   # 10 Hz
    out = filters.low_pass(slow + fast + 2.0, fps, 4.0)
    np.testing.assert_allclose(out, slow + 2.0, atol=1e-9)
    np.testing.assert_allclose(filters.low_pass(slow + fast, fps, 25.0), slow + fast, atol=1e-9)
    kept = (filters.low_pass(slow + fast, fps, 4.0) ** 2).sum() / ((slow + fast) ** 2).sum()
    assert kept == pytest.approx(0.3 ** 2 / (0.3 ** 2 + 0.1 ** 2), rel=1e-9)   # Parseval on the clip
    np.testing.assert_allclose(filters.low_pass(np.full((7, 2), 1.5), fps, 0.0), np.full((7, 2), 1.5))
    with pytest.raises(ValueError, match="fps > 0"):
        filters.low_pass(slow, 0.0, 4.0)


def test_one_euro_hand_value_and_constant():
    # beta = 0: a plain exponential low-pass with alpha = 1 / (1 + tau/te), tau = 1/(2π·fc)
    fps, fc = 10.0, 1.0
    a = 1.0 / (1.0 + (1.0 / (2 * np.pi * fc)) * fps)
    x = np.array([0.0, 1.0, 1.0])
    y = filters.one_euro(x, fps, min_cutoff=fc, beta=0.0)
    np.testing.assert_allclose(y, [0.0, a, a + a * (1 - a)])
    const = np.full((10, 17, 3), 2.5)
    np.testing.assert_allclose(filters.one_euro(const, 25.0, 1.0, 0.5), const)


def test_one_euro_beta_reduces_lag():
    t = np.arange(50) / 25.0
    ramp = (3.0 * t)[:, None]
    slow = filters.one_euro(ramp, 25.0, min_cutoff=0.5, beta=0.0)
    fast = filters.one_euro(ramp, 25.0, min_cutoff=0.5, beta=2.0)
    assert np.abs(fast - ramp)[-1] < 0.5 * np.abs(slow - ramp)[-1]
