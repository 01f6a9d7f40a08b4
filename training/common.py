"""Shared training machinery for every stage: configs, atomic checkpoints, exact resume, logging, accelerate.

A stage builds its model, optimizer and a ``step_fn(step, rng) -> {"loss": tensor, ...}`` and hands them to
:func:`train_loop`, which does the rest (backward, clipping, optimizer and schedule steps, a tqdm bar, a JSONL
loss log, checkpoints every ``ckpt_every`` steps and at the end, resume from the latest checkpoint).

Resuming is exact: a checkpoint holds the weights, optimizer and schedule state, the step, the data
generator (``rng``, a numpy Generator the stage draws its batches and corruptions from) and torch's,
numpy's and Python's global RNG states — so N steps straight and N/2 + kill + N/2 resumed give the same
parameters. Multi-GPU: ``accelerate launch training/run_stage.py ...``; each process takes its share of
the batch indices the stage draws (see :meth:`TrainContext.shard`).
"""
from __future__ import annotations

import io
import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

META_KEY = "finephys_meta"


# ------------------------------------------------------------------------------------------------- configs

def parse_value(text: str) -> Any:
    """A ``--set`` value: JSON when it parses (numbers, true/false/null, lists, quoted strings), else text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_override(config: dict, assignment: str) -> dict:
    """Apply one ``key.sub=value`` override in place (nested dicts are created as needed)."""
    key, sep, value = assignment.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set expects key=value (dots for nested keys); got {assignment!r}")
    *parents, leaf = key.strip().split(".")
    node = config
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"--set {key}: {part!r} is a {type(child).__name__}, not a section")
        node = child
    node[leaf] = parse_value(value)
    return config


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Read a JSON config file (or start empty) and apply ``key=value`` overrides in order."""
    config: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"config file not found: {path}")
        config = json.loads(path.read_text())
    for assignment in overrides:
        apply_override(config, assignment)
    return config


def merge_config(defaults: dict, config: dict, replace: tuple[str, ...] = ("data",)) -> dict:
    """A deep copy of ``defaults`` updated by ``config``; dict entries merge one level deep, except the keys
    in ``replace`` (e.g. a data mixture), which the config replaces whole."""
    out = json.loads(json.dumps(defaults))
    for k, v in config.items():
        merge = isinstance(out.get(k), dict) and isinstance(v, dict) and k not in replace
        out[k] = {**out[k], **v} if merge else v
    return out


# --------------------------------------------------------------------------------------------- atomic files

def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> Path:
    """Safetensors file with ``meta`` (JSON-serialisable) stored in its header, written atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    data = st_save(tensors, metadata={META_KEY: json.dumps(meta or {})})
    return atomic_write_bytes(path, data)


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Inverse of :func:`save_checkpoint`: (tensors on CPU, meta dict)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    data = path.read_bytes()
    from safetensors import safe_open  # header only, for the metadata
    with safe_open(str(path), "pt") as f:
        header = f.metadata() or {}
    return st_load(data), json.loads(header.get(META_KEY, "{}"))


def atomic_torch_save(path: str | Path, obj: Any) -> Path:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


# ------------------------------------------------------------------------------------------------------ RNG

def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, numpy and torch; return a fresh numpy Generator for the stage's data draws."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def rng_state(rng: np.random.Generator | None = None) -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if rng is not None:
        state["data"] = rng.bit_generator.state
    return state


def set_rng_state(state: dict, rng: np.random.Generator | None = None) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if rng is not None and "data" in state:
        rng.bit_generator.state = state["data"]


# ----------------------------------------------------------------------------------------------- the loop

def cosine_schedule(warmup: int, total: int, floor: float = 0.05) -> Callable[[int], float]:
    """LR multiplier: linear warm-up then cosine decay to ``floor``."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


@dataclass
class TrainContext:
    """What a stage's step function may need besides the step number."""

    rng: np.random.Generator
    accelerator: Any
    out_dir: Path
    max_steps: int
    extra: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    def shard(self, batch: dict) -> dict:
        """This process's share of a batch drawn identically on every process (draw ``world`` × the
        per-process batch size, every process from the same generator state, then shard)."""
        i, n = self.accelerator.process_index, self.accelerator.num_processes
        return batch if n == 1 else {k: v[i::n] for k, v in batch.items()}


def make_accelerator(cpu: bool | None = None):
    from accelerate import Accelerator
    return Accelerator(cpu=bool(cpu) if cpu is not None else not torch.cuda.is_available())


def _latest(out_dir: Path) -> dict | None:
    p = out_dir / "latest.json"
    return json.loads(p.read_text()) if p.exists() else None


def _write_ckpt(out_dir: Path, step: int, model, optimizer, scheduler, rng, meta: dict, keep: int = 2):
    name = f"ckpt-{step:08d}"
    save_checkpoint(out_dir / f"{name}.safetensors", model.state_dict(), {**meta, "step": step})
    atomic_torch_save(out_dir / f"{name}.state.pt", {
        "step": step, "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None, "rng": rng_state(rng)})
    atomic_write_bytes(out_dir / "latest.json", json.dumps({"step": step, "name": name}).encode())
    for old in sorted(out_dir.glob("ckpt-*.safetensors"))[:-keep]:
        for p in (old, old.with_name(old.name.replace(".safetensors", ".state.pt"))):
            p.unlink(missing_ok=True)


def _trim_log(log_path: Path, step: int) -> None:
    """Drop log lines past the resumed step (they belong to the killed run's lost work)."""
    if log_path.exists():
        keep = [ln for ln in log_path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= step]
        atomic_write_bytes(log_path, ("\n".join(keep) + "\n" if keep else "").encode())


def train_loop(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               step_fn: Callable[[int, TrainContext], dict[str, torch.Tensor]], *,
               out_dir: str | Path, max_steps: int, seed: int = 0, resume: bool = False,
               scheduler_fn: Callable[[int], float] | None = None, grad_clip: float | None = 1.0,
               ckpt_every: int = 200, log_every: int = 10, meta: dict | None = None, accelerator=None,
               desc: str = "train", stop_after: int | None = None) -> TrainContext:
    """Run ``step_fn`` from the last checkpoint (``resume``) or step 0 up to ``max_steps``.

    ``step_fn(step, ctx)`` returns a dict of scalar tensors; its ``"loss"`` is optimised, every entry is
    logged to ``out_dir/losses.jsonl``. ``stop_after`` ends the run early after that many steps of this
    call (tests use it to simulate a kill; a checkpoint is written first). Returns the context; the
    trained model is ``model`` itself (unwrapped).
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    accelerator = accelerator or make_accelerator()
    rng = seed_everything(seed)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, scheduler_fn) if scheduler_fn else None
    meta = dict(meta or {})
    start = 0
    latest = _latest(out_dir) if resume else None
    if latest is not None:
        name = latest["name"]
        tensors, _ = load_checkpoint(out_dir / f"{name}.safetensors")
        model.load_state_dict(tensors)
        state = torch.load(out_dir / f"{name}.state.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"], rng)
        start = int(state["step"])
    log_path = out_dir / "losses.jsonl"
    if accelerator.is_main_process:
        if resume:
            _trim_log(log_path, start)
        else:
            log_path.unlink(missing_ok=True)
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    ctx = TrainContext(rng=rng, accelerator=accelerator, out_dir=out_dir, max_steps=max_steps,
                       extra={"model": wrapped})
    end = max_steps if stop_after is None else min(max_steps, start + stop_after)
    bar = tqdm(total=max_steps, initial=start, desc=desc, disable=not accelerator.is_local_main_process,
               dynamic_ncols=True)
    running: dict[str, float] = {}
    count = 0
    wrapped.train()
    for step in range(start, end):
        losses = step_fn(step, ctx)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(losses["loss"])
        if grad_clip:
            accelerator.clip_grad_norm_(wrapped.parameters(), grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        for k, v in losses.items():
            running[k] = running.get(k, 0.0) + float(v.detach())
        count += 1
        done = step + 1
        bar.update(1)
        if done % log_every == 0 or done == end:
            avg = {k: v / count for k, v in running.items()}
            running, count = {}, 0
            bar.set_postfix(loss=f"{avg['loss']:.4g}")
            if accelerator.is_main_process:
                rec = {"step": done, "lr": optimizer.param_groups[0]["lr"], **avg}
                with open(log_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
        if done % ckpt_every == 0 or done == end:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                _write_ckpt(out_dir, done, accelerator.unwrap_model(wrapped), optimizer, scheduler, rng, meta)
    bar.close()
    ctx.extra["step"] = end
    return ctx


def read_log(out_dir: str | Path) -> list[dict]:
    p = Path(out_dir) / "losses.jsonl"
    return [json.loads(ln) for ln in p.read_text().splitlines() if ln] if p.exists() else []


def merge_config_strict(defaults: dict, config: dict, stage: str) -> dict:
    """:func:`merge_config` with every section merged (none replaced whole), after checking that ``config``
    names only entries ``defaults`` has: a typo is a ValueError naming the stage and the known entries."""
    for key, value in config.items():
        if key not in defaults:
            raise ValueError(f"unknown stage {stage} config entry {key!r}; known: {sorted(defaults)}")
        if isinstance(defaults[key], dict):
            if not isinstance(value, dict):
                raise ValueError(f"stage {stage} config entry {key!r} is a section of "
                                 f"{sorted(defaults[key])}; got {type(value).__name__} {value!r}")
            unknown = set(value) - set(defaults[key])
            if unknown:
                raise ValueError(f"unknown stage {stage} config entries {key}.{sorted(unknown)}; "
                                 f"known: {sorted(defaults[key])}")
    return merge_config(defaults, config, replace=())


def train_from_config(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step_fn, cfg: dict, *,
                      out_dir: str | Path, resume: bool, stage: int) -> TrainContext:
    """:func:`train_loop` driven by a flat stage config (max_steps, seed, warmup, grad_clip, ckpt_every,
    log_every, stop_after), with a cosine schedule — the schema stages 2 and 3 share."""
    max_steps = int(cfg["max_steps"])
    return train_loop(model, optimizer, step_fn, out_dir=out_dir, max_steps=max_steps, seed=cfg["seed"],
                      resume=resume, scheduler_fn=cosine_schedule(cfg["warmup"], max_steps),
                      grad_clip=cfg["grad_clip"], ckpt_every=cfg["ckpt_every"], log_every=cfg["log_every"],
                      meta={"stage": stage}, desc=f"stage {stage}", stop_after=cfg["stop_after"])
