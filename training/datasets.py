"""Dataset readers for stages 2–3 and one windowed torch Dataset over all of them.

Sources (each yields whole clips as :class:`Clip`):

- :class:`SynthSource` — shards written by ``training/synth.py`` (physics-exact gymnastics, 3D + 2D).
- :class:`H36MSource` — Human3.6M in VideoPose3D's public format:
  ``data_3d_h36m.npz`` holds ``positions_3d``: a pickled dict subject → action → (T, 32, 3) float32 world
  positions in **metres** (Z up); the 17 joints used are the 32 minus [4, 5, 9, 10, 11, 16, 20, 21, 22, 23,
  24, 28, 29, 30, 31], already in our H36M-17 order. ``data_2d_h36m_<detector>.npz`` holds ``positions_2d``:
  subject → action → list of 4 arrays (T, 17, 2) pixels, one per camera (sometimes (T, 17, 3) with a score),
  and ``metadata`` (num_joints, keypoints_symmetry and, for detections, layout_name 'h36m' or 'coco'). 2D
  detections can be a few frames longer than the mocap; they are cut to its length (as VideoPose3D does).
  The four cameras (intrinsics per camera, extrinsics per subject) are not in those files: VideoPose3D
  hard-codes them, we ship the same public numbers in ``h36m_cameras.json``. Without a 2D file the 2D is the
  pinhole projection of the 3D (lens distortion ignored, < 1 % of the image at the border). Video is 50 fps.
- :class:`AMASSSource` — AMASS as joint positions: one ``.npz`` per sequence with ``joints`` (T, 17, 3)
  float metres, world frame **Z up**, H36M-17 order, and ``fps``. AMASS ships SMPL-H parameters, not joints;
  produce these files with the SMPL-H body model (``smplx`` package, model files under their licence):
  run the body model on each sequence's ``poses``/``betas``/``trans`` to get vertices (T, 6890, 3), apply the
  Human3.6M joint regressor (``J_regressor_h36m.npy``, 17 × 6890, as distributed with SPIN / VideoPose3D-style
  pipelines) to get (T, 17, 3), and save ``np.savez(path, joints=..., fps=mocap_framerate)``. Cameras are
  drawn at random (``camera_aug``), like synthetic views.
- :class:`FineGymSource` — FineGym clips with 2D detections from our DetectPose2D: one ``.npz`` per clip in
  the CLI's pose format (keypoints (T, J, 2), scores (T, J), image_size, fps, layout; read with
  :func:`finephys_core.sequence.load_pose`, converted to H36M-17) plus an optional integer ``class_id``. 2D
  only (stage 3): ``has_3d`` is False.

:class:`ClipWindows` cuts every clip into windows and returns training dicts (see its docstring).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from finephys_core.sequence import load_pose, normalize_screen, root_relative
from training.corruption import CorruptionConfig, corrupt_2d
from training.synth_camera import CameraConfig, project, random_camera

H36M_REMOVED = (4, 5, 9, 10, 11, 16, 20, 21, 22, 23, 24, 28, 29, 30, 31)
H36M_KEPT = tuple(i for i in range(32) if i not in H36M_REMOVED)
H36M_FPS = 50.0
CAMERAS_JSON = Path(__file__).with_name("h36m_cameras.json")


@dataclass
class Clip:
    """One sequence. ``joints_world`` (T,17,3) Z-up metres lets a virtual camera re-view it;
    ``joints_cam`` (T,17,3) metres in the clip's own camera; ``keypoints`` (T,17,2) px with ``scores``."""

    fps: float
    image_size: tuple[int, int] | None = None
    keypoints: np.ndarray | None = None
    scores: np.ndarray | None = None
    joints_cam: np.ndarray | None = None
    joints_world: np.ndarray | None = None
    flight: np.ndarray | None = None
    detected: bool = False  # 2D from a real detector: kept as is (no corruption, no camera re-view)
    class_id: int = -1
    source: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        for a in (self.keypoints, self.joints_cam, self.joints_world):
            if a is not None:
                return len(a)
        return 0


# ----------------------------------------------------------------------------- quaternions / cameras


def quat_rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate (..., 3) vectors by a unit quaternion (w, x, y, z)."""
    q = np.asarray(q, np.float64)
    w, xyz = q[0], q[1:]
    uv = np.cross(xyz, v)
    return v + 2 * (w * uv + np.cross(xyz, uv))


def h36m_cameras(path: Path = CAMERAS_JSON) -> dict:
    """subject → list of 4 cameras, each {K (3,3), R (3,3) world→camera, t (3,) m, image_size, id}."""
    doc = json.loads(Path(path).read_text())
    out = {}
    for subject, extr in doc["extrinsics"].items():
        cams = []
        for intr, ex in zip(doc["intrinsics"], extr):
            q = np.asarray(ex["orientation"], np.float64)
            q_inv = q * np.array([1, -1, -1, -1])
            R = np.stack([quat_rotate(q_inv, e) for e in np.eye(3)], axis=1)  # columns = images of the basis
            centre = np.asarray(ex["translation"], np.float64) / 1000.0
            (fx, fy), (cx, cy) = intr["focal_length"], intr["center"]
            K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
            cams.append({"K": K, "R": R, "t": -R @ centre, "image_size": (intr["res_w"], intr["res_h"]),
                         "id": intr["id"]})
        out[subject] = cams
    return out


def project_pinhole(joints_cam: np.ndarray, K: np.ndarray) -> np.ndarray:
    uv = joints_cam[..., :2] / joints_cam[..., 2:3]
    return (uv * np.array([K[0, 0], K[1, 1]]) + K[:2, 2]).astype(np.float32)


# ----------------------------------------------------------------------------- sources


class SynthSource:
    """Clips from ``training/synth.py`` shards: a directory, a shard file, or a list of either (a mixture of
    generated sets)."""

    name = "synth"

    def __init__(self, path):
        paths = []
        for p in map(Path, path if isinstance(path, (list, tuple)) else [path]):
            if not (p.is_dir() or p.is_file()):
                raise FileNotFoundError(f"no synthetic shards at {p}: neither a folder of shard_*.npz nor a shard file")
            paths += sorted(p.glob("shard_*.npz")) if p.is_dir() else [p]
        if not paths:
            raise FileNotFoundError(f"no synthetic shards (shard_*.npz) in {path}")
        self.clips: list[Clip] = []
        for p in paths:
            with np.load(p, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
            for i, T in enumerate(d["num_frames"]):
                self.clips.append(Clip(
                    fps=float(d["fps"][i]), image_size=tuple(int(v) for v in d["image_size"][i]),
                    keypoints=d["keypoints_2d"][i, :T], scores=None, joints_cam=d["joints_cam"][i, :T],
                    joints_world=d["joints_world"][i, :T], flight=d["flight"][i, :T],
                    class_id=int(d["class_id"][i]), source=self.name, meta={"seed": int(d["seed"][i])}))


class H36MSource:
    """Human3.6M from VideoPose3D's files; one clip per (subject, action, camera)."""

    name = "h36m"

    def __init__(self, path_3d, path_2d=None, subjects=("S1", "S5", "S6", "S7", "S8"), cameras=(0, 1, 2, 3),
                 cameras_json: Path = CAMERAS_JSON, detected: bool | None = None):
        """``detected``: whether the 2D file holds detections (default: its metadata names a layout, which
        VideoPose3D's detection files do and its ground-truth ``data_2d_h36m_gt.npz`` does not)."""
        with np.load(path_3d, allow_pickle=True) as z:
            pos3d = z["positions_3d"].item()
        pos2d, layout = None, "h36m"
        if path_2d is not None:
            with np.load(path_2d, allow_pickle=True) as z:
                pos2d = z["positions_2d"].item()
                meta = z["metadata"].item() if "metadata" in z.files else {}
            layout = str(meta.get("layout_name", "h36m")).lower()
            if detected is None:
                detected = "layout_name" in meta
            if layout not in ("h36m", "coco", "human3.6m"):
                raise ValueError(f"{path_2d}: 2D layout {layout!r} not supported (h36m or coco)")
        cams = h36m_cameras(cameras_json)
        self.clips: list[Clip] = []
        for subject in subjects:
            if subject not in pos3d:
                raise KeyError(f"{path_3d} has no subject {subject!r}; it has {sorted(pos3d)}")
            for action, world in sorted(pos3d[subject].items()):
                world = np.asarray(world, np.float64)
                if world.ndim != 3 or world.shape[-1] != 3 or world.shape[1] not in (17, 32):
                    raise ValueError(f"{subject}/{action}: positions must be (T, 32 or 17, 3); got {world.shape}")
                if world.shape[1] == 32:
                    world = world[:, H36M_KEPT]
                for c in cameras:
                    cam = cams[subject][c]
                    jc = world @ cam["R"].T + cam["t"]
                    kp, sc = project_pinhole(jc, cam["K"]), None
                    if pos2d is not None:
                        kp, sc = self._detections(pos2d[subject][action][c], len(world), layout)
                    self.clips.append(Clip(
                        fps=H36M_FPS, image_size=cam["image_size"], keypoints=kp, scores=sc,
                        joints_cam=jc.astype(np.float32), joints_world=world.astype(np.float32),
                        detected=bool(detected and pos2d is not None),
                        source=self.name, meta={"subject": subject, "action": action, "camera": cam["id"]}))

    @staticmethod
    def _detections(arr, length: int, layout: str):
        from finephys_core.skeleton import coco_to_h36m
        arr = np.asarray(arr, np.float32)[:length]
        if len(arr) < length:
            raise ValueError(f"2D detections have {len(arr)} frames, fewer than the mocap's {length}")
        kp = arr[..., :2]
        sc = arr[..., 2] if arr.shape[-1] > 2 else np.ones(arr.shape[:2], np.float32)
        if layout == "coco":
            kp, sc = coco_to_h36m(kp, sc)
        return kp, sc


class AMASSSource:
    """AMASS sequences as joint-position npz files (``joints`` (T,17,3) Z-up metres, ``fps``)."""

    name = "amass"

    def __init__(self, paths):
        files = sorted(Path(paths).rglob("*.npz")) if Path(str(paths)).is_dir() else [Path(p) for p in
                                                                                       np.atleast_1d(paths)]
        self.clips: list[Clip] = []
        for p in files:
            with np.load(p, allow_pickle=False) as z:
                if "joints" not in z.files or "fps" not in z.files:
                    raise ValueError(f"{p}: AMASS joint files need 'joints' (T,17,3) and 'fps'; got {z.files}")
                joints = np.asarray(z["joints"], np.float32)
                fps = float(z["fps"])
            if joints.ndim != 3 or joints.shape[1:] != (17, 3):
                raise ValueError(f"{p}: joints must be (T, 17, 3) in H36M-17 order; got {joints.shape}")
            self.clips.append(Clip(fps=fps, joints_world=joints, source=self.name, meta={"file": p.name}))


class FineGymSource:
    """FineGym clips: DetectPose2D output files (CLI pose npz) with an optional ``class_id``."""

    name = "finegym"

    def __init__(self, paths):
        files = sorted(Path(paths).glob("*.npz")) if Path(str(paths)).is_dir() else [Path(p) for p in
                                                                                      np.atleast_1d(paths)]
        self.clips: list[Clip] = []
        for p in files:
            pose = load_pose(p).to_h36m()
            with np.load(p, allow_pickle=False) as z:
                cid = int(z["class_id"]) if "class_id" in z.files else -1
            self.clips.append(Clip(fps=pose.fps, image_size=pose.image_size, keypoints=pose.keypoints,
                                   scores=pose.scores, detected=True, class_id=cid, source=self.name,
                                   meta={"file": p.name}))


# ----------------------------------------------------------------------------- windows


def check_severity(severity) -> float | tuple[float, float]:
    """A corruption severity ≥ 0, or a range [low, high] with 0 < low ≤ high, as :class:`ClipWindows` takes it."""
    if isinstance(severity, (int, float)) and not isinstance(severity, bool) and severity >= 0:
        return float(severity)
    if (isinstance(severity, (list, tuple)) and len(severity) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in severity)
            and 0 < severity[0] <= severity[1]):
        return (float(severity[0]), float(severity[1]))
    raise ValueError(f"severity must be a number ≥ 0 or a range [low, high] with 0 < low ≤ high; got {severity!r}")


class ClipWindows(Dataset):
    """Fixed-length windows over clips from several sources, as training dicts of tensors.

    Each item:
        pose2d (W,17,3): 2D normalised by the longer image side (normalize_screen) + score channel;
            corrupted like a detector when ``corruption`` is set, unless the clip's 2D already comes from a
            detector (FineGym, H36M detection files).
        pose2d_px (W,17,2), image_size (2,), pose2d_clean (W,17,3): the uncorrupted normalised 2D.
        pose3d (W,17,3): metres, root-relative, camera frame; zeros when ``has_3d`` is False.
        has_3d (bool), fps (float, after resampling), dt = 1/fps, flight (W,) bool with has_flight,
        valid (W,) bool (False on padding of clips shorter than the window), class_id (int), source (str).

    Args:
        sources: objects with a ``clips`` list (the Source classes above).
        window: frames per item; stride: step between window starts (default window // 2).
        fps_resample: target fps; clips are subsampled by the nearest integer stride (never upsampled).
        corruption: a CorruptionConfig to corrupt clean 2D, or None. severity: its strength, or a range
            (low, high) from which each item draws its own, log-uniformly (detectors better and worse than
            the corruption model's; a fixed severity draws nothing, so its items stay as they were).
        camera_aug: re-view clips that have world joints and no detections through a fresh random camera
            each time (synthetic, H36M without a detection file, AMASS); AMASS always needs it (no camera).
        camera: the ranges those random cameras are drawn from (default: synth's training cameras).
        seed: base of the per-item random streams; call ``set_epoch`` to vary them between epochs.
    """

    def __init__(self, sources, window: int = 16, stride: int | None = None, fps_resample: float | None = None,
                 corruption: CorruptionConfig | None = None, camera_aug: bool = True,
                 severity: float | tuple[float, float] = 1.0,
                 seed: int = 0, camera: CameraConfig | None = None):
        if window < 2:
            raise ValueError(f"window must be at least 2 frames; got {window}")
        self.window, self.stride = window, stride or max(window // 2, 1)
        self.fps_resample, self.corruption, self.severity = fps_resample, corruption, check_severity(severity)
        self.camera_aug, self.seed, self.epoch = camera_aug, seed, 0
        self.camera = camera or CameraConfig()
        self.clips: list[Clip] = [c for s in sources for c in s.clips]
        self.index: list[tuple[int, int, int]] = []  # (clip, frame step, start)
        for ci, clip in enumerate(self.clips):
            step = self._step(clip)
            n = (clip.num_frames + step - 1) // step
            starts = range(0, max(n - window, 0) + 1, self.stride)
            self.index.extend((ci, step, s) for s in starts)
        if not self.index:
            raise ValueError("no clips in the given sources")

    def _step(self, clip: Clip) -> int:
        if not self.fps_resample:
            return 1
        return max(1, int(round(clip.fps / self.fps_resample)))

    def set_epoch(self, epoch: int):
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        ci, step, start = self.index[i]
        clip = self.clips[ci]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        frames = np.arange(start * step, clip.num_frames, step)[: self.window]
        valid = np.zeros(self.window, bool)
        valid[: len(frames)] = True
        frames = np.concatenate([frames, np.full(self.window - len(frames), frames[-1])])
        fps = clip.fps / step

        kp, scores, size, j3d = self._view(clip, frames, rng)
        has_3d = j3d is not None
        clean = normalize_screen(kp, np.ones(kp.shape[:2]) if scores is None else scores, size)
        if self.corruption is not None and not clip.detected:
            severity = (self.severity if isinstance(self.severity, float)
                        else float(np.exp(rng.uniform(*np.log(self.severity)))))
            kp, scores = corrupt_2d(kp, scores, size, rng, severity, fps, self.corruption)
        if scores is None:
            scores = np.ones(kp.shape[:2], np.float32)
        flight = clip.flight[frames] if clip.flight is not None else np.zeros(self.window, bool)
        return {
            "pose2d": torch.from_numpy(normalize_screen(kp, scores, size)),
            "pose2d_px": torch.from_numpy(np.asarray(kp, np.float32)),
            "pose2d_clean": torch.from_numpy(clean),
            "image_size": torch.tensor(size, dtype=torch.float32),
            "pose3d": torch.from_numpy(root_relative(j3d).astype(np.float32) if has_3d
                                       else np.zeros((self.window, 17, 3), np.float32)),
            "has_3d": has_3d, "fps": float(fps), "dt": float(1.0 / fps),
            "flight": torch.from_numpy(np.asarray(flight, bool)), "has_flight": clip.flight is not None,
            "valid": torch.from_numpy(valid), "class_id": clip.class_id, "source": clip.source,
        }

    def _view(self, clip: Clip, frames: np.ndarray, rng: np.random.Generator):
        """(keypoints px, scores or None, image size, camera-frame joints or None) for the window."""
        if clip.joints_world is not None and not clip.detected and (self.camera_aug or clip.keypoints is None):
            world = clip.joints_world[frames].astype(np.float64)
            K, R, t, size = random_camera(world, rng, self.camera)
            jc = world @ R.T + t
            return project(jc, K).astype(np.float32), None, size, jc
        if clip.keypoints is None:
            raise ValueError(f"{clip.source} clip has neither 2D keypoints nor world joints")
        jc = clip.joints_cam[frames].astype(np.float64) if clip.joints_cam is not None else None
        scores = clip.scores[frames] if clip.scores is not None else None
        return clip.keypoints[frames], scores, clip.image_size, jc
