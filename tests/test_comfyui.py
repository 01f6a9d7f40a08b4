"""The pack inside a real ComfyUI (v0.3.64 or newer): loads without IMPORT FAILED, its nodes are in /object_info
with the right types, and API prompts run end to end over HTTP.

Skipped unless COMFYUI_DIR points at a ComfyUI checkout. ComfyUI runs in a subprocess with
FINEPHYS_COMFY_PYTHON (a venv made by tests/setup_comfyui.sh), else this interpreter:

    bash tests/setup_comfyui.sh /path/to/ComfyUI /path/to/venv-comfy
    COMFYUI_DIR=/path/to/ComfyUI FINEPHYS_COMFY_PYTHON=/path/to/venv-comfy/bin/python \
        python -m pytest -q tests/test_comfyui.py

With FINEPHYS_SD15_MODELS (a models/ folder holding the generation workflow's files, real ones or the random
full-size ones ``python tests/random_sd15.py DIR`` writes) the shipped generation workflow runs too, small.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
import tiny_onnx  # noqa: E402
from comfyui_harness import ui_to_api  # noqa: E402
from test_workflows import saved_value_names  # noqa: E402

from finephys_core.metrics import bone_length_std  # noqa: E402
from finephys_core.sequence import Pose2D, Pose3D, load_pose, save_pose  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
PYTHON = os.environ.get("FINEPHYS_COMFY_PYTHON") or sys.executable
CHROMIUM = os.environ.get("FINEPHYS_CHROMIUM")  # optional: also load every workflow in the real frontend
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
REFINE_WORKFLOW = ROOT / "workflows" / "finephys_pose_refine.json"
GENERATE_WORKFLOW = ROOT / "workflows" / "finephys_generate.json"
SD15_MODELS = os.environ.get("FINEPHYS_SD15_MODELS")
GEN_SIZE, GEN_FRAMES = 64, 8
VIDEO_FRAMES = 8
PACK_DIR_NAME = "ComfyUI-FinePhys"

pytestmark = [
    pytest.mark.comfyui,
    pytest.mark.skipif(not COMFYUI_DIR or not (Path(COMFYUI_DIR) / "main.py").is_file(),
                       reason="set COMFYUI_DIR to a ComfyUI checkout (and FINEPHYS_COMFY_PYTHON to its venv's python)"),
]

POSE_NODES = {  # node id → (input name → type, for every input), output types
    "FinePhysDetectPose2D": ({"images": "IMAGE", "mode": "COMBO", "fps": "FLOAT", "frame_stride": "INT",
                              "keypoint_set": "COMBO", "device": "COMBO"}, ["FINEPHYS_POSE2D"]),
    "FinePhysPoseFromKeypoints": ({"pose_keypoint": "POSE_KEYPOINT", "fps": "FLOAT"}, ["FINEPHYS_POSE2D"]),
    "FinePhysCameraMotion": ({"images": "IMAGE", "pose2d": "FINEPHYS_POSE2D"}, ["FINEPHYS_POSE2D", "IMAGE"]),
    "FinePhysLoadPoseModel": ({"model_name": "COMBO"}, ["FINEPHYS_POSE_MODEL"]),
    "FinePhysLiftICL3D": ({"pose2d": "FINEPHYS_POSE2D", "pose_model": "FINEPHYS_POSE_MODEL"}, ["FINEPHYS_POSE3D"]),
    "FinePhysPhysNetRefine": ({"pose3d_dd": "FINEPHYS_POSE3D", "pose_model": "FINEPHYS_POSE_MODEL",
                               "frame_stride": "INT"}, ["FINEPHYS_POSE3D"]),
    "FinePhysFusePoses": ({"pose3d_dd": "FINEPHYS_POSE3D", "pose3d_pp": "FINEPHYS_POSE3D",
                           "pose2d": "FINEPHYS_POSE2D", "weight": "FLOAT", "camera_model": "COMBO",
                           "focal": "FLOAT", "bones": "COMBO", "fit_2d": "INT", "static_camera": "BOOLEAN"},
                          ["FINEPHYS_POSE3D", "FINEPHYS_POSE2D"]),
    "FinePhysSavePose": ({"filename_prefix": "STRING", "format": "COMBO", "pose2d": "FINEPHYS_POSE2D",
                          "pose3d": "FINEPHYS_POSE3D"}, ["STRING"]),
    "FinePhysLoadPose": ({"pose_file": "COMBO", "path": "STRING"}, ["FINEPHYS_POSE2D", "FINEPHYS_POSE3D"]),
    "FinePhysPreviewPose": ({"height": "INT", "pose2d": "FINEPHYS_POSE2D", "pose3d": "FINEPHYS_POSE3D",
                             "frames": "IMAGE"}, []),
}

T = 16
LIGHT_DET = "yolox_tiny_8xb8-300e_humanart-6f3252f9.onnx"
LIGHT_POSE = "rtmpose-s_simcc-body7_pt-body7_420e-256x192-acd4a1ef_20230504.onnx"
UV = np.array([(96, 40), (104, 34), (88, 34), (112, 38), (80, 38), (120, 70), (72, 70), (130, 105), (62, 105),
               (136, 140), (56, 140), (110, 140), (82, 140), (112, 185), (80, 185), (114, 228), (78, 228)], float)
BOX = (100, 60, 180, 300)


def clip_pose2d() -> Pose2D:
    rng = np.random.default_rng(0)
    base = np.array([(160, 120), (150, 120), (150, 160), (150, 200), (170, 120), (170, 160), (170, 200),
                     (160, 100), (160, 80), (160, 70), (160, 60), (175, 80), (185, 100), (190, 120), (145, 80),
                     (135, 100), (130, 120)], np.float32)
    kp = base[None] + np.linspace(0, 20, T)[:, None, None] + rng.normal(0, 0.5, (T, 17, 2))
    return Pose2D(kp.astype(np.float32), np.full((T, 17), 0.9, np.float32), (320, 240), 25.0)


def prompts() -> dict:
    lift_chain = {
        "1": {"class_type": "FinePhysLoadPose", "inputs": {"pose_file": "finephys_test/clip_pose2d.npz", "path": ""}},
        "2": {"class_type": "FinePhysLoadPoseModel", "inputs": {"model_name": "(embedded default)"}},
        "3": {"class_type": "FinePhysLiftICL3D", "inputs": {"pose2d": ["1", 0], "pose_model": ["2", 0]}},
        "4": {"class_type": "FinePhysPhysNetRefine",
              "inputs": {"pose3d_dd": ["3", 0], "pose_model": ["2", 0], "frame_stride": 1}},
        "5": {"class_type": "FinePhysFusePoses",
              "inputs": {"pose3d_dd": ["3", 0], "pose3d_pp": ["4", 0], "pose2d": ["1", 0], "weight": 0.5,
                         "camera_model": "weak", "focal": 0.0}},
        "6": {"class_type": "FinePhysSavePose",
              "inputs": {"filename_prefix": "finephys_test/fused", "format": "npz", "pose2d": ["5", 1],
                         "pose3d": ["5", 0]}},
        "7": {"class_type": "FinePhysSavePose",
              "inputs": {"filename_prefix": "finephys_test/pp", "format": "json", "pose3d": ["4", 0]}},
        "8": {"class_type": "FinePhysPreviewPose", "inputs": {"height": 128, "pose2d": ["5", 1], "pose3d": ["5", 0]}},
    }
    detect = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "person.png"}},
        "2": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 3}},
        "3": {"class_type": "FinePhysDetectPose2D",
              "inputs": {"images": ["2", 0], "mode": "lightweight", "fps": 30.0, "frame_stride": 1,
                         "keypoint_set": "coco17", "device": "cpu"}},
        "4": {"class_type": "FinePhysSavePose",
              "inputs": {"filename_prefix": "finephys_test/detected", "format": "npz", "pose2d": ["3", 0]}},
        "5": {"class_type": "FinePhysCameraMotion", "inputs": {"images": ["2", 0], "pose2d": ["3", 0]}},
        "6": {"class_type": "FinePhysSavePose",
              "inputs": {"filename_prefix": "finephys_test/tracked", "format": "json", "pose2d": ["5", 0]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["5", 1]}},
    }
    bad_input = {  # Lift fed from the 3D-less output of a 2D file: a clear error, ComfyUI keeps running
        "1": {"class_type": "FinePhysLoadPose", "inputs": {"pose_file": "finephys_test/clip_pose2d.npz", "path": ""}},
        "2": {"class_type": "FinePhysLoadPoseModel", "inputs": {"model_name": "(embedded default)"}},
        "3": {"class_type": "FinePhysPhysNetRefine",
              "inputs": {"pose3d_dd": ["1", 1], "pose_model": ["2", 0], "frame_stride": 1}},
        "4": {"class_type": "FinePhysSavePose",
              "inputs": {"filename_prefix": "finephys_test/never", "format": "npz", "pose3d": ["3", 0]}},
    }
    runs = {"lift_chain": lift_chain, "detect": detect, "bad_input": bad_input,
            "workflow_refine": shipped_refine_prompt()}
    if SD15_MODELS:
        runs.update(workflow_generate=shipped_generate_prompt(5.0), generate_unguided=shipped_generate_prompt(0.0),
                    generate_combined=shipped_generate_prompt(5.0, combine=True))
    return runs


def shipped_refine_prompt(wf: dict | None = None) -> dict:
    """workflows/finephys_pose_refine.json (or ``wf``) as the browser would queue it, pointed at the test's video
    and at the tiny 'lightweight' models (the shipped default mode needs the real 'balanced' files)."""
    wf = wf or json.loads(REFINE_WORKFLOW.read_text())
    prompt = ui_to_api(wf, saved_value_names(wf))
    for entry in prompt.values():
        if entry["class_type"] == "LoadVideo":
            entry["inputs"]["file"] = "clip.mp4"
        if entry["class_type"] == "FinePhysDetectPose2D":
            entry["inputs"].update(mode="lightweight", device="cpu")
    return prompt


def shipped_generate_prompt(guidance_strength: float, combine: bool = False) -> dict:
    """workflows/finephys_generate.json as queued from the browser, made small (64×64, 8 frames, 2 steps), with
    the FinePhys LoRA and encoder chosen, and the sampler's latents saved to compare guidance strengths.
    ``combine``: the positive prompt goes through ConditioningCombine with the negative one."""
    wf = json.loads(GENERATE_WORKFLOW.read_text())
    prompt = shipped_refine_prompt(wf)
    for node_id, entry in prompt.items():
        inputs = entry["inputs"]
        if entry["class_type"] == "FinePhysSkeletonHeatmap":
            inputs.update(width=GEN_SIZE, height=GEN_SIZE)
        if entry["class_type"] == "FinePhysSampler":
            inputs.update(steps=2, width=GEN_SIZE, height=GEN_SIZE, frames=GEN_FRAMES,
                          guidance_strength=guidance_strength)
            sampler_id = node_id
        if entry["class_type"] == "FinePhysLoadPipeline":
            inputs.update(lora="finephys_lora.safetensors", encoder="finephys_encoder.safetensors")
    name = f"g{guidance_strength:g}" + ("_combined" if combine else "")
    prompt["100"] = {"class_type": "SaveLatent",
                     "inputs": {"samples": [sampler_id, 1], "filename_prefix": f"gen_test/{name}"}}
    if combine:
        sampler_inputs = prompt[sampler_id]["inputs"]
        prompt["101"] = {"class_type": "ConditioningCombine",
                         "inputs": {"conditioning_1": sampler_inputs["positive"],
                                    "conditioning_2": sampler_inputs["negative"]}}
        sampler_inputs["positive"] = ["101", 0]
    return prompt


def prepare_base(base: Path) -> None:
    for d in ("custom_nodes", "input/finephys_test", "output", "temp", "user", "models/finephys/rtmlib"):
        (base / d).mkdir(parents=True, exist_ok=True)
    (base / "custom_nodes" / PACK_DIR_NAME).symlink_to(ROOT, target_is_directory=True)
    save_pose(clip_pose2d(), base / "input" / "finephys_test" / "clip_pose2d.npz")
    import cv2
    img = np.zeros((416, 416, 3), np.uint8)
    x1, y1, x2, y2 = BOX
    img[y1:y2, x1:x2, 0] = 255  # BGR blue: the tiny detector boxes channel 0
    cv2.imwrite(str(base / "input" / "person.png"), img)
    video = cv2.VideoWriter(str(base / "input" / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (416, 416))
    for t in range(VIDEO_FRAMES):
        frame = np.zeros((416, 416, 3), np.uint8)
        frame[y1:y2, x1 + 2 * t:x2 + 2 * t, 0] = 255
        video.write(frame)
    video.release()
    rtm = base / "models" / "finephys" / "rtmlib"
    tiny_onnx.make_yolox(rtm / LIGHT_DET)
    tiny_onnx.make_rtmpose(rtm / LIGHT_POSE, 2 * UV[:, 0], 2 * UV[:, 1], np.full(17, 0.9, np.float32))
    if SD15_MODELS:
        for folder in ("checkpoints", "animatediff_models", "finephys"):
            (base / "models" / folder).mkdir(parents=True, exist_ok=True)
            for f in (Path(SD15_MODELS) / folder).glob("*.*"):
                (base / "models" / folder / f.name).symlink_to(f.resolve())


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_base")
    prepare_base(base)
    (base / "prompts.json").write_text(json.dumps(prompts()))
    result_path = base / "result.json"
    cmd = [PYTHON, str(ROOT / "tests" / "comfyui_harness.py"), "--comfyui", COMFYUI_DIR, "--base", str(base),
           "--prompts", str(base / "prompts.json"), "--result", str(result_path)]
    if SD15_MODELS:  # full-size SD1.5 on a CPU: a few minutes per prompt
        cmd += ["--prompt-timeout", "1200"]
    if CHROMIUM:
        cmd += ["--chromium", CHROMIUM, "--workflows", *map(str, WORKFLOWS)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600 if SD15_MODELS else 600)
    if not result_path.exists():
        pytest.fail(f"harness wrote no result (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result = json.loads(result_path.read_text())
    result["base"] = base
    if "error" in result:
        pytest.fail(f"{result['error']}\n--- ComfyUI log tail ---\n{result['log_tail']}")
    return result


def test_pack_imports_without_failure(comfy):
    ours = [line for line in comfy["import_failed"] if PACK_DIR_NAME in line]
    assert not ours, f"{ours}\n{comfy['log_tail']}"
    assert PACK_DIR_NAME in comfy["log_tail"] or comfy["object_info"], comfy["log_tail"]


def test_object_info_lists_pose_nodes_with_types(comfy):
    info = comfy["object_info"]
    missing = sorted(set(POSE_NODES) - set(info))
    assert not missing, f"not in /object_info: {missing}; FinePhys ids there: {sorted(info)}"
    for node_id, (inputs, outputs) in POSE_NODES.items():
        entry = info[node_id]
        got = {}
        for sect in ("required", "optional"):
            for name, spec in entry["input"].get(sect, {}).items():
                got[name] = "COMBO" if isinstance(spec[0], list) or spec[0] == "COMBO" else spec[0]
        assert got == inputs, node_id
        order = [n for sect in ("required", "optional") for n in entry["input_order"].get(sect, [])]
        assert order == list(inputs), node_id
        assert entry["output"] == outputs, node_id
        assert entry["category"] == "FinePhys/pose" and entry["description"], node_id
    assert info["FinePhysSavePose"]["output_node"] and info["FinePhysPreviewPose"]["output_node"]
    combo = info["FinePhysDetectPose2D"]["input"]["required"]["mode"]
    assert {"performance", "balanced", "lightweight", "rtmo"} <= set(combo[0] if isinstance(combo[0], list)
                                                                     else combo[1]["options"])


def test_lift_refine_fuse_save_prompt(comfy):
    run = comfy["prompts"]["lift_chain"]
    assert run["status"] == "success", run
    out = comfy["base"] / "output" / "finephys_test"
    fused3d, fused2d = load_pose(out / "fused_00001_pose3d.npz"), load_pose(out / "fused_00001_pose2d.npz")
    assert isinstance(fused3d, Pose3D) and fused3d.joints.shape == (T, 17, 3) and fused3d.source == "fused"
    # the prompt predates the optional 'bones' input: it still validates and gets the default, rigid bones
    assert fused3d.meta["bones"] == "constant" and bone_length_std(fused3d.joints) < 1e-4
    assert isinstance(fused2d, Pose2D) and fused2d.keypoints.shape == (T, 17, 2) and fused2d.image_size == (320, 240)
    pp = load_pose(out / "pp_00001_pose3d.json")
    assert pp.source == "pp" and pp.joints.shape == (T, 17, 3)
    assert run["outputs"]["6"]["text"] == [str(out / "fused_00001_pose2d.npz"), str(out / "fused_00001_pose3d.npz")]
    (preview,) = run["outputs"]["8"]["images"]
    assert preview["type"] == "temp" and run["outputs"]["8"]["animated"] == [True]
    (served,) = run["views"]["8"]  # fetched through GET /view while ComfyUI ran (it empties temp/ on exit)
    assert served["riff"] == "RIFF" and served["format"] == "WEBP" and served["bytes"] > 100, served


def test_detect_prompt_reads_models_folder(comfy):
    run = comfy["prompts"]["detect"]
    assert run["status"] == "success", run
    pose = load_pose(comfy["base"] / "output" / "finephys_test" / "detected_00001_pose2d.npz")
    assert isinstance(pose, Pose2D) and pose.keypoints.shape == (3, 17, 2) and pose.fps == 30.0
    assert (pose.scores.max(-1) > 0.8).all()
    x1, y1, x2, y2 = BOX
    assert x1 <= pose.keypoints[0, 0, 0] <= x2 and y1 <= pose.keypoints[0, 0, 1] <= y2  # pelvis inside the person
    # the same image three times: Camera Motion finds a still camera, or keeps the last one where the plain
    # background has too little to track; either way every frame maps onto the first unmoved
    tracked = load_pose(comfy["base"] / "output" / "finephys_test" / "tracked_00001_pose2d.json")
    assert tracked.camera_motion.shape == (3, 2, 3) and np.allclose(tracked.camera_motion, np.eye(2, 3), atol=1e-3)
    assert len(run["outputs"]["7"]["images"]) == 3


def test_bad_input_is_a_clear_error(comfy):
    run = comfy["prompts"]["bad_input"]
    assert run["status"] == "error", run
    (err,) = run["errors"]
    assert err["node_type"] == "FinePhysPhysNetRefine" and "'pose3d_dd' is empty" in err["exception_message"]
    assert not (comfy["base"] / "output" / "finephys_test" / "never_00001_pose3d.npz").exists()


def test_shipped_refine_workflow_runs(comfy):
    run = comfy["prompts"]["workflow_refine"]
    assert run["status"] == "success", run
    out = comfy["base"] / "output" / "finephys"
    pose2d, pose3d = load_pose(out / "refined_00001_pose2d.npz"), load_pose(out / "refined_00001_pose3d.npz")
    assert pose2d.keypoints.shape == (VIDEO_FRAMES, 17, 2) and pose2d.image_size == (416, 416)
    assert pose3d.joints.shape == (VIDEO_FRAMES, 17, 3) and pose3d.source == "fused"
    assert abs(pose2d.fps - 25.0) < 1e-3  # the video's fps reached the detector through the linked widget
    # the workflow's Camera Motion node: the reprojection keeps each frame's camera map, the 3D knows it was used
    assert pose2d.camera_motion.shape == (VIDEO_FRAMES, 2, 3) and pose3d.meta["camera_motion_compensated"]


@pytest.mark.skipif(not SD15_MODELS, reason="set FINEPHYS_SD15_MODELS to a models/ folder with SD1.5 files "
                                             "(python tests/random_sd15.py DIR writes random full-size ones)")
def test_shipped_generate_workflow_runs(comfy):
    import cv2
    guided, unguided = comfy["prompts"]["workflow_generate"], comfy["prompts"]["generate_unguided"]
    assert guided["status"] == "success", guided
    assert unguided["status"] == "success", unguided
    out = comfy["base"] / "output"
    outputs = {entry["class_type"]: guided["outputs"].get(node_id) for node_id, entry in
               shipped_generate_prompt(5.0).items()}
    (saved,) = outputs["SaveVideo"]["images"]
    video = cv2.VideoCapture(str(out / saved["subfolder"] / saved["filename"]))
    frames = []
    while (frame := video.read())[0]:
        frames.append(frame[1])
    assert len(frames) == GEN_FRAMES and frames[0].shape == (GEN_SIZE, GEN_SIZE, 3)
    pose3d = load_pose(outputs["FinePhysSavePose"]["text"][1])
    assert pose3d.joints.shape == (VIDEO_FRAMES, 17, 3) and pose3d.source == "fused"
    with_pose, without = (load_file(out / "gen_test" / f"g{g}_00001_.latent")["latent_tensor"] for g in (5, 0))
    assert with_pose.shape == (GEN_FRAMES, 4, GEN_SIZE // 8, GEN_SIZE // 8) and with_pose.isfinite().all()
    # the skeleton reached the UNet: only guidance_strength differs between the two prompts. Random full-size
    # weights move the latents by ~2 % of their std at strength 5 (measured in-process as well), real ones more
    assert (with_pose - without).abs().mean() > 0.005 * without.std()
    # ConditioningCombine reaches the sampler as two entries, whose predictions are averaged
    assert comfy["prompts"]["generate_combined"]["status"] == "success", comfy["prompts"]["generate_combined"]
    combined = load_file(out / "gen_test" / "g5_combined_00001_.latent")["latent_tensor"]
    assert combined.isfinite().all() and (combined - with_pose).abs().mean() > 0.005 * with_pose.std()


@pytest.mark.skipif(not CHROMIUM, reason="set FINEPHYS_CHROMIUM to a chromium binary to check the real frontend")
def test_workflows_load_in_real_frontend(comfy):
    """The browser's own conversion (app.loadGraphData + app.graphToPrompt) gives the prompt ui_to_api gives."""
    for path in WORKFLOWS:
        got = comfy["frontend"][path.stem]
        assert "error" not in got, got
        assert not got["warnings"], got["warnings"]
        wf = json.loads(path.read_text())
        mine = ui_to_api(wf, saved_value_names(wf))
        browser = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in got["output"].items()}
        assert browser == mine, path.name
        assert len(got["workflow"]["nodes"]) == len(wf["nodes"]) and got["workflow"]["links"] == wf["links"]
