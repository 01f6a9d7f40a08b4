"""HumanArt reader (COCO-format keypoint JSON + images, as the dataset ships): people converted to H36M-17.

HumanArt annotation files (``annotations/training_humanart*.json``) are COCO keypoint files whose
``images[]`` entries also carry ``description`` (a caption) and ``category`` (the scenario), and whose
``file_name`` is relative to the dataset root (``images/real_human/<scenario>/<name>.jpg``). FinePhys
stage 1 uses the real-human subset (supplementary A.2). Plain COCO keypoint files work too (no captions:
the ``default_caption`` is used).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from finephys_core.skeleton import coco_to_h36m


@dataclass
class Sample:
    """One image: path, image_size (W, H), keypoints (P, 17, 2) px and scores (P, 17) in H36M-17, caption."""

    path: Path
    image_size: tuple[int, int]
    keypoints: np.ndarray
    scores: np.ndarray
    caption: str


class HumanArtDataset:
    """Images with at least one annotated person, optionally restricted to a subset (a path component of
    ``file_name`` or the image's ``category``, e.g. ``real_human`` or ``dance``)."""

    def __init__(self, annotations: str | Path, image_root: str | Path, subset: str | None = "real_human",
                 min_keypoints: int = 5, default_caption: str = "a photo of a person"):
        annotations, self.image_root = Path(annotations), Path(image_root)
        if not annotations.is_file():
            raise FileNotFoundError(f"HumanArt annotation file not found: {annotations}")
        data = json.loads(annotations.read_text())
        missing = [k for k in ("images", "annotations") if k not in data]
        if missing:
            raise ValueError(f"{annotations.name} is not a COCO/HumanArt keypoint file: no {missing}")
        people: dict[int, list] = {}
        for ann in data["annotations"]:
            kps = ann.get("keypoints")
            if ann.get("iscrowd", 0) or not kps or len(kps) != 51:
                continue
            kps = np.asarray(kps, np.float32).reshape(17, 3)
            if int((kps[:, 2] > 0).sum()) >= min_keypoints:
                people.setdefault(ann["image_id"], []).append(kps)
        self.samples: list[Sample] = []
        for img in data["images"]:
            if img["id"] not in people or not self._in_subset(img, subset):
                continue
            coco = np.stack(people[img["id"]])                          # (P, 17, 3)
            kp, sc = coco_to_h36m(coco[..., :2], (coco[..., 2] > 0).astype(np.float32))
            caption = str(img.get("description") or "").strip() or default_caption
            self.samples.append(Sample(self._resolve(img["file_name"]), (int(img["width"]), int(img["height"])),
                                       kp, sc, caption))
        if not self.samples:
            raise ValueError(f"{annotations.name}: no images with annotated people"
                             + (f" in subset {subset!r}" if subset else ""))

    @staticmethod
    def _in_subset(img: dict, subset: str | None) -> bool:
        if not subset:
            return True
        return subset in Path(img["file_name"]).parts or img.get("category") == subset

    def _resolve(self, file_name: str) -> Path:
        path = self.image_root / file_name
        if not path.exists() and (self.image_root / "images" / file_name).exists():
            path = self.image_root / "images" / file_name
        return path

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]


def read_image(path: Path) -> torch.Tensor:
    """(1, H, W, 3) float32 RGB 0..1 (ComfyUI IMAGE layout)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1])).float().div_(255.0)[None]
