"""Fusion and the differentiable camera fit / projection."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from finephys_core.camera import (Perspective, WeakPerspective, bone_vectors, constant_bone_lengths, fit_camera,
                                  fit_to_keypoints, fit_perspective, fuse, fuse_poses, joints_from_bones, project,
                                  project_pinhole)
from finephys_core.sequence import Pose2D, Pose3D, PoseError
from finephys_core.skeleton import COCO17, H36M17


def _skeletons(*lead, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, 17, 3, generator=g, dtype=torch.float64) * 0.4
    return x - x[..., :1, :]


def test_fuse_weights():
    a, b = torch.zeros(2, 17, 3), torch.ones(2, 17, 3)
    assert torch.equal(fuse(a, b), torch.full((2, 17, 3), 0.5))
    assert torch.equal(fuse(a, b, 0.0), a) and torch.equal(fuse(a, b, 1.0), b)
    assert torch.allclose(fuse(a, b, 0.25), torch.full((2, 17, 3), 0.25))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        fuse(a, b, 1.5)
    with pytest.raises(ValueError, match="same shape"):
        fuse(a, b[:1])


def test_weak_fit_recovers_known_camera_exactly():
    X = _skeletons(3, 6)
    scale = torch.tensor([250.0, 80.0, 1.5], dtype=torch.float64)
    trans = torch.randn(3, 6, 2, dtype=torch.float64) * 100
    x = project(X, WeakPerspective(scale, trans))
    w = torch.rand(3, 6, 17, dtype=torch.float64) + 0.1
    w[..., 5] = 0                                           # a missing joint everywhere
    cam = fit_camera(X, x, w)
    assert torch.allclose(cam.scale, scale, atol=1e-9)
    assert torch.allclose(cam.translation, trans, atol=1e-9)
    assert torch.allclose(project(X, cam), x, atol=1e-8)


def test_weak_fit_zero_weight_frames_and_one_frame():
    X = _skeletons(5)
    t = torch.tensor([[0.0, 0.0], [10.0, 20.0], [20.0, 40.0], [30.0, 60.0], [40.0, 80.0]], dtype=torch.float64)
    x = project(X, WeakPerspective(torch.tensor(100.0, dtype=torch.float64), t))
    w = torch.ones(5, 17, dtype=torch.float64)
    w[1:3] = 0                                               # frames 1, 2: nobody detected
    w[4] = 0                                                 # last frame too
    cam = fit_camera(X, x, w)
    assert torch.allclose(cam.scale, torch.tensor(100.0, dtype=torch.float64))
    assert torch.allclose(cam.translation, torch.tensor(
        [[0.0, 0.0], [10.0, 20.0], [20.0, 40.0], [30.0, 60.0], [30.0, 60.0]], dtype=torch.float64))
    one = fit_camera(X[:1], x[:1], torch.ones(1, 17, dtype=torch.float64))
    assert torch.allclose(one.scale, torch.tensor(100.0, dtype=torch.float64))
    none = fit_camera(X, x, torch.zeros(5, 17, dtype=torch.float64))
    assert torch.isfinite(none.scale) and torch.isfinite(none.translation).all()


def test_fit_and_projection_are_differentiable():
    X = _skeletons(4, seed=1).requires_grad_(True)
    target = project(X.detach(), WeakPerspective(torch.tensor(2.0, dtype=torch.float64),
                                                 torch.zeros(4, 2, dtype=torch.float64)))
    target = target + 0.05 * torch.randn_like(target)
    w = torch.rand(4, 17, dtype=torch.float64)
    loss = (w[..., None] * (project(X, fit_camera(X, target, w)) - target) ** 2).sum()
    loss.backward()
    assert torch.isfinite(X.grad).all() and X.grad.abs().sum() > 0
    small = _skeletons(2, seed=2)[..., :5, :].clone().requires_grad_(True)
    t2 = torch.randn(2, 5, 2, dtype=torch.float64)
    w2 = torch.rand(2, 5, dtype=torch.float64) + 0.1
    assert torch.autograd.gradcheck(lambda s: project(s, fit_camera(s, t2, w2)), (small,))
    assert torch.autograd.gradcheck(
        lambda s: project(s, fit_perspective(s, t2 * 100, w2, 500.0, (0.0, 0.0))), (small,))


def test_perspective_fit_recovers_translation():
    X = _skeletons(2, 4)
    T = torch.randn(2, 4, 3, dtype=torch.float64)
    T[..., 2] += 8
    f, c = torch.tensor([1000.0, 700.0], dtype=torch.float64), torch.tensor([320.0, 240.0], dtype=torch.float64)
    x = project(X, Perspective(f, c.expand(2, 2), T))
    w = torch.ones(2, 4, 17, dtype=torch.float64)
    w[0, 1] = 0
    cam = fit_perspective(X, x, w, f, c)
    ok = torch.ones(2, 4, dtype=torch.bool)
    ok[0, 1] = False
    assert torch.allclose(cam.translation[ok], T[ok], atol=1e-4)
    assert torch.allclose(cam.translation[0, 1], (T[0, 0] + T[0, 2]) / 2, atol=1e-4)


def test_fuse_poses_reprojects_detections_and_camera_matches():
    rng = np.random.default_rng(0)
    X = _skeletons(6, seed=3).float().numpy()
    s, t = 300.0, rng.uniform(200, 400, (6, 2))
    kp = (s * X[..., :2] + t[:, None]).astype(np.float32)
    scores = np.ones((6, 17), np.float32)
    scores[2] = 0
    det = Pose2D(kp, scores, (640, 480), 30.0)
    dd = Pose3D(X + 0.01, 30.0, "dd")
    pp = Pose3D(X - 0.01, 30.0, "pp")
    fused, reproj = fuse_poses(dd, pp, det, 0.5, bones="free")   # random skeletons: bone lengths vary per frame
    assert fused.source == "fused" and np.allclose(fused.joints, X, atol=1e-6)
    assert reproj.keypoints.shape == (6, 17, 2) and reproj.layout == "h36m17" and reproj.fps == 30.0
    assert np.abs(reproj.keypoints[scores > 0] - kp[scores > 0]).max() < 1e-3
    assert abs(fused.meta["weak_scale_px_per_m"] - s) < 1e-3
    pin = project_pinhole(fused.joints, fused.camera)
    assert np.abs(pin - reproj.keypoints).max() < 0.5       # the sequence.Camera reprojects the same
    persp, rp = fuse_poses(dd, pp, det, camera_model="perspective", focal=800.0, bones="free")
    assert persp.camera.focal == 800.0 and np.isfinite(rp.keypoints).all()
    assert np.abs(project_pinhole(persp.joints, persp.camera) - rp.keypoints).max() < 1e-2


def test_fuse_poses_converts_layout_and_checks_frames():
    X = _skeletons(3, seed=4).float().numpy()
    coco = np.zeros((3, 17, 2), np.float32)
    h36 = 100 * X[..., :2] + 300
    for name in ("l_shoulder", "r_shoulder", "l_elbow", "r_elbow", "l_wrist", "r_wrist", "l_hip", "r_hip",
                 "l_knee", "r_knee", "l_ankle", "r_ankle"):
        coco[:, COCO17.index(name)] = h36[:, H36M17.index(name)]
    sc = np.zeros((3, 17), np.float32)
    sc[:, [COCO17.index(n) for n in ("l_knee", "r_knee", "l_ankle", "r_ankle", "l_wrist", "r_wrist")]] = 1
    det = Pose2D(coco, sc, (640, 640), 25.0, "coco17")
    fused, reproj = fuse_poses(Pose3D(X), Pose3D(X, source="pp"), det, bones="free")
    idx = [H36M17.index(n) for n in ("l_knee", "r_knee", "l_ankle", "r_ankle", "l_wrist", "r_wrist")]
    assert np.abs(reproj.keypoints[:, idx] - h36[:, idx]).max() < 1e-3
    with pytest.raises(PoseError, match="frame counts differ"):
        fuse_poses(Pose3D(X[:2]), Pose3D(X, source="pp"), det)
    with pytest.raises(ValueError, match="camera_model"):
        fuse_poses(Pose3D(X), Pose3D(X, source="pp"), det, camera_model="fisheye")


def _bone_lengths(x: torch.Tensor) -> torch.Tensor:
    return bone_vectors(x).norm(dim=-1)


def test_joints_from_bones_inverts_bone_vectors():
    x = _skeletons(3, 5) + torch.tensor([0.2, -0.1, 4.0], dtype=torch.float64)      # root away from the origin
    assert torch.allclose(joints_from_bones(x[..., :1, :], bone_vectors(x)), x, atol=1e-12)


def test_constant_bone_lengths_keeps_directions_and_median_lengths():
    X = _skeletons(2, 9, seed=5)                                       # (2 clips, 9 frames)
    out = constant_bone_lengths(X)
    lengths = _bone_lengths(out)
    assert torch.allclose(lengths, _bone_lengths(X).median(dim=-2).values[:, None].expand_as(lengths))
    assert torch.equal(out[..., 0, :], X[..., 0, :])
    parents, children = (list(v) for v in zip(*H36M17.bones))
    d_in, d_out = X[..., children, :] - X[..., parents, :], out[..., children, :] - out[..., parents, :]
    cosine = torch.nn.functional.cosine_similarity(d_in, d_out, dim=-1)
    assert torch.allclose(cosine, torch.ones(2, 9, 16, dtype=X.dtype))
    # a pose that already has constant lengths is unchanged; given lengths are used as they are
    assert torch.allclose(constant_bone_lengths(out), out, atol=1e-12)
    fixed = constant_bone_lengths(X, torch.full((2, 16), 0.25, dtype=X.dtype))
    assert torch.allclose(_bone_lengths(fixed), torch.full((2, 9, 16), 0.25, dtype=X.dtype))
    X.requires_grad_(True)
    constant_bone_lengths(X).sum().backward()
    assert torch.isfinite(X.grad).all()
    with pytest.raises(ValueError, match="17, 3"):
        constant_bone_lengths(X[..., :16, :])


def test_fuse_poses_bones_modes():
    X = _skeletons(6, seed=6).float().numpy()
    det = Pose2D((300 * X[..., :2] + 320).astype(np.float32), np.ones((6, 17), np.float32), (640, 480), 30.0)
    const, _ = fuse_poses(Pose3D(X), Pose3D(X, source="pp"), det)
    free, _ = fuse_poses(Pose3D(X), Pose3D(X, source="pp"), det, bones="free")
    assert const.meta["bones"] == "constant" and free.meta["bones"] == "free"
    assert _bone_lengths(torch.from_numpy(const.joints)).std(0).max() < 1e-5
    assert _bone_lengths(torch.from_numpy(free.joints)).std(0).max() > 0.05
    with pytest.raises(ValueError, match="bones"):
        fuse_poses(Pose3D(X), Pose3D(X, source="pp"), det, bones="rigid")


def _salto_clip(frames=20):
    """The shipped sample's ground truth: a real salto, root-relative, camera frame, rigid bones."""
    from finephys_core.demo import SAMPLE_GT

    with np.load(SAMPLE_GT) as z:
        X = torch.from_numpy(z["joints"][:frames].astype(np.float64))
    return constant_bone_lengths(X - X[:, :1])


def _jittered(truth: torch.Tensor, sd: float = 0.03) -> torch.Tensor:
    """``truth`` with the lifter's kind of error: joints off in x, y, every bone still of its true length."""
    g = torch.Generator().manual_seed(0)
    start = truth.clone()
    start[..., :2] += sd * torch.randn(start.shape[:-1] + (2,), generator=g, dtype=start.dtype)
    return constant_bone_lengths(start - start[:, :1], _bone_lengths(truth)[0])


def test_fit_to_keypoints_moves_the_pose_onto_exact_2d():
    truth = _salto_clip()
    kp = 400.0 * truth[..., :2] + torch.tensor([320.0, 240.0])
    start = _jittered(truth)
    fitted, _ = fit_to_keypoints(start, kp, torch.ones(kp.shape[:-1], dtype=kp.dtype))
    error = lambda X: (X - X[:, :1] - truth).norm(dim=-1).mean().item()  # noqa: E731
    assert error(fitted) < 0.6 * error(start)                 # measured 0.41× (the prior keeps it near start)
    assert _bone_lengths(fitted).std(0).max() < 1e-9          # rigid: each bone keeps one length
    np.testing.assert_allclose(_bone_lengths(fitted)[0], _bone_lengths(start)[0], rtol=1e-9)


def test_fit_to_keypoints_with_a_pinhole_beats_weak_perspective_up_close():
    truth = _salto_clip()
    trans = torch.zeros(truth.shape[0], 3, dtype=truth.dtype)
    trans[:, 0], trans[:, 2] = torch.linspace(-0.5, 0.5, truth.shape[0]), 2.5      # 2.5 m away: strong perspective
    f, c = 600.0, (320.0, 240.0)
    kp = project(truth, Perspective(torch.tensor(f, dtype=truth.dtype), torch.tensor(c, dtype=truth.dtype), trans))
    w = torch.ones(kp.shape[:-1], dtype=kp.dtype)
    start = _jittered(truth)
    error = lambda X: (X - X[:, :1] - truth).norm(dim=-1).mean().item()  # noqa: E731
    # prior 0.5: the setting these ratios were measured at (the default follows the shipped weights' lift)
    pinhole = fit_to_keypoints(start, kp, w, focal=f, center=c, prior=0.5)[0]
    weak = fit_to_keypoints(start, kp, w, prior=0.5)[0]
    assert error(pinhole) < 0.45 * error(start)                # measured 0.35× (weak perspective: 0.47×)
    assert error(pinhole) < 0.85 * error(weak)                 # measured 0.74×
    assert _bone_lengths(pinhole).std(0).max() < 1e-9


def test_fit_to_keypoints_follows_a_zooming_camera():
    truth = _salto_clip()
    scale = torch.linspace(300.0, 500.0, truth.shape[0], dtype=truth.dtype)       # zoom in 1.67× over the clip
    kp = project(truth, WeakPerspective(scale, torch.full((truth.shape[0], 2), 320.0, dtype=truth.dtype)))
    w = torch.ones(kp.shape[:-1], dtype=kp.dtype)
    start = _jittered(truth)
    error = lambda X: (X - X[:, :1] - truth).norm(dim=-1).mean().item()  # noqa: E731
    per_frame, camera = fit_to_keypoints(start, kp, w, prior=0.5)           # the prior the ratios were measured at
    per_clip, clip_camera = fit_to_keypoints(start, kp, w, scale_smooth=None, prior=0.5)
    assert camera.scale.shape == (truth.shape[0],) and clip_camera.scale.shape == ()
    assert error(per_frame) < 0.7 * error(per_clip)             # measured 0.61×
    assert (camera.scale / scale - 1).abs().median() < 0.03     # measured 0.016 (the ends trade scale for depth)
    assert camera.scale[-1] / camera.scale[0] > 1.3             # measured 1.39 (truth 1.67; one scale: 1)
    det = Pose2D(kp.float().numpy(), w.float().numpy(), (640, 480), 25.0)
    fused, reproj = fuse_poses(Pose3D(start.float().numpy()), Pose3D(start.float().numpy(), source="pp"), det,
                               fit_2d=150)
    assert np.abs(reproj.keypoints - det.keypoints).mean() < 8.0           # measured 5.0 px (19.3 without the fit)
    assert np.abs(project_pinhole(fused.joints, fused.camera) - reproj.keypoints).max() < 0.5


def test_fit_to_keypoints_is_robust_and_safe():
    truth = _salto_clip(12)
    kp = 400.0 * truth[..., :2] + 300.0
    w = torch.ones(kp.shape[:-1], dtype=kp.dtype)
    unfitted, closed_form = fit_to_keypoints(truth, kp, w, iters=0)
    assert unfitted is truth and torch.allclose(closed_form.scale, torch.tensor(400.0, dtype=truth.dtype))
    assert torch.equal(fit_to_keypoints(truth, kp, torch.zeros_like(w))[0], truth)   # nothing to fit to
    wrong = kp.clone()
    wrong[5, 16] += 300.0                                       # one confident, wildly wrong wrist
    wrong[7, 3] = float("nan")                                  # and a NaN
    with torch.inference_mode():                                # as ComfyUI runs nodes: inference tensors in
        fitted, _ = fit_to_keypoints(truth.clone(), wrong.clone(), w.clone(), iters=100)
    assert torch.isfinite(fitted).all() and not fitted.requires_grad and not torch.equal(fitted, truth)
    assert (fitted - truth).norm(dim=-1).max() < 0.05           # bounded loss: the outlier moves nothing far
    with pytest.raises(ValueError, match="keypoints2d"):
        fit_to_keypoints(truth, kp[:, :5], w)
    calls = []
    fit_to_keypoints(truth, kp, w, iters=7, progress=calls.append)
    assert calls == [1] * 7


def test_fuse_poses_fit_2d_moves_towards_the_detections():
    truth = _salto_clip(16)
    det = Pose2D((400 * truth[..., :2] + 320).float().numpy(), np.ones((16, 17), np.float32), (640, 480), 25.0)
    off = _jittered(truth).float().numpy()
    dd, pp = Pose3D(off), Pose3D(off, source="pp")
    plain, reproj = fuse_poses(dd, pp, det)
    fitted, reproj_fit = fuse_poses(dd, pp, det, fit_2d=150)
    assert plain.meta["fit_2d"] == 0 and fitted.meta["fit_2d"] == 150
    err = lambda p: np.linalg.norm(p.joints - p.joints[:, :1] - truth.numpy(), axis=-1).mean()  # noqa: E731
    gap = lambda r: np.abs(r.keypoints - det.keypoints).mean()                               # noqa: E731
    assert err(fitted) < 0.6 * err(plain) and gap(reproj_fit) < 0.6 * gap(reproj)


def test_fuse_poses_leaves_out_detections_the_front_end_disagreed_with():
    truth = _salto_clip(16)
    kp = (400 * truth[..., :2] + 320).float().numpy()
    kp[4:12, 16] += 150.0                                          # a confident, wrong wrist for 8 frames
    det = Pose2D(kp, np.ones((16, 17), np.float32), (640, 480), 25.0)
    agreement = np.ones((16, 17), np.float32)
    agreement[4:12, 16] = 0.0
    off = _jittered(truth).float().numpy()
    err = lambda p: np.linalg.norm(p.joints - p.joints[:, :1] - truth.numpy(), axis=-1).mean()  # noqa: E731
    scored, _ = fuse_poses(Pose3D(off), Pose3D(off, source="pp"), det, fit_2d=150)
    agreed, reproj = fuse_poses(Pose3D(off, agreement_2d=agreement), Pose3D(off, source="pp"), det, fit_2d=150)
    assert err(agreed) < err(scored)
    assert np.abs(reproj.keypoints[4:12, 16] - kp[4:12, 16]).min() > 100.0   # reprojected where the wrist is
