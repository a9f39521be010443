"""Integration tests: real Ray Serve, real vLLM CPU engines on the tiny models."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from tierline.cluster.real_models import ensure_real_models
from tierline.cluster.reaper import ProcFs, ProcInfo
from tierline.cluster.spec import ClusterSpec, RouterSpec
from tierline.cluster.specfile import load_spec
from tierline.cluster.tiny_models import ensure_tiny_models
from tierline.deployments.gateway.pipeline.auth import add_key

ROOT = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.integration)


@contextlib.contextmanager
def milvus_lite_server(data_dir: Path) -> Iterator[str]:
    """A real Milvus server on loopback (Milvus Lite 3's gRPC server, `python -m
    milvus_lite server`) until the block ends; yields its URI."""
    port = free_port()
    command = [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data_dir)]
    proc = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None, "the Milvus Lite server exited"
            assert time.monotonic() < deadline, "the Milvus Lite server did not listen"
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def descendants(pid: int) -> dict[int, str]:
    """Every process under `pid` now (Ray's daemons, workers, vLLM engine processes)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return {}
    out = {}
    for child in children:
        try:
            out[child.pid] = " ".join(child.cmdline())[:120] or child.name()
        except psutil.Error:
            continue
    return out


def leftover_processes(snapshot: dict[int, str], timeout_s: float = 120.0) -> list[str]:
    """Processes of `snapshot` (taken before a shutdown) still alive after `timeout_s`.

    Only our own cluster's processes are in the snapshot, so another Ray cluster on the
    same machine never counts as a leak."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = []
        for pid, text in snapshot.items():
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{pid} {text}")
            except psutil.NoSuchProcess:
                continue
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(1.0)


def replica_process(deployment: str) -> psutil.Process:
    """The process of a Serve replica of `deployment` (`ray::ServeReplica:<app>:<name>`)."""
    for p in psutil.process_iter(["cmdline"]):
        text = " ".join(p.info["cmdline"] or [])
        if f":{deployment}" in text and "ServeReplica" in text:
            return p
    raise LookupError(f"no replica process for {deployment}")


def listener(port: int) -> str:
    """The command line of the process listening on `port`."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return " ".join(psutil.Process(conn.pid).cmdline())
    raise AssertionError(f"nothing listens on port {port}")


def engine_processes(root: int) -> dict[int, ProcInfo]:
    """vLLM's processes under `root` (engine core, workers), with their marks."""
    snap = ProcFs().snapshot()
    out = {}
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(root).children(recursive=True):
            info = snap.get(child.pid)
            if info is not None and info.name.upper().startswith("VLLM"):
                out[child.pid] = info
    return out


def seconds_until_gone(procs: dict[int, ProcInfo], since: float, timeout_s: float) -> float:
    """Seconds from `since` (time.monotonic()) until the last of `procs` ended; fails with
    the survivors once `timeout_s` has passed since `since`."""
    fs = ProcFs()
    while True:
        alive = [p for pid, p in procs.items() if fs.exists(pid, p.start_ticks)]
        now = time.monotonic()
        if not alive:
            return now - since
        if now - since > timeout_s:
            raise AssertionError(
                f"{len(alive)} vLLM process(es) alive {timeout_s:.0f} s after the kill: "
                + ", ".join(f"{p.pid} {p.name}" for p in alive)
            )
        time.sleep(0.2)


def marked_by_one_cluster(procs: dict[int, ProcInfo]) -> str:
    """Every engine process carries its replica's mark, all of one cluster: its address."""
    assert procs, "no vLLM process found under the cluster"
    unmarked = [f"{p.pid} {p.name}" for p in procs.values() if p.owner is None]
    assert not unmarked, f"engine processes without the replica's mark: {unmarked}"
    clusters = {p.owner.cluster for p in procs.values() if p.owner is not None}
    assert len(clusters) == 1, clusters
    return clusters.pop()


_KEYS_DIR = Path(tempfile.mkdtemp(prefix="tierline-test-keys-"))
KEYS_FILE = _KEYS_DIR / "keys.json"
API_KEY = add_key(KEYS_FILE, "tests")
AUTH = {"Authorization": f"Bearer {API_KEY}"}
# Tenants with quotas or fewer tiers, for the clusters whose specs list them
# (tests/integration/local, tests/integration/tiers); elsewhere they are plain tenants.
TENANT_KEYS = {t: add_key(KEYS_FILE, t) for t in ("metered", "strict", "kept", "trickle", "narrow")}


def one_tier(spec: ClusterSpec) -> ClusterSpec:
    """`spec` with its first tier (tiny.yaml's `small`) alone, routed by the rules policy:
    one engine to start, for clusters whose tests are not about choosing a tier."""
    small = spec.tiers[0].model_copy(update={"fallback_tier": None})
    router = RouterSpec(policy="rules", default_tier=small.name)
    return spec.model_copy(update={"tiers": [small], "router": router})


def local_spec(
    port: int, rag: bool = False, config: str = "tiny.yaml", **gateway: Any
) -> ClusterSpec:
    """configs/tiny.yaml (the tiny random models: most tests need only the plumbing), or
    `config`, on `port`, with this session's API key (see `AUTH`).

    RAG and the embeddings deployment, on in tiny.yaml, stay on only with `rag=True`
    (tests/integration/local), the store in a fresh folder; elsewhere they would only slow
    each cluster's start."""
    if config == "tiny.yaml":
        ensure_tiny_models(ROOT / "models")
    else:  # configs/local.yaml: the real models (tests/integration/real)
        ensure_real_models(ROOT / "models", ROOT / ".cache" / "gguf")
    spec = load_spec(ROOT / "configs" / config)
    uri = str(Path(tempfile.mkdtemp(prefix="tierline-test-rag-")) / "milvus.db")
    update = {
        "rag": spec.rag.model_copy(update={"enabled": rag, "uri": uri}),
        "embeddings": spec.embeddings.model_copy(update={"enabled": rag}),
    }
    spec = spec.model_copy(update=update)
    auth = spec.gateway.auth.model_copy(update={"keys_file": str(KEYS_FILE)})
    g = spec.gateway.model_copy(update={"port": port, "auth": auth, **gateway})
    # The cascade is on but never escalates unless a request sends its own threshold
    # (x-tierline-cascade-threshold): tests/integration/local/test_cascade.py does.
    cascade = spec.router.cascade.model_copy(update={"enabled": True, "logprob_threshold": -1e9})
    router = spec.router.model_copy(update={"cascade": cascade})
    return spec.model_copy(update={"gateway": g, "router": router})
