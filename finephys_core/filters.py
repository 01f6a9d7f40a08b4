"""Classical temporal smoothers for pose sequences, the baselines PhysNet must beat (issue 3), and an ideal
low-pass that bounds what any smoother can do (``bench physics --error-spectrum``).

All act on every coordinate of every joint independently along time: input (T, ...) → same shape.
"""
from __future__ import annotations

import math

import numpy as np


def savgol_coefficients(window: int, order: int, pos: int) -> np.ndarray:
    """(window,) weights that evaluate, at sample ``pos`` of the window, the least-squares polynomial of
    degree ``order`` fitted to the window's samples."""
    x = np.arange(window, dtype=np.float64) - pos
    vander = x[:, None] ** np.arange(order + 1)[None, :]       # (window, order+1)
    return np.linalg.pinv(vander)[0]                           # the fitted constant term at x = 0


def savgol(x, window: int = 7, order: int = 2) -> np.ndarray:
    """Savitzky–Golay smoothing along axis 0 (scipy's ``mode='interp'``: the first and last half-windows
    are taken from the polynomial fitted to the first and last full windows).

    Args:
        x: (T, ...) array.
        window: odd window length; shrunk to the largest odd length ≤ T for short clips.
        order: polynomial degree, < window.
    """
    x = np.asarray(x, np.float64)
    if window % 2 == 0 or window < 1:
        raise ValueError(f"savgol window must be a positive odd number; got {window}")
    t = x.shape[0]
    window = min(window, t if t % 2 else t - 1)
    order = min(order, window - 1)
    if window <= 1:
        return x.copy()
    half = window // 2
    flat = x.reshape(t, -1)
    out = np.empty_like(flat)
    centre = savgol_coefficients(window, order, half)
    # Interior: a sliding dot product with the centred weights.
    windows = np.lib.stride_tricks.sliding_window_view(flat, window, axis=0)   # (T-w+1, D, w)
    out[half:t - half] = windows @ centre
    for i in range(half):
        out[i] = savgol_coefficients(window, order, i) @ flat[:window]
        out[t - 1 - i] = savgol_coefficients(window, order, window - 1 - i) @ flat[t - window:]
    return out.reshape(x.shape)


def one_euro(x, fps: float, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0) -> np.ndarray:
    """One-euro filter (Casiez, Roussel & Vogel, CHI 2012) along axis 0, every coordinate independently.

    An exponential low-pass whose cutoff rises with the filtered speed: cutoff = min_cutoff + beta·|ẋ|.
    Args:
        x: (T, ...) samples at ``fps`` Hz.
        min_cutoff: cutoff (Hz) at rest; lower = smoother.
        beta: speed coefficient (1/unit of x); higher = less lag in fast motion.
        d_cutoff: cutoff (Hz) of the derivative's own low-pass.
    """
    x = np.asarray(x, np.float64)
    if fps <= 0:
        raise ValueError(f"one_euro needs a positive fps; got {fps}")
    te = 1.0 / fps

    def alpha(cutoff):
        tau = 1.0 / (2.0 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / te)

    out = np.empty_like(x)
    out[0] = prev = x[0]
    dprev = np.zeros_like(x[0])
    a_d = alpha(d_cutoff)
    for i in range(1, x.shape[0]):
        dx = (x[i] - prev) / te
        dprev = a_d * dx + (1.0 - a_d) * dprev
        a = alpha(min_cutoff + beta * np.abs(dprev))
        prev = a * x[i] + (1.0 - a) * prev
        out[i] = prev
    return out


def low_pass(x, fps: float, cutoff_hz: float) -> np.ndarray:
    """Ideal (brick-wall) low-pass along axis 0: every frequency above ``cutoff_hz`` removed.

    The clip is mirrored end to end before the FFT so that its ends do not wrap into each other. It sees
    the whole clip at once, so it is an analysis tool (the benchmark's bound on what smoothing can do),
    not a filter for live use. Mirroring keeps Parseval exact on the clip: the share of ‖x‖² that
    ``low_pass`` keeps is the share of x's energy below the cutoff.
    Args:
        x: (T, ...) samples at ``fps`` Hz.
        cutoff_hz: ≥ 0; at or above fps / 2 nothing is removed.
    """
    x = np.asarray(x, np.float64)
    if fps <= 0 or cutoff_hz < 0:
        raise ValueError(f"low_pass needs fps > 0 and cutoff_hz ≥ 0; got fps={fps}, cutoff_hz={cutoff_hz}")
    t = x.shape[0]
    spectrum = np.fft.rfft(np.concatenate([x, x[::-1]]), axis=0)
    spectrum[np.fft.rfftfreq(2 * t, 1.0 / fps) > cutoff_hz] = 0
    return np.fft.irfft(spectrum, n=2 * t, axis=0)[:t]
