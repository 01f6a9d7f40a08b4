"""Skeletal heatmap encoder (Follow-Your-Pose / T2I-Adapter style): limb heatmaps → one feature map per UNet
down block, added by the sampler after ``down_blocks[i].motion_modules[-1]`` (DESIGN.md §4).

PixelUnshuffle folds the image-resolution heatmaps to latent resolution (÷8), then per scale: a stride-2
downsampling conv (from the second scale on), residual conv blocks, and a zero-initialised 1×1 output conv,
so an untrained encoder outputs exact zeros and leaves the UNet unchanged.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from einops import rearrange
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .config import DictConfig

KIND = "finephys_skeleton_encoder"
SD15_CHANNELS = (320, 640, 1280, 1280)


@dataclass
class SkeletonEncoderConfig(DictConfig):
    """in_channels: heatmap channels (16 H36M-17 limbs); channels: output channels per UNet down block
    (SD1.5's block_out_channels); hidden_channels: the encoder's own widths per scale (None = ``channels``);
    downscale: image → latent factor (the VAE's 8); num_res_blocks per scale."""

    in_channels: int = 16
    channels: tuple[int, ...] = SD15_CHANNELS
    hidden_channels: tuple[int, ...] | None = (128, 256, 512, 512)
    downscale: int = 8
    num_res_blocks: int = 2

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        if self.hidden_channels is not None:
            self.hidden_channels = tuple(int(c) for c in self.hidden_channels)
            if len(self.hidden_channels) != len(self.channels):
                raise ValueError(f"hidden_channels {self.hidden_channels} and channels {self.channels} need the "
                                 f"same number of scales")
        if self.in_channels < 1 or self.downscale < 1 or not self.channels:
            raise ValueError(f"invalid SkeletonEncoderConfig: {self}")

    @property
    def widths(self) -> tuple[int, ...]:
        return self.hidden_channels or self.channels

    @classmethod
    def for_unet(cls, block_out_channels, **kwargs) -> "SkeletonEncoderConfig":
        """A config whose outputs match a UNet's ``config.block_out_channels``."""
        return cls(channels=tuple(block_out_channels), **kwargs)


class _ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.conv1(self.act(x))))


class SkeletonEncoder(nn.Module):
    """(N, L, H, W) heatmaps at image resolution → list of (N, channels[i], h_i, w_i), h_0 = H / downscale and
    each later scale halved (ceil, as the UNet's stride-2 convs do). N is frames (batch × time) flattened."""

    def __init__(self, config: SkeletonEncoderConfig | None = None):
        super().__init__()
        self.config = config = config or SkeletonEncoderConfig()
        widths = config.widths
        self.unshuffle = nn.PixelUnshuffle(config.downscale)
        self.conv_in = nn.Conv2d(config.in_channels * config.downscale ** 2, widths[0], 3, padding=1)
        self.downs = nn.ModuleList(
            nn.Identity() if i == 0 else nn.Conv2d(widths[i - 1], widths[i], 3, stride=2, padding=1)
            for i in range(len(widths)))
        self.blocks = nn.ModuleList(
            nn.Sequential(*[_ResBlock(c) for _ in range(config.num_res_blocks)]) for c in widths)
        self.outs = nn.ModuleList(nn.Conv2d(c, o, 1) for c, o in zip(widths, config.channels))
        for conv in self.outs:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, heatmaps: torch.Tensor) -> list[torch.Tensor]:
        cfg = self.config
        if heatmaps.ndim != 4 or heatmaps.shape[1] != cfg.in_channels:
            raise ValueError(f"SkeletonEncoder expects heatmaps (N, {cfg.in_channels}, H, W); got "
                             f"{tuple(heatmaps.shape)}")
        H, W = heatmaps.shape[-2:]
        if H % cfg.downscale or W % cfg.downscale:
            raise ValueError(f"heatmap size {H}×{W} must be divisible by {cfg.downscale} (the latent factor)")
        x = self.conv_in(self.unshuffle(heatmaps.to(self.conv_in.weight.dtype)))
        features = []
        for down, block, out in zip(self.downs, self.blocks, self.outs):
            x = block(down(x))
            features.append(out(x))
        return features

    def encode_clip(self, heatmaps: torch.Tensor) -> list[torch.Tensor]:
        """(B, T, L, H, W) → features (B·T, C_i, h_i, w_i), batch-major as UNetMotionModel orders frames."""
        if heatmaps.ndim != 5:
            raise ValueError(f"encode_clip expects (B, T, L, H, W); got {tuple(heatmaps.shape)}")
        return self(rearrange(heatmaps, "b t l h w -> (b t) l h w"))

    def save(self, path: str | Path) -> Path:
        return save_skeleton_encoder(self, path)

    @classmethod
    def load(cls, path: str | Path, device="cpu", dtype: torch.dtype | None = None) -> "SkeletonEncoder":
        return load_skeleton_encoder(path, device, dtype)


@contextmanager
def add_features_after(modules: Sequence[nn.Module], features: Sequence[torch.Tensor], scale: float = 1.0):
    """While active, ``modules[i]`` outputs ``out + scale · features[i]`` (the first element when it returns a
    tuple). Each UNet adds the encoder's features through this, hooking the last layer of its down block i
    (:func:`unet2d_injection`, ``sampler.pose_injection``). features: (N, c_i, h_i, w_i), one per module."""
    if len(features) != len(modules):
        raise ValueError(f"the skeleton encoder gives {len(features)} feature maps but the UNet has "
                         f"{len(modules)} down blocks")

    def hook_for(i: int, feat: torch.Tensor):
        def hook(module, args, out):
            hidden = out[0] if isinstance(out, tuple) else out
            if hidden.shape != feat.shape:
                raise ValueError(f"skeleton feature {i} has shape {tuple(feat.shape)} but down block {i} gives "
                                 f"{tuple(hidden.shape)}: encoder channels or input size do not match the UNet")
            return (hidden + feat, *out[1:]) if isinstance(out, tuple) else hidden + feat
        return hook

    features = features if scale == 1.0 else [scale * f for f in features]
    handles = [m.register_forward_hook(hook_for(i, f)) for i, (m, f) in enumerate(zip(modules, features))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def unet2d_injection(unet: nn.Module, features: Sequence[torch.Tensor]):
    """Context manager: a diffusers ``UNet2DConditionModel``'s down block i outputs ``out + features[i]`` after
    its last resnet+attention (the point ``sampler.pose_injection`` uses in the motion UNet, skip included), so
    an encoder trained on images (stage 1) feeds the video UNet unchanged. features: (N, c_i, h_i, w_i)."""
    return add_features_after([b.attentions[-1] if getattr(b, "attentions", None) else b.resnets[-1]
                               for b in unet.down_blocks], features)


def save_skeleton_encoder(encoder: SkeletonEncoder, path: str | Path) -> Path:
    """Write weights + config to a safetensors file atomically (metadata: kind, config JSON)."""
    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in encoder.state_dict().items()}
    meta = {"kind": KIND, "config": json.dumps(encoder.config.to_dict())}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def read_encoder_config(path: str | Path) -> SkeletonEncoderConfig:
    """The config stored in an encoder file; ValueError when the file is not a FinePhys skeleton encoder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"skeleton encoder file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for non-safetensors files
        raise ValueError(f"{path.name} is not a safetensors file: {e}") from e
    if meta.get("kind") != KIND:
        raise ValueError(f"{path.name} is not a FinePhys skeleton encoder (metadata kind={meta.get('kind')!r}, "
                         f"expected {KIND!r}); is it a LoRA or a UNet checkpoint?")
    return SkeletonEncoderConfig.from_dict(json.loads(meta["config"]))


def load_skeleton_encoder(path: str | Path, device="cpu", dtype: torch.dtype | None = None,
                          expect_channels=None) -> SkeletonEncoder:
    """Load an encoder written by :func:`save_skeleton_encoder`.

    expect_channels: the UNet's block_out_channels; a mismatch raises ValueError naming both.
    """
    from safetensors.torch import load_file

    config = read_encoder_config(path)
    if expect_channels is not None and tuple(expect_channels) != config.channels:
        raise ValueError(f"skeleton encoder {Path(path).name} outputs channels {config.channels} but the UNet's "
                         f"down blocks have {tuple(expect_channels)}")
    encoder = SkeletonEncoder(config)
    state = load_file(str(path))
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise ValueError(f"skeleton encoder {Path(path).name} does not match its config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, shape mismatches {wrong[:5]}")
    encoder.load_state_dict(state)
    return encoder.to(device=device, dtype=dtype) if dtype is not None else encoder.to(device)


__all__ = ["KIND", "SD15_CHANNELS", "SkeletonEncoder", "SkeletonEncoderConfig", "add_features_after",
           "load_skeleton_encoder", "read_encoder_config", "save_skeleton_encoder", "unet2d_injection"]
