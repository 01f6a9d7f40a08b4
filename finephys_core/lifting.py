"""In-context 2D→3D lifter (paper eq. 4–5, DESIGN.md §4 LiftICL3D).

``Trans^{2D→3D}(P, Q)``: a two-stream spatial/temporal transformer in the manner of MotionBERT's DSTformer
(one stream attends over joints then frames, the other frames then joints, fused per token by learned
weights), used in context as in Skeleton-in-Context: the prompt pair (P2D, P3D) and the query
(S2D, mean prior P̄3D) are embedded as two segments of one sequence, concatenated along time, so temporal
attention lets every query joint look at the same joint in the prompt (``LifterConfig.prompt_stride`` k > 1
keeps every k-th prompt frame: the prompt's pose class and camera need far fewer tokens than the query).
The output for the query segment is a residual on the prior: ``S_dd = root_relative(P̄3D + head(tokens))``.

Two token kinds (``LifterConfig.tokens``): 'joint' is the DSTformer layout above; 'frame' carries a whole
pose (2D + 3D of all 17 joints) per token and attends over the 2T frames only. For the same CPU time the
frame lifter can be far wider; it is what the shipped weights use (in the same training hour it reached
held-out fused MPJPE 109 mm against 161 mm for the joint lifter, README).

Conventions (the training code builds its inputs the same way, through :func:`lifter_inputs`):

* 2D inputs are :func:`finephys_core.sequence.normalize_screen` outputs, (…, T, 17, 3): x, y divided by
  half the longer image side around the image centre, score as the third channel (0 = missing).
  :meth:`ICLLifter.forward` applies :func:`lifter_inputs` itself (it is idempotent, so calling it first
  does no harm to the pose, but it removes the travel across the image that a ``trajectory`` lifter reads).
* 3D inputs and outputs: metres, root-relative (pelvis at 0), camera frame (x right, y down, z forward).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .config import DictConfig
from .skeleton import H36M17

NUM_JOINTS = 17
ROOT = 0
TOKEN_KINDS = ("joint", "frame")
CENTRES = ("pelvis", "median")


@dataclass
class LifterConfig(DictConfig):
    """Size of the lifter. ``window`` is the trained clip length (longer clips are windowed).

    ``tokens``: 'joint' (one token per joint and frame, attention alternating over joints and frames in two
    streams: DSTformer as Skeleton-in-Context uses it) or 'frame' (one token per frame carrying the whole
    pose, attention over frames: 17× fewer tokens, so a much wider model for the same compute).

    ``prompt_stride``: the prompt segment keeps every k-th prompt frame, so the sequence is ⌈T/k⌉ + T tokens
    instead of 2T (k = 4: a training step costs 0.63× as much). ``centre``: the 2D point subtracted per
    frame (:func:`lifter_inputs`): 'pelvis' (as trained before), or 'median', the per-coordinate median of the
    visible joints, which one wrong joint (the pelvis included) cannot move far. ``trajectory`` (frame
    tokens): each frame token also sees where that centre is in the image relative to the window's mean
    (:func:`trajectory_inputs`), the travel that per-frame centring removes.
    """

    tokens: str = "joint"
    dim: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 2.0
    rep_dim: int = 128
    window: int = 16
    num_joints: int = NUM_JOINTS
    dropout: float = 0.0
    prompt_stride: int = 1
    centre: str = "pelvis"
    trajectory: bool = False

    def __post_init__(self):
        if self.tokens not in TOKEN_KINDS:
            raise ValueError(f"LifterConfig tokens must be one of {TOKEN_KINDS}; got {self.tokens!r}")
        if self.centre not in CENTRES:
            raise ValueError(f"LifterConfig centre must be one of {CENTRES}; got {self.centre!r}")
        if self.prompt_stride < 1:
            raise ValueError(f"LifterConfig prompt_stride must be ≥ 1; got {self.prompt_stride}")
        if self.trajectory and self.tokens != "frame":
            raise ValueError("LifterConfig trajectory needs tokens='frame'")


# ----------------------------------------------------------------------------- input convention

def lifter_inputs(pose2d_normalized, centre: str = "pelvis") -> Tensor:
    """The one place 2D lifter input is preprocessed. (…, T, 17, 3) → (…, T, 17, 3) float32 tensor.

    From ``normalize_screen`` coordinates (x, y, score):
      1. centred per frame: ``centre`` 'pelvis' subtracts the pelvis (joint 0) when its score > 0, else the
         score-weighted centroid of the visible joints; 'median' subtracts the per-coordinate median of the
         visible joints (0 when nothing is visible);
      2. missing joints (score 0) get x = y = 0;
      3. divided by one scale per clip (over all its frames and joints): the score-weighted RMS distance
         of the visible joints from their root (1 when nothing is visible, floored at 1e-3);
      4. the score channel is kept unchanged.
    Idempotent: applying it to its own output returns the same values.
    """
    return normalise_2d(pose2d_normalized, centre)[0]


def trajectory_inputs(pose2d_normalized, centre: str = "pelvis") -> Tensor:
    """(…, T, 17, 3) normalised 2D → (…, T, 2): each frame's centre (as :func:`lifter_inputs` subtracts it)
    relative to the mean centre of the frames where someone is visible, in the clip's scale units
    (:func:`lifter_inputs` step 3); 0 for frames where nobody is visible. The travel across the image."""
    return normalise_2d(pose2d_normalized, centre)[1]


def normalise_2d(pose2d_normalized, centre: str = "pelvis") -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One centring of a clip, (…, T, 17, 3) normalised 2D → (:func:`lifter_inputs`, :func:`trajectory_inputs`,
    the per-frame centre (…, T, 1, 2), the per-clip scale (…, 1, 1, 1)); (xy − centre) / scale are the
    lifter's input joints, so centre + scale · joints maps them back to the screen."""
    x = torch.as_tensor(np.asarray(pose2d_normalized) if not isinstance(pose2d_normalized, Tensor)
                        else pose2d_normalized, dtype=torch.float32)
    if x.ndim < 3 or x.shape[-2:] != (NUM_JOINTS, 3):
        raise ValueError(f"lifter_inputs expects (..., T, {NUM_JOINTS}, 3) normalised x, y, score; "
                         f"got {tuple(x.shape)}")
    if centre not in CENTRES:
        raise ValueError(f"lifter_inputs centre must be one of {CENTRES}; got {centre!r}")
    xy, score = x[..., :2], x[..., 2:].clamp(0.0, 1.0)
    vis = (score > 0).to(xy.dtype)
    if centre == "median":
        hidden = torch.full_like(xy, float("nan"))
        root = torch.nan_to_num(torch.nanmedian(torch.where(vis > 0, xy, hidden), dim=-2, keepdim=True).values)
    else:
        centroid = (xy * score).sum(-2, keepdim=True) / score.sum(-2, keepdim=True).clamp_min(1e-8)
        root = torch.where(vis[..., ROOT:ROOT + 1, :] > 0, xy[..., ROOT:ROOT + 1, :], centroid)
    rel = (xy - root) * vis
    ms = (score * rel.pow(2).sum(-1, keepdim=True)).sum((-3, -2, -1), keepdim=True)
    wsum = score.sum((-3, -2, -1), keepdim=True)
    scale = torch.where(wsum > 0, (ms / wsum.clamp_min(1e-8)).sqrt(), torch.ones_like(ms)).clamp_min(1e-3)
    seen = (score > 0).any(-2).to(root.dtype)                                        # (…, T, 1)
    mean = (root[..., 0, :] * seen).sum(-2, keepdim=True) / seen.sum(-2, keepdim=True).clamp_min(1)
    return torch.cat([rel / scale, score], -1), (root[..., 0, :] - mean) * seen / scale[..., 0, :], root, scale


# ----------------------------------------------------------------------------- model

class _Attention(nn.Module):
    """Multi-head self-attention over the second-to-last axis of (N, L, dim)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = rearrange(self.qkv(x), "n l (three h d) -> three n h l d", three=3, h=self.heads)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(rearrange(out, "n h l d -> n l (h d)"))


class _Block(nn.Module):
    """Pre-norm attention + MLP over the tokens of (N, L, dim)."""

    def __init__(self, cfg: LifterConfig):
        super().__init__()
        hidden = int(cfg.dim * cfg.mlp_ratio)
        self.norm1, self.norm2 = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        self.attn = _Attention(cfg.dim, cfg.heads, cfg.dropout)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, hidden), nn.GELU(), nn.Linear(hidden, cfg.dim))

    def forward(self, h: Tensor) -> Tensor:
        h = h + self.attn(self.norm1(h))
        return h + self.mlp(self.norm2(h))


class _Mixer(_Block):
    """A :class:`_Block` along one axis of (B, T, J, dim): ``axis`` 'joints' or 'frames'."""

    def __init__(self, cfg: LifterConfig, axis: str):
        super().__init__(cfg)
        self.axis = axis

    def forward(self, x: Tensor) -> Tensor:
        b, t = x.shape[:2]
        pattern = "b t j c -> (b t) j c" if self.axis == "joints" else "b t j c -> (b j) t c"
        h = super().forward(rearrange(x, pattern))
        back = "(b t) j c -> b t j c" if self.axis == "joints" else "(b j) t c -> b t j c"
        return rearrange(h, back, b=b, t=t)


class _DualStreamBlock(nn.Module):
    """One depth of the two-stream design: ST (joints→frames) and TS (frames→joints) from the same input,
    fused with per-token softmax weights predicted from both streams (starting at 1/2 each)."""

    def __init__(self, cfg: LifterConfig):
        super().__init__()
        self.st = nn.Sequential(_Mixer(cfg, "joints"), _Mixer(cfg, "frames"))
        self.ts = nn.Sequential(_Mixer(cfg, "frames"), _Mixer(cfg, "joints"))
        self.fuse = nn.Linear(2 * cfg.dim, 2)
        nn.init.zeros_(self.fuse.weight)
        nn.init.zeros_(self.fuse.bias)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.st(x), self.ts(x)
        w = self.fuse(torch.cat([a, b], -1)).softmax(-1)
        return a * w[..., :1] + b * w[..., 1:]


class ICLLifter(nn.Module):
    """In-context lifter: (prompt 2D, prompt 3D, query 2D, query prior) → S_dd for the query.

    Each token carries the 2D input (3 values) and 3D input (3 values) of one joint ('joint' tokens) or of
    all 17 ('frame' tokens, plus the frame's travel across the image with ``trajectory``); joint, frame and
    segment (prompt / query) embeddings are added. Sequence = [prompt frames ; query frames] (⌈T/k⌉ + T
    frames for ``prompt_stride`` k).
    Cost per window is fixed, so windowed lifting is linear in clip length.
    """

    def __init__(self, config: LifterConfig | None = None):
        super().__init__()
        self.config = cfg = config or LifterConfig()
        per_token = 1 if cfg.tokens == "joint" else cfg.num_joints      # joints carried by one token
        self.embed = nn.Linear(6 * per_token, cfg.dim)
        if cfg.trajectory:
            self.trajectory_embed = nn.Linear(2, cfg.dim)
            nn.init.zeros_(self.trajectory_embed.weight)
        self.frame_embed = nn.Parameter(torch.zeros(cfg.window, 1, cfg.dim))
        self.segment_embed = nn.Parameter(torch.zeros(2, cfg.dim))
        if cfg.tokens == "joint":
            self.joint_embed = nn.Parameter(torch.zeros(cfg.num_joints, cfg.dim))
            nn.init.trunc_normal_(self.joint_embed, std=0.02)
            self.blocks = nn.ModuleList(_DualStreamBlock(cfg) for _ in range(cfg.depth))
        else:
            self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Sequential(nn.Linear(cfg.dim, cfg.rep_dim), nn.Tanh(), nn.Linear(cfg.rep_dim, 3 * per_token))
        for p in (self.frame_embed, self.segment_embed):
            nn.init.trunc_normal_(p, std=0.02)
        nn.init.trunc_normal_(self.head[-1].weight, std=0.02)
        nn.init.zeros_(self.head[-1].bias)

    def _check(self, name: str, x: Tensor, like: tuple | None) -> None:
        J = self.config.num_joints
        if x.ndim != 4 or x.shape[-2:] != (J, 3):
            raise ValueError(f"{name} must have shape (B, T, {J}, 3); got {tuple(x.shape)}")
        if like is not None and tuple(x.shape) != like:
            raise ValueError(f"{name} has shape {tuple(x.shape)} but the query 2D has {like}")
        if x.shape[1] > self.config.window:
            raise ValueError(f"{name} has {x.shape[1]} frames; this lifter takes at most "
                             f"{self.config.window} (use lift_windows for longer clips)")

    def forward(self, prompt_2d: Tensor, prompt_3d: Tensor, query_2d: Tensor, query_prior: Tensor) -> Tensor:
        """All inputs (B, T, 17, 3), T ≤ window; 2D as normalize_screen output. Returns S_dd (B, T, 17, 3)."""
        self._check("query_2d", query_2d, None)
        shape = tuple(query_2d.shape)
        for name, x in (("prompt_2d", prompt_2d), ("prompt_3d", prompt_3d), ("query_prior", query_prior)):
            self._check(name, x, shape)
        t, stride, centre = shape[1], self.config.prompt_stride, self.config.centre
        prompt_2d, prompt_3d = prompt_2d[:, ::stride], prompt_3d[:, ::stride]
        tp = prompt_2d.shape[1]                                                # ⌈T / stride⌉ prompt frames
        (prompt_in, prompt_travel, *_), (query_in, query_travel, *_) = (normalise_2d(x, centre)
                                                                          for x in (prompt_2d, query_2d))
        inputs = torch.cat([torch.cat([prompt_in, query_in], 1),
                            torch.cat([prompt_3d, query_prior], 1)], -1)           # (B, tp+T, 17, 6)
        frames = torch.cat([self.frame_embed[:t:stride], self.frame_embed[:t]])  # (tp+T, 1, dim)
        segments = torch.cat([self.segment_embed[:1].expand(tp, -1), self.segment_embed[1:].expand(t, -1)])[:, None]
        if self.config.tokens == "joint":
            x = self.embed(inputs) + self.joint_embed + frames + segments        # (B, tp+T, 17, dim)
        else:
            x = self.embed(rearrange(inputs, "b t j c -> b t (j c)")) + (frames + segments)[:, 0]
            if self.config.trajectory:
                x = x + self.trajectory_embed(torch.cat([prompt_travel, query_travel], 1))
        for block in self.blocks:
            x = block(x)
        offset = self.head(self.norm(x[:, tp:]))
        out = query_prior + offset.view(query_prior.shape)
        return out - out[..., ROOT:ROOT + 1, :]


# ----------------------------------------------------------------------------- windowed lifting

def window_starts(num_frames: int, window: int, overlap: int) -> list[int]:
    """First frame of each window: every ``window - overlap`` frames, the last one ending at the clip end."""
    if num_frames <= window:
        return [0]
    step = window - overlap
    starts = list(range(0, num_frames - window, step))
    return starts + [num_frames - window]


def default_overlap(window: int) -> int:
    """The default overlap of :func:`lift_windows`: windows every quarter window, so each frame of a long
    clip is lifted by about four windows and the results averaged. With the shipped weights, validation
    S_dd 92.2 → 91.3 mm and fused 89.0 → 88.1 mm against an overlap of 4 frames, for about 3× the lifter's
    work on long clips (clips of up to one window: no change)."""
    return window - max(window // 4, 1)


def blend_weights(window: int, overlap: int, first: bool, last: bool) -> Tensor:
    """(window,) cross-fade weights: a raised-cosine ramp over ``overlap`` frames at each inner edge.

    The rising and falling ramps multiply, so an overlap of more than half the window gives a symmetric
    bump. Never zero, so every frame is covered; flat at the clip's own ends (``first`` / ``last``).
    """
    rise, fall = torch.ones(window), torch.ones(window)
    if overlap > 0:
        ramp = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(overlap) + 0.5) / overlap)
        if not first:
            rise[:overlap] = ramp
        if not last:
            fall[window - overlap:] = ramp.flip(0)
    return rise * fall


def _window_prompts(prompt, wins: Tensor) -> tuple[Tensor, Tensor]:
    """Prompt pairs for a batch of windows (n, W, 17, 3) → P2D, P3D each (n, K, W, 17, 3)."""
    n, window = wins.shape[:2]
    pair = prompt(wins) if callable(prompt) else prompt
    p2d, p3d = (torch.as_tensor(np.asarray(p) if not isinstance(p, Tensor) else p, dtype=torch.float32,
                                device=wins.device) for p in pair)
    if p2d.ndim == 3:
        p2d, p3d = p2d[None], p3d[None]
    if p2d.ndim == 4:
        p2d, p3d = p2d.expand(n, -1, -1, -1, -1), p3d.expand(n, -1, -1, -1, -1)
    tail = (window, NUM_JOINTS, 3)
    if p2d.shape != p3d.shape or p2d.ndim != 5 or p2d.shape[0] != n or p2d.shape[2:] != tail:
        raise ValueError(f"prompt pair must be (K, {window}, {NUM_JOINTS}, 3) each, or (n, K, ...) from a "
                         f"prompt function; got 2D {tuple(p2d.shape)}, 3D {tuple(p3d.shape)}")
    return p2d, p3d


def lift_windows(model: Callable[..., Tensor], query_2d, prompt, prior, window: int | None = None,
                 overlap: int | None = None, batch_size: int = 64,
                 progress: Callable[[int], None] | None = None) -> Tensor:
    """Lift a clip of any length. query_2d: (T, 17, 3) normalize_screen output → S_dd (T, 17, 3); or
    a batch of clips of one length (B, T, 17, 3) → (B, T, 17, 3), all their windows in the same batches.

    prompt: a pair (P2D, P3D), each (W, 17, 3) or (K, W, 17, 3), used for every window; or a function
    windows (n, W, 17, 3) → pair each (n, K, W, 17, 3) choosing per window. K prompts: outputs averaged.
    prior: (W, 17, 3). Windows as :func:`windowed` makes them.
    ``model`` is an :class:`ICLLifter` (or any callable with its forward signature).
    """
    window = window or model.config.window
    prior = torch.as_tensor(prior, dtype=torch.float32)
    if prior.shape != (window, NUM_JOINTS, 3):
        raise ValueError(f"prior must be ({window}, {NUM_JOINTS}, 3); got {tuple(prior.shape)}")

    def lift(wins: Tensor) -> Tensor:                                              # (n, W, 17, 3)
        p2d, p3d = _window_prompts(prompt, wins)                                   # (n, K, W, 17, 3)
        K = p2d.shape[1]
        pred = model(p2d.flatten(0, 1), p3d.flatten(0, 1), wins.repeat_interleave(K, 0),
                     prior.to(wins.device).expand(len(wins) * K, -1, -1, -1))
        return rearrange(pred, "(n k) w j c -> n k w j c", k=K).mean(1)

    return windowed(lift, query_2d, window, overlap, batch_size, progress)


def windowed(fn: Callable[[Tensor], Tensor], clips, window: int, overlap: int | None = None,
             batch_size: int = 64, progress: Callable[[int], None] | None = None) -> Tensor:
    """Apply a model of ``window`` frames to clips of any length: (T, 17, 3) or (B, T, 17, 3)
    normalize_screen 2D → (T, 17, C) or (B, T, 17, C). ``fn`` maps windows (n, W, 17, 3) → (n, W, 17, C).

    T < W: edge-replicated to W, then cropped. T > W: windows every W - overlap frames (the last aligned to
    the clip end; ``overlap`` None: :func:`default_overlap`), up to ``batch_size`` per clip in one call,
    cross-faded with :func:`blend_weights`; ``progress`` gets the number of windows after each call.
    """
    overlap = default_overlap(window) if overlap is None else overlap
    if not 0 <= overlap < window:
        raise ValueError(f"overlap must be in [0, {window}); got {overlap}")
    q = torch.as_tensor(np.asarray(clips) if not isinstance(clips, Tensor) else clips, dtype=torch.float32)
    if q.ndim not in (3, 4) or q.shape[-2:] != (NUM_JOINTS, 3) or q.shape[-3] == 0:
        raise ValueError(f"query_2d must be (T, {NUM_JOINTS}, 3) or (B, T, {NUM_JOINTS}, 3) with T ≥ 1; "
                         f"got {tuple(q.shape)}")
    single = q.ndim == 3
    if single:
        q = q[None]
    B, T = q.shape[:2]
    if T < window:
        q = torch.cat([q, q[:, -1:].expand(-1, window - T, -1, -1)], 1)
    starts = window_starts(T, window, overlap)
    out, weight = None, q.new_zeros(max(T, window), 1, 1)
    for c in range(0, len(starts), batch_size):
        chunk = starts[c:c + batch_size]
        wins = torch.stack([q[:, s:s + window] for s in chunk], 1).flatten(0, 1)   # (B·n, W, 17, 3)
        pred = rearrange(fn(wins), "(b n) w j c -> b n w j c", b=B)
        if out is None:
            out = q.new_zeros(B, max(T, window), NUM_JOINTS, pred.shape[-1])
        for i, s in enumerate(chunk):
            w = blend_weights(window, overlap, first=s == 0, last=s + window >= T).to(q)[:, None, None]
            out[:, s:s + window] += pred[:, i] * w
            weight[s:s + window] += w
        if progress is not None:
            progress(len(chunk))
    out = (out / weight)[:, :T]
    return out[0] if single else out


def mirror_averaged(lift: Callable[[Tensor], Tensor], query_2d: Tensor) -> Tensor:
    """Left↔right test-time augmentation (VideoPose3D, MotionBERT): the mean of ``lift(query)`` and the
    un-mirrored lift of the mirrored query. Exactly mirror-equivariant. query_2d (B, …, 17, 3) → (B, …, 17, 3);
    ``lift`` maps a batch to a batch and gets the queries and their mirror images in one call of 2B."""
    direct, mirrored = lift(torch.cat([query_2d, H36M17.mirror(query_2d)])).chunk(2)
    return (direct + H36M17.mirror(mirrored)) / 2


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
