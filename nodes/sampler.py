"""FinePhys nodes: video pipeline loader and the skeleton-guided sampler."""
from __future__ import annotations

import logging

import torch

from ..finephys_core import pipeline_loading, sampler
from .comfy_adapter import (FINEPHYS_FOLDER, Progress, intermediate_device, list_models, model_path,
                            offload_device, on_compute_device, register_model_folder, torch_device)

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
MOTION_MODULES = "animatediff_models"  # AnimateDiff-Evolved's folder name; registered here when absent
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

register_model_folder(MOTION_MODULES)
register_model_folder(FINEPHYS_FOLDER)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto': fp16 on a GPU (what SD1.5 and AnimateDiff are run in), fp32 on a CPU."""
    if name != "auto":
        return DTYPES[name]
    return torch.float32 if device.type == "cpu" else torch.float16


def sampling_workspace_bytes(frames: int, height: int, width: int, dtype: torch.dtype) -> int:
    """GPU memory the UNet's activations need beyond its weights, by ComfyUI's own estimate for SD1.5
    (``BaseModel.memory_required`` with efficient attention: 0.01 MiB per latent pixel, batch item and byte of
    dtype), for a batch of every frame twice (classifier-free guidance)."""
    latent_pixels = 2 * frames * (height // 8) * (width // 8)
    return int(latent_pixels * torch.finfo(dtype).bits // 8 * 0.01 * 1024 * 1024)


IGNORED_CONDITIONING_KEYS = ("area", "mask", "strength", "start_percent", "end_percent", "control", "gligen")


def conditioning_tensors(conditioning, name: str) -> list[torch.Tensor]:
    """ComfyUI CONDITIONING ``[[tensor (1, L, 768), {...}], ...]`` → its tensors, whose noise predictions the
    sampler averages as ComfyUI does for ConditioningCombine. Areas, masks, strengths, timestep ranges and
    ControlNets in the dicts are not supported: a warning names them."""
    if isinstance(conditioning, torch.Tensor):
        return [conditioning]
    if not conditioning or not all(isinstance(c, (list, tuple)) and c and isinstance(c[0], torch.Tensor)
                                   for c in conditioning):
        raise ValueError(f"{name} is not a CONDITIONING value (expected [[tensor, dict], ...])")
    ignored = sorted({k for c in conditioning if len(c) > 1 and isinstance(c[1], dict)
                      for k in c[1] if k in IGNORED_CONDITIONING_KEYS})
    if ignored:
        log.warning("FinePhys Sampler ignores %s in the %s conditioning (only plain text and "
                    "ConditioningCombine are supported)", ", ".join(ignored), name)
    return [c[0] for c in conditioning]


class FinePhysLoadPipeline:
    """SD1.5 checkpoint + AnimateDiff motion module (+ FinePhys LoRA and skeleton encoder) → FINEPHYS_PIPELINE."""

    CATEGORY = "FinePhys/generation"
    FUNCTION = "load"
    RETURN_TYPES = ("FINEPHYS_PIPELINE",)
    RETURN_NAMES = ("pipeline",)
    DESCRIPTION = ("Builds the FinePhys video model offline: the UNet and VAE of a Stable Diffusion 1.5 "
                   "checkpoint, an AnimateDiff motion module (v1, v2 mm_sd_v15_v2 or v3), and optionally the "
                   "FinePhys LoRA and skeletal heatmap encoder from models/finephys. Text comes from your "
                   "CLIPTextEncode nodes (SD1.5 CLIP).")

    @classmethod
    def INPUT_TYPES(cls):
        optional = ["none", *list_models(FINEPHYS_FOLDER, (".safetensors",))]
        return {
            "required": {
                "checkpoint": (list_models(CHECKPOINTS, WEIGHT_SUFFIXES),
                               {"tooltip": "Stable Diffusion 1.5 single-file checkpoint (models/checkpoints)."}),
                "motion_module": (list_models(MOTION_MODULES, WEIGHT_SUFFIXES),
                                  {"tooltip": "AnimateDiff SD1.5 motion module (models/animatediff_models), "
                                              "e.g. mm_sd_v15_v2.ckpt as in the paper."}),
                "lora": (optional, {"default": "none",
                                    "tooltip": "FinePhys LoRA (training stage 4) from models/finephys."}),
                "encoder": (optional, {"default": "none",
                                       "tooltip": "Skeletal heatmap encoder (training stage 1) from "
                                                  "models/finephys; needed for skeleton guidance."}),
                "dtype": (["auto", *DTYPES], {"default": "auto",
                                              "tooltip": "auto: fp16 on a GPU, fp32 on a CPU."}),
            },
        }

    # No IS_CHANGED: ComfyUI caches the pipeline and runs ``load`` again only when a widget changes.
    def load(self, checkpoint, motion_module, lora="none", encoder="none", dtype="auto"):
        ckpt_path, motion_path = model_path(CHECKPOINTS, checkpoint), model_path(MOTION_MODULES, motion_module)
        lora_path = None if lora == "none" else model_path(FINEPHYS_FOLDER, lora)
        encoder_path = None if encoder == "none" else model_path(FINEPHYS_FOLDER, encoder)
        # built where ComfyUI keeps its own diffusion models between jobs; the sampler moves it to the GPU
        pipe = pipeline_loading.load_video_pipeline(ckpt_path, motion_path, lora_path=lora_path,
                                                    encoder_path=encoder_path, device=offload_device(),
                                                    dtype=resolve_dtype(dtype, torch_device()))
        return (pipe,)


class FinePhysSampler:
    """Text (+ skeleton guidance) → video frames, with DDIM and classifier-free guidance."""

    CATEGORY = "FinePhys/generation"
    FUNCTION = "sample"
    RETURN_TYPES = ("IMAGE", "LATENT")
    RETURN_NAMES = ("frames", "latent")
    OUTPUT_TOOLTIPS = ("Generated frames (frames × height × width × RGB).",
                       "The same clip as latents, one per frame, for VAEDecode or further sampling.")
    DESCRIPTION = ("Generates a video clip with SD1.5 + AnimateDiff (DDIM, linear betas 0.00085→0.012 as in the "
                   "FinePhys paper). With guidance, the skeletal heatmap encoder's features are added to each "
                   "UNet down block, so the generated person follows the (physics-refined) pose.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pipeline": ("FINEPHYS_PIPELINE", {"tooltip": "From FinePhys Load Pipeline."}),
                "positive": ("CONDITIONING", {"tooltip": "SD1.5 CLIPTextEncode of the prompt (several, e.g. "
                                                         "from ConditioningCombine: their predictions are averaged)."}),
                "negative": ("CONDITIONING", {"tooltip": "SD1.5 CLIPTextEncode of the negative prompt."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                 "tooltip": "Noise seed (noise is drawn on the CPU: same video on any device)."}),
                "steps": ("INT", {"default": 50, "min": 1, "max": 1000, "tooltip": "DDIM steps."}),
                "cfg": ("FLOAT", {"default": 7.5, "min": 0.0, "max": 30.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "Classifier-free guidance scale (1 or less: off)."}),
                "width": ("INT", {"default": 384, "min": 64, "max": 2048, "step": 64,
                                  "tooltip": "Frame width in pixels (multiple of 64)."}),
                "height": ("INT", {"default": 384, "min": 64, "max": 2048, "step": 64,
                                   "tooltip": "Frame height in pixels (multiple of 64)."}),
                "frames": ("INT", {"default": 16, "min": 1, "max": 64,
                                   "tooltip": "Number of frames (AnimateDiff was trained on 16; v2/v3 handle up to 32, v1 24)."}),
                "guidance_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 5.0, "step": 0.05,
                                                "tooltip": "Scale of the pose features (0: ignore the skeleton)."}),
            },
            "optional": {
                "guidance": ("FINEPHYS_GUIDANCE", {"tooltip": "Skeleton heatmaps from FinePhys Skeleton "
                                                              "Heatmap; resampled to frames × height × width."}),
            },
        }

    def sample(self, pipeline, positive, negative, seed, steps, cfg, width, height, frames, guidance_strength,
               guidance=None):
        progress = Progress(steps, desc="FinePhys sampling")
        workspace = sampling_workspace_bytes(frames, height, width, pipeline.dtype)
        try:
            with on_compute_device(pipeline, workspace):
                images, latents = sampler.sample_video(
                    pipeline, conditioning_tensors(positive, "positive"), conditioning_tensors(negative, "negative"),
                    guidance, num_frames=frames, height=height, width=width, steps=steps, cfg=cfg, seed=seed,
                    guidance_strength=guidance_strength, progress=progress)
        finally:
            progress.close()
        # ComfyUI LATENTs are unscaled VAE latents, one batch item per frame.
        samples = latents[0].permute(1, 0, 2, 3).float() / pipeline.vae.config.scaling_factor
        out = intermediate_device()
        return images.to(out), {"samples": samples.to(out)}


NODE_CLASS_MAPPINGS = {
    "FinePhysLoadPipeline": FinePhysLoadPipeline,
    "FinePhysSampler": FinePhysSampler,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "FinePhysLoadPipeline": "FinePhys Load Pipeline",
    "FinePhysSampler": "FinePhys Sampler",
}
