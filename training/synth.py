"""Physics-exact synthetic gymnastics clips: MuJoCo rigid-body simulation, many random cameras per motion.

Recipe (../shared/reference/physics-sim.md, measured): dm_control's CMU humanoid (V2020) with a free joint,
PD position servos driven through key poses, integrator ``implicitfast``. Every clip has three phases:

1. **take-off** (0.15–0.25 s, feet on the floor): the legs extend while an *assist force* at the centre of
   mass tracks a velocity ramp up to the take-off velocity (real legs and a run-up would make it; a servo body
   cannot learn that quickly); at the end, one *rotational impulse* (a rigid-body angular velocity added to the
   whole body, COM velocity unchanged) sets the angular momentum that the flight needs (torque while the feet
   are planted only tips the body over them). These frames are flagged ``external``.
2. **flight**: no external force at all — the centre of mass follows a parabola with g = 9.81 m/s², the
   angular momentum about it is conserved, limb lengths are rigid. Servos only change the shape (tuck, pike,
   stretch, split, arms in). Saltos open out of the tuck/pike when the rotation left fits the time left, as
   gymnasts do, so most land upright after the intended rotation (some over-/under-rotate: real falls exist).
3. **landing**: floor contact, a landing pose, and a braking/uprighting assist wrench (flagged ``external``).

``floor_spin`` is the exception: a one-leg turn (1–2 rev/s) on a near-frictionless floor, kept upright and with
its COM over the stance foot by a stabilising wrench for the whole clip (without a balance controller the body
falls within 0.6 s), so all its frames are ``external`` and the stance foot drifts a little.

Measured on the shipped sets (``python training/synth.py --out DIR --stats``, 2.4 kHz): in flight the COM
acceleration from second differences equals g to 0.011 m/s² (median; p99 0.09, max 0.3 in fast twists — the
integrator's position error, proportional to the timestep: ``--timestep-hz 4800`` halves it); limb lengths
are constant to 1e-7 m (pelvis–spine and thorax–shoulder distances change by mm: spine and clavicle joints).

Classes: tuck_salto, pike_salto, layout_twist (stretched salto with 0.5–2 twists), split_leap, turn_jump
(0.5–2 turns), floor_spin. Body proportions, speeds, spins, twists and key-pose timing are random per motion.

The simulation is recorded at 1200 Hz; each camera view samples it at its own frame rate (25, 30, 40, 48, 50
or 60 fps, all exact divisors), so ``views_per_motion`` views cost almost nothing beyond one simulation.

Per clip (arrays, T frames): joints_world (T,17,3) m (Z up), com_world (T,3), joints_cam (T,17,3) camera frame
(x right, y down, z forward), joints_cam_rel (root-relative), keypoints_2d (T,17,2) px, flight (T,) bool
(no contact, no external force), contact (T,4) bool for CONTACT_PARTS, external (T,) bool, K (3,3), R (3,3),
t (3,) with X_cam = R @ X_world + t, image_size (W,H), fps, class name/id, seed.

CLI: ``python training/synth.py --out training/data/synth_train --motions 200 --views 8 --seed 0 --workers 2``
writes ``shard_XXXXX.npz`` files (clips padded to the shard's longest, with ``num_frames``; ``class_id`` indexes
the JSON list ``class_names``; all views of one motion share its ``seed``) and ``meta.json``. Evaluation sets:
``--cameras heldout --balanced`` (other camera ranges and image sizes, equal motions per class).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mujoco
import numpy as np

if __package__ in (None, ""):  # run as a script: make the pack importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.synth_camera import CAMERA_SETS, CameraConfig, project, random_camera  # noqa: E402
from training.synth_model import CONTACT_PARTS, BodyScale, Gymnast  # noqa: E402

CLASSES = ("tuck_salto", "pike_salto", "layout_twist", "split_leap", "turn_jump", "floor_spin")
SALTOS = CLASSES[:3]
CLASS_WEIGHTS = (0.2, 0.17, 0.2, 0.16, 0.17, 0.1)
RECORD_HZ = 1200
FPS_CHOICES = (25, 30, 40, 48, 50, 60)
G = 9.81


@dataclass
class SynthConfig:
    timestep: float = 1.0 / 2400   # implicitfast; in flight the COM error vs g scales with it (see summarize)
    max_duration: float = 2.4
    camera: CameraConfig = field(default_factory=CameraConfig)


# ----------------------------------------------------------------------------- key poses

_ARM = {  # left arm (humerus rx, ry, rz, elbow); the right arm mirrors ry and rz (solved numerically)
    "down": (-0.52, -0.07, 1.44, 0.1), "up": (1.47, 0.95, 0.0, 0.05), "forward": (1.09, -0.26, 0.82, 0.07),
    "forward_up": (1.42, 0.26, 0.0, 0.05), "back": (-1.05, 0.0, 1.2, 0.0), "chest": (-0.27, -0.8, 1.41, 1.78),
    "shins": (0.34, 0.26, 1.47, 0.3), "side_up": (0.46, 1.05, 0.0, 0.08), "side": (0.0, 0.0, 0.0, 0.1),
}


def _arm(side: str, name: str) -> dict:
    rx, ry, rz, el = _ARM[name]
    s = 1.0 if side == "l" else -1.0
    return {f"{side}humerusrx": rx, f"{side}humerusry": s * ry, f"{side}humerusrz": s * rz, f"{side}radiusrx": el}


def _leg(side: str, hip: float, knee: float, abduct: float = 0.0) -> dict:
    """hip < 0 flexes (thigh forward), knee > 0 bends; abduct > 0 moves the leg outwards."""
    s = 1.0 if side == "l" else -1.0
    return {f"{side}femurrx": hip, f"{side}tibiarx": knee, f"{side}femurrz": s * (abduct - 0.35)}


def _trunk(flex: float, neck: float = 0.0) -> dict:
    """flex > 0 bends forward (split over three spine joints), neck likewise over two."""
    d = {j: flex / 3 for j in ("lowerbackrx", "upperbackrx", "thoraxrx")}
    d.update({j: neck / 2 for j in ("lowerneckrx", "upperneckrx")})
    return d


def pose(legs=(0.0, 0.0), arms="down", trunk=0.0, neck=0.0, left_leg=None, right_leg=None,
         left_arm=None, right_arm=None, abduct=0.0) -> dict:
    d = _trunk(trunk, neck)
    d.update(_leg("l", *(left_leg or (*legs, abduct))))
    d.update(_leg("r", *(right_leg or (*legs, abduct))))
    d.update(_arm("l", left_arm or arms))
    d.update(_arm("r", right_arm or arms))
    return d


def _jitter(p: dict, rng: np.random.Generator, amount: float = 0.08) -> dict:
    return {k: v + float(rng.normal(0, amount)) for k, v in p.items()}


# ----------------------------------------------------------------------------- simulation


@dataclass
class Plan:
    """Everything random about one motion, drawn up front from the seed."""

    cls: str
    heading: float
    v_run: np.ndarray          # initial horizontal velocity (world)
    v_takeoff: np.ndarray      # target COM velocity at the end of the push
    spin_axis: np.ndarray      # unit world axis of the intended somersault/turn
    rotations: float           # intended somersault turns (signed by spin_axis)
    twists: float              # intended twist turns (about the body's long axis)
    t_push: float
    t_shape: float             # delay after take-off before the flight shape
    t_transition: float        # servo blend time between key poses
    open_angle: float          # rad of somersault left when opening
    t_after: float             # simulated time after touch-down
    start: dict
    takeoff: dict
    flight: dict
    open_: dict
    land: dict
    spin_rate: float = 0.0     # floor_spin: rad/s about the vertical
    duration: float = 0.0      # floor_spin: clip length
    stance: str = "l"


def _unit(v) -> np.ndarray:
    v = np.asarray(v, float)
    return v / max(np.linalg.norm(v), 1e-12)


def make_plan(rng: np.random.Generator, cls: str) -> Plan:
    heading = float(rng.uniform(0, 2 * np.pi))
    fwd = np.array([np.cos(heading), np.sin(heading), 0.0])
    left = np.cross([0, 0, 1.0], fwd)
    side = "l" if rng.random() < 0.5 else "r"
    other = "r" if side == "l" else "l"
    common = dict(heading=heading, t_push=float(rng.uniform(0.15, 0.25)), t_shape=float(rng.uniform(0.02, 0.1)),
                  t_transition=float(rng.uniform(0.1, 0.2)), open_angle=float(np.deg2rad(rng.uniform(60, 100))),
                  t_after=float(rng.uniform(0.15, 0.35)), twists=0.0, stance=side)
    start = _jitter(pose(legs=(-0.6, 1.0), arms=str(rng.choice(["back", "down", "forward"])), trunk=0.35), rng)
    land = _jitter(pose(legs=(-0.45, 0.7), arms=str(rng.choice(["forward_up", "side_up", "forward"])), trunk=0.4),
                   rng, 0.05)
    open_ = pose(legs=(-0.25, 0.3), arms=str(rng.choice(["up", "forward_up", "side_up"])))
    takeoff = _jitter(pose(legs=(0.0, 0.02), arms=str(rng.choice(["up", "forward_up"])), trunk=-0.05), rng, 0.05)
    vz = float(rng.uniform(3.6, 4.8))
    if cls in SALTOS:
        backward = cls == "layout_twist" or rng.random() < (0.7 if cls == "tuck_salto" else 0.5)
        v_h = float(rng.uniform(0.0, 3.0)) * (-1 if backward else 1)
        axis = -left if backward else left
        if cls == "tuck_salto":
            flight = pose(legs=(-2.3, 2.4), arms="shins", trunk=0.6, neck=0.3, abduct=float(rng.uniform(0, 0.3)))
        elif cls == "pike_salto":
            flight = pose(legs=(-2.2, 0.05), arms=str(rng.choice(["forward", "shins"])), trunk=0.75, neck=0.3)
        else:
            flight = pose(legs=(0.05, 0.02), arms=str(rng.choice(["chest", "up"])), trunk=-0.15)
            common["twists"] = float(rng.choice([0.5, 1.0, 1.0, 1.5, 2.0])) * (1 if rng.random() < 0.5 else -1)
            common["open_angle"] = float(np.deg2rad(rng.uniform(40, 70)))
        return Plan(cls=cls, v_run=fwd * v_h * 0.5, v_takeoff=fwd * v_h + [0, 0, vz], spin_axis=axis,
                    rotations=1.0, start=start, takeoff=takeoff, flight=_jitter(flight, rng, 0.06), open_=open_,
                    land=land, **common)
    if cls == "split_leap":
        v_h = float(rng.uniform(1.5, 4.0))
        front_hip = float(rng.uniform(-1.8, -1.3))
        flight = pose(left_leg=(front_hip, 0.05, 0.0), right_leg=(float(rng.uniform(0.8, 1.2)), 0.1, 0.0),
                      arms=str(rng.choice(["side_up", "up", "forward_up"])), trunk=-0.2)
        if side == "r":
            flight = pose(right_leg=(front_hip, 0.05, 0.0), left_leg=(float(rng.uniform(0.8, 1.2)), 0.1, 0.0),
                          arms=str(rng.choice(["side_up", "up", "forward_up"])), trunk=-0.2)
        return Plan(cls=cls, v_run=fwd * v_h * 0.7, v_takeoff=fwd * v_h + [0, 0, float(rng.uniform(2.6, 3.3))],
                    spin_axis=left * float(rng.choice([-1, 1])), rotations=float(rng.uniform(0.0, 0.06)),
                    start=start, takeoff=takeoff, flight=_jitter(flight, rng, 0.06), open_=land, land=land, **common)
    if cls == "turn_jump":
        turns = float(rng.choice([0.5, 1.0, 1.0, 1.5, 2.0]))
        if rng.random() < 0.5:
            flight = pose(arms=str(rng.choice(["chest", "up"])))
        else:  # passé: one knee up and out
            legs = {side: (-1.0, 2.1, 0.6), other: (0.0, 0.02, 0.0)}
            flight = pose(left_leg=legs["l"], right_leg=legs["r"], arms=str(rng.choice(["chest", "up"])))
        return Plan(cls=cls, v_run=fwd * float(rng.uniform(0, 0.8)),
                    v_takeoff=fwd * float(rng.uniform(0, 1.0)) + [0, 0, float(rng.uniform(2.7, 3.4))],
                    spin_axis=np.array([0, 0, 1.0 if rng.random() < 0.5 else -1.0]), rotations=turns,
                    start=start, takeoff=takeoff, flight=_jitter(flight, rng, 0.05), open_=land, land=land, **common)
    if cls == "floor_spin":
        legs = {side: (0.0, 0.02, 0.0), other: (-0.9, 2.2, 0.7)}
        spin = pose(left_leg=legs["l"], right_leg=legs["r"], arms=str(rng.choice(["chest", "up", "forward_up"])))
        return Plan(cls=cls, v_run=np.zeros(3), v_takeoff=np.zeros(3), spin_axis=np.array([0, 0, 1.0]),
                    rotations=0.0, start=_jitter(spin, rng, 0.05), takeoff=spin, flight=spin, open_=spin, land=spin,
                    spin_rate=float(rng.uniform(5.0, 12.0) * (1 if rng.random() < 0.5 else -1)),
                    duration=float(rng.uniform(1.0, 1.6)), **common)
    raise ValueError(f"unknown class {cls!r}; expected one of {CLASSES}")


def _yaw_upright_quat(heading: float) -> np.ndarray:
    """Root orientation: asset Y-up → Z-up, facing ``heading`` (the asset faces -Y after that rotation)."""
    up = np.array([np.sqrt(0.5), np.sqrt(0.5), 0, 0])
    yaw = heading + np.pi / 2
    q = np.array([np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)])
    out = np.zeros(4)
    mujoco.mju_mulQuat(out, q, up)
    return out


def _place_on_floor(gym: Gymnast, ctrl: np.ndarray, heading: float, stance_geoms=None):
    m, d = gym.model, gym.data
    d.qpos[:] = 0
    d.qpos[3:7] = _yaw_upright_quat(heading)
    d.qpos[gym.act_qadr] = ctrl
    d.qpos[2] = 2.0
    mujoco.mj_forward(m, d)
    lowest = np.inf
    for gid in range(m.ngeom):
        if gid == gym.floor or (stance_geoms is not None and gid not in stance_geoms):
            continue
        lowest = min(lowest, _geom_bottom(m, d, gid))
    d.qpos[2] -= lowest + 0.002  # 2 mm into the floor: in contact from the first frame
    d.ctrl[:] = ctrl
    mujoco.mj_forward(m, d)


def _geom_bottom(m, d, gid) -> float:
    z = d.geom_xpos[gid, 2]
    size = m.geom_size[gid]
    if m.geom_type[gid] == mujoco.mjtGeom.mjGEOM_CAPSULE:
        return z - size[0] - size[1] * abs(d.geom_xmat[gid, 8])
    return z - np.max(size)


def _angular_momentum(gym: Gymnast) -> np.ndarray:
    mujoco.mj_subtreeVel(gym.model, gym.data)
    return gym.data.subtree_angmom[1].copy()


def _apply_wrench(gym: Gymnast, force, torque):
    d = gym.data
    d.qfrc_applied[:] = 0
    mujoco.mj_applyFT(gym.model, d, np.asarray(force, float), np.asarray(torque, float),
                      d.subtree_com[1].copy(), 1, d.qfrc_applied)


def _clamp(v, limit):
    n = np.linalg.norm(v)
    return v if n <= limit else v * (limit / n)


def _lateral_inertia(gym: Gymnast, p: dict, heading: float, axis: np.ndarray) -> float:
    _place_on_floor(gym, gym.pose_ctrl(p), heading)
    return float(axis @ gym.inertia_about_com() @ axis)


def _up_vector(joints: np.ndarray) -> np.ndarray:
    return _unit(joints[8] - joints[0])  # pelvis → thorax


class _Recorder:
    def __init__(self):
        self.rows = {k: [] for k in ("joints", "com", "contact", "touch", "external")}

    def add(self, gym: Gymnast, external: bool):
        parts, touching = gym.contacts()
        self.rows["joints"].append(gym.joints())
        self.rows["com"].append(gym.com())
        self.rows["contact"].append(parts)
        self.rows["touch"].append(touching)
        self.rows["external"].append(external)

    def arrays(self) -> dict:
        return {k: np.asarray(v) for k, v in self.rows.items()}


def _inertias(gym: Gymnast, plan: Plan) -> dict:
    """Inertias of the plan's key poses about its spin axis (and the long axis), and the COM height of the
    opening pose standing (where a flight ends). Moves the model: call before setting up the start."""
    axis = _unit(plan.spin_axis)
    out = {k: _lateral_inertia(gym, getattr(plan, k), plan.heading, axis) for k in ("takeoff", "flight", "open_")}
    out["z_land"] = gym.com()[2]
    out["long"] = float(_inertia_for(gym, plan.flight, plan.heading)[2, 2])
    return out


def _target_momentum(plan: Plan, inertia: dict, t_flight: float) -> np.ndarray:
    """Take-off angular momentum (world) that gives the plan's rotations in a flight of ``t_flight`` s."""
    axis = _unit(plan.spin_axis)
    angle = 2 * np.pi * plan.rotations
    blend = plan.t_shape + plan.t_transition / 2
    if plan.cls in ("tuck_salto", "pike_salto"):
        # a little generous: the tuck/pike finishes early and the gymnast opens (slowing down) on target
        t_open = 0.65 * t_flight
        rate = (angle - plan.open_angle) / (blend / inertia["takeoff"] + (t_open - blend) / (1.15 * inertia["flight"]))
        return axis * rate * 0.95
    if plan.cls == "layout_twist":  # no shape change to steer by: aim the momentum itself
        L = axis * angle * inertia["flight"] / t_flight
        return L + np.array([0, 0, 2 * np.pi * plan.twists * inertia["long"] / (0.8 * t_flight)])
    return axis * angle * inertia["flight"] / max(0.85 * t_flight, 1e-3)


class _Flight:
    """Take-off, flight and landing of one jump: phases, servo targets and assist wrenches per step."""

    def __init__(self, gym: Gymnast, plan: Plan, cfg: SynthConfig):
        self.gym, self.plan, self.cfg = gym, plan, cfg
        self.axis = plan.spin_axis
        self.salto = plan.cls in SALTOS
        self.track = abs(self.axis[2]) < 0.9  # somersaults: follow the pelvis angle about the spin axis
        self.inertia = _inertias(gym, plan)
        self.L_target, self.L_axis = np.zeros(3), 0.0
        self.target_angle = 2 * np.pi * plan.rotations + 0.5 * (plan.open_angle - np.deg2rad(80))  # ±10°
        self.ctrl = {k: gym.pose_ctrl(getattr(plan, k)) for k in ("start", "takeoff", "flight", "open_", "land")}
        _place_on_floor(gym, self.ctrl["start"], plan.heading)
        gym.data.qvel[0:3] = plan.v_run
        self.com_z0 = gym.data.subtree_com[1, 2]
        self.phase, self.t_air, self.t_land, self.open_info = "push", None, None, None
        self.phi, self.phi_prev, self.up_prev, self.airborne = 0.0, 0.0, None, False
        self.blend = (self.ctrl["start"], self.ctrl["takeoff"], 0.0, plan.t_push)

    def _blend_to(self, target: str, t0: float, duration: float):
        self.blend = (self.gym.data.ctrl.copy(), self.ctrl[target], t0, duration)

    def step(self, t: float) -> tuple[bool, bool]:
        """Set wrench and servo targets for time t; returns (external force on, clip finished)."""
        external = done = False
        if self.phase == "push":
            external = self._push(t)
        elif self.phase in ("air", "open"):
            self._air(t)
        if self.phase == "land":
            external, done = True, self._land(t)
        c0, c1, t0, duration = self.blend
        alpha = np.clip((t - t0) / max(duration, 1e-6), 0.0, 1.0)
        alpha = min(alpha / 0.7, 1.0) if self.phase == "push" else alpha * alpha * (3 - 2 * alpha)
        self.gym.data.ctrl[:] = c0 + alpha * (c1 - c0)
        return external, done

    def _push(self, t: float) -> bool:
        """Track a velocity ramp the extending legs can follow (feet stay down), then the spin impulse."""
        gym, plan, d = self.gym, self.plan, self.gym.data
        mujoco.mj_subtreeVel(gym.model, d)
        ramp = min(t / plan.t_push, 1.0)
        v_ref = plan.v_run + ramp ** 2 * (plan.v_takeoff - plan.v_run)
        a_ref = 2 * ramp * (plan.v_takeoff - plan.v_run) / plan.t_push
        _apply_wrench(gym, _clamp(gym.mass * (a_ref + (v_ref - d.subtree_linvel[1]) / 0.03), 8 * gym.mass * G),
                      np.zeros(3))
        if t < plan.t_push:
            return True
        d.qfrc_applied[:] = 0
        vz, z = d.subtree_linvel[1, 2], d.subtree_com[1, 2]
        t_flight = (vz + math.sqrt(max(vz * vz + 2 * G * (z - self.inertia["z_land"]), 0.0))) / G
        self.L_target = _target_momentum(plan, self.inertia, t_flight)
        self.L_axis = float(self.L_target @ self.axis)
        _spin_impulse(gym, self.L_target)
        self.phase, self.t_air = "air", t
        self.blend = (d.ctrl.copy(), self.ctrl["flight"], t + plan.t_shape, plan.t_transition)
        return True  # the spin impulse is an external push as well

    def _track_rotation(self):
        up = self.gym.data.xmat[1].reshape(3, 3)[:, 1].copy()  # pelvis axis: shape changes barely turn it
        u = up - (up @ self.axis) * self.axis
        if np.linalg.norm(u) > 0.2:
            if self.up_prev is not None:
                self.phi += math.atan2(np.cross(self.up_prev, u) @ self.axis, self.up_prev @ u)
            self.up_prev = u

    def _air(self, t: float):
        """Open out of the shape when the rotation left fits the time left (as gymnasts do); detect landing."""
        plan, d = self.plan, self.gym.data
        if self.track:
            self._track_rotation()
        vz, z = d.subtree_linvel[1, 2], d.subtree_com[1, 2]
        late = vz < 0 and z < self.com_z0 + 0.35
        t_rem = (vz + math.sqrt(max(vz * vz + 2 * G * (z - self.inertia["z_land"]), 0.0))) / G
        omega = (self.phi - self.phi_prev) / self.cfg.timestep
        self.phi_prev = self.phi
        lag = plan.t_transition + 0.1  # the servos need this long to open against the spin
        predicted = omega * lag + self.L_axis / self.inertia["open_"] * max(t_rem - lag, 0)
        held = t > self.t_air + plan.t_shape + plan.t_transition + 0.15  # show the shape before opening
        if self.phase == "air" and self.salto and ((held and self.phi + predicted >= self.target_angle) or late):
            self.phase, self.open_info = "open", (t, self.phi, late)
            self._blend_to("open_", t, plan.t_transition)
        elif self.phase == "air" and not self.salto and late:
            self.phase = "open"
            self._blend_to("land", t, plan.t_transition)
        touching = self.gym.contacts()[1]
        self.airborne = self.airborne or not touching
        if touching and self.airborne and t > self.t_air + 0.1:
            self.phase, self.t_land = "land", t
            self._blend_to("land", t, 0.3)

    def _land(self, t: float) -> bool:
        """Brake the slide, hold down any bounce, damp the spin and pull upright; the legs take the fall."""
        gym, d = self.gym, self.gym.data
        L = _angular_momentum(gym)
        up = _up_vector(gym.joints())
        vel = d.subtree_linvel[1]
        force = _clamp(-gym.mass * np.r_[vel[:2], max(vel[2], 0.0)] / np.array([0.12, 0.12, 0.04]),
                       6 * gym.mass * G)
        _apply_wrench(gym, force, _clamp(-L / 0.1 + 1500.0 * np.cross(up, [0, 0, 1.0]), 3000.0))
        return t >= self.t_land + self.plan.t_after


def simulate(plan: Plan, scale: BodyScale, cfg: SynthConfig = SynthConfig()) -> dict:
    """Run one motion; returns world-frame arrays recorded at RECORD_HZ plus scalar facts."""
    gym = Gymnast(scale, cfg.timestep)
    m, d = gym.model, gym.data
    every = int(round(1.0 / (RECORD_HZ * cfg.timestep)))
    if abs(every * cfg.timestep * RECORD_HZ - 1) > 1e-9:
        raise ValueError(f"timestep {cfg.timestep} must divide 1/{RECORD_HZ} s")
    if plan.cls == "floor_spin":
        return _simulate_spin(gym, plan, every, cfg)
    jump = _Flight(gym, plan, cfg)
    rec = _Recorder()
    step, t = 0, 0.0
    while t < cfg.max_duration:
        external, done = jump.step(t)
        if done:
            break
        if step % every == 0:
            mujoco.mj_subtreeVel(m, d)  # keep subtree_com current for the recorder
            rec.add(gym, external)
        mujoco.mj_step(m, d)
        step += 1
        t = step * cfg.timestep
    out = rec.arrays()
    out.update(rotation=float(jump.phi), t_air=jump.t_air, t_land=jump.t_land, angular_momentum=jump.L_target,
               open_info=jump.open_info)
    return out


def _spin_impulse(gym: Gymnast, L_target: np.ndarray):
    """Set the angular momentum about the COM to ``L_target`` by adding one rigid-body angular velocity
    to the whole body (joint velocities and COM velocity unchanged): the take-off's rotational impulse.
    Torque during the push instead tips the body over its planted feet."""
    m, d = gym.model, gym.data
    mujoco.mj_forward(m, d)
    d_omega = np.linalg.solve(gym.inertia_about_com(), L_target - _angular_momentum(gym))
    root_pos = d.qpos[0:3].copy()
    R = d.xmat[1].reshape(3, 3)
    d.qvel[0:3] += np.cross(d_omega, root_pos - d.subtree_com[1])
    d.qvel[3:6] += R.T @ d_omega
    mujoco.mj_forward(m, d)


def _inertia_for(gym: Gymnast, p: dict, heading: float) -> np.ndarray:
    _place_on_floor(gym, gym.pose_ctrl(p), heading)
    return gym.inertia_about_com()


def _simulate_spin(gym: Gymnast, plan: Plan, every: int, cfg: SynthConfig) -> dict:
    """One-leg turn on a low-friction floor held upright by a stabilising wrench (all frames external)."""
    m, d = gym.model, gym.data
    m.geom_friction[:] = [0.02, 0.0, 0.0]  # near frictionless (MuJoCo uses the larger of two frictions)
    stance = {g for g in range(m.ngeom) if gym.geom_part[g] == CONTACT_PARTS.index(f"{plan.stance}_foot")}
    ctrl = gym.pose_ctrl(plan.start)
    _place_on_floor(gym, ctrl, plan.heading, stance_geoms=stance)
    R = d.xmat[1].reshape(3, 3)
    d.qvel[3:6] = R.T @ np.array([0, 0, plan.spin_rate])  # free-joint angular velocity is in the body frame
    ankle = 6 if plan.stance == "l" else 3
    rec = _Recorder()
    step, t = 0, 0.0
    while t < plan.duration:
        mujoco.mj_subtreeVel(m, d)
        com, vel = d.subtree_com[1], d.subtree_linvel[1]
        support = gym.joints()[ankle, :2]  # keep the centre of mass over the stance foot
        force = gym.mass * np.r_[60.0 * (support - com[:2]) - 15.0 * vel[:2], 0.0]
        up = _up_vector(gym.joints())
        omega_h = d.subtree_angmom[1] * np.array([1, 1, 0])
        torque = _clamp(2500.0 * np.cross(up, [0, 0, 1.0]) - 60.0 * omega_h, 4000.0)
        _apply_wrench(gym, force, torque)
        d.ctrl[:] = ctrl
        if step % every == 0:
            rec.add(gym, True)
        mujoco.mj_step(m, d)
        step += 1
        t = step * cfg.timestep
    out = rec.arrays()
    out.update(rotation=0.0, t_air=None, t_land=None, angular_momentum=np.array([0, 0, plan.spin_rate]))
    return out


def simulate_motion(seed: int, cls: str | None = None, cfg: SynthConfig = SynthConfig()) -> dict:
    """Draw a plan and body from ``seed`` and simulate; world-frame arrays at RECORD_HZ."""
    rng = np.random.default_rng([seed, 0x5EED])
    if cls is None:
        cls = str(rng.choice(CLASSES, p=np.asarray(CLASS_WEIGHTS) / sum(CLASS_WEIGHTS)))
    scale = BodyScale.random(rng)
    plan = make_plan(rng, cls)
    sim = simulate(plan, scale, cfg)
    sim.update(cls=cls, seed=int(seed), scale=asdict(scale))
    return sim


def render_view(sim: dict, rng: np.random.Generator, fps: int | None = None,
                cam: CameraConfig = CameraConfig()) -> dict:
    """Sample the recorded motion at ``fps`` and view it through a random camera."""
    fps = int(fps or rng.choice(FPS_CHOICES))
    if RECORD_HZ % fps:
        raise ValueError(f"fps {fps} must divide {RECORD_HZ}; choose from {FPS_CHOICES}")
    idx = np.arange(0, len(sim["joints"]), RECORD_HZ // fps)
    jw = sim["joints"][idx]
    K, R, t, size = random_camera(jw, rng, cam)
    jc = jw @ R.T + t
    contact = sim["contact"][idx]
    external = sim["external"][idx]
    return {
        "joints_world": jw.astype(np.float32), "com_world": sim["com"][idx].astype(np.float32),
        "joints_cam": jc.astype(np.float32), "joints_cam_rel": (jc - jc[:, :1]).astype(np.float32),
        "keypoints_2d": project(jc, K).astype(np.float32), "contact": contact, "external": external,
        "flight": ~sim["touch"][idx] & ~external, "K": K.astype(np.float32), "R": R.astype(np.float32),
        "t": t.astype(np.float32), "image_size": np.array(size, np.int32), "fps": float(fps),
        "cls": sim["cls"], "class_id": CLASSES.index(sim["cls"]), "seed": sim["seed"],
    }


def generate_clip(seed: int, cls: str | None = None, fps: int | None = None, cfg: SynthConfig = SynthConfig()) -> dict:
    """One simulated motion seen by one random camera (arrays without a leading clip axis)."""
    sim = simulate_motion(seed, cls, cfg)
    return render_view(sim, np.random.default_rng([seed, 0xCA3]), fps, cfg.camera)


def motion_views(seed: int, views: int, cfg: SynthConfig = SynthConfig(), cls: str | None = None) -> list[dict]:
    sim = simulate_motion(seed, cls, cfg)
    rng = np.random.default_rng([seed, 0xCA3])
    return [render_view(sim, rng, None, cfg.camera) for _ in range(views)]


# ----------------------------------------------------------------------------- dataset files

_PER_FRAME = ("joints_world", "com_world", "joints_cam", "joints_cam_rel", "keypoints_2d", "contact",
              "external", "flight")


def stack_clips(clips: list[dict]) -> dict:
    """Pad clips to the longest and stack into the shard arrays (``num_frames`` gives each true length)."""
    T = max(len(c["joints_cam"]) for c in clips)
    out = {}
    for k in _PER_FRAME:
        arrs = []
        for c in clips:
            a = c[k]
            arrs.append(np.concatenate([a, np.zeros((T - len(a),) + a.shape[1:], a.dtype)]))
        out[k] = np.stack(arrs)
    out["num_frames"] = np.array([len(c["joints_cam"]) for c in clips], np.int32)
    for k in ("K", "R", "t", "image_size"):
        out[k] = np.stack([c[k] for c in clips])
    out["fps"] = np.array([c["fps"] for c in clips], np.float32)
    out["class_id"] = np.array([c["class_id"] for c in clips], np.int32)
    out["seed"] = np.array([c["seed"] for c in clips], np.int64)
    out["class_names"] = np.array(json.dumps(list(CLASSES)))
    return out


def _motion_task(args) -> list[dict]:
    seed, views, camera_set, timestep_hz, cls = args
    return motion_views(seed, views, SynthConfig(timestep=1.0 / timestep_hz, camera=CAMERA_SETS[camera_set]), cls)


def generate_dataset(out_dir, num_motions: int, views_per_motion: int, seed: int, workers: int = 2,
                     progress: bool = True, motions_per_shard: int = 20, camera_set: str = "train",
                     timestep_hz: int = 2400, balanced: bool = False) -> dict:
    """Simulate ``num_motions`` motions (seeds ``seed*1_000_003 + i``), each seen by ``views_per_motion``
    cameras, in worker processes; write ``shard_XXXXX.npz`` files and ``meta.json`` into ``out_dir``.
    ``balanced`` cycles through CLASSES (motion i is class i mod 6) instead of drawing by CLASS_WEIGHTS."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = [seed * 1_000_003 + i for i in range(num_motions)]
    tasks = [(s, views_per_motion, camera_set, timestep_hz, CLASSES[i % len(CLASSES)] if balanced else None)
             for i, s in enumerate(seeds)]
    t0 = time.time()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=num_motions, desc="simulating", unit="motion")
    shards, pending, counts = [], [], {c: 0 for c in CLASSES}

    def flush():
        if pending:
            path = out_dir / f"shard_{len(shards):05d}.npz"
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **stack_clips(pending))
            tmp.replace(path)
            shards.append(path.name)
            pending.clear()

    def consume(views_list):
        pending.extend(views_list)
        counts[views_list[0]["cls"]] += 1
        if bar:
            bar.update(1)
        if len(pending) >= motions_per_shard * views_per_motion:
            flush()

    if workers <= 1:
        for task in tasks:
            consume(_motion_task(task))
    else:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            for views_list in ex.map(_motion_task, tasks, chunksize=1):
                consume(views_list)
    flush()
    if bar:
        bar.close()
    meta = {"num_motions": num_motions, "views_per_motion": views_per_motion, "seed": seed,
            "camera_set": camera_set, "balanced": balanced, "classes": list(CLASSES),
            "motions_per_class": counts, "shards": shards,
            "record_hz": RECORD_HZ, "timestep_hz": timestep_hz, "seconds": round(time.time() - t0, 1),
            "contact_parts": list(CONTACT_PARTS), "joints": "h36m17"}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def summarize(out_dir) -> dict:
    """Figures about a generated set: sizes, flight fraction, joint speeds, and the physics checks in flight
    (COM acceleration against g from second differences, limb-length spread)."""
    from finephys_core.skeleton import H36M17, bone_lengths
    rigid = [i for i, (_, c) in enumerate(H36M17.bones) if c in (1, 2, 3, 4, 5, 6, 10, 12, 13, 15, 16)]
    frames = flight = 0
    speeds, acc_err, limb_std, lengths = [], [], [], []
    for path in sorted(Path(out_dir).glob("shard_*.npz")):
        with np.load(path) as z:
            d = {k: z[k] for k in ("joints_world", "com_world", "flight", "num_frames", "fps")}
        for i, T in enumerate(d["num_frames"]):
            jw, com, fl = (d[k][i, :T].astype(np.float64) for k in ("joints_world", "com_world", "flight"))
            fl, dt = fl.astype(bool), 1.0 / float(d["fps"][i])
            frames, flight = frames + int(T), flight + int(fl.sum())
            lengths.append(T * dt)
            speeds.append(np.linalg.norm(np.diff(jw, axis=0), axis=-1).max(0) / dt)
            ok = fl[2:] & fl[1:-1] & fl[:-2]
            if ok.any():
                acc_err.append(np.abs((com[2:] - 2 * com[1:-1] + com[:-2])[ok] / dt ** 2 - [0, 0, -G]).max(-1))
            limb_std.append(bone_lengths(jw)[:, rigid].std(0).max())
    speeds, acc_err = np.stack(speeds), np.concatenate(acc_err)
    pct = lambda a, q: [round(float(v), 4) for v in np.percentile(a, q)]  # noqa: E731
    return {"clips": len(lengths), "frames": frames, "flight_fraction": round(flight / frames, 3),
            "clip_seconds_min_median_max": pct(lengths, [0, 50, 100]),
            "peak_joint_speed_m_s_p5_p50_p95": pct(speeds.max(1), [5, 50, 95]),
            "peak_wrist_ankle_speed_m_s_max": round(float(speeds[:, [3, 6, 13, 16]].max()), 2),
            "flight_com_acc_error_m_s2_median_p99_max": pct(acc_err, [50, 99, 100]),
            "limb_length_std_m_max": float(np.max(limb_std))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--motions", type=int, default=200)
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--per-shard", type=int, default=20, help="motions per shard file")
    ap.add_argument("--cameras", choices=sorted(CAMERA_SETS), default="train")
    ap.add_argument("--timestep-hz", type=int, default=2400, help="simulation rate (a multiple of 1200)")
    ap.add_argument("--balanced", action="store_true", help="equal motions per class (for evaluation sets)")
    ap.add_argument("--stats", action="store_true", help="only print summarize() of an existing --out")
    args = ap.parse_args(argv)
    if args.stats:
        print(json.dumps(summarize(args.out)))
        return 0
    meta = generate_dataset(args.out, args.motions, args.views, args.seed, args.workers,
                            motions_per_shard=args.per_shard, camera_set=args.cameras, timestep_hz=args.timestep_hz,
                            balanced=args.balanced)
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
