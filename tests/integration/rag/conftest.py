from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from tierline.cli import local
from tierline.cluster.spec import ClusterSpec
from tierline.deployments.gateway.pipeline.auth import add_key

from tests.integration.conftest import (
    API_KEY,
    AUTH,
    KEYS_FILE,
    descendants,
    free_port,
    leftover_processes,
    local_spec,
    one_tier,
)

# A second tenant and an operator, beside the session's own tenant "tests" (API_KEY).
OTHER_KEY = add_key(KEYS_FILE, "tests-other")
OPERATOR_KEY = add_key(KEYS_FILE, "ops", role="operator")


def rag_spec(data_dir: Path) -> ClusterSpec:
    spec = local_spec(free_port())
    rag = spec.rag.model_copy(
        update={
            "enabled": True,
            "uri": str(data_dir / "milvus.db"),
            "chunk_tokens": 48,
            "chunk_overlap_tokens": 8,
            "default_top_k": 2,
            # A parse bomb (test_rag_limits.py) is cut well before its 5 s of parsing.
            "parse_timeout_s": 2.0,
        }
    )
    # One tier (tiny-small, 512 tokens: room for two 48-token chunks) and the rules router:
    # these tests are about retrieval, not about choosing a tier, and one engine starts
    # sooner than two.
    return one_tier(spec).model_copy(update={"rag": rag})


@dataclass
class RagCluster:
    spec: ClusterSpec
    url: str = ""
    ready_s: list[float] = field(default_factory=list)
    ours: dict[int, str] = field(default_factory=dict)  # every process our clusters started
    before: dict[int, str] = field(default_factory=dict)  # ours before any cluster started

    def start(self) -> None:
        # Processes running before the first start (a Milvus server the store uses) are
        # not the cluster's.
        if not self.ready_s:
            self.before.update(descendants(os.getpid()))
        run = local.start(self.spec, ready_timeout_s=600)
        self.url = run.endpoint
        self.ready_s.append(run.ready_s)

    def stop(self) -> None:
        now = descendants(os.getpid())
        self.ours.update({p: c for p, c in now.items() if p not in self.before})
        local.stop()

    def restart(self) -> None:
        self.stop()
        self.start()

    def check_no_leaks(self) -> None:
        leaked = leftover_processes(self.ours)
        assert not leaked, "cluster teardown left processes behind:\n" + "\n".join(leaked)

    def client(self) -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)

    def http(self, key: str | None = None) -> httpx.Client:
        headers = AUTH if key is None else {"Authorization": f"Bearer {key}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)


@contextmanager
def running(spec: ClusterSpec) -> Iterator[RagCluster]:
    """A started cluster, stopped afterwards and checked for processes left behind."""
    cluster = RagCluster(spec)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
    cluster.check_no_leaks()


@pytest.fixture(scope="package")
def rag_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RagCluster]:
    with running(rag_spec(tmp_path_factory.mktemp("rag-data"))) as cluster:
        yield cluster
