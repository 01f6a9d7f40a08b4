"""The main job on the embedded default: refine a short shipped gymnastics clip and write previews.

    python -m finephys_core.demo [--out output/demo] [--input POSE2D.npz] [--weights W.safetensors]

Input: a 2D pose file in the CLI's refine format (default: ``data/sample_salto_2d.npz``, a physics-simulated
stretched salto with twists whose 2D went through the detector-noise model — what DetectPose2D gives on a
gymnastics video; remade by ``training/make_sample.py``). Runs :func:`refine.refine_pose2d` with the default
pose model (the shipped weights; without them an untrained model, loudly) and writes to ``--out``:

- ``refined.npz``: the CLI refine output (pose3d_dd, pose3d_pp, pose3d, pose2d_reproj, scores, image_size,
  fps, layout, camera);
- ``preview.mp4`` (or ``.webp`` / ``.gif`` where OpenCV has no mp4 encoder): per frame, the detected 2D |
  the refined pose reprojected to 2D | the fused 3D pose seen from the front and the side;
- ``preview.png``: a contact sheet, rows = those four views, columns = 8 moments of the clip.

With ground truth (the shipped sample has it, or ``--gt``) it prints MPJPE etc. of S_dd, S_pp and the fused
pose. User errors print one line on stderr and exit with code 2 (``FINEPHYS_DEBUG=1`` shows the traceback).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from . import metrics
from .refine import refined_arrays
from .sequence import Pose2D, Pose3D, PoseError, load_pose, write_npz

DATA = Path(__file__).resolve().parent / "data"
SAMPLE_2D = DATA / "sample_salto_2d.npz"
SAMPLE_GT = DATA / "sample_salto_gt3d.npz"
EXIT_USER_ERROR = 2
PANEL = 256                       # px, each view is PANEL × PANEL
SHEET_FRAMES = 8
VIEW_LABELS = ("detected 2D (input)", "refined, reprojected 2D", "fused 3D: front", "fused 3D: side")
TABLE_FIELDS = ("mpjpe", "pa_mpjpe", "accel_error", "bone_std")


# ----------------------------------------------------------------------------- input and output files

def load_input(path: str | Path) -> Pose2D:
    """A 2D pose file (CLI refine input ``.npz`` or a saved Pose2D ``.npz``/``.json``); PoseError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise PoseError(f"input not found: {path} (give a 2D pose .npz: keypoints (T,17,2) px, scores (T,17), "
                        "image_size [W,H], layout, fps — what `python -m finephys_core detect` writes)")
    try:
        pose = load_pose(path)
    except PoseError as e:
        raise PoseError(f"{path.name} is not a usable 2D pose file: {e}") from None
    if not isinstance(pose, Pose2D):
        raise PoseError(f"{path.name} holds a 3D pose; the demo refines 2D keypoints")
    return pose


def load_ground_truth(path: str | Path, num_frames: int) -> Pose3D:
    gt = load_pose(path)
    if not isinstance(gt, Pose3D) or gt.num_frames != num_frames:
        frames = gt.num_frames if isinstance(gt, Pose3D) else "no 3D"
        raise PoseError(f"ground truth {Path(path).name} must be a 3D pose with {num_frames} frames; got {frames}")
    return gt


# ----------------------------------------------------------------------------- pictures

def crop_box(*poses: Pose2D, margin: float = 0.15) -> tuple[float, float, float]:
    """A square (x0, y0, side) in image pixels holding the seen joints of all frames of ``poses``.

    Each pose's per-frame extents of its confident joints are reduced to their 5th / 95th percentile over
    time, so a few wild frames (a detector locked onto someone else) do not shrink the athlete to a dot."""
    los, his = [], []
    for p in poses:
        seen = p.scores > 0.3
        frames = seen.sum(-1) >= 3
        if not frames.any():
            continue
        kp = np.where(seen[..., None], p.keypoints, np.nan)[frames]
        los.append(np.percentile(np.nanmin(kp, axis=1), 5, axis=0))
        his.append(np.percentile(np.nanmax(kp, axis=1), 95, axis=0))
    if not los:
        W, H = poses[0].image_size
        return 0.0, 0.0, float(max(W, H))
    lo, hi = np.min(los, axis=0), np.max(his, axis=0)
    side = float((hi - lo).max()) * (1 + 2 * margin) + 1.0
    centre = (lo + hi) / 2
    return float(centre[0] - side / 2), float(centre[1] - side / 2), side


def _in_box(pose: Pose2D, box: tuple[float, float, float]) -> Pose2D:
    x0, y0, side = box
    size = max(1, int(round(side)))
    return replace(pose, keypoints=pose.keypoints - np.array([x0, y0], np.float32), image_size=(size, size))


def _label(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.45) -> None:
    """White text with a dark outline, in place (img float 0..1 or uint8)."""
    hi = 1.0 if img.dtype != np.uint8 else 255
    for color, thick in (((0, 0, 0), 3), ((hi, hi, hi), 1)):
        cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, thick, cv2.LINE_AA)


def frame_views(pose2d: Pose2D, res, t: int, box, preview3d: np.ndarray, size: int = PANEL) -> list[np.ndarray]:
    """The four labelled (size, size, 3) uint8 RGB views of frame t (labels as :data:`VIEW_LABELS`)."""
    from .render import render_skeleton

    one = slice(t, t + 1)
    views = []
    for pose in (pose2d.to_h36m(), res.reprojected):
        framed = _in_box(replace(pose, keypoints=pose.keypoints[one], scores=pose.scores[one]), box)
        views.append(render_skeleton(framed, size=(size, size), fit="stretch")[0].numpy())
    views += [preview3d[t, :, :size], preview3d[t, :, size:2 * size]]
    out = []
    for img, text in zip(views, VIEW_LABELS):
        img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
        _label(img, text, (6, 18))
        out.append(img)
    return out


def compose_frame(views: list[np.ndarray], t: int, fps: float, num_frames: int) -> np.ndarray:
    """Views side by side (a grey line between them) with a time stamp: (size, 4·size, 3) uint8 RGB."""
    row = np.concatenate(views, axis=1)
    row[:, [i * views[0].shape[1] for i in range(1, len(views))]] = 90
    _label(row, f"frame {t + 1}/{num_frames}  t = {t / fps:.2f} s", (6, row.shape[0] - 8))
    return row


SHEET_HEADER = 48   # px above the views: a title line and the time stamps


def contact_sheet(columns: list[list[np.ndarray]], times: list[float], title: str = "") -> np.ndarray:
    """Rows = views, columns = moments: (SHEET_HEADER + 4·size, n·size, 3) uint8 RGB, with a title line."""
    size = columns[0][0].shape[0]
    top = SHEET_HEADER
    sheet = np.zeros((top + len(columns[0]) * size, len(columns) * size, 3), np.uint8)
    _label(sheet, title, (6, 18), 0.5)
    for c, (views, t) in enumerate(zip(columns, times)):
        x = c * size
        _label(sheet, f"t = {t:.2f} s", (x + 6, top - 8), 0.5)
        for r, v in enumerate(views):
            sheet[top + r * size:top + (r + 1) * size, x:x + size] = v
        if c:
            sheet[top:, x] = 90
    return sheet


def write_video(frames: list[np.ndarray], fps: float, out_dir: Path) -> Path | None:
    """``preview.mp4`` via OpenCV (mp4v); where that encoder is missing an animated ``preview.webp`` (or
    ``.gif``) via Pillow. Returns the path, or None when nothing could write a video."""
    h, w = frames[0].shape[:2]
    path = out_dir / "preview.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
    if writer.isOpened():
        for f in frames:
            writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
        writer.release()
        if path.is_file() and path.stat().st_size > 0:
            return path
    try:
        from PIL import Image
    except ImportError:
        return None
    images = [Image.fromarray(f) for f in frames]
    for suffix in (".webp", ".gif"):
        path = out_dir / f"preview{suffix}"
        try:
            images[0].save(path, save_all=True, append_images=images[1:], duration=int(round(1000 / fps)), loop=0)
            return path
        except (OSError, ValueError, KeyError):
            continue
    return None


def render_previews(pose2d: Pose2D, res, out_dir: Path, size: int = PANEL, progress: bool = True,
                    title: str = "") -> dict:
    """Write the preview video and the contact sheet (headed by ``title``); returns {'video', 'sheet'}."""
    from .render import render_pose3d_preview

    T, fps = pose2d.num_frames, pose2d.fps
    size = max(2, int(size)) // 2 * 2          # video encoders want even frame sizes
    box = crop_box(pose2d.to_h36m(), res.reprojected)
    preview3d = render_pose3d_preview(res.fused, size=(size, 2 * size)).numpy()
    picks = set(np.linspace(0, T - 1, min(SHEET_FRAMES, T)).round().astype(int).tolist())
    frames, columns = [], []
    steps = range(T)
    if progress:
        from tqdm import tqdm
        steps = tqdm(steps, desc="rendering preview", unit="frame", file=sys.stderr)
    for t in steps:
        views = frame_views(pose2d, res, t, box, preview3d, size)
        frames.append(compose_frame(views, t, fps, T))
        if t in picks:
            columns.append(views)
    sheet_path = out_dir / "preview.png"
    sheet = contact_sheet(columns, [t / fps for t in sorted(picks)], title)
    if not cv2.imwrite(str(sheet_path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {sheet_path}")
    return {"video": write_video(frames, fps, out_dir), "sheet": sheet_path}


# ----------------------------------------------------------------------------- figures

def accuracy_table(res, gt: Pose3D) -> str:
    """S_dd / S_pp / fused against the ground truth, root-relative, mm."""
    truth = gt.joints - gt.joints[:, :1]
    lines = [f"{'vs ground truth (mm)':<22}" + "".join(f"{f:>12}" for f in TABLE_FIELDS)]
    for name, pose in (("S_dd (lifted)", res.dd), ("S_pp (PhysNet)", res.pp), ("fused", res.fused)):
        m = metrics.pose_metrics(pose.joints - pose.joints[:, :1], truth)
        lines.append(f"{name:<22}" + "".join(f"{m[f]:>12.1f}" for f in TABLE_FIELDS))
    lines.append(f"{'ground truth':<22}{'':>36}{metrics.bone_length_std(truth) * 1000:>12.1f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the job

def run_demo(input_path: str | Path = SAMPLE_2D, out_dir: str | Path = "output/demo", weights: str | None = None,
             gt_path: str | Path | None = None, size: int = PANEL, progress: bool = True,
             fit_2d: int | None = None) -> dict:
    """Refine one 2D clip and write refined.npz + previews into ``out_dir``; returns paths, figures, timings.
    ``fit_2d``: iterations of the fused pose's fit to the 2D (None: :data:`camera.DEFAULT_FIT_2D_ITERS`)."""
    from .camera import DEFAULT_FIT_2D_ITERS
    from .pose_model import DEFAULT_WEIGHTS, default_pose_model, load_pose_model
    from .refine import refine_pose2d

    times = {}
    t0 = time.perf_counter()
    pose2d = load_input(input_path)
    if gt_path is None and Path(input_path).resolve() == SAMPLE_2D.resolve() and SAMPLE_GT.is_file():
        gt_path = SAMPLE_GT
    gt = load_ground_truth(gt_path, pose2d.num_frames) if gt_path is not None else None
    model = load_pose_model(weights) if weights else default_pose_model()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    times["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    res = refine_pose2d(pose2d, model, fit_2d=DEFAULT_FIT_2D_ITERS if fit_2d is None else fit_2d)
    refined = write_npz(out_dir / "refined.npz", refined_arrays(pose2d, res))
    times["refine"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    title = (f"FinePhys pose refinement of {Path(input_path).name} ({pose2d.num_frames} frames, {pose2d.fps:g} fps)"
             f" - {'weights ' + Path(weights or DEFAULT_WEIGHTS).name if model.trained else 'UNTRAINED MODEL'}")
    previews = render_previews(pose2d, res, out_dir, size, progress, title)
    times["render"] = time.perf_counter() - t0
    return {"pose2d": pose2d, "result": res, "refined": refined, **previews, "times": times,
            "trained": model.trained, "weights": weights or (DEFAULT_WEIGHTS if model.trained else None),
            "table": accuracy_table(res, gt) if gt is not None else None}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m finephys_core.demo",
                                description="Refine a short gymnastics clip (the shipped sample by default) "
                                            "and write refined poses, a preview video and a contact sheet.")
    p.add_argument("--out", default="output/demo", help="output folder (default: output/demo)")
    p.add_argument("--input", default=str(SAMPLE_2D),
                   help="2D pose .npz (keypoints, scores, image_size, layout, fps; default: the shipped sample)")
    p.add_argument("--weights", help="pose model .safetensors (default: the shipped weights)")
    p.add_argument("--gt", help="ground-truth 3D pose file for the figures (automatic for the shipped sample)")
    p.add_argument("--size", type=int, default=PANEL, help=f"pixels per view (default {PANEL})")
    p.add_argument("--fit-2d", type=int, default=None, metavar="ITERS",
                   help="iterations of the fused pose's fit to the 2D (default: camera.DEFAULT_FIT_2D_ITERS; 0 = "
                        "the paper's fusion)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _report(out: dict) -> str:
    pose2d, t = out["pose2d"], out["times"]
    model = (f"weights {out['weights']}" if out["trained"]
             else "UNTRAINED model (no shipped weights found): the 3D poses are meaningless")
    lines = [f"refined {pose2d.num_frames} frames ({pose2d.num_frames / pose2d.fps:.1f} s at {pose2d.fps:g} fps) "
             f"with the {model}",
             f"  refined poses  {out['refined']}",
             f"  preview video  {out['video'] or '(not written: no mp4 encoder in OpenCV and no Pillow)'}",
             f"  contact sheet  {out['sheet']}"]
    if out["table"]:
        lines += ["", out["table"]]
    lines.append(f"\ntime: load {t['load']:.1f} s, refine {t['refine']:.1f} s, render {t['render']:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m finephys_core.demo`` (and ``python -m finephys_core demo``).

    Returns 0; user errors (bad input or weights) print ``error: ...`` on stderr and raise SystemExit(2)."""
    args = build_parser().parse_args(argv)
    if args.size < 64:
        build_parser().error(f"--size must be at least 64 pixels; got {args.size}")
    try:
        out = run_demo(args.input, args.out, args.weights, args.gt, args.size, not args.no_progress, args.fit_2d)
    except (ValueError, OSError) as e:  # PoseError, WeightsError, FileNotFoundError
        if os.environ.get("FINEPHYS_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
    print(_report(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
