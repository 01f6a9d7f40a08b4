"""Dataset readers on small files made in the public formats, and the windowed training Dataset."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from finephys_core.sequence import Pose2D, save_pose
from finephys_core.skeleton import COCO17
from training import datasets as ds
from training import synth
from training.corruption import CorruptionConfig
from training.synth_camera import CameraConfig


def _walker(T: int, rng) -> np.ndarray:
    """(T, 17, 3) a standing body (Z up, metres) drifting across the H36M capture area."""
    base = np.array([[0, 0, 0.95], [-0.13, 0, 0.95], [-0.13, 0, 0.5], [-0.13, 0, 0.08], [0.13, 0, 0.95],
                     [0.13, 0, 0.5], [0.13, 0, 0.08], [0, 0, 1.2], [0, 0, 1.45], [0, 0.05, 1.55], [0, 0, 1.7],
                     [0.18, 0, 1.42], [0.2, 0, 1.15], [0.2, 0, 0.9], [-0.18, 0, 1.42], [-0.2, 0, 1.15],
                     [-0.2, 0, 0.9]])
    drift = np.c_[np.linspace(-0.5, 0.5, T), np.sin(np.arange(T) / 7) * 0.2, np.zeros(T)]
    return (base[None] + drift[:, None] + rng.normal(0, 0.002, (T, 17, 3))).astype(np.float32)


def _h36m_files(tmp_path, T=60, detections_layout=None):
    rng = np.random.default_rng(0)
    pos3d = {}
    for subject in ("S1", "S9"):
        pos3d[subject] = {}
        for action in ("Walking", "Directions 1"):
            j17 = _walker(T, rng)
            full = np.zeros((T, 32, 3), np.float32)  # the 32-joint layout; the 15 removed joints stay junk
            full[:, list(ds.H36M_KEPT)] = j17
            full[:, list(ds.H36M_REMOVED)] = 9.0
            pos3d[subject][action] = full
    p3 = tmp_path / "data_3d_h36m.npz"
    np.savez_compressed(p3, positions_3d=pos3d)
    if detections_layout is None:
        return p3, None, pos3d
    pos2d = {s: {a: [np.concatenate([rng.uniform(100, 900, (T + 3, 17, 2)), rng.uniform(0.2, 1, (T + 3, 17, 1))],
                                    -1).astype(np.float32) for _ in range(4)] for a in acts}
             for s, acts in pos3d.items()}
    meta = {"num_joints": 17, "keypoints_symmetry": [[4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]]}
    if detections_layout != "gt":  # VideoPose3D's ground-truth 2D file names no layout; detections do
        meta["layout_name"] = detections_layout
    p2 = tmp_path / f"data_2d_h36m_{detections_layout}.npz"
    np.savez_compressed(p2, positions_2d=pos2d, metadata=meta)
    return p3, p2, pos2d


def test_h36m_cameras_match_videopose3d_geometry():
    cams = ds.h36m_cameras()
    assert set(cams) == {"S1", "S5", "S6", "S7", "S8", "S9", "S11"} and all(len(c) == 4 for c in cams.values())
    for cam in cams["S1"]:
        R, t = cam["R"], cam["t"]
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-6)
        assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-6)
        # the capture volume's centre at 1 m height is ~4-6 m in front of every camera, inside the image
        p = R @ np.array([0, 0, 1.0]) + t
        assert 3.5 < p[2] < 6.5
        uv = ds.project_pinhole(p[None], cam["K"])[0]
        assert (uv > 150).all() and (uv < 850).all()
        # world up (Z) points up in the image (y down)
        assert (R @ np.array([0, 0, 1.0]))[1] < -0.8
    # extrinsics: camera centre in mm, as VideoPose3D stores it (S1, camera 0)
    centre = -cams["S1"][0]["R"].T @ cams["S1"][0]["t"]
    np.testing.assert_allclose(centre, [1.8411070556640625, 4.95528466796875, 1.5634454345703125], atol=1e-6)


def test_h36m_reader_3d_and_projected_2d(tmp_path):
    p3, _, pos3d = _h36m_files(tmp_path)
    src = ds.H36MSource(p3, subjects=("S1",))
    assert len(src.clips) == 2 * 4
    clip = src.clips[0]
    assert clip.fps == 50.0 and clip.joints_cam.shape == (60, 17, 3) and clip.image_size in ((1000, 1002), (1000, 1000))
    assert np.abs(clip.joints_world).max() < 5.0, "the 15 unused joints must be dropped"
    cam = ds.h36m_cameras()["S1"][0]
    np.testing.assert_allclose(clip.joints_cam, clip.joints_world @ cam["R"].T + cam["t"], atol=1e-4)
    np.testing.assert_allclose(clip.keypoints, ds.project_pinhole(clip.joints_cam, cam["K"]), atol=1e-3)
    with pytest.raises(KeyError, match="S5"):
        ds.H36MSource(p3, subjects=("S5",))


@pytest.mark.parametrize("layout", ["h36m", "coco", "gt"])
def test_h36m_reader_detections(tmp_path, layout):
    p3, p2, pos2d = _h36m_files(tmp_path, detections_layout=layout)
    src = ds.H36MSource(p3, p2, subjects=("S9",), cameras=(2,))
    clip = next(c for c in src.clips if c.meta["action"] == "Walking")
    raw = pos2d["S9"]["Walking"][2][:60]  # cut to the mocap length
    assert clip.keypoints.shape == (60, 17, 2)
    if layout == "gt":
        np.testing.assert_allclose(clip.keypoints, raw[..., :2])
        assert not clip.detected
        return
    assert clip.detected
    # detections are used as they are: no camera re-view, no extra corruption; 3D stays in that camera
    item = ds.ClipWindows([src], window=16, corruption=CorruptionConfig(), camera_aug=True)[0]
    first = src.clips[0]
    np.testing.assert_allclose(item["pose2d_px"].numpy(), first.keypoints[:16], atol=1e-5)
    np.testing.assert_allclose(item["pose3d"].numpy(), first.joints_cam[:16] - first.joints_cam[:16, :1], atol=1e-5)
    if layout == "h36m":
        np.testing.assert_allclose(clip.keypoints, raw[..., :2])
        np.testing.assert_allclose(clip.scores, raw[..., 2])
    else:  # COCO order converted: H36M right knee = COCO right knee (14); pelvis = mid-hips
        np.testing.assert_allclose(clip.keypoints[:, 2], raw[:, COCO17.index("r_knee"), :2], atol=1e-4)
        np.testing.assert_allclose(clip.keypoints[:, 0], raw[:, [11, 12], :2].mean(1), atol=1e-4)


def test_amass_and_finegym_readers(tmp_path):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "amass_seq.npz", joints=_walker(240, rng), fps=120.0)
    amass = ds.AMASSSource(tmp_path / "amass_seq.npz")
    assert amass.clips[0].fps == 120.0 and amass.clips[0].joints_world.shape == (240, 17, 3)
    np.savez(tmp_path / "bad.npz", joints=np.zeros((5, 24, 3)), fps=30.0)
    with pytest.raises(ValueError, match="17"):
        ds.AMASSSource(tmp_path / "bad.npz")

    gym_dir = tmp_path / "finegym"
    gym_dir.mkdir()
    kp = rng.uniform(0, 600, (30, 17, 2)).astype(np.float32)
    save_pose(Pose2D(kp, np.full((30, 17), 0.9), (640, 360), 25.0, "coco17"), gym_dir / "clip_0001.npz")
    with np.load(gym_dir / "clip_0001.npz") as z:
        np.savez(gym_dir / "clip_0001.npz", **{k: z[k] for k in z.files}, class_id=np.int64(7))
    fg = ds.FineGymSource(gym_dir)
    clip = fg.clips[0]
    assert clip.class_id == 7 and clip.image_size == (640, 360) and clip.keypoints.shape == (30, 17, 2)
    np.testing.assert_allclose(clip.keypoints[:, 3], kp[:, COCO17.index("r_ankle")])  # converted to H36M

    data = ds.ClipWindows([amass, fg], window=16, fps_resample=30, corruption=CorruptionConfig())
    items = [data[i] for i in range(len(data))]
    am = [it for it in items if it["source"] == "amass"]
    fgi = [it for it in items if it["source"] == "finegym"]
    assert am and fgi
    assert am[0]["fps"] == pytest.approx(30.0) and am[0]["dt"] == pytest.approx(1 / 30)
    assert am[0]["has_3d"] and am[0]["pose3d"].shape == (16, 17, 3)
    np.testing.assert_allclose(am[0]["pose3d"][:, 0], 0, atol=1e-6)
    assert not fgi[0]["has_3d"] and torch.count_nonzero(fgi[0]["pose3d"]) == 0
    # FineGym detections are real: never corrupted again
    torch.testing.assert_close(fgi[0]["pose2d"], fgi[0]["pose2d_clean"])


def _fake_synth_shard(tmp_path):
    """A shard built from two real simulated views (kept tiny: one cheap motion)."""
    sim = synth.simulate_motion(21, "turn_jump")
    rng = np.random.default_rng(0)
    views = [synth.render_view(sim, rng, fps) for fps in (25, 50)]
    out = tmp_path / "synth"
    out.mkdir()
    np.savez_compressed(out / "shard_00000.npz", **synth.stack_clips(views))
    return out, views


def test_synth_windows_geometry_and_corruption(tmp_path):
    path, views = _fake_synth_shard(tmp_path)
    src = ds.SynthSource(path)
    assert [c.num_frames for c in src.clips] == [len(v["joints_cam"]) for v in views]
    data = ds.ClipWindows([src], window=16, stride=8, camera_aug=False)
    item = data[0]
    assert item["pose2d"].shape == (16, 17, 3) and item["pose2d_px"].shape == (16, 17, 2)
    assert item["valid"].all() and item["has_flight"] and item["class_id"] == synth.CLASSES.index("turn_jump")
    v = views[0]
    np.testing.assert_allclose(item["pose3d"].numpy(), v["joints_cam_rel"][:16], atol=1e-5)
    np.testing.assert_allclose(item["pose2d_px"].numpy(), v["keypoints_2d"][:16], atol=1e-3)
    W, H = v["image_size"]
    xy = (v["keypoints_2d"][:16] - [W / 2, H / 2]) / (max(W, H) / 2)
    np.testing.assert_allclose(item["pose2d"][..., :2].numpy(), xy, atol=1e-5)
    assert (item["pose2d"][..., 2] == 1).all()
    np.testing.assert_array_equal(item["flight"].numpy(), v["flight"][:16])

    # camera augmentation: a new camera, the same motion (bone lengths agree), still consistent 2D/3D
    aug = ds.ClipWindows([src], window=16, stride=8, camera_aug=True)[0]
    assert not torch.allclose(aug["pose3d"], item["pose3d"])
    bones = lambda p: torch.linalg.norm(p[:, 1:4] - p[:, 0:3], dim=-1)  # noqa: E731
    torch.testing.assert_close(bones(aug["pose3d"]), bones(item["pose3d"]), atol=1e-4, rtol=0)

    # the re-view cameras come from the given ranges: seen from above, the body's up axis points at the camera
    def up_in_camera(elevation):
        cam = CameraConfig(elevation_deg=(elevation, elevation), roll_deg=0.0)
        up = ds.ClipWindows([src], window=16, stride=8, camera=cam)[0]["pose3d"][:, 8].mean(0)  # pelvis → thorax
        return up / up.norm()
    assert float(up_in_camera(0.0)[1]) < -0.9                  # level camera: up is image-up (−y)
    assert float(up_in_camera(80.0)[2]) < -0.9                 # from above: up points back at the camera (−z)

    # corruption: deterministic per (seed, epoch, index), different across epochs, clean copy kept
    c1 = ds.ClipWindows([src], window=16, corruption=CorruptionConfig(), camera_aug=False, seed=3)
    c2 = ds.ClipWindows([src], window=16, corruption=CorruptionConfig(), camera_aug=False, seed=3)
    torch.testing.assert_close(c1[1]["pose2d"], c2[1]["pose2d"])
    torch.testing.assert_close(c1[1]["pose2d_clean"], data[1]["pose2d"])
    assert not torch.allclose(c1[1]["pose2d"], c1[1]["pose2d_clean"])
    before = c1[1]["pose2d"].clone()
    c1.set_epoch(1)
    assert not torch.allclose(c1[1]["pose2d"], before)


def test_severity_range_draws_each_items_strength(tmp_path):
    """severity (low, high): each item corrupted at its own strength from the range, so on average between
    the fixed severities at its ends; a fixed severity keeps its items as before; nonsense is refused."""
    path, _ = _fake_synth_shard(tmp_path)
    src = ds.SynthSource(path)

    def mean_error(severity, epochs=12):
        data = ds.ClipWindows([src], window=16, corruption=CorruptionConfig(), camera_aug=False, seed=5,
                              severity=severity)
        errors = []
        for epoch in range(epochs):
            data.set_epoch(epoch)
            for i in range(len(data)):
                item = data[i]
                errors.append(float((item["pose2d"][..., :2] - item["pose2d_clean"][..., :2]).norm(dim=-1).mean()))
        return np.mean(errors)
    weak, strong, ranged = mean_error(0.3), mean_error(3.0), mean_error((0.3, 3.0))
    assert weak < ranged < strong
    fixed = ds.ClipWindows([src], window=16, corruption=CorruptionConfig(), camera_aug=False, seed=5, severity=1)
    again = ds.ClipWindows([src], window=16, corruption=CorruptionConfig(), camera_aug=False, seed=5)
    torch.testing.assert_close(fixed[1]["pose2d"], again[1]["pose2d"])
    for bad in (-1.0, [2.0, 1.0], [0.0, 1.0], [1.0], "1", True):
        with pytest.raises(ValueError, match="severity must be"):
            ds.ClipWindows([src], window=16, severity=bad)


def test_short_clips_are_padded_and_marked(tmp_path):
    np.savez(tmp_path / "short.npz", joints=_walker(10, np.random.default_rng(2)), fps=25.0)
    data = ds.ClipWindows([ds.AMASSSource(tmp_path / "short.npz")], window=16)
    item = data[0]
    assert len(data) == 1 and item["valid"].sum() == 10 and item["pose3d"].shape == (16, 17, 3)
    batch = torch.utils.data.default_collate([item, item])
    assert batch["pose2d"].shape == (2, 16, 17, 3) and batch["fps"].shape == (2,)


def test_synth_source_mixes_several_sets(tmp_path):
    path, views = _fake_synth_shard(tmp_path)
    second = tmp_path / "synth_b"
    second.mkdir()
    (second / "shard_00000.npz").write_bytes((path / "shard_00000.npz").read_bytes())
    one = ds.SynthSource(path)
    both = ds.SynthSource([path, second / "shard_00000.npz"])
    assert len(both.clips) == 2 * len(one.clips) == 2 * len(views)
    with pytest.raises(FileNotFoundError, match="no synthetic shards"):
        ds.SynthSource(tmp_path / "empty_dir_that_is_missing")


def test_stage2_data_config_accepts_typed_sources(tmp_path):
    from training.stage2 import build_dataset

    path, _ = _fake_synth_shard(tmp_path)
    data, _ = build_dataset({"synth": {"path": str(path)}, "synth_b": {"type": "synth", "path": str(path),
                                                                        "weight": 2.0}}, 16, None, 1.0, 0)
    single, _ = build_dataset({"synth": {"path": str(path)}}, 16, None, 1.0, 0)
    assert len(data) == 2 * len(single)
    with pytest.raises(ValueError, match="unknown data source 'x'"):
        build_dataset({"x": {"path": str(path)}}, 16, None, 1.0, 0)
