"""The few ComfyUI services the nodes use, imported lazily so node classes work (and test) without ComfyUI.

Outside ComfyUI: model folders come from FINEPHYS_MODELS_DIR (default ./models), progress goes to tqdm
and there is no interrupt.
"""
from __future__ import annotations

import importlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

FINEPHYS_FOLDER = "finephys"
RTMLIB_FOLDER = "finephys_rtmlib"  # rtmlib's .onnx files; users remap it under this name in extra_model_paths.yaml
MODEL_EXTENSIONS = {".safetensors", ".onnx", ".ckpt", ".pt", ".pth", ".bin"}
# Default location of a folder name under models/ when it is not models/<name>/.
_DEFAULT_SUBDIRS = {RTMLIB_FOLDER: "finephys/rtmlib"}


def _comfy_module(name: str):
    """One of ComfyUI's modules (``folder_paths``, ``comfy.model_management``); None in plain Python."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _folder_paths():
    return _comfy_module("folder_paths")


def models_root() -> Path:
    fp = _folder_paths()
    if fp is not None:
        return Path(fp.models_dir)
    return Path(os.environ.get("FINEPHYS_MODELS_DIR", "models"))


def default_model_dir(name: str) -> Path:
    """Where a model folder name lives by default: ``models/<name>/`` (``models/finephys/rtmlib/`` for rtmlib)."""
    return models_root() / _DEFAULT_SUBDIRS.get(name, name)


def register_model_folder(name: str = FINEPHYS_FOLDER) -> None:
    """Register ``models/<name>/`` with ComfyUI, with explicit extensions (a new name otherwise means 'any file')."""
    fp = _folder_paths()
    if fp is None:
        return
    default = str(default_model_dir(name))
    paths, exts = fp.folder_names_and_paths.get(name, ([], set()))
    if default not in paths:
        paths = [*paths, default]
    fp.folder_names_and_paths[name] = (paths, set(exts) | MODEL_EXTENSIONS)


def folder_dirs(name: str) -> list[Path]:
    """All directories registered for a model folder name (user remaps included)."""
    fp = _folder_paths()
    if fp is not None and name in fp.folder_names_and_paths:
        return [Path(p) for p in fp.folder_names_and_paths[name][0]]
    return [default_model_dir(name)]


def list_models(name: str, suffixes: tuple[str, ...] = (".safetensors",)) -> list[str]:
    """Relative file names under a model folder, for COMBO widgets."""
    fp = _folder_paths()
    if fp is not None and name in fp.folder_names_and_paths:
        return [f for f in fp.get_filename_list(name) if f.lower().endswith(suffixes)]
    out = []
    for d in folder_dirs(name):
        if d.is_dir():
            out += [str(p.relative_to(d)) for p in sorted(d.rglob("*")) if p.suffix.lower() in suffixes]
    return out


def model_path(name: str, filename: str) -> Path:
    """Full path of a model file in a model folder; a clear FileNotFoundError when it is not there."""
    fp = _folder_paths()
    if fp is not None and name in fp.folder_names_and_paths:
        full = fp.get_full_path(name, filename)
        if full:
            return Path(full)
    for d in folder_dirs(name):
        if (d / filename).is_file():
            return d / filename
    raise FileNotFoundError(f"model file {filename!r} not found in the {name!r} model folder "
                            f"({', '.join(str(d) for d in folder_dirs(name))})")


def directory(kind: str) -> Path:
    """ComfyUI's 'input', 'output' or 'temp' directory; outside ComfyUI $FINEPHYS_<KIND>_DIR or ./<kind>."""
    if kind not in ("input", "output", "temp"):
        raise ValueError(f"directory kind must be 'input', 'output' or 'temp'; got {kind!r}")
    fp = _folder_paths()
    if fp is not None:
        return Path(fp.get_directory_by_type(kind))
    return Path(os.environ.get(f"FINEPHYS_{kind.upper()}_DIR", kind))


def save_path(filename_prefix: str, kind: str = "output") -> tuple[Path, str, int, str]:
    """(folder, file stem, next counter, subfolder) for ``<prefix>_<counter:05>_...`` files, as ComfyUI's savers
    name them (``%date%``-style variables expanded inside ComfyUI); never a folder outside ``directory(kind)``."""
    root = directory(kind)
    fp = _folder_paths()
    if fp is not None:
        folder, stem, counter, subfolder, _ = fp.get_save_image_path(filename_prefix, str(root))
        return Path(folder), stem, counter, subfolder
    root = root.resolve()
    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    stem = os.path.basename(os.path.normpath(filename_prefix))
    folder = (root / subfolder).resolve()
    if os.path.commonpath((root, folder)) != str(root):
        raise ValueError(f"filename_prefix {filename_prefix!r} points outside the {kind} folder {root}")
    counters = [int(p.name[len(stem) + 1:].split("_")[0]) for p in folder.glob(f"{stem}_*")
                if p.name[len(stem) + 1:].split("_")[0].isdigit()] if folder.is_dir() else []
    return folder, stem, max(counters, default=0) + 1, subfolder


class Progress:
    """ComfyUI's ProgressBar inside ComfyUI, tqdm outside; also checks ComfyUI's interrupt on each update."""

    def __init__(self, total: int, desc: str = "FinePhys"):
        self.total = total
        try:
            import comfy.utils
            self._bar = comfy.utils.ProgressBar(total)
            self._tqdm = None
        except ImportError:
            from tqdm.auto import tqdm
            self._bar = None
            self._tqdm = tqdm(total=total, desc=desc, leave=False)

    def __call__(self, n: int = 1) -> None:
        check_interrupt()
        if self._bar is not None:
            self._bar.update(n)
        else:
            self._tqdm.update(n)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()


def _model_management():
    return _comfy_module("comfy.model_management")


def check_interrupt() -> None:
    """Raise ComfyUI's InterruptProcessingException when the user pressed Cancel."""
    mm = _model_management()
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


def offload_device():
    """Where ComfyUI keeps diffusion models between jobs: the CPU, or the GPU with --highvram / --gpu-only."""
    import torch
    mm = _model_management()
    return torch.device("cpu") if mm is None else mm.unet_offload_device()


@contextmanager
def on_compute_device(pipe, workspace_bytes: int) -> Iterator[None]:
    """Run a job with a pipeline ComfyUI does not manage the way ComfyUI's own upscale-model node does: have
    ComfyUI free room for its weights plus ``workspace_bytes`` on the GPU, move it there, and move it back to
    the offload device afterwards, also on errors and Cancel, so between jobs it holds no GPU memory that
    ComfyUI cannot see. Outside ComfyUI the pipeline stays where it is."""
    mm = _model_management()
    if mm is None:
        yield
        return
    device = mm.get_torch_device()
    mm.free_memory(pipe.num_bytes + int(workspace_bytes), device)
    try:
        pipe.to(device)   # inside: a move that runs out of memory half-way is undone too
        yield
    finally:
        pipe.to(mm.unet_offload_device())
        mm.soft_empty_cache()


def torch_device():
    import torch
    mm = _model_management()
    return torch.device("cpu") if mm is None else mm.get_torch_device()


def intermediate_device():
    import torch
    mm = _model_management()
    return torch.device("cpu") if mm is None else mm.intermediate_device()
