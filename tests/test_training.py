"""Training machinery: configs, atomic checkpoints, exact resume, and smoke runs of stages 2 and 3."""
from __future__ import annotations

import json
import os
import subprocess
import sys
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
