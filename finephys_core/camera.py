"""Fusion F(S_dd, S_pp) and the projection P back to 2D (paper eq. 19–20, DESIGN.md §4 FusePoses).

The camera is not learned: it is fitted in closed form to the detected 2D by weighted least squares, and
the fit is plain differentiable torch, so stage 3 trains through ``L2D = Σ‖P(Ŝ) − S2D‖²`` with gradients
reaching Ŝ both through the projection and through the fitted camera.

Two camera models, both working in whatever 2D units the keypoints are in (pixels here):

* weak perspective (default): ``x_tj = s · X_tj[:2] + t_t`` with ONE scale per clip and one 2D
  translation per frame. One scale keeps the body size steady (a single bad frame cannot shrink or grow
  the skeleton) and gymnastics footage is far-camera; the per-frame translation follows the performer
  (and a panning camera). The test-time 2D fit gives each frame its own scale s_t, kept smooth, so it
  also follows a zooming (broadcast) camera; its bones are rigid, so a bad frame still cannot resize the body.
* perspective with a known focal length: ``x_tj = f · (X_tj + T_t)[:2] / (X_tj + T_t)[2] + c`` with a
  3D root translation T_t per frame (linear least squares after multiplying out the depth).

Frames whose weights are all zero (nobody detected) get a translation interpolated linearly from the
nearest fitted frames (held constant past the ends); a clip of one frame works.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import Tensor

from .camera_motion import apply_affine, invert_affine
from .gravity import gravity_size_factor
from .sequence import Camera, Pose2D, Pose3D, PoseError
from .skeleton import H36M17

# Depth (metres) at which a weak-perspective fit is written as a pinhole sequence.Camera: far enough that
# the pinhole projection of a body (±1 m deep) differs from the weak one by < 0.1 %.
WEAK_DEPTH_M = 1000.0
# Nearest root depth (metres) a fitted pinhole camera may put the performer at.
MIN_ROOT_DEPTH_M = 0.1


class WeakPerspective(NamedTuple):
    scale: Tensor        # (...,) 2D units per metre, one per clip, or (..., T) one per frame
    translation: Tensor  # (..., T, 2) 2D position of the root per frame

    def frame_scale(self) -> Tensor:
        """(..., T) the scale of every frame, whether the camera has one per clip or one per frame."""
        per_clip = self.scale.ndim == self.translation.ndim - 2
        return (self.scale[..., None] if per_clip else self.scale).expand(self.translation.shape[:-1])


class Perspective(NamedTuple):
    focal: Tensor        # (...,) pixels
    center: Tensor       # (..., 2) principal point
    translation: Tensor  # (..., T, 3) metres, root in camera coordinates per frame


# Weight of S_pp in the pipeline's fusion. The paper takes the mean (0.5); with our trained weights more
# weight on S_pp is better. Validation fused MPJPE (mm) at 0.5 / 0.6 / 0.7 / 0.8 / 0.9: v6 88.1 / 87.6 / 87.3 /
# 87.3 / 87.4; v8 83.8 / 83.6 / 83.5 / 83.5 / 83.6; v9 81.6 / 81.3 / 81.2 / 81.1 / 81.2; v10 76.75 / 76.72 /
# 76.77 / 76.86 at 0.5–0.8 (held-out best at 0.7); v11 76.33 / 76.33 / 76.39 / 76.50 at 0.5–0.8
# (held-out best at 0.6 by 0.07 mm); v12 77.54 / 77.49 / 77.48 / 77.53 (held-out 84.45 / 84.44 / 84.49 / 84.57);
# v13 76.68 / 76.67 / 76.71 / 76.84 (held-out 80.18 / 80.17 / 80.25 / 80.41); v15 (shipped) 58.32 / 58.13 /
# 58.02 / 57.99, with the 2D fit 57.60 / 57.41 / 57.26 / 57.17: flat within 0.1 mm, so the default stays 0.7.
# v19, fused + fit on 240 clips of 120 held-out-type motions, 0.5–0.9: 51.07 / 50.98 / 50.93 / 50.90 / 50.90.
DEFAULT_FUSE_WEIGHT = 0.7

# Iterations of the test-time fit of Ŝ to the detected 2D (:func:`fit_to_keypoints`) where users run the
# pipeline (nodes, CLI, demo); the library's own default is 0, the paper's fusion. v13, validation fused
# MPJPE 76.7 → 72.3 mm, held-out 80.1 / 80.3 → 76.7 / 75.2 at 25 / 50 fps, for ~0.2–0.5 s per clip on a CPU.
DEFAULT_FIT_2D_ITERS = 150

# Weight of the fit's pull towards the fused pose (metres², per joint and frame). Chosen on validation:
# v11–v13 were best at 0.5 (between 0.3 and 1); v15, whose lift is far better, at 1.0 (fused + fit 57.26 mm at
# 0.5, 56.85 at 1.0, 57.06 at 2.0; held-out 58.30 / 56.86 → 57.57 / 56.66 at 25 / 50 fps); v19 on 240 clips of
# 120 held-out-type motions 50.83 / 50.93 / 51.28 at 0.5 / 1 / 2.
DEFAULT_FIT_PRIOR = 1.0

# Weight of the 2D fit's penalty on frame-to-frame changes of the log weak-perspective scale. Its own scale
# per frame lets the fit follow a zooming camera. v12, held-out fused + fit MPJPE (mm, frame-weighted over
# 25 and 50 fps) with each clip's 2D zoomed 1 → 1.5× over its length (`bench physics --zoom 1.5`): one scale
# per clip 87.4; weights 10 / 100 / 1000: 85.8 / 86.3 / 87.3. Static cameras: one scale 83.04; 83.05 / 83.01 /
# 83.64 (Adam meets the stiff coupling of 1000 badly). Validation, static: 76.20 one scale, 76.14 at 10.
DEFAULT_SCALE_SMOOTH = 10.0


def fuse(s_dd: Tensor, s_pp: Tensor, weight: float = 0.5) -> Tensor:
    """Ŝ = (1 − w) S_dd + w S_pp (the paper evaluates the mean, w = 0.5). Any matching shapes."""
    if not 0.0 <= float(weight) <= 1.0:
        raise ValueError(f"fuse weight must be in [0, 1]; got {weight}")
    if s_dd.shape != s_pp.shape:
        raise ValueError(f"S_dd {tuple(s_dd.shape)} and S_pp {tuple(s_pp.shape)} must have the same shape")
    return (1.0 - weight) * s_dd + weight * s_pp


BONE_MODES = ("constant", "free")
_PARENTS, _CHILDREN = (list(v) for v in zip(*H36M17.bones))


def _bones_above() -> Tensor:
    """(17, 16): entry (j, b) is 1 when bone b lies on the chain from the pelvis to joint j."""
    above = torch.zeros(17, 16)
    for b, (p, c) in enumerate(zip(_PARENTS, _CHILDREN)):   # parents come before their children in H36M-17
        above[c] = above[p]
        above[c, b] = 1.0
    return above


_BONES_ABOVE = _bones_above()


def bone_vectors(joints: Tensor) -> Tensor:
    """(..., 17, 3) H36M-17 joints → (..., 16, 3) child − parent, in ``H36M17.bones`` order."""
    return joints[..., _CHILDREN, :] - joints[..., _PARENTS, :]


def constant_bone_lengths(joints: Tensor, lengths: Tensor | None = None) -> Tensor:
    """Re-pose (..., T, 17, 3) H36M-17 joints with every bone at one length for the whole clip.

    Each bone keeps its direction in every frame; its length becomes ``lengths`` (..., 16), in
    ``H36M17.bones`` order, or by default its median over the clip (robust to a few bad frames). Joints are
    placed from the pelvis outward, so the pelvis stays put. Limbs of a body are rigid; the lifter and PhysNet
    are free to stretch them, and their mean stretches them a little more. Differentiable.
    """
    if joints.ndim < 3 or joints.shape[-2:] != (17, 3):
        raise ValueError(f"joints must be (..., T, 17, 3); got {tuple(joints.shape)}")
    bones = bone_vectors(joints)                                                  # (..., T, 16, 3)
    length = bones.norm(dim=-1, keepdim=True)
    if lengths is None:
        lengths = length.median(dim=-3).values[..., 0]
    unit = bones / length.clamp_min(1e-9)
    return joints_from_bones(joints[..., :1, :], unit * lengths[..., None, :, None])


def joints_from_bones(root: Tensor, bones: Tensor) -> Tensor:
    """Inverse of :func:`bone_vectors`: the root (..., 1, 3) and bones (..., 16, 3) → joints (..., 17, 3),
    placed from the root outward."""
    above = _BONES_ABOVE.to(device=bones.device, dtype=bones.dtype)
    return root + torch.einsum("jb,...bc->...jc", above, bones)


def _check_fit_inputs(joints3d: Tensor, keypoints2d: Tensor, weights: Tensor) -> None:
    if joints3d.ndim < 3 or joints3d.shape[-1] != 3:
        raise ValueError(f"joints3d must be (..., T, J, 3); got {tuple(joints3d.shape)}")
    if keypoints2d.shape != joints3d.shape[:-1] + (2,):
        raise ValueError(f"keypoints2d must be {tuple(joints3d.shape[:-1]) + (2,)}; got "
                         f"{tuple(keypoints2d.shape)}")
    if weights.shape != joints3d.shape[:-1]:
        raise ValueError(f"weights must be {tuple(joints3d.shape[:-1])}; got {tuple(weights.shape)}")


def _fill_invalid(values: Tensor, valid: Tensor) -> Tensor:
    """(..., T, D) values with rows where ``valid`` (..., T) is False replaced by linear interpolation
    between the nearest valid rows (nearest row past the ends; 0 when no row is valid). Differentiable."""
    T = values.shape[-2]
    idx = torch.arange(T, device=values.device).expand(valid.shape)
    prev = torch.where(valid, idx, -1).cummax(-1).values
    nxt = torch.where(valid, idx, T).flip(-1).cummin(-1).values.flip(-1)
    has_prev, has_next = prev >= 0, nxt < T
    lo = torch.where(has_prev, prev, nxt).clamp(0, T - 1)
    hi = torch.where(has_next, nxt, prev).clamp(0, T - 1)
    span = (hi - lo).clamp_min(1).to(values.dtype)
    alpha = ((idx - lo).to(values.dtype) / span).clamp(0, 1)[..., None]
    gather = lambda i: values.gather(-2, i[..., None].expand(values.shape))  # noqa: E731
    filled = gather(lo) * (1 - alpha) + gather(hi) * alpha
    any_valid = valid.any(-1, keepdim=True)[..., None]
    filled = torch.where(any_valid, filled, torch.zeros_like(filled))
    return torch.where(valid[..., None], values, filled)


def fit_camera(joints3d: Tensor, keypoints2d: Tensor, weights: Tensor, eps: float = 1e-8) -> WeakPerspective:
    """Weighted least-squares weak perspective: one scale per clip, one translation per frame.

    joints3d (..., T, J, 3) metres; keypoints2d (..., T, J, 2); weights (..., T, J) ≥ 0 (scores).
    Minimises Σ_tj w_tj ‖s·X_tj[:2] + t_t − x_tj‖². Closed form: t_t = x̄_t − s·X̄_t (weighted frame means),
    s = Σ w⟨X − X̄, x − x̄⟩ / Σ w‖X − X̄‖², floored at 0 (a mirrored fit gives s = 0, not a flip).
    """
    _check_fit_inputs(joints3d, keypoints2d, weights)
    w = weights.clamp_min(0)[..., None]
    X = joints3d[..., :2]
    wsum = w.sum(-2, keepdim=True)
    Xm = (w * X).sum(-2, keepdim=True) / wsum.clamp_min(eps)
    xm = (w * keypoints2d).sum(-2, keepdim=True) / wsum.clamp_min(eps)
    dX, dx = X - Xm, keypoints2d - xm
    num = (w * dX * dx).sum((-3, -2, -1))
    den = (w * dX * dX).sum((-3, -2, -1))
    scale = (num / den.clamp_min(eps)).clamp_min(0)
    trans = (xm - scale[..., None, None, None] * Xm).squeeze(-2)
    return WeakPerspective(scale, _fill_invalid(trans, wsum[..., 0, 0] > 0))


def fit_perspective(joints3d: Tensor, keypoints2d: Tensor, weights: Tensor, focal, center,
                    min_depth: float = MIN_ROOT_DEPTH_M) -> Perspective:
    """Weighted least-squares root translation per frame for a pinhole camera of known focal and centre.

    Multiplying out the depth, each visible joint gives two equations linear in T = (tx, ty, tz):
    f·tx − u_x·tz = u_x·Z − f·X (same for y), u = x − c. Frames with fewer than 2 weighted joints are
    interpolated. focal: float or (...,); center: (2,) or (..., 2). Depth is floored at ``min_depth``.
    """
    _check_fit_inputs(joints3d, keypoints2d, weights)
    lead = joints3d.shape[:-3]
    f = torch.as_tensor(focal, dtype=joints3d.dtype, device=joints3d.device).expand(lead)
    c = torch.as_tensor(center, dtype=joints3d.dtype, device=joints3d.device).expand(lead + (2,))
    fb = f[..., None, None, None]
    u = keypoints2d - c[..., None, None, :]
    zeros = torch.zeros_like(u[..., 0])
    A = torch.stack([                                                   # (..., T, J, 2, 3)
        torch.stack([fb[..., 0].expand_as(zeros), zeros, -u[..., 0]], -1),
        torch.stack([zeros, fb[..., 0].expand_as(zeros), -u[..., 1]], -1)], -2)
    b = u * joints3d[..., 2:3] - fb * joints3d[..., :2]                 # (..., T, J, 2)
    w = weights.clamp_min(0)[..., None, None]
    AtA = (A.transpose(-1, -2) @ (w * A)).sum(-3)                       # (..., T, 3, 3)
    Atb = (A.transpose(-1, -2) @ (w * b[..., None])).sum(-3)            # (..., T, 3, 1)
    valid = (weights > 0).sum(-1) >= 2
    ridge = 1e-9 * AtA.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(1e-12)[..., None, None]
    eye = torch.eye(3, dtype=AtA.dtype, device=AtA.device)
    AtA = torch.where(valid[..., None, None], AtA + ridge * eye, eye)
    trans = torch.linalg.solve(AtA, Atb)[..., 0]
    trans = _fill_invalid(trans, valid)
    trans = torch.cat([trans[..., :2], trans[..., 2:].clamp_min(min_depth)], -1)
    return Perspective(f, c, trans)


def follow_athlete(points: Tensor, pelvis: Tensor, share) -> Tensor:
    """Image points (..., T, J, 2) as a camera panning after the athlete sees them: ``share`` (a number or
    (...,) per clip; 1 = the athlete stays put) of the pelvis's travel (..., T, 1, 2) from its mean over the
    clip is taken out of every frame. The panning camera of training's augmentation (``bench --track`` moves the
    detections the same way, in numpy: :func:`bench.moving_camera.camera_maps`)."""
    share = torch.as_tensor(share, dtype=points.dtype)
    return points - share[..., None, None, None] * (pelvis - pelvis.mean(-3, keepdim=True))


def project(joints3d: Tensor, camera: WeakPerspective | Perspective, min_depth: float = 1e-3) -> Tensor:
    """P: (..., T, J, 3) metres → (..., T, J, 2) through a fitted camera. Differentiable."""
    if isinstance(camera, WeakPerspective):
        return camera.frame_scale()[..., None, None] * joints3d[..., :2] + camera.translation[..., None, :]
    if isinstance(camera, Perspective):
        p = joints3d + camera.translation[..., None, :]
        xy = p[..., :2] / p[..., 2:].clamp_min(min_depth)
        return camera.focal[..., None, None, None] * xy + camera.center[..., None, None, :]
    raise TypeError(f"camera must be WeakPerspective or Perspective; got {type(camera).__name__}")


def fit_to_keypoints(joints3d: Tensor, keypoints2d: Tensor, weights: Tensor, iters: int = 150,
                     rigid: bool = True, prior: float = DEFAULT_FIT_PRIOR, smooth: float = 0.3, robust_m: float = 0.1,
                     lr: float = 0.01, progress: Callable[[int], None] | None = None,
                     focal: float | None = None, center=None,
                     scale_smooth: float | None = DEFAULT_SCALE_SMOOTH) -> tuple[Tensor, WeakPerspective | Perspective]:
    """Test-time fit of a root-relative 3D clip (..., T, J, 3) metres to its detected 2D (..., T, J, 2) with
    weights (..., T, J); J = 17 (H36M-17) when ``rigid``. Returns (fitted joints, their camera).

    Adam over the joints, weak-perspective scales s_t and translations t_t (started at :func:`fit_camera`)
    minimises Σ w·ρ(‖P(Y) − x‖ / s) + prior·‖Y − X‖² + smooth·‖Y_{t+1} − 2Y_t + Y_{t−1}‖²
    + scale_smooth·Σ_t (log s_{t+1} − log s_t)², in metres, with ρ the Geman–McClure loss of scale
    ``robust_m`` (quadratic for small residuals, bounded for wrong detections). One scale per frame follows a
    zooming camera; ``scale_smooth`` None keeps one scale per clip. With ``rigid`` every H36M-17 bone keeps
    its median length in X, so the 2D fixes how far each bone points towards the camera — the depth the
    lifter has to guess. Eq. 20's L2D, optimised per clip instead of trained. Runs with gradients even under
    inference mode; returns detached tensors. With ``focal`` (pixels) and ``center`` (2,) P is that pinhole
    camera instead, with a 3D root translation per frame (started at :func:`fit_perspective`) and residuals
    in metres at each frame's root depth. ``iters`` ≤ 0, or no usable 2D: the joints unchanged and the
    closed-form camera. ``progress``, when given, is called with 1 after each iteration (it may raise to
    interrupt).
    """
    _check_fit_inputs(joints3d, keypoints2d, weights)
    with torch.inference_mode(False), torch.enable_grad():
        X = joints3d.detach().double()
        kp = torch.nan_to_num(keypoints2d.detach().double())
        w = torch.where(keypoints2d.isfinite().all(-1), weights.detach().double().clamp_min(0), 0.0)
        weak = fit_camera(X, kp, w)
        usable = bool(torch.isfinite(weak.scale).all() and (weak.scale > 0).all())
        if iters <= 0 or not usable:
            return joints3d, (weak if focal is None else fit_perspective(X, kp, w, focal, center))
        lengths = bone_vectors(X).norm(dim=-1).median(dim=-2).values if rigid else None
        pose = lambda Z: constant_bone_lengths(Z, lengths) if rigid else Z  # noqa: E731
        Z = X.clone().requires_grad_()
        camera, px_per_m, camera_penalty, variables = _fit_camera_variables(X, kp, w, weak, focal, center,
                                                                            scale_smooth)
        optimizer = torch.optim.Adam([Z, *variables], lr=lr)
        c2 = robust_m ** 2
        for _ in range(iters):
            optimizer.zero_grad()
            Y = pose(Z)
            r2 = ((project(Y, camera()) - kp) ** 2).sum(-1) / px_per_m() ** 2
            loss = (c2 * (w * r2 / (r2 + c2))).sum() + prior * ((Y - X) ** 2).sum() + camera_penalty()
            if Y.shape[-3] > 2:
                loss = loss + smooth * ((Y[..., 2:, :, :] - 2 * Y[..., 1:-1, :, :] + Y[..., :-2, :, :]) ** 2).sum()
            loss.backward()
            optimizer.step()
            if progress is not None:
                progress(1)
        with torch.no_grad():
            fitted = camera()
            return pose(Z).to(joints3d.dtype), type(fitted)(*(v.detach() for v in fitted))


def _fit_camera_variables(X: Tensor, kp: Tensor, w: Tensor, weak: WeakPerspective, focal, center,
                          scale_smooth: float | None):
    """The camera :func:`fit_to_keypoints` moves with the pose: (camera(), pixels per metre at the root
    (..., T, 1), the camera's penalty(), its tensors to optimise). Weak perspective: log-scales
    (one per frame, or one per clip when ``scale_smooth`` is None) and 2D translations; a pinhole of known
    ``focal``: 3D root translations."""
    if focal is None:
        trans = weak.translation.clone().requires_grad_()
        per_frame = scale_smooth is not None
        log_scale = (weak.frame_scale() if per_frame else weak.scale).log().clone().requires_grad_()
        camera = lambda: WeakPerspective(log_scale.exp(), trans)  # noqa: E731
        penalty = (lambda: scale_smooth * (log_scale.diff(dim=-1) ** 2).sum()) if per_frame else (lambda: 0.0)
        return camera, lambda: camera().frame_scale()[..., None], penalty, [log_scale, trans]
    start = fit_perspective(X, kp, w, focal, center)
    trans = start.translation.requires_grad_()
    return (lambda: Perspective(start.focal, start.center, trans),
            lambda: start.focal[..., None, None] / trans[..., 2:].clamp_min(MIN_ROOT_DEPTH_M), lambda: 0.0, [trans])


def rescale_body(joints3d: Tensor, camera: WeakPerspective | Perspective, factor: float):
    """Root-relative joints (..., T, J, 3) × ``factor`` and the camera that projects them where it projected
    the original joints: the body's size in metres changes, its image does not."""
    if isinstance(camera, Perspective):
        return joints3d * factor, camera._replace(translation=camera.translation * factor)
    return joints3d * factor, camera._replace(scale=camera.scale / factor)


# ----------------------------------------------------------------------------- numpy / Pose wrappers

def to_sequence_camera(camera: WeakPerspective | Perspective, image_size) -> Camera:
    """A fitted (unbatched) camera as a pinhole :class:`sequence.Camera` in pixels and metres.

    Weak perspective becomes a pinhole centred on the image with focal s·depth at depth :data:`WEAK_DEPTH_M`
    (s: the largest frame scale); a frame of smaller scale s_t sits proportionally farther, at depth·s/s_t.
    """
    if isinstance(camera, Perspective):
        return Camera(float(camera.focal), tuple(float(v) for v in camera.center),
                      camera.translation.detach().cpu().numpy().astype(np.float32))
    s_t = np.maximum(camera.frame_scale().detach().cpu().numpy().astype(np.float64), 1e-8)   # (T,)
    focal = float(s_t.max()) * WEAK_DEPTH_M
    center = np.array([image_size[0] / 2.0, image_size[1] / 2.0])
    t = camera.translation.detach().cpu().numpy().astype(np.float64)
    trans = np.concatenate([(t - center) / s_t[:, None], focal / s_t[:, None]], -1)
    return Camera(focal, (float(center[0]), float(center[1])), trans.astype(np.float32))


def project_pinhole(joints: np.ndarray, camera: Camera) -> np.ndarray:
    """(T, J, 3) root-relative metres → (T, J, 2) pixels through a :class:`sequence.Camera`."""
    p = np.asarray(joints, np.float64) + np.asarray(camera.translation, np.float64)[:, None, :]
    xy = p[..., :2] / np.maximum(p[..., 2:], 1e-6)
    return (camera.focal * xy + np.asarray(camera.center, np.float64)).astype(np.float32)


def fuse_poses(dd: Pose3D, pp: Pose3D, detected: Pose2D, weight: float = DEFAULT_FUSE_WEIGHT,
               camera_model: str = "weak", focal: float | None = None,
               bones: str = "constant", fit_2d: int = 0,
               progress: Callable[[int], None] | None = None,
               gravity_weight: float = 0.0) -> tuple[Pose3D, Pose2D]:
    """Ŝ = fuse(S_dd, S_pp), a camera fitted to ``detected`` (weighted by its scores, times S_dd's
    ``agreement_2d`` when it has one), Ŝ reprojected.

    ``weight``: of S_pp (:data:`DEFAULT_FUSE_WEIGHT`; the paper's mean is 0.5). ``bones``: 'constant'
    (default) gives Ŝ one length per bone for the clip (:func:`constant_bone_lengths`); 'free' is the
    paper's plain weighted mean. ``fit_2d`` > 0: that many iterations of :func:`fit_to_keypoints` fit Ŝ and
    the camera together to ``detected`` (rigid with constant bones), calling ``progress`` with 1 after each
    iteration; 0, the default, is the paper's fusion with the closed-form camera. ``gravity_weight`` > 0, for a
    static camera only (:data:`gravity.STATIC_CAMERA_GRAVITY_WEIGHT`): after a fit, the body's size is mixed
    with the size at which its flight falls at g (:func:`gravity.gravity_size_factor`); the camera is rescaled
    with it, so the reprojection does not move. 0, the default, keeps the lifted size.

    A ``detected`` with ``camera_motion`` is fitted as the static camera of its first frame saw it
    (:meth:`Pose2D.stabilized`); the Camera is that static one, and the reprojection is mapped back into every
    frame's pixels and keeps the camera motion.

    Returns (Pose3D source 'fused' with its Camera, Pose2D of the reprojection in pixels, H36M layout,
    score 1 for every joint: the reprojection is defined everywhere, missing detections included).
    camera_model 'weak' (default) or 'perspective' (focal in pixels; default the longer image side).
    """
    motion = detected.camera_motion
    detected = detected.to_h36m().stabilized()
    if not dd.num_frames == pp.num_frames == detected.num_frames:
        raise PoseError(f"frame counts differ: S_dd {dd.num_frames}, S_pp {pp.num_frames}, "
                        f"2D {detected.num_frames}")
    if bones not in BONE_MODES:
        raise ValueError(f"bones must be one of {BONE_MODES}; got {bones!r}")
    fused = fuse(torch.from_numpy(dd.joints).double(), torch.from_numpy(pp.joints).double(), weight)
    if bones == "constant":
        fused = constant_bone_lengths(fused)
    kp = torch.from_numpy(detected.keypoints).double()
    sc = torch.from_numpy(detected.scores).double()
    if dd.agreement_2d is not None:
        sc = sc * torch.from_numpy(dd.agreement_2d).double()
    size = detected.image_size
    if camera_model not in ("weak", "perspective"):
        raise ValueError(f"camera_model must be 'weak' or 'perspective'; got {camera_model!r}")
    pinhole = ((float(focal or max(size)), (size[0] / 2.0, size[1] / 2.0)) if camera_model == "perspective"
               else (None, None))
    fused, cam = fit_to_keypoints(fused, kp, sc, iters=int(fit_2d), rigid=bones == "constant", progress=progress,
                                  focal=pinhole[0], center=pinhole[1])
    reproj = project(fused, cam).numpy()
    size_factor = gravity_size_factor(reproj, fused.numpy(), detected.fps, gravity_weight) if fit_2d > 0 else 1.0
    fused, cam = rescale_body(fused, cam, size_factor)
    meta = {**dd.meta, "camera_model": camera_model, "fuse_weight": float(weight), "bones": bones,
            "fit_2d": int(fit_2d), "gravity_size_factor": size_factor,
            "camera_motion_compensated": motion is not None}
    if motion is not None:
        reproj = apply_affine(reproj, invert_affine(motion))
    if camera_model == "weak":
        meta["weak_scale_px_per_m"] = float(cam.scale.median())
    pose3d = replace(dd, joints=fused.float().numpy(), source="fused", camera=to_sequence_camera(cam, size),
                     image_size=size, meta=meta)
    pose2d = Pose2D(reproj.astype(np.float32), np.ones(reproj.shape[:2], np.float32), size, detected.fps, "h36m17",
                    motion)
    return pose3d, pose2d
