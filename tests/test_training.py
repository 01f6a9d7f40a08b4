"""Training machinery: configs, atomic checkpoints, exact resume, and smoke runs of stages 2 and 3."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training import common
from training.run_stage import build_parser, main as run_stage_main

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ configs

def test_override_parsing(tmp_path):
    cfg_path = tmp_path / "c.json"
    cfg_path.write_text(json.dumps({"lr": 0.1, "model": {"dim": 8}, "name": "a"}))
    cfg = common.load_config(cfg_path, ["lr=3e-4", "model.dim=16", "model.new.flag=true", "name=hello world",
                                        "mix=[1, 2]", "tag=\"007\""])
    assert cfg == {"lr": 3e-4, "model": {"dim": 16, "new": {"flag": True}}, "name": "hello world",
                   "mix": [1, 2], "tag": "007"}
    with pytest.raises(ValueError, match="key=value"):
        common.apply_override({}, "novalue")
    with pytest.raises(ValueError, match="not a section"):
        common.apply_override({"lr": 1}, "lr.x=2")
    with pytest.raises(FileNotFoundError):
        common.load_config(tmp_path / "missing.json")


def test_cli_parser_and_missing_stage(tmp_path, monkeypatch):
    args = build_parser().parse_args(["--stage", "2", "--set", "a=1", "--set", "b.c=x", "--max-steps", "5"])
    assert args.overrides == ["a=1", "b.c=x"] and args.max_steps == 5
    import training.run_stage as rs
    import importlib

    real = importlib.import_module

    def fake_import(name, *a, **k):
        if name == "training.stage1":
            raise ModuleNotFoundError("no", name="training.stage1")
        return real(name, *a, **k)
    cfg = tmp_path / "c.json"
    cfg.write_text("{}")
    monkeypatch.setattr(rs, "import_module", fake_import)
    with pytest.raises(SystemExit, match="stage 1 .* not available"):
        run_stage_main(["--stage", "1", "--config", str(cfg), "--out", str(tmp_path / "r")])


# -------------------------------------------------------------------------------------------- checkpoints

def test_checkpoint_roundtrip_and_atomic(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    t = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4, dtype=torch.float16)}
    common.save_checkpoint(path, t, {"step": 3, "cfg": {"x": [1, 2]}})
    back, meta = common.load_checkpoint(path)
    assert meta == {"step": 3, "cfg": {"x": [1, 2]}}
    assert torch.equal(back["a"], t["a"]) and back["b"].dtype == torch.float16
    before = path.read_bytes()

    def crash(fd):
        raise OSError("disk died mid-write")
    monkeypatch.setattr(common.os, "fsync", crash)
    with pytest.raises(OSError, match="mid-write"):
        common.save_checkpoint(path, {"a": torch.zeros(100)}, {"step": 4})
    assert path.read_bytes() == before                       # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]   # and no temp file is left


# ---------------------------------------------------------------------------------------------- resume

def _toy_run(out_dir, resume=False, stop_after=None, max_steps=12):
    torch.manual_seed(123)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = np.random.default_rng(0).normal(size=(64, 5)).astype(np.float32)

    def step_fn(step, ctx):
        idx = ctx.rng.integers(0, len(data), 8)            # data order from the saved generator
        x = torch.from_numpy(data[idx, :4]) + 0.1 * torch.randn(8, 4)  # and torch's global RNG
        loss = ((model(x)[:, 0] - torch.from_numpy(data[idx, 4])) ** 2).mean()
        return {"loss": loss}
    common.train_loop(model, opt, step_fn, out_dir=out_dir, max_steps=max_steps, seed=7, resume=resume,
                      scheduler_fn=common.cosine_schedule(2, max_steps), ckpt_every=5, log_every=2,
                      stop_after=stop_after)
    return model


def test_kill_and_resume_gives_identical_parameters(tmp_path):
    straight = _toy_run(tmp_path / "a")
    _toy_run(tmp_path / "b", stop_after=7)                 # "killed" after 7 of 12 steps
    resumed = _toy_run(tmp_path / "b", resume=True)
    for (k, p), q in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), k
    log_a, log_b = common.read_log(tmp_path / "a"), common.read_log(tmp_path / "b")
    assert [r["step"] for r in log_b] == [2, 4, 6, 7, 8, 10, 12]
    assert log_a[-1]["loss"] == pytest.approx(log_b[-1]["loss"])
    assert json.loads((tmp_path / "b" / "latest.json").read_text())["step"] == 12
    assert len(list((tmp_path / "b").glob("ckpt-*.safetensors"))) == 2   # older ones pruned
    fresh = _toy_run(tmp_path / "c", stop_after=3)
    assert not all(torch.equal(p, q) for p, q in zip(fresh.parameters(), straight.parameters()))


# ------------------------------------------------------------------------------------ stage smoke runs

def _skeleton() -> np.ndarray:
    """A standing H36M-17 body, metres, Z up, pelvis at the origin."""
    from finephys_core.skeleton import H36M17
    offsets = {1: (-0.13, 0, 0), 2: (0, 0, -0.44), 3: (0, 0, -0.43), 4: (0.13, 0, 0), 5: (0, 0, -0.44),
               6: (0, 0, -0.43), 7: (0, 0, 0.23), 8: (0, 0, 0.25), 9: (0, 0.05, 0.1), 10: (0, -0.05, 0.12),
               11: (0.17, 0, -0.02), 12: (0, 0, -0.28), 13: (0, 0, -0.25), 14: (-0.17, 0, -0.02),
               15: (0, 0, -0.28), 16: (0, 0, -0.25)}
    pose = np.zeros((17, 3))
    for j, p in enumerate(H36M17.parents):
        if p >= 0:
            pose[j] = pose[p] + offsets[j]
    return pose


def _write_shard(folder: Path, clips: int = 4, frames: int = 40) -> Path:
    """A synth.py-format shard of a body jumping and turning in free flight (no simulator needed)."""
    from training import synth
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    body = _skeleton()
    out = []
    for c in range(clips):
        fps = (25.0, 50.0)[c % 2]
        t = np.arange(frames) / fps
        ang = (2.0 + c) * t
        c_, s_, z_ = np.cos(ang), np.sin(ang), np.zeros(frames)
        rot = np.stack([np.stack([c_, -s_, z_], -1), np.stack([s_, c_, z_], -1),
                        np.stack([z_, z_, z_ + 1], -1)], 1)                      # (T, 3, 3) turn about Z
        root = np.stack([0.5 * t, 0 * t, 1.0 + 3.0 * t - 0.5 * 9.81 * t ** 2], -1)
        world = np.einsum("tab,jb->tja", rot, body) + root[:, None]
        K, R, tr, size = synth.random_camera(world, rng)
        cam = world @ R.T + tr
        out.append({"joints_world": world.astype(np.float32), "com_world": root.astype(np.float32),
                    "joints_cam": cam.astype(np.float32), "joints_cam_rel": (cam - cam[:, :1]).astype(np.float32),
                    "keypoints_2d": synth.project(cam, K).astype(np.float32), "contact": np.zeros((frames, 4), bool),
                    "external": np.zeros(frames, bool), "flight": np.ones(frames, bool), "K": K.astype(np.float32),
                    "R": R.astype(np.float32), "t": tr.astype(np.float32), "image_size": np.array(size, np.int32),
                    "fps": fps, "class_id": 0, "seed": c})
    np.savez(folder / "shard_00000.npz", **synth.stack_clips(out))
    return folder


TINY = {"lifter": {"dim": 8, "depth": 1, "heads": 2, "rep_dim": 8, "window": 8},
        "physnet": {"hidden": 8, "decoder_hidden": 8, "global_layers": 1, "local_layers": 1},
        "batch_size": 2, "prompt_bank": 4, "prior_windows": 8, "log_every": 1, "ckpt_every": 2, "warmup": 1}


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    return _write_shard(tmp_path_factory.mktemp("synth"))


def _cfg(tmp_path, name, **extra) -> Path:
    p = tmp_path / name
    p.write_text(json.dumps({**TINY, **extra}))
    return p


def test_stage2_and_stage3_smoke(tmp_path, shard_dir):
    from finephys_core.pose_model import load_pose_model
    data = {"synth": {"path": str(shard_dir), "weight": 1.0}}
    cfg2 = _cfg(tmp_path, "s2.json", data=data, max_steps=3, pool_size=6, loss={"dd": 0.5, "bone": 1.0},
                eval={"data": str(shard_dir), "max_clips": 2})
    report = run_stage_main(["--stage", "2", "--config", str(cfg2), "--out", str(tmp_path / "s2")])
    model = load_pose_model(report["weights"])
    assert model.trained and model.window == 8 and model.prompt_2d.shape[0] == 4
    assert [r["step"] for r in common.read_log(tmp_path / "s2")] == [1, 2, 3]
    assert {"l3d", "noise", "mpjpe_mm", "dd", "bone"} <= set(common.read_log(tmp_path / "s2")[0])
    assert set(report["eval"]["targets"]) == {"25", "50"}
    assert np.isfinite(report["eval"]["results"]["25"]["fused"]["mpjpe"])

    cfg2b = _cfg(tmp_path, "s2b.json", data=data, max_steps=2, pool_size=4, init=report["weights"],
                 train="physnet", fresh_physnet=True, physnet={**TINY["physnet"], "mass_matrix": "psd"},
                 eval={"data": None})
    alt = load_pose_model(run_stage_main(["--stage", "2", "--config", str(cfg2b), "--out",
                                          str(tmp_path / "s2b")])["weights"])
    assert alt.physnet.config.mass_matrix == "psd"                 # a PhysNet variant on the trained lifter
    assert all(torch.equal(a, b) for a, b in zip(model.lifter.parameters(), alt.lifter.parameters()))
    assert torch.equal(alt.mean_prior, model.mean_prior)

    cfg2c = _cfg(tmp_path, "s2c.json", data=data, max_steps=2, init=report["weights"], train="lifter",
                 loss={"norm": "l2"}, camera={"distance": [20.0, 30.0]}, eval={"data": None})
    lifted = load_pose_model(run_stage_main(["--stage", "2", "--config", str(cfg2c), "--out",
                                             str(tmp_path / "s2c")])["weights"])
    assert all(torch.equal(a, b) for a, b in zip(model.physnet.parameters(), lifted.physnet.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(model.lifter.parameters(), lifted.lifter.parameters()))
    assert set(common.read_log(tmp_path / "s2c")[0]) >= {"loss", "mpjpe_dd_mm"}
    assert "l3d" not in common.read_log(tmp_path / "s2c")[0]        # PhysNet is not run
    for rec in common.read_log(tmp_path / "s2c"):                     # norm l2: Σ_j ‖Ŝ − S‖ = 17 · MPJPE
        assert rec["loss"] == pytest.approx(17 * rec["mpjpe_dd_mm"] / 1000, rel=1e-4)
    with pytest.raises(ValueError, match="loss.norm must be one of"):
        run_stage_main(["--stage", "2", "--config", str(_cfg(tmp_path, "bad.json", data=data, loss={"norm": "l1"})),
                        "--out", str(tmp_path / "bad")])
    with pytest.raises(ValueError, match="score_gamma must be"):
        run_stage_main(["--stage", "2", "--config", str(_cfg(tmp_path, "bad.json", data=data, score_gamma=0.5)),
                        "--out", str(tmp_path / "bad")])
    with pytest.raises(ValueError, match="track_prob must be"):
        run_stage_main(["--stage", "2", "--config", str(_cfg(tmp_path, "bad.json", data=data, track_prob=1.5)),
                        "--out", str(tmp_path / "bad")])
    with pytest.raises(ValueError, match="train must be one of"):
        run_stage_main(["--stage", "2", "--config", str(_cfg(tmp_path, "bad.json", data=data, train="physics")),
                        "--out", str(tmp_path / "bad")])

    cfg3 = _cfg(tmp_path, "s3.json", data=data, max_steps=2, pool_size=4, init=report["weights"],
                eval={"data": None})
    report3 = run_stage_main(["--stage", "3", "--config", str(cfg3), "--out", str(tmp_path / "s3")])
    tuned = load_pose_model(report3["weights"])
    for a, b in zip(model.lifter.parameters(), tuned.lifter.parameters()):
        assert torch.equal(a, b)                                   # the lifter is frozen in stage 3
    assert any(not torch.equal(a, b) for a, b in zip(model.physnet.parameters(), tuned.physnet.parameters()))
    assert {"l2d", "noise"} <= set(common.read_log(tmp_path / "s3")[0])
    assert tuned.meta["stage"] == 3


TINY_DENOISER = {"dim": 8, "depth": 1, "heads": 2, "window": 8}


def test_stage2_front_end_phase_then_a_lifter_trained_behind_it(tmp_path, shard_dir):
    """train='denoiser' trains the 2D front end alone; a later phase keeps it frozen and lifts its output."""
    import dataclasses

    from finephys_core.pose_model import load_pose_model, save_pose_model
    data = {"synth": {"path": str(shard_dir), "weight": 1.0}}
    front = run_stage_main(["--stage", "2", "--config", str(_cfg(tmp_path, "d.json", data=data, max_steps=3,
                            pool_size=6, train="denoiser", denoiser=TINY_DENOISER, eval={"data": None})),
                            "--out", str(tmp_path / "d")])["weights"]
    log = common.read_log(tmp_path / "d")
    assert [r["step"] for r in log] == [1, 2, 3] and {"distance", "distance_raw", "score_bce"} <= set(log[0])
    with_front = load_pose_model(front)
    assert with_front.denoiser.config.dim == 8
    without = save_pose_model(dataclasses.replace(with_front, denoiser=None), tmp_path / "plain.safetensors")
    lifted = {}
    for name, init in (("behind", front), ("plain", str(without))):
        cfg = _cfg(tmp_path, f"{name}.json", data=data, max_steps=2, pool_size=6, init=init, train="lifter",
                   eval={"data": None})
        lifted[name] = load_pose_model(run_stage_main(["--stage", "2", "--config", str(cfg), "--out",
                                                       str(tmp_path / name)])["weights"])
    behind = lifted["behind"]
    assert all(torch.equal(a, b) for a, b in zip(with_front.denoiser.parameters(), behind.denoiser.parameters()))
    assert lifted["plain"].denoiser is None
    assert any(not torch.equal(a, b) for a, b in zip(behind.lifter.parameters(), lifted["plain"].lifter.parameters()))


def test_stage2_lifter_with_the_front_end_applied_to_the_pool_once(tmp_path, shard_dir):
    """front_end_in_pool: the pool's 2D is the front end's output of each item augmented once; the run resumes
    exactly; other phases refuse the option."""
    from finephys_core.denoise2d import denoise_2d
    from finephys_core.pose_model import load_pose_model
    from training.stage2 import augment
    data = {"synth": {"path": str(shard_dir), "weight": 1.0}}
    front = run_stage_main(["--stage", "2", "--config", str(_cfg(tmp_path, "d.json", data=data, max_steps=2,
                            pool_size=6, train="denoiser", denoiser=TINY_DENOISER, eval={"data": None})),
                            "--out", str(tmp_path / "d")])["weights"]
    cfg = _cfg(tmp_path, "l.json", data=data, max_steps=4, pool_size=6, init=front, train="lifter",
               front_end_in_pool=True, score_gamma=2.0, track_prob=0.5, clean_fraction=0.5, eval={"data": None})
    run_stage_main(["--stage", "2", "--config", str(cfg), "--out", str(tmp_path / "a")])
    run_stage_main(["--stage", "2", "--config", str(cfg), "--out", str(tmp_path / "b"), "--set", "stop_after=2"])
    run_stage_main(["--stage", "2", "--config", str(cfg), "--out", str(tmp_path / "b"), "--resume"])
    a, _ = common.load_checkpoint(tmp_path / "a" / "ckpt-00000004.safetensors")
    b, _ = common.load_checkpoint(tmp_path / "b" / "ckpt-00000004.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    [pool_file] = (tmp_path / "a").glob("pool-6-0-*.pt")
    pool = torch.load(pool_file)
    [raw_file] = (tmp_path / "d").glob("pool-6-0-*.pt")
    raw = torch.load(raw_file)                                 # the same items, before augmenting and cleaning
    again = augment(dict(raw), np.random.default_rng([0, 0xF207]), 0.5, 0.0, 2.0, 0.5)
    with torch.no_grad():
        cleaned = denoise_2d(load_pose_model(front).denoiser.eval(), again["pose2d"])
    assert "front_end_applied" in pool and torch.allclose(pool["pose2d"], cleaned, atol=1e-6)
    assert not torch.allclose(pool["pose2d"], raw["pose2d"], atol=1e-3)
    bad = _cfg(tmp_path, "p.json", data=data, max_steps=1, pool_size=6, init=front, train="physnet",
               front_end_in_pool=True, eval={"data": None})
    with pytest.raises(ValueError, match="front_end_in_pool needs train='lifter'"):
        run_stage_main(["--stage", "2", "--config", str(bad), "--out", str(tmp_path / "p")])
    # resumed without the option, or with other data settings, in the same folder: a pool of its own, not the old one
    for change in ("front_end_in_pool=false", "severity=2.0"):
        run_stage_main(["--stage", "2", "--config", str(cfg), "--out", str(tmp_path / "a"), "--resume",
                        "--set", change])
    pools = {p: torch.load(p) for p in (tmp_path / "a").glob("pool-6-0-*.pt")}
    assert len(pools) == 3 and pool_file in pools
    assert sum("front_end_applied" not in p for p in pools.values()) == 1       # the run without the option's
    stronger = [p for f, p in pools.items() if f != pool_file and "front_end_applied" in p]
    assert len(stronger) == 1 and not torch.allclose(stronger[0]["pose2d"], pool["pose2d"])


@pytest.mark.parametrize("extra", [{"pool_size": 0},
                                   {"pool_size": 6, "train": "lifter", "score_gamma": 2.0, "track_prob": 0.5,
                                    "lifter": {**TINY["lifter"], "tokens": "frame", "trajectory": True}},
                                   {"pool_size": 6, "train": "denoiser", "denoiser": TINY_DENOISER}],
                         ids=["fresh-batches", "lifter-from-pool", "front-end"])
def test_stage2_resume_matches_straight_run(tmp_path, shard_dir, extra):
    """Killed and resumed = never killed, for fresh batches and for the shipped lifter recipe (a cached pool)."""
    data = {"synth": {"path": str(shard_dir), "weight": 1.0}}
    cfg = _cfg(tmp_path, "s2.json", data=data, max_steps=4, eval={"data": None}, **extra)
    run_stage_main(["--stage", "2", "--config", str(cfg), "--out", str(tmp_path / "a")])
    run_stage_main(["--stage", "2", "--config", str(cfg), "--out", str(tmp_path / "b"), "--max-steps", "4",
                    "--set", "stop_after=2"])
    run_stage_main(["--stage", "2", "--config", str(cfg), "--out", str(tmp_path / "b"), "--resume"])
    a, _ = common.load_checkpoint(tmp_path / "a" / "ckpt-00000004.safetensors")
    b, _ = common.load_checkpoint(tmp_path / "b" / "ckpt-00000004.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_augment_score_gamma_changes_the_calibration_not_the_order():
    from training.stage2 import augment
    pose2d = 0.05 + 0.9 * torch.rand(6, 8, 17, 3, generator=torch.Generator().manual_seed(0))
    pose2d[0, 0, :3, 2] = 0.0                                           # missing joints
    batch = lambda: {"pose2d": pose2d.clone(), "pose2d_clean": torch.ones_like(pose2d),  # noqa: E731
                     "pose3d": torch.zeros(6, 8, 17, 3)}
    assert torch.equal(augment(batch(), np.random.default_rng(1), 0.0, 0.0)["pose2d"], pose2d)   # off by default
    out = augment(batch(), np.random.default_rng(1), 0.0, 0.0, score_gamma=2.0)["pose2d"]
    assert torch.equal(out[..., :2], pose2d[..., :2]) and (out[0, 0, :3, 2] == 0).all()
    power = (out[:, 1:, :, 2].log() / pose2d[:, 1:, :, 2].log()).flatten(1)       # one power per item
    assert torch.allclose(power, power[:, :1].expand_as(power), rtol=1e-4)
    assert (power[:, 0] >= 0.5 - 1e-5).all() and (power[:, 0] <= 2 + 1e-5).all() and power[:, 0].std() > 0.1
    assert torch.equal(out[..., 2].flatten(1).argsort(), pose2d[..., 2].flatten(1).argsort())   # order kept


def test_augment_track_prob_takes_a_share_of_the_travel_out():
    from training.stage2 import augment
    g = torch.Generator().manual_seed(2)
    clean = torch.cat([torch.rand(6, 8, 17, 2, generator=g), torch.ones(6, 8, 17, 1)], -1)
    clean[..., :2] += torch.linspace(0, 0.5, 8)[:, None, None]                  # the athlete travels right
    noisy = clean + torch.cat([0.01 * torch.randn(6, 8, 17, 2, generator=g), torch.zeros(6, 8, 17, 1)], -1)
    batch = lambda: {"pose2d": noisy.clone(), "pose2d_clean": clean.clone(),  # noqa: E731
                     "pose3d": torch.zeros(6, 8, 17, 3)}
    assert torch.equal(augment(batch(), np.random.default_rng(1), 0.0, 0.0)["pose2d"], noisy)     # off by default
    out = augment(batch(), np.random.default_rng(1), 0.0, 0.0, track_prob=1.0)
    travel = lambda x: x[:, :, 0, :2] - x[:, :, 0, :2].mean(1, keepdim=True)  # noqa: E731
    kept = (travel(out["pose2d_clean"]) / travel(clean))[..., 0]                 # share of the travel left, per item
    assert torch.allclose(kept, kept[:, :1].expand_as(kept), atol=1e-4)
    assert ((kept >= -1e-5) & (kept <= 1 + 1e-5)).all() and kept[:, 0].std() > 0.1
    shift = noisy - out["pose2d"]                                                 # the same pan moves the detections
    assert torch.allclose(shift, clean - out["pose2d_clean"], atol=1e-6) and torch.equal(out["pose2d"][..., 2], noisy[..., 2])
    pose = lambda x: x[..., :2] - x[..., :1, :2]  # noqa: E731
    assert torch.allclose(pose(out["pose2d"]), pose(noisy), atol=1e-6)          # only the position in the image moves


def test_bone_variance_hand_value():
    from training.stage2 import bone_variance
    body = torch.from_numpy(_skeleton()).float()
    clip = body.expand(1, 4, 17, 3).clone()
    mask = torch.ones(1, 4)
    assert float(bone_variance(clip, mask)) == pytest.approx(0.0, abs=1e-10)
    clip[0, 1::2, 3] = clip[0, 1::2, 2] + torch.tensor([0.0, 0.0, -0.63])   # shin 0.43 / 0.63 m alternately
    assert float(bone_variance(clip, mask)) == pytest.approx(0.1 ** 2, rel=1e-4)   # std 0.1 m on one bone
    mask[0, 1::2] = 0                                                     # only the rigid frames count
    assert float(bone_variance(clip, mask)) == pytest.approx(0.0, abs=1e-10)


def test_physics_bench_last_line_is_json(tmp_path, capsys):
    from finephys_core.bench import physics as bench
    from finephys_core.lifting import LifterConfig
    from finephys_core.physics import PhysNetConfig
    from finephys_core.pose_model import random_pose_model, save_pose_model
    weights = save_pose_model(random_pose_model(LifterConfig(**TINY["lifter"]), PhysNetConfig(**TINY["physnet"])),
                              tmp_path / "tiny.safetensors")
    assert bench.main(["--weights", str(weights), "--max-clips", "1"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(last["results"]) == {"25", "50"}
    assert set(last["results"]["25"]) == set(bench.METHODS) | {"gt", "clips"}
    assert last["results"]["25"]["gt"]["bone_std"] < 5.0        # physics-exact ground truth is near rigid
    assert last["score_power"] == 1.0

    assert bench.main(["--weights", str(weights), "--max-clips", "1", "--score-power", "2"]) == 0
    other = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert other["score_power"] == 2.0                           # another calibration: the lift sees other scores
    assert other["results"]["25"]["dd"]["mpjpe"] != last["results"]["25"]["dd"]["mpjpe"]
    with pytest.raises(SystemExit, match="score-power"):
        bench.main(["--weights", str(weights), "--max-clips", "1", "--score-power", "0"])
    assert last["zoom"] == 1.0
    assert bench.main(["--weights", str(weights), "--max-clips", "1", "--zoom", "1.5"]) == 0
    zoomed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert zoomed["zoom"] == 1.5 and zoomed["results"]["25"]["dd"]["mpjpe"] != last["results"]["25"]["dd"]["mpjpe"]
    with pytest.raises(SystemExit, match="zoom"):
        bench.main(["--weights", str(weights), "--max-clips", "1", "--zoom", "-1"])
    assert last["track"] == 0.0
    assert bench.main(["--weights", str(weights), "--max-clips", "1", "--track", "1"]) == 0
    tracked = json.loads(capsys.readouterr().out.strip().splitlines()[-1])   # this lifter does not read the travel
    assert tracked["track"] == 1.0 and tracked["results"]["25"]["dd"]["mpjpe"] == pytest.approx(
        last["results"]["25"]["dd"]["mpjpe"], abs=1e-3)
    with pytest.raises(SystemExit, match="track"):
        bench.main(["--weights", str(weights), "--max-clips", "1", "--track", "2"])

    assert bench.main(["--weights", str(weights), "--max-clips", "1", "--error-spectrum"]) == 0
    spectrum = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error_spectrum"]
    assert set(spectrum) == {"25", "50"}
    for r in spectrum.values():
        shares = [r[f"energy_below_{c:g}hz"] for c in bench.SPECTRUM_CUTOFFS]
        assert 0.0 <= shares[0] <= shares[-1] <= 1.0 and shares == sorted(shares)
        # one clip per fps (--max-clips 1), so the per-clip oracle is the best of the cutoffs' averages
        assert r["best_low_pass_mpjpe"] == min(r[f"low_pass_mpjpe_{c:g}hz"] for c in bench.SPECTRUM_CUTOFFS)
        assert r["slow_error_mpjpe_0.5hz"] < r["dd_mpjpe"]      # most of the error energy removed leaves less

    assert bench.main(["--weights", str(weights), "--max-clips", "1", "--error-budget"]) == 0
    budget = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error_budget"]
    assert set(budget) == {"25", "50"}
    for r in budget.values():
        assert r["clips"] == 1
        for m in bench.BUDGET_METHODS:
            assert set(r[m]) == {"mpjpe", "pa_mpjpe", *(f"{o}_mpjpe" for o in bench.ORACLES)}
            assert all(np.isfinite(v) and v > 0 for v in r[m].values())
    for fps in ("25", "50"):                                     # the same clips and methods as the table's
        for m in bench.BUDGET_METHODS:
            assert budget[fps][m]["mpjpe"] == pytest.approx(last["results"][fps][m]["mpjpe"], rel=1e-6)


def test_physics_bench_paired_difference(tmp_path, capsys):
    """--baseline: the paired per-clip differences average to the difference of the two tables, and the
    bootstrap interval holds the mean; weights against themselves differ by exactly nothing."""
    from finephys_core.bench import physics as bench
    from finephys_core.lifting import LifterConfig
    from finephys_core.physics import PhysNetConfig
    from finephys_core.pose_model import random_pose_model, save_pose_model
    paths = []
    for seed in (0, 1):
        model = random_pose_model(LifterConfig(**TINY["lifter"]), PhysNetConfig(**TINY["physnet"]), seed=seed)
        paths.append(str(save_pose_model(model, tmp_path / f"tiny{seed}.safetensors")))
    tables = []
    for path in paths:
        assert bench.main(["--weights", path, "--max-clips", "2"]) == 0
        tables.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"])
    assert bench.main(["--weights", paths[0], "--baseline", paths[1], "--max-clips", "2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    paired = json.loads(out[-1])["paired"]
    assert set(paired) == {"25", "50", "all"} and paired["all"]["clips"] == 4
    for fps in ("25", "50"):
        for m in bench.PAIRED_METHODS:
            r = paired[fps][m]
            assert r["diff"] == pytest.approx(tables[0][fps][m]["mpjpe"] - tables[1][fps][m]["mpjpe"], abs=1e-6)
            assert r["low"] - 1e-9 <= r["diff"] <= r["high"] + 1e-9 and 0.0 <= r["better_share"] <= 1.0
    assert any(paired["all"][m]["diff"] != 0 for m in bench.PAIRED_METHODS)   # two random models differ

    clips = [c for c in bench.load_heldout() if int(round(float(c["fps"]))) == 25][:1]
    model = random_pose_model(LifterConfig(**TINY["lifter"]), PhysNetConfig(**TINY["physnet"]))
    same = bench.paired_difference(model, model, clips, fps_list=(25,), resamples=50)
    assert set(same) == {"25", "all"}
    assert all(same["25"][m] == {"diff": 0.0, "low": 0.0, "high": 0.0, "better_share": 0.0}
               for m in bench.PAIRED_METHODS)


def test_make_heldout_is_reproducible_and_benchmarkable(tmp_path, capsys):
    """--make-heldout: one motion per seed at every bench rate, through held-out cameras, detections corrupted;
    the same file again from the same seed, and `bench physics --data` evaluates it."""
    pytest.importorskip("mujoco")
    pytest.importorskip("dm_control")
    from finephys_core.bench import physics as bench
    from finephys_core.lifting import LifterConfig
    from finephys_core.physics import PhysNetConfig
    from finephys_core.pose_model import random_pose_model, save_pose_model
    with pytest.raises(SystemExit, match="frozen"):                                  # never over the shipped file
        bench.main(["--make-heldout"])
    assert bench.main(["--make-heldout", "--motions", "2", "--data", str(tmp_path / "h0.npz")]) == 0
    made = [bench.load_heldout(p) for p in (tmp_path / "h0.npz", bench.make_heldout(tmp_path / "h1.npz", motions=2))]
    assert [float(c["fps"]) for c in made[0]] == list(bench.BENCH_FPS) * 2
    assert [int(c["seed"]) for c in made[0]] == [bench.HELDOUT_SEED] * 2 + [bench.HELDOUT_SEED + 1] * 2
    assert [int(c["class_id"]) for c in made[0]] == [0, 0, 1, 1]                 # classes in turn
    for a, b in zip(*made):
        assert all(np.array_equal(a[k], b[k]) for k in a)
        seen = a["det_scores"] > 0
        assert not np.allclose(a["det_keypoints"][seen], a["keypoints_2d"][seen])  # detections corrupted
    weights = save_pose_model(random_pose_model(LifterConfig(**TINY["lifter"]), PhysNetConfig(**TINY["physnet"])),
                              tmp_path / "tiny.safetensors")
    assert bench.main(["--weights", str(weights), "--data", str(tmp_path / "h0.npz")]) == 0
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"]
    assert set(results) == {str(f) for f in bench.BENCH_FPS}


def test_physics_bench_detections_off_the_training_noise():
    """--detections: severity 1 gives back the shipped detections, 'clean' the truth, 'jitter:σ' the truth plus
    noise of about σ × the image height and nothing else; a mode it does not know is refused by name."""
    from finephys_core.bench import physics as bench
    clips = bench.load_heldout()[:4]
    for i, c in enumerate(clips):
        again = bench.redetect(c, i, "severity:1")
        assert np.array_equal(again["det_keypoints"], c["det_keypoints"])
        assert np.array_equal(again["det_scores"], c["det_scores"])
        assert bench.redetect(c, i, "stored") is c
        clean = bench.redetect(c, i, "clean")
        np.testing.assert_allclose(clean["det_keypoints"], c["keypoints_2d"], atol=1e-3)
        assert (clean["det_scores"] == 1).all()
        jitter = bench.redetect(c, i, "jitter:0.02")
        noise = jitter["det_keypoints"] - c["keypoints_2d"]
        assert np.std(noise) == pytest.approx(0.02 * c["image_size"][1], rel=0.1)
        assert (jitter["det_scores"] == np.float32(0.9)).all()
        assert not np.array_equal(bench.redetect(c, i, "severity:2")["det_keypoints"], c["det_keypoints"])
    for bad in ("noisy", "jitter", "jitter:-1", "severity:x", "clean:1"):
        with pytest.raises(ValueError, match="detections must be"):
            bench.redetect(clips[0], 0, bad)
    with pytest.raises(SystemExit, match="detections must be"):
        bench.main(["--detections", "noisy", "--max-clips", "1"])


def test_oracle_corrections_remove_exactly_their_error():
    from finephys_core.bench import physics as bench
    from finephys_core.camera import bone_vectors, constant_bone_lengths, joints_from_bones

    clip = bench.load_heldout()[0]["joints_cam"][:20].astype(np.float64)
    truth = constant_bone_lengths(torch.from_numpy(clip - clip[:, :1])).numpy()   # rigid, root-relative
    angle = 0.4
    turn = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    exact = lambda pred, name: np.abs(bench.oracle_corrections(pred, truth)[name] - truth).max()  # noqa: E731
    assert exact(1.1 * truth, "clip_scale") < 1e-9 and exact(1.1 * truth, "true_bone_lengths") < 1e-9
    assert exact(1.1 * truth, "true_proportions") > 1e-3                 # proportions were right; size stays wrong
    assert exact(0.9 * truth @ turn.T, "clip_similarity") < 1e-9
    assert exact(0.9 * truth @ turn.T, "clip_scale") > 1e-2
    frames = np.linspace(0.1, 0.5, len(truth))                   # a rotation that changes from frame to frame
    c, s = np.cos(frames)[:, None, None], np.sin(frames)[:, None, None]
    zero, one = 0 * c, np.ones_like(c)
    in_image = np.concatenate([np.concatenate([c, -s, zero], 2), np.concatenate([s, c, zero], 2),
                               np.concatenate([zero, zero, one], 2)], 1)                          # about z
    about_y = np.concatenate([np.concatenate([c, zero, s], 2), np.concatenate([zero, one, zero], 2),
                              np.concatenate([-s, zero, c], 2)], 1)                               # a tilt
    for name, rotated in (("frame_turn", in_image), ("frame_tilt", about_y)):
        other = "frame_tilt" if name == "frame_turn" else "frame_turn"
        pred = 1.1 * truth @ np.swapaxes(rotated, -1, -2)
        assert exact(pred, name) < 1e-9 and exact(pred, other) > 1e-2 and exact(pred, "clip_similarity") > 1e-3
    bones = bone_vectors(torch.from_numpy(truth))
    bones[5:9, 2, 2] *= -1                                       # the right shin points the other way in depth
    flipped = joints_from_bones(torch.from_numpy(truth[:, :1]), bones).numpy()
    assert np.abs(flipped - truth).max() > 1e-2
    assert exact(flipped, "depth_signs") < 1e-9 and exact(flipped, "true_bone_lengths") > 1e-2


def test_shipped_stage2_config_builds_its_models():
    """A typo in the shipped config (an unknown lifter or PhysNet field, a bad option) fails here, not an hour in."""
    from training import stage2

    cfg = common.merge_config(stage2.DEFAULTS, json.loads((ROOT / "training/configs/stage2.json").read_text()))
    lifter, physnet, denoiser, init = stage2.build_models(cfg)
    assert init is None and denoiser is None and lifter.config == stage2.LifterConfig.from_dict(cfg["lifter"])
    front = stage2.build_models(cfg | {"train": "denoiser"})[2]
    assert front.config == stage2.Denoiser2DConfig.from_dict(cfg["denoiser"])
    assert physnet.config == stage2.PhysNetConfig.from_dict(cfg["physnet"])
