"""Sampler benchmark: FinePhys sampling (with and without skeleton guidance) against diffusers' plain
AnimateDiffPipeline on the same UNet, VAE, seed and text embeddings, in one process.

``--tiny``: tiny random-weight models from ``configs/tiny`` (CPU, seconds per run). Without it: real SD1.5 +
AnimateDiff v2 sizes from ``configs/sd15`` with random weights — a GPU job (hours on a CPU).
Runs are interleaved (plain, ours unguided, ours guided) ``--repeats`` times; medians are reported. On a CPU
the ratios use the process's CPU time (robust on a shared machine); on a GPU, wall time after a sync.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time

import torch

from .. import pipeline_loading, sampler
from ..heatmaps import Guidance


class PeakMemory:
    """Peak memory of a block: CUDA allocator peak on a GPU, else the process's resident set (sampled)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mb = 0.0

    @staticmethod
    def _rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self._stop = threading.Event()
        self.peak_mb = self._rss_mb()

        def watch():
            while not self._stop.wait(0.01):
                self.peak_mb = max(self.peak_mb, self._rss_mb())
        self._thread = threading.Thread(target=watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self.peak_mb, self._rss_mb())


def plain_pipeline(pipe):
    """diffusers' AnimateDiffPipeline on the very same UNet and VAE (no text encoder: embeddings given)."""
    from diffusers import AnimateDiffPipeline

    return AnimateDiffPipeline(vae=pipe.vae, text_encoder=None, tokenizer=None, unet=pipe.unet,
                               motion_adapter=None, scheduler=sampler.make_scheduler(pipe.scheduler_config))


def run_plain(plain, pos, neg, args):
    plain.set_progress_bar_config(disable=True)
    out = plain(prompt_embeds=pos, negative_prompt_embeds=neg, num_frames=args.frames, height=args.size,
                width=args.size, num_inference_steps=args.steps, guidance_scale=args.cfg,
                generator=torch.Generator("cpu").manual_seed(args.seed), output_type="pt",
                decode_chunk_size=args.decode_chunk)
    return out.frames[0].permute(0, 2, 3, 1)  # (F, H, W, 3)


def run_ours(pipe, pos, neg, guidance, args):
    frames, _ = sampler.sample_video(pipe, pos, neg, guidance, num_frames=args.frames, height=args.size,
                                     width=args.size, steps=args.steps, cfg=args.cfg, seed=args.seed,
                                     decode_chunk=args.decode_chunk)
    return frames


def timed(fn, device):
    """(output, wall seconds, CPU seconds of this process, peak MB). On a shared CPU the CPU seconds are the
    fair measure (other processes stretch wall time at random); on a GPU the wall time after a sync is."""
    with PeakMemory(device) as mem:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return out, seconds, cpu_seconds, mem.peak_mb


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m finephys_core.bench sampler", description=__doc__)
    p.add_argument("--tiny", action="store_true", help="tiny random-weight models (CPU-friendly)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg", type=float, default=7.5)
    p.add_argument("--size", type=int, default=None, help="square size in px (default 64 tiny, 384 real)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats; medians are reported")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--decode-chunk", type=int, default=8)
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--dtype", default=None, choices=("fp32", "fp16", "bf16"),
                   help="default fp16 on cuda, fp32 on cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--force", action="store_true", help="run real size on a CPU anyway")
    args = p.parse_args(argv)
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.dtype = args.dtype or ("fp16" if args.device.type == "cuda" else "fp32")
    args.size = args.size or (64 if args.tiny else 384)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not args.tiny and args.device.type == "cpu" and not args.force:
        print("real-size sampling is a GPU job: one 16x384² clip at 50 steps with CFG takes hours on a CPU. "
              "Use --tiny here, or --force.", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    config_dir = pipeline_loading.TINY_CONFIG_DIR if args.tiny else pipeline_loading.SD15_CONFIG_DIR
    encoder_overrides = {"hidden_channels": None} if args.tiny else {}
    t0 = time.perf_counter()
    pipe = pipeline_loading.random_pipeline(config_dir, device=args.device, dtype=dtype, **encoder_overrides)
    print(f"built {config_dir.name} pipeline in {time.perf_counter() - t0:.1f} s: UNet "
          f"{sum(p.numel() for p in pipe.unet.parameters()) / 1e6:.1f}M params, {args.device}, {args.dtype}")

    gen = torch.Generator("cpu").manual_seed(args.seed)
    pos = torch.randn(1, 77, pipe.cross_attention_dim, generator=gen).to(args.device, dtype)
    neg = torch.randn(1, 77, pipe.cross_attention_dim, generator=gen).to(args.device, dtype)
    guidance = Guidance(torch.rand(args.frames, 16, args.size, args.size, generator=gen), (args.size, args.size))
    plain = plain_pipeline(pipe)
    variants = {"plain": lambda a: run_plain(plain, pos, neg, a),
                "ours_unguided": lambda a: run_ours(pipe, pos, neg, None, a),
                "ours_guided": lambda a: run_ours(pipe, pos, neg, guidance, a)}

    times = {k: [] for k in variants}
    cpu_times = {k: [] for k in variants}
    peaks = {k: 0.0 for k in variants}
    outputs = {}
    warm_up = argparse.Namespace(**{**vars(args), "steps": 2})
    for fn in variants.values():  # first calls pay for lazy initialisation, kernels, allocator growth
        fn(warm_up)
    for r in range(args.repeats):
        for name, fn in variants.items():
            outputs[name], seconds, cpu_seconds, peak = timed(lambda: fn(args), args.device)
            times[name].append(seconds)
            cpu_times[name].append(cpu_seconds)
            peaks[name] = max(peaks[name], peak)
            print(f"repeat {r + 1}/{args.repeats} {name:14s} wall {seconds:8.2f} s  cpu {cpu_seconds:8.2f} s  "
                  f"peak {peak:9.1f} MB", flush=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu_times.items()}
    basis = cpu_med if args.device.type == "cpu" else med
    same = torch.equal(outputs["plain"].cpu(), outputs["ours_unguided"].cpu())
    diff = (outputs["ours_guided"] - outputs["ours_unguided"]).abs().max().item()
    print(f"{args.frames} frames {args.size}² {args.steps} steps cfg {args.cfg}, medians of {args.repeats}: "
          f"wall plain {med['plain']:.2f} s, ours unguided {med['ours_unguided']:.2f} s, ours guided "
          f"{med['ours_guided']:.2f} s; cpu plain {cpu_med['plain']:.2f} s, ours unguided "
          f"{cpu_med['ours_unguided']:.2f} s, ours guided {cpu_med['ours_guided']:.2f} s")
    print(f"ratios from {'CPU' if basis is cpu_med else 'wall'} time: guided/plain "
          f"{basis['ours_guided'] / basis['plain']:.4f}, unguided/plain {basis['ours_unguided'] / basis['plain']:.4f}")
    print(f"unguided frames identical to AnimateDiffPipeline: {same}; guidance changes frames by up to {diff:.4f}")
    result = {"bench": "sampler", "tiny": args.tiny, "device": str(args.device), "dtype": args.dtype,
              "frames": args.frames, "size": args.size, "steps": args.steps, "cfg": args.cfg,
              "repeats": args.repeats, "threads": torch.get_num_threads(),
              "timing_basis": "cpu_time" if basis is cpu_med else "wall_time",
              "seconds_plain": round(med["plain"], 3), "seconds_unguided": round(med["ours_unguided"], 3),
              "seconds_guided": round(med["ours_guided"], 3),
              "cpu_seconds_plain": round(cpu_med["plain"], 3),
              "cpu_seconds_unguided": round(cpu_med["ours_unguided"], 3),
              "cpu_seconds_guided": round(cpu_med["ours_guided"], 3),
              "overhead_ratio": round(basis["ours_guided"] / basis["plain"], 4),
              "overhead_ratio_unguided": round(basis["ours_unguided"] / basis["plain"], 4),
              "peak_mem_mb": round(max(peaks.values()), 1),
              "peak_mem_mb_by_variant": {k: round(v, 1) for k, v in peaks.items()},
              "unguided_identical_to_plain": same}
    print(json.dumps(result))
    return 0
