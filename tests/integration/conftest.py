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


def leftover_processes(timeout_s: float = 30.0) -> list[str]:
    """Processes this test run started that are still alive after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = []
        for p in psutil.process_iter(["pid", "name", "cmdline"]):
            if p.info["pid"] == os.getpid():
                continue
            text = " ".join([p.info["name"] or "", *(p.info["cmdline"] or [])])
            if any(n in text for n in LEAK_NAMES) and "pytest" not in text:
                alive.append(f"{p.info['pid']} {text[:120]}")
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(1.0)


@pytest.fixture(scope="session", autouse=True)
def _clean_machine() -> None:
    stale = leftover_processes(timeout_s=0)
    if stale:
        pytest.fail("Ray/vLLM processes from an earlier run are still alive:\n" + "\n".join(stale))
