"""The pose model bundle shared by the nodes, the CLI and training: lifter + PhysNet + prompt bank + mean prior.

One ``.safetensors`` file holds everything: tensors ``lifter.*``, ``physnet.*``, ``prompt_2d`` (N, W, 17, 3),
``prompt_3d`` (N, W, 17, 3) and ``mean_prior`` (W, 17, 3), and for a model with the learned 2D front end
(:mod:`finephys_core.denoise2d`) ``denoiser.*``; the string metadata holds ``format`` (= :data:`FORMAT`),
``format_version`` (2 with a front end, else 1, so older packs refuse a file they would half-use),
``lifter_config``, ``physnet_config`` and ``denoiser_config`` (JSON) and ``meta`` (JSON: training info).
Prompt 2D is ``normalize_screen`` output (x, y, score); prompt 3D and the prior are metres, root-relative,
camera frame.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from .denoise2d import Denoiser2D, Denoiser2DConfig, denoise_2d
from .lifting import NUM_JOINTS, ICLLifter, LifterConfig, lifter_inputs
from .physics import PhysNet, PhysNetConfig
from .sequence import root_relative

FORMAT = "finephys_pose_model"
FORMAT_VERSION = 2
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "data" / "finephys_pose_default.safetensors"


class WeightsError(ValueError):
    """A weights file that cannot be used: unreadable, of another kind, or not matching its configs."""


@dataclass(eq=False)
class PoseModel:
    """Everything LiftICL3D → PhysNetRefine needs.

    prompt_2d, prompt_3d: (N, W, 17, 3) prompt bank; mean_prior: (W, 17, 3) eq. 4; meta: JSON-able info;
    denoiser: the learned 2D front end the lifter was trained behind, or None.
    """

    lifter: ICLLifter
    physnet: PhysNet
    prompt_2d: Tensor
    prompt_3d: Tensor
    mean_prior: Tensor
    meta: dict = field(default_factory=dict)
    denoiser: Denoiser2D | None = None

    def __post_init__(self):
        W = self.lifter.config.window
        n = self.prompt_2d.shape[0] if self.prompt_2d.ndim == 4 else 0
        for name, shape in (("prompt_2d", (n, W, NUM_JOINTS, 3)), ("prompt_3d", (n, W, NUM_JOINTS, 3)),
                            ("mean_prior", (W, NUM_JOINTS, 3))):
            got = tuple(getattr(self, name).shape)
            if got != shape or n < 1:
                want = shape if n >= 1 else f"(N ≥ 1, {W}, {NUM_JOINTS}, 3)"
                raise WeightsError(f"tensor {name} has shape {got} but a lifter window of {W} needs {want}")

    @property
    def window(self) -> int:
        return self.lifter.config.window

    @property
    def trained(self) -> bool:
        return bool(self.meta.get("trained", False))

    @property
    def modules(self) -> dict[str, torch.nn.Module]:
        return {"lifter": self.lifter, "physnet": self.physnet} | ({} if self.denoiser is None
                                                                   else {"denoiser": self.denoiser})

    def eval(self) -> "PoseModel":
        for m in self.modules.values():
            m.eval()
        return self

    def to(self, device) -> "PoseModel":
        for m in self.modules.values():
            m.to(device)
        for name in ("prompt_2d", "prompt_3d", "mean_prior"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def num_parameters(self) -> dict:
        return {k: sum(p.numel() for p in m.parameters()) for k, m in self.modules.items()}

    def clean_2d(self, pose2d_normalized: Tensor) -> Tensor:
        """The lifter's input: (…, T, 17, 3) normalised 2D through the 2D front end when the model has one
        (:func:`denoise2d.denoise_2d`), else unchanged."""
        if self.denoiser is None:
            return pose2d_normalized
        return denoise_2d(self.denoiser, pose2d_normalized)


# ----------------------------------------------------------------------------- pure data functions

def mean_prior_from_clips(clips_3d) -> Tensor:
    """Eq. 4: P̄3D = mean over N clips. (N, W, 17, 3) metres → (W, 17, 3), root-relative."""
    clips = torch.as_tensor(np.asarray(clips_3d) if not isinstance(clips_3d, Tensor) else clips_3d,
                            dtype=torch.float32)
    if clips.ndim != 4 or clips.shape[-2:] != (NUM_JOINTS, 3) or clips.shape[0] == 0:
        raise ValueError(f"clips_3d must be (N, W, {NUM_JOINTS}, 3) with N ≥ 1; got {tuple(clips.shape)}")
    return root_relative(clips).mean(0)


def prompt_features(pose2d_normalized: Tensor) -> Tensor:
    """(..., T, 17, 3) → (..., 34): score-weighted mean over time of the lifter's normalised 2D pose.

    The space :func:`choose_prompt` and :func:`build_prompt_bank` measure distances in.
    """
    x = lifter_inputs(pose2d_normalized)
    w = x[..., 2:]
    mean = (x[..., :2] * w).sum(-3) / w.sum(-3).clamp_min(1e-8)
    return mean.flatten(-2)


_prompt_features = prompt_features  # name used by training/stage2.py


def build_prompt_bank(clips_2d, clips_3d, size: int = 32) -> tuple[Tensor, Tensor]:
    """Choose ``size`` diverse prompt pairs from training clips, deterministically.

    clips_2d (N, W, 17, 3) normalize_screen output; clips_3d (N, W, 17, 3) metres. Farthest-point sampling
    on the prompt features of :func:`choose_prompt`, starting from the clip nearest the mean, so the bank
    covers the pose space the query will be matched against. Returns (prompt_2d, prompt_3d) (min(size, N), ...).
    """
    c2 = torch.as_tensor(np.asarray(clips_2d) if not isinstance(clips_2d, Tensor) else clips_2d,
                         dtype=torch.float32)
    c3 = torch.as_tensor(np.asarray(clips_3d) if not isinstance(clips_3d, Tensor) else clips_3d,
                         dtype=torch.float32)
    if c2.ndim != 4 or c2.shape != c3.shape or c2.shape[-2:] != (NUM_JOINTS, 3) or c2.shape[0] == 0:
        raise ValueError(f"clips_2d and clips_3d must both be (N, W, {NUM_JOINTS}, 3), N ≥ 1; got "
                         f"{tuple(c2.shape)} and {tuple(c3.shape)}")
    feats = prompt_features(c2)
    chosen = [int(torch.cdist(feats, feats.mean(0, keepdim=True))[:, 0].argmin())]
    dist = torch.cdist(feats, feats[chosen[-1:]])[:, 0]
    for _ in range(min(size, len(feats)) - 1):
        chosen.append(int(dist.argmax()))
        dist = torch.minimum(dist, torch.cdist(feats, feats[chosen[-1:]])[:, 0])
    idx = torch.tensor(chosen)
    return c2[idx].clone(), root_relative(c3[idx]).clone()


def choose_prompts(model: PoseModel, queries, k: int = 1) -> tuple[Tensor, Tensor]:
    """For each query (n, T, 17, 3) the k nearest bank pairs: (prompt_2d, prompt_3d) each (n, k, W, 17, 3).

    Queries are normalize_screen output. Distance: Euclidean between :func:`prompt_features` (score-weighted
    time-mean pose after :func:`lifter_inputs`: root-relative, scale-normalised). Ties go to the lower index.
    """
    q = torch.as_tensor(np.asarray(queries) if not isinstance(queries, Tensor) else queries,
                        dtype=torch.float32).cpu()
    d = torch.cdist(prompt_features(q), prompt_features(model.prompt_2d.float().cpu()))     # (n, N)
    k = max(1, min(int(k), d.shape[-1]))
    idx = torch.sort(d, dim=-1, stable=True).indices[:, :k].to(model.prompt_2d.device)
    return model.prompt_2d[idx], model.prompt_3d[idx]


def choose_prompt(model: PoseModel, query_2d, k: int = 1) -> tuple[Tensor, Tensor]:
    """The k bank pairs nearest to one query (T, 17, 3): (prompt_2d, prompt_3d) each (k, W, 17, 3)."""
    q = torch.as_tensor(np.asarray(query_2d) if not isinstance(query_2d, Tensor) else query_2d,
                        dtype=torch.float32)
    p2d, p3d = choose_prompts(model, q[None], k)
    return p2d[0], p3d[0]


# ----------------------------------------------------------------------------- default placeholder data

# A standing person (metres, pelvis at 0, y down, z forward), H36M-17 order; only used by the untrained default.
_STANDING = np.array([
    [0.0, 0.0, 0.0], [-0.13, 0.0, 0.0], [-0.13, 0.44, 0.02], [-0.13, 0.87, 0.05],
    [0.13, 0.0, 0.0], [0.13, 0.44, 0.02], [0.13, 0.87, 0.05], [0.0, -0.23, 0.0],
    [0.0, -0.48, 0.0], [0.0, -0.58, -0.05], [0.0, -0.70, 0.0], [0.17, -0.46, 0.0],
    [0.2, -0.18, 0.0], [0.21, 0.07, -0.02], [-0.17, -0.46, 0.0], [-0.2, -0.18, 0.0], [-0.21, 0.07, -0.02],
], np.float32)


def _standing_bank(window: int) -> tuple[Tensor, Tensor, Tensor]:
    """One prompt pair and the prior for the untrained default: the standing pose, orthographically seen."""
    pose3d = torch.from_numpy(_STANDING)[None].expand(window, -1, -1)
    xy = pose3d[..., :2] * 0.25
    pose2d = torch.cat([xy, torch.ones(window, NUM_JOINTS, 1)], -1)
    return pose2d[None].clone(), pose3d[None].clone(), pose3d.clone()


def random_pose_model(lifter_config: LifterConfig | None = None, physnet_config: PhysNetConfig | None = None,
                      seed: int = 0) -> PoseModel:
    """A deterministic, UNTRAINED model (seeded init, standing-pose prompt and prior). For tests and fallback."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        lifter = ICLLifter(lifter_config or LifterConfig())
        physnet = PhysNet(physnet_config or PhysNetConfig())
    finally:
        torch.random.set_rng_state(state)
    p2d, p3d, prior = _standing_bank(lifter.config.window)
    return PoseModel(lifter, physnet, p2d, p3d, prior, {"trained": False, "seed": seed}).eval()


def default_pose_model(device="cpu") -> PoseModel:
    """The shipped default weights, or (when none are shipped) the seed-0 untrained model with a warning."""
    if DEFAULT_WEIGHTS.is_file():
        return load_pose_model(DEFAULT_WEIGHTS, device)
    warnings.warn(f"FinePhys: no trained pose weights at {DEFAULT_WEIGHTS}; using an UNTRAINED, randomly "
                  "initialised lifter and PhysNet (seed 0). 3D poses will be meaningless until trained "
                  "weights are provided (--weights / the FinePhysLoadPoseModel node).", UserWarning, stacklevel=2)
    return random_pose_model().to(device)


# ----------------------------------------------------------------------------- files

def save_pose_model(model: PoseModel, path: str | Path) -> Path:
    """Write the bundle to one safetensors file, atomically (temporary file + os.replace)."""
    path = Path(path)
    tensors = {f"{name}.{k}": v for name, m in model.modules.items() for k, v in m.state_dict().items()}
    tensors.update(prompt_2d=model.prompt_2d, prompt_3d=model.prompt_3d, mean_prior=model.mean_prior)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION if model.denoiser is not None else 1),
                "meta": json.dumps(model.meta)}
    metadata.update({f"{name}_config": json.dumps(m.config.to_dict()) for name, m in model.modules.items()})
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _read(path: Path) -> tuple[dict, dict]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for bad headers and truncated data
        raise WeightsError(f"{path.name} is not a readable safetensors file (corrupt, truncated or another "
                           f"format): {e}") from e
    return metadata, tensors


def _config(metadata: dict, key: str, cls, path: Path):
    try:
        return cls.from_dict(json.loads(metadata[key]))
    except (KeyError, ValueError, TypeError) as e:
        raise WeightsError(f"{path.name}: bad or missing {key} in the FinePhys metadata: {e}") from e


def _load_state(module: torch.nn.Module, prefix: str, tensors: dict, path: Path) -> None:
    """Load ``prefix.*`` tensors into ``module``, naming any missing, unexpected or mis-shaped tensor."""
    expected = module.state_dict()
    given = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    if missing or unexpected:
        raise WeightsError(f"{path.name}: {prefix} tensors do not match its config: missing {missing[:5]}"
                           f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                           f"{' ...' if len(unexpected) > 5 else ''}")
    for k, v in expected.items():
        if tuple(given[k].shape) != tuple(v.shape):
            raise WeightsError(f"{path.name}: tensor {prefix}.{k} has shape {tuple(given[k].shape)} in the file "
                               f"but the model built from its config needs {tuple(v.shape)}")
    module.load_state_dict(given, strict=True)


def load_pose_model(path: str | Path, device="cpu", physnet_config: PhysNetConfig | None = None) -> PoseModel:
    """Read a file written by :func:`save_pose_model`; :class:`WeightsError` / FileNotFoundError otherwise.

    ``physnet_config``: a NEW (untrained) PhysNet of that config instead of the file's, whose PhysNet tensors
    are then not read — training a PhysNet variant on a trained lifter, even after PhysNet's code changed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pose model weights not found: {path}")
    metadata, tensors = _read(path)
    if metadata.get("format") != FORMAT:
        sample = ", ".join(sorted(tensors)[:3])
        raise WeightsError(f"{path.name} is a safetensors file but not a FinePhys pose model (metadata format "
                           f"{metadata.get('format')!r}, expected {FORMAT!r}; first tensors: {sample or 'none'}). "
                           "Pick a file saved by FinePhys training or save_pose_model.")
    version = int(metadata.get("format_version", "0"))
    if version > FORMAT_VERSION:
        raise WeightsError(f"{path.name} has pose model format version {version}; this FinePhys reads up to "
                           f"{FORMAT_VERSION} (update the node pack)")
    lifter = ICLLifter(_config(metadata, "lifter_config", LifterConfig, path))
    _load_state(lifter, "lifter", tensors, path)
    if physnet_config is None:
        physnet = PhysNet(_config(metadata, "physnet_config", PhysNetConfig, path))
        _load_state(physnet, "physnet", tensors, path)
    else:
        physnet = PhysNet(physnet_config)
    denoiser = None
    if "denoiser_config" in metadata:
        denoiser = Denoiser2D(_config(metadata, "denoiser_config", Denoiser2DConfig, path))
        _load_state(denoiser, "denoiser", tensors, path)
    missing = [k for k in ("prompt_2d", "prompt_3d", "mean_prior") if k not in tensors]
    if missing:
        raise WeightsError(f"{path.name} lacks the tensors {missing}")
    try:
        meta = json.loads(metadata.get("meta", "{}"))
    except ValueError as e:
        raise WeightsError(f"{path.name}: meta is not JSON: {e}") from e
    try:
        model = PoseModel(lifter, physnet, tensors["prompt_2d"], tensors["prompt_3d"], tensors["mean_prior"],
                          meta, denoiser)
    except WeightsError as e:
        raise WeightsError(f"{path.name}: {e}") from None
    return model.to(device).eval()
