"""Stage 2: lifter + PhysNet trained jointly on 3D ground truth (paper eq. 19).

    L3D = Σ_t Σ_j ‖Ŝ_tj − S_tj‖² + L_noise,    Ŝ = F(S_dd, S_pp) = fuse(S_dd, S_pp, w)

Both sums are averaged over the frames of the batch (the paper's sums over t, divided by the window length
and batch size, so the learning rate does not depend on them; the ratio of the two terms is the paper's).
Options (config ``loss``), all 0 in the paper's setting (``norm`` 'squared'):
  ``norm``: 'squared' (eq. 19) or 'l2': Σ_j ‖Ŝ_tj − S_tj‖ (MPJPE itself, VideoPose3D's loss) in every
  pose-error term; it weighs hard frames (upside down, detector failures) less than the square does;
  ``dd``/``pp``: the same pose error on S_dd and on S_pp alone (keeps each branch a usable pose on its
  own, so "fused vs S_dd" compares two real estimates, not two halves of one);
  ``velocity``: squared error of frame differences of Ŝ (per dt², i.e. m/s);
  ``bone``: Σ over bones of each bone length's variance over time, on S_dd and S_pp (rigid limbs; no labels).

Data (config ``data``): a mixture of sources with weights; each item is a window of ``windows`` × the
lifter window, its 2D re-viewed by a random camera and corrupted like a detector (training/corruption.py).
The lifter lifts each lifter-window of the item, PhysNet sees the concatenation (it runs on whole clips at
inference, so it trains on more than one lifter window). Prompts: the nearest pair of the prompt bank, as at
inference; the bank and the mean prior (eq. 4) are computed from the training data before step 0.

``train='denoiser'`` trains only the learned 2D front end (:mod:`finephys_core.denoise2d`) on the same
items, supervised by their clean 2D: the mean per-joint distance in the lifter's units (the window's
scale) plus ``loss.denoiser_score`` × the binary cross-entropy of its score against
exp(−(distance / ``accurate_within``)²). A model with a front end (from ``init``) feeds every later phase
through it, frozen: the lifter trains on what it will see at inference.

The result is a pose model file (``pose_model.save_pose_model``) in the run folder; evaluation on a
held-out set (``eval.data``) at the end, written to ``eval.json``.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from torch import nn

from finephys_core.camera import bone_vectors, follow_athlete, fuse
from finephys_core.denoise2d import Denoiser2D, Denoiser2DConfig, denoise_2d
from finephys_core.lifting import ICLLifter, LifterConfig, mirror_averaged, normalise_2d
from finephys_core.physics import PhysNet, PhysNetConfig
from finephys_core.pose_model import (PoseModel, build_prompt_bank, load_pose_model, mean_prior_from_clips,
                                      prompt_features, save_pose_model)
from finephys_core.skeleton import H36M17
from training import common
from training.corruption import CorruptionConfig

DEFAULTS = {
    "seed": 0, "max_steps": 2000, "batch_size": 32, "lr": 1e-3, "weight_decay": 1e-4, "warmup": 100,
    "grad_clip": 1.0, "ckpt_every": 200, "log_every": 20,
    "windows": 2,                     # lifter windows per training item (PhysNet sees windows × W frames)
    "pool_size": 0,                   # > 0: draw that many items once and reuse them (see build_pool)
    "lifter": {}, "physnet": {}, "denoiser": {},
    "data": {"synth": {"path": "training/data/synth_train", "weight": 1.0}},
    "camera": {},                     # ranges of the random re-view cameras (training.synth_camera.CameraConfig)
    "corruption": {}, "severity": 1.0, "clean_fraction": 0.1, "flip_prob": 0.5,
    "score_gamma": 1.0,               # > 1: each item's 2D scores to a random power in [1/g, g] (see augment)
    "track_prob": 0.0,                # share of items seen by a camera that pans after the athlete (see augment)
    "front_end_in_pool": False,       # train='lifter' with a pool: augment and clean each item once (see
                                      # pool_through_front_end), not every batch; only the mirroring stays per batch
    "fuse_weight": 0.5,
    "loss": {"fused": 1.0, "noise": 1.0, "dd": 0.0, "pp": 0.0, "velocity": 0.0, "bone": 0.0, "norm": "squared",
             "denoiser_score": 0.1},
    "prompt_bank": 64, "prior_windows": 4000,
    "init": None,                     # a pose model file to start from
    "train": "all",                   # "all": lifter + PhysNet; "physnet": lifter frozen (needs init);
                                      # "lifter": PhysNet neither run nor trained, loss on S_dd only;
                                      # "denoiser": the 2D front end alone (init's, or new from "denoiser")
    "fresh_physnet": False,           # with init: a new PhysNet built from the "physnet" config
    "eval": {"data": None, "max_clips": 24},
    "output": "pose_model.safetensors",
    "stop_after": None,               # end after that many steps of this call (a simulated kill, for tests)
}


TRAIN_MODES = ("all", "lifter", "physnet", "denoiser")
LOSS_NORMS = ("squared", "l2")


class PoseStack(nn.Module):
    """Lifter + PhysNet (+ the 2D front end) as one module (one state dict for the checkpoints)."""

    def __init__(self, lifter: ICLLifter, physnet: PhysNet, denoiser: Denoiser2D | None = None):
        super().__init__()
        self.lifter, self.physnet, self.denoiser = lifter, physnet, denoiser

    def lift(self, prompt_2d, prompt_3d, query_2d, prior, windows: int):
        """query_2d (B, n·W, 17, 3); prompts (B·n, W, 17, 3), one per lifter window; prior (W, 17, 3)
        → S_dd (B, n·W, 17, 3)."""
        B = query_2d.shape[0]
        q = rearrange(query_2d, "b (n w) j c -> (b n) w j c", n=windows)
        s_dd = self.lifter(prompt_2d, prompt_3d, q, prior.expand(B * windows, -1, -1, -1))
        return rearrange(s_dd, "(b n) w j c -> b (n w) j c", b=B)

    def forward(self, prompt_2d, prompt_3d, query_2d, prior, dt, windows: int, s_dd=None, denoise=False):
        """:meth:`lift` then PhysNet on S_dd with steps dt (B,) → (S_dd, PhysNetOutput). A given ``s_dd``
        skips the lifter (frozen-lifter training); dt None skips PhysNet (lifter-only training: (S_dd, None)).
        ``denoise``: only the 2D front end on query_2d, per lifter window → (B, n·W, 17, 3).
        Training calls go through forward, not :meth:`lift`, so a DDP wrapper sees them."""
        if denoise:
            q = rearrange(query_2d, "b (n w) j c -> (b n) w j c", n=windows)
            return rearrange(self.denoiser(q), "(b n) w j c -> b (n w) j c", n=windows)
        if s_dd is None:
            s_dd = self.lift(prompt_2d, prompt_3d, query_2d, prior, windows)
        return s_dd, None if dt is None else self.physnet(s_dd, dt)


# ------------------------------------------------------------------------------------------------- data

def build_dataset(data_cfg: dict, window: int, corruption: CorruptionConfig | None, severity: float, seed: int,
                  camera: dict | None = None):
    """ClipWindows over the configured sources, re-viewed by cameras of ``camera`` (CameraConfig fields;
    empty: the training cameras); returns (dataset, per-item sampling weights)."""
    from training import datasets as D
    from training.synth_camera import CameraConfig

    sources, weights = [], []
    for name, spec in data_cfg.items():
        if not spec or not spec.get("weight", 1.0):
            continue
        kind = spec.get("type", name)  # several sources of one kind: {"synth_b": {"type": "synth", ...}}
        if kind == "synth":
            src = D.SynthSource(spec["path"])
        elif kind == "h36m":
            src = D.H36MSource(spec["path_3d"], spec.get("path_2d"), tuple(spec.get("subjects",
                               ("S1", "S5", "S6", "S7", "S8"))))
        elif kind == "amass":
            src = D.AMASSSource(spec["path"])
        elif kind == "finegym":
            src = D.FineGymSource(spec["path"])
        else:
            raise ValueError(f"unknown data source {name!r} (type {kind!r}); expected synth, h36m, amass or finegym")
        sources.append(src)
        weights.append(float(spec.get("weight", 1.0)))
    if not sources:
        raise ValueError("config 'data' names no source with a positive weight")
    ds = D.ClipWindows(sources, window=window, corruption=corruption, severity=severity, seed=seed,
                       camera=CameraConfig(**camera) if camera else None)
    clip_source = np.cumsum([0] + [len(s.clips) for s in sources])
    item_w = np.empty(len(ds))
    for i, (ci, _, _) in enumerate(ds.index):
        k = int(np.searchsorted(clip_source, ci, side="right") - 1)
        item_w[i] = weights[k]
    counts = np.bincount([int(np.searchsorted(clip_source, ci, side="right") - 1) for ci, _, _ in ds.index],
                         minlength=len(sources))
    for i, (ci, _, _) in enumerate(ds.index):  # each source's share = its weight, whatever its size
        item_w[i] /= counts[int(np.searchsorted(clip_source, ci, side="right") - 1)]
    return ds, item_w / item_w.sum()


def draw_batch(ds, probs: np.ndarray, size: int, rng: np.random.Generator, step: int, idx=None) -> dict:
    """A batch drawn with ``rng`` (or the given items); per-item randomness (camera, corruption) is keyed on
    the step, so a resumed run draws the same batches."""
    idx = rng.choice(len(ds), size=size, p=probs) if idx is None else idx
    ds.set_epoch(step)
    items = [ds[int(i)] for i in idx]
    out = {}
    for k in ("pose2d", "pose2d_clean", "pose3d", "valid"):
        out[k] = torch.stack([it[k] for it in items])
    out["dt"] = torch.tensor([it["dt"] for it in items], dtype=torch.float32)
    out["has_3d"] = torch.tensor([it["has_3d"] for it in items])
    return out


POOL_KEYS = ("pose2d", "pose2d_clean", "pose3d", "valid", "dt", "has_3d")


# What a cached pool's items depend on besides size and seed (what they are drawn from, how they are augmented
# once with front_end_in_pool, the model whose S_dd or front end is stored with them).
POOL_CONFIG_KEYS = ("data", "corruption", "severity", "camera", "windows", "lifter", "init", "train",
                    "front_end_in_pool", "clean_fraction", "score_gamma", "track_prob")


def pool_cache_path(out_dir: Path, cfg: dict) -> Path:
    """The run folder's pool file for ``cfg``: the name carries a digest of :data:`POOL_CONFIG_KEYS`, so a run
    resumed or repeated in the same folder with other data settings builds a new pool instead of silently
    training on the old one."""
    key = json.dumps({k: cfg.get(k) for k in POOL_CONFIG_KEYS}, sort_keys=True)
    return out_dir / f"pool-{cfg['pool_size']}-{cfg['seed']}-{hashlib.sha1(key.encode()).hexdigest()[:10]}.pt"


def build_pool(ds, probs: np.ndarray, size: int, seed: int, cache: Path | None = None) -> dict:
    """``size`` items drawn once (deterministically) and reused by :func:`pool_batch`: on a CPU the camera
    re-view and corruption of each item cost as much as a training step, so items are drawn once and reused
    a few times (with fresh flips and clean/corrupted choices). Cached in ``cache`` for resumed runs."""
    if cache is not None and cache.exists():
        return torch.load(cache)
    from tqdm.auto import tqdm

    rng = np.random.default_rng([seed, 0x9001])
    idx = rng.choice(len(ds), size=size, p=probs)
    chunks = []
    for c in tqdm(range(0, size, 256), desc="data pool", unit="x256"):
        chunks.append(draw_batch(ds, probs, 0, rng, 10 ** 6 + c, idx[c:c + 256]))
    pool = {k: torch.cat([ch[k] for ch in chunks]) for k in POOL_KEYS}
    if cache is not None:
        common.atomic_torch_save(cache, pool)
    return pool


FRONT_END_APPLIED = "front_end_applied"     # the mark of a pool cleaned by pool_through_front_end


def pool_through_front_end(pool: dict, denoiser: Denoiser2D, rng: np.random.Generator, cfg: dict,
                           batch: int = 256) -> dict:
    """The pool with each item's augmentations drawn once (clean 2D, score power, camera panning; no
    mirroring) and its 2D replaced by the frozen front end's output, so a lifter step no longer runs the front
    end. Mirroring can stay per batch: :func:`denoise_2d` is mirror-averaged, so cleaning a mirrored item
    gives exactly the mirrored clean item. The price: an item's other augmentations repeat on each reuse."""
    from tqdm.auto import tqdm

    pool = augment(dict(pool), rng, cfg["clean_fraction"], 0.0, cfg["score_gamma"], cfg["track_prob"])
    cleaned = []
    with torch.no_grad():
        for c in tqdm(range(0, len(pool["pose2d"]), batch), desc="front end over the pool", unit=f"x{batch}"):
            cleaned.append(denoise_2d(denoiser.eval(), pool["pose2d"][c:c + batch]))
    return {**pool, "pose2d": torch.cat(cleaned), FRONT_END_APPLIED: torch.ones(())}


def pool_batch(pool: dict, size: int, rng: np.random.Generator) -> dict:
    idx = torch.from_numpy(rng.integers(0, len(pool["dt"]), size))
    return {k: v[idx] for k, v in pool.items() if k != FRONT_END_APPLIED}


def augment(batch: dict, rng: np.random.Generator, clean_fraction: float, flip_prob: float,
            score_gamma: float = 1.0, track_prob: float = 0.0) -> dict:
    """Mirror some items left↔right (x → −x and joints swapped) and give some the clean 2D. With
    ``score_gamma`` > 1 every item's scores go to a power drawn log-uniformly from [1/score_gamma,
    score_gamma]: the order of the scores is kept, their calibration (which differs between detectors,
    and from our corruption model's) is not, so the lifter cannot lean on it. A ``track_prob`` share of
    the items is seen by a camera that pans after the athlete: a random fraction (uniform in [0, 1]) of
    the pelvis's travel across the image is taken out of every frame, so a lifter that reads the travel
    (``LifterConfig.trajectory``) cannot rely on the camera being static (broadcast footage pans)."""
    B = batch["pose2d"].shape[0]
    if track_prob > 0.0:
        follow = torch.from_numpy(rng.uniform(0.0, 1.0, B) * (rng.random(B) < track_prob))
        pelvis = batch["pose2d_clean"][..., :1, :2]                                     # (B, T, 1, 2)
        for k in ("pose2d", "pose2d_clean"):
            batch[k] = torch.cat([follow_athlete(batch[k][..., :2], pelvis, follow), batch[k][..., 2:]], -1)
    clean = torch.from_numpy(rng.random(B) < clean_fraction)
    batch["pose2d"] = torch.where(clean[:, None, None, None], batch["pose2d_clean"], batch["pose2d"])
    if score_gamma > 1.0:
        power = torch.from_numpy(score_gamma ** rng.uniform(-1.0, 1.0, B)).to(batch["pose2d"].dtype)
        xy, score = batch["pose2d"].split([2, 1], -1)
        batch["pose2d"] = torch.cat([xy, score.clamp_min(0.0) ** power[:, None, None, None]], -1)
    flip = torch.from_numpy(rng.random(B) < flip_prob)[:, None, None, None]
    for k in ("pose2d", "pose2d_clean", "pose3d"):
        batch[k] = torch.where(flip, H36M17.mirror(batch[k]), batch[k])
    return batch


def nearest_prompts(bank_2d: torch.Tensor, bank_3d: torch.Tensor, query_2d: torch.Tensor, windows: int = 1):
    """For each lifter window of the queries (B, n·W, 17, 3) the nearest bank pair, as inference chooses
    them (``pose_model.choose_prompts``): (prompt_2d, prompt_3d) each (B·n, W, 17, 3)."""
    q = rearrange(query_2d, "b (n w) j c -> (b n) w j c", n=windows)
    idx = torch.cdist(prompt_features(q), prompt_features(bank_2d)).argmin(-1)
    return bank_2d[idx], bank_3d[idx]


def prompt_bank_and_prior(ds, probs, size: int, n_windows: int, window: int, seed: int):
    """Eq. 4 mean prior and a prompt bank from clean training windows (2D = clean projection, score 1)."""
    rng = np.random.default_rng([seed, 0xBA7C])
    idx = rng.choice(len(ds), size=min(n_windows, len(ds)), replace=False, p=probs)
    ds.set_epoch(10 ** 9)   # an epoch no training step uses
    c2, c3 = [], []
    for i in idx:
        it = ds[int(i)]
        if it["has_3d"]:
            c2.append(it["pose2d_clean"][:window])
            c3.append(it["pose3d"][:window])
    c2, c3 = torch.stack(c2), torch.stack(c3)
    bank_2d, bank_3d = build_prompt_bank(c2, c3, size)
    return bank_2d, bank_3d, mean_prior_from_clips(c3)


# ------------------------------------------------------------------------------------------------ losses

def bone_variance(joints: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ over bones of the variance over valid frames of the bone's length, mean over clips (m²).
    Rigid limbs keep their length: a physical prior that needs no ground truth. joints (B,T,17,3), mask (B,T)."""
    length = bone_vectors(joints).norm(dim=-1)                                          # (B, T, 16)
    m = mask[..., None]
    n = m.sum(1).clamp_min(1.0)
    mean = (length * m).sum(1) / n
    return ((((length - mean[:, None]) ** 2) * m).sum(1) / n).sum(-1).mean()


def losses(stack: PoseStack, batch: dict, bank, prior, cfg: dict, windows: int) -> dict[str, torch.Tensor]:
    """Eq. 19 (+ the configured options) on a batch; with ``s_dd`` in the batch the lifter is skipped.
    With train='lifter' PhysNet is not run and the loss is eq. 19's pose error on S_dd alone."""
    gt = batch["pose3d"]
    mask = (batch["valid"] & batch["has_3d"][:, None]).float()          # (B, T)
    frames = mask.sum().clamp_min(1.0)

    def pose_error(x):  # Σ_j ‖x − S‖² (or Σ_j ‖x − S‖ with norm 'l2') averaged over valid frames
        d = ((x - gt) ** 2).sum(-1)
        if cfg["loss"]["norm"] == "l2":
            d = d.clamp_min(1e-12).sqrt()
        return (d.sum(-1) * mask).sum() / frames

    def mpjpe_mm(x):
        with torch.no_grad():
            return 1000 * ((x - gt).norm(dim=-1).mean(-1) * mask).sum() / frames

    if cfg["train"] == "denoiser":
        return denoiser_losses(stack(None, None, batch["pose2d"], None, None, windows, denoise=True),
                               batch, mask, cfg)
    if "s_dd" in batch:
        s_dd, out = stack(None, None, None, None, batch["dt"], windows, s_dd=batch["s_dd"])
    else:
        p2d, p3d = nearest_prompts(bank[0], bank[1], batch["pose2d"], windows)
        if cfg["train"] == "lifter":
            s_dd, _ = stack(p2d, p3d, batch["pose2d"], prior, None, windows)
            return {"loss": pose_error(s_dd), "mpjpe_dd_mm": mpjpe_mm(s_dd)}
        s_dd, out = stack(p2d, p3d, batch["pose2d"], prior, batch["dt"], windows)
    fused = fuse(s_dd, out.s_pp, cfg["fuse_weight"])
    w = cfg["loss"]
    parts = {"l3d": pose_error(fused), "noise": out.noise_loss / fused.shape[1]}
    loss = w["fused"] * parts["l3d"] + w["noise"] * parts["noise"]
    if w.get("dd"):
        parts["dd"] = pose_error(s_dd)
        loss = loss + w["dd"] * parts["dd"]
    if w.get("pp"):
        parts["pp"] = pose_error(out.s_pp)
        loss = loss + w["pp"] * parts["pp"]
    if w.get("bone"):
        parts["bone"] = bone_variance(s_dd, mask) + bone_variance(out.s_pp, mask)
        loss = loss + w["bone"] * parts["bone"]
    if w.get("velocity"):
        dt = batch["dt"][:, None, None, None]
        vm = mask[:, 1:] * mask[:, :-1]
        dv = (fused.diff(dim=1) - gt.diff(dim=1)) / dt
        parts["velocity"] = ((dv ** 2).sum((-1, -2)) * vm).sum() / vm.sum().clamp_min(1.0)
        loss = loss + w["velocity"] * parts["velocity"]
    parts["mpjpe_mm"], parts["mpjpe_dd_mm"] = mpjpe_mm(fused), mpjpe_mm(s_dd)
    return {"loss": loss, **parts}


def denoiser_losses(out: torch.Tensor, batch: dict, mask: torch.Tensor, cfg: dict) -> dict[str, torch.Tensor]:
    """The front end's loss (module docstring) for its output ``out`` (B, T, 17, 3) on ``batch``'s 2D;
    also the same distance for the detections as given (missing joints at the frame centre), for the log."""
    config = Denoiser2DConfig.from_dict(cfg["denoiser"])
    _, _, centre, scale = normalise_2d(batch["pose2d"], config.centre)
    clean = batch["pose2d_clean"][..., :2]
    dist = ((out[..., :2] - clean) / scale).norm(dim=-1)                               # (B, T, 17)
    seen = batch["pose2d"][..., 2:] > 0
    raw = ((torch.where(seen, batch["pose2d"][..., :2], centre) - clean) / scale).norm(dim=-1)
    target = torch.exp(-(dist.detach() / config.accurate_within) ** 2)
    bce = nn.functional.binary_cross_entropy(out[..., 2].clamp(1e-4, 1 - 1e-4), target, reduction="none")
    frames = mask.sum().clamp_min(1.0)
    per_frame = lambda x: (x.mean(-1) * mask).sum() / frames  # noqa: E731
    parts = {"distance": per_frame(dist), "score_bce": per_frame(bce)}
    with torch.no_grad():
        parts["distance_raw"] = per_frame(raw)
    return {"loss": parts["distance"] + cfg["loss"]["denoiser_score"] * parts["score_bce"], **parts}


def lift_pool(model: PoseModel, pool: dict, windows: int, batch: int = 64) -> torch.Tensor:
    """S_dd (N, n·W, 17, 3) of every pool item with a frozen lifter, lifted as inference lifts (through the
    model's 2D front end, nearest prompts, mirror-averaged: ``refine.lift_pose``'s default)."""
    from tqdm.auto import tqdm

    stack = PoseStack(model.lifter, model.physnet).eval()

    def lift(q):
        p2d, p3d = nearest_prompts(model.prompt_2d, model.prompt_3d, q, windows)
        return stack.lift(p2d, p3d, q, model.mean_prior, windows)
    with torch.no_grad():
        return torch.cat([mirror_averaged(lift, model.clean_2d(pool["pose2d"][c:c + batch]))
                          for c in tqdm(range(0, len(pool["dt"]), batch), desc="lifting the pool", unit=f"x{batch}")])


# ------------------------------------------------------------------------------------------------- stage

def build_models(cfg: dict) -> tuple[ICLLifter, PhysNet, Denoiser2D | None, PoseModel | None]:
    """From ``init`` (a pose model; ``fresh_physnet`` replaces its PhysNet by a new one of config
    ``physnet``) or new from the ``lifter`` and ``physnet`` configs; the 2D front end is init's, or with
    train='denoiser' and none in init a new one of config ``denoiser``."""
    init = None
    if cfg.get("init"):
        fresh = PhysNetConfig.from_dict(cfg["physnet"]) if cfg.get("fresh_physnet") else None
        init = load_pose_model(cfg["init"], physnet_config=fresh)
        lifter, physnet, denoiser = init.lifter, init.physnet, init.denoiser
    elif cfg["train"] == "physnet":
        raise ValueError("train='physnet' needs init=<a trained pose model> for its lifter")
    else:
        lifter = ICLLifter(LifterConfig.from_dict(cfg["lifter"]))
        physnet, denoiser = PhysNet(PhysNetConfig.from_dict(cfg["physnet"])), None
    if cfg["train"] == "denoiser" and denoiser is None:
        denoiser = Denoiser2D(Denoiser2DConfig.from_dict(cfg["denoiser"]))
    return lifter, physnet, denoiser, init


def evaluate_model(model: PoseModel, data_path, max_clips: int | None) -> dict:
    """Held-out figures (finephys_core.bench.physics) on a synthetic shard folder or a bench .npz."""
    from finephys_core.bench import physics as bench

    path = Path(data_path)
    clips = bench.load_heldout(path)[:max_clips] if path.suffix == ".npz" else bench.clips_from_shards(path, max_clips)
    fps_list = sorted({int(round(float(c["fps"]))) for c in clips})
    result = bench.evaluate(model, clips, fps_list)
    return {"results": result, "targets": bench.targets(result)}


def run(config: dict, args) -> dict:
    cfg = common.merge_config(DEFAULTS, config)
    if cfg["train"] not in TRAIN_MODES:
        raise ValueError(f"train must be one of {TRAIN_MODES}; got {cfg['train']!r}")
    if cfg["loss"]["norm"] not in LOSS_NORMS:
        raise ValueError(f"loss.norm must be one of {LOSS_NORMS}; got {cfg['loss']['norm']!r}")
    if not cfg["score_gamma"] >= 1.0:
        raise ValueError(f"score_gamma must be ≥ 1 (1 = off; g: powers from 1/g to g); got {cfg['score_gamma']!r}")
    if not 0.0 <= cfg["track_prob"] <= 1.0:
        raise ValueError(f"track_prob must be a share between 0 and 1; got {cfg['track_prob']!r}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=1))
    t0 = time.time()
    common.seed_everything(cfg["seed"])          # model initialisation
    lifter, physnet, denoiser, init = build_models(cfg)
    if denoiser is not None:  # init's front end may differ from the config's
        cfg["denoiser"] = denoiser.config.to_dict()
    W, n = lifter.config.window, int(cfg["windows"])
    corruption = CorruptionConfig(**cfg["corruption"]) if cfg["corruption"] is not None else None
    ds, probs = build_dataset(cfg["data"], W * n, corruption, cfg["severity"], cfg["seed"], cfg["camera"])
    if init is not None:  # the lifter was trained with these prompts and prior: keep them
        bank_2d, bank_3d, prior = init.prompt_2d, init.prompt_3d, init.mean_prior
    else:
        bank_2d, bank_3d, prior = prompt_bank_and_prior(ds, probs, cfg["prompt_bank"], cfg["prior_windows"], W,
                                                        cfg["seed"])
    pool = None
    if cfg["pool_size"]:
        cache = pool_cache_path(out_dir, cfg)
        pool = build_pool(ds, probs, int(cfg["pool_size"]), cfg["seed"], cache)
    stack = PoseStack(lifter, physnet, denoiser)
    trained = {"all": (lifter, physnet), "lifter": (lifter,), "physnet": (physnet,), "denoiser": (denoiser,)}
    for p in stack.parameters():
        p.requires_grad_(False)
    params = [p for m in trained[cfg["train"]] for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    front_end_in_pool = bool(cfg["front_end_in_pool"])
    if front_end_in_pool:
        if cfg["train"] != "lifter" or pool is None or denoiser is None:
            raise ValueError("front_end_in_pool needs train='lifter', pool_size > 0 and a model with a 2D front end")
        if FRONT_END_APPLIED not in pool:
            pool = pool_through_front_end(pool, denoiser, np.random.default_rng([cfg["seed"], 0xF207]), cfg)
            common.atomic_torch_save(cache, pool)
    if cfg["train"] == "physnet":  # frozen lifter: S_dd computed once per pool item
        if pool is None:
            raise ValueError("train='physnet' needs pool_size > 0 (S_dd is cached per pool item)")
        if "s_dd" not in pool:
            pool["s_dd"] = lift_pool(PoseModel(lifter, physnet, bank_2d, bank_3d, prior, denoiser=denoiser), pool, n)
            common.atomic_torch_save(cache, pool)
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])

    def step_fn(step: int, ctx: common.TrainContext):
        size = cfg["batch_size"] * ctx.world      # batch_size is per process
        batch = ctx.shard(pool_batch(pool, size, ctx.rng) if pool is not None
                          else draw_batch(ds, probs, size, ctx.rng, step))
        if front_end_in_pool:  # augmented and cleaned once per item: only the mirroring is left
            batch = augment(batch, ctx.rng, 0.0, cfg["flip_prob"])
        elif "s_dd" not in batch:
            batch = augment(batch, ctx.rng, cfg["clean_fraction"], cfg["flip_prob"], cfg["score_gamma"],
                            cfg["track_prob"])
        batch = {k: v.to(ctx.device) for k, v in batch.items()}
        if denoiser is not None and cfg["train"] != "denoiser" and "s_dd" not in batch and not front_end_in_pool:
            with torch.no_grad():
                batch["pose2d"] = denoise_2d(denoiser.eval(), batch["pose2d"])
        return losses(ctx.extra["model"], batch, (bank_2d.to(ctx.device), bank_3d.to(ctx.device)),
                      prior.to(ctx.device), cfg, n)

    ctx = common.train_from_config(stack, opt, step_fn, cfg, out_dir=out_dir, resume=args.resume, stage=2)
    if cfg["stop_after"]:
        return {"stopped_at": ctx.extra["step"]}
    train_s = time.time() - t0
    model = PoseModel(lifter, physnet, bank_2d, bank_3d, prior,
                      {"trained": True, "stage": 2, "steps": int(cfg["max_steps"]), "config": cfg,
                       "train_seconds": round(train_s, 1)}, denoiser).eval()
    for p in stack.parameters():
        p.requires_grad_(True)
    path = save_pose_model(model, out_dir / cfg["output"])
    report = {"weights": str(path), "train_seconds": round(train_s, 1)}
    if cfg["eval"].get("data"):
        report["eval"] = evaluate_model(model, cfg["eval"]["data"], cfg["eval"].get("max_clips"))
        common.atomic_write_bytes(out_dir / "eval.json", json.dumps(report, indent=1).encode())
    print(json.dumps({k: v for k, v in report.items() if k != "eval"} |
                     {"targets": report.get("eval", {}).get("targets")}))
    return report
