"""A local cluster with autoscaled tiers (scaling.yaml), started once for the package."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from tierline.cli import local
from tierline.cluster.spec import ClusterSpec, deployment_name
from tierline.cluster.specfile import load_spec
from tierline.cluster.tiny_models import ensure_tiny_models

from tests.integration.conftest import (
    API_KEY,
    AUTH,
    KEYS_FILE,
    ROOT,
    descendants,
    free_port,
    leftover_processes,
)

SPEC_FILE = Path(__file__).with_name("scaling.yaml")


@dataclass(frozen=True)
class ScalingCluster:
    url: str
    spec: ClusterSpec

    def client(self, timeout_s: float = 700) -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key=API_KEY, max_retries=0, timeout=timeout_s)

    def running(self, tier: str) -> int:
        """RUNNING replicas of a tier, from Serve's own status."""
        from ray import serve

        app = serve.status().applications[self.spec.name]
        d = app.deployments[deployment_name(self.spec.tier(tier))]
        return sum(
            n for s, n in d.replica_states.items() if str(getattr(s, "value", s)) == "RUNNING"
        )

    def gateway_replicas(self) -> dict[str, int]:
        """Replica counts as the gateway sees them (its /readyz), which lag Serve's by
        up to its 2 s poll; reading them sends the tiers no traffic."""
        resp = httpx.get(f"{self.url}/readyz", headers=AUTH, timeout=30)
        return dict(resp.json().get("replicas", {}))

    def engine_metrics(self) -> str:
        """This node's Prometheus scrape from Ray (engine metrics tagged by replica)."""
        import ray

        node = next(n for n in ray.nodes() if n["Alive"])
        url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        return httpx.get(url, timeout=30).text

    def wait_for(self, what: str, ok: Callable[[], bool], timeout_s: float) -> float:
        """Poll until `ok()`; returns the seconds it took, fails the test after timeout."""
        t0 = time.monotonic()
        while not ok():
            if time.monotonic() - t0 > timeout_s:
                pytest.fail(f"{what}: not seen within {timeout_s:.0f}s")
            time.sleep(1.0)
        return time.monotonic() - t0


def with_port_and_keys(spec: ClusterSpec, port: int) -> ClusterSpec:
    auth = spec.gateway.auth.model_copy(update={"keys_file": str(KEYS_FILE)})
    g = spec.gateway.model_copy(update={"port": port, "auth": auth})
    return spec.model_copy(update={"gateway": g})


@contextmanager
def running(spec_file: Path) -> Iterator[ScalingCluster]:
    """A local cluster of `spec_file` (on a free port, with the tests' key) for a module:
    the tests here start clusters of different specs, one at a time."""
    ensure_tiny_models(ROOT / "models")
    spec = with_port_and_keys(load_spec(spec_file), free_port())
    run = local.start(spec, ready_timeout_s=900)
    try:
        yield ScalingCluster(run.endpoint, spec)
    finally:
        ours = descendants(os.getpid())
        local.stop()
    # Idle Ray workers notice their raylet is gone on their own; on a loaded machine
    # (load average 40+ here) that took over 30 s.
    leaked = leftover_processes(ours)
    assert not leaked, "cluster teardown left processes behind:\n" + "\n".join(leaked)


@pytest.fixture(scope="module")
def cluster() -> Iterator[ScalingCluster]:
    with running(SPEC_FILE) as c:
        yield c
