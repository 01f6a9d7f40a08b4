"""Test-wide setup: the pack root on sys.path, one torch thread per test process, and no network."""
from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Any attempt to reach the network fails loudly (tests use files they make)."""
    def guard(*args, **kwargs):
        raise RuntimeError("network access attempted during a test")
    monkeypatch.setattr(socket.socket, "connect", guard)
    monkeypatch.setattr(socket, "create_connection", guard)
    yield


def pytest_configure(config):
    config.addinivalue_line("markers", "comfyui: needs a ComfyUI checkout in COMFYUI_DIR")
    config.addinivalue_line("markers", "slow: over ~20 s on 2 cores")
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        pass
