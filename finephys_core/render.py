"""Skeleton rendering: OpenPose-style colour skeletons (what ControlNet openpose models expect) and a simple
orthographic preview of 3D poses.

Sizes are (h, w) in torch order; a pose's ``image_size`` is (W, H) as :class:`~.sequence.Pose2D` defines it.
Keypoints are continuous pixel coordinates (0..W spans the image); framing into another size goes through
:func:`fit_transform` so renders, heatmaps and previews line up.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .sequence import Pose2D, Pose3D, PoseError
from .skeleton import H36M17, OPENPOSE18

FITS = ("stretch", "crop", "pad")

# OpenPose's 18-colour palette (RGB): joint i and limb i share colour i, as the OpenPose renderer and
# ControlNet's openpose annotator draw them.
OPENPOSE_COLORS = np.array([
    [255, 0, 0], [255, 85, 0], [255, 170, 0], [255, 255, 0], [170, 255, 0], [85, 255, 0], [0, 255, 0],
    [0, 255, 85], [0, 255, 170], [0, 255, 255], [0, 170, 255], [0, 85, 255], [0, 0, 255], [85, 0, 255],
    [170, 0, 255], [255, 0, 255], [255, 0, 170], [255, 0, 85]], dtype=np.float32) / 255.0

# OpenPose-18 limbs (0-based) in OpenPose's drawing order; limb i is drawn with OPENPOSE_COLORS[i].
OPENPOSE_LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
                  (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))

# OpenPose-18 joint ← H36M-17 joint (-1: absent). Neck = thorax, nose = H36M's neck/nose; no eyes or ears.
_H36M_TO_OPENPOSE = (9, 8, 14, 15, 16, 11, 12, 13, 1, 2, 3, 4, 5, 6, -1, -1, -1, -1)
# OpenPose-18 joint ← COCO-17 joint; the neck (-2) is the mid-shoulder point.
_COCO_TO_OPENPOSE = (0, -2, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)


def h36m_limb_colors() -> np.ndarray:
    """(16, 3) RGB 0..1, one per H36M-17 bone (``H36M17.bones`` order), matching the OpenPose limb colours
    where the bone exists in OpenPose; spine bones take OpenPose's neck colour family."""
    op_of_h36m = {h: o for o, h in enumerate(_H36M_TO_OPENPOSE) if h >= 0}
    limb_index = {frozenset(limb): i for i, limb in enumerate(OPENPOSE_LIMBS)}
    colors = []
    for k, (a, b) in enumerate(H36M17.bones):
        i = limb_index.get(frozenset((op_of_h36m.get(a, -9), op_of_h36m.get(b, -9))))
        colors.append(OPENPOSE_COLORS[i] if i is not None else OPENPOSE_COLORS[(6 + 3 * k) % 18])
    return np.stack(colors)


def to_openpose18(keypoints: np.ndarray, scores: np.ndarray, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """(T, J, 2), (T, J) in ``layout`` → (T, 18, 2), (T, 18) in OpenPose-18 order (absent joints score 0)."""
    keypoints, scores = np.asarray(keypoints, np.float32), np.asarray(scores, np.float32)
    if layout == "openpose18":
        return keypoints, scores
    if layout in ("coco17", "halpe26"):  # Halpe-26 starts with the 17 COCO joints
        table = _COCO_TO_OPENPOSE
        neck = keypoints[:, [5, 6]].mean(1), scores[:, [5, 6]].min(1)
    elif layout == "h36m17":
        table = _H36M_TO_OPENPOSE
    else:
        raise PoseError(f"cannot render layout {layout!r} as OpenPose-18")
    idx = np.array([max(i, 0) for i in table])
    kp, sc = keypoints[:, idx].copy(), scores[:, idx].copy()
    for o, src in enumerate(table):
        if src == -1:
            sc[:, o] = 0.0
        elif src == -2:
            kp[:, o], sc[:, o] = neck
    return kp, sc


def fit_transform(image_size: tuple[int, int], out_size: tuple[int, int], fit: str = "stretch"):
    """Affine map from image pixels (W, H) to an output of (h, w) pixels: ``u = x * sx + ox``, ``v = y * sy + oy``.

    fit: ``stretch`` scales each axis to fill (aspect changes); ``crop`` scales uniformly to cover and
    centre-crops; ``pad`` scales uniformly to fit and letterboxes. Returns (sx, sy, ox, oy, scaled_hw), where
    scaled_hw is the (h, w) the whole image occupies before the crop or pad.
    """
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}; got {fit!r}")
    W, H = image_size
    h, w = out_size
    if fit == "stretch":
        return w / W, h / H, 0.0, 0.0, (h, w)
    scale = (max if fit == "crop" else min)(w / W, h / H)
    sh, sw = max(1, round(H * scale)), max(1, round(W * scale))
    return sw / W, sh / H, float((w - sw) // 2), float((h - sh) // 2), (sh, sw)


def fit_keypoints(keypoints, image_size, out_size, fit: str = "stretch"):
    """Keypoints (..., 2) in image pixels → output pixels (same type as given: numpy or torch)."""
    sx, sy, ox, oy, _ = fit_transform(image_size, out_size, fit)
    if isinstance(keypoints, torch.Tensor):
        scale = keypoints.new_tensor([sx, sy])
        return keypoints * scale + keypoints.new_tensor([ox, oy])
    return (np.asarray(keypoints, np.float32) * np.array([sx, sy], np.float32)
            + np.array([ox, oy], np.float32))


def fit_frames(frames: torch.Tensor, out_size: tuple[int, int], fit: str = "stretch") -> torch.Tensor:
    """IMAGE-layout frames (T, H, W, C) → (T, h, w, C) framed exactly as :func:`fit_keypoints` frames poses."""
    if frames.ndim != 4:
        raise ValueError(f"frames must be (T, H, W, C); got {tuple(frames.shape)}")
    T, H, W, C = frames.shape
    h, w = out_size
    if (H, W) == (h, w):
        return frames
    _, _, ox, oy, (sh, sw) = fit_transform((W, H), out_size, fit)
    x = F.interpolate(frames.permute(0, 3, 1, 2).float(), size=(sh, sw), mode="bilinear", align_corners=False,
                      antialias=sh < H or sw < W)
    ox, oy = int(ox), int(oy)
    if fit == "pad":
        x = F.pad(x, (ox, w - sw - ox, oy, h - sh - oy))
    else:  # crop (offsets <= 0) or stretch (offsets 0, sizes equal)
        x = x[:, :, -oy:-oy + h, -ox:-ox + w]
    return x.permute(0, 2, 3, 1).contiguous()


def _as_canvas(background, T: int, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if background is None:
        return np.zeros((T, h, w, 3), np.float32)
    bg = torch.as_tensor(background).float()
    if bg.ndim == 3:
        bg = bg[None]
    if bg.shape[-1] != 3:
        raise ValueError(f"background must be an IMAGE (T, H, W, 3); got {tuple(bg.shape)}")
    if bg.shape[0] not in (1, T):
        raise ValueError(f"background has {bg.shape[0]} frames; the pose has {T} (give 1 or {T})")
    bg = fit_frames(bg, size, "stretch").expand(T, -1, -1, -1)
    return bg.clamp(0, 1).numpy().copy()


def render_skeleton(pose2d: Pose2D, size: tuple[int, int] | None = None, background=None,
                    style: str = "openpose", min_score: float = 0.3, fit: str = "stretch") -> torch.Tensor:
    """Draw each frame's skeleton OpenPose style: limbs as 60 %-opaque ellipses, joints as filled circles.

    Args:
        pose2d: any supported layout (H36M-17 renders without eyes and ears; neck = thorax).
        size: output (h, w); default the background's size, else the pose's image size.
        background: optional IMAGE (T or 1, H, W, 3) float 0..1, stretched to ``size``; black when None.
        min_score: joints below this are not drawn, nor limbs touching them.
        fit: how the pose's image maps into ``size`` (see :func:`fit_transform`).
    Returns:
        (T, h, w, 3) float32 0..1.
    """
    if style != "openpose":
        raise ValueError(f"unknown render style {style!r}; supported: 'openpose'")
    if size is None:
        size = (tuple(background.shape[-3:-1]) if background is not None
                else (pose2d.image_size[1], pose2d.image_size[0]))
    h, w = (int(v) for v in size)
    kp, sc = to_openpose18(pose2d.keypoints, pose2d.scores, pose2d.layout)
    kp = fit_keypoints(kp, pose2d.image_size, (h, w), fit)
    canvas = _as_canvas(background, pose2d.num_frames, (h, w))
    stick = max(1, round(4 * min(h, w) / 512))
    for t in range(pose2d.num_frames):
        _draw_openpose(canvas[t], kp[t], sc[t] >= max(min_score, 1e-4), stick)
    return torch.from_numpy(canvas)


def _draw_openpose(img: np.ndarray, kp: np.ndarray, seen: np.ndarray, stick: int) -> None:
    """Draw one frame in place: img (h, w, 3) float32, kp (18, 2) px, seen (18,) bool."""
    for i, (a, b) in enumerate(OPENPOSE_LIMBS):
        if not (seen[a] and seen[b]):
            continue
        layer = img.copy()
        (xa, ya), (xb, yb) = kp[a], kp[b]
        length = float(np.hypot(xb - xa, yb - ya))
        angle = float(np.degrees(np.arctan2(yb - ya, xb - xa)))
        centre = (int(round((xa + xb) / 2)), int(round((ya + yb) / 2)))
        poly = cv2.ellipse2Poly(centre, (int(round(length / 2)), stick), int(round(angle)), 0, 360, 1)
        cv2.fillConvexPoly(layer, poly, OPENPOSE_COLORS[i].tolist())
        img[:] = img * 0.4 + layer * 0.6
    for j in np.nonzero(seen)[0]:
        x, y = kp[j]
        cv2.circle(img, (int(round(x)), int(round(y))), stick, OPENPOSE_COLORS[j].tolist(), thickness=-1)


def render_pose3d_preview(pose3d: Pose3D, size: tuple[int, int] = (256, 512), margin: float = 0.1) -> torch.Tensor:
    """Orthographic front (x, y) and side (z, y) views side by side, one scale for the whole clip.

    Args:
        pose3d: joints (T, 17, 3) metres, camera frame (x right, y down, z forward).
        size: output (h, w); each view is (h, w // 2).
    Returns:
        (T, h, w, 3) float32 0..1, H36M bones coloured as the OpenPose palette.
    """
    h, w = (int(v) for v in size)
    half = w // 2
    joints = pose3d.joints - pose3d.joints[:, :1]
    extent = float(np.abs(joints).max()) or 1.0
    scale = (1 - 2 * margin) * min(h, half) / (2 * extent)
    colors = h36m_limb_colors()
    stick = max(1, round(3 * min(h, half) / 256))
    out = np.zeros((pose3d.num_frames, h, w, 3), np.float32)
    for t in range(pose3d.num_frames):
        for view, (ax, x0) in enumerate(((0, 0), (2, half))):
            pts = np.stack([joints[t, :, ax] * scale + x0 + half / 2, joints[t, :, 1] * scale + h / 2], -1)
            pts = np.round(pts).astype(np.int32)
            for k, (a, b) in enumerate(H36M17.bones):
                cv2.line(out[t], tuple(pts[a].tolist()), tuple(pts[b].tolist()), colors[k].tolist(), stick,
                         cv2.LINE_AA)
        cv2.line(out[t], (half, 0), (half, h - 1), (0.3, 0.3, 0.3), 1)
    return torch.from_numpy(out)


__all__ = ["FITS", "OPENPOSE_COLORS", "OPENPOSE_LIMBS", "OPENPOSE18", "fit_frames", "fit_keypoints",
           "fit_transform", "h36m_limb_colors", "render_pose3d_preview", "render_skeleton", "to_openpose18"]
