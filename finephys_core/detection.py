"""2D pose detection with rtmlib (DESIGN.md §4 DetectPose2D): frames in, one main performer's Pose2D out.

rtmlib's own tools do the work: YOLOX + RTMPose (two-stage, COCO-17 or Halpe-26) or RTMO (one-stage).
We call the detector and the pose model ourselves rather than through ``rtmlib.Body`` so that the boxes
come back and a frame where the detector finds nobody never reaches the pose model: ``Body`` would
return one pose estimated from the whole frame there (its fallback), which we must not report.

Model files: ``<model_dir>/<zip stem>.onnx`` (the name rtmlib itself unpacks a checkpoint to), else
rtmlib's own cache, else rtmlib's ``download_checkpoint`` into the first model folder.
"""
from __future__ import annotations

import math
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence
from urllib.parse import urlparse

import numpy as np

from .sequence import Pose2D, PoseError

MODES = ("performance", "balanced", "lightweight", "rtmo", "rtmo-s", "rtmo-m", "rtmo-l")
KEYPOINT_SETS = ("coco17", "halpe26")
_RTMO_SIZES = {"rtmo": "balanced", "rtmo-s": "lightweight", "rtmo-m": "balanced", "rtmo-l": "performance"}

Progress = Callable[[int], None] | None


@dataclass
class DetectorConfig:
    """How to build a :class:`PoseDetector`.

    mode: 'performance' (YOLOX-x + RTMPose-x), 'balanced' (YOLOX-m + RTMPose-m), 'lightweight'
        (YOLOX-tiny + RTMPose-s), or one-stage 'rtmo' (= 'rtmo-m'), 'rtmo-s', 'rtmo-l'.
    keypoint_set: 'coco17' (rtmlib ``Body``) or 'halpe26' (``BodyWithFeet``; two-stage modes only).
    model_dir: folder (or folders, searched in order; downloads go to the first) holding
        ``<zip stem>.onnx`` files; None = rtmlib's own cache (~/.cache/rtmlib/hub/checkpoints).
    det_path / pose_path: explicit .onnx files overriding the mode's (RTMO: pose_path only).
    det_input_size: (H, W) of YOLOX or RTMO; pose_input_size: (W, H) of RTMPose (rtmlib's conventions);
        None = the mode's sizes. Always both passed to rtmlib.
    det_threshold: detector score threshold (None = rtmlib's default; an end-to-end YOLOX with NMS in
        the graph always uses rtmlib's fixed 0.3).
    min_person_score: people whose mean keypoint score is below this are dropped.
    min_keypoint_score: keypoint scores below this become 0 (missing).
    allow_download: fetch missing model files with rtmlib; False raises a clear error instead.
    workers: frames processed concurrently (onnxruntime sessions are thread-safe); 1 = sequential.
    """

    mode: str = "balanced"
    backend: str = "onnxruntime"
    device: str = "cpu"
    keypoint_set: str = "coco17"
    model_dir: str | Path | Sequence[str | Path] | None = None
    det_path: str | Path | None = None
    pose_path: str | Path | None = None
    det_input_size: tuple[int, int] | None = None
    pose_input_size: tuple[int, int] | None = None
    det_threshold: float | None = None
    min_person_score: float = 0.1
    min_keypoint_score: float = 0.0
    allow_download: bool = True
    workers: int = 1

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown detection mode {self.mode!r}; expected one of {MODES}")
        if self.keypoint_set not in KEYPOINT_SETS:
            raise ValueError(f"unknown keypoint_set {self.keypoint_set!r}; expected one of {KEYPOINT_SETS}")
        if self.is_one_stage and self.keypoint_set != "coco17":
            raise ValueError(f"mode {self.mode!r} (RTMO) only gives COCO-17 keypoints; use a two-stage "
                             f"mode for {self.keypoint_set}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1; got {self.workers}")

    @property
    def is_one_stage(self) -> bool:
        return self.mode.startswith("rtmo")

    @property
    def model_dirs(self) -> list[Path]:
        if self.model_dir is None:
            return [_rtmlib_cache_dir()]
        dirs = [self.model_dir] if isinstance(self.model_dir, (str, Path)) else list(self.model_dir)
        return [Path(d).expanduser() for d in dirs]


@dataclass(frozen=True)
class ModelSpec:
    """The files and input sizes one mode needs (URLs and sizes read from rtmlib's solution classes)."""

    pose_url: str
    pose_input_size: tuple[int, int]
    det_url: str | None = None
    det_input_size: tuple[int, int] | None = None
    layout: str = "coco17"

    @property
    def one_stage(self) -> bool:
        return self.det_url is None


def model_spec(mode: str, keypoint_set: str = "coco17") -> ModelSpec:
    """rtmlib's download URL and input size for each model of ``mode`` (see :data:`MODES`)."""
    from rtmlib import Body, BodyWithFeet

    if mode in _RTMO_SIZES:
        entry = Body.RTMO_MODE[_RTMO_SIZES[mode]]
        return ModelSpec(entry["pose"], tuple(entry["pose_input_size"]))
    if mode not in MODES:
        raise ValueError(f"unknown detection mode {mode!r}; expected one of {MODES}")
    table = Body.MODE if keypoint_set == "coco17" else BodyWithFeet.MODE
    entry = table[mode]
    return ModelSpec(entry["pose"], tuple(entry["pose_input_size"]), entry["det"],
                     tuple(entry["det_input_size"]), keypoint_set)


def model_file_name(url: str) -> str:
    """The ``.onnx`` name rtmlib unpacks a checkpoint URL to (its zip stem)."""
    return Path(urlparse(url).path).name.split(".")[0] + ".onnx"


def _rtmlib_cache_dir() -> Path:
    from rtmlib.tools.file import _get_rtmhub_dir

    return Path(_get_rtmhub_dir()) / "checkpoints"


def resolve_model_file(url: str, model_dirs: Sequence[Path], allow_download: bool = True) -> str:
    """Local path of the model behind ``url``: found in ``model_dirs`` or rtmlib's cache, else downloaded
    into ``model_dirs[0]`` with rtmlib's ``download_checkpoint``. Raises FileNotFoundError naming the file."""
    name = model_file_name(url)
    search = list(model_dirs) + [_rtmlib_cache_dir()]
    for folder in search:
        if (folder / name).is_file():
            return str(folder / name)
    where = ", ".join(str(d) for d in dict.fromkeys(search))
    if not allow_download:
        raise FileNotFoundError(f"model file {name} not found in {where} (downloads disabled); "
                                f"download {url} and unzip its end2end.onnx there as {name}")
    from rtmlib.tools.file import download_checkpoint

    target = Path(model_dirs[0])
    try:
        target.mkdir(parents=True, exist_ok=True)
        # rtmlib unzips and then takes the first end2end.onnx anywhere under its folder: give it an empty
        # one of its own so no other file in ours can be picked, and concurrent downloads do not collide.
        with tempfile.TemporaryDirectory(dir=target, prefix=".download-") as tmp:
            os.replace(download_checkpoint(url, dst_dir=tmp), target / name)
        return str(target / name)
    except Exception as e:  # network, HTTP, zip, disk: one message the user can act on
        raise FileNotFoundError(f"model file {name} not found in {where} and downloading {url} into "
                                f"{target} failed ({type(e).__name__}: {e}); download it by hand "
                                f"and unzip its end2end.onnx there as {name}") from e


def _local_file(path: str | Path, what: str) -> str:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} model file not found: {path}")
    return str(path)


# ----------------------------------------------------------------------------- detector

def _empty(num_joints: int):
    return (np.zeros((0, num_joints, 2), np.float32), np.zeros((0, num_joints), np.float32),
            np.zeros((0, 4), np.float32))


def boxes_from_keypoints(keypoints: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(N, J, 2), (N, J) → (N, 4) x1, y1, x2, y2 around each person's joints with a score above 0."""
    keypoints = np.asarray(keypoints, np.float32)
    seen = np.asarray(scores) > 0
    big = np.float32(np.inf)
    lo = np.where(seen[..., None], keypoints, big).min(1)
    hi = np.where(seen[..., None], keypoints, -big).max(1)
    boxes = np.concatenate([lo, hi], axis=-1)
    return np.where(seen.any(1)[:, None], boxes, 0.0).astype(np.float32)


class PoseDetector:
    """rtmlib models built once (lazily, on the first frame) from a :class:`DetectorConfig`.

    ``detector(frame_bgr_uint8)`` → keypoints (N, J, 2) px, scores (N, J), boxes (N, 4) x1,y1,x2,y2 for
    the N people found (N may be 0), J = 17 (COCO) or 26 (Halpe) in :attr:`layout`.
    """

    def __init__(self, config: DetectorConfig | None = None):
        self.config = config or DetectorConfig()
        self.spec = model_spec(self.config.mode, self.config.keypoint_set)
        self._det = None
        self._pose = None

    @property
    def layout(self) -> str:
        return self.spec.layout

    @property
    def num_joints(self) -> int:
        return 26 if self.layout == "halpe26" else 17

    def model_files(self) -> dict[str, str]:
        """Resolve (downloading when allowed) the model files: {'det': path, 'pose': path}; RTMO: no 'det'."""
        cfg, spec = self.config, self.spec
        dirs = cfg.model_dirs
        files = {"pose": _local_file(cfg.pose_path, "pose") if cfg.pose_path
                 else resolve_model_file(spec.pose_url, dirs, cfg.allow_download)}
        if not spec.one_stage:
            files["det"] = (_local_file(cfg.det_path, "detector") if cfg.det_path
                            else resolve_model_file(spec.det_url, dirs, cfg.allow_download))
        return files

    def load(self) -> "PoseDetector":
        if self._pose is not None:
            return self
        from rtmlib import RTMO, YOLOX, RTMPose

        cfg, spec = self.config, self.spec
        files = self.model_files()
        common = dict(backend=cfg.backend, device=cfg.device)
        thr = {} if cfg.det_threshold is None else {"score_thr": float(cfg.det_threshold)}
        if spec.one_stage:
            size = tuple(cfg.det_input_size or spec.pose_input_size)
            self._pose = RTMO(files["pose"], model_input_size=size, **thr, **common)
        else:
            det_size = tuple(cfg.det_input_size or spec.det_input_size)
            pose_size = tuple(cfg.pose_input_size or spec.pose_input_size)
            self._det = YOLOX(files["det"], model_input_size=det_size, **thr, **common)
            self._pose = RTMPose(files["pose"], model_input_size=pose_size, **common)
        return self

    def __call__(self, frame: np.ndarray):
        _check_bgr_frame(frame)
        self.load()
        if self.spec.one_stage:
            keypoints, scores = self._pose(frame)
            boxes = None
        else:
            boxes = np.asarray(self._det(frame), np.float32).reshape(-1, 4)
            if len(boxes) == 0:  # nobody: never let RTMPose fall back to the whole frame
                return _empty(self.num_joints)
            keypoints, scores = self._pose(frame, bboxes=boxes)
        keypoints = np.asarray(keypoints, np.float32).reshape(-1, self.num_joints, 2)
        scores = np.asarray(scores, np.float32).reshape(-1, self.num_joints)
        scores = np.where(scores >= self.config.min_keypoint_score, scores, 0.0).astype(np.float32)
        if boxes is None:
            boxes = boxes_from_keypoints(keypoints, scores)
        keep = (scores.max(-1) > 0) & (scores.mean(-1) >= self.config.min_person_score)
        return keypoints[keep], scores[keep], boxes[keep]


# ----------------------------------------------------------------------------- frames

def _check_bgr_frame(frame) -> None:
    if not (isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3
            and frame.shape[2] == 3):
        desc = f"{type(frame).__name__} {getattr(frame, 'dtype', '')} {tuple(getattr(frame, 'shape', ()))}"
        raise PoseError(f"a frame for the detector must be an (H, W, 3) uint8 BGR array; got {desc}")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise PoseError(f"frame has zero size: {frame.shape}")


def _as_numpy(images) -> np.ndarray:
    if hasattr(images, "detach"):  # torch tensor (ComfyUI IMAGE) without importing torch
        images = images.detach().cpu()
        if str(images.dtype) in ("torch.bfloat16", "torch.float16"):
            images = images.float()
        images = images.numpy()
    return np.asarray(images)


def iter_bgr_uint8(images) -> Iterator[np.ndarray]:
    """The frames of an image batch as contiguous (H, W, 3) uint8 BGR arrays, converted one at a time.

    images: (T, H, W, 3) RGB — float in 0..1 (ComfyUI IMAGE, numpy or torch) or uint8 0..255.
    Shape, dtype and NaN problems raise PoseError here, before any frame is yielded.
    """
    arr = _as_numpy(images)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise PoseError(f"images must be a (T, H, W, 3) RGB batch (ComfyUI IMAGE); "
                        f"got shape {tuple(arr.shape)}")
    if 0 in arr.shape:
        raise PoseError(f"images batch is empty: shape {tuple(arr.shape)}")
    if arr.dtype == np.uint8:
        return (np.ascontiguousarray(frame[..., ::-1]) for frame in arr)
    if not np.issubdtype(arr.dtype, np.floating):
        raise PoseError(f"images must be float RGB in 0..1 or uint8 0..255; got dtype {arr.dtype}")
    bad = [t for t in range(len(arr)) if not np.isfinite(arr[t]).all()]  # per frame: no full-size mask
    if bad:
        raise PoseError(f"images contain NaN or inf values (frames {bad[:5]})")
    return (_float_rgb_to_bgr_uint8(frame) for frame in arr)


def _float_rgb_to_bgr_uint8(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) float RGB 0..1 → uint8 BGR, rounded and clipped (opencv: ~5x numpy's speed)."""
    import cv2

    frame = np.ascontiguousarray(frame, dtype=np.float32)
    return cv2.convertScaleAbs(cv2.max(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), 0.0), alpha=255.0)


def image_batch_to_bgr_uint8(images) -> list[np.ndarray]:
    """ComfyUI IMAGE (T, H, W, 3) float RGB 0..1 (numpy or torch; uint8 0..255 also accepted)
    → list of T (H, W, 3) uint8 BGR frames, the input rtmlib expects."""
    return list(iter_bgr_uint8(images))


# ----------------------------------------------------------------------------- main performer

def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (4,) x1,y1,x2,y2 box with (N, 4) boxes."""
    lo = np.maximum(box[:2], boxes[:, :2])
    hi = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    area = lambda b: np.prod(np.clip(b[..., 2:] - b[..., :2], 0, None), axis=-1)  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-9)


@dataclass
class MainPersonSelector:
    """Choose one performer per frame, consistently: on the first frame with people the largest box; later
    the best of size (relative to the frame's largest) + ``continuity`` × (IoU with the last chosen box +
    closeness of centres, in units of that box's diagonal). The last box is kept across empty frames."""

    continuity: float = 2.0
    last_box: np.ndarray | None = field(default=None, repr=False)

    def __call__(self, boxes: np.ndarray) -> int | None:
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        if len(boxes) == 0:
            return None
        area = np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=-1)
        value = area / max(area.max(), 1e-9)
        if self.last_box is not None:
            last = self.last_box
            diag = max(float(np.hypot(*(last[2:] - last[:2]))), 1.0)
            dist = np.linalg.norm((boxes[:, :2] + boxes[:, 2:]) / 2 - (last[:2] + last[2:]) / 2, axis=-1)
            value = value + self.continuity * (box_iou(last, boxes) + np.exp(-dist / diag))
        best = int(np.argmax(value))
        self.last_box = boxes[best]
        return best


def _assemble(per_frame, image_size, fps: float, layout: str, num_joints: int, layout_out: str) -> Pose2D:
    """Per-frame (keypoints (N,J,2), scores (N,J), boxes (N,4)) → the main performer's Pose2D."""
    select = MainPersonSelector()
    T = len(per_frame)
    keypoints = np.zeros((T, num_joints, 2), np.float32)
    scores = np.zeros((T, num_joints), np.float32)
    for t, (kp, sc, boxes) in enumerate(per_frame):
        i = select(boxes)
        if i is not None:
            keypoints[t], scores[t] = kp[i], sc[i]
    pose = Pose2D(keypoints, scores, image_size, fps, layout)
    return pose.to_h36m() if layout_out == "h36m17" else pose


def _check_layout_out(layout_out: str, layout: str) -> None:
    if layout_out not in ("h36m17", layout):
        raise ValueError(f"layout_out must be 'h36m17' or the detector's own {layout!r}; got {layout_out!r}")


def _checked_frames(frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """The frames, each checked to be uint8 BGR and the same size as the first."""
    size = None
    for t, frame in enumerate(frames):
        _check_bgr_frame(frame)
        if size is None:
            size = frame.shape[:2]
        elif frame.shape[:2] != size:
            raise PoseError(f"all frames must have the same size; frame {t} is "
                            f"{frame.shape[1]}x{frame.shape[0]}, the first was {size[1]}x{size[0]}")
        yield frame


def _chunks(items: Iterable, n: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _run_frames(frames: Iterable[np.ndarray], detector: PoseDetector, progress: Progress):
    """Detect on every frame (``detector.config.workers`` at a time), in order. Returns (results, (W, H))."""
    detector.load()
    workers = detector.config.workers
    results, size = [], None
    with ThreadPoolExecutor(workers) if workers > 1 else nullcontext() as pool:
        mapper = pool.map if pool is not None else map
        for chunk in _chunks(_checked_frames(frames), 2 * workers):
            size = size or (chunk[0].shape[1], chunk[0].shape[0])
            for result in mapper(detector, chunk):
                results.append(result)
                if progress:
                    progress(1)
    if not results:
        raise PoseError("no frames to detect poses on")
    return results, size


def detect_poses(frames, detector: PoseDetector | DetectorConfig, fps: float = 25.0,
                 progress: Progress = None, layout_out: str = "h36m17") -> Pose2D:
    """Detect the main performer's 2D pose in every frame.

    Args:
        frames: a ComfyUI IMAGE batch (T, H, W, 3) RGB float 0..1 or uint8 (numpy or torch), or an
            iterable of (H, W, 3) uint8 BGR frames (as opencv reads them).
        detector: a :class:`PoseDetector` (reused across calls) or a config to build one.
        fps: frames per second of the sequence.
        progress: called with 1 after each frame.
        layout_out: 'h36m17' (default) or the detector's raw layout ('coco17' / 'halpe26').
    Returns:
        Pose2D with T frames; frames with nobody have all scores 0.
    """
    if isinstance(detector, DetectorConfig):
        detector = PoseDetector(detector)
    _check_layout_out(layout_out, detector.layout)
    if hasattr(frames, "shape"):  # an image batch, not an iterable of BGR frames
        frames = iter_bgr_uint8(frames)
    results, size = _run_frames(frames, detector, progress)
    return _assemble(results, size, fps, detector.layout, detector.num_joints, layout_out)


# ----------------------------------------------------------------------------- video files

def _iter_video(cap, stride: int, max_frames: int | None) -> Iterator[np.ndarray]:
    index = kept = 0
    while max_frames is None or kept < max_frames:
        if index % stride == 0:
            ok, frame = cap.read()
            if not ok:
                return
            kept += 1
            yield frame
        elif not cap.grab():
            return
        index += 1


def detect_video(path: str | Path, config: DetectorConfig | PoseDetector | None = None, stride: int = 1,
                 max_frames: int | None = None, progress: Progress = None,
                 layout_out: str = "h36m17", camera_motion: bool = False) -> Pose2D:
    """Detect the main performer in a video file read with opencv.

    Every ``stride``-th frame is used, at most ``max_frames`` of them; the Pose2D's fps is the file's fps
    divided by ``stride`` (25 / stride when the file reports none). ``camera_motion``: read the frames a
    second time and measure the camera's pan, tilt and zoom on the background
    (:func:`camera_motion.estimate_camera_motion`; ``progress`` counts those frames too). Raises
    FileNotFoundError for a missing file and PoseError for one opencv cannot read or that has no frames.
    """
    import cv2

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1; got {stride}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None; got {max_frames}")
    detector = config if isinstance(config, PoseDetector) else PoseDetector(config)
    _check_layout_out(layout_out, detector.layout)
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise PoseError(f"opencv cannot open video {path.name} (unsupported format or corrupt file)")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        fps = (fps if math.isfinite(fps) and fps > 0 else 25.0) / stride
        try:
            results, size = _run_frames(_iter_video(cap, stride, max_frames), detector, progress)
        except PoseError as e:
            if "no frames" in str(e):
                raise PoseError(f"video {path.name} has no readable frames") from None
            raise
    finally:
        cap.release()
    pose = _assemble(results, size, fps, detector.layout, detector.num_joints, layout_out)
    if not camera_motion:
        return pose
    from .camera_motion import estimate_camera_motion

    cap = cv2.VideoCapture(str(path))
    try:
        rgb = (frame[..., ::-1] for frame in _iter_video(cap, stride, max_frames))
        maps, _ = estimate_camera_motion(rgb, pose.keypoints, pose.scores, progress)
    finally:
        cap.release()
    return replace(pose, camera_motion=maps)
