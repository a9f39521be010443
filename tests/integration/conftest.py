"""Integration tests: real Ray Serve, real vLLM CPU engines on the tiny models."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import psutil
import pytest

from cluster.spec import ClusterSpec
from cluster.specfile import load_spec
from cluster.tiny_models import ensure_tiny_models

ROOT = Path(__file__).resolve().parents[2]
LEAK_NAMES = ("raylet", "gcs_server", "EngineCore", "ray::", "vllm")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.integration)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def local_spec(port: int) -> ClusterSpec:
    ensure_tiny_models(ROOT / "models")
    spec = load_spec(ROOT / "configs" / "local.yaml")
    return spec.model_copy(update={"gateway": spec.gateway.model_copy(update={"port": port})})


def _ray_and_vllm_processes() -> dict[int, str]:
    found = {}
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        if p.info["pid"] == os.getpid():
            continue
        text = " ".join([p.info["name"] or "", *(p.info["cmdline"] or [])])
        if any(n in text for n in LEAK_NAMES) and "pytest" not in text:
            found[p.info["pid"]] = text[:120]
    return found


# Ray and vLLM processes that were already running before this test session (another
# developer's cluster, say): not ours to account for.
_BEFORE = _ray_and_vllm_processes()


def leftover_processes(timeout_s: float = 30.0) -> list[str]:
    """Ray/vLLM processes started during this session still alive after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [
            f"{pid} {text}" for pid, text in _ray_and_vllm_processes().items() if pid not in _BEFORE
        ]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(1.0)
