"""In-context lifter: input convention, forward, windowed lifting and blending."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from finephys_core.lifting import (CENTRES, TOKEN_KINDS, ICLLifter, LifterConfig, blend_weights, lift_windows,
                                   lifter_inputs, trajectory_inputs, window_starts)
from finephys_core.pose_model import load_pose_model, random_pose_model, save_pose_model

W = 8


LIFTER_VARIANTS = [dict(tokens=kind) for kind in TOKEN_KINDS] + [dict(tokens="frame", prompt_stride=4, centre="median")]


@pytest.fixture(scope="module", params=LIFTER_VARIANTS, ids=lambda v: "-".join(str(x) for x in v.values()))
def lifter(request):
    torch.manual_seed(0)
    return ICLLifter(LifterConfig(dim=16, depth=1, heads=2, rep_dim=16, window=W, **request.param)).eval()


def _pose2d(T, seed=0, batch=()):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(*batch, T, 17, 2, generator=g) * 0.6 - 0.3
    return torch.cat([xy, torch.rand(*batch, T, 17, 1, generator=g) * 0.5 + 0.5], -1)


def _prompt(seed=1):
    g = torch.Generator().manual_seed(seed)
    return _pose2d(W, seed), torch.randn(W, 17, 3, generator=g) * 0.3


def test_lifter_inputs_convention():
    x = _pose2d(5)
    out = lifter_inputs(x)
    assert out.shape == x.shape
    assert torch.equal(out[..., 2], x[..., 2])                      # score kept
    assert torch.allclose(out[..., 0, :2], torch.zeros(5, 2))       # pelvis at the origin
    rel = (x[..., :2] - x[..., :1, :2])
    scale = ((x[..., 2:] * rel.pow(2).sum(-1, keepdim=True)).sum() / x[..., 2].sum()).sqrt()
    assert torch.allclose(out[..., :2], rel / scale, atol=1e-6)
    assert torch.allclose(lifter_inputs(out), out, atol=1e-6)       # idempotent


def test_lifter_inputs_missing_joints_and_pelvis():
    x = _pose2d(3)
    x[0, 0, 2] = 0.0          # pelvis missing in frame 0: centroid of the visible joints is the root
    x[1, 5, 2] = 0.0          # one joint missing in frame 1
    x[2, :, 2] = 0.0          # nobody in frame 2
    out = lifter_inputs(x)
    assert torch.equal(out[1, 5, :2], torch.zeros(2)) and torch.equal(out[2, :, :2], torch.zeros(17, 2))
    w = x[0, :, 2:]
    centroid = (x[0, :, :2] * w).sum(0) / w.sum()
    assert torch.allclose(out[0, 0, :2], torch.zeros(2))          # missing pelvis is zeroed
    direction = out[0, 3, :2] / out[0, 3, :2].norm()
    expected = (x[0, 3, :2] - centroid) / (x[0, 3, :2] - centroid).norm()
    assert torch.allclose(direction, expected, atol=1e-5)
    assert torch.isfinite(lifter_inputs(torch.zeros(4, 17, 3))).all()   # nothing visible: no NaN


def test_lifter_inputs_median_centre_resists_a_wrong_pelvis():
    x = _pose2d(6)
    wrong = x.clone()
    wrong[:, 0, :2] += 0.5                       # the detector put the pelvis far off
    moved = {c: (lifter_inputs(wrong, c) - lifter_inputs(x, c))[:, 1:, :2].abs().max() for c in CENTRES}
    assert moved["median"] < moved["pelvis"] / 3
    out = lifter_inputs(x, "median")
    assert torch.allclose(out[..., :2].median(-2).values, torch.zeros(6, 2), atol=1e-6)
    assert torch.equal(lifter_inputs(out, "median"), out)                       # idempotent
    x[2, :, 2] = 0.0
    x[3, :16, 2] = 0.0                            # one visible joint: it is the centre
    out = lifter_inputs(x, "median")
    assert torch.isfinite(out).all() and torch.equal(out[2:4, :, :2], torch.zeros(2, 17, 2))
    with pytest.raises(ValueError, match="centre must be one of"):
        lifter_inputs(x, "mean")                  # a typo is an error, not silently the pelvis


def test_prompt_stride_reads_every_kth_prompt_frame():
    torch.manual_seed(0)
    lifter = ICLLifter(LifterConfig(tokens="frame", dim=16, depth=1, heads=2, rep_dim=16, window=W,
                                    prompt_stride=4)).eval()
    p2d, p3d = _prompt()
    q, prior = _pose2d(W, 3)[None], torch.zeros(1, W, 17, 3)
    base = lifter(p2d[None], p3d[None], q, prior)
    skipped, read = p3d.clone(), p3d.clone()
    skipped[1:4] *= 2                             # frames 1-3 are not read with stride 4
    read[4] *= 2
    assert torch.equal(lifter(p2d[None], skipped[None], q, prior), base)
    assert (lifter(p2d[None], read[None], q, prior) - base).abs().max() > 1e-4
    for bad in (dict(prompt_stride=0), dict(centre="mean")):
        with pytest.raises(ValueError, match="prompt_stride|centre"):
            LifterConfig(**bad)
    old = LifterConfig.from_dict({"tokens": "frame", "dim": 8})                  # files written before both
    assert (old.prompt_stride, old.centre) == (1, "pelvis")


def test_trajectory_inputs_are_the_travel_in_clip_scale():
    x = _pose2d(6)
    x[..., 2] = 0.9
    traj = trajectory_inputs(x)
    scale = (x[..., :2] - x[..., :1, :2]).norm(dim=-1).pow(2).mean().sqrt()    # lifter_inputs' clip scale (equal scores)
    pelvis = x[:, 0, :2]
    assert torch.allclose(traj, (pelvis - pelvis.mean(0)) / scale, atol=1e-5)
    panned = x.clone()
    panned[..., :2] += torch.tensor([0.2, -0.1])                                 # the same offset in every frame
    assert torch.allclose(trajectory_inputs(panned), traj, atol=1e-5)
    x[3, :, 2] = 0.0                                                             # nobody in frame 3
    gone = trajectory_inputs(x)
    assert torch.equal(gone[3], torch.zeros(2))
    seen = [0, 1, 2, 4, 5]
    assert torch.allclose(gone[seen].mean(0), torch.zeros(2), atol=1e-5)        # the mean is over seen frames
    assert torch.equal(trajectory_inputs(torch.zeros(4, 17, 3)), torch.zeros(4, 2))


def test_lifter_reads_the_trajectory_only_when_asked():
    with pytest.raises(ValueError, match="trajectory needs tokens='frame'"):
        LifterConfig(tokens="joint", trajectory=True)
    assert LifterConfig.from_dict({"tokens": "frame"}).trajectory is False         # files written before it
    torch.manual_seed(0)
    plain = ICLLifter(LifterConfig(tokens="frame", dim=16, depth=1, heads=2, rep_dim=16, window=W)).eval()
    travel = ICLLifter(LifterConfig(tokens="frame", dim=16, depth=1, heads=2, rep_dim=16, window=W,
                                    trajectory=True)).eval()
    torch.nn.init.normal_(travel.trajectory_embed.weight)                       # as if trained (it starts at 0)
    p2d, p3d = _prompt()
    q, prior = _pose2d(W, 3)[None], torch.zeros(1, W, 17, 3)
    pan = q.clone()
    pan[..., :2] += torch.linspace(0, 0.3, W)[:, None, None]                     # per-frame offsets: a camera pan
    with torch.no_grad():
        for lifter, changes in ((plain, False), (travel, True)):
            a, b = lifter(p2d[None], p3d[None], q, prior), lifter(p2d[None], p3d[None], pan, prior)
            assert ((a - b).abs().max() > 1e-4) == changes


def test_lifter_inputs_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"\(\.\.\., T, 17, 3\)"):
        lifter_inputs(torch.zeros(4, 16, 3))


def test_forward_shapes_root_relative_and_residual_on_prior(lifter):
    p2d, p3d = _prompt()
    q = _pose2d(W, 3, (2,))
    prior = torch.randn(2, W, 17, 3) * 0.3
    out = lifter(p2d.expand(2, -1, -1, -1), p3d.expand(2, -1, -1, -1), q, prior)
    assert out.shape == (2, W, 17, 3)
    assert torch.equal(out[..., 0, :], torch.zeros(2, W, 3))
    torch.nn.init.zeros_(lifter.head[-1].weight)
    try:
        out0 = lifter(p2d.expand(2, -1, -1, -1), p3d.expand(2, -1, -1, -1), q, prior)
    finally:
        torch.manual_seed(0)
        torch.nn.init.trunc_normal_(lifter.head[-1].weight, std=0.02)
    assert torch.allclose(out0, prior - prior[..., :1, :], atol=1e-6)
    with pytest.raises(ValueError, match="at most 8"):
        lifter(*(torch.zeros(1, W + 1, 17, 3),) * 4)
    with pytest.raises(ValueError, match="prompt_3d has shape"):
        lifter(p2d[None], torch.zeros(1, W, 17, 3)[:, :4], q[:1], prior[:1])


def test_query_attends_to_prompt(lifter):
    """In context: changing the prompt's 3D changes the query's output."""
    p2d, p3d = _prompt()
    q, prior = _pose2d(W, 3)[None], torch.zeros(1, W, 17, 3)
    a = lifter(p2d[None], p3d[None], q, prior)
    b = lifter(p2d[None], (p3d * 2)[None], q, prior)
    assert (a - b).abs().max() > 1e-4


def test_single_window_equals_single_pass(lifter):
    q, (p2d, p3d), prior = _pose2d(W, 4), _prompt(), torch.randn(W, 17, 3) * 0.3
    with torch.no_grad():
        windowed = lift_windows(lifter, q, (p2d, p3d), prior, W, overlap=2)
        direct = lifter(p2d[None], p3d[None], q[None], prior[None])[0]
    assert torch.equal(windowed, direct)


def test_short_clip_is_edge_padded_then_cropped(lifter):
    q, (p2d, p3d), prior = _pose2d(3, 5), _prompt(), torch.randn(W, 17, 3) * 0.3
    padded = torch.cat([q, q[-1:].expand(W - 3, -1, -1)])
    with torch.no_grad():
        out = lift_windows(lifter, q, (p2d, p3d), prior, W)
        direct = lifter(p2d[None], p3d[None], padded[None], prior[None])[0, :3]
    assert out.shape == (3, 17, 3) and torch.allclose(out, direct, atol=1e-6)
    assert lift_windows(lifter, q[:1], (p2d, p3d), prior, W).shape == (1, 17, 3)


def test_several_prompts_are_averaged(lifter):
    q, prior = _pose2d(W + 5, 6), torch.zeros(W, 17, 3)
    (a2, a3), (b2, b3) = _prompt(1), _prompt(2)
    with torch.no_grad():
        both = lift_windows(lifter, q, (torch.stack([a2, b2]), torch.stack([a3, b3])), prior, W, 2)
        one = lift_windows(lifter, q, (a2, a3), prior, W, 2)
        two = lift_windows(lifter, q, (b2, b3), prior, W, 2)
    assert torch.allclose(both, (one + two) / 2, atol=1e-5)


def test_batch_of_clips_equals_clips_lifted_one_by_one(lifter):
    """Clips lifted together (their windows in shared batches, prompts chosen per window) = each alone."""
    clips, prior = torch.stack([_pose2d(2 * W + 3, 7), _pose2d(2 * W + 3, 8)]), torch.randn(W, 17, 3) * 0.3
    bank = torch.stack([_prompt(1)[0], _prompt(2)[0]]), torch.stack([_prompt(1)[1], _prompt(2)[1]])
    nearest = lambda wins: tuple(p[(wins[:, 0, 0, 0] > 0).long()][:, None] for p in bank)  # noqa: E731
    with torch.no_grad():
        together = lift_windows(lifter, clips, nearest, prior, W, 2, batch_size=2)
        alone = torch.stack([lift_windows(lifter, c, nearest, prior, W, 2) for c in clips])
    assert together.shape == (2, 2 * W + 3, 17, 3)
    assert torch.allclose(together, alone, atol=1e-5)
    assert not torch.allclose(together[0], together[1], atol=1e-3)


def test_window_starts_cover_clip_linearly():
    assert window_starts(5, 8, 2) == [0]
    assert window_starts(8, 8, 2) == [0]
    assert window_starts(20, 8, 2) == [0, 6, 12]
    starts = window_starts(1000, 16, 4)
    assert starts[-1] == 1000 - 16 and len(starts) == int(np.ceil((1000 - 16) / 12)) + 1
    assert all(b - a <= 12 for a, b in zip(starts, starts[1:]))


def test_blending_is_continuous():
    """Each fake window outputs its own start frame; the blend must cross-fade, not jump."""
    step, overlap, T = 8 - 3, 3, 40

    def fake(p2d, p3d, q, prior):
        return q[:, :1, :1, :1].expand(-1, q.shape[1], 17, 3).clone()  # the window's first frame index

    q = torch.zeros(T, 17, 3)
    q[:, :, 0] = torch.arange(T, dtype=torch.float32)[:, None]
    calls = []
    out = lift_windows(fake, q, _prompt(), torch.zeros(W, 17, 3), W, overlap, batch_size=2,
                       progress=calls.append)
    assert sum(calls) == len(window_starts(T, W, overlap)) and len(calls) > 1
    v = out[:, 1, 0]
    jumps = v[1:] - v[:-1]
    assert (jumps >= -1e-5).all()                       # monotone: windows start later and later
    assert jumps.max() < 0.6 * step                     # a hard switch would jump by a whole step
    assert v[0] == 0 and v[-1] == T - W                 # clip ends are the outer windows alone
    w = blend_weights(8, 3, first=False, last=False)
    assert (w > 0).all()
    assert torch.allclose(w[:3] + w[-3:], torch.ones(3))  # complementary ramps sum to 1
    wide = blend_weights(8, 6, first=False, last=False)   # overlap > window / 2: a symmetric bump
    assert (wide > 0).all() and torch.allclose(wide, wide.flip(0)) and wide.argmax() in (3, 4)
    assert torch.equal(blend_weights(8, 6, first=True, last=True), torch.ones(8))


def test_lift_windows_rejects_bad_inputs(lifter):
    with pytest.raises(ValueError, match="query_2d must be"):
        lift_windows(lifter, torch.zeros(4, 17, 2), _prompt(), torch.zeros(W, 17, 3))
    with pytest.raises(ValueError, match="prompt pair must be"):
        lift_windows(lifter, torch.zeros(4, 17, 3), (torch.zeros(5, 17, 3),) * 2, torch.zeros(W, 17, 3))
    with pytest.raises(ValueError, match="overlap"):
        lift_windows(lifter, torch.zeros(4, 17, 3), _prompt(), torch.zeros(W, 17, 3), overlap=W)


def test_prompt_function_is_called_per_window(lifter):
    q, prior = _pose2d(2 * W + 3, 7), torch.zeros(W, 17, 3)
    fixed = _prompt()
    seen = []

    def per_window(wins):
        seen.append(wins.shape[0])
        n = wins.shape[0]
        return fixed[0].expand(n, 1, -1, -1, -1), fixed[1].expand(n, 1, -1, -1, -1)

    with torch.no_grad():
        a = lift_windows(lifter, q, per_window, prior, W, 2)
        b = lift_windows(lifter, q, fixed, prior, W, 2)
    assert seen == [len(window_starts(2 * W + 3, W, 2))] and torch.equal(a, b)
    with pytest.raises(ValueError, match="prompt pair must be"):
        lift_windows(lifter, q, lambda wins: (fixed[0][None, None],) * 2, prior, W, 2)


def test_token_kinds_config_and_file_round_trip(tmp_path):
    with pytest.raises(ValueError, match="tokens must be one of"):
        LifterConfig.from_dict({"tokens": "patch"})
    with pytest.raises(ValueError, match="tokens must be one of"):
        LifterConfig(tokens="patch")
    assert LifterConfig.from_dict({"dim": 8}).tokens == "joint"          # files written before 'tokens'
    frame = ICLLifter(LifterConfig(tokens="frame", dim=16, depth=1, heads=2, rep_dim=16, window=W,
                                   prompt_stride=2, centre="median", trajectory=True))
    joint = ICLLifter(LifterConfig(tokens="joint", dim=16, depth=1, heads=2, rep_dim=16, window=W))
    assert frame.embed.in_features == 6 * 17 and joint.embed.in_features == 6
    assert not hasattr(frame, "joint_embed")
    model = random_pose_model(frame.config)
    loaded = load_pose_model(save_pose_model(model, tmp_path / "frame.safetensors"))
    assert loaded.lifter.config == frame.config
    q = _pose2d(W, 9)[None]
    p2d, p3d = _prompt()
    with torch.no_grad():
        args = (p2d[None], p3d[None], q, model.mean_prior[None])
        assert torch.equal(model.lifter.eval()(*args), loaded.lifter.eval()(*args))
