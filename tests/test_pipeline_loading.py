"""Loading the video pipeline from fake single files the test writes: an SD1.5-layout (LDM keys) checkpoint
of a tiny UNet + VAE, AnimateDiff motion modules in the original mm_sd_v15_v2 layout, FinePhys LoRA and
encoder files; and the errors for files that do not fit."""
from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from finephys_core import lora as lora_lib
from finephys_core import pipeline_loading as pl
from finephys_core.heatmap_encoder import save_skeleton_encoder

# ------------------------------------------------------------------ diffusers -> LDM / AnimateDiff layouts

RESNET_LDM = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
              ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))


def _prefix_map_unet(cfg: dict) -> dict[str, str]:
    n = cfg["layers_per_block"] + 1
    out = {"mid_block.resnets.0.": "middle_block.0.", "mid_block.attentions.0.": "middle_block.1.",
           "mid_block.resnets.1.": "middle_block.2."}
    for i, up_type in enumerate(cfg["up_block_types"]):
        for j in range(n - 1):
            out[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{n * i + j + 1}.0."
            out[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{n * i + j + 1}.1."
        out[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{n * (i + 1)}.0.op."
        for j in range(n):
            out[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{n * i + j}.0."
            out[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{n * i + j}.1."
        out[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{n * i + n - 1}.{2 if 'CrossAttn' in up_type else 1}."
    return out


def unet_to_ldm(state: dict, cfg: dict) -> dict:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING
    top = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    prefixes = _prefix_map_unet(cfg)
    out = {}
    for key, value in state.items():
        new = top.get(key)
        if new is None:
            old = next(p for p in prefixes if key.startswith(p))
            new, rest = prefixes[old], key[len(old):]
            if ".resnets." in old:
                for a, b in RESNET_LDM:
                    rest = rest.replace(a, b)
            new += rest
        out["model.diffusion_model." + new] = value
    return out


def vae_to_ldm(state: dict, cfg: dict) -> dict:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING
    top = DIFFUSERS_TO_LDM_MAPPING["vae"]
    nb = len(cfg["block_out_channels"])
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for key, value in state.items():
        new = top.get(key, key)
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.",
                     lambda m: f"decoder.up.{nb - 1 - int(m[1])}.block.", new)
        new = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                     lambda m: f"decoder.up.{nb - 1 - int(m[1])}.upsample.", new)
        new = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", new)
        new = new.replace("conv_shortcut", "nin_shortcut")
        if "mid_block.attentions.0." in new:
            new = new.replace("mid_block.attentions.0.", "mid.attn_1.")
            for a, b in attn.items():
                new = new.replace(f".{a}.", f".{b}.")
            if value.ndim == 2:
                value = value[:, :, None, None]
        out["first_stage_model." + new] = value
    return out


def adapter_to_original(state: dict, drop_pe: bool = False) -> dict:
    """diffusers MotionAdapter keys -> AnimateDiff's own (mm_sd_v15_v2.ckpt) keys."""
    out = {}
    for key, value in state.items():
        new = re.sub(r"(motion_modules\.\d+\.)", r"\1temporal_transformer.", key)
        new = (new.replace(".attn1.", ".attention_blocks.0.").replace(".attn2.", ".attention_blocks.1.")
               .replace(".norm1.", ".norms.0.").replace(".norm2.", ".norms.1.").replace(".norm3.", ".ff_norm."))
        if new.endswith("pos_embed.pe"):
            if not drop_pe:
                for k in (0, 1):
                    out[new.replace("pos_embed.pe", f"attention_blocks.{k}.pos_encoder.pe")] = value.clone()
            continue
        out[new] = value
    return out


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny random SD UNet + VAE + motion adapters and the files written from them."""
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("models")
    ucfg = pl.read_json(pl.TINY_CONFIG_DIR / "unet" / "config.json")
    vcfg = pl.read_json(pl.TINY_CONFIG_DIR / "vae" / "config.json")
    unet, vae = UNet2DConditionModel.from_config(ucfg), AutoencoderKL.from_config(vcfg)
    ckpt = {**unet_to_ldm(unet.state_dict(), ucfg), **vae_to_ldm(vae.state_dict(), vcfg),
            "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": torch.zeros(77, 768)}
    save_file({k: v.contiguous() for k, v in ckpt.items()}, str(d / "tiny_sd15.safetensors"))
    adapters = {}
    for version in ("v2", "v3"):
        adapter = MotionAdapter.from_config(pl.motion_adapter_config(version, ucfg))
        with torch.no_grad():  # AnimateDiff's proj_out is zero-initialised: make every tensor distinctive
            for p in adapter.parameters():
                p.normal_(0, 0.02)
        adapters[version] = adapter
    torch.save(adapter_to_original(adapters["v2"].state_dict()), str(d / "mm_sd_v15_v2.ckpt"))
    save_file(adapter_to_original(adapters["v3"].state_dict(), drop_pe=True), str(d / "v3_sd15_mm.safetensors"))
    return {"dir": d, "unet": unet, "vae": vae, "adapters": adapters, "ckpt": ckpt, "ucfg": ucfg}


def _load(tiny, mm="mm_sd_v15_v2.ckpt", **kw):
    d = tiny["dir"]
    return pl.load_video_pipeline(d / "tiny_sd15.safetensors", d / mm, config_dir=pl.TINY_CONFIG_DIR, **kw)


# ---------------------------------------------------------------------------------------------- loading


def test_loads_ldm_checkpoint_and_v2_motion_module_exactly(tiny):
    pipe = _load(tiny)
    state = pipe.unet.state_dict()
    for k, v in tiny["unet"].state_dict().items():
        assert torch.equal(state[k], v), k
    for k, v in tiny["adapters"]["v2"].state_dict().items():
        assert torch.equal(state[k], v), k
    for k, v in tiny["vae"].state_dict().items():
        assert torch.equal(pipe.vae.state_dict()[k], v), k
    assert pipe.unet.mid_block.motion_modules is not None
    assert "v2" in pipe.sources["motion_module"]
    assert pipe.scheduler_config["beta_schedule"] == "linear"
    assert pipe.scheduler_config["beta_start"] == 0.00085 and pipe.scheduler_config["beta_end"] == 0.012


def test_v3_safetensors_without_pe_and_half_precision(tiny):
    pipe = _load(tiny, "v3_sd15_mm.safetensors", dtype=torch.bfloat16)
    assert "v3" in pipe.sources["motion_module"]
    assert not hasattr(pipe.unet.mid_block, "motion_modules") or pipe.unet.mid_block.motion_modules is None
    assert next(pipe.unet.parameters()).dtype == torch.bfloat16
    w = pipe.unet.down_blocks[1].motion_modules[0].proj_in.weight
    assert torch.equal(w, tiny["adapters"]["v3"].down_blocks[1].motion_modules[0].proj_in.weight.bfloat16())


def test_shipped_configs_build_sd15_shapes():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    unet = pl._meta_model(UNet2DConditionModel, pl.read_json(pl.SD15_CONFIG_DIR / "unet" / "config.json"))
    vae = pl._meta_model(AutoencoderKL, pl.read_json(pl.SD15_CONFIG_DIR / "vae" / "config.json"))
    assert abs(sum(p.numel() for p in unet.parameters()) / 1e6 - 859.5) < 0.1
    assert abs(sum(p.numel() for p in vae.parameters()) / 1e6 - 83.7) < 0.1
    for version, (mid, length) in {"v1": (False, 24), "v2": (True, 32), "v3": (False, 32)}.items():
        cfg = pl.read_json(pl.MOTION_CONFIG_DIR / version / "config.json")
        assert (cfg["use_motion_mid_block"], cfg["motion_max_seq_length"]) == (mid, length)


def test_encoder_file_is_loaded_and_checked(tiny, tmp_path):
    encoder = pl.build_encoder(tiny["ucfg"], hidden_channels=None)
    pl._randomise(encoder)
    save_skeleton_encoder(encoder, tmp_path / "enc.safetensors")
    pipe = _load(tiny, encoder_path=tmp_path / "enc.safetensors")
    assert torch.equal(pipe.encoder.outs[0].weight, encoder.outs[0].weight)
    big = pl.build_encoder(pl.read_json(pl.SD15_CONFIG_DIR / "unet" / "config.json"), hidden_channels=(8, 8, 8, 8))
    save_skeleton_encoder(big, tmp_path / "enc_sd15.safetensors")
    with pytest.raises(pl.CheckpointError, match="channels"):
        _load(tiny, encoder_path=tmp_path / "enc_sd15.safetensors")


# ----------------------------------------------------------------------------------------------- errors


def _write(path, tensors):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def test_missing_files_raise_file_not_found(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        pl.load_video_pipeline(tmp_path / "nope.safetensors", tiny["dir"] / "mm_sd_v15_v2.ckpt",
                               config_dir=pl.TINY_CONFIG_DIR)
    with pytest.raises(FileNotFoundError, match="mm.ckpt"):
        _load(tiny, "mm.ckpt")
    (tmp_path / "truncated.safetensors").write_bytes(b"\x10\x00\x00\x00not a header")
    with pytest.raises(pl.CheckpointError, match="truncated.safetensors: not a readable safetensors"):
        pl.load_video_pipeline(tmp_path / "truncated.safetensors", tiny["dir"] / "mm_sd_v15_v2.ckpt",
                               config_dir=pl.TINY_CONFIG_DIR)


@pytest.mark.parametrize("extra, message", [
    ({"conditioner.embedders.1.model.positional_embedding": torch.zeros(1)}, "SDXL"),
    ({"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(32, 1024)},
     "SD2"),
    ({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 9, 3, 3)}, "inpainting"),
])
def test_non_sd15_checkpoints_are_named(tiny, tmp_path, extra, message):
    path = _write(tmp_path / "other.safetensors", {**tiny["ckpt"], **extra})
    with pytest.raises(pl.CheckpointError, match=message):
        pl.load_video_pipeline(path, tiny["dir"] / "mm_sd_v15_v2.ckpt", config_dir=pl.TINY_CONFIG_DIR)


def test_checkpoint_of_wrong_size_is_refused(tiny):
    """The tiny file against the real SD1.5 configs: a clear shape report, not a crash deep in torch."""
    with pytest.raises(pl.CheckpointError, match="Stable Diffusion 1.5 UNet.*wrong shape"):
        pl.load_video_pipeline(tiny["dir"] / "tiny_sd15.safetensors", tiny["dir"] / "mm_sd_v15_v2.ckpt")


def test_motion_module_errors(tiny, tmp_path):
    mm = torch.load(tiny["dir"] / "mm_sd_v15_v2.ckpt", weights_only=True)
    sdxl_like = {k: v for k, v in mm.items() if not k.startswith("down_blocks.3")}
    cases = {
        "sd.safetensors": (tiny["ckpt"], "not an AnimateDiff motion module"),
        "sdxl_mm.safetensors": (sdxl_like, "SDXL"),
        "motion_lora.safetensors": ({"down_blocks.0.motion_modules.0.x.lora_A.weight": torch.zeros(2, 2)},
                                    "LoRA"),
        "wide.safetensors": ({k: torch.cat([v, v], -1) if k.endswith("proj_in.weight") else v
                              for k, v in mm.items()}, "wrong shape"),
    }
    for name, (tensors, message) in cases.items():
        _write(tmp_path / name, tensors)
        with pytest.raises(pl.CheckpointError, match=message) as err:
            _load(tiny, tmp_path / name)
        assert name in str(err.value)


# ------------------------------------------------------------------------------------------------- LoRA


@pytest.fixture(scope="module")
def lora_pipe(tiny, tmp_path_factory):
    """A loaded pipeline with a rank-4 LoRA whose B matrices are random (so the LoRA changes the output)."""
    pipe = _load(tiny)
    n = lora_lib.add_lora(pipe.unet, rank=4)
    with torch.no_grad():
        for k, p in pipe.unet.named_parameters():
            if "lora_B" in k:
                p.normal_(0, 0.1)
    path = lora_lib.save_lora(pipe.unet, tmp_path_factory.mktemp("lora") / "finephys_lora.safetensors")
    return pipe, path, n


def test_lora_save_load_round_trip(tiny, lora_pipe):
    pipe, path, n = lora_pipe
    names = list(lora_lib.lora_state_dict(pipe.unet))
    assert n > 0 and any("motion_modules" in k for k in names) and any(".attentions." in k for k in names)
    loaded = _load(tiny, lora_path=path)
    saved = lora_lib.lora_state_dict(pipe.unet)
    again = lora_lib.lora_state_dict(loaded.unet)
    assert saved.keys() == again.keys() and all(torch.equal(saved[k], again[k]) for k in saved)
    config = loaded.unet.peft_config[lora_lib.ADAPTER]
    assert (config.r, config.lora_dropout) == (4, 0.1)
    x = torch.randn(1, 4, 2, 8, 8)
    text = torch.randn(2, 77, 768)
    with torch.no_grad():
        out = loaded.unet(x, 10, encoder_hidden_states=text).sample
        assert torch.equal(pipe.unet(x, 10, encoder_hidden_states=text).sample, out)
        loaded.unet.disable_adapters()
        assert not torch.equal(loaded.unet(x, 10, encoder_hidden_states=text).sample, out)


def test_lora_errors(tiny, lora_pipe, tmp_path):
    good = lora_lib.lora_state_dict(lora_pipe[0].unet)
    meta = {"format": lora_lib.FORMAT, "rank": "4", "target_modules": '["to_k", "to_out.0", "to_q", "to_v"]'}
    wrong = {k: torch.zeros(v.shape[0], v.shape[1] * 2) if "lora_A" in k and "attn2.to_k" in k else v
             for k, v in good.items()}
    save_file(wrong, str(tmp_path / "wrong.safetensors"), metadata=meta)
    _write(tmp_path / "kohya.safetensors", {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight":
                                            torch.zeros(4, 32)})
    unet = _load(tiny).unet
    with pytest.raises(lora_lib.LoraError, match="wrong.safetensors.*wrong shape"):
        lora_lib.load_lora(unet, tmp_path / "wrong.safetensors")
    assert not getattr(unet, "peft_config", {})  # the failed adapter was removed again
    with pytest.raises(lora_lib.LoraError, match="kohya"):
        lora_lib.load_lora(unet, tmp_path / "kohya.safetensors")


def test_pipeline_moves_every_model_and_counts_their_bytes():
    """What the sampler node's on_compute_device relies on: ``to`` moves the UNet, VAE and encoder and records the
    device the sampler runs on; ``num_bytes`` is what ComfyUI is asked to free for the weights."""
    pipe = pl.random_pipeline(pl.TINY_CONFIG_DIR, hidden_channels=None)
    weights = sum(t.numel() * t.element_size() for m in (pipe.unet, pipe.vae, pipe.encoder)
                  for t in m.state_dict().values())
    assert pipe.num_bytes == weights > 0
    assert pipe.to("meta") is pipe and pipe.device == torch.device("meta")
    assert {t.device.type for m in (pipe.unet, pipe.vae, pipe.encoder) for t in m.state_dict().values()} == {"meta"}
    no_encoder = pl.random_pipeline(pl.TINY_CONFIG_DIR, hidden_channels=None, with_encoder=False)
    assert no_encoder.encoder is None and no_encoder.num_bytes < weights
