"""No vLLM process outlives tierline or its Ray node, however they are stopped.

Two lean one-tier clusters, each ended a different way, plus the reaper's promise never
to touch an engine that is not its cluster's:

- `tierline up`, then SIGKILL of its raylet and of `tierline up` together (a node crash);
- `tierline up`, then SIGTERM to its whole process group (as systemd stops a unit), and
  SIGKILL to the group if it has not exited within 45 s;
(`ray stop --force` after `serve deploy` ends the cluster of tests/integration/deploy, and
SIGKILL of one engine replica is in tests/integration/resilience/test_chaos.py.) Each
case records, in bench/results/resilience.json, the seconds from the kill to the last
vLLM process of the cluster gone.
"""

from __future__ import annotations

import contextlib
import os
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
from tierline.cli.local import endpoint, wait_ready
from tierline.cluster.reaper import NodeReaper
from tierline.cluster.spec import ClusterSpec

from tests.integration.conftest import (
    descendants,
    engine_processes,
    free_port,
    local_spec,
    marked_by_one_cluster,
    one_tier,
    seconds_until_gone,
)
from tests.integration.resilience.figures import record

BIN = Path(sys.executable).parent
GONE_WITHIN_S = 30.0
DRAIN_S = 10.0


def one_tier_spec() -> ClusterSpec:
    """configs/tiny.yaml's small tier alone: one engine, so each start is quick."""
    return one_tier(local_spec(free_port(), drain_timeout_s=DRAIN_S))


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
