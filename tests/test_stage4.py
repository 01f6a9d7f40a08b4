"""Stage 4 (UNet LoRA + PhysNet end to end with L_spat + L_temp + L_ad-temp) on FineGym-format clips written
by the test, tiny random-weight models from the shipped tiny configs; and the Gym99 prompts."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from finephys_core import lora as lora_lib
from finephys_core import pipeline_loading as pl
from finephys_core.heatmaps import limb_heatmaps
from finephys_core.pose_model import _STANDING, load_pose_model
from finephys_core.prompts import gym_class, gym_classes, gym_prompt
from finephys_core.sequence import Pose2D, save_pose
from training import stage4

TINY_TEXT = {"vocab_size": 600, "hidden_size": 768, "intermediate_size": 64, "num_hidden_layers": 1,
             "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 1,
             "pad_token_id": 1, "hidden_act": "quick_gelu"}


def write_tokenizer(folder):
    """A CLIP BPE tokenizer with a printable-ASCII vocabulary and no merges (every character one token)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in (chr(i) for i in range(33, 127)):
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder


def write_clips(root, classes=(20, 31), frames=10, size=(96, 80)):
    """Pose npz (with class_id) + a folder of PNG frames (first clip) or an MJPG .avi (second clip)."""
    root.mkdir(parents=True, exist_ok=True)
    W, H = size
    for n, class_id in enumerate(classes):
        t = np.arange(frames, dtype=np.float32)[:, None, None]
        kp = _STANDING[None, :, :2] * 50 + np.array([W / 2, H / 2 - 5], np.float32) + np.concatenate(
            [np.sin(t * 0.5) * 4, -np.abs(np.sin(t * 0.3)) * 6], -1)
        path = save_pose(Pose2D(kp, np.ones((frames, 17), np.float32), (W, H), fps=25.0), root / f"clip{n}.npz")
        with np.load(path) as z:
            entries = dict(z)
        np.savez(path, **entries, class_id=np.asarray(class_id))
        images = []
        for i in range(frames):
            img = np.full((H, W, 3), 40 + 10 * i, np.uint8)
            for a, b in zip(kp[i, [0, 8, 11, 14, 1, 4]].astype(int), kp[i, [8, 10, 13, 16, 3, 6]].astype(int)):
                cv2.line(img, tuple(a), tuple(b), (255, 255, 255), 3)
            images.append(img)
        if n == 0:
            (root / "clip0").mkdir()
            for i, img in enumerate(images):
                cv2.imwrite(str(root / "clip0" / f"{i:04d}.png"), img)
        else:
            writer = cv2.VideoWriter(str(root / f"clip{n}.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25, (W, H))
            for img in images:
                writer.write(img)
            writer.release()
    return root


def tiny_config(tmp_path) -> dict:
    return {
        "seed": 0, "max_steps": 2,
        "data": {"path": str(write_clips(tmp_path / "finegym")), "frames": 4, "resolution": 64},
        "model": {"config_dir": str(pl.TINY_CONFIG_DIR), "random_weights": True},
        "text": {"tokenizer": str(write_tokenizer(tmp_path / "tok")), "max_length": 16, "encoder_config": TINY_TEXT},
        "lora": {"rank": 4, "alpha": 4},
        "train": {"lr": 5e-4, "mixed_precision": "no", "gradient_checkpointing": False, "ckpt_every": 1,
                  "log_every": 1},
        "eval": {"batches": 1},
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = stage4.merge_config(tiny_config(tmp_path_factory.mktemp("s4")))
    pipe, pose_model = stage4.build_models(cfg, "cpu", torch.float32)
    data = cfg["data"]
    dataset = stage4.FineGymVideoClips(data["path"], pose_model, data["frames"], data["resolution"])
    text = stage4.prompt_embeddings(cfg, dataset.prompts, "cpu")
    return cfg, pipe, pose_model, dataset, text


def test_dataset_reads_frames_poses_and_prompts(setup):
    cfg, pipe, pose_model, dataset, text = setup
    assert len(dataset) == 2 and dataset.prompts == sorted([gym_prompt(20), gym_prompt(31)])
    batch = dataset.batch([0, 1], np.random.default_rng(0))
    assert batch["pixels"].shape == (2, 4, 64, 64, 3) and -1 <= batch["pixels"].min() < batch["pixels"].max() <= 1
    assert batch["pose2d"].shape == batch["s_dd"].shape == (2, 4, 17, 3)
    assert torch.allclose(batch["dt"], torch.tensor([3 / 25, 3 / 25]))  # 10 frames → indices 0, 3, 6, 9
    assert set(text) == {gym_prompt(20), gym_prompt(31), ""} and text[""].shape == (1, 16, 768)


def test_limb_heatmaps_carry_gradients_to_the_keypoints_with_unchanged_values():
    kp = torch.tensor(_STANDING[None, :, :2] * 50 + [48, 35], dtype=torch.float32).repeat(2, 1, 1)
    scores = torch.ones(2, 17)
    scores[1, 3] = 0.0
    ref = limb_heatmaps(kp, scores, (96, 80), (64, 64), fit="crop")
    kp.requires_grad_(True)
    ours = limb_heatmaps(kp, scores, (96, 80), (64, 64), fit="crop")
    assert ours.shape == ref.shape == (2, 16, 64, 64)
    assert torch.equal(ours.detach(), ref)
    ours.sum().backward()
    assert kp.grad.abs().sum() > 0
    assert kp.grad[1, 3].abs().max() == 0            # a joint of score 0 moves nothing


def test_bypassed_motion_modules_give_the_image_model():
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
    ucfg = pl.read_json(pl.TINY_CONFIG_DIR / "unet" / "config.json")
    torch.manual_seed(0)
    unet2d = UNet2DConditionModel.from_config(ucfg)
    adapter = MotionAdapter.from_config(pl.motion_adapter_config("v2", ucfg))
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_(0, 0.05)
    unet = UNetMotionModel.from_unet2d(unet2d, adapter)
    x, text = torch.randn(1, 4, 1, 8, 8), torch.randn(1, 77, 768)
    with torch.no_grad():
        image = unet2d(x[:, :, 0], 10, text).sample
        with stage4.motion_modules_bypassed(unet):
            bypassed = unet(x, 10, encoder_hidden_states=text).sample[:, :, 0]
        plain = unet(x, 10, encoder_hidden_states=text).sample[:, :, 0]
    assert torch.allclose(bypassed, image, atol=1e-5)
    assert not torch.allclose(plain, image, atol=1e-3)


def test_one_step_lowers_the_loss_on_a_fixed_batch(setup):
    cfg, pipe, pose_model, dataset, text = setup
    model = stage4.Stage4Model(pipe.unet, pipe.encoder, pose_model.physnet)
    ns = stage4.linear_noise_schedule(pipe)
    assert (ns.config.beta_schedule, ns.config.beta_start, ns.config.beta_end) == ("linear", 0.00085, 0.012)
    rng = np.random.default_rng(3)
    batch = dataset.batch([0, 1], rng)
    latents = stage4.encode_video(pipe.vae, batch["pixels"])
    noise, t, anchor, frame = stage4.draw(2, 4, 1000, rng, torch.Generator().manual_seed(0), latents.shape)
    t = torch.tensor([300, 700])
    emb = torch.cat([text[p] for p in batch["prompt"]])

    def loss_of(train: bool):
        model.train(train)
        return stage4.video_losses(model.unet, model.encoder, model.physnet, latents, emb, batch, noise, t,
                                   anchor, frame, cfg, ns)

    params = [p for p in model.parameters() if p.requires_grad]
    assert params and all(not p.requires_grad for p in pipe.encoder.parameters())
    before = loss_of(False)
    assert set(before) == {"loss", "l_spat", "l_temp", "l_ad_temp", "l_noise"}
    opt = torch.optim.AdamW(params, lr=cfg["train"]["lr"], weight_decay=cfg["train"]["weight_decay"])
    loss_of(True)["loss"].backward()
    physnet_grad = sum(p.grad.abs().sum() for p in pose_model.physnet.parameters() if p.grad is not None)
    lora_grad = sum(p.grad.abs().sum() for n, p in pipe.unet.named_parameters() if "lora_B" in n)
    assert physnet_grad > 0 and lora_grad > 0  # the video loss reaches PhysNet through the heatmaps
    opt.step()
    after = loss_of(False)
    assert after["loss"] < before["loss"]
    # checkpoints hold exactly the trained tensors (LoRA + PhysNet) and restore them
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert {k.split(".")[0] for k in state} == {"lora", "physnet"}
    with torch.no_grad():
        for p in params:
            p.add_(1.0)
    model.load_state_dict(state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_run_stage_writes_lora_and_pose_model(tmp_path):
    from training import run_stage
    cfg_path = tmp_path / "stage4.json"
    cfg_path.write_text(json.dumps(tiny_config(tmp_path)))
    out = tmp_path / "run"
    result = run_stage.main(["--stage", "4", "--config", str(cfg_path), "--out", str(out), "--max-steps", "1"])
    assert result["steps"] == 1 and {"loss_with_lora", "loss_without_lora"} <= set(result)
    assert len((out / "losses.jsonl").read_text().splitlines()) == 1
    fresh = pl.random_pipeline(pl.TINY_CONFIG_DIR, with_encoder=False)
    lora_lib.load_lora(fresh.unet, out / "finephys_lora.safetensors")
    assert fresh.unet.peft_config[lora_lib.ADAPTER].r == 4
    assert load_pose_model(out / "pose_model.safetensors").meta["stage"] == 4
    latest = json.loads((out / "latest.json").read_text())
    tensors = (out / f"{latest['name']}.safetensors").stat().st_size
    assert tensors < 20e6  # only LoRA + PhysNet are checkpointed, not the frozen UNet


def test_gym99_prompts():
    classes = gym_classes()
    assert sorted(classes) == list(range(6, 41))
    subsets = [c.subset for c in classes.values()]
    assert (subsets.count("FX-JUMP"), subsets.count("FX-TURN"), subsets.count("FX-SALTO")) == (11, 7, 17)
    assert gym_class(16).label == "Stag jump" and gym_class(40).subset_index == 16
    assert gym_prompt(20, extended=False) == "2 turn on one leg, free leg optional below horizontal"
    assert "two complete turns" in gym_prompt(20)
    with pytest.raises(KeyError, match="FX-JUMP 6–16"):
        gym_prompt(5)


def test_config_file_and_typos():
    from pathlib import Path
    cfg = json.loads((Path(__file__).resolve().parents[1] / "training" / "configs" / "stage4.json").read_text())
    merged = stage4.merge_config(cfg)
    assert merged["max_steps"] == 8000 and merged["model"]["motion_version"] == "v2"
    partial = stage4.merge_config({"lora": {"rank": 8}, "data": {"frames": 8}})   # sections merge, not replace
    assert partial["lora"] == {**stage4.DEFAULTS["lora"], "rank": 8} and partial["data"]["resolution"] == 384
    assert stage4.DEFAULTS["lora"]["rank"] == 64 and stage4.DEFAULTS["data"]["frames"] == 16   # untouched
    with pytest.raises(ValueError, match=r"unknown stage 4 config entries lora\.\['rnak'\]"):
        stage4.merge_config({"lora": {"rnak": 8}})
    with pytest.raises(ValueError, match="unknown stage 4 config entry 'lorra'"):
        stage4.merge_config({"lorra": {}})
    with pytest.raises(ValueError, match="is a section"):
        stage4.merge_config({"lora": 64})
