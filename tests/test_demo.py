"""The demo (the README's first command): the shipped sample refined into refined.npz + preview video + sheet."""
from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest

from finephys_core import demo
from finephys_core.__main__ import main as cli_main
from finephys_core.sequence import Pose3D, load_pose, save_pose

SIZE = 128   # px per view: the test renders at half the default size


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the untrained-default warning while no weights are shipped
        code = demo.main(["--out", str(out), "--size", str(SIZE), "--no-progress"])
    return out, code


def test_sample_is_small_and_in_the_cli_format():
    pose = demo.load_input(demo.SAMPLE_2D)
    gt = load_pose(demo.SAMPLE_GT)
    assert pose.layout == "h36m17" and pose.keypoints.shape == (pose.num_frames, 17, 2)
    assert 25 <= pose.fps <= 50 and 1.0 <= pose.num_frames / pose.fps <= 3.0
    assert isinstance(gt, Pose3D) and gt.source == "gt" and gt.num_frames == pose.num_frames
    assert (pose.scores == 0).any() and (pose.scores > 0.5).mean() > 0.5       # corrupted, not clean
    assert demo.SAMPLE_2D.stat().st_size + demo.SAMPLE_GT.stat().st_size < 200_000


def test_demo_writes_refined_poses(run):
    out, code = run
    assert code == 0
    T = demo.load_input(demo.SAMPLE_2D).num_frames
    with np.load(out / "refined.npz") as z:
        for k in ("pose3d_dd", "pose3d_pp", "pose3d"):
            assert z[k].shape == (T, 17, 3) and np.isfinite(z[k]).all()
        assert z["pose2d_reproj"].shape == (T, 17, 2) and z["scores"].shape == (T, 17)
        assert tuple(z["image_size"]) == demo.load_input(demo.SAMPLE_2D).image_size
        assert float(z["fps"]) == demo.load_input(demo.SAMPLE_2D).fps


def test_demo_output_matches_the_cli_refine(run, tmp_path):
    out, _ = run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli_main(["refine", str(demo.SAMPLE_2D), "-o", str(tmp_path / "cli.npz")]) == 0
    with np.load(out / "refined.npz") as a, np.load(tmp_path / "cli.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            if a[k].dtype.kind == "f":
                np.testing.assert_allclose(a[k], b[k], atol=1e-5, err_msg=k)


def test_contact_sheet_shows_four_views_of_eight_moments(run):
    out, _ = run
    img = cv2.imread(str(out / "preview.png"))
    assert img is not None and img.shape == (demo.SHEET_HEADER + 4 * SIZE, demo.SHEET_FRAMES * SIZE, 3)
    body = img[demo.SHEET_HEADER:]
    for r in range(4):   # every row (view) and every column (moment) has drawing in it, not just labels
        row = body[r * SIZE + 24:(r + 1) * SIZE]
        assert (row.max(-1) > 40).mean() > 0.003, f"row {r} ({demo.VIEW_LABELS[r]}) is blank"
    for c in range(demo.SHEET_FRAMES):
        assert (body[:, c * SIZE + 2:(c + 1) * SIZE].max(-1) > 40).mean() > 0.003, f"column {c} is blank"


def test_preview_video_has_every_frame(run):
    out, _ = run
    videos = [p for p in out.iterdir() if p.stem == "preview" and p.suffix in (".mp4", ".webp", ".gif")]
    assert len(videos) == 1
    if videos[0].suffix == ".mp4":
        cap = cv2.VideoCapture(str(videos[0]))
        frames = 0
        while cap.read()[0]:
            frames += 1
        assert frames == demo.load_input(demo.SAMPLE_2D).num_frames
        assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (4 * SIZE, SIZE)


def test_prints_files_and_ground_truth_table(tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        demo.main(["--out", str(tmp_path), "--size", "64", "--no-progress"])
    text = capsys.readouterr().out
    assert str(tmp_path / "refined.npz") in text and str(tmp_path / "preview.png") in text
    for name in ("S_dd", "S_pp", "fused", "mpjpe"):
        assert name in text


def test_video_fallback_without_mp4_encoder(tmp_path, monkeypatch):
    class NoEncoder:
        def __init__(self, *a, **k):
            pass

        def isOpened(self):
            return False

    monkeypatch.setattr(demo.cv2, "VideoWriter", NoEncoder)
    frames = [np.full((32, 64, 3), i * 40, np.uint8) for i in range(4)]
    path = demo.write_video(frames, 25.0, tmp_path)
    assert path is not None and path.suffix in (".webp", ".gif") and path.stat().st_size > 0


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.npz", "input not found"),
    (lambda d: (d / "junk.npz").write_bytes(b"not a zip") and d / "junk.npz", "not a usable 2D pose file"),
    (lambda d: save_pose(Pose3D(np.zeros((3, 17, 3)), 25.0), d / "p3d.npz"), "holds a 3D pose"),
])
def test_bad_input_exits_with_code_2(tmp_path, capsys, make, message):
    bad = make(tmp_path)
    with pytest.raises(SystemExit) as e:
        demo.main(["--input", str(bad), "--out", str(tmp_path / "o"), "--no-progress"])
    assert e.value.code == demo.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and bad.name in err
    assert not (tmp_path / "o" / "refined.npz").exists()


def test_sample_regenerates_exactly():
    pytest.importorskip("mujoco")
    pytest.importorskip("dm_control")
    from training.make_sample import make_clip, sample_arrays

    pose2d, gt = sample_arrays(make_clip())
    with np.load(demo.SAMPLE_2D) as z:
        np.testing.assert_allclose(pose2d["keypoints"], z["keypoints"], atol=0.05)
        np.testing.assert_allclose(pose2d["scores"], z["scores"], atol=1e-3)
    with np.load(demo.SAMPLE_GT) as z:
        np.testing.assert_allclose(gt["joints"], z["joints"], atol=1e-4)
