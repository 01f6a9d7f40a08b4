"""OpenPose-style skeleton renders, framing helpers, the 3D preview, and the guidance nodes called directly."""
from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from finephys_core import render
from finephys_core.heatmaps import Guidance
from finephys_core.sequence import Pose2D, Pose3D

ROOT = Path(__file__).resolve().parents[1]


def h36m_pose(T=2, size=(200, 100)) -> Pose2D:
    """A T-pose-ish H36M skeleton inside a (W, H) image; only the right forearm is off-centre."""
    kp = np.zeros((17, 2), np.float32)
    kp[:] = (100, 50)
    kp[14] = (80, 40)   # r_shoulder
    kp[15] = (60, 40)   # r_elbow
    kp[16] = (40, 40)   # r_wrist
    kp[8] = (100, 40)   # thorax (OpenPose neck)
    return Pose2D(np.repeat(kp[None], T, 0), np.ones((T, 17)), size)


def forearm_only(T=1):
    """Only r_elbow and r_wrist seen: exactly one OpenPose limb (3, 4) is drawable."""
    pose = h36m_pose(T)
    scores = np.zeros((T, 17), np.float32)
    scores[:, [15, 16]] = 1.0
    return Pose2D(pose.keypoints, scores, pose.image_size)


def test_render_draws_limb_colour_at_bone_and_nothing_elsewhere():
    img = render.render_skeleton(forearm_only(), size=(100, 200))
    assert img.shape == (1, 100, 200, 3) and img.dtype == torch.float32
    # OpenPose limb 3 = (r_elbow 3, r_wrist 4), yellow OPENPOSE_COLORS[3] at 60 % over black
    mid = img[0, 40, 50].numpy()
    np.testing.assert_allclose(mid, render.OPENPOSE_COLORS[3] * 0.6, atol=1e-5)
    # joints are full-colour circles: r_wrist (OpenPose joint 4) at (40, 40)
    np.testing.assert_allclose(img[0, 40, 40].numpy(), render.OPENPOSE_COLORS[4], atol=1e-5)
    np.testing.assert_allclose(img[0, 40, 60].numpy(), render.OPENPOSE_COLORS[3], atol=1e-5)
    lit = img[0].amax(-1) > 0
    ys, xs = np.nonzero(lit.numpy())
    assert ys.min() >= 36 and ys.max() <= 44 and xs.min() >= 36 and xs.max() <= 64
    assert img[0, 80:, :].abs().max() == 0


def test_render_thresholds_scores_and_scales_size():
    pose = h36m_pose()
    low = Pose2D(pose.keypoints, np.full((2, 17), 0.2), pose.image_size)
    assert render.render_skeleton(low, min_score=0.3).abs().max() == 0
    big = render.render_skeleton(forearm_only(), size=(400, 800))    # stretched ×4
    assert big.shape == (1, 400, 800, 3)
    np.testing.assert_allclose(big[0, 160, 200].numpy(), render.OPENPOSE_COLORS[3] * 0.6, atol=1e-5)
    small = render.render_skeleton(forearm_only(), size=(100, 200))
    thick_big = (big[0, :, 200].amax(-1) > 0).sum().item()
    thick_small = (small[0, :, 50].amax(-1) > 0).sum().item()
    assert thick_big >= 2 * thick_small >= 2          # line width grows with the output size


def test_render_full_h36m_pose_uses_many_colours_and_background():
    pose = h36m_pose()
    bg = torch.full((1, 50, 100, 3), 0.25)
    img = render.render_skeleton(pose, background=bg)
    assert img.shape == (2, 50, 100, 3)
    assert torch.allclose(img[0, 0, 0], torch.tensor(0.25))
    colours = {tuple(np.round(c, 3)) for c in img[0].reshape(-1, 3).numpy()}
    assert len(colours) > 3


def test_to_openpose18_from_h36m_and_coco():
    pose = h36m_pose(1)
    kp, sc = render.to_openpose18(pose.keypoints, pose.scores, "h36m17")
    assert kp.shape == (1, 18, 2) and sc[0, 14:].sum() == 0
    np.testing.assert_allclose(kp[0, 1], pose.keypoints[0, 8])        # neck = thorax
    coco = np.arange(34, dtype=np.float32).reshape(1, 17, 2)
    kp, sc = render.to_openpose18(coco, np.ones((1, 17)), "coco17")
    np.testing.assert_allclose(kp[0, 1], (coco[0, 5] + coco[0, 6]) / 2)
    np.testing.assert_allclose(kp[0, 15], coco[0, 1])                # l_eye


@pytest.mark.parametrize("fit", render.FITS)
def test_fit_frames_matches_fit_keypoints(fit):
    frames = torch.zeros(1, 100, 200, 3)
    frames[0, 30:32, 120:122] = 1.0            # a bright dot centred at (121, 31) in continuous px
    out = render.fit_frames(frames, (64, 64), fit)
    assert out.shape == (1, 64, 64, 3)
    u, v = render.fit_keypoints(np.array([121.0, 31.0]), (200, 100), (64, 64), fit)
    r, c = np.unravel_index(out[0, ..., 0].argmax().item(), (64, 64))
    assert abs(c + 0.5 - u) <= 1.0 and abs(r + 0.5 - v) <= 1.0


def test_render_pose3d_preview():
    joints = np.random.default_rng(0).normal(0, 0.3, (3, 17, 3)).astype(np.float32)
    img = render.render_pose3d_preview(Pose3D(joints), (64, 128))
    assert img.shape == (3, 64, 128, 3) and img.max() > 0.5 and img.min() >= 0


# ----------------------------------------------------------------------------- nodes (without ComfyUI)

@pytest.fixture(scope="module")
def guidance_nodes():
    """Import nodes/guidance.py as ComfyUI does (inside the pack package), without nodes/__init__.py."""
    name = "finephys_pack_under_test"
    pack = types.ModuleType(name)
    pack.__path__ = [str(ROOT)]
    nodes_pkg = types.ModuleType(f"{name}.nodes")
    nodes_pkg.__path__ = [str(ROOT / "nodes")]
    sys.modules[name], sys.modules[f"{name}.nodes"] = pack, nodes_pkg
    try:
        yield importlib.import_module(f"{name}.nodes.guidance")
    finally:
        for key in [k for k in sys.modules if k.startswith(name)]:
            del sys.modules[key]


def test_node_mappings(guidance_nodes):
    m = guidance_nodes.NODE_CLASS_MAPPINGS
    assert set(m) == {"FinePhysSkeletonHeatmap", "FinePhysRenderPose"}
    assert guidance_nodes.NODE_DISPLAY_NAME_MAPPINGS["FinePhysRenderPose"] == "FinePhys Render Pose (OpenPose)"
    for cls in m.values():
        spec = cls.INPUT_TYPES()
        assert "pose2d" in spec["required"] and cls.CATEGORY.startswith("FinePhys/")
        assert callable(getattr(cls, cls.FUNCTION))


def test_heatmap_node(guidance_nodes):
    node = guidance_nodes.FinePhysSkeletonHeatmap()
    pose = h36m_pose(3)
    guidance, preview = node.run(pose, width=96, height=64, sigma=0.0)
    assert type(guidance).__name__ == "Guidance" and guidance.heatmaps.shape == (3, 16, 64, 96)
    assert guidance.sigma == pytest.approx(0.6)
    assert preview.shape == (3, 64, 96, 3) and preview.dtype == torch.float32
    frames = torch.rand(3, 50, 100, 3)
    g2, prev2 = node.run(pose, 96, 64, 2.0, "pad", frames)
    assert g2.sigma == 2.0 and prev2.shape == (3, 64, 96, 3)
    assert isinstance(g2, Guidance) or type(g2).__name__ == "Guidance"


def test_render_node(guidance_nodes):
    node = guidance_nodes.FinePhysRenderPose()
    (img,) = node.run(h36m_pose(2), width=128, height=64)
    assert img.shape == (2, 64, 128, 3) and img.dtype == torch.float32 and img.max() > 0
    (img2,) = node.run(h36m_pose(2), 128, 64, 0.3, "stretch", torch.zeros(1, 40, 80, 3))
    assert img2.shape == (2, 40, 80, 3)
