"""controlnet_aux ``POSE_KEYPOINT`` (OpenPose-18 JSON per frame) → Pose2D of the main performer.

A frame is ``{"people": [{"pose_keypoints_2d": [x, y, c] * 18, ...}], "canvas_width": W,
"canvas_height": H}``. Depending on the node that made it, x/y are normalised to 0..1 or in pixels; a
missing joint is (0, 0, 0).
"""
from __future__ import annotations

import numpy as np

from .detection import MainPersonSelector, boxes_from_keypoints
from .sequence import Pose2D, PoseError
from .skeleton import OPENPOSE18, openpose18_to_coco

_J = OPENPOSE18.num_joints


def _frame_people(frame: dict, t: int) -> np.ndarray:
    """(N, 18, 3) x, y, confidence for the people of one frame (people with no joints dropped)."""
    if not isinstance(frame, dict):
        raise PoseError(f"POSE_KEYPOINT frame {t} must be a dict with 'people'; got {type(frame).__name__}")
    people = []
    for p, person in enumerate(frame.get("people") or []):
        flat = (person or {}).get("pose_keypoints_2d") or []
        if len(flat) == 0:
            continue
        if len(flat) != 3 * _J:
            raise PoseError(f"POSE_KEYPOINT frame {t} person {p}: pose_keypoints_2d has {len(flat)} values; "
                            f"expected {3 * _J} (OpenPose-18 x, y, confidence)")
        people.append(np.asarray(flat, np.float64).reshape(_J, 3))
    arr = np.stack(people) if people else np.zeros((0, _J, 3))
    arr = np.where(np.isfinite(arr), arr, 0.0)
    return arr[(arr[..., 2] > 0).any(-1)]


def _canvas_size(frames: list[dict], image_size) -> tuple[int, int]:
    if image_size is not None:
        return int(image_size[0]), int(image_size[1])
    for frame in frames:
        if isinstance(frame, dict) and frame.get("canvas_width") and frame.get("canvas_height"):
            return int(frame["canvas_width"]), int(frame["canvas_height"])
    raise PoseError("POSE_KEYPOINT has no canvas_width / canvas_height; pass image_size=(W, H)")


def pose2d_from_openpose(frames_json: list[dict] | dict, fps: float = 25.0, image_size=None,
                         layout_out: str = "h36m17") -> Pose2D:
    """controlnet_aux POSE_KEYPOINT (a list of frame dicts, or one dict) → Pose2D.

    Coordinates are taken as normalised (and scaled by the canvas) when every visible joint lies in
    0..1, else as pixels. The main performer is chosen as for detection (largest, then continuous);
    frames with nobody get scores 0. layout_out: 'h36m17' (default) or 'coco17'.
    """
    if isinstance(frames_json, dict):
        frames_json = [frames_json]
    if not isinstance(frames_json, (list, tuple)) or len(frames_json) == 0:
        raise PoseError("POSE_KEYPOINT must be a non-empty list of frames")
    w, h = _canvas_size(frames_json, image_size)
    people = [_frame_people(frame, t) for t, frame in enumerate(frames_json)]
    visible = np.concatenate([p[..., :2][p[..., 2] > 0] for p in people] + [np.zeros((0, 2))])
    normalised = len(visible) > 0 and visible.min() >= 0.0 and visible.max() <= 1.0
    scale = np.array([w, h], np.float64) if normalised else np.ones(2)

    select = MainPersonSelector()
    T = len(frames_json)
    keypoints = np.zeros((T, _J, 2), np.float32)
    scores = np.zeros((T, _J), np.float32)
    for t, p in enumerate(people):
        xy, conf = p[..., :2] * scale, p[..., 2]
        i = select(boxes_from_keypoints(xy, conf))
        if i is not None:
            keypoints[t], scores[t] = xy[i], conf[i]
    kp, sc = openpose18_to_coco(keypoints, scores)
    pose = Pose2D(kp, sc, (w, h), fps, "coco17")
    if layout_out == "h36m17":
        return pose.to_h36m()
    if layout_out != "coco17":
        raise ValueError(f"layout_out must be 'h36m17' or 'coco17'; got {layout_out!r}")
    return pose
