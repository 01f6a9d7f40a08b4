"""``python -m finephys_core.bench pose``: wall time of lift + PhysNet + fuse (refine_pose2d) per clip.

Default model (shipped weights, else the untrained seed-0 init: same size, same cost), clips of 16, 64 and
256 frames of a synthetic moving 2D skeleton; warm-up runs, then the median (and min) of ``--runs`` runs,
with the per-stage split and this process's CPU time. refine_pose2d runs with its default of one torch
thread (``--refine-threads``); the machine's thread count (torch's default, or ``--threads``) is timed
alongside as ``ms_per_clip_torch_threads``. ``fit2d_ms``: the fuse step with the nodes' and CLI's test-time
fit to the 2D (:data:`camera.DEFAULT_FIT_2D_ITERS` iterations), which the library's default leaves out.
Last line: one JSON object (``ms_per_clip``, ``ratio_256_over_16``, parameter counts, ...).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import numpy as np
import torch

from ..camera import DEFAULT_FIT_2D_ITERS, fuse_poses
from ..physics import refine_pose3d
from ..pose_model import default_pose_model
from ..refine import lift_pose, refine_pose2d, torch_threads
from ..sequence import Pose2D

LENGTHS = (16, 64, 256)


def synthetic_clip(T: int, seed: int = 0) -> Pose2D:
    """A 2D skeleton drifting and swaying across a 1280×720 frame, with jittered scores."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(-60, 60, (17, 2)) + np.array([640.0, 360.0])
    t = np.arange(T)[:, None, None] / 25.0
    kp = base + 40 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6, (1, 17, 1))) + np.concatenate(
        [60 * t, np.zeros_like(t)], -1)
    return Pose2D(kp, rng.uniform(0.5, 1.0, (T, 17)), (1280, 720), 25.0, "coco17")


def _time(fn, runs: int, cpu: list | None = None) -> list[float]:
    """Wall ms per run; ``cpu`` (if given) collects this process's CPU ms per run (robust to a busy machine)."""
    out = []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
        if cpu is not None:
            cpu.append((time.process_time() - c0) * 1e3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m finephys_core.bench pose")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--refine-threads", type=int, default=1,
                    help="threads refine_pose2d uses (its default 1); 0 = torch's setting")
    ap.add_argument("--weights", default=None, help="a pose model file instead of the default")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if args.weights:
            from ..pose_model import load_pose_model
            model = load_pose_model(args.weights)
        else:
            model = default_pose_model()
    for w in caught:
        print(f"note: {w.message}")
    params = model.num_parameters()
    result = {"ms_per_clip": {}, "ms_per_clip_min": {}, "cpu_ms_per_clip": {}, "stages_ms": {},
              "ms_per_clip_torch_threads": {}, "fit2d_ms": {}}
    nt = args.refine_threads or None
    run = lambda clip, n=nt: refine_pose2d(clip, model, num_threads=n)  # noqa: E731
    front = f"2D front end {params['denoiser']:,}, " if "denoiser" in params else "no 2D front end, "
    print(f"threads {torch.get_num_threads()}, {front}lifter {params['lifter']:,} params, "
          f"PhysNet {params['physnet']:,} params, trained weights: {model.trained}")
    print(f"{'frames':>6} {'median ms':>10} {'min ms':>8} {'cpu ms':>8} {'lift':>7} {'physnet':>8} {'fuse':>7} "
          f"{'ms, ' + str(torch.get_num_threads()) + ' thr':>10} {'fuse+fit2d':>10}")
    for T in LENGTHS:
        clip = synthetic_clip(T)
        for _ in range(args.warmup):
            run(clip)
        cpu: list[float] = []
        total = _time(lambda: run(clip), args.runs, cpu)
        with torch_threads(nt):
            dd = lift_pose(clip, model, num_threads=None)
            pp = refine_pose3d(dd, model.physnet)
            split = {"lift": statistics.median(_time(lambda: lift_pose(clip, model, num_threads=None), args.runs)),
                     "physnet": statistics.median(_time(lambda: refine_pose3d(dd, model.physnet), args.runs)),
                     "fuse": statistics.median(_time(lambda: fuse_poses(dd, pp, clip), args.runs))}
            fit2d = statistics.median(_time(lambda: fuse_poses(dd, pp, clip, fit_2d=DEFAULT_FIT_2D_ITERS),
                                            max(1, args.runs // 4)))
        run(clip, None)
        all_threads = statistics.median(_time(lambda: run(clip, None), max(3, args.runs // 2)))
        result["ms_per_clip_torch_threads"][str(T)] = round(all_threads, 2)
        med = statistics.median(total)
        result["ms_per_clip"][str(T)] = round(med, 2)
        result["ms_per_clip_min"][str(T)] = round(min(total), 2)
        result["cpu_ms_per_clip"][str(T)] = round(statistics.median(cpu), 2)
        result["stages_ms"][str(T)] = {k: round(v, 2) for k, v in split.items()}
        result["fit2d_ms"][str(T)] = round(fit2d, 2)
        print(f"{T:>6} {med:>10.1f} {min(total):>8.1f} {statistics.median(cpu):>8.1f} {split['lift']:>7.1f} "
              f"{split['physnet']:>8.1f} "
              f"{split['fuse']:>7.1f} {all_threads:>10.1f} {fit2d:>10.1f}")
    ms = result["ms_per_clip"]
    result.update(ratio_256_over_16=round(ms["256"] / ms["16"], 2),
                  target_ms_16=50.0, meets_target_16=ms["16"] <= 50.0,
                  meets_linear=ms["256"] <= 16 * ms["16"], threads=torch.get_num_threads(),
                  refine_threads=nt or torch.get_num_threads(),
                  params=params, trained=model.trained, runs=args.runs,
                  lifter_config=model.lifter.config.to_dict())
    print(f"256/16 ratio {result['ratio_256_over_16']} (linear target ≤ 16)")
    print(json.dumps(result))
    return 0
