"""Random static cameras for synthetic and re-viewed clips (no MuJoCo needed: datasets import this).

World frame Z up; camera frame x right, y down, z forward; X_cam = R @ X_world + t; pinhole K in pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _unit(v) -> np.ndarray:
    v = np.asarray(v, float)
    return v / max(np.linalg.norm(v), 1e-12)


@dataclass
class CameraConfig:
    """Random static camera looking at the middle of the motion."""

    distance: tuple[float, float] = (5.0, 16.0)        # m from the motion's centre
    elevation_deg: tuple[float, float] = (-5.0, 25.0)   # camera above (+) the centre
    roll_deg: float = 3.0
    fill: tuple[float, float] = (0.45, 0.9)            # fraction of the image the whole motion spans
    image_sizes: tuple[tuple[int, int], ...] = ((1280, 720), (1920, 1080), (960, 540), (1024, 768))
    center_jitter: float = 0.02                         # principal point offset, fraction of the size


HELDOUT_CAMERAS = CameraConfig(distance=(6.0, 20.0), elevation_deg=(-8.0, 32.0),
                               image_sizes=((1280, 720), (854, 480), (1440, 1080)))
CAMERA_SETS = {"train": CameraConfig(), "heldout": HELDOUT_CAMERAS}


def look_at(position: np.ndarray, target: np.ndarray, roll: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """World→camera rotation R (rows: x right, y down, z forward) and t, with X_cam = R X + t (Z-up world)."""
    z = _unit(target - position)
    x = _unit(np.cross(z, [0, 0, 1.0]))
    y = np.cross(z, x)
    c, s = np.cos(roll), np.sin(roll)
    x, y = c * x + s * y, -s * x + c * y
    R = np.stack([x, y, z])
    return R, -R @ position


def random_camera(joints_world: np.ndarray, rng: np.random.Generator, cam: CameraConfig = CameraConfig()):
    """A static camera framing the whole motion; returns K (3,3), R (3,3), t (3,), image_size (W,H)."""
    pts = joints_world.reshape(-1, 3)
    centre = 0.5 * (pts.min(0) + pts.max(0))
    az = rng.uniform(0, 2 * np.pi)
    el = np.deg2rad(rng.uniform(*cam.elevation_deg))
    dist = rng.uniform(*cam.distance)
    position = centre + dist * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    position[2] = max(position[2], 0.3)
    R, t = look_at(position, centre, np.deg2rad(rng.uniform(-cam.roll_deg, cam.roll_deg)))
    W, H = cam.image_sizes[rng.integers(len(cam.image_sizes))]
    pc = pts @ R.T + t
    uv = pc[:, :2] / pc[:, 2:3]
    half = np.abs(uv).max(0)  # normalised half-extent around the optical axis
    fill = rng.uniform(*cam.fill)
    focal = fill * min(W / 2 / half[0], H / 2 / half[1])
    cx = W / 2 + rng.uniform(-1, 1) * cam.center_jitter * W
    cy = H / 2 + rng.uniform(-1, 1) * cam.center_jitter * H
    K = np.array([[focal, 0, cx], [0, focal, cy], [0, 0, 1.0]])
    return K, R, t, (int(W), int(H))


def project(joints_cam: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(..., 3) camera-frame points → (..., 2) pixels."""
    uv = joints_cam[..., :2] / joints_cam[..., 2:3]
    return uv * K[[0, 1], [0, 1]] + K[[0, 1], [2, 2]]
