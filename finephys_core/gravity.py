"""Metric body size from gravity: in flight the centre of mass falls at g, so its acceleration in pixels fixes
pixels per metre, the one thing a single view cannot tell (a tall athlete far away looks like a short one nearby).

The lifter guesses the body's size from its proportions. On held-out clips that guess is off by about 5 %, and
size is the largest single part of the fused pose's error (`bench physics --error-budget`). Here the fused pose
is reprojected through its fitted camera. Its mass-weighted 2D centre of mass is tracked, and a flight phase
is found where that track is a parabola falling at about g. Comparing the parabola's curvature with the
camera's pixels per metre gives a size factor k, so that the pose times k falls at g. The lifter's size and
gravity's are then mixed in log space (:data:`STATIC_CAMERA_GRAVITY_WEIGHT`).

**Static cameras only.** A camera that pans after the athlete takes part of the fall out of the image, and a
rotating body's centre of mass then passes for a weaker fall: the size comes out too large. On the held-out set
with 20 % / 50 % / all of the travel taken out (`bench physics --track F`), fused + 2D fit at 25 / 50 fps went
from 53.9 / 56.2, 54.5 / 56.5 and 56.4 / 57.4 mm without gravity to 60.1 / 63.1, 62.4 / 63.4 and 61.2 / 65.9
with it. The skeleton alone cannot tell a pan from a weaker fall, so this is off unless the user says the
camera is static (``fuse_poses(gravity_weight=...)``, the FusePoses node's ``static_camera``, the CLI's
``--static-camera``). A camera that stands in one place and turns or zooms counts as static once its motion is
measured (:mod:`camera_motion`): ``fuse_poses`` then tracks the stabilised reprojection (`bench physics --track 1
--stabilize`: fused + 2D fit 54.0 / 56.9 mm without gravity, 53.7 / 56.3 with it).

Everything is in the pose's own units: 2D in pixels (any units work), 3D in metres, time from ``fps``.
"""
from __future__ import annotations

import numpy as np

from .skeleton import H36M17

G = 9.81  # m/s²

# Mass share of each H36M-17 joint. Segment masses (de Leva 1996, rounded) are split evenly over the joints
# that bound each segment; the trunk goes to pelvis, spine and thorax. The plain mean of the 17 joints is not
# the body's centre of mass: on 224 flights of held-out-type clips, from the true 2D, its parabola gave pixels
# per metre with a 13 % spread, these weights with 4.6 %.
_SEGMENTS = {("pelvis", "spine", "thorax"): 0.497, ("neck", "head"): 0.081,
             ("r_hip", "r_knee"): 0.100, ("l_hip", "l_knee"): 0.100,
             ("r_knee", "r_ankle"): 0.0465, ("l_knee", "l_ankle"): 0.0465,
             ("l_shoulder", "l_elbow"): 0.028, ("r_shoulder", "r_elbow"): 0.028,
             ("l_elbow", "l_wrist"): 0.022, ("r_elbow", "r_wrist"): 0.022}

# Mean share of g that lies in the image plane (cos of the camera's elevation) over held-out-type cameras
# (elevation −8° to 32°), measured with the true centre of mass on 224 flights: the apparent fall is
# g · 0.966 · pixels per metre on average.
APPARENT_G_SHARE = 0.966

# Weight of gravity's size against the lifter's, in log space. Gravity's estimate is about as good in the bulk
# (robust spread 5.3 % against the lifter's 5.0 %, true flights) but heavy-tailed; ½ or more was worse.
# v19, fused + 2D fit, paired difference against no gravity (95 % interval over clips): 240 clips of 120
# motions through held-out-type cameras −1.3 mm (weight 0.25, a residual tolerance of 0.02) to −1.6 (0.01);
# the 240 clips of `bench physics --make-heldout --motions 120` −0.92 [−1.51, −0.34] at 0.25, −0.90 at 0.2,
# −0.77 at 0.33; the 48 shipped held-out clips −0.61 [−2.06, +0.76].
STATIC_CAMERA_GRAVITY_WEIGHT = 0.25
# Largest RMS distance (metres at the athlete, i.e. in units of pixels per metre) of the centre-of-mass track
# from its parabola for the window to count as flight. 0.01 / 0.015 / 0.02 found flights that were 93–94 /
# 87–89 / 86 % true flight frames; 0.04 let contact phases in and made the size worse.
FLIGHT_TOLERANCE_M = 0.015
# A flight's apparent fall must be within this factor range of g · APPARENT_G_SHARE at the lifted size;
# beyond it the window is not free fall (or the lifted size is far off, and one parabola should not decide).
FALL_RATIO_RANGE = (0.7, 1.4)
# Flights searched for: a gymnast's flight lasts 0.3–1.2 s; the cap keeps a long clip's search linear in T.
MIN_FLIGHT_S, MAX_FLIGHT_S = 0.3, 1.5


def joint_mass_weights() -> np.ndarray:
    """(17,) each H36M-17 joint's share of the body's mass (sums to 1)."""
    w = np.zeros(len(H36M17.joints))
    for joints, mass in _SEGMENTS.items():
        for name in joints:
            w[H36M17.joints.index(name)] += mass / len(joints)
    return w / w.sum()


def centre_of_mass_2d(keypoints: np.ndarray) -> np.ndarray:
    """(T, 17, 2) H36M-17 keypoints → (T, 2) mass-weighted centre."""
    return np.einsum("tjc,j->tc", keypoints, joint_mass_weights())


def fit_parabolas(windows: np.ndarray, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """(N, L, C) position tracks sampled at ``fps`` → (accelerations (N, C) per s², RMS distances (N,) of each
    track from its least-squares parabola)."""
    t = np.arange(windows.shape[1]) / fps
    t = t - t.mean()
    q, r = np.linalg.qr(np.stack([np.ones_like(t), t, 0.5 * t * t], 1))      # design (L, 3) = q r
    along = np.swapaxes(windows, 1, 2) @ q                                    # (N, C, 3): the fit in q's basis
    accel = along @ np.linalg.inv(r).T[:, 2]                                  # (N, C)
    misfit = np.maximum((windows ** 2).sum((1, 2)) - (along ** 2).sum((1, 2)), 0.0)
    return accel, np.sqrt(misfit / windows.shape[1])


def pixels_per_metre(keypoints: np.ndarray, joints3d: np.ndarray) -> np.ndarray:
    """(T,) least-squares scale of each frame's 2D (T, 17, 2) about its mean against its 3D's x, y (T, 17, 3)."""
    kc = keypoints - keypoints.mean(1, keepdims=True)
    xc = joints3d[..., :2] - joints3d[..., :2].mean(1, keepdims=True)
    return (kc * xc).sum((1, 2)) / np.maximum((xc * xc).sum((1, 2)), 1e-12)


def find_flight(com: np.ndarray, scale: np.ndarray, fps: float, tolerance: float = FLIGHT_TOLERANCE_M,
                ratio_range: tuple[float, float] = FALL_RATIO_RANGE, min_seconds: float = MIN_FLIGHT_S,
                max_seconds: float = MAX_FLIGHT_S):
    """The longest window (the earliest of equals) of a 2D centre-of-mass track (T, 2) in which it is a parabola
    within ``tolerance`` metres, accelerating downwards in the image (y down) at g · :data:`APPARENT_G_SHARE`
    times a factor in ``ratio_range``, at the frames' median pixels per metre ``scale`` (T,).

    Returns (first, end, factor) with factor = apparent fall / expected fall, or None when no window fits.
    """
    frames = len(com)
    shortest = max(int(np.ceil(min_seconds * fps)), 4)
    longest = min(frames, int(max_seconds * fps))
    for length in range(longest, shortest - 1, -1):
        windows = np.lib.stride_tricks.sliding_window_view(com, length, axis=0).transpose(0, 2, 1)  # (N, L, 2)
        accel, residual = fit_parabolas(windows, fps)
        px_per_m = np.median(np.lib.stride_tricks.sliding_window_view(scale, length), axis=-1)      # (N,)
        norm = np.linalg.norm(accel, axis=-1)
        factor = norm / (G * APPARENT_G_SHARE * px_per_m)
        ok = ((residual < tolerance * px_per_m) & (factor > ratio_range[0]) & (factor < ratio_range[1])
              & (accel[:, 1] > 0.85 * norm))
        if ok.any():
            first = int(np.argmax(ok))
            return first, first + length, float(factor[first])
    return None


def gravity_size_factor(keypoints: np.ndarray, joints3d: np.ndarray, fps: float,
                        weight: float = STATIC_CAMERA_GRAVITY_WEIGHT) -> float:
    """Factor k for the root-relative 3D (T, 17, 3) metres whose reprojection is ``keypoints`` (T, 17, 2):
    k · joints3d mixes the lifted size with gravity's at ``weight`` (0: 1.0, the lifted size). 1.0 when the
    clip has no flight that :func:`find_flight` accepts or a frame is not finite."""
    if weight <= 0 or not (np.isfinite(keypoints).all() and np.isfinite(joints3d).all()):
        return 1.0
    scale = pixels_per_metre(keypoints, joints3d)
    if not (scale > 0).all():
        return 1.0
    flight = find_flight(centre_of_mass_2d(keypoints), scale, fps)
    if flight is None:
        return 1.0
    return float(flight[2] ** -weight)
