"""Pose sequence types (DESIGN.md §3): Pose2D and Pose3D, their checks, normalisation and file formats.

Arrays are numpy float32 so the types cross ComfyUI wires, npz files and JSON without torch; models
convert at their boundary. Missing joints and frames are explicit (score 0), never dropped.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .camera_motion import apply_affine, check_camera_motion
from .skeleton import get_layout, to_h36m

POSE3D_SOURCES = ("detect", "dd", "pp", "fused", "gt")


class PoseError(ValueError):
    """Bad pose input: the message names the field and what was expected."""


def _check_array(name: str, value, shape_tail: tuple, allow_nan: bool = False) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float32)
    if arr.ndim != 1 + len(shape_tail) or tuple(arr.shape[1:]) != shape_tail:
        expected = "(T, " + ", ".join(map(str, shape_tail)) + ")"
        raise PoseError(f"{name} must have shape {expected}; got {tuple(arr.shape)}")
    if arr.shape[0] == 0:
        raise PoseError(f"{name} has no frames (T = 0)")
    if not allow_nan and not np.isfinite(arr).all():
        bad = np.unique(np.nonzero(~np.isfinite(arr))[0])[:5].tolist()
        raise PoseError(f"{name} contains NaN or inf values (first frames: {bad})")
    return arr


@dataclass
class Camera:
    """Pinhole camera in pixels; ``translation`` places the root-relative skeleton in the camera frame.

    Weak perspective is the limit of a far camera: ``focal`` large and ``translation[2]`` large.
    """

    focal: float
    center: tuple[float, float]
    translation: np.ndarray  # (T, 3) metres, root position in camera coordinates per frame

    def to_dict(self) -> dict:
        return {"focal": float(self.focal), "center": [float(c) for c in self.center],
                "translation": np.asarray(self.translation, np.float32).tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Camera":
        return cls(float(d["focal"]), tuple(d["center"]), np.asarray(d["translation"], np.float32))


@dataclass
class Pose2D:
    """A 2D pose sequence.

    keypoints: (T, J, 2) float32 pixels; scores: (T, J) in [0, 1], 0 = missing;
    image_size: (W, H) pixels; fps: frames per second of the sequence (after any stride);
    camera_motion: (T, 2, 3) float64 or None (a static camera), each frame's map of its pixels into the first
    frame's, the camera's own pan, tilt and zoom (:func:`camera_motion.estimate_camera_motion`).
    """

    keypoints: np.ndarray
    scores: np.ndarray
    image_size: tuple[int, int]
    fps: float = 25.0
    layout: str = "h36m17"
    camera_motion: np.ndarray | None = None

    def __post_init__(self):
        J = get_layout(self.layout).num_joints
        self.keypoints = _check_array("keypoints", self.keypoints, (J, 2), allow_nan=True)
        self.scores = _check_array("scores", self.scores, (J,), allow_nan=True)
        if self.scores.shape[0] != self.keypoints.shape[0]:
            raise PoseError(f"keypoints have {self.keypoints.shape[0]} frames but scores have "
                            f"{self.scores.shape[0]}")
        # A NaN coordinate is a missing joint: zero it and its score rather than poison the models.
        bad = ~np.isfinite(self.keypoints).all(-1) | ~np.isfinite(self.scores)
        if bad.any():
            self.keypoints = np.where(bad[..., None], 0.0, self.keypoints).astype(np.float32)
            self.scores = np.where(bad, 0.0, self.scores).astype(np.float32)
        self.scores = np.clip(self.scores, 0.0, 1.0)
        w, h = (int(v) for v in self.image_size)
        if w <= 0 or h <= 0:
            raise PoseError(f"image_size must be positive (W, H); got {self.image_size}")
        self.image_size = (w, h)
        if not np.isfinite(self.fps) or self.fps <= 0:
            raise PoseError(f"fps must be a positive number; got {self.fps}")
        self.fps = float(self.fps)
        if self.camera_motion is not None:
            try:
                self.camera_motion = check_camera_motion(self.camera_motion, self.keypoints.shape[0])
            except ValueError as e:
                raise PoseError(str(e)) from e

    @property
    def num_frames(self) -> int:
        return self.keypoints.shape[0]

    def stabilized(self) -> "Pose2D":
        """The keypoints in the first frame's pixels, as a static camera would have seen them (camera_motion
        None); the sequence itself when it has no camera motion."""
        if self.camera_motion is None:
            return self
        return replace(self, keypoints=apply_affine(self.keypoints, self.camera_motion).astype(np.float32),
                       camera_motion=None)

    def to_h36m(self) -> "Pose2D":
        """The same sequence in the H36M-17 layout (scores remapped)."""
        if self.layout == "h36m17":
            return self
        kp, sc = to_h36m(self.keypoints, self.scores, self.layout)
        return replace(self, keypoints=kp, scores=sc, layout="h36m17")

    def require_visible(self, min_frames: int = 1) -> "Pose2D":
        """Raise a clear error when nobody was seen (all scores zero)."""
        seen = int((self.scores.max(-1) > 0).sum())
        if seen < min_frames:
            raise PoseError(f"no person detected: {seen} of {self.num_frames} frames have any joint with a "
                            f"score above 0 (need {min_frames})")
        return self

    def normalized(self) -> np.ndarray:
        """(T, J, 3): x, y scaled by the longer image side to [-1, 1] (aspect kept), score as 3rd channel."""
        return normalize_screen(self.keypoints, self.scores, self.image_size)


@dataclass
class Pose3D:
    """A 3D pose sequence: joints (T, 17, 3) float32 metres, root-relative, camera frame
    (x right, y down, z forward), with an optional camera for reprojection and a source tag.

    ``agreement_2d``: (T, 17) in [0, 1] or None, how well each detected joint agreed with the lifter's 2D
    front end (:func:`denoise2d.detection_agreement`); the fit to the 2D weighs the detections by it.
    """

    joints: np.ndarray
    fps: float = 25.0
    source: str = "dd"
    camera: Camera | None = None
    image_size: tuple[int, int] | None = None
    meta: dict = field(default_factory=dict)
    agreement_2d: np.ndarray | None = None

    def __post_init__(self):
        self.joints = _check_array("joints", self.joints, (17, 3))
        if self.agreement_2d is not None:
            agreement = _check_array("agreement_2d", self.agreement_2d, (17,))
            if agreement.shape[0] != self.joints.shape[0]:
                raise PoseError(f"agreement_2d has {agreement.shape[0]} frames, joints {self.joints.shape[0]}")
            self.agreement_2d = np.clip(agreement, 0.0, 1.0)
        if self.source not in POSE3D_SOURCES:
            raise PoseError(f"source must be one of {POSE3D_SOURCES}; got {self.source!r}")
        if not np.isfinite(self.fps) or self.fps <= 0:
            raise PoseError(f"fps must be a positive number; got {self.fps}")
        self.fps = float(self.fps)

    @property
    def num_frames(self) -> int:
        return self.joints.shape[0]


def normalize_screen(keypoints: np.ndarray, scores: np.ndarray, image_size) -> np.ndarray:
    """Pixels → [-1, 1] by the longer side, centred on the image (MotionBERT's convention, aspect kept).

    Returns (..., J, 3) float32 with the score as the third channel.
    """
    w, h = image_size
    scale = max(w, h) / 2.0
    xy = (np.asarray(keypoints, np.float32) - np.array([w / 2.0, h / 2.0], np.float32)) / scale
    return np.concatenate([xy, np.asarray(scores, np.float32)[..., None]], axis=-1).astype(np.float32)


def denormalize_screen(xy: np.ndarray, image_size) -> np.ndarray:
    """Inverse of :func:`normalize_screen` for the (..., 2) coordinates."""
    w, h = image_size
    return (np.asarray(xy, np.float32) * (max(w, h) / 2.0) + np.array([w / 2.0, h / 2.0], np.float32))


def root_relative(joints: np.ndarray, root: int = 0) -> np.ndarray:
    """(..., J, 3) with the root joint moved to the origin."""
    return joints - joints[..., root:root + 1, :]


# ----------------------------------------------------------------------------- files

def save_pose(pose: Pose2D | Pose3D, path: str | Path) -> Path:
    """Write a pose to ``.npz`` or ``.json`` (chosen by suffix), atomically."""
    path = Path(path)
    payload = pose_to_dict(pose)
    if path.suffix == ".npz":
        return write_npz(path, {k: json.dumps(v) if isinstance(v, dict) else v for k, v in payload.items()})
    if path.suffix != ".json":
        raise PoseError(f"pose files are .npz or .json; got {path.name!r}")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload))
    tmp.replace(path)
    return path


def write_npz(path: str | Path, arrays: dict) -> Path:
    """Write arrays to ``path`` atomically (a temporary file, then a rename): no half-written results."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
    tmp.replace(path)
    return path


def pose_to_dict(pose: Pose2D | Pose3D) -> dict:
    if isinstance(pose, Pose2D):
        d = {"kind": "pose2d", "keypoints": pose.keypoints.tolist(), "scores": pose.scores.tolist(),
             "image_size": list(pose.image_size), "fps": pose.fps, "layout": pose.layout}
        if pose.camera_motion is not None:
            d["camera_motion"] = pose.camera_motion.tolist()
        return d
    d = {"kind": "pose3d", "joints": pose.joints.tolist(), "fps": pose.fps, "source": pose.source,
         "meta": pose.meta}
    if pose.camera is not None:
        d["camera"] = pose.camera.to_dict()
    if pose.image_size is not None:
        d["image_size"] = list(pose.image_size)
    if pose.agreement_2d is not None:
        d["agreement_2d"] = pose.agreement_2d.tolist()
    return d


def pose_from_dict(d: dict) -> Pose2D | Pose3D:
    kind = d.get("kind")
    if kind is None and "pose3d" in d:  # the CLI's refine output: its fused 3D pose
        d = {**d, "joints": d["pose3d"], "source": "fused", "camera": None}
        kind = "pose3d"
    if kind is None:  # the CLI's input format: keypoints/scores without a kind tag
        kind = "pose2d" if "keypoints" in d else "pose3d" if "joints" in d else None
    if kind == "pose2d":
        missing = [k for k in ("keypoints", "scores", "image_size") if k not in d]
        if missing:
            raise PoseError(f"2D pose file lacks {missing}")
        return Pose2D(np.asarray(d["keypoints"]), np.asarray(d["scores"]),
                      tuple(int(v) for v in np.asarray(d["image_size"]).tolist()),
                      float(d.get("fps", 25.0)), str(d.get("layout", "h36m17")),
                      np.asarray(d["camera_motion"]) if d.get("camera_motion") is not None else None)
    if kind == "pose3d":
        cam = d.get("camera")
        size = d.get("image_size")
        return Pose3D(np.asarray(d["joints"]), float(d.get("fps", 25.0)), str(d.get("source", "dd")),
                      Camera.from_dict(cam) if cam else None,
                      tuple(int(v) for v in size) if size is not None else None, dict(d.get("meta", {})),
                      np.asarray(d["agreement_2d"]) if d.get("agreement_2d") is not None else None)
    raise PoseError(f"not a FinePhys pose file: no 'keypoints' (2D) or 'joints' (3D) entry (kind={kind!r})")


def load_pose(path: str | Path) -> Pose2D | Pose3D:
    """Read a pose written by :func:`save_pose` (or a CLI-format ``.npz``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"pose file not found: {path}")
    try:
        if path.suffix == ".json":
            d = json.loads(path.read_text())
        else:
            with np.load(path, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
            for k in ("kind", "layout", "source"):
                if k in d:
                    d[k] = str(d[k])
            for k in ("meta", "camera"):
                if k in d:
                    d[k] = json.loads(str(d[k]))
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise PoseError(f"cannot read pose file {path.name}: {e}") from e
    return pose_from_dict(d)
