"""Limb/joint pseudo-heatmaps against hand-computed values, the guidance value, and the skeleton encoder."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from finephys_core import heatmaps as hm
from finephys_core.heatmap_encoder import (SD15_CHANNELS, SkeletonEncoder, SkeletonEncoderConfig,
                                           load_skeleton_encoder, read_encoder_config, save_skeleton_encoder)
from finephys_core.sequence import Pose2D, PoseError
from finephys_core.skeleton import H36M17, Layout

BONE = Layout("bone", ("a", "b"), (-1, 0), ())


def one_bone(a, b, sa=1.0, sb=1.0, size=64, sigma=2.0, **kw):
    kp = np.array([[a, b]], np.float32)
    sc = np.array([[sa, sb]], np.float32)
    return hm.limb_heatmaps(kp, sc, (size, size), (size, size), sigma=sigma, layout=BONE, **kw)[0, 0]


def gauss(d, sigma=2.0, height=1.0):
    return height * math.exp(-d * d / (2 * sigma * sigma))


def test_limb_values_match_hand_computed_distances():
    # Horizontal bone y = 20 from x = 10 to x = 50; pixel (row r, col c) has centre (c + 0.5, r + 0.5).
    m = one_bone((10, 20), (50, 20), sa=1.0, sb=0.5)
    assert m[20, 30].item() == pytest.approx(gauss(0.5, height=0.5), rel=1e-5)      # d = 0.5, min score 0.5
    assert m[22, 30].item() == pytest.approx(gauss(2.5, height=0.5), rel=1e-5)      # d = 2.5 (below the bone)
    assert m[17, 30].item() == pytest.approx(gauss(2.5, height=0.5), rel=1e-5)      # d = 2.5 (above)
    # Beyond the end: distance to the endpoint b = (50, 20): pixel (53.5, 21.5) → d = hypot(3.5, 1.5).
    assert m[21, 53].item() == pytest.approx(gauss(math.hypot(3.5, 1.5), height=0.5), rel=1e-5)
    # Before the start: endpoint a = (10, 20); pixel (8.5, 20.5) → d = hypot(1.5, 0.5).
    assert m[20, 8].item() == pytest.approx(gauss(math.hypot(1.5, 0.5), height=0.5), rel=1e-5)


def test_cut_at_three_sigma_and_low_scores():
    m = one_bone((10, 20), (50, 20))
    assert m[25, 30].item() == pytest.approx(gauss(5.5))   # d = 5.5 < 3σ = 6: kept
    assert m[26, 30].item() == 0.0                           # d = 6.5 > 6: cut
    assert m[20, 57].item() == 0.0                           # d = hypot(7.5, 0.5) beyond the end
    assert (m > 0).sum() > 0
    assert one_bone((10, 20), (50, 20), sa=1.0, sb=5e-5).abs().max().item() == 0.0   # min score < 1e-4
    assert one_bone((10, 20), (50, 20), sa=0.0, sb=1.0).abs().max().item() == 0.0


def test_diagonal_bone_and_degenerate_bone():
    m = one_bone((10, 10), (40, 40), sigma=3.0)
    # pixel centre (30.5, 20.5): distance to the line y = x is |30.5 - 20.5| / sqrt(2)
    assert m[20, 30].item() == pytest.approx(gauss(10 / math.sqrt(2), 3.0), rel=1e-5)
    point = one_bone((20, 20), (20, 20), sigma=2.0)
    assert point[21, 22].item() == pytest.approx(gauss(math.hypot(2.5, 1.5)), rel=1e-5)



def test_gradient_reaches_the_keypoints_and_matches_finite_differences():
    # Horizontal bone y = 20 from x = 10 to x = 50; pixel (30.5, 22.5) lies 2.5 below it at t = 20.5 / 40, so
    # d value / d y_a = value · 2.5 / σ² · (1 − t) and d value / d y_b = value · 2.5 / σ² · t.
    kp = torch.tensor([[[10.0, 20.0], [50.0, 20.0]]], requires_grad=True)
    m = hm.limb_heatmaps(kp, torch.ones(1, 2), (64, 64), (64, 64), sigma=2.0, layout=BONE)
    assert torch.equal(m.detach(), one_bone((10, 20), (50, 20)).reshape(1, 1, 64, 64))   # same values
    m[0, 0, 22, 30].backward()
    slope, t = gauss(2.5) * 2.5 / 4.0, 20.5 / 40
    assert kp.grad[0, :, 1].tolist() == pytest.approx([slope * (1 - t), slope * t], rel=1e-4)
    assert kp.grad[0, :, 0].abs().max() < 1e-6                                       # along the bone: no change
    # A whole skeleton, a weighted sum (σ so wide that the 3σ cut, a step, lies outside the map): autograd
    # agrees with central differences.
    rng = np.random.default_rng(3)
    pts = torch.tensor(rng.uniform(16, 48, (2, 17, 2)), dtype=torch.float32)
    weights = torch.rand(2, 16, 64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def loss(k):
        maps = hm.limb_heatmaps(k, torch.full((2, 17), 0.9), (64, 64), (64, 64), sigma=32.0)
        return (maps.double() * weights).sum()

    k = pts.clone().requires_grad_(True)
    loss(k).backward()
    assert torch.isfinite(k.grad).all() and k.grad.abs().sum() > 0
    for f, j, c in [(0, 0, 0), (0, 5, 1), (1, 16, 0), (1, 10, 1)]:
        step = torch.zeros_like(pts)
        step[f, j, c] = 0.05
        numeric = (loss(pts + step) - loss(pts - step)).item() / 0.1
        assert k.grad[f, j, c].item() == pytest.approx(numeric, rel=0.01, abs=1e-3)

def test_map_scaling_stretch_and_default_sigma():
    # Image 640x320 → map 64x64: x scaled by 0.1, y by 0.2. Bone from (100, 100) to (500, 100) → y = 20 in map.
    kp = np.array([[[100, 100], [500, 100]]], np.float32)
    m = hm.limb_heatmaps(kp, np.ones((1, 2)), (640, 320), (64, 64), layout=BONE)[0, 0]
    assert hm.default_sigma((64, 64)) == pytest.approx(0.6)
    assert hm.default_sigma((384, 256)) == pytest.approx(0.6 * 256 / 64)
    assert m[20, 30].item() == pytest.approx(gauss(0.5, 0.6), rel=1e-5)
    assert m[19, 30].item() == pytest.approx(gauss(0.5, 0.6), rel=1e-5)
    assert m[22, 30].item() == 0.0  # d = 2.5 > 3σ = 1.8


def test_fit_pad_letterboxes():
    # 200x100 image into 100x100 map with pad: scale 0.5, offset y 25.
    kp = np.array([[[0, 50], [200, 50]]], np.float32)
    m = hm.limb_heatmaps(kp, np.ones((1, 2)), (200, 100), (100, 100), sigma=1.0, layout=BONE, fit="pad")[0, 0]
    assert m[50, 50].item() == pytest.approx(gauss(0.5, 1.0), rel=1e-5)
    assert m[49, 50].item() == pytest.approx(gauss(0.5, 1.0), rel=1e-5)


def test_joint_heatmaps_and_people_max_merge():
    kp = np.array([[[10, 10], [30, 30]]], np.float32)
    sc = np.array([[0.8, 0.5]], np.float32)
    j = hm.joint_heatmaps(kp, sc, (64, 64), (64, 64), sigma=2.0)
    assert j.shape == (1, 2, 64, 64)
    assert j[0, 0, 10, 11].item() == pytest.approx(gauss(math.hypot(1.5, 0.5), height=0.8), rel=1e-5)
    assert j[0, 1, 10, 11].item() == 0.0
    # two people: P axis max-merged
    kp2 = np.stack([kp, kp + 20], 1)          # (1, 2, 2, 2)
    sc2 = np.stack([sc, sc], 1)
    j2 = hm.joint_heatmaps(kp2, sc2, (64, 64), (64, 64), sigma=2.0)
    assert j2.shape == (1, 2, 64, 64)
    assert torch.allclose(j2[0, 0, :20, :20], j[0, 0, :20, :20])
    assert j2[0, 0, 30, 31].item() == pytest.approx(gauss(math.hypot(1.5, 0.5), height=0.8), rel=1e-5)


def test_bad_shapes_raise():
    with pytest.raises(PoseError, match="keypoints must be"):
        hm.limb_heatmaps(np.zeros((2, 17, 3)), np.zeros((2, 17)), (64, 64), (64, 64))
    with pytest.raises(PoseError, match="17 joints"):
        hm.limb_heatmaps(np.zeros((2, 5, 2)), np.zeros((2, 5)), (64, 64), (64, 64))


def random_pose(T=16, size=(384, 384), seed=0) -> Pose2D:
    rng = np.random.default_rng(seed)
    W, H = size
    kp = rng.uniform(0.2, 0.8, (T, 17, 2)) * np.array([W, H])
    return Pose2D(kp, rng.uniform(0.5, 1.0, (T, 17)), size, fps=30.0)


def test_guidance_shapes_speed_and_preview():
    pose = random_pose()
    t0 = time.perf_counter()
    g = hm.guidance_from_pose2d(pose, (384, 384))
    dt = time.perf_counter() - t0
    print(f"limb heatmaps 16 frames x 16 limbs x 384x384: {dt:.3f} s (1 thread)")
    assert isinstance(g, hm.Guidance) and g.heatmaps.shape == (16, 16, 384, 384)
    assert g.heatmaps.dtype == torch.float32 and g.size == (384, 384) and g.fps == 30.0
    assert g.sigma == pytest.approx(3.6) and 0 < g.heatmaps.max() <= 1
    assert dt < 15
    prev = hm.heatmap_preview(g.heatmaps[:2])
    assert prev.shape == (2, 384, 384, 3) and 0 <= prev.min() and prev.max() <= 1 and prev.max() > 0.5
    frames = torch.full((1, 100, 200, 3), 0.5)
    over = hm.heatmap_preview(g.heatmaps[:2], frames)
    assert over.shape == (2, 384, 384, 3)
    far = g.heatmaps[:2].amax(1) == 0
    assert torch.allclose(over[far], torch.tensor(0.5))


def test_guidance_converts_other_layouts():
    rng = np.random.default_rng(1)
    coco = Pose2D(rng.uniform(50, 300, (3, 17, 2)), np.ones((3, 17)), (384, 384), layout="coco17")
    g = hm.guidance_from_pose2d(coco, (64, 64))
    assert g.heatmaps.shape == (3, len(H36M17.bones), 64, 64)


# ----------------------------------------------------------------------------- encoder

TINY = SkeletonEncoderConfig(in_channels=16, channels=(32, 64, 64, 64), hidden_channels=(16, 32, 32, 32),
                             num_res_blocks=1)


def test_zero_init_encoder_outputs_exact_zeros_tiny():
    torch.manual_seed(0)
    enc = SkeletonEncoder(TINY)
    feats = enc(torch.rand(3, 16, 64, 80))
    assert [tuple(f.shape) for f in feats] == [(3, 32, 8, 10), (3, 64, 4, 5), (3, 64, 2, 3), (3, 64, 1, 2)]
    assert all(torch.equal(f, torch.zeros_like(f)) for f in feats)
    clip = enc.encode_clip(torch.rand(2, 3, 16, 64, 64))
    assert clip[0].shape == (6, 32, 8, 8)


def test_encoder_sd15_channels_shapes():
    enc = SkeletonEncoder(SkeletonEncoderConfig())
    assert enc.config.channels == SD15_CHANNELS
    with torch.no_grad():
        feats = enc(torch.rand(1, 16, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, 320, 8, 8), (1, 640, 4, 4), (1, 1280, 2, 2), (1, 1280, 1, 1)]
    assert all(f.abs().max() == 0 for f in feats)
    n = sum(p.numel() for p in enc.parameters())
    print(f"SD1.5 skeleton encoder parameters: {n / 1e6:.1f} M")
    assert n < 60e6


def test_encoder_trains_away_from_zero_and_checks_input():
    torch.manual_seed(0)
    enc = SkeletonEncoder(TINY)
    x = torch.rand(2, 16, 64, 64)
    loss = sum(((f - 1) ** 2).mean() for f in enc(x))
    loss.backward()
    torch.optim.SGD(enc.parameters(), lr=0.1).step()
    assert any(f.abs().max() > 0 for f in enc(x))
    with pytest.raises(ValueError, match="divisible by 8"):
        enc(torch.rand(1, 16, 60, 64))
    with pytest.raises(ValueError, match=r"\(N, 16, H, W\)"):
        enc(torch.rand(1, 17, 64, 64))


def test_encoder_save_load_round_trip_and_errors(tmp_path):
    torch.manual_seed(0)
    enc = SkeletonEncoder(TINY)
    for p in enc.parameters():
        torch.nn.init.normal_(p)
    path = save_skeleton_encoder(enc, tmp_path / "enc.safetensors")
    assert read_encoder_config(path) == TINY
    loaded = load_skeleton_encoder(path, expect_channels=(32, 64, 64, 64))
    x = torch.rand(1, 16, 64, 64)
    assert all(torch.equal(a, b) for a, b in zip(enc(x), loaded(x)))
    with pytest.raises(ValueError, match="UNet's down blocks"):
        load_skeleton_encoder(path, expect_channels=SD15_CHANNELS)

    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(tmp_path / "lora.safetensors"), metadata={"kind": "lora"})
    with pytest.raises(ValueError, match="not a FinePhys skeleton encoder"):
        load_skeleton_encoder(tmp_path / "lora.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_skeleton_encoder(tmp_path / "junk.safetensors")
    # weights that do not match the stored config
    bad = {k: v for k, v in enc.state_dict().items()}
    bad["conv_in.weight"] = torch.zeros(3, 3, 3, 3)
    import json
    save_file(bad, str(tmp_path / "bad.safetensors"),
              metadata={"kind": "finephys_skeleton_encoder", "config": json.dumps(TINY.to_dict())})
    with pytest.raises(ValueError, match="shape mismatches"):
        load_skeleton_encoder(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError):
        load_skeleton_encoder(tmp_path / "none.safetensors")


def test_add_features_after_tensor_and_tuple_outputs_scale_and_cleanup():
    from finephys_core.heatmap_encoder import add_features_after

    class Pair(torch.nn.Module):                   # returns a tuple, as diffusers' attention blocks do
        def forward(self, x):
            return x * 2, x

    plain, pair = torch.nn.Conv2d(2, 2, 1), Pair()
    x = torch.randn(1, 2, 4, 4)
    feats = [torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)]
    with torch.no_grad():
        ref_plain, ref_pair = plain(x), pair(x)
        with add_features_after([plain, pair], feats):
            assert torch.equal(plain(x), ref_plain + feats[0])
            out = pair(x)
            assert torch.equal(out[0], ref_pair[0] + feats[1]) and torch.equal(out[1], ref_pair[1])
        with add_features_after([plain, pair], feats, scale=0.5):
            assert torch.equal(plain(x), ref_plain + 0.5 * feats[0])
        assert not plain._forward_hooks and not pair._forward_hooks and torch.equal(plain(x), ref_plain)
    with pytest.raises(ValueError, match="gives 1 feature maps but the UNet has 2 down blocks"):
        with add_features_after([plain, pair], feats[:1]):
            pass
    with pytest.raises(ValueError, match="down block 1"), add_features_after([plain, pair], [feats[0], x[:, :1]]):
        pair(x)
    assert not pair._forward_hooks
