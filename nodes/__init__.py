"""ComfyUI node classes: thin wrappers that convert values, call one finephys_core function, convert back.

Each module below defines NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS; ids are stable forever
(saved workflows refer to them), so never rename one.
"""
from importlib import import_module

_NODE_MODULES = ("detect", "pose", "pose_io", "loaders", "guidance", "sampler")

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
for _name in _NODE_MODULES:
    _module = import_module(f".{_name}", __name__)
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
