"""A local cluster: a Ray head in this process, the spec's Serve app, and a readiness wait."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from tierline.cli.startup import StartWatcher, wait_deployed
from tierline.cluster.spec import ClusterSpec

log = logging.getLogger(__name__)

# Ray's logical CPUs are a scheduling budget, not threads: each tier's engine reserves one
# and the gateway half of one, so a 2-core machine still needs more than 2 to place them.
MIN_LOGICAL_CPUS = 8
ENGINE_ACTOR_CPUS = 1  # Ray Serve LLM's default num_cpus for an LLMServer replica actor
# A local run has no load balancer in front of the gateway to deregister a stopping
# replica: Ray's 30 s hold of a stopping direct-ingress replica only delays the stop (the
# gateway's own drain still finishes in-flight requests and refuses new ones).
LOCAL_ONLY_ENV = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0"}
# Where Ray's metrics agent serves every metric of the node (tierline's, Serve's, vLLM's):
# `tierline up` uses the Helm chart's port when it is free (see `metrics_port_for`).
DEFAULT_METRICS_PORT = 8080


@dataclass(frozen=True)
class LocalRun:
    endpoint: str
    deploy_s: float
    ready_s: float
    metrics_url: str = ""


def logical_cpus(spec: ClusterSpec) -> int:
    # Autoscaled tiers may grow to max_replicas: leave room for every replica they may add.
    # Each engine replica holds its bundle (cpus_per_replica) and, merged into it by Ray
    # Serve LLM, its replica actor's CPU: without that one, four replicas took every
    # logical CPU and the gateway was never scheduled. External tiers run no engine.
    engines = [t for t in spec.tiers if not t.is_external]
    most = [t.autoscaling.max_replicas if t.autoscaling else t.num_replicas for t in engines]
    need = sum(
        (t.cpus_per_replica + ENGINE_ACTOR_CPUS) * n for t, n in zip(engines, most, strict=True)
    )
    need += spec.gateway.replicas
    return max(MIN_LOGICAL_CPUS, int(need) + 2)


def endpoint(spec: ClusterSpec) -> str:
    host = "127.0.0.1" if spec.gateway.host in ("0.0.0.0", "::") else spec.gateway.host
    return f"http://{host}:{spec.gateway.port}"


def wait_ready(url: str, timeout_s: float, on_wait: Callable[[str], None] | None = None) -> None:
    """Poll `url/readyz` until it answers 200, or raise TimeoutError with the last answer."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as resp:
                if resp.status == 200:
                    return
        except urllib.error.HTTPError as err:
            last = f"{err.code} {err.read().decode(errors='replace')[:200]}"
        except (urllib.error.URLError, OSError) as err:
            last = str(err)
        if on_wait is not None:
            on_wait(last)
        time.sleep(1.0)
    raise TimeoutError(f"{url}/readyz not ready after {timeout_s:.0f}s: {last}")


def serve_process_env(spec: ClusterSpec) -> dict[str, str]:
    """The request path's settings for every Ray process of the local node (read at
    start-up), as a cluster gets them (`tierline.cluster.render.ray_process_env`), except
    that one node holds every gateway replica: replica i binds `gateway.port + i`, and the
    Serve proxy, which carries no tierline traffic, gets a free port (`start`)."""
    from tierline.cluster.render import ray_process_env

    return {
        **ray_process_env(spec, gateway_replicas_per_node=spec.gateway.replicas),
        **LOCAL_ONLY_ENV,
    }


def wait_ports_free(host: str, ports: range, timeout_s: float = 60.0) -> None:
    """Wait until every port of `ports` can be bound on `host`: a cluster stopped just
    before (a restart) may still be releasing the gateway's ports, and Ray's port
    allocation for direct ingress fails the deployment at once on a busy port."""
    deadline = time.monotonic() + timeout_s
    while True:
        busy = [p for p in ports if not _port_free(p, host)]
        if not busy:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"port(s) {busy} on {host} are in use: the gateway replicas serve them "
                "(gateway.port and up); stop what holds them or choose another gateway.port"
            )
        time.sleep(0.5)


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def metrics_port_for(preferred: int | None = DEFAULT_METRICS_PORT) -> int:
    """`preferred` when it is free, else a free port (another local cluster may hold it)."""
    if preferred is not None and _port_free(preferred):
        return preferred
    return _free_port()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Ray waits a fixed 30 s for a new node's raylet to register with the GCS, and a while for
# the GCS to write its port file; on a loaded machine (a CI runner just after another
# cluster's teardown) a start can miss either (the second seen once in CI, 2026-12-02).
RAY_START_ATTEMPTS = 3
RAY_START_TIMEOUT_TEXTS = ("timed out during startup", "Timed out waiting for file")


def retry_ray_start(
    init: Callable[[], None],
    cleanup: Callable[[], None],
    attempts: int = RAY_START_ATTEMPTS,
    on_retry: Callable[[int, Exception], None] | None = None,
) -> None:
    """Run `init` (a Ray node start); when Ray reports that the node or its GCS timed out
    during startup, `cleanup` what it left and try again, up to `attempts` times in all. Any other
    error, or the last timeout, is raised as it is."""
    for attempt in range(1, attempts + 1):
        try:
            init()
            return
        except Exception as err:
            if not any(text in str(err) for text in RAY_START_TIMEOUT_TEXTS):
                raise
            cleanup()
            if attempt == attempts:
                raise
            if on_retry is not None:
                on_retry(attempt, err)


def _child_pids() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


def kill_children_since(before: set[int]) -> list[int]:
    """Kill this process's descendants that are not in `before`: what a Ray start that
    timed out left running. Its GCS, monitor, dashboard and log monitor are children of
    this process but belong to no node Ray knows of, so `ray.shutdown()` leaves them."""
    import psutil

    killed = []
    for p in psutil.Process().children(recursive=True):
        if p.pid in before:
            continue
        with contextlib.suppress(psutil.Error):
            p.kill()
            killed.append(p.pid)
    return killed


def _init_ray(spec: ClusterSpec, port: int) -> None:
    import ray

    before: set[int] = set()

    def init() -> None:
        before.clear()
        before.update(_child_pids())
        _ray_init_once(spec, port)

    def cleanup() -> None:
        ray.shutdown()
        kill_children_since(before)

    retry_ray_start(
        init,
        cleanup,
        on_retry=lambda n, err: log.warning(
            "Ray start attempt %d failed (%s); trying again", n, err
        ),
    )


def _ray_init_once(spec: ClusterSpec, port: int) -> None:
    import ray

    # Local mode keeps Ray's own ports on loopback: no dashboard, the node (GCS, object
    # manager, workers) bound to 127.0.0.1, and Ray's token authentication left on.
    ray.init(
        # A new cluster of our own, even where `ray start` left an address behind
        # (plain ray.init() would try to join that cluster).
        address="local",
        num_cpus=logical_cpus(spec),
        include_dashboard=False,
        dashboard_host="127.0.0.1",
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
        _metrics_export_port=port,
    )


def start(
    spec: ClusterSpec,
    ready_timeout_s: float = 600.0,
    metrics_port: int | None = None,
    watcher: StartWatcher | None = None,
) -> LocalRun:
    """Start Ray and Serve in this process and deploy the spec; returns once /readyz is 200.

    Metrics of every process of the cluster are served at `LocalRun.metrics_url`, on
    `metrics_port` (None: a free port, so that parallel test clusters never collide).
    The deploy and the /readyz wait each get `ready_timeout_s`; `watcher` hears of each
    phase and, about once a second, of the deployments' states (`tierline up`'s display).
    A deploy Serve gives up on raises `startup.DeployFailed` (a RuntimeError)."""
    from ray import serve
    from tierline.cluster.render import SERVE_LOGGING
    from tierline.deployments.app import build_graph

    port = metrics_port if metrics_port is not None else metrics_port_for(None)

    t0 = time.monotonic()
    if watcher is not None:
        watcher.phase("ray", f"{logical_cpus(spec)} logical CPUs")
    # In the environment only while Ray starts: its node processes (and through them the
    # Serve proxy) inherit it, this driver does not keep it, so handles made here keep
    # their own router loop and may block on `.result()`.
    gateway_ports = range(spec.gateway.port, spec.gateway.port + spec.gateway.replicas)
    wait_ports_free(spec.gateway.host, gateway_ports)
    process_env = serve_process_env(spec)
    saved = {name: os.environ.get(name) for name in process_env}
    for name, value in process_env.items():
        os.environ.setdefault(name, value)
    try:
        _init_ray(spec, port)
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old
    # The gateway replicas hold the spec's port and up; the proxy, which Serve still
    # starts, gets a free port and carries no tierline traffic.
    proxy_port = next(p for p in iter(_free_port, None) if p not in gateway_ports)
    if watcher is not None:
        watcher.phase("deploy", ray_logs_dir() or "")
    serve.start(
        http_options={"host": spec.gateway.host, "port": proxy_port},
        proxy_location="HeadOnly",
    )
    # serve.run(blocking=False) without its wait for RUNNING: wait_deployed polls the
    # same status and reports each deployment's state on the way.
    serve._run(
        build_graph(spec),
        _blocking=False,
        name=spec.name,
        route_prefix="/",
        logging_config=SERVE_LOGGING,  # JSON lines with request ids (deployments.logs)
    )
    wait_deployed(spec.name, ready_timeout_s, watcher.deployments if watcher else None)
    deployed = time.monotonic()
    url = endpoint(spec)
    if watcher is not None:
        watcher.phase("ready", url)
    wait_ready(url, ready_timeout_s, watcher.waiting if watcher else None)
    return LocalRun(
        url,
        deploy_s=deployed - t0,
        ready_s=time.monotonic() - t0,
        metrics_url=f"http://127.0.0.1:{port}/metrics",
    )


def ray_logs_dir() -> str | None:
    """This process's Ray session log folder (Serve's replica logs are in its serve/)."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    return None if node is None else str(node.get_logs_dir_path())


def metrics_url() -> str:
    """The metrics URL of the head node of the Ray cluster this process is connected to."""
    import ray

    for node in ray.nodes():
        if node.get("Alive") and node.get("MetricsExportPort"):
            return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    raise RuntimeError("no live Ray node reports a metrics export port")


def drain(spec: ClusterSpec) -> int:
    """Ask every gateway replica to refuse new requests (503) and let in-flight ones
    finish, for up to the spec's drain window. Returns how many were still running.

    Serve has no broadcast, so the call goes out several times per replica at once: a
    draining replica is busy, and Serve's router sends the next call to a less busy one.
    """
    from ray import serve
    from tierline.deployments.app import GATEWAY_DEPLOYMENT

    window = spec.gateway.drain_timeout_s

    # Awaited together, so one slow replica does not hold up the calls to the others.
    async def drain_all() -> list[tuple[str, int]]:
        handle = serve.get_deployment_handle(GATEWAY_DEPLOYMENT, app_name=spec.name)
        calls = [handle.drain.remote(window) for _ in range(4 * spec.gateway.replicas)]
        return list(await asyncio.wait_for(asyncio.gather(*calls), timeout=window + 30))

    left = dict(asyncio.run(drain_all()))
    return sum(left.values())


def node_going_down() -> bool:
    """Whether a Ray daemon this process started has exited: the node is stopping (say, a
    SIGTERM to the whole process group reached Ray's daemons too) and Serve can no longer
    be asked anything. Calls to it would hang; the drain and Serve's shutdown are skipped."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    return node is None or bool(node.dead_processes())


def run_bounded(
    fn: Callable[[], object], timeout_s: float, abort: Callable[[], bool] = node_going_down
) -> bool:
    """Run `fn` in a thread for at most `timeout_s`, giving up early once `abort()` is true.
    Returns whether it finished (an exception it raised counts as finished, and is logged)."""
    done = threading.Event()

    def target() -> None:
        try:
            fn()
        except Exception as err:  # shutting down anyway
            log.warning("%s failed: %s", getattr(fn, "__name__", fn), err)
        finally:
            done.set()

    threading.Thread(target=target, name="tierline-stop", daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while not done.wait(0.2):
        if time.monotonic() > deadline or abort():
            return False
    return True


# How long `stop` waits for this cluster's engine processes to end after Ray has stopped:
# each replica's watchdog ends them within its grace period once the replica is gone.
ENGINES_GONE_TIMEOUT_S = 20.0
# Serve's shutdown waits for its replicas' graceful stops; past this it is given up on.
SERVE_SHUTDOWN_TIMEOUT_S = 120.0


def stop(graceful: bool = True) -> None:
    """Shut Serve (its replicas stop their engines) and Ray down, then wait for this
    cluster's engine processes to end, ending those that outlived their replica
    (`tierline.cluster.reaper`). Without `graceful`, or once the node is going down, Serve
    is not asked: Ray's shutdown ends the replicas, their watchdogs the engines."""
    import ray
    from ray import serve

    cluster = str(ray.get_runtime_context().gcs_address) if ray.is_initialized() else None
    try:
        if graceful and not node_going_down():
            run_bounded(serve.shutdown, SERVE_SHUTDOWN_TIMEOUT_S)
    finally:
        ray.shutdown()
        if cluster is not None:
            wait_engines_gone(cluster, ENGINES_GONE_TIMEOUT_S)


def wait_engines_gone(cluster: str, timeout_s: float) -> int:
    """Wait until no engine process of `cluster` is left on this machine, ending the ones
    whose replica is gone; returns how many were still there at the end."""
    from tierline.cluster.reaper import NodeReaper

    reaper = NodeReaper(cluster)
    deadline = time.monotonic() + timeout_s
    while True:
        ended = reaper.sweep()
        if ended:
            log.warning("ended %d engine process(es) left after shutdown", len(ended))
        left = [
            p for p in reaper.table.snapshot().values() if p.owner and p.owner.cluster == cluster
        ]
        if not left or time.monotonic() > deadline:
            return len(left)
        time.sleep(0.5)
