"""Command line (stable interface, used by users and the benchmarks)::

    python -m finephys_core refine IN.npz -o OUT.npz [--weights W.safetensors] [--fps F]
                                                     [--fuse-weight W] [--stride S]
                                                     [--bones constant|free] [--fit-2d ITERS]
                                                     [--static-camera]
    python -m finephys_core detect VIDEO -o POSE2D.npz [--mode balanced] [--model-dir DIR] [--stride N]
    python -m finephys_core demo [--out output/demo]   (the shipped sample, with preview video and images)

IN.npz (what ``detect`` writes): keypoints (T,17,2) float pixels, scores (T,17) (0 = missing),
image_size [W,H], layout ('h36m17' or 'coco17'), fps.
OUT.npz: pose3d_dd, pose3d_pp, pose3d (fused) — (T,17,3) metres, root-relative, camera frame
(x right, y down, z forward) — pose2d_reproj (T,17,2) pixels, plus scores (T,17) (the detected ones, H36M
order), image_size, fps, layout ('h36m17') and camera (JSON of the fitted camera).

User errors (bad input, missing or wrong weights files) print one line on stderr and exit with code 2;
set FINEPHYS_DEBUG=1 to see the traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

EXIT_USER_ERROR = 2


def pose2d_arrays(pose) -> dict:
    """A Pose2D as the CLI's input format."""
    arrays = {"keypoints": pose.keypoints.astype(np.float32), "scores": pose.scores.astype(np.float32),
              "image_size": np.asarray(pose.image_size, np.int64), "layout": np.asarray(pose.layout),
              "fps": np.asarray(pose.fps, np.float64)}
    return arrays | ({} if pose.camera_motion is None else {"camera_motion": pose.camera_motion})


def _load_input(path: Path, fps: float | None):
    from .sequence import Pose2D, PoseError, load_pose

    if path.suffix != ".npz":
        raise PoseError(f"refine reads a .npz file (keypoints, scores, image_size, layout, fps); got {path.name}")
    pose = load_pose(path)
    if not isinstance(pose, Pose2D):
        raise PoseError(f"{path.name} holds a 3D pose; refine needs 2D keypoints")
    return replace(pose, fps=fps) if fps is not None else pose


def cmd_refine(args) -> int:
    from .camera import DEFAULT_FIT_2D_ITERS, DEFAULT_FUSE_WEIGHT
    from .gravity import STATIC_CAMERA_GRAVITY_WEIGHT
    from .pose_model import default_pose_model, load_pose_model
    from .refine import refine_pose2d, refined_arrays
    from .sequence import write_npz

    pose2d = _load_input(Path(args.input), args.fps)
    model = load_pose_model(args.weights) if args.weights else default_pose_model()
    fuse_weight = DEFAULT_FUSE_WEIGHT if args.fuse_weight is None else args.fuse_weight
    fit_2d = DEFAULT_FIT_2D_ITERS if args.fit_2d is None else args.fit_2d
    res = refine_pose2d(pose2d, model, fuse_weight=fuse_weight, frame_stride=args.stride, bones=args.bones,
                        fit_2d=fit_2d, gravity_weight=STATIC_CAMERA_GRAVITY_WEIGHT if args.static_camera else 0.0)
    write_npz(args.output, refined_arrays(pose2d, res))
    print(f"refined {pose2d.num_frames} frames → {args.output}"
          f"{'' if model.trained else ' (UNTRAINED weights)'}", file=sys.stderr)
    return 0


def cmd_detect(args) -> int:
    from .detection import DetectorConfig, detect_video
    from .sequence import write_npz

    config = DetectorConfig(mode=args.mode, model_dir=args.model_dir)
    try:
        from tqdm import tqdm
        bar = tqdm(desc="detect", unit="frame", file=sys.stderr)
    except ImportError:
        bar = None
    try:
        pose = detect_video(args.video, config, stride=args.stride, max_frames=args.max_frames,
                            progress=bar.update if bar is not None else None, camera_motion=args.camera_motion)
    finally:
        if bar is not None:
            bar.close()
    write_npz(args.output, pose2d_arrays(pose))
    print(f"detected {pose.num_frames} frames → {args.output}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m finephys_core", description="FinePhys pose tools")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("refine", help="2D keypoints → lifted, physics-refined and fused 3D poses")
    r.add_argument("input", help="input .npz (keypoints, scores, image_size, layout, fps)")
    r.add_argument("-o", "--output", required=True, help="output .npz")
    r.add_argument("--weights", help="pose model .safetensors (default: the shipped weights)")
    r.add_argument("--fps", type=float, help="override the input's frame rate")
    r.add_argument("--fuse-weight", type=float, default=None,
                   help="weight of S_pp in the fusion (default: the pipeline's, camera.DEFAULT_FUSE_WEIGHT; "
                        "0.5 = the paper's mean)")
    r.add_argument("--bones", choices=("constant", "free"), default="constant",
                   help="fused pose: one length per bone for the clip (default) or the plain mean (paper)")
    r.add_argument("--fit-2d", type=int, default=None, metavar="ITERS",
                   help="iterations of the fused pose's test-time fit to the 2D (default: the pipeline's, "
                        "camera.DEFAULT_FIT_2D_ITERS; 0 = the paper's fusion)")
    r.add_argument("--static-camera", action="store_true",
                   help="the camera does not pan or zoom, or the input's camera_motion (detect --camera-motion) "
                        "measured it: correct the body's size by how fast it falls in flight (after the 2D fit; "
                        "wrong for a camera that follows the athlete unmeasured)")
    r.add_argument("--stride", type=int, default=1,
                   help="the input keeps every S-th frame of a video at --fps (dt = S/fps); leave 1 when "
                        "fps is already the rate of the frames in the file (what `detect` writes)")
    r.set_defaults(func=cmd_refine)
    d = sub.add_parser("detect", help="video file → 2D keypoints .npz (rtmlib)")
    d.add_argument("video")
    d.add_argument("-o", "--output", required=True, help="output .npz (the refine input format)")
    d.add_argument("--mode", default="balanced", help="performance | balanced | lightweight | rtmo")
    d.add_argument("--model-dir", help="folder with rtmlib .onnx files (downloads go there)")
    d.add_argument("--stride", type=int, default=1, help="use every N-th frame")
    d.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    d.add_argument("--camera-motion", action="store_true",
                   help="also measure the camera's pan, tilt and zoom on the background (a second pass over the "
                        "frames): refine then reads the 2D as a static camera would have seen it")
    d.set_defaults(func=cmd_detect)
    sub.add_parser("demo", add_help=False,
                   help="refine the shipped gymnastics sample and write previews (see demo --help)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        from .demo import main as demo_main
        return demo_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():   # one clean line per warning, not the source line
            warnings.showwarning = lambda message, *a, **k: print(f"warning: {message}", file=sys.stderr)
            return args.func(args)
    except (ValueError, OSError) as e:  # PoseError, WeightsError, FileNotFoundError, bad options
        if os.environ.get("FINEPHYS_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
