"""FinePhys nodes: pose files (save to the output folder, load from the input folder or a path) and a preview."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..finephys_core import render
from ..finephys_core.sequence import Pose2D, PoseError, load_pose, save_pose
from . import comfy_adapter

POSE_SUFFIXES = (".npz", ".json")
FORMATS = ("npz", "json")


def input_pose_files() -> list[str]:
    """Pose files (.npz / .json) under ComfyUI's input folder, relative, '/'-separated, sorted."""
    root = comfy_adapter.directory("input")
    if not root.is_dir():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.suffix.lower() in POSE_SUFFIXES and p.is_file())


def resolve_pose_path(pose_file: str, path: str = "") -> Path:
    """``path`` when given (absolute, or relative to the input folder), else ``pose_file`` in the input folder."""
    name = (path or "").strip() or (pose_file or "").strip()
    if not name:
        raise FileNotFoundError("no pose file chosen: pick one from the input folder or type a path")
    candidate = Path(name).expanduser()
    if not candidate.is_absolute():
        candidate = comfy_adapter.directory("input") / candidate
    if not candidate.is_file():
        raise FileNotFoundError(f"pose file not found: {candidate}")
    if candidate.suffix.lower() not in POSE_SUFFIXES:
        raise PoseError(f"pose files are .npz or .json; got {candidate.name!r}")
    return candidate


class FinePhysSavePose:
    """Writes a 2D and/or 3D pose to the output folder as .npz or .json."""

    CATEGORY = "FinePhys/pose"
    FUNCTION = "run"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("paths",)
    OUTPUT_TOOLTIPS = ("The written file paths, one per line.",)
    DESCRIPTION = ("Saves poses as <prefix>_<counter>_pose2d / _pose3d files (.npz: arrays; .json: lists) in "
                   "ComfyUI's output folder; FinePhys Load Pose and the finephys_core library read them back.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "filename_prefix": ("STRING", {"default": "finephys/pose",
                                               "tooltip": "File name prefix; may contain a subfolder of output/."}),
                "format": (list(FORMATS), {"default": "npz", "tooltip": "npz (compact arrays) or json (text)."}),
            },
            "optional": {
                "pose2d": ("FINEPHYS_POSE2D", {"tooltip": "2D pose to save."}),
                "pose3d": ("FINEPHYS_POSE3D", {"tooltip": "3D pose to save."}),
            },
        }

    def run(self, filename_prefix, format, pose2d=None, pose3d=None):
        poses = [(k, p) for k, p in (("pose2d", pose2d), ("pose3d", pose3d)) if p is not None]
        if not poses:
            raise ValueError("FinePhys Save Pose: connect a pose2d and/or a pose3d input")
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}; got {format!r}")
        folder, stem, counter, _ = comfy_adapter.save_path(filename_prefix)
        folder.mkdir(parents=True, exist_ok=True)
        paths = [str(save_pose(pose, folder / f"{stem}_{counter:05}_{kind}.{format}")) for kind, pose in poses]
        return {"ui": {"text": paths}, "result": ("\n".join(paths),)}


class FinePhysLoadPose:
    """Reads a pose file (.npz / .json) written by FinePhys Save Pose, the library or the CLI's input format."""

    CATEGORY = "FinePhys/pose"
    FUNCTION = "run"
    RETURN_TYPES = ("FINEPHYS_POSE2D", "FINEPHYS_POSE3D")
    RETURN_NAMES = ("pose2d", "pose3d")
    OUTPUT_TOOLTIPS = ("The 2D pose when the file holds one (else empty: nodes fed from it say so).",
                       "The 3D pose when the file holds one (else empty: nodes fed from it say so).")
    DESCRIPTION = ("Loads a 2D or 3D pose file from ComfyUI's input folder, or from the path typed below (absolute, "
                   "or relative to the input folder). Only the output matching the file's kind carries a pose.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pose_file": (input_pose_files(), {"tooltip": "A .npz / .json pose file in ComfyUI's input folder."}),
                "path": ("STRING", {"default": "", "tooltip": "Overrides pose_file when not empty."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, pose_file, path):
        # Naming pose_file here replaces ComfyUI's list check, so a typed path works with an empty input folder.
        try:
            resolve_pose_path(pose_file, path)
        except (FileNotFoundError, PoseError) as e:
            return str(e)
        return True

    @classmethod
    def IS_CHANGED(cls, pose_file, path):
        try:
            return hashlib.sha256(resolve_pose_path(pose_file, path).read_bytes()).hexdigest()
        except (FileNotFoundError, PoseError):
            return float("nan")

    def run(self, pose_file, path=""):
        pose = load_pose(resolve_pose_path(pose_file, path))
        return (pose, None) if isinstance(pose, Pose2D) else (None, pose)


def _even(n: float) -> int:
    return max(2, int(round(n / 2)) * 2)


class FinePhysPreviewPose:
    """Shows a 2D skeleton (over the frames, when given) and/or front + side views of a 3D pose, animated."""

    CATEGORY = "FinePhys/pose"
    FUNCTION = "run"
    OUTPUT_NODE = True
    RETURN_TYPES = ()
    DESCRIPTION = ("Animated preview (WEBP in ComfyUI's temp folder) of a 2D pose drawn OpenPose style — over the "
                   "video frames when connected — and of a 3D pose as front and side views, side by side.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "height": ("INT", {"default": 384, "min": 64, "max": 2048, "step": 8,
                                   "tooltip": "Preview height in pixels (widths follow each view's aspect)."}),
            },
            "optional": {
                "pose2d": ("FINEPHYS_POSE2D", {"tooltip": "2D pose to draw."}),
                "pose3d": ("FINEPHYS_POSE3D", {"tooltip": "3D pose to draw (front and side views)."}),
                "frames": ("IMAGE", {"tooltip": "Video frames to draw the 2D pose over."}),
            },
        }

    def run(self, height, pose2d=None, pose3d=None, frames=None):
        views = preview_frames(height, pose2d, pose3d, frames)
        fps = (pose2d or pose3d).fps
        folder, stem, counter, subfolder = comfy_adapter.save_path("finephys_preview", "temp")
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{stem}_{counter:05}_.webp"
        save_webp(views, folder / name, fps)
        return {"ui": {"images": [{"filename": name, "subfolder": subfolder, "type": "temp"}],
                       "animated": (True,)}}


def preview_frames(height: int, pose2d=None, pose3d=None, frames=None) -> np.ndarray:
    """(T, height, W, 3) uint8: the 2D render and the 3D views side by side (T = the longer sequence)."""
    import torch

    if pose2d is None and pose3d is None:
        raise ValueError("FinePhys Preview Pose: connect a pose2d and/or a pose3d input")
    views = []
    if pose2d is not None:
        w, h = pose2d.image_size
        views.append(render.render_skeleton(pose2d, (height, _even(height * w / h)), frames))
    if pose3d is not None:
        views.append(render.render_pose3d_preview(pose3d, (height, 2 * height)))
    T = max(v.shape[0] for v in views)
    views = [torch.cat([v, v[-1:].expand(T - v.shape[0], -1, -1, -1)]) for v in views]
    return (torch.cat(views, dim=2).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def save_webp(frames: np.ndarray, path: Path, fps: float) -> Path:
    """(T, H, W, 3) uint8 → an animated lossy WEBP at ``fps``."""
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0,
                   quality=80, method=4)
    return path


NODE_CLASS_MAPPINGS = {
    "FinePhysSavePose": FinePhysSavePose,
    "FinePhysLoadPose": FinePhysLoadPose,
    "FinePhysPreviewPose": FinePhysPreviewPose,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "FinePhysSavePose": "FinePhys Save Pose",
    "FinePhysLoadPose": "FinePhys Load Pose",
    "FinePhysPreviewPose": "FinePhys Preview Pose",
}
