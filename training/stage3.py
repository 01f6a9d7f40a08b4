"""Stage 3: PhysNet + projection fine-tuned on 2D only (paper eq. 20), the lifter frozen.

    L2D = Σ_t Σ_j ‖P(Ŝ_tj) − S2D_tj‖² + L_noise,    Ŝ = F(S_dd, S_pp),  P = camera fitted to S2D

P is the weak-perspective camera fitted in closed form to the detected 2D, weighted by the detection scores
(``camera.fit_camera``; differentiable, so gradients reach Ŝ through the fit too). Each joint's squared error
is weighted by its score (a missed joint, score 0, has no target), and measured in metres at the body — the
2D error divided by the fitted scale (pixels per metre, detached) — so the two terms keep the ratio they
have in stage 2. Sums over frames are averaged as in stage 2. Option ``loss.bone``: the rigid-limb prior of
stage 2 on S_pp.

Data: FineGym-format clips with DetectPose2D detections (``data.finegym``), or as a stand-in synthetic clips
whose 2D goes through the detector-noise model and whose 3D is never read. The lifter is frozen, so S_dd of
every item is computed once (the pool) and the steps train PhysNet alone, cheaply.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from finephys_core.camera import fit_camera, fuse, project
from finephys_core.pose_model import load_pose_model, save_pose_model
from training import common, stage2
from training.corruption import CorruptionConfig

DEFAULTS = {
    "seed": 1, "max_steps": 300, "batch_size": 16, "lr": 2e-4, "weight_decay": 1e-4, "warmup": 20,
    "grad_clip": 1.0, "ckpt_every": 100, "log_every": 20, "windows": 2, "pool_size": 2048,
    "init": None,                     # the stage-2 pose model file (required)
    "data": {"synth": {"path": "training/data/synth_train", "weight": 1.0}},
    "camera": {}, "corruption": {}, "severity": 1.0, "fuse_weight": 0.5,
    "loss": {"reproj": 1.0, "noise": 1.0, "bone": 0.0},
    "eval": {"data": None, "max_clips": 24},
    "output": "pose_model.safetensors",
    "stop_after": None,               # end after that many steps of this call (a simulated kill, for tests)
}


def _rms_radius(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(B, T, J, C) points, (B, T, J) weights → (B,) weighted RMS distance from each frame's centroid."""
    wsum = w.sum(-1, keepdim=True).clamp_min(1e-8)
    centre = (x * w[..., None]).sum(-2, keepdim=True) / wsum[..., None]
    ms = (((x - centre) ** 2).sum(-1) * w).sum((-1, -2)) / w.sum((-1, -2)).clamp_min(1e-8)
    return ms.sqrt()


def metres_per_unit(joints3d: torch.Tensor, xy: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """(B,) factor turning 2D errors into metres at the body: 3D body size over 2D body size (the inverse
    of a weak-perspective scale, but defined for any prediction, an untrained one included)."""
    r3 = _rms_radius(joints3d[..., :2], score).clamp_min(0.05)
    return r3 / _rms_radius(xy, score).clamp_min(1e-3)


def reprojection_losses(physnet, batch: dict, cfg: dict) -> dict[str, torch.Tensor]:
    s_dd = batch["s_dd"]
    out = physnet(s_dd, batch["dt"])
    fused = fuse(s_dd, out.s_pp, cfg["fuse_weight"])
    xy, score = batch["pose2d"][..., :2], batch["pose2d"][..., 2] * batch["valid"][..., None]
    cam = fit_camera(fused, xy, score)
    err = ((project(fused, cam) - xy) * metres_per_unit(fused.detach(), xy, score)[:, None, None, None]) ** 2
    frames = batch["valid"].float().sum().clamp_min(1.0)
    parts = {"l2d": (err.sum(-1) * score).sum() / frames, "noise": out.noise_loss / s_dd.shape[1]}
    loss = cfg["loss"]["reproj"] * parts["l2d"] + cfg["loss"]["noise"] * parts["noise"]
    if cfg["loss"].get("bone"):  # option: rigid limbs (stage2.bone_variance), no labels needed
        parts["bone"] = stage2.bone_variance(out.s_pp, batch["valid"].float())
        loss = loss + cfg["loss"]["bone"] * parts["bone"]
    return {"loss": loss, **parts}


def run(config: dict, args) -> dict:
    cfg = common.merge_config(DEFAULTS, config)
    if not cfg.get("init"):
        raise SystemExit("stage 3 fine-tunes a stage-2 model: set init=<pose model .safetensors>")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=1))
    t0 = time.time()
    model = load_pose_model(cfg["init"]).eval()
    physnet = model.physnet
    for p in model.lifter.parameters():
        p.requires_grad_(False)
    n = int(cfg["windows"])
    corruption = CorruptionConfig(**cfg["corruption"]) if cfg["corruption"] is not None else None
    ds, probs = stage2.build_dataset(cfg["data"], model.window * n, corruption, cfg["severity"], cfg["seed"],
                                     cfg["camera"])
    cache = stage2.pool_cache_path(out_dir, cfg)
    pool = stage2.build_pool(ds, probs, int(cfg["pool_size"]), cfg["seed"], cache)
    if "s_dd" not in pool:
        pool["s_dd"] = stage2.lift_pool(model, pool, n)
        common.atomic_torch_save(cache, pool)
    opt = torch.optim.AdamW(physnet.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])

    def step_fn(step: int, ctx: common.TrainContext):
        batch = ctx.shard(stage2.pool_batch(pool, cfg["batch_size"] * ctx.world, ctx.rng))
        batch = {k: v.to(ctx.device) for k, v in batch.items()}
        return reprojection_losses(ctx.extra["model"], batch, cfg)

    ctx = common.train_from_config(physnet, opt, step_fn, cfg, out_dir=out_dir, resume=args.resume, stage=3)
    if cfg["stop_after"]:
        return {"stopped_at": ctx.extra["step"]}
    train_s = time.time() - t0
    model.meta = {**model.meta, "trained": True, "stage": 3, "stage3_steps": int(cfg["max_steps"]),
                  "stage3_config": cfg, "stage3_train_seconds": round(train_s, 1)}
    model.eval()
    path = save_pose_model(model, out_dir / cfg["output"])
    report = {"weights": str(path), "train_seconds": round(train_s, 1)}
    if cfg["eval"].get("data"):
        report["eval"] = stage2.evaluate_model(model, cfg["eval"]["data"], cfg["eval"].get("max_clips"))
        common.atomic_write_bytes(out_dir / "eval.json", json.dumps(report, indent=1).encode())
    print(json.dumps({k: v for k, v in report.items() if k != "eval"} |
                     {"targets": report.get("eval", {}).get("targets")}))
    return report
