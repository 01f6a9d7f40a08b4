"""Skeleton-guided sampling with tiny random-weight models built from the shipped tiny configs, and the
sampler nodes called directly (imported as ComfyUI imports the pack)."""
from __future__ import annotations

import functools
import importlib
import sys
import types
from pathlib import Path

import pytest
import torch

from finephys_core import pipeline_loading as pl
from finephys_core import sampler
from finephys_core.heatmap_encoder import save_skeleton_encoder
from finephys_core.heatmaps import Guidance

ROOT = Path(__file__).resolve().parents[1]
PACK = "finephys_pack_nodes_sampler_test"
SIZE, FRAMES, STEPS = 64, 4, 2

# Frozen forever: saved workflows store widget values by position.
WIDGETS = {
    "FinePhysLoadPipeline": ["checkpoint", "motion_module", "lora", "encoder", "dtype"],
    "FinePhysSampler": ["seed", "steps", "cfg", "width", "height", "frames", "guidance_strength"],
}
SOCKETS = {
    "FinePhysLoadPipeline": ([], ("FINEPHYS_PIPELINE",)),
    "FinePhysSampler": (["pipeline:FINEPHYS_PIPELINE", "positive:CONDITIONING", "negative:CONDITIONING",
                         "guidance:FINEPHYS_GUIDANCE"], ("IMAGE", "LATENT")),
}


def import_node_module(name: str, module: str):
    pack = types.ModuleType(name)
    pack.__path__ = [str(ROOT)]
    nodes_pkg = types.ModuleType(f"{name}.nodes")
    nodes_pkg.__path__ = [str(ROOT / "nodes")]
    sys.modules[name], sys.modules[f"{name}.nodes"] = pack, nodes_pkg
    return importlib.import_module(f"{name}.nodes.{module}")


@pytest.fixture(scope="module")
def pipe():
    return pl.random_pipeline(pl.TINY_CONFIG_DIR, hidden_channels=None)


@pytest.fixture(scope="module")
def text():
    gen = torch.Generator().manual_seed(7)
    return torch.randn(1, 77, 768, generator=gen), torch.randn(1, 77, 768, generator=gen)


@pytest.fixture(scope="module")
def guidance():
    maps = torch.zeros(3, 16, 32, 32)
    maps[:, 3, 8:24, 14:18] = 1.0  # a bar-shaped limb
    return Guidance(maps, (32, 32))


def generate(pipe, text, guidance=None, **kw):
    args = dict(num_frames=FRAMES, height=SIZE, width=SIZE, steps=STEPS, seed=3)
    return sampler.sample_video(pipe, *text, guidance, **{**args, **kw})


@pytest.fixture(scope="module")
def unguided(pipe, text):
    return generate(pipe, text)


def with_encoder(pipe, encoder):
    return pl.FinePhysVideoPipeline(pipe.unet, pipe.vae, pipe.scheduler_config, encoder, pipe.device, pipe.dtype)


# ------------------------------------------------------------------------------------------------- core


def test_unguided_equals_plain_animatediff_pipeline(pipe, text, unguided):
    from diffusers import AnimateDiffPipeline
    plain = AnimateDiffPipeline(vae=pipe.vae, text_encoder=None, tokenizer=None, unet=pipe.unet,
                                motion_adapter=None, scheduler=sampler.make_scheduler(pipe.scheduler_config))
    plain.set_progress_bar_config(disable=True)
    out = plain(prompt_embeds=text[0], negative_prompt_embeds=text[1], num_frames=FRAMES, height=SIZE, width=SIZE,
                num_inference_steps=STEPS, guidance_scale=7.5, generator=torch.Generator().manual_seed(3),
                output_type="pt", decode_chunk_size=8).frames[0]
    frames, latents = unguided
    assert frames.shape == (FRAMES, SIZE, SIZE, 3) and latents.shape == (1, 4, FRAMES, SIZE // 8, SIZE // 8)
    assert torch.equal(frames, out.permute(0, 2, 3, 1))
    assert 0.0 <= frames.min() and frames.max() <= 1.0


def test_zero_initialised_encoder_changes_nothing(pipe, text, guidance, unguided):
    fresh = pl.build_encoder(pipe.unet.config, hidden_channels=None)
    frames, latents = generate(with_encoder(pipe, fresh), text, guidance)
    assert torch.equal(latents, unguided[1]) and torch.equal(frames, unguided[0])


def test_guidance_changes_the_video_and_strength_scales_it(pipe, text, guidance, unguided):
    frames, latents = generate(pipe, text, guidance)
    assert (latents - unguided[1]).abs().max() > 1e-3
    assert not torch.equal(frames, unguided[0])
    off = generate(pipe, text, guidance, guidance_strength=0.0)
    assert torch.equal(off[1], unguided[1])
    double = generate(pipe, text, guidance, guidance_strength=2.0)
    assert (double[1] - unguided[1]).abs().max() > (latents - unguided[1]).abs().max()


def test_hook_equals_feature_added_to_block_output(pipe):
    """The hook adds feature i to what down block i passes on (its skip output and the next block's input)."""
    x, text = torch.randn(1, 4, 2, 8, 8), torch.randn(2, 77, 768)
    block = pipe.unet.down_blocks[1]
    feats = [torch.zeros(2, c, 8 // 2 ** i, 8 // 2 ** i) for i, c in enumerate(pipe.unet.config.block_out_channels)]
    feats[1] = torch.randn_like(feats[1])
    seen = {}
    handle = block.register_forward_hook(lambda m, a, out: seen.setdefault("out", out))
    with torch.no_grad():
        pipe.unet(x, 10, encoder_hidden_states=text)
        plain_skip = seen.pop("out")[1][-2]  # skips: (layer 0, layer 1, downsampled)
        with sampler.pose_injection(pipe.unet, feats):
            pipe.unet(x, 10, encoder_hidden_states=text)
    handle.remove()
    assert torch.equal(seen["out"][1][-2], plain_skip + feats[1])


def test_hooks_are_removed_even_when_interrupted(pipe, text, guidance):
    class Interrupted(Exception):
        pass

    def progress(n):
        raise Interrupted

    with pytest.raises(Interrupted):
        generate(pipe, text, guidance, progress=progress)
    assert all(not b.motion_modules[-1]._forward_hooks for b in pipe.unet.down_blocks)


def test_progress_is_called_once_per_step(pipe, text):
    calls = []
    generate(pipe, text, steps=3, progress=calls.append, decode=False)
    assert calls == [1, 1, 1]


def test_text_embeddings_are_repeated_to_a_common_length():
    pos, neg = torch.randn(1, 77, 768), torch.randn(1, 154, 768)
    both = sampler.cfg_text_embeddings(pos, neg)
    assert both.shape == (2, 154, 768)
    assert torch.equal(both[0], neg[0]) and torch.equal(both[1, 77:], pos[0])
    with pytest.raises(ValueError, match="768"):
        sampler.cfg_text_embeddings(torch.randn(1, 77, 1024), neg)


def test_combined_prompts_average_their_noise_predictions(pipe, text, guidance):
    """ComfyUI's ConditioningCombine: one DDIM step is affine in the noise prediction, so combining two
    positives (and two negatives) gives the mean of the four single-prompt latents' pairings."""
    other_pos, other_neg = torch.randn(1, 77, 768), torch.randn(1, 154, 768)

    def one_step(pos, neg):
        return generate(pipe, (pos, neg), guidance, steps=1, decode=False)[1]

    combined = one_step([text[0], other_pos], [text[1], other_neg])
    singles = [one_step(p, n) for p in (text[0], other_pos) for n in (text[1], other_neg)]
    assert torch.allclose(combined, torch.stack(singles).mean(0), atol=1e-5)
    assert not torch.allclose(combined, singles[0], atol=1e-3)
    twice = generate(pipe, ([text[0], text[0]], text[1]), steps=2, decode=False)[1]
    assert torch.allclose(twice, generate(pipe, text, steps=2, decode=False)[1], atol=1e-5)
    with pytest.raises(ValueError, match="positive conditioning is empty"):
        generate(pipe, ([], text[1]))


def test_heatmaps_are_resampled_to_frames_and_size():
    maps = torch.rand(3, 16, 32, 48)
    out = sampler.resample_heatmaps(maps, 5, 64, 96)
    assert out.shape == (5, 16, 64, 96) and out.min() >= 0 and out.max() <= 1
    assert sampler.resample_heatmaps(maps, 3, 32, 48) is maps


def test_bad_requests_are_explained(pipe, text, guidance):
    with pytest.raises(ValueError, match="multiples of 64"):
        generate(pipe, text, height=100)
    with pytest.raises(ValueError, match="at most 32 frames"):
        generate(pipe, text, num_frames=33)
    with pytest.raises(ValueError, match="no skeletal heatmap encoder"):
        generate(with_encoder(pipe, None), text, guidance)
    with pytest.raises(ValueError, match="heatmap channels"):
        generate(pipe, text, Guidance(torch.rand(2, 17, 32, 32), (32, 32)))


# ------------------------------------------------------------------------------------------------ nodes


@pytest.fixture(scope="module")
def node_module():
    module = import_node_module(PACK, "sampler")
    yield module
    for key in [k for k in sys.modules if k == PACK or k.startswith(PACK + ".")]:
        del sys.modules[key]


def _widgets_and_sockets(cls):
    widgets, sockets = [], []
    for section in ("required", "optional"):
        for name, spec in cls.INPUT_TYPES().get(section, {}).items():
            if isinstance(spec[0], (list, tuple)) or spec[0] in ("INT", "FLOAT", "STRING", "BOOLEAN"):
                widgets.append(name)
            else:
                sockets.append(f"{name}:{spec[0]}")
    return widgets, sockets


def test_node_contract(node_module):
    assert set(node_module.NODE_CLASS_MAPPINGS) == set(WIDGETS)
    for node_id, cls in node_module.NODE_CLASS_MAPPINGS.items():
        widgets, sockets = _widgets_and_sockets(cls)
        assert widgets == WIDGETS[node_id]
        assert (sockets, cls.RETURN_TYPES) == SOCKETS[node_id]
        assert cls.CATEGORY.startswith("FinePhys/") and cls.DESCRIPTION
        assert node_id in node_module.NODE_DISPLAY_NAME_MAPPINGS


def test_sampler_node_outputs_image_and_latent(node_module, pipe, text, guidance, unguided):
    node = node_module.FinePhysSampler()
    positive = [[text[0], {"pooled_output": torch.zeros(1, 768)}]]
    negative = [[text[1], {"pooled_output": torch.zeros(1, 768)}]]
    images, latent = node.sample(pipe, positive, negative, 3, STEPS, 7.5, SIZE, SIZE, FRAMES, 1.0)
    assert images.shape == (FRAMES, SIZE, SIZE, 3) and images.dtype == torch.float32
    assert torch.equal(images, unguided[0])
    assert latent["samples"].shape == (FRAMES, 4, SIZE // 8, SIZE // 8)
    assert torch.allclose(latent["samples"] * 0.18215, unguided[1][0].permute(1, 0, 2, 3), atol=1e-6)
    guided, _ = node.sample(pipe, positive, negative, 3, STEPS, 7.5, SIZE, SIZE, FRAMES, 1.0, guidance=guidance)
    assert not torch.equal(guided, images)


def test_sampler_node_reads_every_conditioning_entry(node_module, caplog):
    a, b = torch.randn(1, 77, 768), torch.randn(1, 77, 768)
    combined = [[a, {"pooled_output": torch.zeros(1, 768)}], [b, {"pooled_output": torch.zeros(1, 768)}]]
    with caplog.at_level("WARNING"):
        tensors = node_module.conditioning_tensors(combined, "positive")
    assert len(tensors) == 2 and tensors[0] is a and tensors[1] is b and not caplog.records
    with caplog.at_level("WARNING"):
        node_module.conditioning_tensors([[a, {"area": (8, 8, 0, 0), "strength": 0.5}]], "positive")
    assert "area, strength" in caplog.text
    for bad in ([], [["text", {}]], "a prompt"):
        with pytest.raises(ValueError, match="not a CONDITIONING"):
            node_module.conditioning_tensors(bad, "negative")


def test_load_pipeline_node_lists_and_loads_model_files(node_module, pipe, tmp_path, monkeypatch):
    monkeypatch.setenv("FINEPHYS_MODELS_DIR", str(tmp_path))
    for folder, name in (("checkpoints", "sd15.safetensors"), ("animatediff_models", "mm_sd_v15_v2.ckpt")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_bytes(b"")
    (tmp_path / "finephys").mkdir()
    save_skeleton_encoder(pipe.encoder, tmp_path / "finephys" / "encoder.safetensors")
    cls = node_module.FinePhysLoadPipeline
    inputs = cls.INPUT_TYPES()["required"]
    assert inputs["checkpoint"][0] == ["sd15.safetensors"]
    assert inputs["motion_module"][0] == ["mm_sd_v15_v2.ckpt"]
    assert inputs["encoder"][0] == ["none", "encoder.safetensors"]
    calls = []
    core = node_module.pipeline_loading
    monkeypatch.setattr(core, "load_video_pipeline",
                        lambda *a, **kw: calls.append((a, kw)) or "pipeline")
    assert cls().load("sd15.safetensors", "mm_sd_v15_v2.ckpt", "none", "encoder.safetensors", "auto") == ("pipeline",)
    (ckpt, mm), kw = calls[0]
    assert (ckpt.name, mm.name, kw["lora_path"], kw["encoder_path"].name) == (
        "sd15.safetensors", "mm_sd_v15_v2.ckpt", None, "encoder.safetensors")
    assert kw["dtype"] == torch.float32  # auto on a CPU
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        cls().load("missing.safetensors", "mm_sd_v15_v2.ckpt")



def recording_model_management(monkeypatch, calls: list, device="cpu", offload="cpu"):
    """ComfyUI's model-management interface as the nodes use it, recording the calls."""
    mm = types.ModuleType("comfy.model_management")
    mm.unload_all_models = lambda: calls.append("unload_all_models")
    mm.soft_empty_cache = lambda force=False: calls.append("soft_empty_cache")
    mm.free_memory = lambda required, dev, keep_loaded=(): calls.append(("free_memory", required, dev))
    mm.get_torch_device = lambda: torch.device(device)
    mm.unet_offload_device = lambda: torch.device(offload)
    mm.intermediate_device = lambda: torch.device("cpu")
    mm.throw_exception_if_processing_interrupted = lambda: None
    comfy = types.ModuleType("comfy")
    comfy.model_management = mm
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.model_management", mm)
    return mm


def test_load_pipeline_node_builds_on_the_offload_device_and_stays_cached(node_module, tmp_path, monkeypatch):
    """Inside ComfyUI the loader builds the pipeline where ComfyUI keeps diffusion models between jobs (the CPU
    unless --highvram), in the compute device's dtype, and unloads nothing. No IS_CHANGED / NOT_IDEMPOTENT:
    ComfyUI caches the pipeline."""
    cls = node_module.FinePhysLoadPipeline
    assert not hasattr(cls, "IS_CHANGED") and not getattr(cls, "NOT_IDEMPOTENT", False)
    monkeypatch.setenv("FINEPHYS_MODELS_DIR", str(tmp_path))
    for folder, name in (("checkpoints", "sd15.safetensors"), ("animatediff_models", "mm.ckpt")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_bytes(b"")
    calls = []
    recording_model_management(monkeypatch, calls, device="cuda", offload="cpu")
    monkeypatch.setattr(node_module.pipeline_loading, "load_video_pipeline",
                        lambda *a, **kw: calls.append(("load", kw["device"], kw["dtype"])) or "pipeline")
    assert cls().load("sd15.safetensors", "mm.ckpt") == ("pipeline",)
    assert calls == [("load", torch.device("cpu"), torch.float16)]     # fp16 for the GPU it will run on


@pytest.mark.parametrize("fail", [None, "sampling", "move"])
def test_sampler_node_borrows_the_gpu_only_for_the_job(node_module, pipe, text, monkeypatch, fail):
    """ComfyUI's upscale-model pattern: free room (weights + activations) on the compute device, move the
    pipeline there, sample, move it back to the offload device and empty the cache, also when sampling fails
    (Cancel raises inside the sampler) or the move to the GPU runs out of memory half-way."""
    calls, moved = [], []
    recording_model_management(monkeypatch, calls, device="cuda", offload="cpu")

    def move(device):  # records the moves without making them, so the tiny pipeline still samples on this CPU
        moved.append((str(device), len(calls)))
        if fail == "move" and str(device) == "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory")
        return pipe
    monkeypatch.setattr(pipe, "to", move, raising=False)
    real = node_module.sampler.sample_video

    def sample_video(*args, **kwargs):
        calls.append("sampling")
        if fail == "sampling":
            raise RuntimeError("interrupted")
        return real(*args, **kwargs)
    monkeypatch.setattr(node_module.sampler, "sample_video", sample_video)
    run = lambda: node_module.FinePhysSampler().sample(  # noqa: E731
        pipe, [[text[0], {}]], [[text[1], {}]], 3, STEPS, 7.5, SIZE, SIZE, FRAMES, 1.0)
    if fail:
        with pytest.raises((RuntimeError, torch.OutOfMemoryError), match="interrupted|out of memory"):
            run()
    else:
        images, latent = run()
        assert images.shape == (FRAMES, SIZE, SIZE, 3) and latent["samples"].shape[0] == FRAMES
    workspace = node_module.sampling_workspace_bytes(FRAMES, SIZE, SIZE, pipe.dtype)
    assert workspace == pytest.approx(2 * FRAMES * (SIZE // 8) ** 2 * 4 * 0.01 * 2 ** 20, abs=1)   # fp32: 4 bytes
    sampled = [] if fail == "move" else ["sampling"]
    assert calls == [("free_memory", pipe.num_bytes + workspace, torch.device("cuda")), *sampled, "soft_empty_cache"]
    # to the GPU after freeing, back (to the CPU) before emptying the cache
    assert moved == [("cuda", 1), ("cpu", 1 + len(sampled))]


def test_load_pipeline_node_end_to_end(node_module, tmp_path, monkeypatch):
    """Real files through the node (tiny configs via the core's config_dir)."""
    ldm = pytest.importorskip("test_pipeline_loading")
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
    from safetensors.torch import save_file
    monkeypatch.setenv("FINEPHYS_MODELS_DIR", str(tmp_path))
    ucfg = pl.read_json(pl.TINY_CONFIG_DIR / "unet" / "config.json")
    vcfg = pl.read_json(pl.TINY_CONFIG_DIR / "vae" / "config.json")
    unet, vae = UNet2DConditionModel.from_config(ucfg), AutoencoderKL.from_config(vcfg)
    adapter = MotionAdapter.from_config(pl.motion_adapter_config("v2", ucfg))
    for folder in ("checkpoints", "animatediff_models"):
        (tmp_path / folder).mkdir()
    ckpt = {**ldm.unet_to_ldm(unet.state_dict(), ucfg), **ldm.vae_to_ldm(vae.state_dict(), vcfg)}
    save_file({k: v.contiguous() for k, v in ckpt.items()}, str(tmp_path / "checkpoints" / "tiny.safetensors"))
    save_file(ldm.adapter_to_original(adapter.state_dict()), str(tmp_path / "animatediff_models" / "mm.safetensors"))
    core = node_module.pipeline_loading
    monkeypatch.setattr(core, "load_video_pipeline",
                        functools.partial(core.load_video_pipeline, config_dir=core.TINY_CONFIG_DIR))
    (loaded,) = node_module.FinePhysLoadPipeline().load("tiny.safetensors", "mm.safetensors", "none", "none", "fp32")
    assert loaded.encoder is None and "v2" in loaded.sources["motion_module"]
    assert torch.equal(loaded.unet.conv_in.weight, unet.conv_in.weight)
