"""What 2D detectors do to gymnastics: a corruption model applied to clean 2D keypoints during training.

Error types follow Ronchi & Perona's taxonomy of pose-estimation errors (jitter, inversion = left/right
swap, swap onto another joint, miss) plus whole-frame failures; rates default to a FineGym-like setting
(../shared/reference/physics-sim.md): ~19 % of joints with a large error, 6 % of frames with a left/right
flip, 5 % missed joints, 4 % failed frames. Every error is more frequent and larger when the athlete is
upside down or moving fast (motion blur), and errors come in short bursts of consecutive frames, as a
detector stays wrong while the image stays hard. Wrong joints often keep a high score (over-confidence).

Sizes are relative to the athlete's size in the image (median bounding-box diagonal of the clean clip), so
the model is resolution independent. Deterministic given the ``rng``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from finephys_core.skeleton import H36M17


@dataclass
class CorruptionConfig:
    """Rates are per joint-frame (or per frame) at ``severity`` 1; sizes are fractions of the athlete's
    size in the image (bounding-box diagonal)."""

    jitter: float = 0.006              # base Gaussian jitter (std)
    jitter_per_speed: float = 0.06     # extra std per unit joint speed (size-fractions per frame): motion blur
    inverted_gain: float = 1.8         # error rates and jitter multiply by this when fully upside down
    speed_gain: float = 1.0            # large-error rate grows by this per unit joint speed (size per frame)
    large_error_rate: float = 0.19     # joints with a large error
    large_error_size: float = 0.12     # std of a large error's offset
    snap_prob: float = 0.4             # a large error lands on another joint (neighbour or mirror) instead
    flip_frame_rate: float = 0.06      # frames with left and right swapped
    missed_joint_rate: float = 0.035   # joints not found (score 0); ~5 % with inversion and failures
    failed_frame_rate: float = 0.04    # frames where the detector fails
    failed_lock_prob: float = 0.5      # a failed frame locks onto another (random) pose, else all scores 0
    burst_frames: float = 2.5          # mean length of an error burst (frames at 25 fps; scaled with fps)
    overconfident_prob: float = 0.7    # a wrong joint keeps a high score
    good_score: tuple[float, float] = (0.75, 0.98)
    low_score: tuple[float, float] = (0.05, 0.45)


def _bursts(rng: np.random.Generator, shape: tuple, rate: np.ndarray, mean_len: float) -> np.ndarray:
    """Two-state Markov chain along axis 0 with stationary on-fraction ``rate`` (broadcast to shape[1:] per
    frame) and mean run length ``mean_len``."""
    rate = np.clip(np.broadcast_to(rate, shape), 0.0, 0.95)
    stay = 1.0 - 1.0 / max(mean_len, 1.0)
    p_on = rate * (1 - stay) / np.maximum(1 - rate, 1e-6)
    u = rng.random(shape)
    out = np.zeros(shape, bool)
    on = u[0] < rate[0]
    out[0] = on
    for t in range(1, shape[0]):
        on = np.where(on, u[t] < stay, u[t] < p_on[t])
        out[t] = on
    return out


def _run_start(mask: np.ndarray) -> np.ndarray:
    """For each entry of a (T, ...) mask, the frame index where its current run began (0 where off)."""
    T = mask.shape[0]
    prev = np.concatenate([np.zeros_like(mask[:1]), mask[:-1]])
    t = np.arange(T).reshape((T,) + (1,) * (mask.ndim - 1))
    return np.maximum.accumulate(np.where(mask & ~prev, t, 0), axis=0)


def _inversion(kp: np.ndarray) -> np.ndarray:
    """(T,) 0 upright … 1 upside down, from the image direction pelvis → thorax (image y points down)."""
    v = kp[:, 8] - kp[:, 0]
    cos_up = -v[:, 1] / np.maximum(np.linalg.norm(v, axis=-1), 1e-6)
    return np.clip(-cos_up, 0.0, 1.0)


def _snap_targets() -> list[list[int]]:
    """For each joint, the joints a detector confuses it with: kinematic neighbours and its mirror."""
    flip = H36M17.flip_index
    out = []
    for j in range(H36M17.num_joints):
        near = {p for p, c in H36M17.bones if c == j} | {c for p, c in H36M17.bones if p == j}
        if flip[j] != j:
            near.add(int(flip[j]))
        out.append(sorted(near))
    return out


_SNAP = _snap_targets()
_SNAP_COUNT = np.array([len(t) for t in _SNAP])
_SNAP_TABLE = np.array([t + [t[0]] * (_SNAP_COUNT.max() - len(t)) for t in _SNAP])  # (17, max) padded


def corrupt_2d(keypoints: np.ndarray, scores: np.ndarray | None, image_size, rng: np.random.Generator,
               severity: float = 1.0, fps: float | None = None,
               config: CorruptionConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Corrupt clean H36M-17 keypoints like a detector on gymnastics would.

    Args:
        keypoints: (T, 17, 2) pixels (clean).
        scores: (T, 17) or None (then all 1).
        image_size: (W, H) pixels.
        rng: numpy Generator (the only source of randomness).
        severity: scales every rate and size (0 = clean apart from scores).
        fps: frame rate; bursts last ``burst_frames`` at 25 fps, proportionally longer at higher fps.
    Returns:
        keypoints (T, 17, 2) float32 and scores (T, 17) float32 in [0, 1].
    """
    cfg = config or CorruptionConfig()
    kp = np.asarray(keypoints, np.float64)
    if kp.ndim != 3 or kp.shape[1:] != (17, 2):
        raise ValueError(f"keypoints must be (T, 17, 2) in the H36M-17 layout; got {kp.shape}")
    T = kp.shape[0]
    base_scores = np.ones((T, 17)) if scores is None else np.asarray(scores, np.float64)
    if base_scores.shape != (T, 17):
        raise ValueError(f"scores must be (T, 17) to match keypoints; got {base_scores.shape}")
    W, H = (float(v) for v in image_size)
    s = float(severity)
    burst = cfg.burst_frames * (fps / 25.0 if fps else 1.0)

    span = kp.max(1) - kp.min(1)
    size = max(float(np.median(np.linalg.norm(span, axis=-1))), 1.0)
    speed = np.zeros((T, 17))
    if T > 1:
        step = np.linalg.norm(np.diff(kp, axis=0), axis=-1) / size
        speed[1:] += step
        speed[:-1] += step
        speed[1:-1] /= 2
    inv = _inversion(kp)[:, None]
    hard = 1.0 + (cfg.inverted_gain - 1.0) * inv            # (T,1)
    frame_hard = hard[:, 0]

    out = kp + rng.normal(size=kp.shape) * (size * s * hard * (cfg.jitter + cfg.jitter_per_speed * speed))[..., None]
    sc = rng.uniform(*cfg.good_score, size=(T, 17)) * np.exp(-3.0 * speed) ** 0.3 / hard ** 0.15

    # large errors: a random offset, or a snap onto a confusable joint, held over a burst
    large = _bursts(rng, (T, 17), s * cfg.large_error_rate * hard * (1 + cfg.speed_gain * speed), burst)
    run = _run_start(large)                                   # each burst draws its own error once
    cols = np.arange(17)[None]
    offsets = (rng.normal(size=(T, 17, 2)) * size * cfg.large_error_size * s)[run, cols]
    drift = np.cumsum(rng.normal(size=(T, 17, 2)) * size * 0.01 * s, axis=0)
    snap = (rng.random((T, 17)) < cfg.snap_prob)[run, cols]
    pick = rng.integers(0, 1 << 30, size=(T, 17))[run, cols]
    snap_to = _SNAP_TABLE[cols, pick % _SNAP_COUNT[cols]]
    wrong_pos = np.where(snap[..., None], np.take_along_axis(kp, snap_to[..., None], axis=1) + drift * 0.5,
                         out + offsets + drift)
    out = np.where(large[..., None], wrong_pos, out)

    # left/right flips of whole frames
    flip = _bursts(rng, (T,), s * cfg.flip_frame_rate * frame_hard, burst)
    perm = H36M17.flip_index
    out[flip] = out[flip][:, perm]
    large[flip] = True
    sc[flip] = sc[flip][:, perm]

    wrong = large
    confident = rng.random((T, 17)) < cfg.overconfident_prob
    sc = np.where(wrong & ~confident, rng.uniform(*cfg.low_score, size=(T, 17)), sc)

    missed = _bursts(rng, (T, 17), s * cfg.missed_joint_rate * hard, burst)
    sc[missed] = 0.0
    out[missed] += rng.normal(size=(int(missed.sum()), 2)) * size * 0.2

    failed = _bursts(rng, (T,), s * cfg.failed_frame_rate * frame_hard, burst)
    starts = np.nonzero(failed & ~np.r_[False, failed[:-1]])[0]
    for start in starts:  # each failed burst: nobody found, or locked onto another person's pose
        idx = np.arange(start, start + int(np.argmin(np.r_[failed[start:], False])))
        if rng.random() < cfg.failed_lock_prob:
            src = kp[rng.integers(T)]
            where = np.array([rng.uniform(0.1, 0.9) * W, rng.uniform(0.2, 0.9) * H])
            other = (src - src.mean(0)) * rng.uniform(0.5, 1.1) + where
            out[idx] = other + rng.normal(size=(len(idx), 17, 2)) * size * cfg.jitter
            sc[idx] = rng.uniform(*cfg.good_score, size=(len(idx), 17)) * 0.9
        else:
            sc[idx] = 0.0
    sc = np.clip(sc * base_scores, 0.0, 1.0)
    return out.astype(np.float32), sc.astype(np.float32)
