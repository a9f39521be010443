"""Local cluster start-up decisions (Ray start retries, Ray process settings), without Ray."""

from __future__ import annotations

import pytest
from tierline.cli.local import kill_children_since, retry_ray_start, serve_process_env
from tierline.cluster.spec import ClusterSpec
from tierline.cluster.specfile import parse_spec

TIMEOUT = Exception(
    "The current node timed out during startup. This could happen because some of the "
    "raylet failed to startup or the GCS has become overloaded."
)


class Starts:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures = list(failures)
        self.inits = 0
        self.cleanups = 0

    def init(self) -> None:
        self.inits += 1
        if self.failures:
            raise self.failures.pop(0)

    def cleanup(self) -> None:
        self.cleanups += 1


def test_a_start_timeout_is_cleaned_up_and_retried() -> None:
    s = Starts([TIMEOUT])
    retried: list[int] = []
    retry_ray_start(s.init, s.cleanup, attempts=3, on_retry=lambda n, _: retried.append(n))
    assert (s.inits, s.cleanups, retried) == (2, 1, [1])


def test_a_gcs_port_file_timeout_is_retried_too() -> None:
    gcs = RuntimeError(
        "Timed out waiting for file /tmp/ray/session_x/gcs_server_port_84d3779c"
    )  # as CI saw it, 2026-12-02
    s = Starts([gcs])
    retry_ray_start(s.init, s.cleanup, attempts=3)
    assert (s.inits, s.cleanups) == (2, 1)


def test_the_last_timeout_is_raised() -> None:
    s = Starts([TIMEOUT, TIMEOUT, TIMEOUT])
    with pytest.raises(Exception, match="timed out during startup"):
        retry_ray_start(s.init, s.cleanup, attempts=3)
    assert (s.inits, s.cleanups) == (3, 3)  # the last attempt's processes are cleaned too


def test_other_errors_are_not_retried() -> None:
    s = Starts([ValueError("bad num_cpus")])
    with pytest.raises(ValueError, match="bad num_cpus"):
        retry_ray_start(s.init, s.cleanup, attempts=3)
    assert (s.inits, s.cleanups) == (1, 0)


def test_processes_a_failed_start_left_are_killed_and_earlier_ones_kept() -> None:
    import subprocess
    import sys

    older = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        before = {older.pid}
        left = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        assert kill_children_since(before) == [left.pid]
        assert left.wait(timeout=10) != 0
        assert older.poll() is None
    finally:
        older.kill()
        older.wait()


def _spec(**gateway: object) -> ClusterSpec:
    spec = parse_spec(
        {"tiers": [{"name": "small", "model_source": "org/small", "max_context_tokens": 256}]}
    )
    return spec.model_copy(update={"gateway": spec.gateway.model_copy(update=gateway)})


def test_local_runs_get_the_clusters_request_path_with_every_gateway_on_one_node() -> None:
    from tierline.cluster.render import ray_process_env

    spec = _spec(port=9100, replicas=2)
    env = serve_process_env(spec)
    assert env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1"
    assert env["RAY_SERVE_USE_GRPC_BY_DEFAULT"] == "1"
    assert env["RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP"] == "0"
    # Serve allocates from range(min, max): both replicas on this node, ports 9100 and 9101
    assert env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] == "9100"
    assert env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] == "9102"
    # no load balancer to deregister a stopping replica locally: Ray's hold is skipped
    assert env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "0"
    cluster = ray_process_env(spec)  # a cluster: one gateway replica per node
    assert cluster["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] == "9101"
    assert {k: v for k, v in env.items() if k in cluster and "MAX_HTTP" not in k} == {
        k: v for k, v in cluster.items() if "MAX_HTTP" not in k
    }


def test_a_gateway_port_still_held_is_waited_for_then_named() -> None:
    import socket

    from tierline.cli.local import wait_ports_free

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"\\[{port}\\]"):
            wait_ports_free("127.0.0.1", range(port, port + 1), timeout_s=0.2)
    wait_ports_free("127.0.0.1", range(port, port + 1), timeout_s=5)  # released: returns


def test_logical_cpus_leave_room_for_the_gateway_beside_every_engine_replica() -> None:
    from tierline.cli.local import ENGINE_ACTOR_CPUS, logical_cpus

    tier = {"model_source": "/m", "max_context_tokens": 512, "replicas": 2, "cpus_per_replica": 1}
    spec = parse_spec(
        {"tiers": [{"name": "a", **tier}, {"name": "b", **tier}], "gateway": {"replicas": 1}}
    )
    engines = 4 * (1 + ENGINE_ACTOR_CPUS)  # each replica: its bundle and its actor's CPU
    assert logical_cpus(spec) >= engines + 1  # and the gateway replica still fits
