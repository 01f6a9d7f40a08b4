"""The pose nodes (detect, pose, pose_io, loaders) called directly, without ComfyUI.

Node modules are imported as ComfyUI imports them: inside the pack as a package, relative imports only.
The widget-order literals below guard saved workflows: changing one means every saved workflow breaks.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import tiny_onnx  # noqa: E402
from finephys_core import metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PACK = "finephys_pack_nodes_pose_test"
POSE_MODULES = ("detect", "pose", "pose_io", "loaders")

# Frozen forever: (node id → widget names in INPUT_TYPES order). Saved workflows store widget values by position.
WIDGETS = {
    "FinePhysDetectPose2D": ["mode", "fps", "frame_stride", "keypoint_set", "device"],
    "FinePhysPoseFromKeypoints": ["fps"],
    "FinePhysCameraMotion": [],
    "FinePhysLoadPoseModel": ["model_name"],
    "FinePhysLiftICL3D": [],
    "FinePhysPhysNetRefine": ["frame_stride"],
    "FinePhysFusePoses": ["weight", "camera_model", "focal", "bones", "fit_2d", "static_camera"],
    "FinePhysSavePose": ["filename_prefix", "format"],
    "FinePhysLoadPose": ["pose_file", "path"],
    "FinePhysPreviewPose": ["height"],
}
# Linked (socket) inputs and outputs, also part of the saved-workflow contract (links store slot indices).
SOCKETS = {
    "FinePhysDetectPose2D": (["images:IMAGE"], ["FINEPHYS_POSE2D"]),
    "FinePhysPoseFromKeypoints": (["pose_keypoint:POSE_KEYPOINT"], ["FINEPHYS_POSE2D"]),
    "FinePhysCameraMotion": (["images:IMAGE", "pose2d:FINEPHYS_POSE2D"], ["FINEPHYS_POSE2D", "IMAGE"]),
    "FinePhysLoadPoseModel": ([], ["FINEPHYS_POSE_MODEL"]),
    "FinePhysLiftICL3D": (["pose2d:FINEPHYS_POSE2D", "pose_model:FINEPHYS_POSE_MODEL"], ["FINEPHYS_POSE3D"]),
    "FinePhysPhysNetRefine": (["pose3d_dd:FINEPHYS_POSE3D", "pose_model:FINEPHYS_POSE_MODEL"], ["FINEPHYS_POSE3D"]),
    "FinePhysFusePoses": (["pose3d_dd:FINEPHYS_POSE3D", "pose3d_pp:FINEPHYS_POSE3D", "pose2d:FINEPHYS_POSE2D"],
                          ["FINEPHYS_POSE3D", "FINEPHYS_POSE2D"]),
    "FinePhysSavePose": (["pose2d:FINEPHYS_POSE2D", "pose3d:FINEPHYS_POSE3D"], ["STRING"]),
    "FinePhysLoadPose": ([], ["FINEPHYS_POSE2D", "FINEPHYS_POSE3D"]),
    "FinePhysPreviewPose": (["pose2d:FINEPHYS_POSE2D", "pose3d:FINEPHYS_POSE3D", "frames:IMAGE"], []),
}
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")

LIGHT_DET = "yolox_tiny_8xb8-300e_humanart-6f3252f9.onnx"
LIGHT_POSE = "rtmpose-s_simcc-body7_pt-body7_420e-256x192-acd4a1ef_20230504.onnx"
UV = np.array([(96, 40), (104, 34), (88, 34), (112, 38), (80, 38), (120, 70), (72, 70), (130, 105), (62, 105),
               (136, 140), (56, 140), (110, 140), (82, 140), (112, 185), (80, 185), (114, 228), (78, 228)], float)


def is_widget(spec) -> bool:
    return isinstance(spec[0], (list, tuple)) or spec[0] in WIDGET_TYPES


def widget_names(cls) -> list[str]:
    inputs = cls.INPUT_TYPES()
    return [n for sect in ("required", "optional") for n, s in inputs.get(sect, {}).items() if is_widget(s)]


def socket_names(cls) -> list[str]:
    inputs = cls.INPUT_TYPES()
    return [f"{n}:{s[0]}" for sect in ("required", "optional") for n, s in inputs.get(sect, {}).items()
            if not is_widget(s)]


def import_pack_modules(name: str, modules) -> dict:
    """Import nodes/<m>.py for each m inside a package named ``name`` (as ComfyUI would), not nodes/__init__."""
    pack = types.ModuleType(name)
    pack.__path__ = [str(ROOT)]
    nodes_pkg = types.ModuleType(f"{name}.nodes")
    nodes_pkg.__path__ = [str(ROOT / "nodes")]
    sys.modules[name], sys.modules[f"{name}.nodes"] = pack, nodes_pkg
    return {m: importlib.import_module(f"{name}.nodes.{m}") for m in modules}


def drop_modules(name: str) -> None:
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]


# Imported once for the whole file, so the poses made here are instances of the classes the nodes check.
MODS = import_pack_modules(PACK, POSE_MODULES)
_seq = importlib.import_module(f"{PACK}.finephys_core.sequence")
Pose2D, Pose3D, PoseError, load_pose, save_pose = (_seq.Pose2D, _seq.Pose3D, _seq.PoseError, _seq.load_pose,
                                                   _seq.save_pose)


@pytest.fixture(scope="module")
def mods():
    return MODS


@pytest.fixture(scope="module")
def classes(mods):
    out = {}
    for m in mods.values():
        out.update(m.NODE_CLASS_MAPPINGS)
    return out


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """Outside ComfyUI the adapter's folders come from these variables."""
    d = {k: tmp_path / k for k in ("models", "input", "output", "temp")}
    for k, v in d.items():
        v.mkdir()
        monkeypatch.setenv("FINEPHYS_MODELS_DIR" if k == "models" else f"FINEPHYS_{k.upper()}_DIR", str(v))
    return d


def core_available(*modules: str) -> bool:
    return all((ROOT / "finephys_core" / f"{m}.py").is_file() for m in modules)


needs_pose_model = pytest.mark.skipif(not core_available("pose_model", "refine", "camera"),
                                      reason="finephys_core.pose_model / refine / camera not written yet")


def h36m_pose2d(T: int, size=(320, 240), fps=25.0) -> Pose2D:
    rng = np.random.default_rng(T)
    base = np.array([(160, 120), (150, 120), (150, 160), (150, 200), (170, 120), (170, 160), (170, 200),
                     (160, 100), (160, 80), (160, 70), (160, 60), (175, 80), (185, 100), (190, 120), (145, 80),
                     (135, 100), (130, 120)], np.float32)
    kp = base[None] + rng.normal(0, 1.0, (T, 17, 2)).astype(np.float32)
    return Pose2D(kp, np.full((T, 17), 0.9, np.float32), size, fps)


def walking_pose3d(T: int, fps=25.0, source="dd") -> Pose3D:
    rng = np.random.default_rng(T + 1)
    joints = rng.normal(0, 0.25, (1, 17, 3)) + rng.normal(0, 0.02, (T, 17, 3))
    joints = joints - joints[:, :1]
    return Pose3D(joints.astype(np.float32), fps, source, image_size=(320, 240))


# ----------------------------------------------------------------------------- structure

def test_node_ids_and_display_names(mods, classes):
    assert set(classes) == set(WIDGETS)
    names = {}
    for m in mods.values():
        names.update(m.NODE_DISPLAY_NAME_MAPPINGS)
    assert set(names) == set(WIDGETS) and all(v.startswith("FinePhys ") for v in names.values())


def test_widget_order_is_frozen(classes):
    """Saved workflows store widget values by position: this list may only ever grow at the end."""
    assert {k: widget_names(c) for k, c in classes.items()} == WIDGETS


def test_sockets_and_return_types_are_frozen(classes):
    for k, c in classes.items():
        assert (socket_names(c), list(c.RETURN_TYPES)) == (SOCKETS[k][0], SOCKETS[k][1]), k


def test_input_types_are_well_formed(classes):
    for k, c in classes.items():
        assert c.CATEGORY == "FinePhys/pose" and c.DESCRIPTION and callable(getattr(c, c.FUNCTION)), k
        assert len(getattr(c, "RETURN_NAMES", c.RETURN_TYPES)) == len(c.RETURN_TYPES), k
        if c.RETURN_TYPES:
            assert len(c.OUTPUT_TOOLTIPS) == len(c.RETURN_TYPES), k
        for sect, inputs in c.INPUT_TYPES().items():
            assert sect in ("required", "optional"), k
            for name, spec in inputs.items():
                assert len(spec) == 2 and spec[1].get("tooltip"), f"{k}.{name} needs a tooltip"
                if isinstance(spec[0], list) and spec[0] and "default" in spec[1]:
                    assert spec[1]["default"] in spec[0], f"{k}.{name}"
    assert classes["FinePhysSavePose"].OUTPUT_NODE and classes["FinePhysPreviewPose"].OUTPUT_NODE


def test_full_pack_entry_exports_pose_nodes():
    """The pack's own __init__.py (what ComfyUI imports) merges these nodes with everyone else's."""
    name = "finephys_pack_entry_test"
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        assert set(WIDGETS) <= set(module.NODE_CLASS_MAPPINGS)
        assert all(k.startswith("FinePhys") for k in module.NODE_CLASS_MAPPINGS)
        assert set(module.NODE_CLASS_MAPPINGS) == set(module.NODE_DISPLAY_NAME_MAPPINGS)
    finally:
        drop_modules(name)


# ----------------------------------------------------------------------------- loaders

def test_load_pose_model_lists_folder_files(classes, dirs):
    folder = dirs["models"] / "finephys"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.safetensors").write_bytes(b"")
    (folder / "sub" / "a.safetensors").write_bytes(b"")
    (folder / "notes.txt").write_text("x")
    choices = classes["FinePhysLoadPoseModel"].INPUT_TYPES()["required"]["model_name"][0]
    assert choices == ["(embedded default)", "b.safetensors", "sub/a.safetensors"]


def test_load_pose_model_is_changed_follows_the_file(classes, dirs):
    import os

    node = classes["FinePhysLoadPoseModel"]
    path = dirs["models"] / "finephys" / "m.safetensors"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"1")
    first = node.IS_CHANGED("m.safetensors")
    assert node.IS_CHANGED("m.safetensors") == first
    os.utime(path, ns=(1, 10**18))
    assert node.IS_CHANGED("m.safetensors") != first
    assert node.IS_CHANGED("gone.safetensors") == "gone.safetensors"
    assert isinstance(node.IS_CHANGED("(embedded default)"), str)


def test_load_pose_model_missing_file_is_clear(classes, dirs):
    with pytest.raises(FileNotFoundError, match="nope.safetensors.*finephys"):
        classes["FinePhysLoadPoseModel"]().run("nope.safetensors")


@needs_pose_model
def test_load_pose_model_default_and_wrong_kind(classes, dirs):
    model = classes["FinePhysLoadPoseModel"]().run("(embedded default)")[0]
    assert hasattr(model, "physnet")
    from safetensors.torch import save_file

    (dirs["models"] / "finephys").mkdir(parents=True, exist_ok=True)
    save_file({"weight": torch.zeros(3)}, str(dirs["models"] / "finephys" / "other.safetensors"))
    with pytest.raises(ValueError, match="not a FinePhys pose model"):
        classes["FinePhysLoadPoseModel"]().run("other.safetensors")


# ----------------------------------------------------------------------------- pose stack

@pytest.fixture(scope="module")
def pose_model(classes):
    if not core_available("pose_model", "refine", "camera"):
        pytest.skip("finephys_core.pose_model / refine / camera not written yet")
    return classes["FinePhysLoadPoseModel"]().run("(embedded default)")[0]


@needs_pose_model
@pytest.mark.parametrize("T", [1, 4, 16])
def test_lift_refine_fuse_chain(classes, pose_model, T):
    pose2d = h36m_pose2d(T)
    dd = classes["FinePhysLiftICL3D"]().run(pose2d, pose_model)[0]
    assert isinstance(dd, Pose3D) and dd.joints.shape == (T, 17, 3) and dd.fps == 25.0
    pp = classes["FinePhysPhysNetRefine"]().run(dd, pose_model, 1)[0]
    assert isinstance(pp, Pose3D) and pp.joints.shape == (T, 17, 3) and pp.source == "pp"
    fused, reproj = classes["FinePhysFusePoses"]().run(dd, pp, pose2d, 0.5, "weak", 0.0, "free")
    assert isinstance(fused, Pose3D) and fused.joints.shape == (T, 17, 3)
    assert isinstance(reproj, Pose2D) and reproj.keypoints.shape == (T, 17, 2)
    assert reproj.image_size == pose2d.image_size
    np.testing.assert_allclose(fused.joints, (dd.joints + pp.joints) / 2, atol=1e-4)
    fused_p, reproj_p = classes["FinePhysFusePoses"]().run(dd, pp, pose2d, 1.0, "perspective", 500.0, "free")
    np.testing.assert_allclose(fused_p.joints, pp.joints, atol=1e-4)
    assert fused_p.camera.focal == 500.0 and reproj_p.keypoints.shape == (T, 17, 2)
    rigid = classes["FinePhysFusePoses"]().run(dd, pp, pose2d)[0]      # default: constant bone lengths
    assert rigid.meta["bones"] == "constant" and metrics.bone_length_std(rigid.joints) < 1e-5
    assert rigid.meta["fit_2d"] == 0                                    # API prompts saved before fit_2d
    fitted = classes["FinePhysFusePoses"]().run(dd, pp, pose2d, fit_2d=20)[0]
    assert fitted.meta["fit_2d"] == 20 and metrics.bone_length_std(fitted.joints) < 1e-5
    assert not np.allclose(fitted.joints, rigid.joints)


@needs_pose_model
def test_pose_nodes_name_the_empty_input(classes, pose_model):
    with pytest.raises(ValueError, match="'pose2d' is empty"):
        classes["FinePhysLiftICL3D"]().run(None, pose_model)
    with pytest.raises(TypeError, match="'pose3d_dd' must be a Pose3D"):
        classes["FinePhysPhysNetRefine"]().run(h36m_pose2d(3), pose_model, 1)


@needs_pose_model
def test_lift_rejects_pose_with_nobody(classes, pose_model):
    empty = Pose2D(np.zeros((4, 17, 2), np.float32), np.zeros((4, 17), np.float32), (320, 240))
    with pytest.raises(PoseError, match="no person detected"):
        classes["FinePhysLiftICL3D"]().run(empty, pose_model)


def test_require_names_input(mods):
    require = mods["pose"].require
    p = h36m_pose2d(2)
    assert require(p, Pose2D, "pose2d") is p
    with pytest.raises(ValueError, match="'pose2d' is empty.*Load Pose"):
        require(None, Pose2D, "pose2d")
    with pytest.raises(TypeError, match="'pose3d' must be a Pose3D; got Pose2D"):
        require(p, Pose3D, "pose3d")


# ----------------------------------------------------------------------------- detection

@pytest.fixture
def rtmlib_dir(dirs, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("rtmlib tried to download a model during a test")
    monkeypatch.setattr("rtmlib.tools.file.urlopen", refuse)
    monkeypatch.setenv("TORCH_HOME", str(dirs["models"] / "torch_home"))
    d = dirs["models"] / "finephys" / "rtmlib"
    tiny_onnx.make_yolox(d / LIGHT_DET)
    tiny_onnx.make_rtmpose(d / LIGHT_POSE, 2 * UV[:, 0], 2 * UV[:, 1], np.full(17, 0.9, np.float32))
    return d


def rgb_frames(T: int, box=(100, 60, 180, 300), empty=(), size=(416, 416)) -> torch.Tensor:
    """ComfyUI IMAGE (T, H, W, 3) float RGB: a blue rectangle 'person' (BGR channel 0 = RGB channel 2)."""
    x = torch.zeros(T, size[0], size[1], 3)
    x1, y1, x2, y2 = box
    for t in range(T):
        if t not in empty:
            x[t, y1:y2, x1:x2, 2] = 1.0
    return x


def test_detect_node_through_rtmlib(classes, rtmlib_dir):
    node = classes["FinePhysDetectPose2D"]()
    pose = node.run(rgb_frames(5, empty=(2,)), "lightweight", 30.0, 1, "coco17", "auto")[0]
    assert isinstance(pose, Pose2D) and pose.keypoints.shape == (5, 17, 2) and pose.layout == "h36m17"
    assert pose.fps == 30.0 and pose.image_size == (416, 416)
    assert (pose.scores[2] == 0).all() and (pose.scores[[0, 1, 3, 4]].max(-1) > 0.8).all()
    pelvis = pose.keypoints[0, 0]
    assert 100 <= pelvis[0] <= 180 and 60 <= pelvis[1] <= 300  # inside the person's box
    detector = node._detector
    strided = node.run(rgb_frames(5), "lightweight", 30.0, 2, "coco17", "cpu")[0]
    assert strided.num_frames == 3 and strided.fps == 15.0
    node.run(rgb_frames(1), "lightweight", 30.0, 1, "coco17", "cpu")
    assert node._detector is detector  # same settings: the loaded models are reused


def test_detect_node_missing_model_names_folder(classes, dirs, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("no network in tests")
    monkeypatch.setattr("rtmlib.tools.file.urlopen", refuse)
    monkeypatch.setattr("rtmlib.tools.file.download_url_to_file", refuse)
    monkeypatch.setenv("TORCH_HOME", str(dirs["models"] / "torch_home"))
    with pytest.raises(FileNotFoundError, match=r"rtmpose-s.*finephys/rtmlib|yolox_tiny.*finephys/rtmlib"):
        classes["FinePhysDetectPose2D"]().run(rgb_frames(1), "lightweight", 25.0, 1, "coco17", "cpu")


def test_detect_node_bad_images(classes, rtmlib_dir):
    with pytest.raises(PoseError, match=r"\(T, H, W, 3\)"):
        classes["FinePhysDetectPose2D"]().run(torch.zeros(2, 64, 64), "lightweight", 25.0, 1, "coco17", "cpu")


def test_pose_from_keypoints(classes):
    people = []
    for t in range(3):
        kp = []
        for j in range(18):
            kp += [100.0 + j + t, 50.0 + 5 * j, 0.9]
        people.append({"people": [{"pose_keypoints_2d": kp}], "canvas_width": 320, "canvas_height": 240})
    people[1] = {"people": [], "canvas_width": 320, "canvas_height": 240}
    pose = classes["FinePhysPoseFromKeypoints"]().run(people, 24.0)[0]
    assert isinstance(pose, Pose2D) and pose.keypoints.shape == (3, 17, 2) and pose.fps == 24.0
    assert pose.image_size == (320, 240) and (pose.scores[1] == 0).all() and (pose.scores[0] > 0).any()


def test_camera_motion_node_measures_a_pan_on_strided_frames(classes):
    from finephys_core.bench.moving_camera import render_frames
    from finephys_core.bench.physics import filmed_detections, load_heldout
    from finephys_core.camera_motion import apply_affine

    clip = load_heldout()[0]
    frames, true = render_frames(clip, 1.0, 1.2)
    seen = filmed_detections(clip, 1.0, 1.2)["det_keypoints"]
    pose = Pose2D(seen[::2], clip["det_scores"][::2], tuple(clip["image_size"]), 12.5)  # detected with stride 2
    images = torch.from_numpy(frames).float() / 255
    out, stabilized = classes["FinePhysCameraMotion"]().run(images, pose)
    assert isinstance(out, Pose2D) and np.array_equal(out.keypoints, pose.keypoints)
    assert np.abs(apply_affine(seen[::2], out.camera_motion) - apply_affine(seen[::2], true[::2])).max() < 2.0
    assert stabilized.shape == (17, 360, 640, 3) and stabilized.dtype == torch.float32   # 854×480 shrunk to 640
    with pytest.raises(PoseError, match="2D pose has 17 frames but there are 10 images"):
        classes["FinePhysCameraMotion"]().run(images[:10], pose)


# ----------------------------------------------------------------------------- files and preview

@pytest.mark.parametrize("fmt", ["npz", "json"])
def test_save_then_load_pose(classes, dirs, fmt):
    p2, p3 = h36m_pose2d(4), walking_pose3d(4, source="fused")
    out = classes["FinePhysSavePose"]().run("clips/run", fmt, pose2d=p2, pose3d=p3)
    paths = out["result"][0].split("\n")
    assert out["ui"]["text"] == paths and len(paths) == 2
    assert [Path(p).name for p in paths] == [f"run_00001_pose2d.{fmt}", f"run_00001_pose3d.{fmt}"]
    assert all(Path(p).parent == dirs["output"] / "clips" for p in paths)
    again = classes["FinePhysSavePose"]().run("clips/run", fmt, pose3d=p3)["result"][0]
    assert Path(again).name == f"run_00002_pose3d.{fmt}"

    loader = classes["FinePhysLoadPose"]
    pose2d, pose3d = loader().run("", path=paths[0])
    assert pose3d is None and isinstance(pose2d, Pose2D)
    np.testing.assert_allclose(pose2d.keypoints, p2.keypoints)
    (dirs["input"] / "mine").mkdir()
    Path(paths[1]).rename(dirs["input"] / "mine" / Path(paths[1]).name)
    assert loader.INPUT_TYPES()["required"]["pose_file"][0] == [f"mine/run_00001_pose3d.{fmt}"]
    assert loader.VALIDATE_INPUTS(f"mine/run_00001_pose3d.{fmt}", "") is True
    pose2d, pose3d = loader().run(f"mine/run_00001_pose3d.{fmt}", "")
    assert pose2d is None and pose3d.source == "fused"
    np.testing.assert_allclose(pose3d.joints, p3.joints)
    assert loader.IS_CHANGED(f"mine/run_00001_pose3d.{fmt}", "") == loader.IS_CHANGED("", paths[0].replace(
        "pose2d", "pose3d").replace(str(dirs["output"] / "clips"), str(dirs["input"] / "mine")))


def test_save_pose_errors(classes, dirs):
    with pytest.raises(ValueError, match="connect a pose2d and/or a pose3d"):
        classes["FinePhysSavePose"]().run("x", "npz")
    with pytest.raises(ValueError, match="outside the output folder"):
        classes["FinePhysSavePose"]().run("../../escape", "npz", pose2d=h36m_pose2d(2))


def test_load_pose_errors(classes, dirs):
    loader = classes["FinePhysLoadPose"]
    assert "no pose file chosen" in loader.VALIDATE_INPUTS("", "")
    assert "pose file not found" in loader.VALIDATE_INPUTS("missing.npz", "")
    assert np.isnan(loader.IS_CHANGED("missing.npz", ""))
    (dirs["input"] / "bad.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(PoseError, match="not a FinePhys pose file"):
        loader().run("bad.json", "")
    (dirs["input"] / "pose.txt").write_text("x")
    assert ".npz or .json" in loader.VALIDATE_INPUTS("", str(dirs["input"] / "pose.txt"))


def test_preview_pose_writes_animated_webp(classes, dirs):
    from PIL import Image

    out = classes["FinePhysPreviewPose"]().run(128, pose2d=h36m_pose2d(3), pose3d=walking_pose3d(5),
                                               frames=torch.rand(3, 240, 320, 3))
    (img,) = out["ui"]["images"]
    assert img["type"] == "temp" and out["ui"]["animated"] == (True,)
    path = dirs["temp"] / img["subfolder"] / img["filename"]
    with Image.open(path) as im:
        assert im.format == "WEBP" and im.n_frames == 5
        assert im.size == (round(128 * 320 / 240 / 2) * 2 + 256, 128)
    with pytest.raises(ValueError, match="connect a pose2d and/or a pose3d"):
        classes["FinePhysPreviewPose"]().run(128)


def test_saved_pose_matches_library_format(classes, dirs):
    """A file from the library loads in the node and vice versa (one format for both)."""
    p3 = walking_pose3d(3)
    save_pose(p3, dirs["input"] / "lib.npz")
    assert classes["FinePhysLoadPose"]().run("lib.npz", "")[1].joints.shape == (3, 17, 3)
    path = classes["FinePhysSavePose"]().run("n", "json", pose3d=p3)["result"][0]
    assert isinstance(load_pose(path), Pose3D)


def test_fuse_poses_static_camera_sizes_the_body_by_its_fall(classes):
    from test_gravity import FPS, _thrown  # a salto in true free fall, seen by a static camera

    rel, kp = _thrown()
    det = Pose2D(kp.astype(np.float32), np.ones(kp.shape[:2], np.float32), (1280, 720), FPS)
    dd, pp = Pose3D((0.9 * rel).astype(np.float32)), Pose3D((0.9 * rel).astype(np.float32), source="pp")
    node = classes["FinePhysFusePoses"]()
    kept, reproj_kept = node.run(dd, pp, det, 0.7, "weak", 0.0, "constant", 50)
    grown, reproj_grown = node.run(dd, pp, det, 0.7, "weak", 0.0, "constant", 50, True)
    assert kept.meta["gravity_size_factor"] == 1.0 and grown.meta["gravity_size_factor"] > 1.02
    np.testing.assert_allclose(reproj_grown.keypoints, reproj_kept.keypoints, atol=1e-3)
