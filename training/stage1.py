"""Stage 1: train the skeletal heatmap encoder with ε-prediction on HumanArt (real-human subset), SD1.5 frozen.

FinePhys supplementary A.2 / Follow-Your-Pose stage 1: COCO-17 annotations → H36M-17 → PoseConv3D limb
heatmaps (max-merged over the people in an image) → encoder → features added after each down block of
the frozen SD1.5 UNet (the same point the video sampler injects them) → MSE between predicted and true
noise. Only the encoder trains; the final ``skeleton_encoder.safetensors`` loads in FinePhysLoadPipeline.

    python training/run_stage.py --stage 1 --config training/configs/stage1.json --out runs/stage1
    accelerate launch training/run_stage.py --stage 1 ...      # several GPUs

Frozen models come from an SD1.5 single-file checkpoint (UNet, VAE and CLIP-L text encoder, LDM keys) with
the configs shipped in ``finephys_core/configs/sd15``; the CLIP tokenizer from a local folder (vocab.json +
merges.txt, e.g. ComfyUI's ``comfy/sd1_tokenizer``). ``model.random_weights`` builds everything from configs
instead (tests, smoke runs). The noise schedule is SD1.5's own training schedule (scaled-linear betas), as
the UNet stays frozen.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from finephys_core.heatmap_encoder import (SkeletonEncoder, SkeletonEncoderConfig, save_skeleton_encoder,
                                           unet2d_injection)
from finephys_core.heatmaps import limb_heatmaps
from finephys_core.render import fit_frames
from finephys_core.skeleton import H36M17
from training import common
from training.humanart import HumanArtDataset, read_image

ROOT = Path(__file__).resolve().parents[1]
SD15_CONFIG_DIR = ROOT / "finephys_core" / "configs" / "sd15"

DEFAULTS = {
    "seed": 0,
    "max_steps": 54000,                        # the paper's 54k steps
    "data": {"annotations": "data/HumanArt/annotations/training_humanart.json", "image_root": "data/HumanArt",
             "subset": "real_human", "min_keypoints": 5, "resolution": 512, "sigma": 0.0,
             "caption_dropout": 0.05, "default_caption": "a photo of a person"},
    "eval": {"annotations": None, "image_root": None, "batches": 8, "seed": 1234},
    "model": {"checkpoint": "models/checkpoints/v1-5-pruned-emaonly.safetensors", "config_dir": None,
              "random_weights": False},
    "text": {"tokenizer": None, "max_length": 77, "encoder_config": None},
    "noise": {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
              "num_train_timesteps": 1000},
    "encoder": {"hidden_channels": [128, 256, 512, 512], "num_res_blocks": 2},
    "train": {"batch_size": 8, "lr": 1e-5, "weight_decay": 1e-2, "warmup": 500, "grad_clip": 1.0,
              "mixed_precision": "fp16", "gradient_checkpointing": True, "ckpt_every": 1000, "log_every": 20},
}


def merge_config(config: dict) -> dict:
    """DEFAULTS updated section by section with ``config`` (unknown entries are an error, to catch typos)."""
    return common.merge_config_strict(DEFAULTS, config, "1")


def _path(p) -> Path:
    p = Path(p)
    return p if p.is_absolute() or p.exists() else ROOT / p


# ------------------------------------------------------------------------------------------- frozen models

@dataclass
class Frozen:
    """The frozen SD1.5 parts and the training noise schedule."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    noise: object            # diffusers DDPMScheduler (add_noise, alphas)
    max_length: int = 77

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """(B, max_length, 768) CLIP last hidden states, as SD1.5 is conditioned."""
        ids = self.tokenizer(captions, padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="pt").input_ids.to(self.text_encoder.device)
        return self.text_encoder(ids)[0]

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] → scaled latents (B, 4, H/8, W/8)."""
        vae = self.vae
        latents = vae.encode(images.to(vae.device, vae.dtype)).latent_dist.sample()
        return latents * vae.config.scaling_factor


def _read_config(path: Path) -> dict:
    """A shipped config JSON without its ``_class_name``/``_comment`` entries."""
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


def _configs(cfg: dict) -> tuple[dict, dict]:
    config_dir = _path(cfg["model"]["config_dir"]) if cfg["model"]["config_dir"] else SD15_CONFIG_DIR
    return _read_config(config_dir / "unet" / "config.json"), _read_config(config_dir / "vae" / "config.json")


def _text_config(cfg: dict) -> dict:
    return cfg["text"]["encoder_config"] or _read_config(SD15_CONFIG_DIR / "text_encoder" / "config.json")


def _tokenizer(cfg: dict):
    from transformers import CLIPTokenizer
    path = cfg["text"]["tokenizer"]
    if not path:
        raise ValueError("stage 1 needs a local CLIP tokenizer folder (vocab.json + merges.txt), e.g. ComfyUI's "
                         "comfy/sd1_tokenizer: set text.tokenizer")
    return CLIPTokenizer.from_pretrained(str(_path(path)), local_files_only=True)


def _text_state(sd: dict, model: torch.nn.Module, name: str) -> dict:
    """CLIP text weights from an LDM file (``cond_stage_model.transformer.*``) in the model's key layout."""
    prefix = "cond_stage_model.transformer."
    state = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if not state:
        raise ValueError(f"{name}: no CLIP text encoder (cond_stage_model.transformer.*) in the checkpoint")
    expected = set(model.state_dict())
    if not expected & set(state):  # transformers >= 5.6 dropped the text_model. prefix (or very old files lack it)
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
        if not expected & set(state):
            state = {f"text_model.{k}": v for k, v in state.items()}
    state = {k: v for k, v in state.items() if k in expected}
    missing = sorted(k for k in expected - set(state) if not k.endswith("position_ids"))
    if missing:
        raise ValueError(f"{name}: CLIP text encoder lacks {len(missing)} tensors, e.g. {missing[:3]}")
    return state


def load_frozen(cfg: dict, device, dtype) -> Frozen:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet_config, vae_config = _configs(cfg)
    text_model = CLIPTextModel(CLIPTextConfig(**_text_config(cfg)))
    if cfg["model"]["random_weights"]:
        unet = UNet2DConditionModel.from_config(unet_config)
        vae = AutoencoderKL.from_config(vae_config)
    else:
        from finephys_core.pipeline_loading import read_state_dict, sd15_unet_state, sd15_vae
        path = _path(cfg["model"]["checkpoint"])
        sd = read_state_dict(path)
        unet = UNet2DConditionModel.from_config(unet_config)
        unet.load_state_dict(sd15_unet_state(sd, unet_config, path.name))
        vae = sd15_vae(sd, vae_config, path.name, "cpu", torch.float32)
        text_model.load_state_dict(_text_state(sd, text_model, path.name), strict=False)
        del sd
    for m in (unet, vae, text_model):
        m.requires_grad_(False).eval().to(device)
        if dtype != torch.float32:
            m.to(dtype)
    if cfg["train"]["gradient_checkpointing"]:
        unet.enable_gradient_checkpointing()
    noise = DDPMScheduler(**cfg["noise"], prediction_type="epsilon")
    return Frozen(unet, vae, text_model, _tokenizer(cfg), noise, int(cfg["text"]["max_length"]))


# ------------------------------------------------------------------------------------------------ batches

def load_batch(dataset: HumanArtDataset, indices, resolution: int, sigma: float | None = None) -> dict:
    """Images (B, 3, r, r) in [-1, 1] (shorter side to r, centre crop), limb heatmaps (B, 16, r, r) and captions."""
    images, maps, captions = [], [], []
    size = (resolution, resolution)
    for i in indices:
        s = dataset[int(i)]
        images.append(fit_frames(read_image(s.path), size, "crop")[0])
        people = limb_heatmaps(s.keypoints[None], s.scores[None], s.image_size, size, sigma or None, H36M17, "crop")
        maps.append(people[0])
        captions.append(s.caption)
    pixels = torch.stack(images).permute(0, 3, 1, 2).mul(2).sub(1)
    return {"pixels": pixels.contiguous(), "heatmaps": torch.stack(maps), "captions": captions}


def epsilon_loss(encoder: torch.nn.Module, frozen: Frozen, latents: torch.Tensor, heatmaps: torch.Tensor,
                 text: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """MSE between the noise and the frozen UNet's prediction with the encoder's features injected."""
    noisy = frozen.noise.add_noise(latents, noise, timesteps)
    dtype = next(frozen.unet.parameters()).dtype
    features = [f.to(dtype) for f in encoder(heatmaps)]
    with unet2d_injection(frozen.unet, features):
        pred = frozen.unet(noisy.to(dtype), timesteps, text.to(dtype)).sample
    return F.mse_loss(pred.float(), noise.float())


def make_step_fn(dataset, frozen: Frozen, cfg: dict):
    data, batch_size = cfg["data"], int(cfg["train"]["batch_size"])

    def step_fn(step: int, ctx: common.TrainContext) -> dict:
        idx = ctx.shard(ctx.rng.integers(0, len(dataset), batch_size))
        drop = ctx.shard(ctx.rng.random(batch_size) < float(data["caption_dropout"]))
        batch = load_batch(dataset, idx, int(data["resolution"]), data["sigma"])
        captions = ["" if d else c for c, d in zip(batch["captions"], drop)]
        device = ctx.device
        latents = frozen.encode_images(batch["pixels"].to(device)).float()
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, frozen.noise.config.num_train_timesteps, (len(idx),), device=device)
        with ctx.accelerator.autocast():
            loss = epsilon_loss(ctx.extra["model"], frozen, latents, batch["heatmaps"].to(device),
                                frozen.encode_text(captions), noise, timesteps)
        return {"loss": loss}
    return step_fn


@torch.no_grad()
def evaluate(encoder, frozen: Frozen, dataset, cfg: dict, device) -> dict:
    """Mean ε-MSE on fixed draws (images, noise, timesteps) with the trained encoder and with none.

    The gap (``loss_without_pose − loss_with_pose``) is what the skeleton tells the UNet about the image.
    """
    ev, data = cfg["eval"], cfg["data"]
    rng = np.random.default_rng(int(ev["seed"]))
    gen = torch.Generator("cpu").manual_seed(int(ev["seed"]))
    zero = SkeletonEncoder(encoder.config).to(device)          # zero-initialised outputs: no pose
    totals = {"loss_with_pose": 0.0, "loss_without_pose": 0.0}
    batch_size = min(int(cfg["train"]["batch_size"]), len(dataset))
    for _ in range(int(ev["batches"])):
        idx = rng.choice(len(dataset), batch_size, replace=False)
        batch = load_batch(dataset, idx, int(data["resolution"]), data["sigma"])
        latents = frozen.encode_images(batch["pixels"].to(device)).float()
        noise = torch.randn(latents.shape, generator=gen).to(device)
        t = torch.randint(0, frozen.noise.config.num_train_timesteps, (len(idx),), generator=gen).to(device)
        text = frozen.encode_text(batch["captions"])
        heat = batch["heatmaps"].to(device)
        totals["loss_with_pose"] += epsilon_loss(encoder, frozen, latents, heat, text, noise, t).item()
        totals["loss_without_pose"] += epsilon_loss(zero, frozen, latents, heat, text, noise, t).item()
    return {k: v / max(1, int(ev["batches"])) for k, v in totals.items()}


# ---------------------------------------------------------------------------------------------------- run

def _dataset(data: dict, annotations=None, image_root=None) -> HumanArtDataset:
    return HumanArtDataset(_path(annotations or data["annotations"]), _path(image_root or data["image_root"]),
                           data["subset"], int(data["min_keypoints"]), data["default_caption"])


def _accelerator(cfg: dict):
    from accelerate import Accelerator
    cuda = torch.cuda.is_available()
    return Accelerator(cpu=not cuda, mixed_precision=cfg["train"]["mixed_precision"] if cuda else "no")


def run(config: dict, args) -> dict:
    """Train stage 1. ``args``: argparse namespace (or any object) with ``out`` and ``resume``; optional
    ``stop_after`` (steps, for tests simulating a kill). At the end writes ``skeleton_encoder.safetensors``
    and ``eval.json`` to the run folder. Returns the evaluation figures."""
    cfg = merge_config(config)
    out_dir = Path(args.out)
    accelerator = _accelerator(cfg)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    frozen = load_frozen(cfg, accelerator.device, weight_dtype)
    dataset = _dataset(cfg["data"])
    enc_cfg = SkeletonEncoderConfig.for_unet(frozen.unet.config.block_out_channels, in_channels=len(H36M17.bones),
                                             **cfg["encoder"])
    encoder = SkeletonEncoder(enc_cfg)
    train = cfg["train"]
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=float(train["lr"]),
                                  weight_decay=float(train["weight_decay"]))
    max_steps = int(cfg["max_steps"])
    meta = {"stage": 1, "encoder_config": enc_cfg.to_dict(), "config": cfg}
    ctx = common.train_loop(
        encoder, optimizer, make_step_fn(dataset, frozen, cfg), out_dir=out_dir, max_steps=max_steps,
        seed=int(cfg["seed"]), resume=bool(getattr(args, "resume", False)),
        scheduler_fn=common.cosine_schedule(int(train["warmup"]), max_steps), grad_clip=train["grad_clip"],
        ckpt_every=int(train["ckpt_every"]), log_every=int(train["log_every"]), meta=meta, accelerator=accelerator,
        desc="stage 1", stop_after=getattr(args, "stop_after", None))
    result = {"steps": int(ctx.extra["step"]), "images": len(dataset)}
    if accelerator.is_main_process and result["steps"] == max_steps:
        encoder.eval()
        save_skeleton_encoder(encoder, out_dir / "skeleton_encoder.safetensors")
        ev = cfg["eval"]
        eval_set = _dataset(cfg["data"], ev["annotations"], ev["image_root"]) if ev["annotations"] else dataset
        result.update(evaluate(encoder.to(accelerator.device), frozen, eval_set, cfg, accelerator.device))
        common.atomic_write_bytes(out_dir / "eval.json", json.dumps(result, indent=2).encode())
        print(json.dumps(result))
    return result


def run_args(out: str | Path, resume: bool = False, stop_after: int | None = None):
    """An ``args`` object for :func:`run` called from Python."""
    return SimpleNamespace(out=Path(out), resume=resume, stop_after=stop_after)
