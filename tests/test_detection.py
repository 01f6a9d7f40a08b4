"""DetectPose2D core through rtmlib's real code, with tiny ONNX models built here (tests/tiny_onnx.py).

Persons are rectangles in one pure colour channel; the tiny YOLOX boxes them, the tiny RTMPose emits a
fixed crop-space template, so every expected keypoint follows from the box by rtmlib's affine maths.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import tiny_onnx  # noqa: E402

from finephys_core import detection  # noqa: E402
from finephys_core.detection import (DetectorConfig, PoseDetector, detect_poses, detect_video,  # noqa: E402
                                     image_batch_to_bgr_uint8)
from finephys_core.openpose_io import pose2d_from_openpose  # noqa: E402
from finephys_core.sequence import PoseError  # noqa: E402
from finephys_core.skeleton import coco_to_h36m  # noqa: E402

# rtmlib 0.0.16's checkpoint zip stems (copied from rtmlib/tools/solution/body*.py by hand, so the test
# checks our name resolution rather than repeating it).
LIGHT_DET = "yolox_tiny_8xb8-300e_humanart-6f3252f9.onnx"
LIGHT_POSE = "rtmpose-s_simcc-body7_pt-body7_420e-256x192-acd4a1ef_20230504.onnx"
LIGHT_POSE_HALPE = "rtmpose-s_simcc-body7_pt-body7-halpe26_700e-256x192-7f134165_20230605.onnx"
RTMO_M = "rtmo-m_16xb16-600e_body7-640x640-39e78cc4_20231211.onnx"

# Crop-space template (pixels of the 192x256 RTMPose input), COCO-17 order; left joints at larger x.
TEMPLATE_UV = np.array([
    (96, 40), (104, 34), (88, 34), (112, 38), (80, 38), (120, 70), (72, 70), (130, 105), (62, 105),
    (136, 140), (56, 140), (110, 140), (82, 140), (112, 185), (80, 185), (114, 228), (78, 228)], float)
TEMPLATE_SCORES = np.full(17, 0.9, np.float32)
TEMPLATE_SCORES[1], TEMPLATE_SCORES[2], TEMPLATE_SCORES[16] = 0.5, 0.7, 0.0  # l_eye, r_eye, r_ankle
BLUE, GREEN = 0, 1  # BGR channel of a person


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch, tmp_path):
    """rtmlib's downloader fails loudly, and its default cache is an empty folder."""
    def refuse(*args, **kwargs):
        raise RuntimeError("rtmlib tried to download a model during a test")
    monkeypatch.setattr("rtmlib.tools.file.urlopen", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("rtmlib")
    tiny_onnx.make_yolox(d / LIGHT_DET)
    tiny_onnx.make_rtmpose(d / LIGHT_POSE, 2 * TEMPLATE_UV[:, 0], 2 * TEMPLATE_UV[:, 1], TEMPLATE_SCORES)
    halpe_uv = np.concatenate([TEMPLATE_UV, np.array([(96, 20), (96, 66), (96, 140)] + [(100, 240)] * 6)])
    tiny_onnx.make_rtmpose(d / LIGHT_POSE_HALPE, 2 * halpe_uv[:, 0], 2 * halpe_uv[:, 1], np.full(26, 0.8))
    tiny_onnx.make_rtmo(d / RTMO_M, TEMPLATE_UV[:, 0] / 192, TEMPLATE_UV[:, 1] / 256, TEMPLATE_SCORES)
    return d


@pytest.fixture(scope="module")
def light(model_dir):
    return PoseDetector(DetectorConfig(mode="lightweight", model_dir=model_dir))


def frame(h, w, people=()):
    """uint8 BGR frame with rectangles (channel, x1, y1, x2, y2), ends exclusive."""
    img = np.zeros((h, w, 3), np.uint8)
    for c, x1, y1, x2, y2 in people:
        img[y1:y2, x1:x2, c] = 255
    return img


def expected_coco(box, uv=TEMPLATE_UV, input_wh=(192, 256)):
    """Keypoints rtmlib's RTMPose should return for the template inside ``box``: bbox padded by 1.25,
    widened to the input aspect, template pixels mapped linearly from the crop to the image."""
    x1, y1, x2, y2 = box
    w, h = (x2 - x1) * 1.25, (y2 - y1) * 1.25
    aspect = input_wh[0] / input_wh[1]
    sw, sh = (w, w / aspect) if w > h * aspect else (h * aspect, h)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    x = uv[:, 0] / input_wh[0] * sw + cx - sw / 2
    y = uv[:, 1] / input_wh[1] * sh + cy - sh / 2
    return np.stack([x, y], -1)


SEEN = TEMPLATE_SCORES > 0


def assert_seen(actual, expected, seen=SEEN, atol=1e-3, **kw):
    """Compare the keypoints of joints with a score (a score-0 joint's position means nothing)."""
    np.testing.assert_allclose(np.asarray(actual)[..., seen, :], np.asarray(expected)[..., seen, :],
                               atol=atol, **kw)


def hand_h36m(c, s):
    """COCO → H36M written out joint by joint: (17,2) keypoints and (17,) scores."""
    mid = lambda *i: c[list(i)].mean(0)  # noqa: E731
    kp = [mid(11, 12), c[12], c[14], c[16], c[11], c[13], c[15], mid(5, 6, 11, 12), mid(5, 6), c[0],
          mid(1, 2), c[5], c[7], c[9], c[6], c[8], c[10]]
    sc = [min(s[11], s[12]), s[12], s[14], s[16], s[11], s[13], s[15], min(s[5], s[6], s[11], s[12]),
          (s[5] + s[6]) / 2, s[0], (s[1] + s[2]) / 2, s[5], s[7], s[9], s[6], s[8], s[10]]
    return np.array(kp), np.array(sc)


# ----------------------------------------------------------------------------- skeleton conversion

def test_coco_to_h36m_hand_computed():
    c = np.arange(34, dtype=float).reshape(17, 2) * np.array([1.0, 10.0])
    s = np.linspace(0.1, 0.9, 17)
    kp, sc = coco_to_h36m(c, s)
    # pelvis = mean of hips (11: (22,230), 12: (24,250)); its score is the lower hip score
    np.testing.assert_allclose(kp[0], [23.0, 240.0])
    assert sc[0] == pytest.approx(s[11])
    # head = mean of eyes (1: (2,30), 2: (4,50)), score = mean of eye scores
    np.testing.assert_allclose(kp[10], [3.0, 40.0])
    assert sc[10] == pytest.approx((0.15 + 0.2) / 2)
    # thorax = mean of shoulders (5: (10,110), 6: (12,130)); spine = mean of shoulders and hips
    np.testing.assert_allclose(kp[8], [11.0, 120.0])
    np.testing.assert_allclose(kp[7], [17.0, 180.0])
    assert sc[7] == pytest.approx(0.35)
    # right ankle = COCO 16, left wrist = COCO 9
    np.testing.assert_allclose(kp[3], [32.0, 330.0])
    np.testing.assert_allclose(kp[13], [18.0, 190.0])
    ref_kp, ref_sc = hand_h36m(c, s)
    np.testing.assert_allclose(kp, ref_kp, rtol=1e-6)
    np.testing.assert_allclose(sc, ref_sc, rtol=1e-6)


# ----------------------------------------------------------------------------- model files

def test_mode_resolves_to_rtmlib_file_names(model_dir, light):
    files = light.model_files()
    assert files == {"det": str(model_dir / LIGHT_DET), "pose": str(model_dir / LIGHT_POSE)}
    spec = detection.model_spec("lightweight")
    assert spec.det_input_size == (416, 416) and spec.pose_input_size == (192, 256)
    assert detection.model_spec("performance").pose_input_size == (288, 384)
    assert detection.model_file_name(detection.model_spec("rtmo").pose_url) == RTMO_M


def test_missing_model_with_downloads_blocked_names_file_and_folder(tmp_path):
    empty = tmp_path / "models" / "finephys" / "rtmlib"
    det = PoseDetector(DetectorConfig(mode="balanced", model_dir=empty))
    with pytest.raises(FileNotFoundError) as err:
        det(frame(64, 64))
    msg = str(err.value)
    assert "yolox_m_8xb8-300e_humanart-c2c7a14a.onnx" in msg or "rtmpose-m_simcc" in msg
    assert str(empty) in msg and "tried to download" in msg  # the attempt reached rtmlib and was refused

    off = PoseDetector(DetectorConfig(mode="rtmo-l", model_dir=empty, allow_download=False))
    with pytest.raises(FileNotFoundError, match="rtmo-l_16xb16-600e_body7-640x640-b37118ce_20231211.onnx"):
        off.model_files()
    with pytest.raises(FileNotFoundError, match="pose model file not found"):
        PoseDetector(DetectorConfig(pose_path=tmp_path / "nope.onnx", det_path=tmp_path / "x")).model_files()


def test_download_lands_in_model_dir_as_zip_stem(tmp_path, monkeypatch, model_dir):
    """rtmlib's download path, with its transfer replaced by a local copy of an mmdeploy-style zip."""
    import zipfile
    fetched = []

    def fake_transfer(url, dst, hash_prefix=None, progress=True, timeout=30):
        fetched.append(url)
        source = model_dir / (LIGHT_DET if "/yolox_" in url else LIGHT_POSE)
        with zipfile.ZipFile(dst, "w") as z:
            z.write(source, "some_export_dir/end2end.onnx")

    monkeypatch.setattr("rtmlib.tools.file.download_url_to_file", fake_transfer)
    target = tmp_path / "models" / "finephys" / "rtmlib"
    (target / "decoy").mkdir(parents=True)
    (target / "decoy" / "end2end.onnx").write_bytes(b"a user's unrelated export")  # rtmlib's glob bait
    det = PoseDetector(DetectorConfig(mode="lightweight", model_dir=[target, tmp_path / "other"]))
    files = det.model_files()
    assert files == {"det": str(target / LIGHT_DET), "pose": str(target / LIGHT_POSE)}
    assert sorted(p.name for p in target.iterdir()) == sorted([LIGHT_DET, LIGHT_POSE, "decoy"])  # no zips
    assert all(u.startswith("https://download.openmmlab.com/") for u in fetched) and len(fetched) == 2
    assert_seen(det(frame(416, 416, [(BLUE, 100, 60, 180, 300)]))[0][0], expected_coco((100, 60, 180, 300)))
    PoseDetector(DetectorConfig(mode="lightweight", model_dir=target)).model_files()
    assert len(fetched) == 2  # found locally the second time


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown detection mode"):
        DetectorConfig(mode="fast")
    with pytest.raises(ValueError, match="RTMO"):
        DetectorConfig(mode="rtmo", keypoint_set="halpe26")


# ----------------------------------------------------------------------------- detection

def test_one_person_exact_keypoints(light):
    box = (100, 60, 180, 300)
    img = frame(416, 416, [(BLUE, *box)])  # 416 = detector input: no resize, the box is exact
    kp, sc, boxes = light(img)
    np.testing.assert_allclose(boxes, [box])
    assert_seen(kp[0], expected_coco(box), atol=1e-3)
    np.testing.assert_allclose(sc[0], TEMPLATE_SCORES, atol=1e-6)

    pose = detect_poses([img], light, fps=30.0)
    assert pose.layout == "h36m17" and pose.image_size == (416, 416) and pose.fps == 30.0
    ref_kp, ref_sc = hand_h36m(expected_coco(box), TEMPLATE_SCORES)
    assert_seen(pose.keypoints[0], ref_kp, seen=ref_sc > 0)
    np.testing.assert_allclose(pose.scores[0], ref_sc, atol=1e-6)
    assert pose.scores[0, 3] == 0.0  # r_ankle came with score 0 and stays missing


def test_letterboxed_frame_maps_back_to_image_pixels(light):
    box = (200, 100, 330, 560)  # even starts/ends: a 0.5 resize keeps the edges exact
    pose = detect_poses([frame(624, 832, [(GREEN, *box)])], light, layout_out="coco17")
    assert pose.layout == "coco17" and pose.image_size == (832, 624)
    assert_seen(pose.keypoints[0], expected_coco(box), atol=1e-3)


def test_empty_frame_is_explicit_zero_not_full_frame_fallback(light):
    empty = frame(416, 416)
    kp, sc, boxes = light(empty)
    assert kp.shape == (0, 17, 2) and sc.shape == (0, 17) and boxes.shape == (0, 4)
    person = frame(416, 416, [(BLUE, 100, 60, 180, 300)])
    pose = detect_poses([person, empty, person], light)
    assert pose.num_frames == 3
    assert (pose.scores[1] == 0).all() and (pose.keypoints[1] == 0).all()
    assert (pose.scores[[0, 2]].max(-1) > 0.8).all()
    np.testing.assert_allclose(pose.keypoints[0], pose.keypoints[2])
    with pytest.raises(PoseError, match="no person detected"):
        detect_poses([empty, empty], light).require_visible()


def test_two_people_main_performer_is_largest_then_continuous(light):
    a0, b = (40, 60, 140, 380), (260, 100, 330, 300)  # A large on the left, B smaller on the right
    a1 = (50, 150, 120, 290)                             # A shrinks below B's size but stays in place
    a2, b2 = (45, 120, 125, 300), (230, 40, 390, 400)   # after an empty frame B is the biggest
    frames = [frame(416, 416, [(BLUE, *a0), (GREEN, *b)]),
              frame(416, 416, [(BLUE, *a1), (GREEN, *b)]),
              frame(416, 416),
              frame(416, 416, [(BLUE, *a2), (GREEN, *b2)])]
    pose = detect_poses(frames, light, layout_out="coco17")
    for t, box in ((0, a0), (1, a1), (3, a2)):
        assert_seen(pose.keypoints[t], expected_coco(box), atol=1e-3, err_msg=f"frame {t}")
    assert (pose.scores[2] == 0).all()
    # with only B present first, B is the performer and stays so when a bigger A appears beside it
    pose = detect_poses([frame(416, 416, [(GREEN, *b)]), frames[0]], light, layout_out="coco17")
    assert_seen(pose.keypoints, [expected_coco(b)] * 2, atol=1e-3)


def test_comfy_image_float_batch_matches_uint8_bgr(light):
    torch = pytest.importorskip("torch")
    box = (100, 60, 180, 300)
    bgr = frame(416, 416, [(BLUE, *box)])
    image = torch.from_numpy(bgr[..., ::-1].astype(np.float32) / 255.0).unsqueeze(0).repeat(2, 1, 1, 1)
    converted = image_batch_to_bgr_uint8(image)
    assert len(converted) == 2 and converted[0].dtype == np.uint8 and converted[0].flags.c_contiguous
    np.testing.assert_array_equal(converted[0], bgr)
    calls = []
    pose = detect_poses(image, light, progress=calls.append, layout_out="coco17")
    assert calls == [1, 1]
    assert_seen(pose.keypoints[1], expected_coco(box), atol=1e-3)
    np.testing.assert_array_equal(image_batch_to_bgr_uint8(bgr[None, ..., ::-1])[0], bgr)  # uint8 RGB
    rgb = np.array([[[[1.2, 0.4, -0.1], [0.5 / 255, 1.5 / 255, 254.4 / 255]]]], np.float64)
    np.testing.assert_array_equal(image_batch_to_bgr_uint8(rgb)[0], [[[0, 102, 255], [254, 2, 0]]])


def test_bad_frames_give_clear_errors(light):
    good = frame(416, 416)
    with pytest.raises(PoseError, match=r"\(T, H, W, 3\)"):
        image_batch_to_bgr_uint8(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(PoseError, match=r"\(T, H, W, 3\)"):
        image_batch_to_bgr_uint8(np.zeros((1, 32, 32, 4), np.float32))
    with pytest.raises(PoseError, match="empty"):
        image_batch_to_bgr_uint8(np.zeros((0, 32, 32, 3), np.float32))
    nan = np.zeros((2, 8, 8, 3), np.float32)
    nan[1, 2, 3, 0] = np.nan
    with pytest.raises(PoseError, match=r"NaN.*frames \[1\]"):
        image_batch_to_bgr_uint8(nan)
    with pytest.raises(PoseError, match="dtype int32"):
        image_batch_to_bgr_uint8(np.zeros((1, 8, 8, 3), np.int32))
    with pytest.raises(PoseError, match="uint8 BGR"):
        detect_poses([good.astype(np.float32) / 255], light)
    with pytest.raises(PoseError, match="same size"):
        detect_poses([good, frame(200, 416)], light)
    with pytest.raises(PoseError, match="no frames"):
        detect_poses([], light)
    with pytest.raises(ValueError, match="layout_out"):
        detect_poses([good], light, layout_out="halpe26")


def test_threaded_frames_keep_order(model_dir):
    det = PoseDetector(DetectorConfig(mode="lightweight", model_dir=model_dir, workers=2))
    boxes = [(100 + 10 * t, 60, 180 + 10 * t, 300) for t in range(5)]
    pose = detect_poses([frame(416, 416, [(BLUE, *b)]) for b in boxes], det, layout_out="coco17")
    for t, b in enumerate(boxes):
        assert_seen(pose.keypoints[t], expected_coco(b), atol=1e-3)


def test_rtmo_one_stage(model_dir):
    det = PoseDetector(DetectorConfig(mode="rtmo", model_dir=model_dir))
    x1, y1, x2, y2 = box = (200, 100, 296, 612)
    pose = detect_poses([frame(640, 640, [(GREEN, *box)]), frame(640, 640)], det, layout_out="coco17")
    uv = TEMPLATE_UV / [192, 256]
    expected = np.stack([x1 + uv[:, 0] * (x2 - x1), y1 + uv[:, 1] * (y2 - y1)], -1)
    assert_seen(pose.keypoints[0], expected)
    np.testing.assert_allclose(pose.scores[0], 0.9 * TEMPLATE_SCORES, atol=1e-6)
    assert (pose.scores[1] == 0).all()  # RTMO's zero pose for an empty frame is dropped


def test_halpe26_uses_halpe_hip_neck_head(model_dir):
    det = PoseDetector(DetectorConfig(mode="lightweight", keypoint_set="halpe26", model_dir=model_dir))
    box = (100, 60, 180, 300)
    raw = detect_poses([frame(416, 416, [(BLUE, *box)])], det, layout_out="halpe26")
    assert raw.layout == "halpe26" and raw.keypoints.shape == (1, 26, 2)
    h36m = raw.to_h36m()
    uv = np.array([(96, 20), (96, 66), (96, 140)], float)  # Halpe head, neck, hip in the template
    head, neck, hip = expected_coco(box, uv)
    np.testing.assert_allclose(h36m.keypoints[0, [0, 8, 10]], [hip, neck, head], atol=1e-3)


# ----------------------------------------------------------------------------- video files

def write_video(path, frames, fps=10.0):
    import cv2
    h, w = frames[0].shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert out.isOpened()
    for f in frames:
        out.write(f)
    out.release()
    return path


def test_detect_video_stride_fps_and_errors(tmp_path, light):
    boxes = [(100 + 8 * t, 60, 180 + 8 * t, 300) for t in range(6)]
    path = write_video(tmp_path / "clip.avi", [frame(416, 416, [(BLUE, *b)]) for b in boxes])
    pose = detect_video(path, light, stride=2, layout_out="coco17")
    assert pose.num_frames == 3 and pose.fps == pytest.approx(5.0) and pose.image_size == (416, 416)
    for t in range(3):  # JPEG blurs the rectangle's edges by a pixel or two
        assert_seen(pose.keypoints[t], expected_coco(boxes[2 * t]), atol=4.0)
    assert detect_video(path, light, max_frames=2).num_frames == 2

    with pytest.raises(FileNotFoundError, match="video file not found"):
        detect_video(tmp_path / "missing.mp4", light)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    with pytest.raises(PoseError, match="junk.mp4"):
        detect_video(junk, light)
    import cv2
    cv2.VideoWriter(str(tmp_path / "empty.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 64)).release()
    with pytest.raises(PoseError, match="empty.avi has no readable frames"):
        detect_video(tmp_path / "empty.avi", light)


def test_detect_video_measures_the_camera_pan_and_the_cli_keeps_it(tmp_path, light, model_dir):
    """A camera panning 6 px a frame right over a textured wall, following the 'person' (its box stays put):
    detect_video(camera_motion=True) measures the pan; `detect --camera-motion` writes it and `refine` keeps it."""
    from finephys_core.__main__ import main as cli_main
    from finephys_core.bench.moving_camera import background

    wall = background(416, 416 + 6 * 8, np.random.default_rng(0))
    frames = []
    for t in range(8):
        img = np.ascontiguousarray(wall[:, 6 * t:6 * t + 416])
        img[60:300, 100:180] = (255, 0, 0)
        frames.append(img)
    path = write_video(tmp_path / "pan.avi", frames)
    calls = []
    pose = detect_video(path, light, stride=2, camera_motion=True, progress=calls.append)
    assert pose.num_frames == 4 and len(calls) == 8                   # 4 detected + 4 tracked frames
    np.testing.assert_allclose(pose.camera_motion[:, 0, 2], [0, 12, 24, 36], atol=0.5)  # frame t → frame 0
    np.testing.assert_allclose(pose.camera_motion[:, :, :2], np.broadcast_to(np.eye(2), (4, 2, 2)), atol=0.01)
    assert detect_video(path, light).camera_motion is None

    out = tmp_path / "pose.npz"
    assert cli_main(["detect", str(path), "-o", str(out), "--mode", "lightweight", "--model-dir", str(model_dir),
                     "--camera-motion"]) == 0
    with np.load(out) as z:
        assert z["camera_motion"].shape == (8, 2, 3)
        np.testing.assert_allclose(z["camera_motion"][:, 0, 2], 6 * np.arange(8), atol=0.5)
    assert cli_main(["refine", str(out), "-o", str(tmp_path / "refined.npz"), "--fit-2d", "5"]) == 0
    with np.load(tmp_path / "refined.npz") as z:
        np.testing.assert_allclose(z["camera_motion"][:, 0, 2], 6 * np.arange(8), atol=0.5)


# ----------------------------------------------------------------------------- POSE_KEYPOINT

def openpose_person(coco_xy, coco_scores):
    """COCO-17 → controlnet_aux OpenPose-18 flat list (neck = mid-shoulders)."""
    op = np.zeros((18, 3))
    coco_of_op = [0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3]
    for j, c in enumerate(coco_of_op):
        if c is None:
            op[j] = [*(coco_xy[5] + coco_xy[6]) / 2, 1.0]
        else:
            op[j] = [*coco_xy[c], coco_scores[c]]
    return {"pose_keypoints_2d": op.ravel().tolist(), "face_keypoints_2d": None}


def test_pose_keypoint_normalised_and_pixels():
    W, H = 640, 480
    big = expected_coco((100, 60, 220, 420))
    small = expected_coco((400, 200, 460, 330))
    s = np.where(TEMPLATE_SCORES > 0, 1.0, 0.0)
    norm = lambda xy: xy / [W, H]  # noqa: E731
    frames = [
        {"people": [openpose_person(norm(small), s), openpose_person(norm(big), s)],
         "canvas_width": W, "canvas_height": H},
        {"people": [], "canvas_width": W, "canvas_height": H},
        {"people": [openpose_person(norm(big), s)], "canvas_width": W, "canvas_height": H},
    ]
    pose = pose2d_from_openpose(frames, fps=12.0, layout_out="coco17")
    assert pose.image_size == (W, H) and pose.fps == 12.0 and pose.num_frames == 3
    np.testing.assert_allclose(pose.keypoints[0][s > 0], big[s > 0], atol=1e-3)
    np.testing.assert_allclose(pose.scores[0], s)
    assert (pose.scores[1] == 0).all()
    np.testing.assert_allclose(pose.keypoints[2][s > 0], big[s > 0], atol=1e-3)

    pixels = [{"people": [openpose_person(big, s)], "canvas_width": W, "canvas_height": H}]
    h36m = pose2d_from_openpose(pixels)
    ref_kp, ref_sc = hand_h36m(big, s)
    np.testing.assert_allclose(h36m.keypoints[0][ref_sc > 0], ref_kp[ref_sc > 0], atol=1e-3)
    np.testing.assert_allclose(h36m.scores[0], ref_sc)


def test_pose_keypoint_bad_input():
    with pytest.raises(PoseError, match="54"):
        pose2d_from_openpose([{"people": [{"pose_keypoints_2d": [1.0] * 75}], "canvas_width": 8,
                               "canvas_height": 8}])
    with pytest.raises(PoseError, match="canvas_width"):
        pose2d_from_openpose([{"people": []}])
    with pytest.raises(PoseError, match="non-empty"):
        pose2d_from_openpose([])
