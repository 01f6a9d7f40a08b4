"""Regenerate the demo's shipped sample: one physics-simulated salto with detector-corrupted 2D.

    python training/make_sample.py            # writes finephys_core/data/sample_salto_{2d,gt3d}.npz

The motion comes from training/synth.py (MuJoCo; needs the training extras) with the held-out camera set
and a seed no training, validation or benchmark set uses (those use seed·1_000_003 + i for seeds 0, 1, 2
and 7, and 9_000_000 + i); its 2D goes through training/corruption.py at severity 1 (the FineGym-like
default), as DetectPose2D would see a real gymnastics video. Deterministic given the constants below.

Outputs (small, uncompressed-array ``.npz``):
- ``sample_salto_2d.npz``: the CLI's refine input — keypoints (T,17,2) px, scores (T,17), image_size [W,H],
  layout 'h36m17', fps — plus ``description``.
- ``sample_salto_gt3d.npz``: the ground truth as a pose file ``load_pose`` reads (kind 'pose3d', joints
  (T,17,3) metres root-relative camera frame, source 'gt', fps, image_size, meta) plus ``keypoints_2d``
  (clean projection, px), ``flight`` (T,) and ``K`` (3,3).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the pack importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finephys_core.sequence import Pose3D, pose_to_dict  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "finephys_core" / "data"
SAMPLE_SEED = 8_000_000
SAMPLE_CLASS = "layout_twist"
SAMPLE_FPS = 50
SEVERITY = 1.0
CAMERA_SEED = 0x5A3      # the view's rng stream: np.random.default_rng([seed, CAMERA_SEED])
CORRUPTION_SEED = 0xC07  # the detector noise: np.random.default_rng([seed, CORRUPTION_SEED])


def make_clip(seed: int = SAMPLE_SEED, cls: str = SAMPLE_CLASS, fps: int = SAMPLE_FPS,
              severity: float = SEVERITY) -> dict:
    """Simulate, view through a held-out camera, corrupt; returns the synth clip plus det_keypoints/scores."""
    from training import synth
    from training.corruption import corrupt_2d

    cfg = synth.SynthConfig(camera=synth.CAMERA_SETS["heldout"])
    sim = synth.simulate_motion(seed, cls, cfg)
    clip = synth.render_view(sim, np.random.default_rng([seed, CAMERA_SEED]), fps, cfg.camera)
    clip["det_keypoints"], clip["det_scores"] = corrupt_2d(
        clip["keypoints_2d"], None, clip["image_size"], np.random.default_rng([seed, CORRUPTION_SEED]),
        severity=severity, fps=float(fps))
    clip["severity"] = severity
    return clip


def sample_arrays(clip: dict) -> tuple[dict, dict]:
    """(2D input arrays, ground-truth arrays) of a clip from :func:`make_clip`."""
    size = [int(v) for v in clip["image_size"]]
    what = (f"{clip['cls']} (synthetic, MuJoCo), seed {clip['seed']}, {clip['fps']:g} fps, held-out camera; "
            f"2D from training/corruption.py at severity {clip['severity']:g}; made by training/make_sample.py")
    pose2d = {"keypoints": clip["det_keypoints"].astype(np.float32), "scores": clip["det_scores"].astype(np.float32),
              "image_size": np.asarray(size, np.int64), "layout": np.asarray("h36m17"),
              "fps": np.asarray(clip["fps"], np.float64), "description": np.asarray(what)}
    gt = Pose3D(clip["joints_cam_rel"], fps=float(clip["fps"]), source="gt", image_size=tuple(size),
                meta={"cls": clip["cls"], "seed": int(clip["seed"]), "description": what})
    d = pose_to_dict(gt)
    gt_arrays = {k: np.asarray(json.dumps(v) if isinstance(v, dict) else v) for k, v in d.items()}
    gt_arrays["joints"] = gt.joints.astype(np.float32)
    gt_arrays.update(keypoints_2d=clip["keypoints_2d"].astype(np.float32), flight=clip["flight"].astype(bool),
                     K=clip["K"].astype(np.float32))
    return pose2d, gt_arrays


def write_sample(out_dir: Path = DATA, **kwargs) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pose2d, gt = sample_arrays(make_clip(**kwargs))
    paths = out_dir / "sample_salto_2d.npz", out_dir / "sample_salto_gt3d.npz"
    for path, arrays in zip(paths, (pose2d, gt)):
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        tmp.replace(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(DATA), help="output folder (default: the pack's data folder)")
    ap.add_argument("--seed", type=int, default=SAMPLE_SEED)
    ap.add_argument("--cls", default=SAMPLE_CLASS)
    ap.add_argument("--fps", type=int, default=SAMPLE_FPS)
    ap.add_argument("--severity", type=float, default=SEVERITY)
    a = ap.parse_args(argv)
    for p in write_sample(Path(a.out), seed=a.seed, cls=a.cls, fps=a.fps, severity=a.severity):
        print(f"{p} ({p.stat().st_size / 1024:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
