"""The simulated gymnast: dm_control's CMU humanoid (V2020) turned into a free-floating, servo-driven body.

What changes from the asset (read offline from the installed dm_control package):
- a free joint on the root and a floor plane; the body stands Z-up (the asset is Y-up, facing +Z);
- fingers, thumbs, toes, hands and wrists are welded (their joints removed), the rest get PD position
  servos (MuJoCo ``position`` actuators with ``kp``/``kv``; implicitfast integrates the damping implicitly);
- hip extension is widened for split leaps (gymnasts are flexible), everything else keeps CMU's limits;
- limbs do not collide with each other (a tuck would otherwise wedge thighs into the chest), only with the floor;
- one site per H36M-17 joint (close to, not identical to, H36M's placement);
- segment lengths and girths scaled per clip (legs, arms, trunk, overall) before compiling.
"""
from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import mujoco
import numpy as np

WELDED = ("fingers", "thumb", "toes", "hand", "wrist")

# H36M-17 joint → (CMU body, position in that body's frame). Body frames are Y-up, +X left, +Z forward.
H36M_SITES = (
    ("pelvis", "root", (0.0, -0.0918, 0.0494)),
    ("r_hip", "rfemur", (0.0, 0.0, 0.0)),
    ("r_knee", "rtibia", (0.0, 0.0, 0.0)),
    ("r_ankle", "rfoot", (0.0, 0.0, 0.0)),
    ("l_hip", "lfemur", (0.0, 0.0, 0.0)),
    ("l_knee", "ltibia", (0.0, 0.0, 0.0)),
    ("l_ankle", "lfoot", (0.0, 0.0, 0.0)),
    ("spine", "upperback", (0.0, 0.06, 0.0)),
    ("thorax", "lowerneck", (0.0, 0.09, 0.0)),
    ("neck", "head", (0.0, 0.0, 0.09)),
    ("head", "head", (0.0, 0.13, 0.03)),
    ("l_shoulder", "lhumerus", (0.0, 0.0, 0.0)),
    ("l_elbow", "lradius", (0.0, 0.0, 0.0)),
    ("l_wrist", "lwrist", (0.0, 0.0, 0.0)),
    ("r_shoulder", "rhumerus", (0.0, 0.0, 0.0)),
    ("r_elbow", "rradius", (0.0, 0.0, 0.0)),
    ("r_wrist", "rwrist", (0.0, 0.0, 0.0)),
)

# Which scale group a body's *own* geometry and its children's offsets belong to.
SEGMENT_GROUP = {
    "lfemur": "thigh", "rfemur": "thigh", "ltibia": "shank", "rtibia": "shank",
    "lhumerus": "upper_arm", "rhumerus": "upper_arm", "lradius": "forearm", "rradius": "forearm",
    "lowerback": "trunk", "upperback": "trunk", "thorax": "trunk", "root": "trunk",
    "lclavicle": "shoulders", "rclavicle": "shoulders",
}

CONTACT_PARTS = ("l_foot", "r_foot", "l_hand", "r_hand")
_CONTACT_BODIES = {"l_foot": ("lfoot", "ltoes"), "r_foot": ("rfoot", "rtoes"),
                   "l_hand": ("lwrist", "lhand", "lfingers", "lthumb"),
                   "r_hand": ("rwrist", "rhand", "rfingers", "rthumb")}


@dataclass(frozen=True)
class BodyScale:
    """Multiplicative scales of segment lengths; ``overall`` scales everything (height), ``girth`` radii."""

    overall: float = 1.0
    thigh: float = 1.0
    shank: float = 1.0
    upper_arm: float = 1.0
    forearm: float = 1.0
    trunk: float = 1.0
    shoulders: float = 1.0
    girth: float = 1.0

    @classmethod
    def random(cls, rng: np.random.Generator) -> "BodyScale":
        seg = lambda: float(rng.uniform(0.92, 1.08))  # noqa: E731
        return cls(overall=float(rng.uniform(0.85, 1.05)), thigh=seg(), shank=seg(), upper_arm=seg(),
                   forearm=seg(), trunk=seg(), shoulders=seg(), girth=float(rng.uniform(0.9, 1.1)))


def asset_path() -> Path:
    import dm_control
    return Path(dm_control.__file__).parent / "locomotion/walkers/assets/humanoid_CMU_V2020.xml"


@lru_cache(maxsize=1)
def _asset_tree() -> ET.ElementTree:
    return ET.parse(asset_path())


def _floats(s: str) -> np.ndarray:
    return np.array([float(v) for v in s.split()])


def _fmt(v) -> str:
    return " ".join(f"{float(x):.9g}" for x in np.atleast_1d(v))


def _scale_body(body: ET.Element, scale: BodyScale, parent_group: str | None):
    """Scale this body's offset by its parent's group, its geoms/sites by its own group, recursively."""
    name = body.get("name")
    group = SEGMENT_GROUP.get(name, parent_group)
    length = scale.overall * (getattr(scale, parent_group) if parent_group else 1.0)
    if body.get("pos") is not None:
        body.set("pos", _fmt(_floats(body.get("pos")) * length))
    own = scale.overall * (getattr(scale, group) if group else 1.0)
    for g in body.findall("geom"):
        if g.get("pos") is not None:
            g.set("pos", _fmt(_floats(g.get("pos")) * own))
        if g.get("size") is not None:
            size = _floats(g.get("size"))
            if g.get("type", "capsule") == "capsule" and size.size >= 2:
                size = np.array([size[0] * scale.overall * scale.girth, size[1] * own])
            else:
                size = size * scale.overall * scale.girth
            g.set("size", _fmt(size))
    for s in body.findall("site"):
        if s.get("pos") is not None:
            s.set("pos", _fmt(_floats(s.get("pos")) * own))
    for child in body.findall("body"):
        _scale_body(child, scale, group)


def build_xml(scale: BodyScale = BodyScale(), timestep: float = 1 / 2400) -> str:
    """The gymnast model as MJCF text."""
    root = copy.deepcopy(_asset_tree().getroot())
    opt = ET.Element("option", timestep=f"{timestep:.9g}", integrator="implicitfast", gravity="0 0 -9.81")
    root.insert(1, opt)
    for tag in ("sensor", "actuator"):
        for el in root.findall(tag):
            root.remove(el)
    world = root.find("worldbody")
    for el in list(world):
        if el.tag in ("camera", "light"):
            world.remove(el)
    ET.SubElement(world, "geom", name="floor", type="plane", size="0 0 1", contype="0", conaffinity="2",
                  condim="3", friction="1 0.005 0.0001")
    body_root = world.find("body")
    body_root.set("pos", "0 0 1")
    body_root.set("quat", "0.70710678 0.70710678 0 0")  # Y-up asset → Z-up world
    body_root.insert(0, ET.Element("freejoint", name="root"))

    servo_joints = []
    for body in body_root.iter("body"):
        for j in list(body.findall("joint")):
            jname = j.get("name")
            if any(w in jname for w in WELDED):
                body.remove(j)
                continue
            if jname in ("lfemurrx", "rfemurrx"):
                lo, _ = _floats(j.get("range"))
                j.set("range", _fmt([lo, 1.2]))
            if jname == "rhumerusrz":  # the asset copies the left range; mirror it so poses mirror
                j.set("range", "-1.5708 1.1")
            servo_joints.append(j)
        for g in body.findall("geom"):
            g.set("contype", "2")
            g.set("conaffinity", "0")
    for name, body_name, pos in H36M_SITES:
        body = next(b for b in body_root.iter("body") if b.get("name") == body_name)
        ET.SubElement(body, "site", name="h36m_" + name, pos=_fmt(pos), size="0.01")
    _scale_body(body_root, scale, None)

    act = ET.SubElement(root, "actuator")
    for j in servo_joints:
        jname = j.get("name")
        strength = _servo_strength(jname)
        ET.SubElement(act, "position", name=jname, joint=jname, kp=f"{strength * 12:.6g}",
                      kv=f"{strength * 0.9:.6g}", ctrllimited="false",
                      forcelimited="true", forcerange=_fmt([-3 * strength, 3 * strength]))
    return ET.tostring(root, encoding="unicode")


def _servo_strength(joint: str) -> float:
    """Rough peak-torque scale (N·m) per joint, after the asset's motor gears."""
    for key, value in (("femurrx", 120), ("tibia", 80), ("femur", 60), ("back", 60), ("thorax", 50),
                       ("humerus", 40), ("radius", 30), ("clavicle", 20), ("neck", 15), ("head", 10),
                       ("foot", 25)):
        if key in joint:
            return float(value)
    return 20.0


class Gymnast:
    """A compiled model plus the indices the simulation needs."""

    def __init__(self, scale: BodyScale = BodyScale(), timestep: float = 1 / 2400):
        self.model = mujoco.MjModel.from_xml_string(build_xml(scale, timestep))
        self.data = mujoco.MjData(self.model)
        m = self.model
        self.site_ids = np.array([mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "h36m_" + n)
                                  for n, _, _ in H36M_SITES])
        self.act_joint = {m.actuator(i).name: i for i in range(m.nu)}
        self.act_qadr = np.array([m.jnt_qposadr[m.actuator_trnid[i, 0]] for i in range(m.nu)])
        self.ctrl_range = np.array([m.jnt_range[m.actuator_trnid[i, 0]] for i in range(m.nu)])
        self.floor = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "floor")
        body_part = {}
        for part, bodies in _CONTACT_BODIES.items():
            for b in bodies:
                body_part[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, b)] = CONTACT_PARTS.index(part)
        self.geom_part = np.array([body_part.get(int(m.geom_bodyid[g]), -1) for g in range(m.ngeom)])
        self.mass = float(m.body_subtreemass[1])

    def pose_ctrl(self, pose: dict[str, float]) -> np.ndarray:
        """Servo targets (nu,) for a key pose given as joint name → angle (rad); others 0, clipped to limits."""
        ctrl = np.zeros(self.model.nu)
        for name, value in pose.items():
            if name in self.act_joint:
                ctrl[self.act_joint[name]] = value
        return np.clip(ctrl, self.ctrl_range[:, 0], self.ctrl_range[:, 1])

    def contacts(self) -> tuple[np.ndarray, bool]:
        """(4,) bool contacts of feet/hands with the floor, and whether any body part touches it."""
        d = self.data
        parts = np.zeros(len(CONTACT_PARTS), bool)
        touching = False
        for i in range(d.ncon):
            c = d.contact[i]
            if c.dist > 0:
                continue
            other = c.geom2 if c.geom1 == self.floor else c.geom1 if c.geom2 == self.floor else -1
            if other < 0:
                continue
            touching = True
            if self.geom_part[other] >= 0:
                parts[self.geom_part[other]] = True
        return parts, touching

    def joints(self) -> np.ndarray:
        return self.data.site_xpos[self.site_ids].copy()

    def com(self) -> np.ndarray:
        return self.data.subtree_com[1].copy()

    def inertia_about_com(self) -> np.ndarray:
        """(3, 3) world-frame inertia tensor of the whole body about its centre of mass (after mj_forward)."""
        m, d = self.model, self.data
        com = d.subtree_com[1]
        total = np.zeros((3, 3))
        for b in range(1, m.nbody):
            R = d.ximat[b].reshape(3, 3)
            r = d.xipos[b] - com
            total += R @ np.diag(m.body_inertia[b]) @ R.T + m.body_mass[b] * (r @ r * np.eye(3) - np.outer(r, r))
        return total
