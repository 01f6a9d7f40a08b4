"""The camera's own motion in a clip, from the background, so that a panning or zooming camera's 2D can be read
as a static camera's.

Broadcast gymnastics pans after the athlete and zooms. That takes the athlete's travel across the image out of
the 2D, which the lifter reads as a cue to where the athlete moves and faces (`LifterConfig.trajectory`), and it
hides the fall at g that gives the body's size (`gravity.py`). A camera that turns about its own centre moves
the whole background alike. So the background's motion between consecutive frames, fitted as a similarity
(shift, rotation, zoom) with RANSAC to corners tracked outside the athlete, maps every frame into the first
frame's image: the image a static camera with the first frame's view would have taken.

``Pose2D.camera_motion`` (T, 2, 3) holds those maps: ``apply_affine(keypoints, camera_motion)`` is the 2D in the
first frame's pixels, :meth:`Pose2D.stabilized`. Lifting and the fit to the 2D read the stabilised 2D; the
fused pose's reprojection is mapped back into each frame (:func:`camera.fuse_poses`).
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

# Frames are tracked at this longer side (pixels) at most: enough corners, a fraction of the cost.
TRACK_SIDE = 640
# Corners tracked per frame pair, and the fewest RANSAC inliers for a pair's motion to be trusted.
MAX_CORNERS, MIN_INLIERS = 400, 12
# The athlete's box, grown by this share of its size on each side, is left out of the background.
PERSON_MARGIN = 0.25
# RANSAC's inlier threshold in pixels at TRACK_SIDE.
RANSAC_PX = 1.5
# Corners as weak as this share of the strongest are tracked: sports halls and blurred zooms have few strong ones.
CORNER_QUALITY = 0.001


def apply_affine(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Points (T, J, 2) through per-frame 2×3 maps (T, 2, 3): affine[t] @ [x, y, 1]."""
    return np.einsum("tij,tkj->tki", affine[..., :2], points) + affine[:, None, :, 2]


def invert_affine(affine: np.ndarray) -> np.ndarray:
    """(T, 2, 3) → the maps that undo them."""
    inv = np.linalg.inv(affine[..., :2])
    return np.concatenate([inv, -np.einsum("tij,tj->ti", inv, affine[..., 2])[..., None]], -1)


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """(…, 2, 3) maps: outer ∘ inner (inner first)."""
    return np.concatenate([outer[..., :2] @ inner[..., :2], (outer[..., :2] @ inner[..., 2:]) + outer[..., 2:]], -1)


def check_camera_motion(affine, num_frames: int) -> np.ndarray:
    """A (T, 2, 3) finite, invertible array, or ValueError naming what is wrong."""
    affine = np.asarray(affine, np.float64)
    if affine.shape != (num_frames, 2, 3):
        raise ValueError(f"camera_motion must have shape ({num_frames}, 2, 3); got {affine.shape}")
    if not np.isfinite(affine).all():
        raise ValueError("camera_motion contains NaN or inf values")
    if (np.abs(np.linalg.det(affine[..., :2])) < 1e-6).any():
        raise ValueError("camera_motion has a frame whose map cannot be inverted")
    return affine


def _uint8(frame) -> np.ndarray:
    img = np.asarray(frame)
    return img if img.dtype == np.uint8 else (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _gray(frame, scale: float) -> np.ndarray:
    import cv2

    img = _uint8(frame)
    if img.ndim == 3:
        img = cv2.cvtColor(np.ascontiguousarray(img[..., :3]), cv2.COLOR_RGB2GRAY)
    if scale != 1.0:
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return img


def background_mask(shape: tuple[int, int], keypoints: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """uint8 (H, W) mask, 255 outside the athlete's box (visible joints, grown by :data:`PERSON_MARGIN`)."""
    mask = np.full(shape, 255, np.uint8)
    seen = keypoints[scores > 0]
    if len(seen):
        lo, hi = seen.min(0), seen.max(0)
        grow = PERSON_MARGIN * (hi - lo) + 0.02 * max(shape)
        x0, y0 = np.floor(lo - grow).astype(int)
        x1, y1 = np.ceil(hi + grow).astype(int)
        mask[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = 0
    return mask


def pair_motion(previous: np.ndarray, current: np.ndarray, previous_mask: np.ndarray,
                current_mask: np.ndarray) -> np.ndarray | None:
    """The similarity (2, 3) mapping ``current``'s pixels onto ``previous``'s, from corners of the background
    tracked between the two gray frames; None when fewer than :data:`MIN_INLIERS` agree."""
    import cv2  # imported here: Pose2D uses this module's array maps, and opencv is needed only to track

    corners = cv2.goodFeaturesToTrack(previous, MAX_CORNERS, CORNER_QUALITY, 7, mask=previous_mask)
    if corners is None or len(corners) < MIN_INLIERS:
        return None
    moved, found, _ = cv2.calcOpticalFlowPyrLK(previous, current, corners, None, winSize=(21, 21), maxLevel=3)
    found = found[:, 0] == 1
    src, dst = moved[found, 0], corners[found, 0]
    inside = (src >= 0).all(1) & (src[:, 0] < current.shape[1] - 1) & (src[:, 1] < current.shape[0] - 1)
    src, dst = src[inside], dst[inside]
    keep = current_mask[src[:, 1].astype(int), src[:, 0].astype(int)] > 0
    src, dst = src[keep], dst[keep]
    if len(src) < MIN_INLIERS:
        return None
    affine, inliers = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PX,
                                                  maxIters=2000, confidence=0.995)
    if affine is None or int(inliers.sum()) < MIN_INLIERS:
        return None
    return affine


def estimate_camera_motion(frames: Iterable, keypoints: np.ndarray, scores: np.ndarray,
                           progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The camera's motion in a clip of frames, each (H, W, 3) (uint8, or floats in [0, 1]; a numpy array, a
    CPU tensor or a generator, read one frame at a time) with the athlete's 2D (T, J, 2) pixels and scores
    (T, J) (0 = missing), which are kept out of the background.

    Returns (maps (T, 2, 3) float64 from each frame's pixels into the first frame's; tracked (T,) bool, False
    where a frame pair had too little background to follow: that frame keeps the previous frame's map).
    ``progress`` is called with 1 per frame (it may raise to interrupt). ValueError names a frame of the wrong
    shape or a frame count other than the pose's.
    """
    T = len(keypoints)
    maps = np.tile(np.eye(2, 3), (T, 1, 1))
    tracked = np.ones(T, bool)
    previous = previous_mask = None
    seen = 0
    for t, frame in enumerate(frames):
        seen = t + 1
        if t >= T:
            continue
        image = np.asarray(frame)
        if image.ndim != 3 or image.shape[-1] < 3:
            raise ValueError(f"each frame must have shape (H, W, 3); frame {t} has {tuple(image.shape)}")
        if previous is None:
            scale = min(1.0, TRACK_SIDE / max(image.shape[:2]))
            to_track, from_track = np.diag([scale, scale, 1.0])[:2], np.diag([1 / scale, 1 / scale, 1.0])[:2]
        current = _gray(image, scale)
        current_mask = background_mask(current.shape, keypoints[t] * scale, scores[t])
        if previous is not None:
            step = pair_motion(previous, current, previous_mask, current_mask)
            tracked[t] = step is not None
            maps[t] = maps[t - 1] if step is None else compose_affine(
                maps[t - 1], compose_affine(from_track, compose_affine(step, to_track)))
        previous, previous_mask = current, current_mask
        if progress is not None:
            progress(1)
    if seen != T:
        raise ValueError(f"the 2D pose has {T} frames but the images {seen}")
    return maps, tracked


def stabilize_frames(frames, maps: np.ndarray, max_side: int | None = None) -> np.ndarray:
    """Frames (T, H, W, 3) warped into the first frame's view by ``maps`` (T, 2, 3): float32 in [0, 1], black
    where a frame did not see, shrunk to ``max_side`` pixels on the longer side when larger. A panning camera's
    clip then stands still and the athlete travels across it."""
    import cv2

    T, H, W = frames.shape[:3]
    scale = 1.0 if max_side is None else min(1.0, max_side / max(H, W))
    size = (max(1, round(W * scale)), max(1, round(H * scale)))
    out = np.empty((T, size[1], size[0], 3), np.float32)
    for t in range(T):
        image = np.asarray(frames[t])[..., :3]
        image = np.ascontiguousarray(image if image.dtype == np.uint8 else image.astype(np.float32, copy=False))
        warped = cv2.warpAffine(image, maps[t] * scale, size, flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        if warped.dtype == np.uint8:
            np.multiply(warped, np.float32(1 / 255), out=out[t])
        else:
            out[t] = warped
    return out


def frame_stride(num_images: int, num_frames: int) -> int:
    """The stride n with len(images[::n]) == num_frames (a pose detected on every n-th image), or ValueError."""
    for n in range(1, num_images + 1):
        if -(-num_images // n) == num_frames:
            return n
        if -(-num_images // n) < num_frames:
            break
    raise ValueError(f"the 2D pose has {num_frames} frames but there are {num_images} images, and no frame stride "
                     f"matches: feed the frames the pose was detected on")
