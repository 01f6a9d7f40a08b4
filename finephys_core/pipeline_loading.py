"""Offline loading of the FinePhys video pipeline: SD1.5 single-file checkpoint + AnimateDiff motion module.

The UNet and VAE come from one LDM-layout file (ComfyUI's ``checkpoints/``), the motion module from an
AnimateDiff file in the original ``mm_sd_v15_v2`` layout or diffusers' layout (``animatediff_models/``).
Configs are the small JSONs shipped in ``finephys_core/configs`` (no hub access, ever). Models are built
on the meta device and the file tensors assigned into them, so a real checkpoint is held in memory once.
No text encoder: prompts arrive as ComfyUI CONDITIONING tensors.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import lora as lora_lib

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SD15_CONFIG_DIR = CONFIG_DIR / "sd15"
TINY_CONFIG_DIR = CONFIG_DIR / "tiny"
MOTION_CONFIG_DIR = CONFIG_DIR / "motion_adapter"

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."


class CheckpointError(ValueError):
    """A model file that cannot be used: the message names the file, what it looks like and what is needed."""


@dataclass
class FinePhysVideoPipeline:
    """What FinePhysSampler needs: the motion UNet, the VAE, the DDIM config and the optional pose encoder.

    unet: diffusers UNetMotionModel (with the FinePhys LoRA adapter when one was loaded);
    vae: AutoencoderKL; scheduler_config: DDIMScheduler config dict (the paper's linear betas);
    encoder: skeletal heatmap encoder (``heatmap_encoder.SkeletonEncoder``) or None.
    """

    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler_config: dict
    encoder: torch.nn.Module | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    sources: dict = field(default_factory=dict)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def cross_attention_dim(self) -> int:
        return int(self.unet.config.cross_attention_dim)

    def modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.unet, self.vae, self.encoder) if m is not None]

    @property
    def num_bytes(self) -> int:
        """Bytes of every weight and buffer of the pipeline's models."""
        return sum(t.numel() * t.element_size() for m in self.modules() for t in (*m.parameters(), *m.buffers()))

    def to(self, device: torch.device | str) -> FinePhysVideoPipeline:
        """Move every model to ``device``, in place (the sampler runs where ``device`` says); returns self."""
        self.device = torch.device(device)
        for module in self.modules():
            module.to(self.device)
        return self

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}={v}" for k, v in self.sources.items())
        return f"FinePhysVideoPipeline({parts}, device={self.device}, dtype={self.dtype})"


# ----------------------------------------------------------------------------------------------- files


def read_json(path: Path | str) -> dict:
    return json.loads(Path(path).read_text())


def read_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors / .ckpt / .pt / .bin file (a ``state_dict`` wrapper is unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as exc:  # SafetensorError: truncated download, wrong format
            raise CheckpointError(f"{path.name}: not a readable safetensors file ({exc})") from exc
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickles with arbitrary objects are refused on purpose
        raise CheckpointError(f"{path.name}: cannot be read safely as a PyTorch checkpoint ({exc}); "
                              "convert it to .safetensors") from exc
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise CheckpointError(f"{path.name}: expected a dict of tensors, got {type(data).__name__}")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


# ------------------------------------------------------------------------------------------- SD1.5 file


def describe_checkpoint(sd: dict[str, torch.Tensor]) -> str | None:
    """What a single-file checkpoint is when it is clearly not SD1.5 (for error messages), else None."""
    keys = sd.keys()
    if any(k.startswith("conditioner.embedders") for k in keys) or f"{UNET_PREFIX}label_emb.0.0.weight" in sd:
        return "an SDXL checkpoint"
    if any("joint_blocks" in k for k in keys):
        return "an SD3 checkpoint"
    if any("double_blocks" in k for k in keys):
        return "a Flux checkpoint"
    if any("motion_modules" in k for k in keys):
        return "an AnimateDiff motion module"
    if any("lora" in k.lower() for k in keys):
        return "a LoRA"
    attn2 = sd.get(f"{UNET_PREFIX}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight")
    if attn2 is not None and attn2.shape[-1] == 1024:
        return "an SD2.x checkpoint (1024-dim OpenCLIP text)"
    conv_in = sd.get(f"{UNET_PREFIX}input_blocks.0.0.weight")
    if conv_in is not None and conv_in.shape[1] != 4:
        return f"an inpainting/edit checkpoint ({conv_in.shape[1]} input channels)"
    if not any(k.startswith(UNET_PREFIX) for k in keys):
        return "not a Stable Diffusion single-file checkpoint (no model.diffusion_model.* keys)"
    return None


def _match_state(model: torch.nn.Module, state: dict, what: str, name: str,
                 optional: tuple[str, ...] = ()) -> None:
    """Raise CheckpointError unless ``state`` has exactly the model's keys and shapes (``optional`` may be absent)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(optional)]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        problems = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                problems.append(f"{len(items)} {label}, e.g. {', '.join(items[:3])}")
        raise CheckpointError(f"{name}: does not match the {what} ({'; '.join(problems)})")


def _meta_model(cls, config: dict):
    from accelerate import init_empty_weights
    with init_empty_weights():  # parameters on 'meta', buffers real
        return cls.from_config(config)


def _assign(model: torch.nn.Module, state: dict, device, dtype) -> torch.nn.Module:
    state = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    # nn.Module.to: diffusers' override only adds a warning about fp32-pinned modules, which these models lack
    return torch.nn.Module.to(model, device=device, dtype=dtype)


def sd15_unet_state(sd: dict, unet_config: dict, name: str) -> dict[str, torch.Tensor]:
    """diffusers-layout UNet2DConditionModel tensors from an LDM single-file state dict, shape-checked."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    kind = describe_checkpoint(sd)
    if kind is not None:
        raise CheckpointError(f"{name}: this is {kind}; FinePhys needs a Stable Diffusion 1.5 checkpoint "
                              "(UNet with 768-dim CLIP-L text attention, 4 latent channels)")
    state = convert_ldm_unet_checkpoint(sd, unet_config)
    _match_state(_meta_model(UNet2DConditionModel, unet_config), state, "Stable Diffusion 1.5 UNet", name)
    return state


def sd15_vae(sd: dict, vae_config: dict, name: str, device, dtype):
    """The AutoencoderKL stored under ``first_stage_model.*`` in an LDM single file."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    if not any(k.startswith(VAE_PREFIX) for k in sd):
        raise CheckpointError(f"{name}: has no VAE (no first_stage_model.* keys); use a full SD1.5 checkpoint")
    state = convert_ldm_vae_checkpoint(sd, vae_config)
    vae = _meta_model(AutoencoderKL, vae_config)
    _match_state(vae, state, "SD1.5 VAE", name)
    return _assign(vae, state, device, dtype).eval()


# ------------------------------------------------------------------------------------------ motion module


def describe_motion_module(sd: dict) -> tuple[str, dict[str, torch.Tensor]]:
    """(AnimateDiff version 'v1'|'v2'|'v3', diffusers-layout MotionAdapter tensors) or a CheckpointError."""
    from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers

    keys = list(sd)
    if not any(".motion_modules." in k for k in keys):
        what = describe_checkpoint(sd) or "a Stable Diffusion checkpoint"
        raise CheckpointError(f"not an AnimateDiff motion module (no motion_modules.* keys; it looks like {what})")
    if any("lora" in k.lower() for k in keys):
        raise CheckpointError("this is a motion LoRA / adapter LoRA, not an AnimateDiff motion module")
    if any(k.startswith(("controlnet_cond_embedding", "conv_in")) for k in keys):
        raise CheckpointError("this is a SparseCtrl / PIA model, not a plain AnimateDiff motion module")
    down_blocks = {int(k.split(".")[1]) for k in keys if k.startswith("down_blocks.")}
    if len(down_blocks) != 4:
        raise CheckpointError(f"motion module has {len(down_blocks)} down blocks (SD1.5 modules have 4; "
                              "3 means an SDXL motion module such as mm_sdxl_v10_beta)")
    pe = [v for k, v in sd.items() if k.endswith("pos_encoder.pe") or k.endswith("pos_embed.pe")]
    if any(k.startswith("mid_block.motion_modules") for k in keys):
        version = "v2"
    else:
        version = "v1" if pe and pe[0].shape[1] == 24 else "v3"
    return version, convert_animatediff_checkpoint_to_diffusers(sd)


def motion_adapter_config(version: str, unet_config: dict) -> dict:
    """The shipped AnimateDiff config of ``version`` with the UNet's geometry (channels, groups, layers)."""
    config = read_json(MOTION_CONFIG_DIR / version / "config.json")
    config.update(block_out_channels=list(unet_config["block_out_channels"]),
                  motion_norm_num_groups=unet_config.get("norm_num_groups", 32),
                  motion_layers_per_block=unet_config.get("layers_per_block", 2))
    return config


# --------------------------------------------------------------------------------------------- assembly


def motion_unet_from_states(unet_config: dict, unet_state: dict, motion_config: dict,
                            motion_state: dict | None, device, dtype, name: str = "motion module",
                            version: str = ""):
    """UNetMotionModel with the given SD UNet and MotionAdapter tensors (motion_state None: random init)."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    adapter = (_meta_model(MotionAdapter, motion_config) if motion_state is not None
               else MotionAdapter.from_config(motion_config))
    if motion_state is not None:
        _match_state(adapter, motion_state, f"AnimateDiff {version} motion module layout for an SD1.5 UNet",
                     name, optional=("pos_embed.pe",))
        motion_state = {**adapter.state_dict(), **motion_state}  # sinusoidal pe buffers are computed, not stored
    else:
        motion_state = adapter.state_dict()
    unet2d = _meta_model(UNet2DConditionModel, unet_config)
    from accelerate import init_empty_weights
    with init_empty_weights():
        unet = UNetMotionModel.from_unet2d(unet2d, adapter, load_weights=False)
    motion_keys = {k for k in unet.state_dict() if "motion_modules" in k}
    state = {**unet_state, **{k: v for k, v in motion_state.items() if k in motion_keys}}
    return _assign(unet, state, device, dtype).eval()


def load_video_pipeline(checkpoint_path: str | Path, motion_module_path: str | Path,
                        lora_path: str | Path | None = None, encoder_path: str | Path | None = None,
                        device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                        config_dir: str | Path = SD15_CONFIG_DIR) -> FinePhysVideoPipeline:
    """Build the FinePhys video pipeline from local files only.

    checkpoint_path: SD1.5 single file (LDM keys, UNet + VAE); motion_module_path: AnimateDiff v1/v2/v3
    motion module (version detected from its keys); lora_path: FinePhys LoRA saved by ``lora.save_lora``;
    encoder_path: skeletal heatmap encoder weights; config_dir: diffusers-layout config folder (unet/, vae/,
    scheduler/), the shipped SD1.5 one by default.
    """
    device = torch.device(device)
    config_dir = Path(config_dir)
    unet_config = read_json(config_dir / "unet" / "config.json")
    vae_config = read_json(config_dir / "vae" / "config.json")
    scheduler_config = read_json(config_dir / "scheduler" / "scheduler_config.json")

    ckpt_name, mm_name = Path(checkpoint_path).name, Path(motion_module_path).name
    sd = read_state_dict(checkpoint_path)
    unet_state = sd15_unet_state(sd, unet_config, ckpt_name)
    vae = sd15_vae(sd, vae_config, ckpt_name, device, dtype)
    del sd

    try:
        version, motion_state = describe_motion_module(read_state_dict(motion_module_path))
    except CheckpointError as exc:
        raise CheckpointError(f"{mm_name}: {exc}") from None
    motion_config = motion_adapter_config(version, unet_config)
    unet = motion_unet_from_states(unet_config, unet_state, motion_config, motion_state, device, dtype,
                                   mm_name, version)

    sources = {"checkpoint": ckpt_name, "motion_module": f"{mm_name} ({version})"}
    if lora_path is not None:
        lora_lib.load_lora(unet, lora_path)
        sources["lora"] = Path(lora_path).name
    encoder = None
    if encoder_path is not None:
        encoder = load_encoder(encoder_path, unet_config, device, dtype)
        sources["encoder"] = Path(encoder_path).name
    return FinePhysVideoPipeline(unet, vae, scheduler_config, encoder, device, dtype, sources)


def random_pipeline(config_dir: str | Path = TINY_CONFIG_DIR, version: str = "v2", with_encoder: bool = True,
                    device="cpu", dtype=torch.float32, seed: int = 0, **encoder_overrides) -> FinePhysVideoPipeline:
    """A random-weight pipeline built from configs (tests, benchmarks); the encoder's zero-initialised
    output convs are randomised too. ``encoder_overrides``: SkeletonEncoderConfig fields."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(seed)
    config_dir, device = Path(config_dir), torch.device(device)
    unet_config = read_json(config_dir / "unet" / "config.json")
    # initialise on the target device (real size on a GPU takes seconds, not minutes); on a CPU the device
    # context would only add overhead to every tensor creation
    with device if device.type != "cpu" else contextlib.nullcontext():
        unet_state = UNet2DConditionModel.from_config(unet_config).state_dict()
        motion_config = motion_adapter_config(version, unet_config)
        unet = motion_unet_from_states(unet_config, unet_state, motion_config, None, device, dtype)
        vae = torch.nn.Module.to(AutoencoderKL.from_config(read_json(config_dir / "vae" / "config.json")),
                                 device, dtype).eval()
        encoder = None
        if with_encoder:
            encoder = build_encoder(unet_config, device, dtype, **encoder_overrides)
            _randomise(encoder)
    scheduler_config = read_json(config_dir / "scheduler" / "scheduler_config.json")
    return FinePhysVideoPipeline(unet, vae, scheduler_config, encoder, device, dtype, {"random": config_dir.name})


# ---------------------------------------------------------------------------------------------- encoder


def build_encoder(unet_config: dict, device="cpu", dtype=torch.float32, **config_overrides):
    """A fresh skeletal heatmap encoder with one output per UNet down block (zero-initialised outputs)."""
    from .heatmap_encoder import SkeletonEncoder, SkeletonEncoderConfig

    config = SkeletonEncoderConfig.for_unet(unet_config["block_out_channels"], **config_overrides)
    return SkeletonEncoder(config).to(device, dtype).eval()


def load_encoder(path: str | Path, unet_config: dict, device="cpu", dtype=torch.float32):
    """Encoder weights written by ``heatmap_encoder.save_skeleton_encoder``, checked against the UNet."""
    from .heatmap_encoder import load_skeleton_encoder

    try:
        encoder = load_skeleton_encoder(path, device, dtype, expect_channels=unet_config["block_out_channels"])
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    return encoder.eval()


def _randomise(module: torch.nn.Module, scale: float = 0.02) -> None:
    """Give zero-initialised weights small random values, so random pipelines show the guidance at work."""
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.normal_(0.0, scale)
