import dataclasses
import json

import numpy as np
import pytest

from finephys_core.sequence import (Camera, Pose2D, Pose3D, PoseError, denormalize_screen, load_pose,
                                    normalize_screen, save_pose)
from finephys_core.skeleton import H36M17, HALPE26, bone_lengths, halpe_to_h36m, to_h36m


def _pose2d(T=5, layout="h36m17"):
    rng = np.random.default_rng(0)
    J = 26 if layout == "halpe26" else 17
    return Pose2D(rng.uniform(0, 600, (T, J, 2)), rng.uniform(0.2, 1, (T, J)), (640, 480), 30.0, layout)


def test_h36m_layout_facts():
    assert H36M17.parents == (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15)
    assert len(H36M17.bones) == 16
    flip = H36M17.flip_index
    assert flip[1] == 4 and flip[4] == 1 and flip[13] == 16 and flip[0] == 0
    assert HALPE26.num_joints == len(HALPE26.parents) == 26


def test_mirror_swaps_sides_and_negates_x_for_numpy_and_torch():
    import torch

    pose = np.arange(17 * 3, dtype=np.float32).reshape(17, 3)
    m = H36M17.mirror(pose)
    assert m[4].tolist() == [-3.0, 4.0, 5.0] and m[1].tolist() == [-12.0, 13.0, 14.0]   # r_hip ↔ l_hip
    assert m[0].tolist() == [0.0, 1.0, 2.0]                                              # pelvis stays
    assert pose[4].tolist() == [12.0, 13.0, 14.0]                                        # input untouched
    np.testing.assert_array_equal(H36M17.mirror(m), pose)
    t = torch.from_numpy(pose)[None].repeat(2, 1, 1)
    np.testing.assert_array_equal(H36M17.mirror(t)[1].numpy(), m)
    with pytest.raises(ValueError, match="17"):
        H36M17.mirror(np.zeros((5, 16, 3)))


def test_halpe_uses_its_own_hip_neck_head():
    kp = np.zeros((1, 26, 2))
    kp[0, 19] = [10, 20]   # hip
    kp[0, 18] = [10, 5]    # neck
    kp[0, 17] = [10, 1]    # head
    out, sc = halpe_to_h36m(kp, np.ones((1, 26)))
    np.testing.assert_allclose(out[0, 0], [10, 20])
    np.testing.assert_allclose(out[0, 8], [10, 5])
    np.testing.assert_allclose(out[0, 7], [10, 12.5])
    np.testing.assert_allclose(out[0, 10], [10, 1])


def test_bone_lengths_of_unit_offsets():
    joints = np.zeros((17, 3))
    for j, p in enumerate(H36M17.parents):
        if p >= 0:
            joints[j] = joints[p] + [0, 0, 1]
    np.testing.assert_allclose(bone_lengths(joints), np.ones(16))


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_pose2d_round_trip(tmp_path, suffix):
    pose = _pose2d()
    back = load_pose(save_pose(pose, tmp_path / f"p{suffix}"))
    np.testing.assert_allclose(back.keypoints, pose.keypoints, rtol=1e-6)
    np.testing.assert_allclose(back.scores, pose.scores, rtol=1e-6)
    assert back.image_size == (640, 480) and back.fps == 30.0 and back.layout == "h36m17"


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_pose3d_round_trip_with_camera(tmp_path, suffix):
    cam = Camera(1000.0, (320.0, 240.0), np.ones((4, 3), np.float32))
    pose = Pose3D(np.random.default_rng(1).normal(size=(4, 17, 3)), 50.0, "fused", cam, (640, 480), {"k": 1})
    back = load_pose(save_pose(pose, tmp_path / f"p{suffix}"))
    np.testing.assert_allclose(back.joints, pose.joints, rtol=1e-6)
    assert back.source == "fused" and back.meta == {"k": 1} and back.camera.focal == 1000.0
    np.testing.assert_allclose(back.camera.translation, 1.0)
    assert back.agreement_2d is None
    agreement = np.random.default_rng(2).uniform(size=(4, 17))
    again = load_pose(save_pose(dataclasses.replace(pose, agreement_2d=agreement), tmp_path / f"a{suffix}"))
    np.testing.assert_allclose(again.agreement_2d, agreement, rtol=1e-6)


def test_pose3d_checks_its_agreement_2d():
    joints = np.zeros((4, 17, 3))
    assert Pose3D(joints, agreement_2d=np.full((4, 17), 1.5)).agreement_2d.max() == 1.0
    with pytest.raises(PoseError, match="agreement_2d has 3 frames, joints 4"):
        Pose3D(joints, agreement_2d=np.ones((3, 17)))
    with pytest.raises(PoseError, match="agreement_2d must have shape"):
        Pose3D(joints, agreement_2d=np.ones((4, 16)))
    with pytest.raises(PoseError, match="agreement_2d contains NaN"):
        Pose3D(joints, agreement_2d=np.full((4, 17), np.nan))


def test_nan_keypoints_become_missing_joints():
    kp = np.ones((3, 17, 2))
    kp[1, 4] = np.nan
    pose = Pose2D(kp, np.ones((3, 17)), (100, 100))
    assert pose.scores[1, 4] == 0 and np.isfinite(pose.keypoints).all() and pose.scores[0, 4] == 1


@pytest.mark.parametrize("kp,sc,msg", [
    (np.zeros((3, 16, 2)), np.zeros((3, 16)), "keypoints must have shape"),
    (np.zeros((3, 17, 3)), np.zeros((3, 17)), "keypoints must have shape"),
    (np.zeros((0, 17, 2)), np.zeros((0, 17)), "no frames"),
    (np.zeros((3, 17, 2)), np.zeros((4, 17)), "3 frames but scores have 4"),
])
def test_pose2d_shape_errors(kp, sc, msg):
    with pytest.raises(PoseError, match=msg):
        Pose2D(kp, sc, (100, 100))


def test_pose3d_rejects_nan_and_bad_source():
    j = np.zeros((2, 17, 3))
    j[0, 0, 0] = np.nan
    with pytest.raises(PoseError, match="NaN"):
        Pose3D(j)
    with pytest.raises(PoseError, match="source"):
        Pose3D(np.zeros((2, 17, 3)), source="magic")


def test_no_person_is_a_clear_error():
    with pytest.raises(PoseError, match="no person detected"):
        Pose2D(np.zeros((4, 17, 2)), np.zeros((4, 17)), (64, 64)).require_visible()


def test_screen_normalisation_keeps_aspect_and_inverts():
    kp = np.array([[[0.0, 0.0], [640.0, 480.0], [320.0, 240.0]]])
    out = normalize_screen(kp, np.ones((1, 3)), (640, 480))
    np.testing.assert_allclose(out[0, :, :2], [[-1, -0.75], [1, 0.75], [0, 0]])
    np.testing.assert_allclose(denormalize_screen(out[..., :2], (640, 480)), kp)


def test_coco_pose_converts_to_h36m():
    pose = _pose2d(layout="coco17").to_h36m()
    assert pose.layout == "h36m17" and pose.keypoints.shape == (5, 17, 2)
    kp, sc = to_h36m(pose.keypoints, pose.scores, "h36m17")
    np.testing.assert_array_equal(kp, pose.keypoints)


def test_bad_file_kinds(tmp_path):
    with pytest.raises(PoseError, match=".npz or .json"):
        save_pose(_pose2d(), tmp_path / "x.txt")
    (tmp_path / "x.json").write_text(json.dumps({"foo": 1}))
    with pytest.raises(PoseError, match="not a FinePhys pose file"):
        load_pose(tmp_path / "x.json")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(PoseError, match="cannot read"):
        load_pose(tmp_path / "broken.npz")
    with pytest.raises(FileNotFoundError):
        load_pose(tmp_path / "missing.npz")


def test_cli_refine_output_loads_as_fused_pose3d(tmp_path):
    joints = np.random.default_rng(2).normal(size=(6, 17, 3)).astype(np.float32)
    np.savez(tmp_path / "out.npz", pose3d_dd=joints + 1, pose3d_pp=joints - 1, pose3d=joints,
             pose2d_reproj=np.zeros((6, 17, 2)), fps=np.asarray(50.0), layout=np.asarray("h36m17"),
             camera=np.asarray('{"focal": 1}'))
    pose = load_pose(tmp_path / "out.npz")
    assert isinstance(pose, Pose3D) and pose.source == "fused" and pose.fps == 50.0
    np.testing.assert_array_equal(pose.joints, joints)
