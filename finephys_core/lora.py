"""The FinePhys LoRA (paper suppl. A.1: rank 64, dropout 0.1 on spatial and temporal attention), via peft.

File format: safetensors with peft's adapter-free keys (``...attn1.to_q.lora_A.weight``) and metadata
``format=finephys-lora``, ``rank``, ``alpha``, ``dropout``, ``target_modules`` (JSON list).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

ADAPTER = "finephys"
# Query/key/value/output projections of every attention: SD1.5 self/cross attention and motion attention.
TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
FORMAT = "finephys-lora"


class LoraError(ValueError):
    """A LoRA file that does not fit the model: the message names the file and the mismatch."""


def add_lora(unet: torch.nn.Module, rank: int = 64, alpha: float | None = None, dropout: float = 0.1,
             target_modules: tuple[str, ...] = TARGET_MODULES, adapter_name: str = ADAPTER) -> int:
    """Attach a fresh LoRA adapter (B = 0, so the model is unchanged); returns its parameter count."""
    from peft import LoraConfig

    config = LoraConfig(r=rank, lora_alpha=alpha or rank, lora_dropout=dropout,
                        target_modules=list(target_modules), init_lora_weights=True)
    training = unet.training
    unet.add_adapter(config, adapter_name=adapter_name)
    unet.train(training)  # new peft layers start in training mode: their dropout would be live at inference
    return sum(p.numel() for n, p in unet.named_parameters() if f".{adapter_name}." in n or n.endswith(adapter_name))


def lora_state_dict(unet: torch.nn.Module, adapter_name: str = ADAPTER) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict
    return get_peft_model_state_dict(unet, adapter_name=adapter_name)


def _adapter_config(unet: torch.nn.Module, adapter_name: str):
    config = getattr(unet, "peft_config", {}).get(adapter_name)
    if config is None:
        raise LoraError(f"the model has no LoRA adapter named {adapter_name!r}")
    return config


def save_lora(unet: torch.nn.Module, path: str | Path, adapter_name: str = ADAPTER) -> Path:
    """Write the adapter's weights atomically (temporary file, then rename)."""
    from safetensors.torch import save_file

    config = _adapter_config(unet, adapter_name)
    meta = {"format": FORMAT, "rank": str(config.r), "alpha": str(config.lora_alpha),
            "dropout": str(config.lora_dropout), "target_modules": json.dumps(sorted(config.target_modules))}
    state = {k: v.detach().to("cpu").contiguous() for k, v in lora_state_dict(unet, adapter_name).items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def _read_lora(path: Path) -> tuple[dict, dict]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        return load_file(str(path)), meta
    except SafetensorError as exc:
        raise LoraError(f"{path.name}: not a safetensors file ({exc})") from None


def _check_layout(state: dict, meta: dict, name: str) -> None:
    keys = list(state)
    if meta.get("format") == FORMAT:
        return
    if any(k.startswith(("lora_unet_", "lora_te")) for k in keys):
        raise LoraError(f"{name}: a kohya/ComfyUI-style LoRA (lora_unet_* keys); load it with ComfyUI's LoRA "
                        "loader instead. FinePhys LoRAs are written by training stage 4")
    if not keys or not all(".lora_A." in k or ".lora_B." in k for k in keys):
        raise LoraError(f"{name}: not a FinePhys LoRA (expected peft lora_A/lora_B keys, got e.g. {keys[:2]})")


def load_lora(unet: torch.nn.Module, path: str | Path, adapter_name: str = ADAPTER) -> None:
    """Attach and fill the adapter from a file written by ``save_lora`` (rank and targets from its metadata)."""
    from peft.utils import set_peft_model_state_dict

    path = Path(path)
    state, meta = _read_lora(path)
    _check_layout(state, meta, path.name)
    rank = int(meta.get("rank") or next(v.shape[0] for k, v in state.items() if ".lora_A." in k))
    targets = tuple(json.loads(meta["target_modules"])) if "target_modules" in meta else TARGET_MODULES
    if adapter_name not in getattr(unet, "peft_config", {}):
        add_lora(unet, rank, float(meta.get("alpha", rank)), float(meta.get("dropout", 0.1)), targets,
                 adapter_name)
    expected = lora_state_dict(unet, adapter_name)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (model needs {tuple(v.shape)})"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        unet.delete_adapters(adapter_name)
        detail = "; ".join(f"{len(v)} {label}, e.g. {', '.join(v[:2])}" for label, v in
                           (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if v)
        raise LoraError(f"{path.name}: LoRA (rank {rank}) does not fit this UNet + motion module ({detail})")
    param = next(unet.parameters())
    set_peft_model_state_dict(unet, {k: v.to(param.device, param.dtype) for k, v in state.items()},
                              adapter_name=adapter_name)
