"""Write full-size random-weight SD1.5 generation models into a ComfyUI models/ folder, for running the shipped
generation workflow in a real ComfyUI without the real (hub-only) files:

    python tests/random_sd15.py /path/to/models      # ~3 GB, ~1.5 min on 2 cores

checkpoints/v1-5-pruned-emaonly.safetensors (LDM layout, UNet + VAE + CLIP-L text encoder, fp16),
animatediff_models/mm_sd_v15_v2.ckpt (AnimateDiff's own layout, fp16), and finephys/finephys_encoder.safetensors
+ finephys/finephys_lora.safetensors (rank 8). The names are the shipped workflow's. Then
``FINEPHYS_SD15_MODELS=/path/to/models`` makes tests/test_comfyui.py run the generation workflow too.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_pipeline_loading import adapter_to_original, unet_to_ldm, vae_to_ldm  # noqa: E402

from finephys_core import lora as lora_lib  # noqa: E402
from finephys_core import pipeline_loading as pl  # noqa: E402
from finephys_core.heatmap_encoder import save_skeleton_encoder  # noqa: E402

CHECKPOINT = "checkpoints/v1-5-pruned-emaonly.safetensors"
MOTION_MODULE = "animatediff_models/mm_sd_v15_v2.ckpt"
ENCODER = "finephys/finephys_encoder.safetensors"
LORA = "finephys/finephys_lora.safetensors"


def clip_l_state() -> dict[str, torch.Tensor]:
    """A random CLIP ViT-L/14 text encoder, keyed as in SD1.5 single files."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")
    return {f"cond_stage_model.transformer.{k}": v for k, v in CLIPTextModel(config).state_dict().items()}


def write_random_sd15_models(models_dir: str | Path, seed: int = 0) -> Path:
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
    from safetensors.torch import save_file

    models_dir = Path(models_dir)
    for name in (CHECKPOINT, MOTION_MODULE, ENCODER):
        (models_dir / name).parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    ucfg = pl.read_json(pl.SD15_CONFIG_DIR / "unet" / "config.json")
    vcfg = pl.read_json(pl.SD15_CONFIG_DIR / "vae" / "config.json")
    ckpt = {**unet_to_ldm(UNet2DConditionModel.from_config(ucfg).state_dict(), ucfg),
            **vae_to_ldm(AutoencoderKL.from_config(vcfg).state_dict(), vcfg), **clip_l_state()}
    save_file({k: v.half().contiguous() for k, v in ckpt.items()}, str(models_dir / CHECKPOINT))
    del ckpt
    adapter = MotionAdapter.from_config(pl.motion_adapter_config("v2", ucfg))
    with torch.no_grad():  # AnimateDiff zero-initialises proj_out: random values make the module act
        for p in adapter.parameters():
            p.normal_(0, 0.02)
    torch.save({k: v.half() for k, v in adapter_to_original(adapter.state_dict()).items()},
               str(models_dir / MOTION_MODULE))
    del adapter
    pipe = pl.random_pipeline(pl.SD15_CONFIG_DIR, with_encoder=True, seed=seed)
    save_skeleton_encoder(pipe.encoder, models_dir / ENCODER)
    lora_lib.add_lora(pipe.unet, rank=8)
    lora_lib.save_lora(pipe.unet, models_dir / LORA)
    return models_dir


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(write_random_sd15_models(sys.argv[1]))
