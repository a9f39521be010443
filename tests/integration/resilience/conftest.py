"""A cluster run the way operators run it, `tierline up` in its own process, with tight
limits, two gateway replicas and quotas, so the tests here can break it on purpose."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from tierline.cli.local import endpoint, wait_ready
from tierline.cluster.spec import ClusterSpec, RouterSpec, TenantSpec
from tierline.deployments.gateway.pipeline.auth import add_key

from tests.integration.conftest import (
    KEYS_FILE,
    descendants,
    free_port,
    leftover_processes,
    local_spec,
)

BIN = Path(sys.executable).parent
QUOTA_RPM = 40


@dataclass
class UpCluster:
    url: str
    spec: ClusterSpec
    process: subprocess.Popen[bytes]
    log: Path
    quota_key: str
    tree: dict[int, str] = field(default_factory=dict)
    """Processes of this cluster, recorded before anything stops it."""

    @property
    def gateway_ports(self) -> list[int]:
        """Where the gateway replicas answer: replica i on gateway.port + i."""
        return [self.spec.gateway.port + i for i in range(self.spec.gateway.replicas)]

    def stopped(self) -> bool:
        return self.process.poll() is not None


def resilience_spec() -> tuple[ClusterSpec, str]:
    quota_key = add_key(KEYS_FILE, "metered")
    spec = local_spec(
        free_port(),
        replicas=2,
        retries=1,
        drain_timeout_s=60.0,
        tenants=[TenantSpec(name="metered", requests_per_min=QUOTA_RPM)],
    )
    # The rules policy keeps auto traffic on the small tier, so killing that tier's replica
    # really exercises retries and the fallback tier.
    spec = spec.model_copy(update={"router": RouterSpec(policy="rules", default_tier="small")})
    small, large = spec.tiers
    small = small.model_copy(
        update={"max_ongoing_requests": 4, "max_queued_requests": 4, "fallback_tier": "large"}
    )
    large = large.model_copy(update={"max_ongoing_requests": 8, "max_queued_requests": 8})
    return spec.model_copy(update={"tiers": [small, large]}), quota_key


@pytest.fixture(scope="package")
def up_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpCluster]:
    spec, quota_key = resilience_spec()
    folder = tmp_path_factory.mktemp("up")
    spec_file = folder / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    log = folder / "tierline-up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "tierline"), "up", str(spec_file)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
        )
    cluster = UpCluster(endpoint(spec), spec, proc, log, quota_key)
    try:
        wait_ready(cluster.url, timeout_s=600)
        cluster.tree.update(descendants(proc.pid))
        yield cluster
    finally:
        cluster.tree.update(descendants(proc.pid))
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=180)
            except subprocess.TimeoutExpired:
                proc.kill()
    leaked = leftover_processes(cluster.tree)
    assert not leaked, "tierline up left processes behind:\n" + "\n".join(leaked)
