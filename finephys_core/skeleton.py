"""Skeleton layouts (Human3.6M-17, COCO-17, Halpe-26, OpenPose-18) and conversions to H36M-17.

Every pose in the library is carried in the Human3.6M-17 layout (DESIGN.md §3); detector layouts are
converted on the way in, with their scores remapped so a missing source joint stays missing.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Layout:
    """A named joint layout: joint names, kinematic parents and left/right mirror pairs."""

    name: str
    joints: tuple[str, ...]
    parents: tuple[int, ...]
    flip_pairs: tuple[tuple[int, int], ...]

    @property
    def num_joints(self) -> int:
        return len(self.joints)

    @property
    def bones(self) -> tuple[tuple[int, int], ...]:
        """(parent, child) index pairs, one per non-root joint."""
        return tuple((p, c) for c, p in enumerate(self.parents) if p >= 0)

    @property
    def flip_index(self) -> np.ndarray:
        """Permutation that swaps left and right joints (apply as ``x[..., flip_index, :]``)."""
        perm = np.arange(self.num_joints)
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        return perm

    def mirror(self, poses):
        """Left↔right mirror image of poses (..., J, C) whose channel 0 is x (centred screen or camera
        frame): x negated, left and right joints swapped. A numpy array or torch tensor; returns a new one."""
        if poses.shape[-2] != self.num_joints:
            raise ValueError(f"mirror expects (..., {self.num_joints}, C) {self.name} poses; got {tuple(poses.shape)}")
        out = poses[..., self.flip_index, :]
        out[..., 0] = -out[..., 0]
        return out

    def index(self, joint: str) -> int:
        return self.joints.index(joint)


H36M17 = Layout(
    name="h36m17",
    joints=("pelvis", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "spine", "thorax",
            "neck", "head", "l_shoulder", "l_elbow", "l_wrist", "r_shoulder", "r_elbow", "r_wrist"),
    parents=(-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15),
    flip_pairs=((1, 4), (2, 5), (3, 6), (11, 14), (12, 15), (13, 16)),
)
H36M_LEFT = (4, 5, 6, 11, 12, 13)
H36M_RIGHT = (1, 2, 3, 14, 15, 16)

COCO17 = Layout(
    name="coco17",
    joints=("nose", "l_eye", "r_eye", "l_ear", "r_ear", "l_shoulder", "r_shoulder", "l_elbow", "r_elbow",
            "l_wrist", "r_wrist", "l_hip", "r_hip", "l_knee", "r_knee", "l_ankle", "r_ankle"),
    parents=(-1, 0, 0, 1, 2, 0, 0, 5, 6, 7, 8, 5, 6, 11, 12, 13, 14),
    flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
)

HALPE26 = Layout(
    name="halpe26",
    joints=COCO17.joints + ("head", "neck", "hip", "l_big_toe", "r_big_toe", "l_small_toe", "r_small_toe",
                            "l_heel", "r_heel"),
    parents=(18, 0, 0, 1, 2, 18, 18, 5, 6, 7, 8, 19, 19, 11, 12, 13, 14, 18, 19, -1, 15, 16, 15, 16, 15, 16),
    flip_pairs=COCO17.flip_pairs + ((20, 21), (22, 23), (24, 25)),
)

OPENPOSE18 = Layout(
    name="openpose18",
    joints=("nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist", "r_hip",
            "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear"),
    parents=(1, -1, 1, 2, 3, 1, 5, 6, 1, 8, 9, 1, 11, 12, 0, 0, 14, 15),
    flip_pairs=((2, 5), (3, 6), (4, 7), (8, 11), (9, 12), (10, 13), (14, 15), (16, 17)),
)

LAYOUTS = {layout.name: layout for layout in (H36M17, COCO17, HALPE26, OPENPOSE18)}


def get_layout(name: str) -> Layout:
    try:
        return LAYOUTS[name]
    except KeyError:
        raise ValueError(f"unknown joint layout {name!r}; expected one of {sorted(LAYOUTS)}") from None


# Each H36M joint as (source joints averaged, how scores combine). "min" keeps a derived joint missing
# whenever one of its sources is; "mean" lets one good source carry it (a thorax with one shoulder seen).
_COCO_TO_H36M = (
    ((11, 12), "min"),            # pelvis = mid-hips
    ((12,), "min"), ((14,), "min"), ((16,), "min"),   # right leg
    ((11,), "min"), ((13,), "min"), ((15,), "min"),   # left leg
    ((5, 6, 11, 12), "min"),      # spine = mid(pelvis, thorax)
    ((5, 6), "mean"),             # thorax = mid-shoulders
    ((0,), "min"),                # neck/nose = nose
    ((1, 2), "mean"),             # head = mid-eyes
    ((5,), "min"), ((7,), "min"), ((9,), "min"),      # left arm
    ((6,), "min"), ((8,), "min"), ((10,), "min"),     # right arm
)
_HALPE_TO_H36M = (((19,), "min"),) + _COCO_TO_H36M[1:7] + (
    ((18, 19), "min"),            # spine = mid(hip, neck)
    ((18,), "min"),               # thorax = neck
    ((0,), "min"),
    ((17,), "min"),               # head = head
) + _COCO_TO_H36M[11:]


def _mapping_matrix(rules, num_src: int) -> np.ndarray:
    """(17, num_src) averaging weights for the keypoint positions of a conversion table."""
    weights = np.zeros((len(rules), num_src), dtype=np.float64)
    for dst, (src, _) in enumerate(rules):
        weights[dst, list(src)] = 1.0 / len(src)
    return weights


def _convert(keypoints: np.ndarray, scores: np.ndarray, rules, src_layout: Layout):
    keypoints = np.asarray(keypoints, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    n = src_layout.num_joints
    if keypoints.shape[-2] != n or scores.shape[-1] != n:
        raise ValueError(f"{src_layout.name} needs {n} joints; got keypoints {keypoints.shape}, "
                         f"scores {scores.shape}")
    out = np.einsum("js,...sc->...jc", _mapping_matrix(rules, n), keypoints)
    out_scores = np.stack([scores[..., list(src)].min(-1) if how == "min" else scores[..., list(src)].mean(-1)
                           for src, how in rules], axis=-1)
    return out.astype(np.float32), out_scores.astype(np.float32)


def coco_to_h36m(keypoints: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCO-17 → H36M-17 (MotionBERT's linear mapping).

    Args:
        keypoints: (..., 17, C) in COCO order.
        scores: (..., 17).
    Returns:
        keypoints (..., 17, C) and scores (..., 17) in H36M order.
    """
    return _convert(keypoints, scores, _COCO_TO_H36M, COCO17)


def halpe_to_h36m(keypoints: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Halpe-26 (rtmlib ``BodyWithFeet``) → H36M-17, using Halpe's own hip, neck and head joints."""
    return _convert(keypoints, scores, _HALPE_TO_H36M, HALPE26)


_OPENPOSE_TO_COCO = (0, 15, 14, 17, 16, 5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10)


def openpose18_to_coco(keypoints: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenPose-18 (controlnet_aux ``POSE_KEYPOINT``) → COCO-17; OpenPose's neck is dropped."""
    idx = list(_OPENPOSE_TO_COCO)
    return np.asarray(keypoints)[..., idx, :], np.asarray(scores)[..., idx]


def to_h36m(keypoints: np.ndarray, scores: np.ndarray, layout: str):
    """Convert any supported layout to H36M-17 (identity for ``h36m17``)."""
    if layout == "h36m17":
        return np.asarray(keypoints, np.float32), np.asarray(scores, np.float32)
    if layout == "coco17":
        return coco_to_h36m(keypoints, scores)
    if layout == "halpe26":
        return halpe_to_h36m(keypoints, scores)
    if layout == "openpose18":
        return coco_to_h36m(*openpose18_to_coco(keypoints, scores))
    raise ValueError(f"cannot convert layout {layout!r} to h36m17; supported: {sorted(LAYOUTS)}")


def bone_lengths(joints: np.ndarray, layout: Layout = H36M17) -> np.ndarray:
    """(..., J, 3) → (..., J-1) bone lengths in the layout's bone order."""
    parents, children = np.array(layout.bones).T
    return np.linalg.norm(joints[..., children, :] - joints[..., parents, :], axis=-1)
