"""The camera's own motion from the background (finephys_core/camera_motion.py), the Pose2D that carries it,
and the pose stack reading such a 2D as a static camera's."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from finephys_core import camera_motion as cm
from finephys_core.bench.moving_camera import render_frames
from finephys_core.bench.physics import filmed_detections, load_heldout
from finephys_core.sequence import Pose2D, PoseError, load_pose, save_pose


@pytest.fixture(scope="module")
def clip():
    """A held-out 25 fps salto whose athlete travels about 460 px across an 854×480 image."""
    return load_heldout()[0]


def _static_detections(clip) -> Pose2D:
    return Pose2D(clip["det_keypoints"], clip["det_scores"], tuple(int(v) for v in clip["image_size"]),
                  float(clip["fps"]))


def _filmed(clip, track: float, zoom: float) -> tuple[np.ndarray, np.ndarray, Pose2D]:
    """(frames, true maps into the first frame, the detections as that camera sees them)."""
    frames, true = render_frames(clip, track, zoom, seed=1)
    return frames, true, replace(_static_detections(clip),
                                 keypoints=filmed_detections(clip, track, zoom)["det_keypoints"])


def test_affine_helpers_round_trip():
    rng = np.random.default_rng(0)
    a = np.concatenate([np.eye(2)[None] * 1.3 + rng.normal(0, 0.1, (5, 2, 2)), rng.normal(0, 50, (5, 2, 1))], -1)
    b = np.concatenate([np.eye(2)[None] * 0.8 + rng.normal(0, 0.1, (5, 2, 2)), rng.normal(0, 50, (5, 2, 1))], -1)
    p = rng.normal(0, 100, (5, 17, 2))
    assert np.allclose(cm.apply_affine(cm.apply_affine(p, a), cm.invert_affine(a)), p)
    assert np.allclose(cm.apply_affine(p, cm.compose_affine(a, b)), cm.apply_affine(cm.apply_affine(p, b), a))


def test_the_bench_camera_pans_as_training_does(clip):
    """`bench --track` moves the detections as training's panning augmentation (camera.follow_athlete) does."""
    import torch

    from finephys_core.camera import follow_athlete

    pelvis = torch.from_numpy(clip["keypoints_2d"][:, :1].astype(np.float64))
    trained = follow_athlete(torch.from_numpy(clip["det_keypoints"].astype(np.float64)), pelvis, 0.7).numpy()
    assert np.abs(filmed_detections(clip, 0.7, 1.0)["det_keypoints"] - trained).max() < 1e-3
    zoomed = filmed_detections(clip, 0.0, 2.0)["det_keypoints"]
    centre = np.asarray(clip["image_size"]) / 2
    assert np.allclose(zoomed[-1], (clip["det_keypoints"][-1] - centre) * 2 + centre, atol=1e-3)
    assert np.allclose(zoomed[0], clip["det_keypoints"][0], atol=1e-4)


@pytest.mark.parametrize("track,zoom", [(1.0, 1.0), (0.5, 1.5)])
def test_estimate_follows_a_panning_and_zooming_camera(clip, track, zoom):
    frames, true, seen = _filmed(clip, track, zoom)
    calls = []
    maps, tracked = cm.estimate_camera_motion(frames, seen.keypoints, seen.scores, progress=calls.append)
    assert tracked.all() and len(calls) == len(frames)
    moved = cm.apply_affine(seen.keypoints.astype(np.float64), true) - seen.keypoints
    assert np.abs(moved).max() > 100                                   # the camera really moved
    error = np.linalg.norm(cm.apply_affine(seen.keypoints, maps) - cm.apply_affine(seen.keypoints, true), axis=-1)
    assert error.mean() < 0.5 and error.max() < 2.0
    # float frames in [0, 1] (ComfyUI's IMAGE) give the same answer
    maps_f, _ = cm.estimate_camera_motion(frames[:6].astype(np.float32) / 255, seen.keypoints[:6], seen.scores[:6])
    assert np.allclose(maps_f, maps[:6], atol=0.05)


def test_static_camera_gives_identity(clip):
    frames, _, seen = _filmed(clip, 0.0, 1.0)
    maps, tracked = cm.estimate_camera_motion(frames, seen.keypoints, seen.scores)
    assert tracked.all()
    assert np.abs(cm.apply_affine(seen.keypoints, maps) - seen.keypoints).max() < 0.2


def test_featureless_background_keeps_the_previous_camera(clip):
    frames = np.full((5, 120, 160, 3), 128, np.uint8)
    maps, tracked = cm.estimate_camera_motion(frames, np.zeros((5, 17, 2)), np.zeros((5, 17)))
    assert tracked[0] and not tracked[1:].any()
    assert np.allclose(maps, np.eye(2, 3))


def test_bad_frames_and_frame_counts_are_named():
    with pytest.raises(ValueError, match=r"each frame must have shape \(H, W, 3\); frame 0 has \(8, 8\)"):
        cm.estimate_camera_motion(np.zeros((4, 8, 8)), np.zeros((4, 17, 2)), np.ones((4, 17)))
    with pytest.raises(ValueError, match="has 3 frames but the images 4"):
        cm.estimate_camera_motion(np.zeros((4, 8, 8, 3)), np.zeros((3, 17, 2)), np.ones((3, 17)))


def test_frame_stride():
    assert cm.frame_stride(10, 10) == 1 and cm.frame_stride(10, 5) == 2 and cm.frame_stride(100, 34) == 3
    with pytest.raises(ValueError, match="no frame stride matches"):
        cm.frame_stride(10, 11)


def test_pose2d_checks_and_saves_its_camera_motion(tmp_path):
    kp, sc = np.zeros((3, 17, 2)), np.ones((3, 17))
    with pytest.raises(PoseError, match=r"camera_motion must have shape \(3, 2, 3\)"):
        Pose2D(kp, sc, (64, 64), camera_motion=np.zeros((2, 2, 3)))
    bad = np.tile(np.eye(2, 3), (3, 1, 1))
    bad[1, 0, 0] = np.nan
    with pytest.raises(PoseError, match="NaN"):
        Pose2D(kp, sc, (64, 64), camera_motion=bad)
    with pytest.raises(PoseError, match="cannot be inverted"):
        Pose2D(kp, sc, (64, 64), camera_motion=np.zeros((3, 2, 3)))
    motion = np.tile(np.eye(2, 3), (3, 1, 1))
    motion[:, 0, 2] = [0.0, -4.0, -9.5]
    pose = Pose2D(kp + 1, sc, (64, 64), camera_motion=motion)
    assert np.allclose(pose.stabilized().keypoints[:, 0, 0], [1.0, -3.0, -8.5])
    assert pose.stabilized().camera_motion is None and pose.to_h36m().camera_motion is not None
    for suffix in (".json", ".npz"):
        back = load_pose(save_pose(pose, tmp_path / f"p{suffix}"))
        assert np.allclose(back.camera_motion, motion)
    assert load_pose(save_pose(replace(pose, camera_motion=None), tmp_path / "s.json")).camera_motion is None


def test_pose_stack_reads_a_panning_clip_as_the_static_one(clip):
    """Lifting and fusing the detections of a panning, zooming camera with its true motion gives the static
    camera's 3D; the reprojection lands in the moving camera's frames."""
    from finephys_core.camera import DEFAULT_FIT_2D_ITERS
    from finephys_core.pose_model import default_pose_model
    from finephys_core.refine import refine_pose2d

    _, true, seen = _filmed(clip, 1.0, 1.3)
    static = replace(seen, keypoints=cm.apply_affine(seen.keypoints, true).astype(np.float32))
    model = default_pose_model()
    panned = refine_pose2d(replace(seen, camera_motion=true), model, fit_2d=DEFAULT_FIT_2D_ITERS)
    still = refine_pose2d(static, model, fit_2d=DEFAULT_FIT_2D_ITERS)
    ignored = refine_pose2d(seen, model, fit_2d=DEFAULT_FIT_2D_ITERS)
    assert np.abs(panned.dd.joints - still.dd.joints).max() < 2e-3
    assert np.abs(panned.fused.joints - still.fused.joints).max() < 2e-3
    assert np.abs(ignored.dd.joints - still.dd.joints).mean() > 5e-3          # the motion matters
    assert panned.fused.meta["camera_motion_compensated"] and not still.fused.meta["camera_motion_compensated"]
    back = cm.apply_affine(still.reprojected.keypoints, cm.invert_affine(true))
    assert np.abs(panned.reprojected.keypoints - back).max() < 0.5
    assert np.allclose(panned.reprojected.camera_motion, true)


def test_stabilized_frames_stand_still(clip):
    frames, true, _ = _filmed(clip, 1.0, 1.0)
    still = cm.stabilize_frames(frames[:8], true[:8])
    assert still.dtype == np.float32 and still.shape == frames[:8].shape
    # away from the athlete and the edges the background is where the first frame had it
    region = (slice(20, 60), slice(20, 60))
    assert np.abs(still[5][region] - frames[0][region] / 255.0).mean() < 0.03
    assert np.abs(frames[5][region] / 255.0 - frames[0][region] / 255.0).mean() > 0.05
    small = cm.stabilize_frames(frames[:8], true[:8], max_side=427)        # half size: the same picture
    assert small.shape == (8, 240, 427, 3)
    assert np.abs(small[5][10:30, 10:30] - still[5][20:60:2, 20:60:2]).mean() < 0.05
