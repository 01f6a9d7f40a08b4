"""PhysNet (paper eq. 6–18): the integrator against analytic motion with known M⁻¹, J, C, the bidirectional
merge, the mass-matrix constructions, shapes, noise, gradients, the Pose3D entry point and bad input."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from finephys_core.physics import (PhysNet, PhysNetConfig, bidirectional_merge, central_difference_step,
                                   direction_masks, euler_lagrange_acceleration, frame_dt, psd_from_cholesky,
                                   quadratic_smooth, refine_pose3d, symmetric_from_upper)
from finephys_core.sequence import Camera, Pose3D, PoseError

D = 51
SMALL = dict(hidden=32, decoder_hidden=32)


def constant_force_heads(accel: torch.Tensor, m_inv: torch.Tensor | None = None):
    """Heads override with q̈ = M⁻¹(J − C) = accel: J = M⁻¹⁻¹·accel + c, C = c (any M⁻¹, non-symmetric too)."""
    m = torch.eye(D, dtype=accel.dtype) if m_inv is None else m_inv
    c = torch.linspace(-1.0, 2.0, D, dtype=accel.dtype)
    j = torch.linalg.solve(m, accel) + c

    def heads(win, dt):
        N, T = win.shape[:2]
        return m.expand(N, T, D, D), j.expand(N, T, D), c.expand(N, T, D)
    return heads


def spring_heads(k: float):
    """q̈ = −k q: J = −k q_t read from the window the heads are given, M⁻¹ = I, C = 0."""
    def heads(win, dt):
        q = win[:, :, 2]
        N, T = q.shape[:2]
        eye = torch.eye(D, dtype=q.dtype).expand(N, T, D, D)
        return eye, -k * q, torch.zeros_like(q)
    return heads


def parabola(T: int, dt: float, accel: torch.Tensor, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    p0 = torch.randn(D, generator=g, dtype=dtype) * 0.3
    v0 = torch.randn(D, generator=g, dtype=dtype)
    t = (torch.arange(T, dtype=dtype) * dt)[:, None]
    return (p0 + v0 * t + 0.5 * accel.to(dtype) * t ** 2).reshape(1, T, 17, 3)


def randomize(net: PhysNet, seed: int = 0) -> PhysNet:
    """Non-trivial weights everywhere (zero-initialised readouts included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return net


# ----------------------------------------------------------------------------- pure functions

def test_symmetric_from_upper_hand_checked_3x3():
    m = symmetric_from_upper(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), 3)
    assert torch.equal(m, torch.tensor([[1.0, 2.0, 3.0], [2.0, 4.0, 5.0], [3.0, 5.0, 6.0]]))
    big = symmetric_from_upper(torch.randn(2, 4, 51 * 26))
    assert big.shape == (2, 4, 51, 51) and torch.equal(big, big.transpose(-1, -2))
    with pytest.raises(ValueError, match="triangle"):
        symmetric_from_upper(torch.zeros(5))


def test_psd_from_cholesky_is_positive_definite_and_hand_checked():
    v = torch.tensor([0.3, -1.5, 2.0])            # n = 2: L = [[sp(0.3), 0], [-1.5, sp(2.0)]]
    s0, s2 = torch.nn.functional.softplus(v[0]), torch.nn.functional.softplus(v[2])
    expect = torch.tensor([[s0 ** 2, -1.5 * s0], [-1.5 * s0, 2.25 + s2 ** 2]]) + 1e-3 * torch.eye(2)
    assert torch.allclose(psd_from_cholesky(v, 2, eps=1e-3), expect, atol=1e-6)
    m = psd_from_cholesky(torch.randn(8, 51 * 26, dtype=torch.float64) * 3, eps=1e-3)
    assert torch.allclose(m, m.transpose(-1, -2))
    assert torch.linalg.eigvalsh(m).min() > 1e-3 - 1e-9


def test_acceleration_and_step_formulas():
    m = torch.tensor([[2.0, 1.0], [0.0, 3.0]])
    assert torch.allclose(euler_lagrange_acceleration(m, None, torch.tensor([1.0, 1.0]), torch.tensor([0.0, 2.0])),
                          torch.tensor([1.0, -3.0]))
    noise = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert torch.allclose(euler_lagrange_acceleration(m, noise, torch.tensor([1.0, 0.0]), torch.zeros(2)),
                          torch.tensor([3.0, 0.0]))
    assert torch.allclose(central_difference_step(torch.tensor(1.0), torch.tensor(0.5), torch.tensor(10.0), 0.1),
                          torch.tensor(1.6))


def test_frame_dt_from_fps_and_stride():
    assert frame_dt(25) == pytest.approx(0.04)
    assert frame_dt(50, stride=2) == pytest.approx(0.04)
    for bad in (dict(fps=0), dict(fps=float("nan")), dict(fps=30, stride=0), dict(fps=30, stride=1.5)):
        with pytest.raises(ValueError):
            frame_dt(**bad)


def test_quadratic_smooth_is_exact_on_parabolas_and_reduces_noise():
    g = torch.Generator().manual_seed(2)
    for T in (2, 3, 5, 6, 7, 8, 30):
        t = torch.arange(T, dtype=torch.float64)[None, :, None]
        x = 0.3 + 1.5 * t - 0.7 * t ** 2 + torch.zeros(2, T, 4, dtype=torch.float64)
        assert torch.allclose(quadratic_smooth(x, 7), x, atol=1e-9), T
        if T >= 3:
            assert torch.allclose(quadratic_smooth(x, 7, deriv=1), 1.5 - 1.4 * t.expand_as(x), atol=1e-9), T
            assert torch.allclose(quadratic_smooth(x, 5, deriv=2), torch.full_like(x, -1.4), atol=1e-9), T
    x = torch.randn(1, 2000, 51, generator=g, dtype=torch.float64)
    y = quadratic_smooth(x, 7)
    assert 0.30 < y[:, 3:-3].var().item() < 0.37           # SG(7,2) centre weights: sum of squares = 1/3
    assert torch.allclose(quadratic_smooth(x.flip(1), 7), y.flip(1))
    assert torch.equal(quadratic_smooth(x, 1), x)
    with pytest.raises(ValueError, match="state_filter"):
        PhysNetConfig(state_filter=4)
    with pytest.raises(ValueError, match="feature_window"):
        PhysNetConfig(feature_window=1)


def test_direction_masks_cover_every_frame_and_follow_the_paper():
    wf, wb = direction_masks(12)
    assert wf.tolist() == [False] * 3 + [True] * 9 and wb.tolist() == [True] * 9 + [False] * 3
    for T in range(4, 9):
        wf, wb = direction_masks(T)
        assert bool((wf | wb).all()), T
    wf, wb = direction_masks(3)                    # middle frame of 3: no estimate, state fallback
    assert (wf | wb).tolist() == [True, False, True]


def test_bidirectional_merge_averages_middle_and_keeps_single_estimates():
    f = torch.full((1, 4, 2), 1.0)
    b = torch.full((1, 4, 2), 3.0)
    fb = torch.full((1, 4, 2), -7.0)
    out = bidirectional_merge(f, b, torch.tensor([0, 1, 1, 0]).bool(), torch.tensor([1, 1, 0, 0]).bool(), fb)
    assert out[0, :, 0].tolist() == [3.0, 2.0, 1.0, -7.0]


# ----------------------------------------------------------------------------- integrator with known physics

@pytest.mark.parametrize("update", ["one_step", "rollout"])
def test_constant_acceleration_gives_the_parabola_exactly(update):
    dt = 1 / 30
    accel = torch.linspace(-9.81, 30.0, D, dtype=torch.float64)
    m_inv = torch.eye(D, dtype=torch.float64) + 0.3 * torch.randn(D, D, generator=torch.Generator().manual_seed(3),
                                                                   dtype=torch.float64)   # not symmetric
    net = PhysNet(PhysNetConfig(update=update, **SMALL), heads_override=constant_force_heads(accel, m_inv))
    net = net.double().eval()
    for T in (3, 4, 5, 7, 40):
        s = parabola(T, dt, accel)
        out = net(s, dt)
        assert torch.allclose(out.q_hat, s.reshape(1, T, D), atol=1e-5, rtol=0), (update, T)
        assert torch.allclose(out.s_pp, s, atol=1e-5, rtol=0), (update, T)
        if T >= 5:
            assert torch.allclose(out.qdd[0, 2:-2], accel.expand(T - 4, D), atol=1e-6)


def test_parabola_in_float32_forward_and_backward_estimates_agree():
    dt = 1 / 50
    accel = torch.linspace(-20.0, 20.0, D)
    net = PhysNet(PhysNetConfig(**SMALL), heads_override=constant_force_heads(accel))
    s = parabola(16, dt, accel, torch.float32)
    out = net.eval()(s, dt)
    assert (out.q_hat - s.reshape(1, 16, D)).abs().max() < 1e-5


def test_averaging_matches_the_hand_formula_on_non_parabolic_motion():
    """Known q̈ = a on data that is not a parabola: middle frames average the two directions' estimates,
    the first three take the backward one, the last three the forward one."""
    T, dt = 10, 0.04
    a = torch.full((D,), 3.0, dtype=torch.float64)
    x = torch.sin(torch.arange(T, dtype=torch.float64)[:, None] * 0.7 + torch.arange(D) * 0.1)
    net = PhysNet(PhysNetConfig(state_filter=1, **SMALL), heads_override=constant_force_heads(a)).double().eval()
    q_hat = net(x.reshape(1, T, 17, 3), dt).q_hat[0]
    for k in range(T):
        fwd = 2 * x[k - 1] - x[k - 2] + a * dt ** 2 if k >= 3 else None
        bwd = 2 * x[k + 1] - x[k + 2] + a * dt ** 2 if k <= T - 4 else None
        expect = (fwd + bwd) / 2 if fwd is not None and bwd is not None else fwd if fwd is not None else bwd
        assert torch.allclose(q_hat[k], expect, atol=1e-10), k


@pytest.mark.parametrize("update", ["one_step", "rollout"])
def test_time_reversed_input_gives_time_reversed_output(update):
    net = randomize(PhysNet(PhysNetConfig(update=update, **SMALL))).eval()
    x = torch.randn(2, 11, 17, 3) * 0.2
    out, rev = net(x, 0.03), net(x.flip(1), 0.03)
    assert torch.allclose(rev.s_pp, out.s_pp.flip(1), atol=1e-5)
    assert torch.allclose(rev.qdd, out.qdd.flip(1), atol=1e-4)
    # and with known reversible physics (constant acceleration), reversed parabola in, reversed parabola out
    accel = torch.linspace(-5.0, 5.0, D, dtype=torch.float64)
    known = PhysNet(PhysNetConfig(update=update, **SMALL), heads_override=constant_force_heads(accel)).double().eval()
    s = parabola(12, 0.02, accel)
    assert torch.allclose(known(s.flip(1), 0.02).s_pp, s.flip(1), atol=1e-5)


def test_rollout_is_recursive_and_ignores_corrupted_middle_frames():
    """A spring q̈ = −k q integrated by the central difference is time-reversible: rolled out from the clean
    first and last three frames it reproduces the clean trajectory, whatever the middle data say; one_step,
    which steps from the data's neighbours, does not."""
    T, dt, k = 20, 0.02, 40.0
    q = torch.zeros(T, D, dtype=torch.float64)
    q[0] = torch.linspace(-0.5, 0.5, D, dtype=torch.float64)
    q[1] = q[0] * 0.99 + 0.01
    for t in range(1, T - 1):
        q[t + 1] = 2 * q[t] - q[t - 1] - k * q[t] * dt ** 2
    noisy = q.clone()
    noisy[3:T - 3] += 0.05 * torch.randn(T - 6, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    s = noisy.reshape(1, T, 17, 3)
    cfg = dict(state_filter=1, **SMALL)                  # states = raw data, the paper-literal reading
    roll = PhysNet(PhysNetConfig(update="rollout", **cfg), heads_override=spring_heads(k)).double().eval()
    one = PhysNet(PhysNetConfig(update="one_step", **cfg), heads_override=spring_heads(k)).double().eval()
    assert torch.allclose(roll(s, dt).q_hat[0], q, atol=1e-8)
    assert (one(s, dt).q_hat[0] - q).abs().max() > 0.01


def test_per_clip_dt_matches_separate_calls():
    net = randomize(PhysNet(PhysNetConfig(**SMALL))).eval()
    x = torch.randn(2, 9, 17, 3) * 0.2
    both = net(x, torch.tensor([0.02, 0.04])).s_pp
    assert torch.allclose(both[0], net(x[:1], 0.02).s_pp[0], atol=1e-6)
    assert torch.allclose(both[1], net(x[1:], 0.04).s_pp[0], atol=1e-6)
    assert not torch.allclose(both[0], net(x[:1], 0.04).s_pp[0], atol=1e-4)


# ----------------------------------------------------------------------------- the learned module

@pytest.mark.parametrize("update", ["one_step", "rollout"])
@pytest.mark.parametrize("mass", ["symmetric", "psd"])
def test_shapes_for_many_lengths(update, mass):
    net = PhysNet(PhysNetConfig(update=update, mass_matrix=mass, **SMALL)).eval()
    for T in (1, 2, 3, 4, 5, 16, 100):
        x = torch.randn(2, T, 17, 3) * 0.2
        out = net(x, 1 / 25)
        assert out.s_pp.shape == (2, T, 17, 3) and out.q_hat.shape == (2, T, D) and out.qdd.shape == (2, T, D)
        assert out.noise_loss.shape == () and torch.isfinite(out.s_pp).all()
        assert torch.equal(out.s_pp[:, :, 0], x[:, :, 0])          # root carried over
        if T == 1:
            assert torch.equal(out.s_pp, x)


def test_untrained_physnet_is_close_to_identity_on_smooth_motion():
    t = torch.arange(50)[:, None] / 50.0
    x = (0.1 * torch.sin(2 * torch.pi * t + torch.arange(D) * 0.3)).reshape(1, 50, 17, 3)
    x = x - x[:, :, :1]
    for mass in ("symmetric", "psd"):
        out = PhysNet(PhysNetConfig(mass_matrix=mass)).eval()(x, 1 / 50)
        assert (out.s_pp - x).norm(dim=-1).mean() < 0.005, mass


def test_noise_only_in_training():
    net = PhysNet(PhysNetConfig(**SMALL))
    x = torch.randn(2, 8, 17, 3) * 0.2
    net.train()
    a, b = net(x, 0.04), net(x, 0.04)
    assert a.noise_loss > 0 and not torch.equal(a.s_pp, b.s_pp)
    net.eval()
    c, d = net(x, 0.04), net(x, 0.04)
    assert c.noise_loss == 0 and torch.equal(c.s_pp, d.s_pp)
    quiet = PhysNet(PhysNetConfig(noise=False, **SMALL)).train()
    assert quiet(x, 0.04).noise_loss == 0


@pytest.mark.parametrize("update", ["one_step", "rollout"])
@pytest.mark.parametrize("mass", ["symmetric", "psd"])
def test_gradients_reach_every_head(update, mass):
    net = PhysNet(PhysNetConfig(update=update, mass_matrix=mass, **SMALL)).train()
    x = torch.randn(2, 10, 17, 3) * 0.2
    out = net(x, 0.04)
    ((out.s_pp - x.flip(1)) ** 2).sum().add(out.noise_loss).backward()
    for name in ("global_head.embed", "global_head.blocks.0.conv", "global_head.context", "local_head.0",
                 "fuse.1", "state_out", "head_J", "head_C", "head_M", "head_N", "decoder.4"):
        grad = net.get_submodule(name).weight.grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_config_checks_and_round_trip():
    with pytest.raises(ValueError, match="mass_matrix"):
        PhysNetConfig(mass_matrix="diag")
    with pytest.raises(ValueError, match="update"):
        PhysNetConfig(update="euler")
    cfg = PhysNetConfig(hidden=64, update="rollout")
    assert PhysNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        PhysNetConfig.from_dict({"hiddn": 3})


def test_bad_input_gives_clear_errors():
    net = PhysNet(PhysNetConfig(**SMALL))
    x = torch.randn(1, 5, 17, 3)
    x[0, 2, 3, 1] = float("nan")
    with pytest.raises(PoseError, match="NaN"):
        net(x, 0.04)
    with pytest.raises(PoseError, match=r"\(B, T, 17, 3\)"):
        net(torch.zeros(5, 17, 3), 0.04)
    with pytest.raises(ValueError, match="dt"):
        net(torch.zeros(2, 5, 17, 3), torch.tensor([0.04, -1.0]))
    with pytest.raises(ValueError, match="dt"):
        net(torch.zeros(2, 5, 17, 3), torch.tensor([0.04, 0.04, 0.04]))


def test_refine_pose3d_round_trip():
    T = 20
    joints = (0.2 * np.sin(np.arange(T)[:, None, None] * 0.2 + np.arange(51).reshape(1, 17, 3))).astype(np.float32)
    joints -= joints[:, :1]
    cam = Camera(1000.0, (320.0, 240.0), np.tile([0, 0, 5.0], (T, 1)).astype(np.float32))
    pose = Pose3D(joints, fps=50.0, source="dd", camera=cam, image_size=(640, 480), meta={"clip": "a"})
    net = PhysNet(PhysNetConfig(**SMALL)).train()
    out = refine_pose3d(pose, net)
    assert net.training                                  # mode restored
    assert out.source == "pp" and out.fps == 50.0 and out.camera is cam and out.image_size == (640, 480)
    assert out.meta == {"clip": "a"} and out.meta is not pose.meta
    assert out.joints.shape == (T, 17, 3) and out.joints.dtype == np.float32
    ref = net.eval()(torch.from_numpy(joints)[None], 1 / 50).s_pp[0].detach().numpy()
    assert np.allclose(out.joints, ref, atol=1e-6)
    strided = refine_pose3d(pose, net, frame_stride=2)   # dt = 2/50 changes the result
    assert not np.allclose(strided.joints, out.joints, atol=1e-6)
    pose.joints[4, 2, 0] = np.nan                        # bypassing Pose3D's own check
    with pytest.raises(PoseError, match="NaN"):
        refine_pose3d(pose, net)


def test_speed_report():
    """Printed, not asserted tightly: PhysNet must stay a small part of the 50 ms pose-stack budget."""
    torch.manual_seed(0)
    for update in ("one_step", "rollout"):
        net = PhysNet(PhysNetConfig(update=update)).eval()
        for T in (16, 256):
            x = torch.randn(1, T, 17, 3) * 0.2
            with torch.no_grad():
                net(x, 0.04)
                t0 = time.perf_counter()
                for _ in range(5):
                    net(x, 0.04)
            ms = (time.perf_counter() - t0) / 5 * 1000
            print(f"PhysNet {update} forward (1,{T},17,3): {ms:.2f} ms")
            assert ms < 5000
