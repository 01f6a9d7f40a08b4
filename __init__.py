"""FinePhys node pack for ComfyUI: physics-refined skeleton guidance for human action video.

ComfyUI imports this file as a package by path; everything below uses relative imports only.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = None

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
