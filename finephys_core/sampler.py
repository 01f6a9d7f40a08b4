"""Skeleton-guided text-to-video sampling (paper §3.3, DESIGN.md §4 FinePhysSampler).

DDIM with the paper's linear betas, classifier-free guidance, text as CONDITIONING tensors, and the pose
features of the skeletal heatmap encoder added to the output of down block i (Follow-Your-Pose /
T2I-Adapter semantics) through forward hooks on ``unet.down_blocks[i].motion_modules[-1]``. The loop is
the same arithmetic as diffusers' AnimateDiffPipeline, so without guidance both give identical latents.
"""
from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from einops import rearrange

from .heatmap_encoder import add_features_after

if TYPE_CHECKING:
    from .heatmaps import Guidance
    from .pipeline_loading import FinePhysVideoPipeline


def _check_embedding(name: str, emb: torch.Tensor, dim: int) -> torch.Tensor:
    if emb.ndim == 2:
        emb = emb[None]
    if emb.ndim != 3 or emb.shape[0] != 1:
        raise ValueError(f"{name} conditioning must have shape (1, tokens, {dim}); got {tuple(emb.shape)}")
    if emb.shape[-1] != dim:
        raise ValueError(f"{name} conditioning has {emb.shape[-1]} features per token but the UNet needs {dim} "
                         "(use the SD1.5 CLIP text encoder: CLIPTextEncode with an SD1.5 checkpoint)")
    return emb


def _entries(embeddings, name: str = "text") -> list[torch.Tensor]:
    entries = list(embeddings) if isinstance(embeddings, (list, tuple)) else [embeddings]
    if not entries:
        raise ValueError(f"{name} conditioning is empty")
    return entries


def cfg_text_embeddings(positive, negative, dim: int = 768) -> torch.Tensor:
    """(n_neg + n_pos, L, dim): [negatives..., positives...], each (1, L_i, dim) or a list of them, repeated up
    to the common length (as ComfyUI batches conds). Repeating every token k times leaves cross-attention
    unchanged, unlike zero padding."""
    texts = ([_check_embedding("negative", e, dim) for e in _entries(negative, "negative")]
             + [_check_embedding("positive", e, dim) for e in _entries(positive, "positive")])
    length = math.lcm(*(e.shape[1] for e in texts))
    return torch.cat([e.repeat(1, length // e.shape[1], 1) for e in texts])


def resample_heatmaps(heatmaps: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
    """(T, L, h, w) -> (frames, L, height, width), trilinear in time and space."""
    if heatmaps.ndim != 4:
        raise ValueError(f"guidance heatmaps must have shape (T, L, H, W); got {tuple(heatmaps.shape)}")
    if heatmaps.shape[0] == frames and tuple(heatmaps.shape[2:]) == (height, width):
        return heatmaps
    volume = rearrange(heatmaps, "t l h w -> 1 l t h w")
    volume = F.interpolate(volume, size=(frames, height, width), mode="trilinear", align_corners=False)
    return rearrange(volume, "1 l t h w -> t l h w")


@torch.no_grad()
def pose_features(encoder: torch.nn.Module, heatmaps: torch.Tensor, frames: int, height: int, width: int,
                  strength: float = 1.0) -> list[torch.Tensor]:
    """Encoder features for one clip, scaled by ``strength``: list of (frames, c_i, H/8/2^i, W/8/2^i)."""
    param = next(encoder.parameters())
    expected = getattr(getattr(encoder, "config", None), "in_channels", heatmaps.shape[1])
    if heatmaps.shape[1] != expected:
        raise ValueError(f"guidance has {heatmaps.shape[1]} heatmap channels but the encoder expects {expected}")
    maps = resample_heatmaps(heatmaps.to(param.device, torch.float32), frames, height, width)
    return [strength * f for f in encoder(maps.to(param.dtype))]


def pose_injection(unet: torch.nn.Module, features: list[torch.Tensor]):
    """Context manager: down block i of the motion ``unet`` outputs ``out + features[i]`` (features
    (B·F, c_i, h_i, w_i)), added after the block's last motion module."""
    return add_features_after([b.motion_modules[-1] for b in unet.down_blocks], features)


def initial_noise(seed: int, shape: tuple[int, ...], device, dtype) -> torch.Tensor:
    """Gaussian latents drawn on the CPU so a seed gives the same video on every device."""
    gen = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)


def make_scheduler(config: dict):
    from diffusers import DDIMScheduler
    return DDIMScheduler.from_config({k: v for k, v in config.items() if not k.startswith("_comment")})


@torch.no_grad()
def denoise(unet: torch.nn.Module, scheduler, latents: torch.Tensor, text: torch.Tensor, steps: int,
            cfg: float, progress: Callable[[int], None] | None = None, negatives: int = 1) -> torch.Tensor:
    """DDIM loop with CFG. latents (1, 4, F, h, w); text (n, L, D): ``negatives`` negative prompts, then the
    positive ones. The predictions of each group are averaged (ComfyUI's ConditioningCombine)."""
    frames = latents.shape[2]
    use_cfg = cfg > 1.0
    text = text if use_cfg else text[negatives:]
    batch = text.shape[0]
    text = text.repeat_interleave(frames, dim=0)
    scheduler.set_timesteps(steps, device=latents.device)
    latents = latents * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(latents.repeat(batch, 1, 1, 1, 1), t)
        noise = unet(model_in, t, encoder_hidden_states=text).sample
        cond = (noise[negatives:] if use_cfg else noise).mean(0, keepdim=True)
        if use_cfg:
            uncond = noise[:negatives].mean(0, keepdim=True)
            cond = uncond + cfg * (cond - uncond)
        latents = scheduler.step(cond, t, latents).prev_sample
        if progress is not None:
            progress(1)
    return latents


@torch.no_grad()
def decode_latents(vae: torch.nn.Module, latents: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """(1, 4, F, h, w) scaled latents -> (F, H, W, 3) float32 RGB in 0..1 on the CPU, ``chunk`` frames at a time."""
    frames = rearrange(1 / vae.config.scaling_factor * latents, "1 c f h w -> f c h w")  # diffusers' exact op
    images = [vae.decode(frames[i:i + chunk]).sample.float().cpu() for i in range(0, frames.shape[0], chunk)]
    return rearrange((torch.cat(images) / 2 + 0.5).clamp(0, 1), "f c h w -> f h w c")


def sample_video(pipe: "FinePhysVideoPipeline", positive: torch.Tensor, negative: torch.Tensor,
                 guidance: "Guidance | None" = None, num_frames: int = 16, height: int = 384, width: int = 384,
                 steps: int = 50, cfg: float = 7.5, seed: int = 0, guidance_strength: float = 1.0,
                 progress: Callable[[int], None] | None = None, decode_chunk: int = 8,
                 decode: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Generate one clip.

    positive/negative: (1, L, 768) text embeddings, or lists of them whose noise predictions are averaged
    (ComfyUI's ConditioningCombine); guidance: skeletal heatmaps (T, L, h, w) or None.
    Returns (frames (F, H, W, 3) float32 0..1 on the CPU or None when ``decode`` is False,
    latents (1, 4, F, H/8, W/8) scaled diffusers latents). ``progress(1)`` is called once per step and
    may raise to interrupt.
    """
    scale = pipe.vae_scale_factor
    if height % (scale * 8) or width % (scale * 8):
        raise ValueError(f"width and height must be multiples of {scale * 8}; got {width}x{height}")
    if num_frames < 1 or steps < 1:
        raise ValueError(f"num_frames and steps must be >= 1; got {num_frames}, {steps}")
    max_frames = pipe.unet.config.get("motion_max_seq_length") or num_frames
    if num_frames > max_frames:
        raise ValueError(f"this motion module handles at most {max_frames} frames; got {num_frames}")
    device, dtype = pipe.device, pipe.dtype
    text = cfg_text_embeddings(positive, negative, pipe.cross_attention_dim).to(device, dtype)
    shape = (1, pipe.unet.config.in_channels, num_frames, height // scale, width // scale)
    latents = initial_noise(seed, shape, device, dtype)
    scheduler = make_scheduler(pipe.scheduler_config)

    negatives = len(_entries(negative, "negative"))
    features = _guidance_features(pipe, guidance, num_frames, height, width, guidance_strength,
                                  batch=text.shape[0] if cfg > 1.0 else text.shape[0] - negatives)
    with contextlib.nullcontext() if features is None else pose_injection(pipe.unet, features):
        latents = denoise(pipe.unet, scheduler, latents, text, steps, cfg, progress, negatives)
    frames = decode_latents(pipe.vae, latents, decode_chunk) if decode else None
    return frames, latents


def _guidance_features(pipe, guidance, frames: int, height: int, width: int, strength: float,
                       batch: int) -> list[torch.Tensor] | None:
    if guidance is None or strength == 0.0:
        return None
    if pipe.encoder is None:
        raise ValueError("skeleton guidance was given but the pipeline has no skeletal heatmap encoder: "
                         "choose an encoder file in FinePhysLoadPipeline")
    heatmaps = guidance.heatmaps if hasattr(guidance, "heatmaps") else guidance
    heatmaps = torch.as_tensor(heatmaps)
    features = pose_features(pipe.encoder, heatmaps, frames, height, width, strength)
    return [torch.cat([f] * batch).to(pipe.device, pipe.dtype) for f in features]
