"""The learned 2D front end (finephys_core.denoise2d): contract, equivariances, files, its place before the lifter."""
import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from finephys_core.denoise2d import Denoiser2D, Denoiser2DConfig, denoise_2d, detection_agreement
from finephys_core.lifting import LifterConfig, normalise_2d
from finephys_core.physics import PhysNetConfig
from finephys_core.pose_model import WeightsError, load_pose_model, random_pose_model, save_pose_model
from finephys_core.refine import lift_pose
from finephys_core.sequence import Pose2D
from finephys_core.skeleton import H36M17
from training import stage2

W = 8
TINY = Denoiser2DConfig(dim=16, depth=1, heads=2, window=W)


def _denoiser(trained_like: bool = True, seed: int = 0) -> Denoiser2D:
    """A tiny front end; ``trained_like``: a random output head (a new one starts as the identity)."""
    torch.manual_seed(seed)
    d = Denoiser2D(TINY)
    if trained_like:
        torch.nn.init.normal_(d.head.weight, std=0.3)
        torch.nn.init.normal_(d.head.bias, std=0.3)
    return d.eval()


def _clip(T: int, seed: int = 0, missing: float = 0.1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = 0.3 * torch.randn(T, 17, 2, generator=g) + torch.linspace(-0.2, 0.2, T)[:, None, None]
    score = torch.rand(T, 17, 1, generator=g) * 0.7 + 0.3
    score[torch.rand(T, 17, 1, generator=g) < missing] = 0.0
    return torch.cat([xy, score], -1)


def test_a_new_front_end_passes_visible_joints_through_and_puts_missing_ones_at_the_frame_centre():
    x = _clip(W)[None]
    out = _denoiser(trained_like=False)(x)
    assert out.shape == (1, W, 17, 3)
    seen = x[..., 2] > 0
    torch.testing.assert_close(out[..., :2][seen], x[..., :2][seen], atol=1e-6, rtol=0)
    centre = normalise_2d(x, TINY.centre)[2].expand(-1, -1, 17, -1)
    torch.testing.assert_close(out[..., :2][~seen], centre[~seen], atol=1e-6, rtol=0)
    assert torch.allclose(out[..., 2], torch.full_like(out[..., 2], 0.5))      # a score for every joint


def test_front_end_follows_the_image_not_where_it_sits_and_checks_its_input():
    d, x = _denoiser(), _clip(W)[None]
    out = d(x)
    assert ((out[..., 2] > 0) & (out[..., 2] < 1)).all()
    assert not torch.allclose(out[..., :2], x[..., :2], atol=1e-3)             # it moves joints
    moved = x.clone()
    moved[..., :2] = 1.7 * x[..., :2] + torch.tensor([0.3, -0.2])
    out_moved = d(moved)                                                        # similarity-equivariant
    torch.testing.assert_close(out_moved[..., :2], 1.7 * out[..., :2] + torch.tensor([0.3, -0.2]), atol=1e-4, rtol=0)
    torch.testing.assert_close(out_moved[..., 2], out[..., 2], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=f"at most {W} frames"):
        d(_clip(W + 1)[None])
    with pytest.raises(ValueError, match="expects"):
        d(x[..., :2])
    with pytest.raises(ValueError, match="centre must be one of"):
        Denoiser2DConfig(centre="hips")
    with pytest.raises(ValueError, match="unknown Denoiser2DConfig fields"):
        Denoiser2DConfig.from_dict({"width": 3})


@pytest.mark.parametrize("T", [3, W, 3 * W + 5])
def test_denoise_2d_takes_any_length_and_keeps_mirror_equivariance(T):
    d, x = _denoiser(), _clip(T, seed=T)
    out = denoise_2d(d, x)
    assert out.shape == (T, 17, 3) and torch.isfinite(out).all()
    torch.testing.assert_close(denoise_2d(d, H36M17.mirror(x)), H36M17.mirror(out), atol=1e-5, rtol=0)
    torch.testing.assert_close(denoise_2d(d, x[None].expand(2, -1, -1, -1))[1], out)   # batches too
    direct = d(x[None, :W])[0]
    assert not torch.allclose(direct, H36M17.mirror(d(H36M17.mirror(x)[None, :W])[0]), atol=1e-4)


def _model_with_front_end(seed=0):
    model = random_pose_model(LifterConfig(dim=16, depth=1, heads=2, rep_dim=16, window=W),
                              PhysNetConfig(hidden=16, decoder_hidden=16, global_layers=1), seed=seed)
    return dataclasses.replace(model, denoiser=_denoiser(seed=seed)), model


def test_pose_model_file_keeps_the_front_end_and_older_readers_refuse_it(tmp_path):
    with_front, plain = _model_with_front_end()
    path = save_pose_model(with_front, tmp_path / "m.safetensors")
    back = load_pose_model(path)
    assert back.denoiser is not None and back.denoiser.config == TINY
    assert all(torch.equal(a, b) for a, b in zip(with_front.denoiser.state_dict().values(),
                                                 back.denoiser.state_dict().values()))
    assert back.num_parameters()["denoiser"] == sum(p.numel() for p in with_front.denoiser.parameters())
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["format_version"] == "2"         # a version-1 reader refuses it
    with safe_open(str(save_pose_model(plain, tmp_path / "p.safetensors")), "pt") as f:
        assert f.metadata()["format_version"] == "1" and "denoiser_config" not in f.metadata()
    assert load_pose_model(tmp_path / "p.safetensors").denoiser is None
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors["denoiser.head.bias"] = torch.zeros(5)
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(WeightsError, match="denoiser.head.bias has shape"):
        load_pose_model(tmp_path / "bad.safetensors")
    save_file(tensors, str(tmp_path / "bad2.safetensors"), metadata=meta | {"denoiser_config": json.dumps({"dim": "x"})})
    with pytest.raises(WeightsError, match="denoiser_config"):
        load_pose_model(tmp_path / "bad2.safetensors")


def test_lift_pose_lifts_what_the_front_end_gives_and_stays_mirror_equivariant():
    with_front, plain = _model_with_front_end()
    x = _clip(20, seed=3).numpy()
    size = (640, 480)
    kp = (x[..., :2] * 320 + np.array([320, 240])).astype(np.float32)
    p = Pose2D(kp, x[..., 2], size, 25.0, "h36m17")
    lifted = lift_pose(p, with_front).joints
    with torch.no_grad():
        cleaned = with_front.clean_2d(torch.from_numpy(p.normalized())).numpy()
    via_clean = Pose2D(cleaned[..., :2] * 320 + np.array([320, 240], np.float32), cleaned[..., 2], size, 25.0, "h36m17")
    np.testing.assert_allclose(lifted, lift_pose(via_clean, plain).joints, atol=1e-4)
    assert not np.allclose(lifted, lift_pose(p, plain).joints, atol=1e-3)
    mkp = kp.copy()[:, H36M17.flip_index]
    mkp[..., 0] = size[0] - mkp[..., 0]
    mirrored = lift_pose(Pose2D(mkp, x[:, H36M17.flip_index, 2], size, 25.0, "h36m17"), with_front).joints
    np.testing.assert_allclose(H36M17.mirror(lifted), mirrored, atol=1e-5)
    agreement = lift_pose(p, with_front).agreement_2d
    np.testing.assert_allclose(agreement, detection_agreement(torch.from_numpy(p.normalized()),
                                                              torch.from_numpy(cleaned)).numpy(), atol=1e-6)
    assert lift_pose(p, plain).agreement_2d is None


def test_detection_agreement_is_one_where_the_front_end_kept_a_joint_and_falls_with_the_move():
    detected = _clip(6, seed=5, missing=0.0)
    detected[2, 4, 2] = 0.0                                         # a missing joint
    scale = normalise_2d(detected, "median")[3].reshape(())
    cleaned = detected.clone()
    cleaned[0, 1, 0] += 0.2 * scale                                 # moved by σ·s: weight e^-1
    cleaned[1, 7, :2] += 2.0 * scale                                # moved far: rejected
    cleaned[3, 3, 2] = 0.01                                         # the front end's own score plays no part
    a = detection_agreement(detected, cleaned)
    assert a.shape == (6, 17)
    assert torch.isclose(a[0, 1], torch.tensor(np.exp(-1.0), dtype=a.dtype), atol=1e-5)
    assert a[1, 7] < 1e-30 and a[2, 4] == 0.0 and a[3, 3] == 1.0
    untouched = torch.ones(6, 17, dtype=torch.bool)
    untouched[0, 1] = untouched[1, 7] = untouched[2, 4] = False
    assert torch.all(a[untouched] == 1.0)
    assert torch.allclose(detection_agreement(detected[None], cleaned[None])[0], a)
    with pytest.raises(ValueError, match="one shape"):
        detection_agreement(detected, cleaned[:3])


def test_denoiser_loss_is_zero_for_the_clean_2d_and_its_score_target_is_the_accuracy():
    g = torch.Generator().manual_seed(0)
    clean = torch.cat([torch.randn(2, W, 17, 2, generator=g) * 0.2, torch.ones(2, W, 17, 1)], -1)
    noisy = clean.clone()
    noisy[..., :2] += 0.05 * torch.randn(2, W, 17, 2, generator=g)
    noisy[:, :, 3, 2] = 0.0                                                   # a missed joint
    batch = {"pose2d": noisy, "pose2d_clean": clean}
    cfg = {"denoiser": {"centre": "median", "accurate_within": 0.1}, "loss": {"denoiser_score": 0.1}}
    mask = torch.ones(2, W)
    perfect = stage2.denoiser_losses(torch.cat([clean[..., :2], torch.ones(2, W, 17, 1)], -1), batch, mask, cfg)
    assert perfect["distance"] < 1e-6 and perfect["distance_raw"] > 0.05
    assert perfect["score_bce"] < 1e-3                      # exact joints, full score: nothing to learn
    as_given = stage2.denoiser_losses(torch.cat([noisy[..., :2], torch.full((2, W, 17, 1), 0.5)], -1), batch,
                                      mask, cfg)
    assert as_given["distance"] > perfect["distance"] and as_given["score_bce"] > 0.5
    assert as_given["loss"] == pytest.approx(float(as_given["distance"] + 0.1 * as_given["score_bce"]))
