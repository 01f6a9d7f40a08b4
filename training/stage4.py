"""Stage 4: joint fine-tuning of the UNet LoRA and PhysNet on FineGym clips (paper eq. 21–24, suppl. A.1/A.4).

    L_video = L_spat + L_temp + L_ad-temp

per step, for a 16-frame 384² clip with its detected 2D poses and Gym99 class prompt:

1. S_dd: the frozen lifter's 3D of the detections (computed once per clip); PhysNet (trained) gives S_pp;
   Ŝ = F(S_dd, S_pp); the projection P is the weak-perspective camera fitted in closed form to the
   detections (``camera.fit_camera``, differentiable, no parameters of its own) → reprojected 2D.
2. Limb heatmaps of the reprojected 2D (``heatmaps.limb_heatmaps``, differentiable) → the frozen
   skeletal heatmap encoder (stage 1) → features added after each down block of the motion UNet, exactly
   as FinePhysSampler adds them (``sampler.pose_injection``). So the video loss trains PhysNet end to end.
3. z_t = noisy VAE latents; L_temp: ε-MSE of the motion UNet on the whole clip (eq. 22); L_ad-temp: the same
   after MotionDirector's appearance-debiasing φ(x) = √(β²+1)·x − β·x_anchor with a random anchor frame
   (eq. 23, β = 1); L_spat: ε-MSE on one random frame z_{t,i} with the temporal (motion) modules bypassed,
   i.e. the image model (eq. 21; MotionDirector's spatial path).

LoRA rank 64, dropout 0.1 on to_q/to_k/to_v/to_out.0 of spatial and temporal attention; AdamW (the usual
"Adam with weight decay") lr 5e-4, weight decay 1e-2; gradient checkpointing; accelerate mixed precision.
The noise schedule is the paper's linear betas 0.00085 → 0.012. Outputs: ``finephys_lora.safetensors``
(FinePhysLoadPipeline's lora) and ``pose_model.safetensors`` (the pose bundle with the fine-tuned PhysNet).

Data (``data.path``): FineGym clips as pairs ``<clip>.npz`` (a pose file of DetectPose2D / the pose CLI,
with a ``class_id`` entry, Gym99 ids 6–40) + ``<clip>.mp4`` (any video OpenCV reads) or a folder
``<clip>/`` of frame images.

    python training/run_stage.py --stage 4 --config training/configs/stage4.json --out runs/stage4
    accelerate launch training/run_stage.py --stage 4 ...      # several GPUs
"""
from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from finephys_core import lora as lora_lib
from finephys_core import pipeline_loading as pl
from finephys_core.camera import fit_camera, fuse, project
from finephys_core.heatmaps import limb_heatmaps
from finephys_core.pose_model import load_pose_model, random_pose_model, save_pose_model
from finephys_core.prompts import gym_prompt
from finephys_core.render import fit_frames
from finephys_core.sampler import pose_injection
from finephys_core.refine import lift_pose
from finephys_core.sequence import load_pose
from finephys_core.skeleton import H36M17
from training import common, stage1

ROOT = Path(__file__).resolve().parents[1]
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

DEFAULTS = {
    "seed": 0,
    "max_steps": 8000,                          # the paper's 8k LoRA steps
    "data": {"path": "training/data/finegym_video", "frames": 16, "resolution": 384, "sampling": "uniform",
             "fit": "crop", "sigma": 0.0, "extended_prompts": True, "caption_dropout": 0.0},
    "model": {"checkpoint": "models/checkpoints/v1-5-pruned-emaonly.safetensors",
              "motion_module": "models/animatediff_models/mm_sd_v15_v2.ckpt",
              "encoder": "runs/stage1/skeleton_encoder.safetensors",
              "pose_model": "runs/stage3/pose_model.safetensors",
              "config_dir": None, "random_weights": False, "motion_version": "v2"},
    "text": {"tokenizer": None, "max_length": 77, "encoder_config": None},
    "lora": {"rank": 64, "alpha": 64, "dropout": 0.1},
    "loss": {"spat": 1.0, "temp": 1.0, "ad_temp": 1.0, "ad_beta": 1.0, "noise": 0.0},
    "fuse_weight": 0.5,
    "train": {"batch_size": 1, "lr": 5e-4, "weight_decay": 1e-2, "grad_clip": 1.0, "mixed_precision": "bf16",
              "gradient_checkpointing": True, "ckpt_every": 500, "log_every": 10},
    "eval": {"batches": 4, "seed": 1234},
    "output": {"lora": "finephys_lora.safetensors", "pose_model": "pose_model.safetensors"},
}


def merge_config(config: dict) -> dict:
    """DEFAULTS updated section by section with ``config`` (unknown entries are an error, to catch typos)."""
    return common.merge_config_strict(DEFAULTS, config, "4")


# ---------------------------------------------------------------------------------------------- data


def read_frames(path: Path, indices: np.ndarray) -> np.ndarray:
    """RGB uint8 frames (len(indices), H, W, 3) of a video file or a folder of images (sorted by name)."""
    wanted = {int(i) for i in indices}
    frames = {}
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for i in wanted:
            if i < len(files):
                frames[i] = cv2.imread(str(files[i]), cv2.IMREAD_COLOR)
    else:
        cap = cv2.VideoCapture(str(path))
        i = 0
        while i <= max(wanted):
            ok, img = cap.read()
            if not ok:
                break
            if i in wanted:
                frames[i] = img
            i += 1
        cap.release()
    missing = sorted(wanted - {i for i, f in frames.items() if f is not None})
    if missing:
        raise ValueError(f"{path.name}: cannot read frames {missing[:5]} (the pose file has more frames than "
                         "the video)")
    return np.stack([cv2.cvtColor(frames[int(i)], cv2.COLOR_BGR2RGB) for i in indices])


def _video_for(npz: Path) -> Path:
    for cand in [npz.with_suffix(s) for s in VIDEO_SUFFIXES] + [npz.with_suffix("")]:
        if cand.exists():
            return cand
    raise FileNotFoundError(f"no video for {npz.name}: expected {npz.stem}.mp4 (or another video) or a "
                            f"folder {npz.stem}/ of frames next to it")


class FineGymVideoClips:
    """FineGym clips: frames, detected 2D (H36M-17), class prompts and the frozen lifter's S_dd per clip."""

    def __init__(self, path, pose_model, frames: int = 16, resolution: int = 384, sampling: str = "uniform",
                 fit: str = "crop", extended_prompts: bool = True):
        path = Path(path)
        files = sorted(path.glob("*.npz")) if path.is_dir() else []
        if not files:
            raise FileNotFoundError(f"no FineGym clips (*.npz pose files) in {path}")
        if sampling not in ("uniform", "contiguous"):
            raise ValueError(f"data.sampling must be 'uniform' or 'contiguous'; got {sampling!r}")
        self.frames, self.resolution, self.sampling, self.fit = int(frames), int(resolution), sampling, fit
        self.clips = []
        for npz in files:
            pose = load_pose(npz).to_h36m()
            with np.load(npz, allow_pickle=False) as z:
                class_id = int(z["class_id"]) if "class_id" in z.files else None
            if class_id is None:
                raise ValueError(f"{npz.name}: no class_id entry (Gym99 ids 6–40)")
            s_dd = torch.from_numpy(lift_pose(pose, pose_model).joints)     # frozen lifter, as at inference
            self.clips.append({"name": npz.stem, "video": _video_for(npz), "pose2d": pose.normalized(),
                               "fps": pose.fps, "image_size": tuple(pose.image_size), "class_id": class_id,
                               "prompt": gym_prompt(class_id, extended_prompts), "s_dd": s_dd})

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def prompts(self) -> list[str]:
        return sorted({c["prompt"] for c in self.clips})

    def frame_indices(self, num_frames: int, rng: np.random.Generator) -> np.ndarray:
        """``uniform``: F frames spread over the whole clip (the whole action); ``contiguous``: a random run."""
        F_ = self.frames
        if self.sampling == "uniform" or num_frames < F_:
            return np.linspace(0, num_frames - 1, F_).round().astype(int)
        start = int(rng.integers(0, num_frames - F_ + 1))
        return np.arange(start, start + F_)

    def item(self, i: int, rng: np.random.Generator) -> dict:
        clip = self.clips[int(i)]
        idx = self.frame_indices(len(clip["pose2d"]), rng)
        rgb = torch.from_numpy(read_frames(clip["video"], idx)).float() / 255.0
        size = (self.resolution, self.resolution)
        spacing = (idx[-1] - idx[0]) / max(len(idx) - 1, 1) if len(idx) > 1 else 1.0
        return {"pixels": fit_frames(rgb, size, self.fit).clamp(0, 1) * 2 - 1,  # (F, h, w, 3) in [-1, 1]
                "pose2d": torch.from_numpy(clip["pose2d"][idx]),               # (F, 17, 3) normalised
                "s_dd": clip["s_dd"][torch.from_numpy(idx)],                   # (F, 17, 3) metres
                "dt": float(max(spacing, 1e-3) / clip["fps"]), "image_size": clip["image_size"],
                "prompt": clip["prompt"]}

    def batch(self, indices, rng: np.random.Generator) -> dict:
        items = [self.item(i, rng) for i in indices]
        out = {k: torch.stack([it[k] for it in items]) for k in ("pixels", "pose2d", "s_dd")}
        out["dt"] = torch.tensor([it["dt"] for it in items])
        out["image_size"] = [it["image_size"] for it in items]
        out["prompt"] = [it["prompt"] for it in items]
        return out


# ------------------------------------------------------------------------------------ poses → heatmaps


def reprojected_heatmaps(physnet, batch: dict, out_size, fuse_weight: float = 0.5, sigma: float | None = None,
                         fit: str = "crop") -> tuple[torch.Tensor, torch.Tensor]:
    """PhysNet → fuse → fitted projection → limb heatmaps. Returns ((B·F, 16, h, w), L_noise)."""
    s_dd = batch["s_dd"]
    out = physnet(s_dd, batch["dt"])
    fused = fuse(s_dd, out.s_pp, fuse_weight)
    xy, score = batch["pose2d"][..., :2], batch["pose2d"][..., 2]
    reproj = project(fused, fit_camera(fused, xy, score))                       # (B, F, 17, 2) normalised
    maps = []
    for b, (W, H) in enumerate(batch["image_size"]):
        px = reproj[b] * (max(W, H) / 2.0) + reproj.new_tensor([W / 2.0, H / 2.0])   # denormalize_screen
        maps.append(limb_heatmaps(px, score[b], (W, H), out_size, sigma, H36M17, fit))
    return torch.cat(maps), out.noise_loss


# --------------------------------------------------------------------------------------------- losses


@contextmanager
def motion_modules_bypassed(unet):
    """The UNet as an image model: every motion module returns its input (MotionDirector's spatial path)."""
    modules = [m for blocks in (unet.down_blocks, unet.up_blocks) for b in blocks for m in b.motion_modules]
    if getattr(unet.mid_block, "motion_modules", None) is not None:
        modules += list(unet.mid_block.motion_modules)
    handles = [m.register_forward_hook(lambda mod, args, out: args[0]) for m in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def debias(x: torch.Tensor, anchor: int, beta: float = 1.0) -> torch.Tensor:
    """MotionDirector's φ over (B, C, F, h, w): √(β²+1)·x − β·x[:, :, anchor], removing what frames share."""
    return math.sqrt(beta ** 2 + 1) * x - beta * x[:, :, anchor:anchor + 1]


def video_losses(unet, encoder, physnet, latents: torch.Tensor, text: torch.Tensor, batch: dict,
                 noise: torch.Tensor, timesteps: torch.Tensor, anchor: int, frame: int, cfg: dict,
                 noise_schedule) -> dict[str, torch.Tensor]:
    """L_spat, L_temp, L_ad-temp (eq. 21–24) for latents (B, 4, F, h, w) and text (B, L, 768)."""
    B, _, F_, h, w = latents.shape
    maps, noise_loss = reprojected_heatmaps(physnet, batch, (h * 8, w * 8), cfg["fuse_weight"],
                                            cfg["data"]["sigma"] or None, cfg["data"]["fit"])
    dtype = next(encoder.parameters()).dtype
    features = [f for f in encoder(maps.to(dtype))]
    noisy = noise_schedule.add_noise(latents, noise, timesteps)
    with pose_injection(unet, features):
        pred = unet(noisy, timesteps, encoder_hidden_states=text.repeat_interleave(F_, 0)).sample
    frame_rows = torch.arange(B, device=latents.device) * F_ + frame
    with motion_modules_bypassed(unet), pose_injection(unet, [f[frame_rows] for f in features]):
        pred_i = unet(noisy[:, :, frame:frame + 1], timesteps, encoder_hidden_states=text).sample
    loss_cfg = cfg["loss"]
    parts = {"l_temp": F.mse_loss(pred.float(), noise.float()),
             "l_ad_temp": F.mse_loss(debias(pred.float(), anchor, loss_cfg["ad_beta"]),
                                     debias(noise.float(), anchor, loss_cfg["ad_beta"])),
             "l_spat": F.mse_loss(pred_i.float(), noise[:, :, frame:frame + 1].float()),
             "l_noise": noise_loss.float()}
    loss = sum(loss_cfg[k] * parts[f"l_{k}"] for k in ("spat", "temp", "ad_temp", "noise"))
    return {"loss": loss, **parts}


# --------------------------------------------------------------------------------------------- models


class Stage4Model(torch.nn.Module):
    """The trained parts (UNet LoRA, PhysNet) with the frozen UNet and encoder they act through.

    ``state_dict``/``load_state_dict`` cover only the trained tensors (LoRA + PhysNet), so checkpoints stay
    small (~130 MB at rank 64) and resume restores exactly what the optimizer changes.
    """

    def __init__(self, unet, encoder, physnet):
        super().__init__()
        self.unet, self.encoder, self.physnet = unet, encoder, physnet

    def state_dict(self, *args, **kwargs):
        out = {f"lora.{k}": v for k, v in lora_lib.lora_state_dict(self.unet).items()}
        out.update({f"physnet.{k}": v for k, v in self.physnet.state_dict().items()})
        return out

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        from peft.utils import set_peft_model_state_dict
        lora = {k[5:]: v for k, v in state.items() if k.startswith("lora.")}
        set_peft_model_state_dict(self.unet, lora, adapter_name=lora_lib.ADAPTER)
        self.physnet.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("physnet.")},
                                     strict=strict)


def _path(p) -> Path:
    p = Path(p)
    return p if p.is_absolute() or p.exists() else ROOT / p


@torch.no_grad()
def prompt_embeddings(cfg: dict, prompts: list[str], device) -> dict[str, torch.Tensor]:
    """(1, L, 768) CLIP text embeddings of each prompt (plus "" for caption dropout), then the encoder is freed."""
    from transformers import CLIPTextConfig, CLIPTextModel
    text_model = CLIPTextModel(CLIPTextConfig(**stage1._text_config(cfg)))
    if not cfg["model"]["random_weights"]:
        path = _path(cfg["model"]["checkpoint"])
        sd = pl.read_state_dict(path)
        text_model.load_state_dict(stage1._text_state(sd, text_model, path.name), strict=False)
        del sd
    tokenizer = stage1._tokenizer(cfg)
    text_model.eval().to(device)
    out = {}
    for prompt in [*prompts, ""]:
        ids = tokenizer([prompt], padding="max_length", max_length=int(cfg["text"]["max_length"]),
                        truncation=True, return_tensors="pt").input_ids.to(device)
        out[prompt] = text_model(ids)[0].float()
    return out


def build_models(cfg: dict, device, dtype):
    """(pipeline with a fresh LoRA on its UNet, pose model) as configured."""
    m = cfg["model"]
    config_dir = _path(m["config_dir"]) if m["config_dir"] else pl.SD15_CONFIG_DIR
    if m["random_weights"]:
        pipe = pl.random_pipeline(config_dir, m["motion_version"], True, device, dtype, seed=cfg["seed"],
                                  **({"hidden_channels": None} if m["config_dir"] else {}))
        pose_model = random_pose_model(seed=cfg["seed"])
    else:
        pipe = pl.load_video_pipeline(_path(m["checkpoint"]), _path(m["motion_module"]),
                                      encoder_path=_path(m["encoder"]), device=device, dtype=dtype,
                                      config_dir=config_dir)
        pose_model = load_pose_model(_path(m["pose_model"]))
    pipe.unet.requires_grad_(False)
    pipe.encoder.requires_grad_(False)
    lora = cfg["lora"]
    lora_lib.add_lora(pipe.unet, int(lora["rank"]), float(lora["alpha"]), float(lora["dropout"]))
    for p in pipe.unet.parameters():          # trained tensors in fp32 under mixed precision
        if p.requires_grad:
            p.data = p.data.float()
    pose_model.lifter.requires_grad_(False)
    return pipe, pose_model


def linear_noise_schedule(pipe):
    """DDPM training schedule with the paper's linear betas (the pipeline's scheduler config)."""
    from diffusers import DDPMScheduler
    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")
    return DDPMScheduler(**{k: pipe.scheduler_config[k] for k in keys}, prediction_type="epsilon")


@torch.no_grad()
def encode_video(vae, pixels: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """(B, F, H, W, 3) in [-1, 1] → scaled latents (B, 4, F, H/8, W/8)."""
    B = pixels.shape[0]
    x = rearrange(pixels, "b f h w c -> (b f) c h w").to(vae.device, vae.dtype)
    z = torch.cat([vae.encode(x[i:i + chunk]).latent_dist.sample() for i in range(0, len(x), chunk)])
    return rearrange(z.float() * vae.config.scaling_factor, "(b f) c h w -> b c f h w", b=B)


def draw(batch_size: int, frames: int, steps: int, rng: np.random.Generator, gen: torch.Generator, shape):
    """Random parts of one step: noise, timesteps, anchor frame (L_ad-temp), spatial frame (L_spat)."""
    noise = torch.randn(shape, generator=gen)
    timesteps = torch.randint(0, steps, (batch_size,), generator=gen)
    return noise, timesteps, int(rng.integers(frames)), int(rng.integers(frames))


def make_step_fn(dataset: FineGymVideoClips, pipe, text: dict, cfg: dict, noise_schedule):
    batch_size = int(cfg["train"]["batch_size"])

    def step_fn(step: int, ctx: common.TrainContext) -> dict:
        model = ctx.accelerator.unwrap_model(ctx.extra["model"])
        idx = ctx.shard(ctx.rng.integers(0, len(dataset), batch_size))
        batch = dataset.batch(idx, ctx.rng)
        device = ctx.device
        drop = ctx.shard(ctx.rng.random(batch_size) < float(cfg["data"]["caption_dropout"]))
        emb = torch.cat([text["" if d else p] for p, d in zip(batch["prompt"], drop)]).to(device)
        latents = encode_video(pipe.vae, batch["pixels"].to(device))
        gen = torch.Generator().manual_seed(int(ctx.rng.integers(2 ** 62)))
        noise, t, anchor, frame = draw(len(idx), dataset.frames, noise_schedule.config.num_train_timesteps,
                                       ctx.rng, gen, latents.shape)
        pose = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        with ctx.accelerator.autocast():
            return video_losses(model.unet, model.encoder, model.physnet, latents, emb, pose, noise.to(device),
                                t.to(device), anchor, frame, cfg, noise_schedule)
    return step_fn


@torch.no_grad()
def evaluate(model: Stage4Model, dataset, pipe, text: dict, cfg: dict, noise_schedule, device) -> dict:
    """Mean L_video on fixed draws with the trained LoRA and with the LoRA switched off."""
    ev = cfg["eval"]
    model.eval()
    totals = {"loss_with_lora": 0.0, "loss_without_lora": 0.0}
    for with_lora in (True, False):
        rng = np.random.default_rng(int(ev["seed"]))
        gen = torch.Generator().manual_seed(int(ev["seed"]))
        (model.unet.enable_adapters if with_lora else model.unet.disable_adapters)()
        for _ in range(int(ev["batches"])):
            idx = rng.integers(0, len(dataset), min(int(cfg["train"]["batch_size"]), len(dataset)))
            batch = dataset.batch(idx, rng)
            latents = encode_video(pipe.vae, batch["pixels"].to(device))
            noise, t, anchor, frame = draw(len(idx), dataset.frames, noise_schedule.config.num_train_timesteps,
                                           rng, gen, latents.shape)
            emb = torch.cat([text[p] for p in batch["prompt"]]).to(device)
            pose = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
            out = video_losses(model.unet, model.encoder, model.physnet, latents, emb, pose, noise.to(device),
                               t.to(device), anchor, frame, cfg, noise_schedule)
            totals["loss_with_lora" if with_lora else "loss_without_lora"] += out["loss"].item()
    model.unet.enable_adapters()
    return {k: v / max(1, int(ev["batches"])) for k, v in totals.items()}


def _accelerator(cfg: dict):
    from accelerate import Accelerator
    cuda = torch.cuda.is_available()
    return Accelerator(cpu=not cuda, mixed_precision=cfg["train"]["mixed_precision"] if cuda else "no")


def run(config: dict, args) -> dict:
    """Train stage 4; writes the LoRA, the pose model and eval.json to ``args.out``."""
    cfg = merge_config(config)
    out_dir = Path(args.out)
    accelerator = _accelerator(cfg)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    device = accelerator.device
    pipe, pose_model = build_models(cfg, device, weight_dtype)
    data = cfg["data"]
    dataset = FineGymVideoClips(_path(data["path"]), pose_model, data["frames"], data["resolution"],
                                data["sampling"], data["fit"], data["extended_prompts"])
    text = prompt_embeddings(cfg, dataset.prompts, device)
    if cfg["train"]["gradient_checkpointing"]:
        pipe.unet.enable_gradient_checkpointing()
    model = Stage4Model(pipe.unet, pipe.encoder, pose_model.physnet.to(device))
    noise_schedule = linear_noise_schedule(pipe)
    train = cfg["train"]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=float(train["lr"]), weight_decay=float(train["weight_decay"]))
    max_steps = int(cfg["max_steps"])
    ctx = common.train_loop(
        model, optimizer, make_step_fn(dataset, pipe, text, cfg, noise_schedule), out_dir=out_dir,
        max_steps=max_steps, seed=int(cfg["seed"]), resume=bool(getattr(args, "resume", False)),
        grad_clip=train["grad_clip"], ckpt_every=int(train["ckpt_every"]), log_every=int(train["log_every"]),
        meta={"stage": 4, "config": cfg}, accelerator=accelerator, desc="stage 4",
        stop_after=getattr(args, "stop_after", None))
    result = {"steps": int(ctx.extra["step"]), "clips": len(dataset)}
    if accelerator.is_main_process and result["steps"] == max_steps:
        model.eval()
        lora_lib.save_lora(pipe.unet, out_dir / cfg["output"]["lora"])
        pose_model.meta = {**pose_model.meta, "stage": 4, "stage4_steps": max_steps}
        save_pose_model(pose_model.eval(), out_dir / cfg["output"]["pose_model"])
        result.update(evaluate(model, dataset, pipe, text, cfg, noise_schedule, device))
        common.atomic_write_bytes(out_dir / "eval.json", json.dumps(result, indent=2).encode())
        print(json.dumps(result))
    return result


def run_args(out: str | Path, resume: bool = False, stop_after: int | None = None):
    """An ``args`` object for :func:`run` called from Python."""
    return SimpleNamespace(out=Path(out), resume=resume, stop_after=stop_after)
