"""A cluster of configs/local.yaml's real models (SmolLM2), RAG on: about 80 s to start
on a quiet 2-core machine, 100 s with its three tests (2026-12-06), so `make test` runs
it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from tierline.cli import local

from tests.integration.conftest import descendants, free_port, leftover_processes, local_spec
from tests.integration.local.conftest import Cluster


@pytest.fixture(scope="package")
def real_cluster() -> Iterator[Cluster]:
    spec = local_spec(free_port(), rag=True, config="local.yaml")
    run = local.start(spec, ready_timeout_s=900)
    try:
        yield Cluster(run.endpoint, spec, run.ready_s)
    finally:
        ours = descendants(os.getpid())
        local.stop()
    leaked = leftover_processes(ours)
    assert not leaked, "cluster teardown left processes behind:\n" + "\n".join(leaked)
