"""`tierline render serve` + real `serve deploy` against a `ray start --head` cluster.

The last test ends that cluster with `ray stop --force` and checks that no vLLM process
outlives it (issue 19's third way to stop a cluster; the other two are in
tests/integration/shutdown), so the module starts one cluster for both."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml
from openai import OpenAI
from tierline.cli.local import endpoint, logical_cpus, wait_ready
from tierline.cluster.render import ray_process_env, serve_config
from tierline.cluster.spec import ClusterSpec

from tests.integration.conftest import (
    API_KEY,
    descendants,
    engine_processes,
    free_port,
    leftover_processes,
    local_spec,
    marked_by_one_cluster,
    seconds_until_gone,
)
from tests.integration.resilience.figures import record

GONE_WITHIN_S = 30.0

BIN = Path(sys.executable).parent


TOKEN_ENV: dict[str, str] = {}
# Ray holds a stopping direct-ingress replica open 30 s for a load balancer to deregister
# it; nothing sits in front of this test's head, so the hold would only slow its stop.
NO_BALANCER_ENV = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0"}


@pytest.fixture(scope="module")
def spec() -> ClusterSpec:
    return local_spec(free_port())


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **TOKEN_ENV}
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def wait_for_dashboard(url: str, head: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert head.poll() is None, "ray start --head exited"
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answers (token auth may refuse us): it is up
        except OSError:
            time.sleep(1.0)
    raise TimeoutError(f"Ray dashboard at {url} did not come up")


@dataclass(frozen=True)
class RayHead:
    url: str  # the dashboard's, for `serve deploy --address`
    pid: int  # `ray start --head --block`: every process of the head runs under it


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory, spec: ClusterSpec) -> Iterator[RayHead]:
    # Ray's token authentication stays on: the head, `serve deploy` and `serve status` all
    # read the same token file.
    token = tmp_path_factory.mktemp("ray") / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    TOKEN_ENV.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    dash = free_port()
    # `--block` keeps this head's processes under one parent that we stop, instead of
    # `ray stop`, which would stop every Ray cluster on the machine.
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--num-cpus={logical_cpus(spec)}",
            f"--port={free_port()}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            "--include-dashboard=true",
            "--disable-usage-stats",
        ],
        # What `tierline render serve` says every node of the cluster must have.
        env={
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            **TOKEN_ENV,
            **ray_process_env(spec),
            **NO_BALANCER_ENV,
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    dash_url = f"http://127.0.0.1:{dash}"
    ours: dict[int, str] = {}
    try:
        wait_for_dashboard(dash_url, head)
        yield RayHead(dash_url, head.pid)
    finally:
        ours = descendants(head.pid)
        if head.poll() is None:
            # Graceful order: Serve first (replicas stop their vLLM engine processes), then
            # Ray. Killing Ray alone SIGKILLs replicas and orphans their EngineCore children
            # (unless the replicas' watchdog and the exporter's reaper end them: the test
            # below).
            run(str(BIN / "serve"), "shutdown", "--address", dash_url, "-y", timeout=120)
            head.send_signal(signal.SIGTERM)
            try:
                head.wait(timeout=120)
            except subprocess.TimeoutExpired:
                head.kill()
                head.wait()
    leaked = leftover_processes(ours)
    assert not leaked, "the Ray head left processes behind:\n" + "\n".join(leaked)


def _relay_record(request_id: str, timeout_s: float) -> bool:
    """Whether an engine replica of any local Ray session logged a relayed request with
    this (unique) id."""
    deadline = time.monotonic() + timeout_s
    while True:
        for log in Path("/tmp/ray").glob("session_*/logs/serve/replica_*tier-*.log"):
            for line in log.read_text(errors="replace").splitlines():
                if request_id in line and '"event": "relay"' in line:
                    return True
        if time.monotonic() > deadline:
            return False
        time.sleep(1)


def _listener(port: int) -> str:
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return " ".join(psutil.Process(conn.pid).cmdline())
    raise AssertionError(f"nothing listens on port {port}")


def test_rendered_config_deploys_and_serves(
    ray_head: RayHead, spec: ClusterSpec, tmp_path: Path
) -> None:
    config_file = tmp_path / "serve.yaml"
    config_file.write_text(yaml.safe_dump(serve_config(spec), sort_keys=False))
    deployed = run(str(BIN / "serve"), "deploy", str(config_file), "--address", ray_head.url)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    url = endpoint(spec)
    wait_ready(url, timeout_s=600)
    client = OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hello"}], max_tokens=4
    )
    assert raw.headers["x-tierline-tier"] == "small"
    assert raw.parse().usage.completion_tokens <= 4
    # the relay path: a streamed chat goes to the engine replica's own vLLM app, and the
    # replica's access record for its request id says so
    rid = f"deploy-relay-{uuid.uuid4().hex[:10]}"
    stream = client.chat.completions.create(
        model="small",
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=5,
        stream=True,
        extra_headers={"x-request-id": rid},
    )
    chunks = list(stream)
    assert chunks and chunks[-1].choices[0].finish_reason is not None
    assert _relay_record(rid, timeout_s=30), f"no relay access record for {rid}"
    # the fast path: the gateway replica itself holds the spec's port, not Serve's proxy
    owner = _listener(spec.gateway.port)
    assert "ServeReplica" in owner and "gateway" in owner, owner
    status = run(str(BIN / "serve"), "status", "--address", ray_head.url)
    assert status.returncode == 0
    apps = yaml.safe_load(status.stdout)["applications"]
    assert apps[spec.name]["status"] == "RUNNING"


def _ray_stop_force(head: int) -> list[int]:
    """What `ray stop --force` does, to this head's processes only: SIGKILL to each one
    Ray's process list matches (by name, or by command line). The real command would also
    stop every other Ray cluster of this user on the machine."""
    from ray.autoscaler._private.constants import RAY_PROCESSES

    killed = []
    for p in psutil.Process(head).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            name, cmd = p.name(), " ".join(p.cmdline())
            if any(str(kw) in (name if by_name else cmd) for kw, by_name in RAY_PROCESSES):
                p.kill()
                killed.append(p.pid)
    return killed


def test_ray_stop_force_leaves_no_engine(ray_head: RayHead, spec: ClusterSpec) -> None:
    """Last in this module: it ends the cluster the test above deployed."""
    wait_ready(endpoint(spec), timeout_s=60)
    engines = engine_processes(ray_head.pid)
    marked_by_one_cluster(engines)
    t0 = time.monotonic()
    assert _ray_stop_force(ray_head.pid)
    took = seconds_until_gone(engines, t0, GONE_WITHIN_S)
    print(f"`ray stop --force` after `serve deploy`: last vLLM process gone after {took:.1f} s")
    record(
        "orphans_ray_stop_force",
        {
            "what": "`ray stop --force` (SIGKILL of every Ray process of the head) after "
            "`serve deploy` of local.yaml (tests/integration/deploy)",
            "vllm_processes": len(engines),
            "last_gone_s": round(took, 2),
        },
    )
