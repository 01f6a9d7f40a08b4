"""The few ComfyUI services the nodes use, imported lazily so node classes work (and test) without ComfyUI.

Outside ComfyUI: model folders come from FINEPHYS_MODELS_DIR (default ./models), progress goes to tqdm
and there is no interrupt.
"""
from __future__ import annotations

import os
from pathlib import Path

FINEPHYS_FOLDER = "finephys"
MODEL_EXTENSIONS = {".safetensors", ".onnx", ".ckpt", ".pt", ".pth", ".bin"}


def _folder_paths():
    try:
        import folder_paths  # ComfyUI's module; absent in plain Python
    except ImportError:
        return None
    return folder_paths


def models_root() -> Path:
    fp = _folder_paths()
    if fp is not None:
        return Path(fp.models_dir)
    return Path(os.environ.get("FINEPHYS_MODELS_DIR", "models"))


def register_model_folder(name: str = FINEPHYS_FOLDER) -> None:
    """Register ``models/<name>/`` with ComfyUI, with explicit extensions (a new name otherwise means 'any file')."""
    fp = _folder_paths()
    if fp is None:
        return
    default = str(Path(fp.models_dir) / name)
    paths, exts = fp.folder_names_and_paths.get(name, ([], set()))
    if default not in paths:
        paths = [*paths, default]
    fp.folder_names_and_paths[name] = (paths, set(exts) | MODEL_EXTENSIONS)


def folder_dirs(name: str) -> list[Path]:
    """All directories registered for a model folder name (user remaps included)."""
    fp = _folder_paths()
    if fp is not None and name in fp.folder_names_and_paths:
        return [Path(p) for p in fp.folder_names_and_paths[name][0]]
    return [models_root() / name]


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


def check_interrupt() -> None:
    """Raise ComfyUI's InterruptProcessingException when the user pressed Cancel."""
    try:
        import comfy.model_management as mm
    except ImportError:
        return
    mm.throw_exception_if_processing_interrupted()


def torch_device():
    import torch
    try:
        import comfy.model_management as mm
    except ImportError:
        return torch.device("cpu")
    return mm.get_torch_device()


def intermediate_device():
    import torch
    try:
        import comfy.model_management as mm
    except ImportError:
        return torch.device("cpu")
    return mm.intermediate_device()
