"""Video frames for ``bench physics --stabilize``: a held-out clip filmed by the panning and zooming camera of
``--track`` / ``--zoom``, so that :func:`camera_motion.estimate_camera_motion` is measured on images.

The background is a textured plane (noise at several scales and flat boards, like an arena's crowd and
advertising). The athlete is drawn as thick limbs at the clean 2D, moved by the camera as the detections are.
A camera turning about its own centre moves such a far background as one similarity per frame, which is
what the estimate fits; parallax, motion blur and moving crowds are not modelled.
"""
from __future__ import annotations

import numpy as np

from ..camera_motion import apply_affine, compose_affine, invert_affine
from ..skeleton import H36M17


def background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (height, width, 3) texture: smooth noise at 8–128 px scales and 60 flat rectangles."""
    import cv2

    img = np.zeros((height, width, 3), np.float32)
    for cell in (8, 16, 32, 64, 128):
        coarse = rng.random((max(height // cell, 2), max(width // cell, 2), 3)).astype(np.float32)
        img += cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC) / 5
    for _ in range(60):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        size = int(rng.integers(10, 120)), int(rng.integers(5, 60))
        cv2.rectangle(img, (x, y), (x + size[0], y + size[1]), tuple(float(c) for c in rng.random(3)), -1)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def camera_maps(clip: dict, track: float, zoom: float) -> tuple[np.ndarray, np.ndarray]:
    """(T, 2, 3) maps of each frame's pixels into the static camera's, and (T, 2, 3) into the first frame's,
    for the camera of ``bench --track`` / ``--zoom`` (it moves the detections, :func:`.physics.filmed_detections`,
    and films the frames): ``track`` of the pelvis's travel from its clip mean taken
    out, then a zoom about the image centre from 1× to ``zoom``×, geometric."""
    size = np.asarray(clip["image_size"], np.float64)
    pelvis = clip["keypoints_2d"][:, 0].astype(np.float64)
    shift = track * (pelvis - pelvis.mean(0))                                   # (T, 2)
    factor = np.geomspace(1.0, zoom, len(pelvis))
    centre = size / 2.0
    to_static = np.zeros((len(pelvis), 2, 3))
    to_static[:, 0, 0] = to_static[:, 1, 1] = 1.0 / factor
    to_static[:, :, 2] = centre - centre / factor[:, None] + shift
    first = np.broadcast_to(invert_affine(to_static[:1]), to_static.shape)
    return to_static, compose_affine(first, to_static)


def render_frames(clip: dict, track: float, zoom: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(frames (T, H, W, 3) uint8, the true maps of each frame's pixels into the first frame's (T, 2, 3))."""
    import cv2

    w, h = (int(v) for v in clip["image_size"])
    to_static, to_first = camera_maps(clip, track, zoom)
    corners = np.broadcast_to(np.array([[0, 0], [w, 0], [0, h], [w, h]], np.float64), (len(to_static), 4, 2))
    seen = apply_affine(corners, to_static)
    lo, hi = np.floor(seen.min((0, 1))) - 8, np.ceil(seen.max((0, 1))) + 8
    plane = background(int(hi[1] - lo[1]), int(hi[0] - lo[0]), np.random.default_rng(seed))
    to_plane = to_static.copy()
    to_plane[:, :, 2] -= lo
    athlete = apply_affine(clip["keypoints_2d"].astype(np.float64), invert_affine(to_static))
    width = max(3, h // 60)
    frames = np.empty((len(to_static), h, w, 3), np.uint8)
    for t, m in enumerate(to_plane):
        frames[t] = cv2.warpAffine(plane, m, (w, h), flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR)
        for a, b in H36M17.bones:
            cv2.line(frames[t], tuple(int(v) for v in athlete[t, a]), tuple(int(v) for v in athlete[t, b]),
                     (230, 40, 40), width)
    return frames, to_first
