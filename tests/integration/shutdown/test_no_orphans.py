"""No vLLM process outlives tierline or its Ray node, however they are stopped.

Three lean one-tier clusters, each ended a different way, plus the reaper's promise never
to touch an engine that is not its cluster's:

- `tierline up`, then SIGKILL of its raylet and of `tierline up` together (a node crash);
- `tierline up`, then SIGTERM to its whole process group (as systemd stops a unit), and
  SIGKILL to the group if it has not exited within 45 s;
- `ray start --head` + `serve deploy`, then `ray stop --force`: SIGKILL of every process
  of that head that Ray's own `ray stop` matches (`RAY_PROCESSES`); the real command would
  also stop every other Ray cluster of this user on the machine.

(SIGKILL of one engine replica is in tests/integration/resilience/test_chaos.py.) Each
case records, in bench/results/resilience.json, the seconds from the kill to the last
vLLM process of the cluster gone.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml
from tierline.cli.local import endpoint, logical_cpus, wait_ready
from tierline.cluster.reaper import NodeReaper, ProcInfo
from tierline.cluster.render import ray_process_env, serve_config
from tierline.cluster.spec import ClusterSpec, RouterSpec

from tests.integration.conftest import (
    descendants,
    engine_processes,
    free_port,
    local_spec,
    seconds_until_gone,
)
from tests.integration.deploy import test_serve_deploy as deploy
from tests.integration.resilience.figures import record

BIN = Path(sys.executable).parent
GONE_WITHIN_S = 30.0
DRAIN_S = 10.0


def one_tier_spec() -> ClusterSpec:
    """configs/local.yaml's small tier alone: one engine, so each start is quick."""
    spec = local_spec(free_port(), drain_timeout_s=DRAIN_S)
    small = spec.tiers[0].model_copy(update={"fallback_tier": None})
    router = RouterSpec(policy="rules", default_tier="small")
    return spec.model_copy(update={"tiers": [small], "router": router})


def marked_by_one_cluster(procs: dict[int, ProcInfo]) -> str:
    """Every engine process carries its replica's mark, all of one cluster: its address."""
    assert procs, "no vLLM process found under the cluster"
    unmarked = [f"{p.pid} {p.name}" for p in procs.values() if p.owner is None]
    assert not unmarked, f"engine processes without the replica's mark: {unmarked}"
    clusters = {p.owner.cluster for p in procs.values() if p.owner is not None}
    assert len(clusters) == 1, clusters
    return clusters.pop()


@dataclass
class Up:
    spec: ClusterSpec
    process: subprocess.Popen[bytes]
    log: Path


@contextlib.contextmanager
def tierline_up(folder: Path) -> Iterator[Up]:
    """`tierline up` of the one-tier spec, in a session of its own (a process group to
    signal), until it serves; killed at the end whatever the test did."""
    spec = one_tier_spec()
    spec_file = folder / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    log = folder / "tierline-up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "tierline"), "up", str(spec_file)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
            start_new_session=True,
        )
    tree: dict[int, str] = {}
    try:
        wait_ready(endpoint(spec), timeout_s=600)
        # /readyz may answer before `tierline up` has finished its own start-up wait
        deadline = time.monotonic() + 120
        while "Ctrl-C stops the cluster." not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        tree.update(descendants(proc.pid))
        yield Up(spec, proc, log)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        _kill_left(tree)


def _kill_left(tree: dict[int, str]) -> None:
    """A crashed node's Ray daemons are not this issue's to clean: kill what is left of
    `tree` so the next cluster on this machine starts clean."""
    for pid in tree:
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            p.kill()


@pytest.fixture
def bystanders(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Two processes a reaper must never touch: one named `vllm` with no mark (a `vllm
    serve` started by hand), one marked by another cluster whose replica is long gone."""
    exe = tmp_path / "vllm"
    exe.symlink_to("/bin/sleep")
    other = "10.9.9.9:6379|1|1|someone-elses-replica"
    procs = [
        subprocess.Popen([str(exe), "600"], start_new_session=True),
        subprocess.Popen(
            [str(exe), "600"],
            env={**os.environ, "TIERLINE_ENGINE_OWNER": other},
            start_new_session=True,
        ),
    ]
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def test_a_node_crash_leaves_no_engine_and_the_reaper_spares_others(
    tmp_path: Path, bystanders: list[subprocess.Popen[bytes]]
) -> None:
    with tierline_up(tmp_path) as up:
        engines = engine_processes(up.process.pid)
        cluster = marked_by_one_cluster(engines)
        # A sweep while every replica lives ends nothing, and never the bystanders.
        assert NodeReaper(cluster, grace_s=1.0).sweep() == {}
        raylet = next(
            p
            for p in psutil.Process(up.process.pid).children(recursive=True)
            if p.name() == "raylet"
        )
        t0 = time.monotonic()
        raylet.kill()
        up.process.kill()
        took = seconds_until_gone(engines, t0, GONE_WITHIN_S)
    print(f"SIGKILL of raylet + tierline up: last vLLM process gone after {took:.1f} s")
    record(
        "orphans_node_crash",
        {
            "what": "SIGKILL of the raylet and `tierline up` together (one-tier local.yaml)",
            "vllm_processes": len(engines),
            "last_gone_s": round(took, 2),
        },
    )
    assert all(p.poll() is None for p in bystanders), "a reaper touched a process not its own"


def test_sigterm_to_the_process_group_of_tierline_up(
    tmp_path: Path, bystanders: list[subprocess.Popen[bytes]]
) -> None:
    with tierline_up(tmp_path) as up:
        engines = engine_processes(up.process.pid)
        marked_by_one_cluster(engines)
        t0 = time.monotonic()
        os.killpg(up.process.pid, signal.SIGTERM)
        try:
            up.process.wait(timeout=45)
        except subprocess.TimeoutExpired:
            os.killpg(up.process.pid, signal.SIGKILL)
            up.process.wait()
        exited = time.monotonic() - t0
        took = seconds_until_gone(engines, t0, GONE_WITHIN_S)
    print(
        f"SIGTERM to tierline up's process group: exited after {exited:.1f} s "
        f"(code {up.process.returncode}); last vLLM process gone after {took:.1f} s"
    )
    record(
        "orphans_group_sigterm",
        {
            "what": "SIGTERM to the whole process group of `tierline up` (Ray's daemons "
            "included), SIGKILL if not exited within 45 s",
            "exit_code": up.process.returncode,
            "exited_s": round(exited, 2),
            "vllm_processes": len(engines),
            "last_gone_s": round(took, 2),
        },
    )
    assert exited < DRAIN_S + 30
    assert all(p.poll() is None for p in bystanders)


def _ray_stop_force(head: int) -> list[int]:
    """What `ray stop --force` does, to this head's processes only: SIGKILL to each one
    Ray's process list matches (by name, or by command line)."""
    from ray.autoscaler._private.constants import RAY_PROCESSES

    killed = []
    for p in psutil.Process(head).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            name, cmd = p.name(), " ".join(p.cmdline())
            if any(str(kw) in (name if by_name else cmd) for kw, by_name in RAY_PROCESSES):
                p.kill()
                killed.append(p.pid)
    return killed


def test_ray_stop_force_after_serve_deploy(tmp_path: Path) -> None:
    spec = one_tier_spec()
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    deploy.TOKEN_ENV.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    dash = free_port()
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
        env={
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            **deploy.TOKEN_ENV,
            **ray_process_env(spec),
            **deploy.NO_BALANCER_ENV,
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    tree: dict[int, str] = {}
    try:
        dash_url = f"http://127.0.0.1:{dash}"
        deploy.wait_for_dashboard(dash_url, head)
        config = tmp_path / "serve.yaml"
        config.write_text(yaml.safe_dump(serve_config(spec), sort_keys=False))
        deployed = deploy.run(str(BIN / "serve"), "deploy", str(config), "--address", dash_url)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        wait_ready(endpoint(spec), timeout_s=600)
        tree.update(descendants(head.pid))
        engines = engine_processes(head.pid)
        marked_by_one_cluster(engines)
        t0 = time.monotonic()
        assert _ray_stop_force(head.pid)
        took = seconds_until_gone(engines, t0, GONE_WITHIN_S)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        _kill_left(tree)
    print(f"`ray stop --force` after `serve deploy`: last vLLM process gone after {took:.1f} s")
    record(
        "orphans_ray_stop_force",
        {
            "what": "`ray stop --force` (SIGKILL of every Ray process of the head) after "
            "`serve deploy` of the one-tier local.yaml",
            "vllm_processes": len(engines),
            "last_gone_s": round(took, 2),
        },
    )
