"""PoseModel files, prompt choice, the refine pipeline and the command line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from finephys_core import pose_model as pm
from finephys_core.__main__ import main as cli_main
from finephys_core.camera import DEFAULT_FUSE_WEIGHT, constant_bone_lengths
from finephys_core.lifting import LifterConfig, default_overlap
from finephys_core.physics import PhysNetConfig
from finephys_core.pose_model import (PoseModel, WeightsError, build_prompt_bank, choose_prompt, choose_prompts,
                                      load_pose_model, mean_prior_from_clips, random_pose_model, save_pose_model)
from finephys_core.refine import REFINE_STEPS, lift_pose, refine_pose2d
from finephys_core.sequence import Pose2D, PoseError
from finephys_core.skeleton import H36M17

ROOT = Path(__file__).resolve().parents[1]
W = 8


def _tiny(seed=0) -> PoseModel:
    return random_pose_model(LifterConfig(dim=16, depth=1, heads=2, rep_dim=16, window=W),
                             PhysNetConfig(hidden=16, decoder_hidden=16, global_layers=1), seed=seed)


@pytest.fixture(scope="module")
def tiny():
    return _tiny()


@pytest.fixture(scope="module")
def weights(tmp_path_factory, tiny):
    return save_pose_model(tiny, tmp_path_factory.mktemp("w") / "tiny.safetensors")


def _pose2d(T, seed=0, layout="coco17") -> Pose2D:
    rng = np.random.default_rng(seed)
    base = rng.uniform(200, 400, (17, 2))
    drift = np.linspace(0, 60, T)[:, None, None]
    kp = base + drift + rng.normal(0, 3, (T, 17, 2))
    return Pose2D(kp, rng.uniform(0.4, 1.0, (T, 17)), (640, 480), 30.0, layout)


# ----------------------------------------------------------------------------- pipeline

@pytest.mark.parametrize("T", [1, 3, 4, 16, 100])
def test_refine_shapes(tiny, T):
    steps = []
    res = refine_pose2d(_pose2d(T, T), tiny, progress=steps.append)
    assert steps == [1] * REFINE_STEPS
    for pose, src in ((res.dd, "dd"), (res.pp, "pp"), (res.fused, "fused")):
        assert pose.joints.shape == (T, 17, 3) and pose.source == src and pose.fps == 30.0
        assert np.isfinite(pose.joints).all() and np.allclose(pose.joints[:, 0], 0, atol=1e-6)
    assert res.reprojected.keypoints.shape == (T, 17, 2) and np.isfinite(res.reprojected.keypoints).all()
    assert res.fused.camera is not None and res.fused.camera.translation.shape == (T, 3)
    w = DEFAULT_FUSE_WEIGHT
    mean = torch.from_numpy((1 - w) * res.dd.joints.astype(np.float64) + w * res.pp.joints)
    assert np.allclose(res.fused.joints, constant_bone_lengths(mean).numpy(), atol=1e-6)
    free = refine_pose2d(_pose2d(T, T), tiny, bones="free")
    assert np.allclose(free.fused.joints, (1 - w) * free.dd.joints + w * free.pp.joints, atol=1e-6)


def test_a_panning_camera_changes_the_reprojection_only(tiny):
    p = _pose2d(20, 4, layout="h36m17")
    pan = np.cumsum(np.random.default_rng(5).normal(0, 8, (20, 1, 2)), axis=0)    # a camera following the athlete
    panned = Pose2D(p.keypoints + pan, p.scores, p.image_size, p.fps, "h36m17")
    still, moving = refine_pose2d(p, tiny, fit_2d=30), refine_pose2d(panned, tiny, fit_2d=30)
    for a, b in ((still.dd, moving.dd), (still.pp, moving.pp), (still.fused, moving.fused)):
        np.testing.assert_allclose(a.joints, b.joints, atol=1e-4)
    np.testing.assert_allclose(moving.reprojected.keypoints, still.reprojected.keypoints + pan, atol=1e-2)


def _mirrored(p: Pose2D) -> Pose2D:
    kp = p.keypoints[:, H36M17.flip_index].copy()
    kp[..., 0] = p.image_size[0] - kp[..., 0]
    return Pose2D(kp, p.scores[:, H36M17.flip_index], p.image_size, p.fps, "h36m17")


def test_mirror_average_makes_the_lift_mirror_equivariant(tiny):
    p = _pose2d(20, 3, layout="h36m17")
    for average, equal in ((True, True), (False, False)):
        a = lift_pose(p, tiny, mirror_average=average).joints
        b = lift_pose(_mirrored(p), tiny, mirror_average=average).joints
        assert np.allclose(H36M17.mirror(a), b, atol=1e-5) == equal
    plain = lift_pose(p, tiny, mirror_average=False).joints
    back = H36M17.mirror(lift_pose(_mirrored(p), tiny, mirror_average=False).joints)
    np.testing.assert_allclose(lift_pose(p, tiny).joints, (plain + back) / 2, atol=1e-6)


def test_long_clips_are_lifted_by_windows_every_quarter_window(tiny):
    assert [default_overlap(w) for w in (32, 16, 8, 2, 1)] == [24, 12, 6, 1, 0]
    p = _pose2d(40, 2, layout="h36m17")
    default = lift_pose(p, tiny, mirror_average=False).joints
    np.testing.assert_array_equal(default, lift_pose(p, tiny, overlap=6, mirror_average=False).joints)
    assert not np.allclose(default, lift_pose(p, tiny, overlap=2, mirror_average=False).joints, atol=1e-4)


def test_lift_pose_errors(tiny):
    p = _pose2d(5)
    with pytest.raises(PoseError, match="no person detected"):
        lift_pose(Pose2D(p.keypoints, np.zeros((5, 17)), p.image_size), tiny)
    with pytest.raises(PoseError, match="expected a Pose2D"):
        lift_pose(np.zeros((5, 17, 2)), tiny)
    with pytest.raises(PoseError, match="keypoints must have shape"):
        Pose2D(np.zeros((5, 16, 2)), np.ones((5, 16)), (64, 64), layout="coco17")


def test_refine_is_deterministic_and_layout_converted(tiny):
    p = _pose2d(20)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a, b = refine_pose2d(p, tiny), refine_pose2d(p.to_h36m(), tiny)
        assert torch.get_num_threads() == 2          # the one-thread default is restored afterwards
    finally:
        torch.set_num_threads(before)
    assert np.array_equal(a.fused.joints, b.fused.joints)


# ----------------------------------------------------------------------------- prompt bank and prior

def test_mean_prior_and_prompt_bank_and_choice():
    g = torch.Generator().manual_seed(0)
    clips3d = torch.randn(10, W, 17, 3, generator=g) * 0.3
    prior = mean_prior_from_clips(clips3d)
    rel = clips3d - clips3d[..., :1, :]
    assert prior.shape == (W, 17, 3) and torch.allclose(prior, rel.mean(0))
    clips2d = torch.cat([torch.rand(10, W, 17, 2, generator=g), torch.ones(10, W, 17, 1)], -1)
    p2d, p3d = build_prompt_bank(clips2d, clips3d, size=4)
    assert p2d.shape == p3d.shape == (4, W, 17, 3)
    chosen = [int((clips2d == x).all(-1).all(-1).all(-1).nonzero()[0]) for x in p2d]
    assert len(set(chosen)) == 4 and torch.allclose(p3d, rel[chosen])
    again = build_prompt_bank(clips2d, clips3d, size=4)
    assert torch.equal(again[0], p2d)
    model = _tiny()
    model.prompt_2d, model.prompt_3d = p2d, p3d
    for i in range(4):
        q2, q3 = choose_prompt(model, p2d[i][:5], k=1)      # the query is (part of) bank entry i
        assert torch.equal(q2[0], p2d[i]) and torch.equal(q3[0], p3d[i])
    assert choose_prompt(model, p2d[0], k=3)[0].shape == (3, W, 17, 3)
    b2, b3 = choose_prompts(model, p2d[[2, 0, 3]], k=2)          # batched = one query at a time
    assert b2.shape == (3, 2, W, 17, 3) and torch.equal(b2[0], choose_prompt(model, p2d[2], k=2)[0])
    assert torch.equal(b3[1, 0], p3d[0]) and torch.equal(b3[2, 0], p3d[3])
    with pytest.raises(ValueError, match=r"\(N, W, 17, 3\)"):
        mean_prior_from_clips(torch.zeros(W, 17, 3))


# ----------------------------------------------------------------------------- files

def test_save_load_round_trip_bit_for_bit(tiny, weights, tmp_path):
    tiny.meta.update(note="round trip")
    path = save_pose_model(tiny, tmp_path / "m.safetensors")
    assert not list(tmp_path.glob("*.tmp"))
    loaded = load_pose_model(path)
    assert loaded.lifter.config == tiny.lifter.config and loaded.physnet.config == tiny.physnet.config
    assert loaded.meta == tiny.meta
    for mod in ("lifter", "physnet"):
        a, b = getattr(tiny, mod).state_dict(), getattr(loaded, mod).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("prompt_2d", "prompt_3d", "mean_prior"):
        assert torch.equal(getattr(tiny, name), getattr(loaded, name))
    p = _pose2d(12)
    assert np.array_equal(refine_pose2d(p, tiny).fused.joints, refine_pose2d(p, loaded).fused.joints)
    with safe_open(str(path), "pt") as f:
        md = f.metadata()
    assert md["format"] == pm.FORMAT and json.loads(md["lifter_config"])["window"] == W


def test_weights_errors(weights, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_pose_model(tmp_path / "nope.safetensors")
    sd = tmp_path / "sd15.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4)}, str(sd))
    with pytest.raises(WeightsError, match="not a FinePhys pose model.*model.diffusion_model"):
        load_pose_model(sd)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01 definitely not safetensors" * 10)
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_pose_model(junk)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(Path(weights).read_bytes()[:-100])
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_pose_model(cut)
    with safe_open(str(weights), "pt") as f:
        md, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    bad = dict(tensors, **{"lifter.embed.weight": torch.zeros(16, 7)})
    save_file(bad, str(tmp_path / "shape.safetensors"), metadata=md)
    with pytest.raises(WeightsError, match=r"lifter\.embed\.weight has shape \(16, 7\).*needs \(16, 6\)"):
        load_pose_model(tmp_path / "shape.safetensors")
    bad = dict(tensors, mean_prior=torch.zeros(W + 1, 17, 3))
    save_file(bad, str(tmp_path / "prior.safetensors"), metadata=md)
    with pytest.raises(WeightsError, match=r"mean_prior has shape \(9, 17, 3\).*needs \(8, 17, 3\)"):
        load_pose_model(tmp_path / "prior.safetensors")
    missing = {k: v for k, v in tensors.items() if k != "physnet.head_J.bias"}
    save_file(missing, str(tmp_path / "missing.safetensors"), metadata=md)
    with pytest.raises(WeightsError, match="missing.*head_J.bias"):
        load_pose_model(tmp_path / "missing.safetensors")


def test_default_model_warns_when_untrained_and_is_deterministic(monkeypatch, tmp_path):
    monkeypatch.setattr(pm, "DEFAULT_WEIGHTS", tmp_path / "absent.safetensors")
    with pytest.warns(UserWarning, match="UNTRAINED"):
        a = pm.default_pose_model()
    with pytest.warns(UserWarning):
        b = pm.default_pose_model()
    assert not a.trained
    assert all(torch.equal(x, y) for x, y in zip(a.lifter.parameters(), b.lifter.parameters()))
    save_pose_model(_tiny(), tmp_path / "shipped.safetensors")
    monkeypatch.setattr(pm, "DEFAULT_WEIGHTS", tmp_path / "shipped.safetensors")
    assert pm.default_pose_model().window == W


# ----------------------------------------------------------------------------- command line

def _write_input(path, T=24, **override):
    p = _pose2d(T, 1)
    arrays = dict(keypoints=p.keypoints, scores=p.scores, image_size=np.array([640, 480]),
                  layout=np.array("coco17"), fps=np.array(30.0))
    arrays.update(override)
    np.savez(path, **arrays)
    return path


def test_cli_round_trip_subprocess(tiny, weights, tmp_path):
    inp, out = _write_input(tmp_path / "in.npz"), tmp_path / "out.npz"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "finephys_core", "refine", str(inp), "-o", str(out),
                        "--weights", str(weights), "--fps", "25", "--fuse-weight", "0.3"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    with np.load(out) as z:
        d = {k: z[k] for k in z.files}
    for k in ("pose3d_dd", "pose3d_pp", "pose3d"):
        assert d[k].shape == (24, 17, 3) and d[k].dtype == np.float32
    assert d["pose2d_reproj"].shape == (24, 17, 2) and d["scores"].shape == (24, 17)
    assert d["image_size"].tolist() == [640, 480] and float(d["fps"]) == 25.0
    mix = torch.from_numpy(0.7 * d["pose3d_dd"].astype(np.float64) + 0.3 * d["pose3d_pp"])
    assert np.allclose(d["pose3d"], constant_bone_lengths(mix).numpy(), atol=1e-6)
    p = _pose2d(24, 1)
    p.fps = 25.0
    ref = refine_pose2d(p, tiny, fuse_weight=0.3)
    assert np.allclose(d["pose3d"], ref.fused.joints, atol=1e-5)
    assert np.allclose(d["pose2d_reproj"], ref.reprojected.keypoints, atol=1e-2)


def test_cli_fuses_with_the_pipeline_default_weight(tiny, weights, tmp_path):
    inp, out = _write_input(tmp_path / "in.npz"), tmp_path / "out.npz"
    assert cli_main(["refine", str(inp), "-o", str(out), "--weights", str(weights), "--fps", "25"]) == 0
    p = _pose2d(24, 1)
    p.fps = 25.0
    with np.load(out) as z:
        np.testing.assert_allclose(z["pose3d"], refine_pose2d(p, tiny).fused.joints, atol=1e-5)
    assert not np.allclose(refine_pose2d(p, tiny, fuse_weight=0.5).fused.joints,
                           refine_pose2d(p, tiny).fused.joints, atol=1e-5)


def test_cli_bad_inputs(weights, tmp_path, capsys):
    def run(*args):
        code = cli_main(["refine", *map(str, args), "--weights", str(weights)])
        return code, capsys.readouterr().err

    code, err = run(_write_input(tmp_path / "shape.npz", keypoints=np.zeros((24, 16, 2))),
                    "-o", tmp_path / "o.npz")
    assert code == 2 and "keypoints must have shape (T, 17, 2)" in err
    kp = _pose2d(24, 1).keypoints.copy()
    kp[3] = np.nan
    kp[5, 2] = np.inf
    code, err = run(_write_input(tmp_path / "nan.npz", keypoints=kp), "-o", tmp_path / "nan_out.npz")
    assert code == 0, err
    with np.load(tmp_path / "nan_out.npz") as z:
        assert np.isfinite(z["pose3d"]).all() and np.isfinite(z["pose2d_reproj"]).all()
        assert (z["scores"][3] == 0).all()
    code, err = run(_write_input(tmp_path / "empty.npz", scores=np.zeros((24, 17))), "-o", tmp_path / "o.npz")
    assert code == 2 and "no person detected" in err and not (tmp_path / "o.npz").exists()
    code, err = run(tmp_path / "absent.npz", "-o", tmp_path / "o.npz")
    assert code == 2 and "not found" in err
    sd = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(sd))
    code = cli_main(["refine", str(_write_input(tmp_path / "ok.npz")), "-o", str(tmp_path / "o.npz"),
                     "--weights", str(sd)])
    assert code == 2 and "not a FinePhys pose model" in capsys.readouterr().err
    code = cli_main(["detect", str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "p.npz")])
    assert code == 2 and "video file not found" in capsys.readouterr().err


def test_cli_uses_default_model_without_weights(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(pm, "DEFAULT_WEIGHTS", tmp_path / "absent.safetensors")
    code = cli_main(["refine", str(_write_input(tmp_path / "in.npz", T=5)), "-o", str(tmp_path / "o.npz")])
    err = capsys.readouterr().err
    assert code == 0 and "warning: FinePhys: no trained pose weights" in err and "UNTRAINED weights)" in err
    with np.load(tmp_path / "o.npz") as z:
        assert z["pose3d"].shape == (5, 17, 3)


def test_bench_pose_prints_stages_and_the_2d_fit(capsys):
    from finephys_core.bench.pose import LENGTHS
    from finephys_core.bench.pose import main as bench_pose

    assert bench_pose(["--runs", "1", "--warmup", "0"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for T in map(str, LENGTHS):
        stages = result["stages_ms"][T]
        assert set(stages) == {"lift", "physnet", "fuse"} and all(v > 0 for v in stages.values())
        assert result["fit2d_ms"][T] > stages["fuse"]          # 150 optimiser steps cost more than one fuse
    assert result["ratio_256_over_16"] == pytest.approx(result["ms_per_clip"]["256"] / result["ms_per_clip"]["16"],
                                                        abs=0.01)


def test_cli_static_camera_sizes_the_body_by_its_fall(tmp_path):
    from test_gravity import FPS, _thrown  # a salto in true free fall, seen by a static camera

    _, kp = _thrown()
    inp = tmp_path / "in.npz"
    np.savez(inp, keypoints=kp.astype(np.float32), scores=np.ones(kp.shape[:2], np.float32),
             image_size=np.array([1280, 720]), layout=np.array("h36m17"), fps=np.array(FPS))
    outs = []
    for flags in ([], ["--static-camera"]):
        out = tmp_path / f"out{len(outs)}.npz"
        assert cli_main(["refine", str(inp), "-o", str(out), *flags]) == 0
        with np.load(out) as z:
            outs.append((z["pose3d"].astype(np.float64), z["pose2d_reproj"]))
    (kept, reproj_kept), (sized, reproj_sized) = outs
    factor = np.linalg.norm(sized) / np.linalg.norm(kept)
    assert abs(factor - 1) > 0.005
    np.testing.assert_allclose(sized, factor * kept, atol=1e-5)
    np.testing.assert_allclose(reproj_sized, reproj_kept, atol=1e-2)
