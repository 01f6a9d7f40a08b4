"""Gym99 floor-exercise class labels and extended prompts (paper suppl. A.4 "text extender", Tab. 3).

The 35 classes FinePhys is fine-tuned on: FX-JUMP (ids 6–16), FX-TURN (17–23), FX-SALTO (24–40), with
descriptions written for this project in ``data/gym99_prompts.json``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

GYM99_FILE = Path(__file__).resolve().parent / "data" / "gym99_prompts.json"
SUBSETS = ("FX-JUMP", "FX-TURN", "FX-SALTO")


@dataclass(frozen=True)
class GymClass:
    id: int            # Gym99 class id
    subset: str        # FX-JUMP / FX-TURN / FX-SALTO
    subset_index: int  # the id within the subset (Tab. 3's "ID" column)
    label: str         # Gym99 category name
    prompt: str        # extended description


@lru_cache(maxsize=1)
def gym_classes() -> dict[int, GymClass]:
    """All 35 classes by Gym99 id."""
    data = json.loads(GYM99_FILE.read_text())
    return {c["id"]: GymClass(**c) for c in data["classes"]}


def gym_class(class_id: int) -> GymClass:
    classes = gym_classes()
    if int(class_id) not in classes:
        raise KeyError(f"Gym99 class {class_id} is not one of FinePhys's FX classes (ids {min(classes)}–"
                       f"{max(classes)}: FX-JUMP 6–16, FX-TURN 17–23, FX-SALTO 24–40)")
    return classes[int(class_id)]


def gym_prompt(class_id: int, extended: bool = True) -> str:
    """The text prompt of a Gym99 class: the extended description, or the bare label."""
    c = gym_class(class_id)
    return c.prompt if extended else c.label
