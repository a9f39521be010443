from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI
from tierline.cli import local
from tierline.cluster.spec import ClusterSpec, TenantSpec

from tests.integration.conftest import (
    API_KEY,
    descendants,
    free_port,
    leftover_processes,
    local_spec,
)


@dataclass(frozen=True)
class Cluster:
    url: str
    spec: ClusterSpec
    ready_s: float

    def client(self) -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


def serve_log_records() -> list[dict[str, Any]]:
    """The JSON records of Serve's replica logs in this cluster's Ray session, each with
    its file name under `_file`."""
    import ray

    node = ray._private.worker._global_node  # this process started the cluster
    assert node is not None
    folder = Path(node.get_session_dir_path()) / "logs" / "serve"
    records = []
    for f in folder.glob("replica_*.log"):
        for line in f.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                obj = json.loads(line)
                obj["_file"] = f.name
                records.append(obj)
    return records


@pytest.fixture(scope="package")
def cluster() -> Iterator[Cluster]:
    # Three metered tenants for test_quotas.py (the rest of the package uses tenant `tests`,
    # unlimited); with a quota set, the cluster runs the `quota` deployment too. RAG is on,
    # as in configs/tiny.yaml.
    tenants = [
        TenantSpec(name="metered", tokens_per_min=600),
        TenantSpec(name="strict", tokens_per_min=300),
        TenantSpec(name="kept", tokens_per_min=200),  # test_quotas.py: survives a crash
    ]
    spec = local_spec(free_port(), rag=True, tenants=tenants)
    run = local.start(spec, ready_timeout_s=600)
    try:
        yield Cluster(run.endpoint, spec, run.ready_s)
    finally:
        ours = descendants(os.getpid())
        local.stop()
    leaked = leftover_processes(ours)
    assert not leaked, "cluster teardown left processes behind:\n" + "\n".join(leaked)
