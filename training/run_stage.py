"""Entry point for the four FinePhys training stages (DESIGN.md §5).

    python training/run_stage.py --stage 2 --config training/configs/stage2.json --out runs/s2 [--resume]
        [--max-steps N] [--set key=value ...]
    accelerate launch training/run_stage.py --stage 2 ...      # several GPUs / processes

Each stage lives in ``training/stageN.py`` with ``run(config: dict, args: argparse.Namespace)``.
"""
from __future__ import annotations

import argparse
import sys
from importlib import import_module
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `finephys_core` and `training` importable
    sys.path.insert(0, str(ROOT))

from training.common import load_config  # noqa: E402

STAGES = {1: "skeletal heatmap encoder", 2: "lifter + PhysNet on 3D (eq. 19)",
          3: "PhysNet + projection on 2D (eq. 20)", 4: "UNet LoRA + PhysNet end to end"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train one FinePhys stage.")
    p.add_argument("--stage", type=int, required=True, choices=sorted(STAGES),
                   help="; ".join(f"{k}: {v}" for k, v in STAGES.items()))
    p.add_argument("--config", help="JSON config file (default training/configs/stageN.json)")
    p.add_argument("--out", help="run folder for checkpoints and logs (default runs/stageN)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    p.add_argument("--max-steps", type=int, help="override the config's max_steps")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry (dots for nested keys; values parsed as JSON); repeatable")
    return p


def main(argv: list[str] | None = None):
    args = build_parser().parse_args(argv)
    config_path = args.config or ROOT / "training" / "configs" / f"stage{args.stage}.json"
    config = load_config(config_path, args.overrides)
    if args.max_steps is not None:
        config["max_steps"] = args.max_steps
    args.out = Path(args.out or ROOT / "runs" / f"stage{args.stage}")
    try:
        stage = import_module(f"training.stage{args.stage}")
    except ModuleNotFoundError as e:
        if e.name != f"training.stage{args.stage}":
            raise
        raise SystemExit(f"stage {args.stage} ({STAGES[args.stage]}) is not available: training/stage{args.stage}.py "
                         f"is missing from this checkout") from None
    return stage.run(config, args)


if __name__ == "__main__":
    main()
