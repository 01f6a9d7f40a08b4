"""FinePhys nodes: skeleton guidance (limb heatmaps for the sampler) and OpenPose renders for ControlNet."""
from __future__ import annotations

import torch

from ..finephys_core import heatmaps, render

_FIT_TOOLTIP = ("How the pose's source frame maps onto width×height: stretch fills (aspect may change), crop "
                "keeps aspect and centre-crops, pad keeps aspect and letterboxes.")


def _size_inputs(tooltip: str) -> dict:
    return {side: ("INT", {"default": 384, "min": 64, "max": 2048, "step": 8,
                           "tooltip": f"Output {side} in pixels. {tooltip}"}) for side in ("width", "height")}


class FinePhysSkeletonHeatmap:
    """Pose2D → PoseConv3D limb heatmaps (FINEPHYS_GUIDANCE) at the video's size, plus a colour preview."""

    CATEGORY = "FinePhys/guidance"
    FUNCTION = "run"
    RETURN_TYPES = ("FINEPHYS_GUIDANCE", "IMAGE")
    RETURN_NAMES = ("guidance", "preview")
    DESCRIPTION = ("Limb pseudo-heatmaps (PoseConv3D style: a Gaussian of each pixel's distance to each of the 16 "
                   "H36M bones, weighted by joint confidence) that steer FinePhys Sampler. Set width and height "
                   "to the size you will generate at.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pose2d": ("FINEPHYS_POSE2D", {"tooltip": "2D pose sequence, e.g. the reprojected refined pose."}),
                **_size_inputs("Use the sampler's size."),
                "sigma": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 64.0, "step": 0.1,
                                    "tooltip": "Gaussian width in pixels; 0 = auto (0.6 px per 64 px of the "
                                               "shorter side, as PoseConv3D)."}),
                "fit": (list(render.FITS), {"default": "stretch", "tooltip": _FIT_TOOLTIP}),
            },
            "optional": {
                "frames": ("IMAGE", {"tooltip": "Video frames to draw the heatmaps over in the preview."}),
            },
        }

    def run(self, pose2d, width, height, sigma, fit="stretch", frames=None):
        guidance = heatmaps.guidance_from_pose2d(pose2d, (height, width), sigma or None, fit)
        preview = heatmaps.heatmap_preview(guidance.heatmaps, frames, fit=fit)
        return guidance, preview.float().clamp(0, 1)


class FinePhysRenderPose:
    """Pose2D → OpenPose-18 colour skeleton frames (IMAGE) for ControlNet openpose models."""

    CATEGORY = "FinePhys/guidance"
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    DESCRIPTION = ("Draws the pose OpenPose style (18-colour palette; H36M poses have no eyes or ears, the neck "
                   "is the thorax) so FinePhys poses can drive any ControlNet openpose workflow.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pose2d": ("FINEPHYS_POSE2D", {"tooltip": "2D pose sequence to draw."}),
                **_size_inputs("Ignored when a background is given (its size is used)."),
                "min_score": ("FLOAT", {"default": 0.3, "min": 0.0, "max": 1.0, "step": 0.01,
                                        "tooltip": "Joints with a lower confidence are not drawn."}),
                "fit": (list(render.FITS), {"default": "stretch", "tooltip": _FIT_TOOLTIP}),
            },
            "optional": {
                "background": ("IMAGE", {"tooltip": "Frames to draw on instead of black."}),
            },
        }

    def run(self, pose2d, width, height, min_score=0.3, fit="stretch", background=None):
        size = tuple(background.shape[1:3]) if background is not None else (height, width)
        images = render.render_skeleton(pose2d, size, background, min_score=min_score, fit=fit)
        return (images.to(torch.float32),)


NODE_CLASS_MAPPINGS = {
    "FinePhysSkeletonHeatmap": FinePhysSkeletonHeatmap,
    "FinePhysRenderPose": FinePhysRenderPose,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "FinePhysSkeletonHeatmap": "FinePhys Skeleton Heatmap",
    "FinePhysRenderPose": "FinePhys Render Pose (OpenPose)",
}
