"""PhysNet (FinePhys §3.3, eq. 6–18): Euler–Lagrange terms → bidirectional central-difference update.

Data flow for one clip (shapes for B clips of T frames, D = 3·J = 51)::

    S_dd (B,T,17,3) ──flatten──► x (B,T,D); both directions are batched: x and x reversed in time (2B,T,D)
      global head E^(g): whole clip        ─► g_t (H)   ┐
      local head  E^(l): window t-2,t-1,t  ─► l_t (H)   ┴─ fuse ─► h_t (H) ─► state q_t = P(x)_t + readout(h_t)
      heads on h_t: J_t, C_t (D), upper triangle of M̂⁻¹_t (D(D+1)/2) → S(·) (D,D), noise scale of N̂_t (D)
      q̈_t = (M̂⁻¹_t + N̂_t)(J_t − C_t)                       (eq. 16)
      q̂_{t+1} = q̈_t dt² + 2 q_t − q_{t−1}                  (eq. 17)
    forward and backward estimates averaged in the middle, first/last frames take the one available,
    pose decoder E^pose: S_pp = q̂ + MLP(q̂) (eq. 18).

Choices for the points the paper leaves open (each is a config field where it is a real alternative):

* **Backward direction.** The backward pass is the forward machinery run on the time-reversed clip, so its
  local window is (t+2, t+1, t) — the reverse of eq. 7's (the paper's eq. 8 repeats the forward indices).
  Consequence, tested: PhysNet is exactly time-reversal equivariant, refine(reverse(x)) = reverse(refine(x)).
* **What the heads see.** The heads read the fused hidden feature h_t, not the 51 numbers of a pose: J(q, q̇) and
  C(q, q̇) need velocities, which a single pose does not carry. The local head sees its 3-frame window as position,
  velocity and acceleration (finite differences divided by dt, so one network serves 25–60 fps), with the
  derivatives squashed by asinh (linear near 0, logarithmic for the huge second differences of noisy
  detections). The global head sees every frame's position and its velocity and acceleration from a quadratic
  least-squares fit over ``feature_window`` frames (divided by dt, dt², asinh-squashed) through dilated temporal
  convolutions plus a clip-mean context vector — global, yet linear in T (no O(T²) attention). Without the
  smoothed acceleration the heads must learn a 1/dt² product and the curvature of noisy data themselves; on the
  toy task (see Measured) they did not within 1000 steps.
* **State fusion.** g_t + l_t → LayerNorm → Linear → GELU gives h_t; the position-space state used by eq. 17 is
  q_t = P(x)_t + state_scale · W h_t with W zero-initialised: the data-driven pose plus a learned correction (the
  paper's "q_t from fusing q^(g) and q^(l)" kept in metres, so eq. 17 is meaningful from step one). P is a fixed
  quadratic least-squares (Savitzky–Golay) smoother over ``state_filter`` frames (exact on constant-acceleration
  motion, edges fitted, not padded); ``state_filter=1`` gives P = identity, the paper-literal raw S_dd. Why:
  eq. 17 extrapolates, and extrapolating raw detections multiplies their noise variance by 5 (2.5 after
  averaging both directions); measured on a toy denoising task, an untrained PhysNet on raw states starts at
  ~3.8x the input's squared error and learns slowly, so the states start smooth and the heads learn physics
  (the accelerations) rather than noise cancellation.
* **One step vs rollout** (``update``). "one_step" (default): q̂_{t+1} from the states q_t, q_{t−1} of the data,
  all t in parallel — errors cannot accumulate, cost linear in T. "rollout": the paper's literal reading — forward
  from the first three states, each step's local head sees the rolled-out window, the global features come from
  the data; sequential, exact for known dynamics, slower, and prone to drift on long clips.
* **Mass matrix** (``mass_matrix``). "symmetric" is the paper: E_M gives the upper triangle, S(·) mirrors it;
  nothing keeps it positive definite. "psd" reads the same 1326 values as a Cholesky factor L (diagonal through
  softplus) and uses L Lᵀ + eps I, as Deep Lagrangian Networks do. Both start at M̂⁻¹ = I (bias init).
* **Noise** (eq. 14–15). E_N gives a positive per-row scale s_t (softplus, starts at ``noise_init``); column i of
  N̂_t is s_t ⊙ ε_i with ε_i ~ N(0, I). Only when ``self.training and config.noise``; never at inference.
  L_noise = Σ_t ‖N̂_t‖_F summed over the frames whose accelerations are used (directions averaged like q̈),
  mean over the batch; it grows with T, so weight it in the trainer.
* **Boundaries.** Local windows are padded by edge replication. A direction's estimate of frame k counts when
  its window is all real frames (forward k ≥ 3, backward k ≤ T−4: the paper's "first/last three"); frames that
  no such estimate covers (T ≤ 5) use estimates whose window was padded but whose two states are real
  (one_step only), and frames with none at all (T = 2, the middle of T = 3) take the state q_k itself.
  T = 1 returns S_dd unchanged (no dynamics can be estimated from one frame). The root joint of S_pp is copied
  from S_dd (poses are root-relative).
* **Decoder** (eq. 18). q̂ is already a pose in metres, so E^pose is residual: S_pp = q̂ + MLP(q̂) with the MLP's
  output layer zero-initialised. An MLP learning the identity from scratch would cost millimetres of precision
  and many steps; the residual keeps an untrained PhysNet close to identity on smooth motion (q̈ starts ≈ 0, so
  q̂ is the average of the two linear extrapolations) and leaves the MLP free to learn pose-space corrections
  such as bone-length consistency.
* **Scales.** q in metres, dt² ≈ 4e-4…2e-3 s², accelerations in m/s² up to ~100+ in gymnastics: J and C are
  ``accel_scale`` (m/s²) times O(1) head outputs, M̂⁻¹ is O(1) around I; J, C, M and N output layers start with
  weights of std ``head_init_std`` (small, not zero, so every head gets gradients from the first step).

Measured (toy denoising, CPU, not a benchmark): smooth random motion (3 sinusoids 0.3–2.5 Hz + ballistic terms per
coordinate), 25–60 fps, white noise σ = 2 cm on S_dd; AdamW 1e-3, batch 16×32 frames; held-out 64×64 frames.
MPJPE of S_dd 30.1 mm, Savitzky–Golay(7,2) 17.9 mm. Fused = (S_dd+S_pp)/2 after 1000 steps of the fused loss:
raw states + central-velocity features 19.2 (1500 steps); smoothed states + central velocity 20.2; raw states +
fitted derivative features 19.7; defaults (smoothed states + fitted derivatives) 18.3, "psd" 18.3. With the loss
on S_pp instead: defaults S_pp 20.5 (700 steps), 19.1 (2000); without the fitted acceleration feature S_pp 28.3
(raw states) / 29.6 (smoothed) after 1000. "rollout" (300 steps, fused loss): the free-running integration from
the first/last three states drifts — training loss 1.36 → 0.5 m² (S_dd: 0.001), held-out fused MPJPE 1.5 m.
Note: with the paper's loss on the fused mean the optimum is S_pp = 2·S − S_dd, so S_pp alone then scores worse
than S_dd (27–37 mm above) although the fused mean is good; train with a loss on S_pp too if S_pp is reported.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .config import DictConfig
from .sequence import PoseError, Pose3D, root_relative

MASS_MATRIX_KINDS = ("symmetric", "psd")
UPDATE_MODES = ("one_step", "rollout")

# (q window (N,T,3,D) in the direction's time order, dt (N,)) -> (M⁻¹ (N,T,D,D), J (N,T,D), C (N,T,D))
HeadsOverride = Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]


@dataclass
class PhysNetConfig(DictConfig):
    """Sizes and options of :class:`PhysNet` (defaults: ~0.5 M parameters, a few ms per 16-frame clip on CPU)."""

    num_joints: int = 17
    hidden: int = 128
    global_layers: int = 2          # dilated temporal conv blocks in E^(g) (dilation 2^i), plus clip-mean context
    global_kernel: int = 5
    local_layers: int = 2           # MLP depth of E^(l) over the 3-frame window
    decoder_hidden: int = 128
    mass_matrix: str = "symmetric"  # "symmetric" (paper) | "psd" (Cholesky L Lᵀ + eps I)
    psd_eps: float = 1e-3
    noise: bool = True              # N̂_t during training (eq. 14–15); never at inference
    noise_init: float = 0.01        # initial noise scale s_t
    update: str = "one_step"        # "one_step" | "rollout"
    accel_scale: float = 20.0       # m/s² per unit of the J and C head outputs
    state_scale: float = 0.05       # metres per unit of the state correction readout
    state_filter: int = 7           # odd window of the quadratic smoother that forms the base state; 1 = raw S_dd
    feature_window: int = 7         # odd window of the smoothed velocity/acceleration features of the global head
    head_init_std: float = 1e-3     # weight std of the J, C, M, N output layers
    vel_scale: float = 5.0          # m/s: velocity features are asinh(v / vel_scale)
    acc_feature_scale: float = 50.0  # m/s²: acceleration features are asinh(a / acc_feature_scale)
    root: int = 0                   # root joint, copied from S_dd into S_pp

    def __post_init__(self):
        if self.mass_matrix not in MASS_MATRIX_KINDS:
            raise ValueError(f"mass_matrix must be one of {MASS_MATRIX_KINDS}; got {self.mass_matrix!r}")
        if self.update not in UPDATE_MODES:
            raise ValueError(f"update must be one of {UPDATE_MODES}; got {self.update!r}")
        for name in ("num_joints", "hidden", "global_kernel", "decoder_hidden", "local_layers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.global_kernel % 2 == 0:
            raise ValueError(f"global_kernel must be odd; got {self.global_kernel}")
        if self.state_filter < 1 or self.state_filter % 2 == 0:
            raise ValueError(f"state_filter must be an odd window >= 1 (1 = no smoothing); got {self.state_filter}")
        if self.feature_window < 3 or self.feature_window % 2 == 0:
            raise ValueError(f"feature_window must be an odd window >= 3; got {self.feature_window}")

    @property
    def dim(self) -> int:
        return 3 * self.num_joints


@dataclass
class PhysNetOutput:
    s_pp: Tensor        # (B,T,J,3) physically predicted poses (eq. 18)
    q_hat: Tensor       # (B,T,D) merged bidirectional states
    qdd: Tensor         # (B,T,D) accelerations used, at their centre frame, fwd/bwd averaged where both exist
    noise_loss: Tensor  # scalar L_noise = Σ_t ‖N̂_t‖_F (mean over batch), 0 when no noise


# ----------------------------------------------------------------------------- pure functions

def frame_dt(fps: float, stride: int = 1) -> float:
    """Seconds between consecutive samples: ``stride`` frames of a video at ``fps``."""
    if not np.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive number; got {fps}")
    if int(stride) != stride or stride < 1:
        raise ValueError(f"frame stride must be a positive integer; got {stride}")
    return float(stride) / float(fps)


def _size_from_triangle(m: int) -> int:
    n = int(round((math.sqrt(8 * m + 1) - 1) / 2))
    if n * (n + 1) // 2 != m:
        raise ValueError(f"{m} values are not a triangle n(n+1)/2 of any n")
    return n


@lru_cache(maxsize=8)
def _triangle_index(n: int) -> tuple[Tensor, Tensor, Tensor]:
    """(n·n,) gather index from row-major upper-triangle values into a symmetric matrix, the (n,n) upper mask,
    and the (n(n+1)/2,) mask of diagonal positions in the value vector."""
    rows, cols = torch.triu_indices(n, n)
    index = torch.empty(n, n, dtype=torch.long)
    k = torch.arange(rows.numel())
    index[rows, cols] = k
    index[cols, rows] = k
    return index.reshape(-1), torch.ones(n, n, dtype=torch.bool).triu(), rows == cols


def symmetric_from_upper(upper: Tensor, n: int | None = None) -> Tensor:
    """Eq. 13, the symmetric operation S: (..., n(n+1)/2) row-major upper-triangle values → (..., n, n)."""
    n = _size_from_triangle(upper.shape[-1]) if n is None else n
    if upper.shape[-1] != n * (n + 1) // 2:
        raise ValueError(f"upper triangle of a {n}x{n} matrix has {n * (n + 1) // 2} values; got {upper.shape[-1]}")
    index = _triangle_index(n)[0].to(upper.device)
    return upper[..., index].unflatten(-1, (n, n))


def psd_from_cholesky(values: Tensor, n: int | None = None, eps: float = 1e-3) -> Tensor:
    """(..., n(n+1)/2) → (..., n, n) positive definite L Lᵀ + eps I (Deep Lagrangian Networks).

    The values fill the lower-triangular L row-major by columns of Lᵀ (the order of :func:`symmetric_from_upper`);
    diagonal entries pass through softplus so L is a valid Cholesky factor.
    """
    n = _size_from_triangle(values.shape[-1]) if n is None else n
    _, upper_mask, diag = _triangle_index(n)
    values = torch.where(diag.to(values.device), F.softplus(values), values)
    lower = (symmetric_from_upper(values, n) * upper_mask.to(values.device)).transpose(-1, -2)
    eye = torch.eye(n, dtype=values.dtype, device=values.device)
    return lower @ lower.transpose(-1, -2) + eps * eye


def euler_lagrange_acceleration(m_inv: Tensor, noise: Tensor | None, J: Tensor, C: Tensor) -> Tensor:
    """Eq. 16: q̈ = (M̂⁻¹ + N̂)(J − C). m_inv, noise (..., D, D); J, C (..., D) → (..., D)."""
    force = (J - C).unsqueeze(-1)
    acc = m_inv @ force
    if noise is not None:
        acc = acc + noise @ force
    return acc.squeeze(-1)


def central_difference_step(q_t: Tensor, q_prev: Tensor, qdd: Tensor, dt: Tensor | float) -> Tensor:
    """Eq. 17: q̂_{t+1} = q̈_t dt² + 2 q_t − q_{t−1}. dt broadcasts against q (e.g. (N,1,1) for (N,T,D))."""
    return qdd * dt ** 2 + 2.0 * q_t - q_prev


def bidirectional_merge(fwd: Tensor, bwd: Tensor, fwd_valid: Tensor, bwd_valid: Tensor,
                        fallback: Tensor | None = None) -> Tensor:
    """Average the forward and backward estimates where both are valid; take the one available elsewhere.

    fwd, bwd (B,T,...); fwd_valid, bwd_valid (T,) bool or weights; frames valid in neither direction take
    ``fallback`` (same shape as fwd; zeros when None).
    """
    shape = (1, -1) + (1,) * (fwd.dim() - 2)
    wf = fwd_valid.to(fwd.dtype).reshape(shape)
    wb = bwd_valid.to(fwd.dtype).reshape(shape)
    total = wf + wb
    merged = (wf * fwd + wb * bwd) / total.clamp_min(1e-12)
    fallback = torch.zeros_like(fwd) if fallback is None else fallback
    return torch.where(total > 0, merged, fallback)


def direction_masks(T: int, update: str = "one_step", device=None) -> tuple[Tensor, Tensor]:
    """(T,) bool masks: which frames take the forward / backward estimate (frames indexed in real time).

    Preferred: estimates whose 3-frame window is all real frames (forward k ≥ 3, backward k ≤ T−4). Frames
    no such estimate covers take, in one_step mode, estimates from real states with a padded window
    (forward k ≥ 2, backward k ≤ T−3). Frames in neither mask fall back to the state itself.
    """
    k = torch.arange(T, device=device)
    fwd_real, bwd_real = k >= 3, k <= T - 4
    if update == "rollout":
        return fwd_real, bwd_real
    uncovered = ~(fwd_real | bwd_real)
    return fwd_real | (uncovered & (k >= 2)), bwd_real | (uncovered & (k <= T - 3))


def temporal_windows(x: Tensor) -> Tensor:
    """(N,T,D) → (N,T,3,D): window t holds (x_{t−2}, x_{t−1}, x_t), the start padded by edge replication."""
    padded = torch.cat([x[:, :1], x[:, :1], x], dim=1)
    T = x.shape[1]
    return torch.stack([padded[:, 0:T], padded[:, 1:T + 1], padded[:, 2:T + 2]], dim=2)


@lru_cache(maxsize=64)
def _fit_weights(window: int, order: int, deriv: int = 0) -> np.ndarray:
    """(window, window) float64: row p gives the weights over the window's frames of the ``deriv``-th derivative
    (per frame step) of the least-squares polynomial of degree ``order``, evaluated at frame p of the window."""
    pos = np.arange(window, dtype=np.float64) - (window - 1) / 2
    powers = np.arange(order + 1)
    design = pos[:, None] ** powers
    coef = np.array([math.perm(int(k), deriv) for k in powers], dtype=np.float64)
    basis = coef * pos[:, None] ** np.clip(powers - deriv, 0, None) * (powers >= deriv)
    return basis @ np.linalg.pinv(design)


def quadratic_smooth(x: Tensor, window: int = 7, deriv: int = 0) -> Tensor:
    """(N,T,D) → (N,T,D): Savitzky–Golay (degree 2) along T — the smoothed signal, or with ``deriv`` = 1, 2 its
    first/second derivative per frame step (divide by dt, dt²). Exact on quadratics in t everywhere.

    Interior frames use the centred window; the first/last window//2 frames use the fit of the first/last
    ``window`` frames evaluated at their position (no padding); clips shorter than the window use one fit of
    degree min(2, T−1) over the whole clip. Linear in T.
    """
    if deriv and window < 3:
        raise ValueError(f"derivatives need a window of at least 3 frames; got {window}")
    T = x.shape[1]
    if T == 1 or window <= 1:
        return x if deriv == 0 else torch.zeros_like(x)
    if T < window:
        w = torch.as_tensor(_fit_weights(T, min(2, T - 1), deriv), dtype=x.dtype, device=x.device)
        return torch.einsum("ts,nsd->ntd", w, x)
    w = torch.as_tensor(_fit_weights(window, 2, deriv), dtype=x.dtype, device=x.device)
    half = window // 2
    N, _, D = x.shape
    flat = rearrange(x, "n t d -> (n d) 1 t")
    mid = rearrange(F.conv1d(flat, w[half].view(1, 1, -1)), "(n d) 1 t -> n t d", n=N, d=D)
    head = torch.einsum("ts,nsd->ntd", w[:half], x[:, :window])
    tail = torch.einsum("ts,nsd->ntd", w[-half:], x[:, -window:])
    return torch.cat([head, mid, tail], dim=1)


def _as_dt(dt: Tensor | float, batch: int, like: Tensor) -> Tensor:
    """dt as a (B,) tensor of like's dtype/device, checked positive and finite."""
    dt = torch.as_tensor(dt, dtype=like.dtype, device=like.device)
    if dt.dim() == 0:
        dt = dt.expand(batch)
    if dt.shape != (batch,):
        raise ValueError(f"dt must be a float or a tensor of shape ({batch},); got shape {tuple(dt.shape)}")
    if not (torch.isfinite(dt).all() and (dt > 0).all()):
        raise ValueError(f"dt must be positive and finite seconds; got {dt.tolist()}")
    return dt


# ----------------------------------------------------------------------------- modules

class TemporalBlock(nn.Module):
    """Residual pre-norm block: dilated temporal conv (edge-replicated padding) → GELU → Linear. (N,T,H)."""

    def __init__(self, hidden: int, kernel: int, dilation: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.conv = nn.Conv1d(hidden, hidden, kernel, dilation=dilation)
        self.proj = nn.Linear(hidden, hidden)
        self.pad = dilation * (kernel - 1) // 2

    def forward(self, h: Tensor) -> Tensor:
        y = rearrange(self.norm(h), "n t c -> n c t")
        y = self.conv(F.pad(y, (self.pad, self.pad), mode="replicate"))
        return h + self.proj(F.gelu(rearrange(y, "n c t -> n t c")))


class GlobalHead(nn.Module):
    """E^(g): per-frame (position, velocity, acceleration) features (N,T,3D) → (N,T,H) over the whole clip."""

    def __init__(self, cfg: PhysNetConfig):
        super().__init__()
        self.embed = nn.Linear(3 * cfg.dim, cfg.hidden)
        self.blocks = nn.ModuleList(TemporalBlock(cfg.hidden, cfg.global_kernel, 2 ** i)
                                    for i in range(cfg.global_layers))
        self.context = nn.Linear(cfg.hidden, cfg.hidden)

    def forward(self, feats: Tensor) -> Tensor:
        h = self.embed(feats)
        for block in self.blocks:
            h = block(h)
        return h + self.context(h.mean(dim=1, keepdim=True))


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


def _init_small(layer: nn.Linear, std: float, bias: Tensor | float = 0.0) -> nn.Linear:
    if std > 0:
        nn.init.normal_(layer.weight, std=std)
    else:
        nn.init.zeros_(layer.weight)
    with torch.no_grad():
        layer.bias.copy_(torch.as_tensor(bias, dtype=layer.bias.dtype).expand_as(layer.bias))
    return layer


def _inverse_softplus(y: float) -> float:
    return math.log(math.expm1(y))


class PhysNet(nn.Module):
    """PhysNet (eq. 6–18). ``forward(s_dd (B,T,J,3) metres root-relative, dt (B,) s or float) → PhysNetOutput``.

    ``heads_override`` (analysis and tests only, not saved): a callable (q windows (N,T,3,D), dt (N,)) →
    (M⁻¹ (N,T,D,D), J (N,T,D), C (N,T,D)) that replaces the learned M̂⁻¹, J and C.
    """

    def __init__(self, config: PhysNetConfig | None = None, heads_override: HeadsOverride | None = None):
        super().__init__()
        cfg = self.config = config or PhysNetConfig()
        self.heads_override = heads_override
        D, H = cfg.dim, cfg.hidden
        self.global_head = GlobalHead(cfg)
        self.local_head = _mlp([3 * D] + [H] * cfg.local_layers)
        self.fuse = nn.Sequential(nn.LayerNorm(H), nn.Linear(H, H), nn.GELU())
        self.state_out = _init_small(nn.Linear(H, D), 0.0)
        self.head_J = _init_small(nn.Linear(H, D), cfg.head_init_std)
        self.head_C = _init_small(nn.Linear(H, D), cfg.head_init_std)
        self.head_M = _init_small(nn.Linear(H, D * (D + 1) // 2), cfg.head_init_std, self._identity_bias())
        self.head_N = _init_small(nn.Linear(H, D), cfg.head_init_std, _inverse_softplus(cfg.noise_init))
        self.decoder = _mlp([D, cfg.decoder_hidden, cfg.decoder_hidden, D])
        _init_small(self.decoder[-1], 0.0)

    def _identity_bias(self) -> Tensor:
        """Bias of E_M such that M̂⁻¹ = I at initialisation, for either mass-matrix kind."""
        diag = _triangle_index(self.config.dim)[2]
        on = _inverse_softplus(1.0) if self.config.mass_matrix == "psd" else 1.0
        return diag.float() * on

    # --- pieces -------------------------------------------------------------------------------------
    def _features(self, x: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
        """Global (N,T,3D) and local (N,T,3D) input features of a clip x (N,T,D)."""
        cfg = self.config
        dt = dt.view(-1, 1, 1)
        vel = quadratic_smooth(x, cfg.feature_window, 1) / dt
        acc = quadratic_smooth(x, cfg.feature_window, 2) / dt ** 2
        glob = torch.cat([x, torch.asinh(vel / cfg.vel_scale), torch.asinh(acc / cfg.acc_feature_scale)], dim=-1)
        return glob, self._local_features(temporal_windows(x), dt)

    def _local_features(self, win: Tensor, dt: Tensor) -> Tensor:
        """(N,T,3,D) windows → (N,T,3D): position, asinh-squashed backward velocity and acceleration."""
        cfg = self.config
        dt = dt.view(-1, 1, 1)
        p0, p1, p2 = win.unbind(dim=2)
        vel = (p2 - p1) / dt
        acc = (p2 - 2 * p1 + p0) / dt ** 2
        return torch.cat([p2, torch.asinh(vel / cfg.vel_scale), torch.asinh(acc / cfg.acc_feature_scale)], -1)

    def _hidden(self, g: Tensor, local_feats: Tensor) -> Tensor:
        return self.fuse(g + self.local_head(local_feats))

    def _state(self, x: Tensor, h: Tensor) -> Tensor:
        """Position-space state q_t (N,T,D): smoothed data plus the learned (zero-initialised) correction."""
        return quadratic_smooth(x, self.config.state_filter) + self.config.state_scale * self.state_out(h)

    def _mass_matrix(self, h: Tensor) -> Tensor:
        values = self.head_M(h)
        if self.config.mass_matrix == "psd":
            return psd_from_cholesky(values, self.config.dim, self.config.psd_eps)
        return symmetric_from_upper(values, self.config.dim)

    def _terms(self, h: Tensor, q_win: Tensor, dt: Tensor):
        """M̂⁻¹ (N,T,D,D), J, C (N,T,D), N̂ (N,T,D,D) or None, ‖N̂‖_F (N,T)."""
        if self.heads_override is not None:
            m_inv, J, C = self.heads_override(q_win, dt)
        else:
            s = self.config.accel_scale
            m_inv, J, C = self._mass_matrix(h), s * self.head_J(h), s * self.head_C(h)
        if not (self.training and self.config.noise):
            return m_inv, J, C, None, h.new_zeros(h.shape[:-1])
        scale = F.softplus(self.head_N(h))                                   # (N,T,D) per-row scale
        noise = scale.unsqueeze(-1) * torch.randn_like(m_inv)                 # column i: s ⊙ ε_i
        return m_inv, J, C, noise, noise.flatten(-2).norm(dim=-1)

    # --- update modes (x: (N,T,D) in the direction's time order) ---------------------------------------
    def _one_step(self, x: Tensor, dt: Tensor):
        glob, loc = self._features(x, dt)
        h = self._hidden(self.global_head(glob), loc)
        q = self._state(x, h)
        m_inv, J, C, noise, nnorm = self._terms(h, temporal_windows(q), dt)
        qdd = euler_lagrange_acceleration(m_inv, noise, J, C)
        q_prev = torch.cat([q[:, :1], q[:, :-1]], dim=1)
        nxt = central_difference_step(q, q_prev, qdd, dt.view(-1, 1, 1))   # estimate of frame t+1
        return torch.cat([q[:, :1], nxt[:, :-1]], dim=1), qdd, nnorm, q

    def _rollout(self, x: Tensor, dt: Tensor):
        glob, loc = self._features(x, dt)
        g = self.global_head(glob)
        q = self._state(x, self._hidden(g, loc))
        T = x.shape[1]
        states = list(q[:, :min(3, T)].unbind(dim=1))
        qdd, nnorm = torch.zeros_like(x), x.new_zeros(x.shape[:2])
        accs, norms = [], []
        for t in range(2, T - 1):
            win = torch.stack(states[-3:], dim=1).unsqueeze(1)               # (N,1,3,D)
            h = self._hidden(g[:, t:t + 1], self._local_features(win, dt))
            m_inv, J, C, noise, nn_t = self._terms(h, win, dt)
            a = euler_lagrange_acceleration(m_inv, noise, J, C)[:, 0]
            states.append(central_difference_step(states[-1], states[-2], a, dt.view(-1, 1)))
            accs.append(a)
            norms.append(nn_t[:, 0])
        if accs:
            qdd = torch.cat([qdd[:, :2], torch.stack(accs, 1), qdd[:, -1:]], dim=1)
            nnorm = torch.cat([nnorm[:, :2], torch.stack(norms, 1), nnorm[:, -1:]], dim=1)
        return torch.stack(states, dim=1), qdd, nnorm, q

    # --- forward ------------------------------------------------------------------------------------
    def forward(self, s_dd: Tensor, dt: Tensor | float) -> PhysNetOutput:
        cfg = self.config
        if s_dd.dim() != 4 or tuple(s_dd.shape[2:]) != (cfg.num_joints, 3):
            raise PoseError(f"PhysNet expects s_dd of shape (B, T, {cfg.num_joints}, 3); got {tuple(s_dd.shape)}"
                            " (add a batch axis with s_dd[None] for a single clip)")
        B, T = s_dd.shape[:2]
        if T == 0:
            raise PoseError("PhysNet got a clip with no frames (T = 0)")
        if not torch.isfinite(s_dd).all():
            raise PoseError("PhysNet input s_dd contains NaN or inf values")
        dt = _as_dt(dt, B, s_dd)
        x = rearrange(s_dd, "b t j c -> b t (j c)")
        if T == 1:  # no dynamics from one frame: pass through
            return PhysNetOutput(s_dd.clone(), x.clone(), torch.zeros_like(x), s_dd.new_zeros(()))

        both = torch.cat([x, x.flip(1)], dim=0)                              # (2B,T,D): forward, backward
        step = self._one_step if cfg.update == "one_step" else self._rollout
        pred, acc, nnorm, state = step(both, dt.repeat(2))
        unflip = lambda v: (v[:B], v[B:].flip(1))                            # noqa: E731
        (pf, pb), (af, ab), (nf, nb), (sf, sb) = map(unflip, (pred, acc, nnorm, state))

        wf, wb = direction_masks(T, cfg.update, s_dd.device)
        q_hat = bidirectional_merge(pf, pb, wf, wb, fallback=(sf + sb) / 2)
        # q̈ at frame t produced the forward estimate of t+1 and the backward estimate of t−1
        no = wf.new_zeros(1)
        awf, awb = torch.cat([wf[1:], no]), torch.cat([no, wb[:-1]])
        qdd = bidirectional_merge(af, ab, awf, awb)
        noise_loss = bidirectional_merge(nf, nb, awf, awb).sum(dim=1).mean()

        pose = rearrange(q_hat + self.decoder(q_hat), "b t (j c) -> b t j c", c=3)
        r = cfg.root
        s_pp = root_relative(pose, r) + s_dd[:, :, r:r + 1]
        return PhysNetOutput(s_pp, q_hat, qdd, noise_loss)


# ----------------------------------------------------------------------------- numpy entry point

def refine_pose3d(pose3d: Pose3D, physnet: PhysNet, frame_stride: int = 1) -> Pose3D:
    """S_dd → S_pp for one clip (no grad, eval mode; the module's mode is restored).

    dt = frame_stride / pose3d.fps: pass ``frame_stride`` > 1 only when pose3d.fps is the source video's rate
    and the sequence keeps every ``frame_stride``-th frame. Returns a Pose3D with source 'pp' (camera, image
    size and meta carried over).
    """
    dt = frame_dt(pose3d.fps, frame_stride)
    param = next(physnet.parameters())
    joints = torch.as_tensor(pose3d.joints, dtype=param.dtype, device=param.device)[None]
    was_training = physnet.training
    physnet.eval()
    try:
        with torch.no_grad():
            out = physnet(joints, dt)
    finally:
        physnet.train(was_training)
    s_pp = out.s_pp[0].detach().cpu().numpy().astype(np.float32)
    return replace(pose3d, joints=s_pp, source="pp", meta=dict(pose3d.meta))
