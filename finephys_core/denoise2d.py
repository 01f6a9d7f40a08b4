"""Learned 2D front end: detected keypoints → corrected keypoints and new scores, before lifting.

Not in the paper. A detector on gymnastics misplaces joints far (wrong limb, left/right swaps), misses
some and fails whole frames; the lifter has to undo that while it lifts, and on the training budget of a
CPU it learns it slowly (held-out S_dd 56 mm from clean 2D against 83 from corrupted, v11). This small
temporal transformer learns it directly, supervised by the clean 2D of the synthetic clips
(``training/stage2.py``, ``train='denoiser'``), and the lifter is then trained on its output.

Input and output are :func:`finephys_core.sequence.normalize_screen` 2D (…, T, 17, 3). Each frame token
carries the frame's joints as the lifter sees them (:func:`lifting.normalise_2d`: centred per frame,
one scale per window, missing joints at 0 with score 0) plus the frame's travel across the image; the
output is a residual on those joints, mapped back to screen coordinates, and a score per joint: the
predicted chance that the joint is within ``accurate_within`` of the truth (units of the window's scale,
the RMS radius of the pose). Every joint gets a position and a score > 0, missing ones included; the
detector's own score calibration is only an input, never passed on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from einops import rearrange
from torch import Tensor, nn

from .config import DictConfig
from .lifting import CENTRES, NUM_JOINTS, mirror_averaged, normalise_2d, windowed


@dataclass
class Denoiser2DConfig(DictConfig):
    """Size of the 2D front end; ``window`` frames per call (longer clips are windowed)."""

    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 2.0
    window: int = 32
    centre: str = "median"
    accurate_within: float = 0.1

    def __post_init__(self):
        if self.centre not in CENTRES:
            raise ValueError(f"Denoiser2DConfig centre must be one of {CENTRES}; got {self.centre!r}")
        if self.dim % self.heads:
            raise ValueError(f"Denoiser2DConfig dim {self.dim} must be a multiple of heads {self.heads}")


class Denoiser2D(nn.Module):
    """(B, T, 17, 3) normalize_screen 2D, T ≤ window → (B, T, 17, 3): corrected x, y and a score in (0, 1)."""

    def __init__(self, config: Denoiser2DConfig | None = None):
        super().__init__()
        self.config = cfg = config or Denoiser2DConfig()
        self.embed = nn.Linear(NUM_JOINTS * 3 + 2, cfg.dim)
        self.frame_embed = nn.Parameter(torch.zeros(cfg.window, cfg.dim))
        nn.init.trunc_normal_(self.frame_embed, std=0.02)
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, int(cfg.dim * cfg.mlp_ratio), dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, NUM_JOINTS * 3)                 # Δx, Δy, score logit per joint
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, pose2d: Tensor) -> Tensor:
        if pose2d.ndim != 4 or pose2d.shape[-2:] != (NUM_JOINTS, 3):
            raise ValueError(f"Denoiser2D expects (B, T, {NUM_JOINTS}, 3) normalised 2D; got {tuple(pose2d.shape)}")
        if pose2d.shape[1] > self.config.window:
            raise ValueError(f"Denoiser2D takes at most {self.config.window} frames; got {pose2d.shape[1]} "
                             "(use denoise_2d for longer clips)")
        joints, travel, root, scale = normalise_2d(pose2d, self.config.centre)   # (B, T, 17, 3), (B, T, 2)
        tokens = self.embed(torch.cat([rearrange(joints, "b t j c -> b t (j c)"), travel], -1))
        tokens = self.blocks(tokens + self.frame_embed[:pose2d.shape[1]])
        delta, logit = rearrange(self.head(self.norm(tokens)), "b t (j c) -> b t j c", c=3).split([2, 1], -1)
        return torch.cat([(joints[..., :2] + delta) * scale + root, torch.sigmoid(logit)], -1)


def denoise_2d(denoiser: Denoiser2D, pose2d, overlap: int | None = None,
               progress: Callable[[int], None] | None = None) -> Tensor:
    """A clip (T, 17, 3) or batch of clips (B, T, 17, 3) of any length through the front end, windowed
    (:func:`lifting.windowed`) and mirror-averaged, so that it keeps the lift exactly mirror-equivariant."""
    def run(wins: Tensor) -> Tensor:
        return mirror_averaged(denoiser, wins)

    return windowed(run, pose2d, denoiser.config.window, overlap, progress=progress)


AGREEMENT_SIGMA = 0.2


def detection_agreement(detected: Tensor, cleaned: Tensor, sigma: float = AGREEMENT_SIGMA) -> Tensor:
    """How far the front end moved each detected joint, as a weight: exp(−(d / (σ·s))²) in [0, 1].

    detected, cleaned: (…, T, 17, 3) normalised 2D, a clip and its :func:`denoise_2d` output → (…, T, 17).
    d is the distance between a detected joint and its corrected position, s the clip's pose scale (the
    RMS radius, :func:`lifting.normalise_2d`); missing joints (score 0) get 0. Weighting the 2D fit's
    detections by score × agreement leaves out the ones the front end rejected (σ = 0.2 chosen on
    ``synth_val``: fused + fit 56.85 → 56.53 mm with the v15 weights).
    """
    if detected.shape != cleaned.shape or detected.ndim < 3 or detected.shape[-2:] != (NUM_JOINTS, 3):
        raise ValueError(f"detection_agreement expects two (..., T, {NUM_JOINTS}, 3) clips of one shape; got "
                         f"{tuple(detected.shape)} and {tuple(cleaned.shape)}")
    scale = normalise_2d(detected, "median")[3][..., 0]                                   # (…, 1, 1)
    distance = (detected[..., :2] - cleaned[..., :2]).norm(dim=-1)
    return torch.exp(-(distance / (sigma * scale)) ** 2) * (detected[..., 2] > 0)
