"""Synthetic gymnastics generator and 2D corruption model: physics, cameras, reproducibility, rates."""
from __future__ import annotations

import json

import numpy as np
import pytest

from finephys_core.skeleton import H36M17, bone_lengths
from training import synth
from training.corruption import CorruptionConfig, corrupt_2d


@pytest.fixture(scope="module")
def tuck():
    return synth.generate_clip(11, "tuck_salto", fps=60)


def test_same_seed_same_arrays(tuck):
    again = synth.generate_clip(11, "tuck_salto", fps=60)
    for k in ("joints_world", "joints_cam", "keypoints_2d", "K", "R", "t", "flight", "contact"):
        np.testing.assert_array_equal(tuck[k], again[k], err_msg=k)
    other = synth.generate_clip(12, "tuck_salto", fps=60)
    assert not np.array_equal(other["joints_world"][:10], tuck["joints_world"][:10])


def test_flight_is_ballistic_and_limbs_rigid(tuck):
    com, fl, dt = tuck["com_world"].astype(np.float64), tuck["flight"], 1.0 / tuck["fps"]
    ok = fl[2:] & fl[1:-1] & fl[:-2]
    assert ok.sum() > 20, "a salto needs a long flight phase"
    acc = (com[2:] - 2 * com[1:-1] + com[:-2])[ok] / dt ** 2
    # implicitfast at 2.4 kHz: exact momentum update, O(timestep) position error in fast shape changes
    np.testing.assert_allclose(acc, np.broadcast_to([0, 0, -9.81], acc.shape), atol=0.15)
    assert np.median(np.abs(acc[:, 2] + 9.81)) < 0.03
    bones = bone_lengths(tuck["joints_world"].astype(np.float64))
    rigid = [i for i, (p, c) in enumerate(H36M17.bones) if c in (1, 2, 3, 4, 5, 6, 10, 12, 13, 15, 16)]
    assert bones[:, rigid].std(0).max() < 2e-4, "limb segments must keep their length"
    assert bones.std(0).max() < 0.02, "spine and clavicle joints move a little"
    # the body turns over (pelvis→thorax points down at some point) and lands upright
    up = tuck["joints_world"][:, 8] - tuck["joints_world"][:, 0]
    up /= np.linalg.norm(up, axis=-1, keepdims=True)
    assert up[:, 2].min() < -0.5 and up[-1, 2] > 0.5


def test_contacts_frame_the_flight(tuck):
    fl, contact = tuck["flight"], tuck["contact"]
    assert contact[0, :2].any() and contact[-1, :2].any(), "take-off and landing on the feet"
    assert not contact[fl].any(), "no contact during flight"
    first, last = np.nonzero(fl)[0][[0, -1]]
    assert fl[first:last + 1].all(), "one flight phase"


def test_camera_and_projection_consistent(tuck):
    R, t, K = (tuck[k].astype(np.float64) for k in ("R", "t", "K"))
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-5)
    cam = tuck["joints_world"] @ R.T + t
    np.testing.assert_allclose(cam, tuck["joints_cam"], atol=1e-3)
    assert (cam[..., 2] > 1.0).all()
    np.testing.assert_allclose(synth.project(cam, K), tuck["keypoints_2d"], atol=0.05)
    np.testing.assert_allclose(tuck["joints_cam_rel"][:, 0], 0, atol=1e-6)
    W, H = tuck["image_size"]
    kp = tuck["keypoints_2d"]
    assert (kp[..., 0] > 0).all() and (kp[..., 0] < W).all() and (kp[..., 1] > 0).all() and (kp[..., 1] < H).all()
    # image y points down: the head is above the ankles at the start (standing)
    assert kp[0, 10, 1] < kp[0, 3, 1]


@pytest.mark.parametrize("cls", ["split_leap", "turn_jump", "floor_spin"])
def test_other_classes(cls):
    clip = synth.generate_clip(3, cls, fps=25)
    assert clip["cls"] == cls and clip["joints_world"].shape[1:] == (17, 3)
    assert 0.8 < len(clip["joints_world"]) / clip["fps"] < 2.1
    if cls == "floor_spin":  # on the floor and turning about the vertical
        assert clip["external"].all() and not clip["flight"].any()
        hips = clip["joints_world"][:, 4] - clip["joints_world"][:, 1]
        yaw = np.unwrap(np.arctan2(hips[:, 1], hips[:, 0]))
        assert abs(yaw[-1] - yaw[0]) > np.pi
    else:
        assert clip["flight"].mean() > 0.3


def test_generate_dataset_shards(tmp_path):
    meta = synth.generate_dataset(tmp_path, num_motions=2, views_per_motion=3, seed=4, workers=1,
                                  progress=False)
    assert meta["num_motions"] == 2 and json.loads((tmp_path / "meta.json").read_text())["shards"]
    with np.load(tmp_path / meta["shards"][0]) as z:
        n, T = z["keypoints_2d"].shape[:2]
        assert n == 6 and z["joints_cam"].shape == (n, T, 17, 3) and z["contact"].shape == (n, T, 4)
        assert z["num_frames"].max() == T and set(z["fps"]) <= set(synth.FPS_CHOICES)
        assert json.loads(str(z["class_names"])) == list(synth.CLASSES)
        # three views of one motion share the world motion but not the camera
        np.testing.assert_array_equal(z["seed"][:3], z["seed"][0])
        assert not np.allclose(z["R"][0], z["R"][1])
    stats = synth.summarize(tmp_path)
    assert stats["clips"] == 6 and 0.2 < stats["flight_fraction"] < 0.9
    assert stats["limb_length_std_m_max"] < 1e-4 and stats["flight_com_acc_error_m_s2_median_p99_max"][0] < 0.05


# ----------------------------------------------------------------------------- corruption

def _walk(T=400):
    t = np.arange(T)[:, None]
    base = np.array([[0, 0], [-10, 0], [-10, 40], [-10, 80], [10, 0], [10, 40], [10, 80], [0, -30], [0, -60],
                     [0, -70], [0, -85], [20, -60], [35, -35], [45, -10], [-20, -60], [-35, -35], [-45, -10]],
                    np.float64)
    kp = base[None] * 2 + np.array([640, 360]) + np.c_[np.sin(t / 10) * 50, np.cos(t / 13) * 20][:, None]
    return kp.astype(np.float32)


def test_corruption_deterministic_and_shaped():
    kp = _walk()
    a = corrupt_2d(kp, None, (1280, 720), np.random.default_rng(5), fps=50)
    b = corrupt_2d(kp, None, (1280, 720), np.random.default_rng(5), fps=50)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[0].shape == kp.shape and a[1].shape == kp.shape[:2]
    assert (a[1] >= 0).all() and (a[1] <= 1).all()
    with pytest.raises(ValueError, match="17"):
        corrupt_2d(kp[:, :16], None, (1280, 720), np.random.default_rng(0))


def test_corruption_rates_follow_config():
    kp = np.tile(_walk(), (5, 1, 1))
    size = np.median(np.linalg.norm(kp.max(1) - kp.min(1), axis=-1))
    cfg = CorruptionConfig(failed_frame_rate=0.0, inverted_gain=1.0, speed_gain=0.0)
    out, sc = corrupt_2d(kp, None, (1280, 720), np.random.default_rng(1), config=cfg)
    err = np.linalg.norm(out - kp, axis=-1) / size
    assert 0.1 < (err > 0.1).mean() < 0.35          # ~19 % large errors + flips
    assert 0.02 < (sc == 0).mean() < 0.06           # missed joints
    flipped = np.linalg.norm(out - kp[:, H36M17.flip_index], axis=-1).mean(1) < \
        0.5 * np.linalg.norm(out - kp, axis=-1).mean(1)
    assert 0.02 < flipped.mean() < 0.12             # left/right flips of whole frames
    assert ((err > 0.1) & (sc > 0.6)).mean() > 0.05  # over-confident wrong joints
    clean, sc0 = corrupt_2d(kp, None, (1280, 720), np.random.default_rng(1), severity=0.0)
    np.testing.assert_allclose(clean, kp, atol=1e-3)
    assert (sc0 > 0).all()


def test_corruption_worse_when_inverted_and_fast():
    kp = _walk(600)
    upside = 2 * kp[:, :1] - kp  # mirrored through the pelvis: thorax below pelvis
    size = np.median(np.linalg.norm(kp.max(1) - kp.min(1), axis=-1))
    errs = []
    for k in (kp, upside):
        out, _ = corrupt_2d(k, None, (1280, 720), np.random.default_rng(2))
        errs.append(np.median(np.linalg.norm(out - k, axis=-1)) / size)
    assert errs[1] > 1.3 * errs[0]
