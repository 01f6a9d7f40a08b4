"""FinePhys nodes: 2D pose in — rtmlib detection on video frames, or controlnet_aux POSE_KEYPOINT."""
from __future__ import annotations

from dataclasses import replace

import torch

from ..finephys_core import camera_motion, detection, openpose_io
from ..finephys_core.sequence import Pose2D, PoseError
from . import comfy_adapter
from .comfy_adapter import RTMLIB_FOLDER, Progress
from .pose import require

comfy_adapter.register_model_folder(comfy_adapter.FINEPHYS_FOLDER)
comfy_adapter.register_model_folder(RTMLIB_FOLDER)

DEVICES = ("auto", "cpu", "cuda")
_FPS = ("FLOAT", {"default": 25.0, "min": 0.1, "max": 1000.0, "step": 0.01,
                  "tooltip": "Frame rate of the input frames (PhysNet's time step comes from it)."})


def _onnx_device(choice: str) -> str:
    """'auto' → 'cuda' when ComfyUI runs on CUDA and onnxruntime has its CUDA provider, else 'cpu'."""
    if choice != "auto":
        return choice
    try:
        import onnxruntime
    except ImportError:
        return "cpu"
    has_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    return "cuda" if has_cuda and comfy_adapter.torch_device().type == "cuda" else "cpu"


class FinePhysDetectPose2D:
    """IMAGE frames → the main performer's 2D pose per frame (rtmlib), in the H36M-17 layout."""

    CATEGORY = "FinePhys/pose"
    FUNCTION = "run"
    RETURN_TYPES = ("FINEPHYS_POSE2D",)
    RETURN_NAMES = ("pose2d",)
    OUTPUT_TOOLTIPS = ("2D pose sequence (H36M-17, pixels of the input frames; frames with nobody have score 0).",)
    DESCRIPTION = ("Detects people with rtmlib (YOLOX + RTMPose, or one-stage RTMO) and keeps one main performer "
                   "across frames (largest, then the most continuous). Model files are read from "
                   "models/finephys/rtmlib/ and downloaded there by rtmlib when missing.")

    def __init__(self):
        self._detector = None
        self._key = None

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "Video frames (an IMAGE batch, one image per frame)."}),
                "mode": (list(detection.MODES), {
                    "default": "balanced",
                    "tooltip": "performance: YOLOX-x + RTMPose-x; balanced: YOLOX-m + RTMPose-m; lightweight: "
                               "YOLOX-tiny + RTMPose-s; rtmo (= rtmo-m), rtmo-s, rtmo-l: one-stage RTMO."}),
                "fps": _FPS,
                "frame_stride": ("INT", {"default": 1, "min": 1, "max": 64,
                                         "tooltip": "Detect every n-th frame only; the pose's fps becomes fps / n."}),
                "keypoint_set": (list(detection.KEYPOINT_SETS), {
                    "default": "coco17",
                    "tooltip": "coco17: rtmlib Body; halpe26: BodyWithFeet (its own neck, head and hip joints; "
                               "two-stage modes only). Both are converted to H36M-17."}),
                "device": (list(DEVICES), {
                    "default": "auto",
                    "tooltip": "onnxruntime device; auto = cuda when ComfyUI runs on CUDA and onnxruntime-gpu "
                               "is installed, else cpu."}),
            },
        }

    def _get_detector(self, mode: str, keypoint_set: str, device: str) -> detection.PoseDetector:
        dirs = comfy_adapter.folder_dirs(RTMLIB_FOLDER)
        key = (mode, keypoint_set, device, tuple(map(str, dirs)))
        if self._key != key:
            dirs[0].mkdir(parents=True, exist_ok=True)  # rtmlib downloads missing files into the first folder
            config = detection.DetectorConfig(mode=mode, keypoint_set=keypoint_set, device=device, model_dir=dirs)
            self._detector, self._key = detection.PoseDetector(config), key
        return self._detector

    def run(self, images, mode, fps, frame_stride=1, keypoint_set="coco17", device="auto"):
        detector = self._get_detector(mode, keypoint_set, _onnx_device(device))
        frames = images[::int(frame_stride)]
        progress = Progress(len(frames), "FinePhys detect")
        try:
            pose = detection.detect_poses(frames, detector, fps=fps / frame_stride, progress=progress)
        finally:
            progress.close()
        return (pose,)


class FinePhysPoseFromKeypoints:
    """controlnet_aux POSE_KEYPOINT (OpenPose JSON per frame) → FINEPHYS_POSE2D."""

    CATEGORY = "FinePhys/pose"
    FUNCTION = "run"
    RETURN_TYPES = ("FINEPHYS_POSE2D",)
    RETURN_NAMES = ("pose2d",)
    OUTPUT_TOOLTIPS = ("2D pose sequence (H36M-17, pixels of the keypoints' canvas).",)
    DESCRIPTION = ("Uses the poses of controlnet_aux's DWPose / OpenPose estimators (POSE_KEYPOINT output) "
                   "instead of FinePhys's own detection: OpenPose-18 → COCO-17 → H36M-17, one main performer.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pose_keypoint": ("POSE_KEYPOINT", {"tooltip": "OpenPose-format keypoints per frame "
                                                               "(controlnet_aux DWPose / OpenPose Estimator)."}),
                "fps": _FPS,
            },
        }

    def run(self, pose_keypoint, fps):
        return (openpose_io.pose2d_from_openpose(pose_keypoint, fps=fps),)


class FinePhysCameraMotion:
    """IMAGE frames + their 2D pose → the pose with the camera's pan, tilt and zoom, measured on the background."""

    CATEGORY = "FinePhys/pose"
    FUNCTION = "run"
    RETURN_TYPES = ("FINEPHYS_POSE2D", "IMAGE")
    RETURN_NAMES = ("pose2d", "stabilized")
    OUTPUT_TOOLTIPS = ("The same 2D pose, carrying the camera's motion: lifting and FusePoses then read it as a "
                       "static camera would have seen it, and FusePoses' reprojection stays in each frame's pixels.",
                       "The frames warped into the first frame's view (at most 640 px on the longer side): the "
                       "background should stand still.")
    DESCRIPTION = ("For footage whose camera pans, tilts or zooms after the athlete (broadcast gymnastics). Tracks "
                   "corners of the background (the athlete's box left out) from frame to frame and fits a "
                   "similarity per frame pair. The lifter then sees the athlete's travel across the arena again, "
                   "and FusePoses' static_camera (size from gravity) may be switched on. Needs a textured "
                   "background; frames where too little of it is seen keep the previous frame's camera.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The video frames the 2D pose was detected on (all of them, or "
                                                "every n-th when the detection used a frame stride)."}),
                "pose2d": ("FINEPHYS_POSE2D", {"tooltip": "The 2D pose detected on these frames."}),
            },
        }

    def run(self, images, pose2d):
        pose2d = require(pose2d, Pose2D, "pose2d")
        try:
            frames = images[::camera_motion.frame_stride(len(images), pose2d.num_frames)].cpu()
        except ValueError as e:
            raise PoseError(str(e)) from e
        progress = Progress(len(frames), "FinePhys camera motion")
        try:
            maps, _ = camera_motion.estimate_camera_motion(frames, pose2d.keypoints, pose2d.scores, progress)
        finally:
            progress.close()
        stabilized = torch.from_numpy(camera_motion.stabilize_frames(frames, maps, camera_motion.TRACK_SIDE))
        return replace(pose2d, camera_motion=maps), stabilized


NODE_CLASS_MAPPINGS = {
    "FinePhysDetectPose2D": FinePhysDetectPose2D,
    "FinePhysPoseFromKeypoints": FinePhysPoseFromKeypoints,
    "FinePhysCameraMotion": FinePhysCameraMotion,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "FinePhysDetectPose2D": "FinePhys Detect Pose 2D",
    "FinePhysPoseFromKeypoints": "FinePhys Pose from Keypoints (OpenPose)",
    "FinePhysCameraMotion": "FinePhys Camera Motion (pan / zoom)",
}
