"""PoseConv3D pseudo-heatmaps (mmaction2 ``GeneratePoseTarget``) from 2D pose sequences, vectorised in torch.

Limb map l at pixel p: ``min(s_a, s_b) · exp(−d² / 2σ²)`` with d the distance from the pixel centre to the
bone segment (a, b) in map pixels; zero where ``min(s_a, s_b) < 1e-4`` or ``d > 3σ`` (mmaction2 only fills a
box reaching 3σ beyond the bone; the disc is the same cut without the corners). Joint maps use the distance
to the joint. People (optional P axis) are max-merged. σ = 0.6 at 64 px maps, scaled with the map size.

Coordinates: keypoints are continuous pixels (0..W spans the image, the centre of pixel j is j + 0.5), mapped
into the (h, w) map by :func:`.render.fit_keypoints` (default ``stretch``: x·w/W, y·h/H — the sampler
generates the clip at (h, w) from the whole source frame, so stretching keeps every joint where the frame
put it; ``crop``/``pad`` keep the aspect instead).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .render import fit_frames, fit_keypoints, h36m_limb_colors
from .sequence import Pose2D, PoseError
from .skeleton import H36M17, Layout

MIN_SCORE = 1e-4
CUTOFF_SIGMAS = 3.0
_CHUNK_ELEMENTS = 1 << 19  # 2 MiB per float32 intermediate (two 384² maps): cache-sized, bounded memory


def default_sigma(out_size: tuple[int, int]) -> float:
    """σ in map pixels: PoseConv3D's 0.6 at a 64-px map, scaled with the shorter side."""
    return 0.6 * min(out_size) / 64.0


def _prepare(keypoints, scores, image_size, out_size, fit):
    """→ keypoints (N, J, 2) in map px and scores (N, J), N = T or T·P, plus the people count P (0 = none)."""
    kp = torch.as_tensor(np.asarray(keypoints) if not isinstance(keypoints, torch.Tensor) else keypoints)
    sc = torch.as_tensor(np.asarray(scores) if not isinstance(scores, torch.Tensor) else scores)
    kp, sc = kp.float(), sc.float()
    if kp.ndim not in (3, 4) or kp.shape[-1] != 2 or tuple(sc.shape) != tuple(kp.shape[:-1]):
        raise PoseError(f"keypoints must be (T, J, 2) or (T, P, J, 2) with scores (T, J) / (T, P, J); got "
                        f"keypoints {tuple(kp.shape)}, scores {tuple(sc.shape)}")
    people = kp.shape[1] if kp.ndim == 4 else 0
    kp, sc = kp.reshape(-1, *kp.shape[-2:]), sc.reshape(-1, sc.shape[-1])
    bad = ~torch.isfinite(kp).all(-1) | ~torch.isfinite(sc)
    kp, sc = torch.where(bad[..., None], 0.0, kp), torch.where(bad, 0.0, sc).clamp(0, 1)
    return fit_keypoints(kp, image_size, out_size, fit), sc, people


def _gaussian_of_distance(d2: torch.Tensor, height: torch.Tensor, sigma: float) -> torch.Tensor:
    """height · exp(−d²/2σ²), zero beyond 3σ or where the height is below MIN_SCORE; height broadcasts
    against d2. In place only where autograd keeps nothing, so gradients reach the keypoints (stage 4)."""
    outside = d2 > (CUTOFF_SIGMAS * sigma) ** 2
    value = torch.mul(d2, -0.5 / sigma ** 2).exp_().mul(torch.where(height >= MIN_SCORE, height, 0.0))
    return value.masked_fill_(outside, 0.0)


def _segment_maps(a: torch.Tensor, b: torch.Tensor, height: torch.Tensor, out_size, sigma: float) -> torch.Tensor:
    """a, b (N, K, 2) map px, height (N, K) → (N, K, h, w); distances separable over the pixel grid."""
    h, w = out_size
    gx = torch.arange(w, dtype=a.dtype, device=a.device) + 0.5
    gy = torch.arange(h, dtype=a.dtype, device=a.device) + 0.5
    ab = b - a                                           # (N, K, 2)
    len2 = (ab ** 2).sum(-1)
    inv = torch.where(len2 > 1e-12, 1.0 / len2.clamp_min(1e-12), torch.zeros_like(len2))  # point: d to a
    px = (gx - a[..., 0, None])[..., None, :]            # (N, K, 1, w)
    py = (gy - a[..., 1, None])[..., :, None]            # (N, K, h, 1)
    abx, aby = ab[..., 0, None, None], ab[..., 1, None, None]
    t = torch.add(px * (abx * inv[..., None, None]), py * (aby * inv[..., None, None])).clamp_(0, 1)
    dx = torch.mul(t, abx).neg_().add_(px)               # px − t·abx
    dy = torch.mul(t, aby).neg_().add_(py)
    d2 = (dx * dx).add_(dy * dy)
    return _gaussian_of_distance(d2, height[..., None, None], sigma)


def _segment_maps_chunked(a: torch.Tensor, b: torch.Tensor, height: torch.Tensor, out_size,
                          sigma: float) -> torch.Tensor:
    """:func:`_segment_maps` a few segments at a time: intermediates stay cache-sized (so the out-of-place ops
    autograd needs cost no more than in-place ones on whole frames) and long clips need little memory."""
    N, K = height.shape
    h, w = out_size
    step = max(1, _CHUNK_ELEMENTS // (h * w))
    a, b, height = a.reshape(-1, 1, 2), b.reshape(-1, 1, 2), height.reshape(-1, 1)
    maps = [_segment_maps(a[i:i + step], b[i:i + step], height[i:i + step], out_size, sigma)
            for i in range(0, N * K, step)]
    return torch.cat(maps).reshape(N, K, h, w) if maps else a.new_zeros(N, K, h, w)


def limb_heatmaps(keypoints, scores, image_size: tuple[int, int], out_size: tuple[int, int],
                  sigma: float | None = None, layout: Layout = H36M17, fit: str = "stretch") -> torch.Tensor:
    """Limb pseudo-heatmaps, one channel per bone of ``layout`` (16 for H36M-17, ``layout.bones`` order).

    Args:
        keypoints: (T, J, 2) or (T, P, J, 2) image pixels (numpy or torch).
        scores: (T, J) or (T, P, J) in [0, 1]; 0 = missing.
        image_size: (W, H) of the image the keypoints are in.
        out_size: (h, w) of the maps.
        sigma: Gaussian σ in map pixels; None → :func:`default_sigma`.
        fit: framing of the image into the map (see :func:`.render.fit_transform`).
    Returns:
        (T, L, h, w) float32 in [0, 1], on the keypoints' device; differentiable with respect to torch
        keypoints (stage 4 trains PhysNet through these maps).
    """
    h, w = (int(v) for v in out_size)
    sigma = default_sigma((h, w)) if not sigma else float(sigma)
    kp, sc, people = _prepare(keypoints, scores, image_size, (h, w), fit)
    if kp.shape[1] != layout.num_joints:
        raise PoseError(f"layout {layout.name} has {layout.num_joints} joints; keypoints have {kp.shape[1]}")
    pa, pb = (list(x) for x in zip(*layout.bones))
    height = torch.minimum(sc[:, pa], sc[:, pb])
    maps = _segment_maps_chunked(kp[:, pa], kp[:, pb], height, (h, w), sigma)
    return _merge_people(maps, people)


def joint_heatmaps(keypoints, scores, image_size: tuple[int, int], out_size: tuple[int, int],
                   sigma: float | None = None, fit: str = "stretch") -> torch.Tensor:
    """Joint pseudo-heatmaps: (T, J, 2) / (T, P, J, 2) px + scores → (T, J, h, w) float32, same conventions
    as :func:`limb_heatmaps` (score · Gaussian of the distance to the joint, cut at 3σ)."""
    h, w = (int(v) for v in out_size)
    sigma = default_sigma((h, w)) if not sigma else float(sigma)
    kp, sc, people = _prepare(keypoints, scores, image_size, (h, w), fit)
    maps = _segment_maps_chunked(kp, kp, sc, (h, w), sigma)
    return _merge_people(maps, people)


def _merge_people(maps: torch.Tensor, people: int) -> torch.Tensor:
    if not people:
        return maps
    return maps.reshape(-1, people, *maps.shape[1:]).amax(1)


@dataclass
class Guidance:
    """The FINEPHYS_GUIDANCE wire value: limb heatmaps of one clip at the generated video's resolution.

    heatmaps: (T, L, h, w) float32 torch in [0, 1], L = 16 H36M-17 bones; image_size: (W, H) of the source
    pose; fps: of the pose sequence; sigma: the σ used (map px).
    """

    heatmaps: torch.Tensor
    image_size: tuple[int, int]
    fps: float = 25.0
    sigma: float = 0.0

    def __post_init__(self):
        if not isinstance(self.heatmaps, torch.Tensor) or self.heatmaps.ndim != 4:
            raise ValueError(f"guidance heatmaps must be a (T, L, h, w) tensor; got "
                             f"{getattr(self.heatmaps, 'shape', type(self.heatmaps))}")

    @property
    def num_frames(self) -> int:
        return self.heatmaps.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        """(h, w) of the maps."""
        return tuple(self.heatmaps.shape[-2:])


def guidance_from_pose2d(pose2d: Pose2D, size: tuple[int, int], sigma: float | None = None,
                         fit: str = "stretch") -> Guidance:
    """Limb heatmaps (T, 16, h, w) of a Pose2D (any layout; converted to H36M-17) for a clip of ``size`` (h, w)."""
    pose = pose2d.to_h36m()
    sigma = default_sigma(size) if not sigma else float(sigma)
    maps = limb_heatmaps(pose.keypoints, pose.scores, pose.image_size, size, sigma, H36M17, fit)
    return Guidance(maps, pose.image_size, pose.fps, sigma)


def heatmap_preview(heatmaps: torch.Tensor, frames: torch.Tensor | None = None,
                    colors: np.ndarray | None = None, fit: str = "stretch") -> torch.Tensor:
    """Colourised view of limb heatmaps: each pixel takes the colour of its strongest limb, scaled by its value.

    Args:
        heatmaps: (T, L, h, w).
        frames: optional IMAGE (T or 1, H, W, 3) 0..1, framed into (h, w) by ``fit`` (use the fit the heatmaps
            were made with); the heatmaps are alpha-blended over them (alpha = heat value).
        colors: (L, 3) RGB 0..1; default the OpenPose-matched H36M limb colours.
    Returns:
        (T, h, w, 3) float32 0..1.
    """
    if heatmaps.ndim != 4:
        raise ValueError(f"heatmaps must be (T, L, h, w); got {tuple(heatmaps.shape)}")
    T, L, h, w = heatmaps.shape
    colors = torch.as_tensor(h36m_limb_colors() if colors is None else colors, dtype=torch.float32)
    if colors.shape != (L, 3):
        raise ValueError(f"need one RGB colour per heatmap channel: {L}; got colours {tuple(colors.shape)}")
    value, index = heatmaps.float().clamp(0, 1).max(1)          # (T, h, w)
    rgb = colors[index] * value[..., None]                       # (T, h, w, 3)
    if frames is None:
        return rgb
    frames = torch.as_tensor(frames).float()
    if frames.ndim != 4 or frames.shape[0] not in (1, T) or frames.shape[-1] != 3:
        raise ValueError(f"frames must be an IMAGE (T or 1, H, W, 3) with T = {T}; got {tuple(frames.shape)}")
    frames = fit_frames(frames, (h, w), fit).clamp(0, 1)
    alpha = value[..., None]
    return frames * (1 - alpha) + colors[index] * alpha


__all__ = ["Guidance", "default_sigma", "guidance_from_pose2d", "heatmap_preview", "joint_heatmaps",
           "limb_heatmaps"]
