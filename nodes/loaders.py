"""FinePhys nodes: model loaders (weights from ComfyUI's models/finephys/ folder)."""
from __future__ import annotations

from ..finephys_core import pose_model
from . import comfy_adapter
from .comfy_adapter import FINEPHYS_FOLDER

comfy_adapter.register_model_folder(FINEPHYS_FOLDER)

EMBEDDED_DEFAULT = "(embedded default)"


class FinePhysLoadPoseModel:
    """Lifter + PhysNet weights (one .safetensors with its prompt bank and mean 3D prior) → FINEPHYS_POSE_MODEL."""

    CATEGORY = "FinePhys/pose"
    FUNCTION = "run"
    RETURN_TYPES = ("FINEPHYS_POSE_MODEL",)
    RETURN_NAMES = ("pose_model",)
    OUTPUT_TOOLTIPS = ("The pose models for FinePhys Lift ICL 3D and FinePhys PhysNet Refine.",)
    DESCRIPTION = ("Loads the in-context lifter and PhysNet from models/finephys/*.safetensors (the file also holds "
                   "the prompt bank and the mean 3D prior). '(embedded default)' uses the weights shipped in the "
                   "pack's finephys_core/data/ (an untrained model, with a warning in the log, when none are "
                   "shipped).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_name": ([EMBEDDED_DEFAULT, *comfy_adapter.list_models(FINEPHYS_FOLDER)], {
                    "default": EMBEDDED_DEFAULT,
                    "tooltip": "A pose-model file in models/finephys/, or the pack's embedded default."}),
            },
        }

    @classmethod
    def IS_CHANGED(cls, model_name):
        """Reload when the chosen file is replaced (e.g. by a new training checkpoint)."""
        if model_name == EMBEDDED_DEFAULT:
            path = pose_model.DEFAULT_WEIGHTS
        else:
            try:
                path = comfy_adapter.model_path(FINEPHYS_FOLDER, model_name)
            except FileNotFoundError:
                return model_name
        return f"{path}:{path.stat().st_mtime_ns}" if path.is_file() else str(path)

    def run(self, model_name):
        if model_name == EMBEDDED_DEFAULT:
            return (pose_model.default_pose_model(),)
        path = comfy_adapter.model_path(FINEPHYS_FOLDER, model_name)
        return (pose_model.load_pose_model(path, device="cpu"),)


NODE_CLASS_MAPPINGS = {
    "FinePhysLoadPoseModel": FinePhysLoadPoseModel,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "FinePhysLoadPoseModel": "FinePhys Load Pose Model",
}
