"""Pose accuracy and physical-plausibility metrics (DESIGN.md §6), numpy, functional.

Every function takes joint arrays (..., T, J, 3) in any length unit and returns a value in the same
unit (time derivatives are per frame, as VideoPose3D and VIBE report them); :func:`pose_metrics`
collects them in millimetres for inputs in metres.
"""
from __future__ import annotations

import numpy as np

from .skeleton import H36M17, Layout, bone_lengths


def _pair(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, np.float64)
    gt = np.asarray(gt, np.float64)
    if pred.shape != gt.shape or pred.ndim < 2 or pred.shape[-1] != 3:
        raise ValueError(f"prediction and ground truth must both be (..., J, 3); got {pred.shape} and {gt.shape}")
    return pred, gt


def mpjpe(pred, gt) -> float:
    """Mean per-joint position error: mean Euclidean distance over all joints and frames."""
    pred, gt = _pair(pred, gt)
    return float(np.linalg.norm(pred - gt, axis=-1).mean())


def scale_align(pred, gt) -> np.ndarray:
    """Each pose (..., J, 3) of ``pred`` scaled by the least-squares factor <p, g> / <p, p>."""
    pred, gt = _pair(pred, gt)
    num = (pred * gt).sum(axis=(-2, -1), keepdims=True)
    den = np.maximum((pred * pred).sum(axis=(-2, -1), keepdims=True), 1e-12)
    return pred * num / den


def n_mpjpe(pred, gt) -> float:
    """MPJPE after scaling each predicted pose by the least-squares factor (VideoPose3D; :func:`scale_align`)."""
    return mpjpe(scale_align(pred, gt), gt)


def best_rotation(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    """(..., 3, 3) the rotation (no reflection) with p @ rot closest to g for point sets (..., J, 3), about
    the origin (Kabsch)."""
    u, _, vt = np.linalg.svd(np.swapaxes(p, -1, -2) @ g)
    u[..., :, -1] *= np.sign(np.linalg.det(u @ vt))[..., None]   # −1 where the best orthogonal map reflects
    return u @ vt


def procrustes_align(pred, gt) -> np.ndarray:
    """Align each pose (..., J, 3) of ``pred`` to ``gt`` by the best similarity transform (no reflection)."""
    pred, gt = _pair(pred, gt)
    mu_g = gt.mean(-2, keepdims=True)
    p, g = pred - pred.mean(-2, keepdims=True), gt - mu_g
    rotated = p @ best_rotation(p, g)
    scale = (rotated * g).sum(axis=(-2, -1), keepdims=True) / np.maximum((p * p).sum(axis=(-2, -1), keepdims=True),
                                                                         1e-12)
    return scale * rotated + mu_g


def pa_mpjpe(pred, gt) -> float:
    """MPJPE after per-frame Procrustes alignment (rotation, scale, translation)."""
    return mpjpe(procrustes_align(pred, gt), gt)


def _time_axis(x: np.ndarray) -> int:
    if x.ndim < 3:
        raise ValueError(f"temporal metrics need (..., T, J, 3); got {x.shape}")
    return -3


def mpjve(pred, gt) -> float:
    """Mean per-joint velocity error: mean ‖Δpred − Δgt‖ over frames (per frame, VideoPose3D's MPJVE)."""
    pred, gt = _pair(pred, gt)
    ax = _time_axis(pred)
    return mpjpe(np.diff(pred, axis=ax), np.diff(gt, axis=ax)) if pred.shape[ax] > 1 else 0.0


def accel_error(pred, gt) -> float:
    """Mean ‖Δ²pred − Δ²gt‖ (second differences, per frame², VIBE's acceleration error)."""
    pred, gt = _pair(pred, gt)
    ax = _time_axis(pred)
    return mpjpe(np.diff(pred, 2, axis=ax), np.diff(gt, 2, axis=ax)) if pred.shape[ax] > 2 else 0.0


def bone_length_std(joints, layout: Layout = H36M17) -> float:
    """Standard deviation of each bone's length over time, averaged over bones (and leading batch dims)."""
    joints = np.asarray(joints, np.float64)
    _time_axis(joints)
    return float(bone_lengths(joints, layout).std(axis=-2).mean())


def jitter(joints) -> float:
    """Mean ‖Δ³x‖ over joints and frames (third differences, per frame³): 0 for any parabola in time."""
    joints = np.asarray(joints, np.float64)
    ax = _time_axis(joints)
    if joints.shape[ax] < 4:
        return 0.0
    return float(np.linalg.norm(np.diff(joints, 3, axis=ax), axis=-1).mean())


def _segments(mask: np.ndarray, min_len: int) -> list[tuple[int, int]]:
    """[start, stop) runs of True in a 1-D mask, at least ``min_len`` long."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts, stops = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]
    return [(a, b) for a, b in zip(starts, stops) if b - a >= min_len]


def ballistic_fit(trajectory, fps: float, flight) -> tuple[float, np.ndarray] | None:
    """Fit free flight to a point trajectory (e.g. the centre of mass) during flight phases.

    Each flight segment gets its own start position and velocity; the acceleration vector is shared.
    Args:
        trajectory: (T, 3) absolute positions (not root-relative).
        fps: frames per second.
        flight: (T,) bool, True while airborne.
    Returns:
        (RMS residual in the trajectory's unit, fitted acceleration (3,) in unit/s²), or None when no
        flight segment has at least 4 frames.
    """
    traj = np.asarray(trajectory, np.float64)
    flight = np.asarray(flight, bool)
    if traj.ndim != 2 or traj.shape[1] != 3 or flight.shape != traj.shape[:1]:
        raise ValueError(f"ballistic_fit needs trajectory (T, 3) and flight (T,); got {traj.shape}, {flight.shape}")
    segs = _segments(flight, 4)
    if not segs:
        return None
    rows = sum(b - a for a, b in segs)
    design = np.zeros((rows, 2 * len(segs) + 1))
    target = np.zeros((rows, 3))
    r = 0
    for k, (a, b) in enumerate(segs):
        t = np.arange(b - a) / fps
        design[r:r + len(t), 2 * k] = 1.0
        design[r:r + len(t), 2 * k + 1] = t
        design[r:r + len(t), -1] = 0.5 * t * t
        target[r:r + len(t)] = traj[a:b]
        r += len(t)
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    resid = target - design @ coef
    return float(np.sqrt((resid ** 2).sum(-1).mean())), coef[-1]


def pose_metrics(pred, gt) -> dict[str, float]:
    """All accuracy and smoothness figures in millimetres for (…, T, 17, 3) poses in metres."""
    pred, gt = _pair(pred, gt)
    mm = 1000.0
    return {
        "mpjpe": mpjpe(pred, gt) * mm,
        "n_mpjpe": n_mpjpe(pred, gt) * mm,
        "pa_mpjpe": pa_mpjpe(pred, gt) * mm,
        "mpjve": mpjve(pred, gt) * mm,
        "accel_error": accel_error(pred, gt) * mm,
        "bone_std": bone_length_std(pred) * mm,
        "jitter": jitter(pred) * mm,
    }
