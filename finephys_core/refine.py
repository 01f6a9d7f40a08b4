"""The pose pipeline everything calls: Pose2D → S_dd (lifter) → S_pp (PhysNet) → fused Ŝ + reprojection.

Numpy poses in, numpy poses out; torch runs without gradients with the models in eval mode.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from . import physics
from .camera import DEFAULT_FUSE_WEIGHT, fuse_poses
from .denoise2d import detection_agreement
from .lifting import lift_windows, mirror_averaged
from .pose_model import PoseModel, choose_prompt, choose_prompts
from .sequence import Pose2D, Pose3D, PoseError

# progress units reported by refine_pose2d: lift, PhysNet, fuse
REFINE_STEPS = 3


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` intra-op torch threads, restoring the previous count after (None: leave it).

    The pose models are tiny: on the shared 2-core machines one thread was 15× faster than two for a
    16-frame clip (68 vs 1039 ms median under load; OpenMP workers wait on descheduled siblings).
    """
    if n is None or n == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _checked_2d(pose2d: Pose2D) -> Pose2D:
    if not isinstance(pose2d, Pose2D):
        raise PoseError(f"expected a Pose2D; got {type(pose2d).__name__}")
    return pose2d.to_h36m().require_visible()


def lift_pose(pose2d: Pose2D, model: PoseModel, overlap: int | None = None, num_prompts: int = 1,
              prompt_per_window: bool = True, num_threads: int | None = 1, mirror_average: bool = True) -> Pose3D:
    """LiftICL3D: any-length 2D clip (any supported layout) → Pose3D S_dd (source 'dd'), metres; through the
    model's learned 2D front end first when it has one (:meth:`PoseModel.clean_2d`), whose agreement with
    each detected joint then rides along as ``agreement_2d`` for the fit to the 2D.

    Raises PoseError for a non-Pose2D or when no joint has a score above 0 ("no person detected").
    A 2D with ``camera_motion`` is lifted as the static camera of its first frame saw it
    (:meth:`Pose2D.stabilized`): the athlete's travel across the image is a cue the lifter reads.
    One frame is fine. ``num_prompts`` > 1 averages the lifts with the k nearest prompt pairs, chosen for each
    window (``prompt_per_window``, as training chooses per item) or once for the whole clip.
    ``mirror_average``: also lift the clip's mirror image and average the two (un-mirrored), the
    left↔right test-time augmentation of VideoPose3D/MotionBERT; it makes the lift exactly
    mirror-equivariant and makes S_dd 2.7–3.4 mm more accurate on the held-out set (v4, v5 weights) for 2× the
    lifter's work (the clip and its mirror image go through it as one batch).
    ``num_threads``: torch threads while lifting (see :func:`torch_threads`).
    ``overlap``: frames shared by consecutive lifter windows (None: :func:`lifting.default_overlap`).
    """
    pose2d = _checked_2d(pose2d).stabilized()
    query = torch.from_numpy(pose2d.normalized())
    model.eval()
    device = model.mean_prior.device

    def lift_one(q: torch.Tensor, prompt) -> torch.Tensor:
        return lift_windows(model.lifter, q.to(device), prompt, model.mean_prior, model.window, overlap)

    def lift(clips: torch.Tensor) -> torch.Tensor:  # (B, T, 17, 3) → (B, T, 17, 3)
        if prompt_per_window:
            return lift_one(clips, lambda wins: choose_prompts(model, wins, num_prompts))
        return torch.stack([lift_one(q, choose_prompt(model, q, k=num_prompts)) for q in clips])

    with torch.inference_mode(), torch_threads(num_threads):
        detected = query.to(device)
        query = model.clean_2d(detected)
        agreement = None if model.denoiser is None else detection_agreement(detected, query).cpu().numpy()
        s_dd = (mirror_averaged(lift, query[None]) if mirror_average else lift(query[None]))[0]
    joints = s_dd.cpu().numpy().astype(np.float32)
    return Pose3D(joints, fps=pose2d.fps, source="dd", image_size=pose2d.image_size,
                  meta={"trained": model.trained}, agreement_2d=agreement)


@dataclass
class RefineResult:
    """S_dd, S_pp, the fused Ŝ (with its fitted camera) and Ŝ reprojected to 2D pixels."""

    dd: Pose3D
    pp: Pose3D
    fused: Pose3D
    reprojected: Pose2D


def refine_pose2d(pose2d: Pose2D, model: PoseModel, fuse_weight: float = DEFAULT_FUSE_WEIGHT, frame_stride: int = 1,
                  progress: Callable[[int], None] | None = None, camera_model: str = "weak",
                  num_threads: int | None = 1, bones: str = "constant", fit_2d: int = 0,
                  gravity_weight: float = 0.0) -> RefineResult:
    """The whole pose stack on one clip. ``frame_stride``: see :func:`physics.refine_pose3d` (dt = stride/fps).

    progress, when given, is called with 1 after each of the :data:`REFINE_STEPS` stages.
    ``num_threads``: torch threads for the duration (see :func:`torch_threads`; None = torch's setting).
    ``bones``: 'constant' or 'free' bone lengths in the fused pose, ``fit_2d``: iterations of the test-time
    fit of Ŝ to the 2D, 0 = off; ``gravity_weight``: the body's size from its flight, static cameras only
    (all three: see :func:`camera.fuse_poses`).
    """
    step = progress or (lambda n: None)
    pose2d = _checked_2d(pose2d)
    with torch_threads(num_threads):
        dd = lift_pose(pose2d, model, num_threads=None)
        step(1)
        pp = physics.refine_pose3d(dd, model.physnet, frame_stride)
        step(1)
        fused, reprojected = fuse_poses(dd, pp, pose2d, fuse_weight, camera_model, bones=bones, fit_2d=fit_2d,
                                        gravity_weight=gravity_weight)
        step(1)
    return RefineResult(dd, pp, fused, reprojected)


def refined_arrays(pose2d: Pose2D, result: RefineResult) -> dict:
    """The refine output format (CLI, demo): pose3d_dd, pose3d_pp, pose3d (fused) (T,17,3) metres,
    pose2d_reproj (T,17,2) px, plus the detected scores (H36M order), image_size, fps, layout, camera JSON,
    and camera_motion (T,2,3) when the 2D has one (the camera JSON is then the first frame's static camera)."""
    h36m = pose2d.to_h36m()
    camera = result.fused.camera.to_dict() if result.fused.camera is not None else None
    return {"pose3d_dd": result.dd.joints, "pose3d_pp": result.pp.joints, "pose3d": result.fused.joints,
            "pose2d_reproj": result.reprojected.keypoints, "scores": h36m.scores,
            "image_size": np.asarray(h36m.image_size, np.int64), "fps": np.asarray(h36m.fps, np.float64),
            "layout": np.asarray("h36m17"), "camera": np.asarray(json.dumps(camera))} | (
        {} if h36m.camera_motion is None else {"camera_motion": h36m.camera_motion})
