"""FinePhys nodes: the pose stack — LiftICL3D (2D → S_dd), PhysNetRefine (S_dd → S_pp), FusePoses (→ Ŝ, 2D)."""
from __future__ import annotations

from ..finephys_core import camera, physics, refine
from ..finephys_core.gravity import STATIC_CAMERA_GRAVITY_WEIGHT
from ..finephys_core.sequence import Pose2D, Pose3D
from .comfy_adapter import Progress

CAMERA_MODELS = ("weak", "perspective")
_POSE_MODEL = ("FINEPHYS_POSE_MODEL", {"tooltip": "Lifter + PhysNet weights from FinePhys Load Pose Model."})


def require(value, kind: type, name: str):
    """The wired value when it is a ``kind``; else an error naming the input (e.g. an empty Load Pose output)."""
    if isinstance(value, kind):
        return value
    if value is None:
        raise ValueError(f"input {name!r} is empty: the node feeding it gave no {kind.__name__} (a FinePhys Load "
                         f"Pose output whose file holds the other kind of pose?)")
    raise TypeError(f"input {name!r} must be a {kind.__name__}; got {type(value).__name__}")


class FinePhysLiftICL3D:
    """2D pose → data-driven 3D pose S_dd with the in-context lifter (prompt pair + mean 3D prior)."""

    CATEGORY = "FinePhys/pose"
    FUNCTION = "run"
    RETURN_TYPES = ("FINEPHYS_POSE3D",)
    RETURN_NAMES = ("pose3d_dd",)
    OUTPUT_TOOLTIPS = ("S_dd: 3D joints (T, 17, 3) in metres, root-relative, camera frame.",)
    DESCRIPTION = ("FinePhys's data-driven 3D lifting (paper §3.3): a two-stream spatial/temporal transformer run "
                   "in context with a prompt pair from the model's prompt bank and the mean 3D pose prior. "
                   "Models with a learned 2D front end (the shipped default) first correct the detections with it "
                   "(misplaced, swapped and missing joints, failed frames). "
                   "Clips of any length are processed in overlapping windows; the clip and its mirror image are "
                   "lifted and averaged (left-right test-time augmentation).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pose2d": ("FINEPHYS_POSE2D", {"tooltip": "Detected 2D pose sequence."}),
                "pose_model": _POSE_MODEL,
            },
        }

    def run(self, pose2d, pose_model):
        return (refine.lift_pose(require(pose2d, Pose2D, "pose2d"), pose_model),)


class FinePhysPhysNetRefine:
    """S_dd → physics-refined S_pp (PhysNet: Euler–Lagrange terms, bidirectional central-difference update)."""

    CATEGORY = "FinePhys/pose"
    FUNCTION = "run"
    RETURN_TYPES = ("FINEPHYS_POSE3D",)
    RETURN_NAMES = ("pose3d_pp",)
    OUTPUT_TOOLTIPS = ("S_pp: the physics-refined 3D joints (T, 17, 3).",)
    DESCRIPTION = ("PhysNet (paper eq. 6-18): estimates the mass matrix, Coriolis and external-force terms from the "
                   "motion and integrates q̈ = M⁻¹(J − C) forward from the first frames and backward from the "
                   "last, averaging the two in the middle. The time step is frame_stride / fps of the pose.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pose3d_dd": ("FINEPHYS_POSE3D", {"tooltip": "Data-driven 3D pose (FinePhys Lift ICL 3D)."}),
                "pose_model": _POSE_MODEL,
                "frame_stride": ("INT", {
                    "default": 1, "min": 1, "max": 64,
                    "tooltip": "Video frames between two pose frames when the pose's fps is the video's rate. "
                               "Keep 1 for poses from FinePhys Detect Pose 2D: its fps already includes its "
                               "own stride."}),
            },
        }

    def run(self, pose3d_dd, pose_model, frame_stride=1):
        pose = require(pose3d_dd, Pose3D, "pose3d_dd")
        return (physics.refine_pose3d(pose, pose_model.physnet, frame_stride=int(frame_stride)),)


class FinePhysFusePoses:
    """Ŝ = (1 − w)·S_dd + w·S_pp, and its projection to 2D through a camera fitted to the detected pose."""

    CATEGORY = "FinePhys/pose"
    FUNCTION = "run"
    RETURN_TYPES = ("FINEPHYS_POSE3D", "FINEPHYS_POSE2D")
    RETURN_NAMES = ("pose3d", "pose2d")
    OUTPUT_TOOLTIPS = ("Ŝ: the fused 3D pose (with its fitted camera).",
                       "Ŝ projected into the frames (pixels of the detected pose's images): the skeleton that "
                       "guides generation.")
    DESCRIPTION = ("Fuses the data-driven and physics-refined poses (weighted mean; the paper uses weight 0.5, the "
                   "default 0.7 was more accurate with the shipped weights) and projects the result back to 2D "
                   "with a per-clip camera fitted to the detected 2D pose.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pose3d_dd": ("FINEPHYS_POSE3D", {"tooltip": "Data-driven 3D pose S_dd."}),
                "pose3d_pp": ("FINEPHYS_POSE3D", {"tooltip": "Physics-refined 3D pose S_pp."}),
                "pose2d": ("FINEPHYS_POSE2D", {"tooltip": "The detected 2D pose the camera is fitted to."}),
                "weight": ("FLOAT", {"default": camera.DEFAULT_FUSE_WEIGHT, "min": 0.0, "max": 1.0, "step": 0.01,
                                     "tooltip": f"Weight of S_pp: 0 = S_dd only, 0.5 = mean (paper), 1 = S_pp "
                                                f"only; {camera.DEFAULT_FUSE_WEIGHT} was the most accurate with "
                                                f"the shipped weights."}),
                "camera_model": (list(CAMERA_MODELS), {
                    "default": "weak",
                    "tooltip": "weak: weak perspective (one scale per clip, a translation per frame, closed "
                               "form; the 2D fit gives each frame its own smooth scale, so it follows zooms); "
                               "perspective: pinhole with the focal length below, root depth fitted per frame. "
                               "The 2D fit uses the same camera."}),
                "focal": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100000.0, "step": 1.0,
                                    "tooltip": "Focal length in pixels for 'perspective'; 0 = the longer image "
                                               "side. Ignored by 'weak'."}),
            },
            "optional": {  # optional: API prompts saved before it existed still validate
                "bones": (list(camera.BONE_MODES), {
                    "default": "constant",
                    "tooltip": "constant: every bone keeps one length for the whole clip (its median), limbs "
                               "stay rigid; free: the plain weighted mean (paper), bones may stretch."}),
                "fit_2d": ("INT", {
                    "default": camera.DEFAULT_FIT_2D_ITERS, "min": 0, "max": 2000, "step": 10,
                    "tooltip": "Iterations of a test-time fit of the fused pose to the detected 2D (robust to "
                               "wrong detections, bones kept rigid; detections the lifter's 2D front end moved "
                               "far count less): the 2D fixes how far each limb points "
                               "towards the camera. 0 = the paper's fusion. About 0.2-0.8 s per clip on a CPU; "
                               "with the shipped weights 4-6 % lower 3D error."}),
                "static_camera": ("BOOLEAN", {
                    "default": False,
                    "tooltip": "The camera does not pan, tilt or zoom, or its motion was measured by FinePhys "
                               "Camera Motion: after the 2D fit, the body's size in metres is corrected by how "
                               "fast it falls in flight (gravity). About 1 mm lower 3D error on held-out "
                               "footage; with a camera that follows the athlete uncompensated it makes the size "
                               "wrong, so leave it off for broadcast footage without Camera Motion."}),
            },
        }

    def run(self, pose3d_dd, pose3d_pp, pose2d, weight=camera.DEFAULT_FUSE_WEIGHT, camera_model="weak", focal=0.0,
            bones="constant", fit_2d=0, static_camera=False):
        progress = Progress(int(fit_2d), "FinePhys fit to 2D") if int(fit_2d) > 0 else None
        try:
            return camera.fuse_poses(require(pose3d_dd, Pose3D, "pose3d_dd"), require(pose3d_pp, Pose3D, "pose3d_pp"),
                                     require(pose2d, Pose2D, "pose2d"), weight=float(weight),
                                     camera_model=camera_model, focal=float(focal) or None, bones=bones,
                                     fit_2d=int(fit_2d), progress=progress,
                                     gravity_weight=STATIC_CAMERA_GRAVITY_WEIGHT if static_camera else 0.0)
        finally:
            if progress is not None:
                progress.close()


NODE_CLASS_MAPPINGS = {
    "FinePhysLiftICL3D": FinePhysLiftICL3D,
    "FinePhysPhysNetRefine": FinePhysPhysNetRefine,
    "FinePhysFusePoses": FinePhysFusePoses,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "FinePhysLiftICL3D": "FinePhys Lift ICL 3D",
    "FinePhysPhysNetRefine": "FinePhys PhysNet Refine",
    "FinePhysFusePoses": "FinePhys Fuse Poses",
}
