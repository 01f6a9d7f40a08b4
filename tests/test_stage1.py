"""Stage 1 (skeletal heatmap encoder, ε-prediction, frozen tiny SD1.5-layout UNet) on a HumanArt-format set
written by the test: reader, feature injection, one step lowering the loss, and a run through run_stage."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from training import stage1
from training.humanart import HumanArtDataset

ROOT = Path(__file__).resolve().parents[1]
TINY_TEXT = {"vocab_size": 600, "hidden_size": 768, "intermediate_size": 64, "num_hidden_layers": 1,
             "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 1,
             "pad_token_id": 1, "hidden_act": "quick_gelu"}


def write_tokenizer(folder: Path) -> Path:
    """A CLIP BPE tokenizer with a printable-ASCII vocabulary and no merges (every character one token)."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = [chr(c) for c in range(33, 127)]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder


def coco_person(cx, cy, scale=1.0):
    """COCO-17 [x, y, v]*17 of a standing figure centred at (cx, cy)."""
    pts = np.array([[0, -30], [-3, -32], [3, -32], [-6, -31], [6, -31], [-10, -20], [10, -20], [-14, -5],
                    [14, -5], [-16, 8], [16, 8], [-7, 5], [7, 5], [-7, 20], [7, 20], [-7, 34], [7, 34]], float)
    pts = pts * scale + (cx, cy)
    return np.concatenate([pts, np.full((17, 1), 2.0)], 1).ravel().tolist()


def write_humanart(root: Path, n: int = 4) -> Path:
    images, anns = [], []
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = "real_human/dance" if i < n - 1 else "2D_virtual_human/cartoon"
        rel = f"images/{sub}/{i:06d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        img = (rng.random((80, 96, 3)) * 255).astype(np.uint8)
        cv2.rectangle(img, (40, 10), (56, 70), (255, 255, 255), -1)
        cv2.imwrite(str(root / rel), img)
        images.append({"file_name": rel, "height": 80, "width": 96, "id": i + 1, "description": f"dancer {i}",
                       "category": sub.split("/")[1]})
        anns.append({"keypoints": coco_person(48, 40), "num_keypoints": 17, "iscrowd": 0, "image_id": i + 1,
                     "bbox": [30, 5, 36, 70], "category_id": 1, "id": 10 + i})
    anns.append({"keypoints": coco_person(20, 40, 0.5), "num_keypoints": 17, "iscrowd": 0, "image_id": 1,
                 "category_id": 1, "id": 99})                       # a second person in image 1
    anns.append({"keypoints": [0] * 51, "num_keypoints": 0, "iscrowd": 0, "image_id": 2, "id": 98})  # unlabeled
    path = root / "annotations" / "training_humanart.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"info": {}, "images": images, "annotations": anns, "categories": []}))
    return path


def tiny_config(tmp_path: Path) -> dict:
    ann = write_humanart(tmp_path / "HumanArt")
    return {
        "seed": 0, "max_steps": 2,
        "data": {"annotations": str(ann), "image_root": str(tmp_path / "HumanArt"), "resolution": 64,
                 "caption_dropout": 0.0},
        "eval": {"batches": 1},
        "model": {"config_dir": str(ROOT / "finephys_core" / "configs" / "tiny"), "random_weights": True},
        "text": {"tokenizer": str(write_tokenizer(tmp_path / "tok")), "max_length": 16, "encoder_config": TINY_TEXT},
        "encoder": {"hidden_channels": [16, 32, 32, 32], "num_res_blocks": 1},
        "train": {"batch_size": 2, "lr": 1e-3, "warmup": 0, "mixed_precision": "no",
                  "gradient_checkpointing": False, "ckpt_every": 1, "log_every": 1},
    }


def test_humanart_reader(tmp_path):
    ann = write_humanart(tmp_path)
    ds = HumanArtDataset(ann, tmp_path, subset="real_human")
    assert len(ds) == 3                                   # the cartoon image is out of the subset
    first = ds[0]
    assert first.keypoints.shape == (2, 17, 2) and first.scores.shape == (2, 17)   # two people
    assert first.caption == "dancer 0" and first.image_size == (96, 80) and first.path.exists()
    # H36M pelvis = mid-hips of COCO 11/12 → (48, 45)
    np.testing.assert_allclose(first.keypoints[0, 0], (48, 45))
    assert len(HumanArtDataset(ann, tmp_path, subset=None)) == 4
    assert len(HumanArtDataset(ann, tmp_path, subset="cartoon")) == 1
    with pytest.raises(ValueError, match="no images"):
        HumanArtDataset(ann, tmp_path, subset="sculpture")


def test_injection_matches_diffusers_adapter_residuals():
    from diffusers import UNet2DConditionModel
    from finephys_core.heatmap_encoder import unet2d_injection
    cfg = json.loads((ROOT / "finephys_core/configs/tiny/unet/config.json").read_text())
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})
    x, t, e = torch.randn(2, 4, 16, 16), torch.tensor([10, 500]), torch.randn(2, 5, 768)
    feats = [torch.randn(2, c, 16 >> i, 16 >> i) for i, c in enumerate(cfg["block_out_channels"])]
    with torch.no_grad():
        ref = unet(x, t, e, down_intrablock_additional_residuals=[f.clone() for f in feats]).sample
        with unet2d_injection(unet, feats):
            ours = unet(x, t, e).sample
        plain = unet(x, t, e).sample                       # hooks removed afterwards
    assert torch.equal(ref, ours) and not torch.allclose(ours, plain)
    wrong = [f[:, :1] for f in feats]
    with pytest.raises(ValueError, match="down block 0"), torch.no_grad(), unet2d_injection(unet, wrong):
        unet(x, t, e)


def test_one_training_step_lowers_the_loss_on_a_fixed_batch(tmp_path):
    cfg = stage1.merge_config(tiny_config(tmp_path))
    torch.manual_seed(0)
    frozen = stage1.load_frozen(cfg, "cpu", torch.float32)
    ds = stage1._dataset(cfg["data"])
    batch = stage1.load_batch(ds, [0, 1], 64)
    assert batch["pixels"].shape == (2, 3, 64, 64) and batch["heatmaps"].shape == (2, 16, 64, 64)
    assert batch["heatmaps"].amax() > 0.5
    latents = frozen.encode_images(batch["pixels"])
    text = frozen.encode_text(batch["captions"])
    assert latents.shape == (2, 4, 8, 8) and text.shape == (2, 16, 768)
    noise, t = torch.randn_like(latents), torch.tensor([300, 700])
    enc = stage1.SkeletonEncoder(stage1.SkeletonEncoderConfig.for_unet(
        frozen.unet.config.block_out_channels, hidden_channels=(16, 32, 32, 32), num_res_blocks=1))
    with torch.no_grad():
        base = frozen.unet(frozen.noise.add_noise(latents, noise, t), t, text).sample
        untrained = stage1.epsilon_loss(enc, frozen, latents, batch["heatmaps"], text, noise, t)
    assert untrained.item() == pytest.approx(torch.nn.functional.mse_loss(base, noise).item(), rel=1e-6)
    opt = torch.optim.Adam(enc.parameters(), lr=1e-3)
    loss = stage1.epsilon_loss(enc, frozen, latents, batch["heatmaps"], text, noise, t)
    loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in frozen.unet.parameters())
    opt.step()
    with torch.no_grad():
        after = stage1.epsilon_loss(enc, frozen, latents, batch["heatmaps"], text, noise, t)
    print(f"stage 1 fixed-batch loss {loss.item():.5f} -> {after.item():.5f}")
    assert after.item() < loss.item()


def test_run_stage_1_trains_saves_resumes_and_evaluates(tmp_path):
    from finephys_core.heatmap_encoder import load_skeleton_encoder
    from training.common import read_log
    from training.run_stage import main
    cfg_path = tmp_path / "stage1.json"
    cfg_path.write_text(json.dumps(tiny_config(tmp_path)))
    out = tmp_path / "run"
    result = main(["--stage", "1", "--config", str(cfg_path), "--out", str(out)])
    assert result["steps"] == 2 and result["images"] == 3
    assert {"loss_with_pose", "loss_without_pose"} <= set(result)
    enc = load_skeleton_encoder(out / "skeleton_encoder.safetensors", expect_channels=(32, 64, 64, 64))
    assert any(p.abs().sum() > 0 for p in enc.outs.parameters())          # trained away from zero
    assert [r["step"] for r in read_log(out)] == [1, 2]
    assert json.loads((out / "eval.json").read_text())["steps"] == 2
    again = main(["--stage", "1", "--config", str(cfg_path), "--out", str(out), "--resume", "--max-steps", "3"])
    assert again["steps"] == 3 and [r["step"] for r in read_log(out)] == [1, 2, 3]


def test_config_file_and_typos():
    cfg = json.loads((ROOT / "training" / "configs" / "stage1.json").read_text())
    merged = stage1.merge_config(cfg)
    assert merged["max_steps"] == 54000 and merged["data"]["subset"] == "real_human"
    with pytest.raises(ValueError, match="unknown stage 1 config"):
        stage1.merge_config({"train": {"lr_typo": 1}})


def test_text_encoder_weights_from_ldm_keys():
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(0)
    src = CLIPTextModel(CLIPTextConfig(**TINY_TEXT))
    state = src.state_dict()
    body = {k.removeprefix("text_model."): v for k, v in state.items()}
    ldm = {f"cond_stage_model.transformer.text_model.{k}": v for k, v in body.items()}
    ldm["model.diffusion_model.conv_in.weight"] = torch.zeros(1)
    dst = CLIPTextModel(CLIPTextConfig(**TINY_TEXT))
    dst.load_state_dict(stage1._text_state(ldm, dst, "fake.safetensors"), strict=False)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    with pytest.raises(ValueError, match="no CLIP text encoder"):
        stage1._text_state({"model.diffusion_model.x": torch.zeros(1)}, dst, "unet_only.safetensors")
    sd15 = stage1._text_config({"text": {"encoder_config": None}})
    assert CLIPTextConfig(**sd15).hidden_size == 768


def test_frozen_models_load_from_an_ldm_single_file(tmp_path):
    """The real-run path: UNet, VAE and CLIP text weights from one LDM-layout checkpoint (tiny, written here)."""
    ldm = pytest.importorskip("test_pipeline_loading")     # the sampler helper's diffusers → LDM key writers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel
    cfg = stage1.merge_config(tiny_config(tmp_path))
    ucfg, vcfg = stage1._configs(cfg)
    torch.manual_seed(1)
    unet, vae = UNet2DConditionModel.from_config(ucfg), AutoencoderKL.from_config(vcfg)
    text = CLIPTextModel(CLIPTextConfig(**TINY_TEXT))
    body = {k.removeprefix("text_model."): v for k, v in text.state_dict().items()}
    ckpt = {**ldm.unet_to_ldm(unet.state_dict(), ucfg), **ldm.vae_to_ldm(vae.state_dict(), vcfg),
            **{f"cond_stage_model.transformer.text_model.{k}": v for k, v in body.items()}}
    save_file({k: v.contiguous() for k, v in ckpt.items()}, str(tmp_path / "sd15.safetensors"))
    cfg["model"].update(random_weights=False, checkpoint=str(tmp_path / "sd15.safetensors"))
    frozen = stage1.load_frozen(cfg, "cpu", torch.float32)
    x, t, e = torch.randn(1, 4, 8, 8), torch.tensor([100]), torch.randn(1, 16, 768)
    with torch.no_grad():
        assert torch.equal(frozen.unet(x, t, e).sample, unet(x, t, e).sample)
        ids = frozen.tokenizer(["a dancer"], padding="max_length", max_length=16, return_tensors="pt").input_ids
        assert torch.equal(frozen.text_encoder(ids)[0], text(ids)[0])
    assert not any(p.requires_grad for p in frozen.unet.parameters())
