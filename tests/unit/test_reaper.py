"""The orphaned-engine reaper: ownership decisions over generated process tables, the
TERM-then-KILL sequence on an honest fake, and the watchdog and /proc reader on real
processes (no Ray, no vLLM: a process is an engine of ours only by its mark)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from tierline.cli.down import down
from tierline.cluster.reaper import (
    ENGINE_OWNER_ENV,
    EngineOwner,
    NodeReaper,
    ProcFs,
    ProcInfo,
    environ_value,
    orphans,
    owned_by,
    parse_owner,
    reap,
    start_guard,
    stat_fields,
)

A, B = "127.0.0.1:6379", "10.0.0.2:6379"


def test_owner_mark_round_trips_and_malformed_marks_are_nobody() -> None:
    owner = EngineOwner(A, 42, 123456, "abc123")
    assert parse_owner(owner.mark()) == owner
    for bad in (None, "", "x", "a|b|c|d", "|1|2|r", f"{A}|1|2", f"{A}|1|2|r|extra"):
        assert parse_owner(bad) is None, bad


def test_stat_and_environ_parsing() -> None:
    # a process name may hold spaces and parentheses
    line = "77 (VLLM::Engine (x) y) S 1 77 77 0 -1 4194560 " + " ".join(["0"] * 12) + " 991 5"
    fields = stat_fields(line)
    assert fields[0] == "S" and fields[19] == "991"
    blob = b"PATH=/bin\0TIERLINE_ENGINE_OWNER=a|1|2|r\0X=1\0"
    assert environ_value(blob, ENGINE_OWNER_ENV) == "a|1|2|r"
    assert environ_value(blob, "Y") is None


def _table(rng: random.Random) -> dict[int, ProcInfo]:
    """Replicas (some dead, some with their pid reused), their engines, and bystanders."""
    table: dict[int, ProcInfo] = {}
    pids = iter(rng.sample(range(2, 100_000), 400))
    for _ in range(rng.randint(0, 8)):
        cluster = rng.choice([A, B])
        rpid, ticks = next(pids), rng.randint(1, 10**6)
        owner = EngineOwner(cluster, rpid, ticks, f"r{rpid}")
        fate = rng.choice(["alive", "dead", "reused"])
        if fate == "alive":
            table[rpid] = ProcInfo(rpid, ticks, "ray::ServeReplica")
        elif fate == "reused":
            table[rpid] = ProcInfo(rpid, ticks + 1, "bash")
        for _ in range(rng.randint(0, 3)):
            pid = next(pids)
            table[pid] = ProcInfo(pid, rng.randint(1, 10**6), "VLLM::EngineCore", owner)
    for _ in range(rng.randint(0, 10)):  # bare `vllm serve` and friends: no mark
        pid = next(pids)
        table[pid] = ProcInfo(pid, 1, rng.choice(["VLLM::EngineCore", "vllm", "python"]))
    return table


def test_orphans_are_exactly_the_marked_engines_of_the_cluster_with_a_dead_replica() -> None:
    rng = random.Random(19)
    found_any = 0
    for _ in range(3000):
        table = _table(rng)
        for cluster in (A, B, None):
            got = set(orphans(table, cluster))
            for pid, p in table.items():
                o = p.owner
                mine = o is not None and (cluster is None or o.cluster == cluster)
                dead = o is not None and (
                    o.pid not in table or table[o.pid].start_ticks != o.start_ticks
                )
                assert (pid in got) == (mine and dead), (cluster, p)
            assert all(table[pid].owner is not None for pid in got)  # never an unmarked one
            found_any += len(got)
    assert found_any > 1000


def test_orphans_skips_the_caller_and_owned_by_is_exact() -> None:
    owner = EngineOwner(A, 10, 5, "r")
    other = EngineOwner(A, 11, 5, "s")
    table = {
        20: ProcInfo(20, 1, "VLLM::EngineCore", owner),
        21: ProcInfo(21, 1, "VLLM::Worker", owner),
        22: ProcInfo(22, 1, "VLLM::EngineCore", other),
        11: ProcInfo(11, 5, "ray::ServeReplica"),
    }
    assert orphans(table, A) == [20, 21]
    assert orphans(table, A, me=21) == [20]
    assert orphans(table, B) == []
    assert owned_by(table, owner) == [20, 21]
    assert owned_by(table, other) == [22]


class FakeProcesses:
    """An honest ProcessTable: processes end on SIGKILL, and on SIGTERM unless stubborn."""

    def __init__(self, procs: dict[int, ProcInfo], stubborn: set[int]) -> None:
        self.procs = dict(procs)
        self.stubborn = stubborn
        self.sent: list[tuple[int, int]] = []

    def snapshot(self) -> dict[int, ProcInfo]:
        return dict(self.procs)

    def exists(self, pid: int, start_ticks: int) -> bool:
        p = self.procs.get(pid)
        return p is not None and p.start_ticks == start_ticks

    def signal(self, pid: int, sig: int, start_ticks: int) -> bool:
        if not self.exists(pid, start_ticks):
            return False
        self.sent.append((pid, sig))
        if sig == signal.SIGKILL or pid not in self.stubborn:
            self.procs.pop(pid, None)
        return True


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def test_reap_terms_then_kills_only_the_stubborn_after_the_grace_period() -> None:
    owner = EngineOwner(A, 10, 5, "r")
    procs = {pid: ProcInfo(pid, pid, "VLLM::EngineCore", owner) for pid in (20, 21, 22)}
    fake, clock = FakeProcesses(procs, stubborn={22}), FakeClock()
    ended = reap([20, 21, 22, 99], fake, fake.snapshot(), 5.0, clock.sleep, clock)
    assert ended == {20: "term", 21: "term", 22: "kill"}
    assert (22, signal.SIGKILL) in fake.sent and (20, signal.SIGKILL) not in fake.sent
    assert 5.0 <= clock.now < 5.5
    assert not fake.procs


def test_reap_never_signals_a_pid_reused_since_the_snapshot() -> None:
    owner = EngineOwner(A, 10, 5, "r")
    procs = {pid: ProcInfo(pid, pid, "VLLM::EngineCore", owner) for pid in (20, 21)}
    fake, clock = FakeProcesses(procs, stubborn=set()), FakeClock()
    snap = fake.snapshot()
    fake.procs[21] = ProcInfo(21, 9999, "bash")  # 21 ended and its pid went to a new process
    ended = reap([20, 21], fake, snap, 5.0, clock.sleep, clock)
    assert ended == {20: "term", 21: "gone"}
    assert all(pid != 21 for pid, _ in fake.sent) and 21 in fake.procs


def test_procfs_signal_rechecks_the_start_time(spawned: list[subprocess.Popen[bytes]]) -> None:
    p = _engine(spawned, None)
    fs = ProcFs()
    ticks = fs.start_ticks(p.pid)
    assert ticks is not None
    assert not fs.signal(p.pid, signal.SIGTERM, ticks + 1)  # another process's start time
    assert p.poll() is None
    assert fs.signal(p.pid, signal.SIGTERM, ticks)
    assert _wait_gone(p, 5)


def test_engines_in_another_pid_namespace_are_never_orphans() -> None:
    """A containerised engine names its replica by a pid of the container's namespace; from
    the host that pid is absent (or someone else), so it must not be judged at all."""
    host, container = "pid:[4026531836]", "pid:[4026532999]"
    owner = EngineOwner(A, 7, 5, "r")  # pid 7 inside the container
    table = {
        20: ProcInfo(20, 1, "VLLM::EngineCore", owner, container),
        21: ProcInfo(21, 1, "VLLM::EngineCore", EngineOwner(A, 8, 5, "s"), host),
        22: ProcInfo(22, 1, "VLLM::EngineCore", owner, None),  # namespace unreadable
        os.getpid(): ProcInfo(os.getpid(), 1, "tierline", None, host),
    }
    assert orphans(table, A, pidns=host) == [21]
    fake = FakeProcesses(table, stubborn=set())
    assert NodeReaper(A, fake, grace_s=0.0).sweep() == {21: "term"}
    assert 20 in fake.procs and 22 in fake.procs


def test_procfs_reads_the_pid_namespace(spawned: list[subprocess.Popen[bytes]]) -> None:
    p = _engine(spawned, None)
    snap = ProcFs().snapshot()
    assert snap[p.pid].pidns is not None and snap[p.pid].pidns == snap[os.getpid()].pidns


def test_node_reaper_counts_what_it_ended() -> None:
    owner = EngineOwner(A, 10, 5, "r")
    procs = {
        20: ProcInfo(20, 1, "VLLM::EngineCore", owner),
        30: ProcInfo(30, 1, "VLLM::EngineCore"),  # a bare `vllm serve`
    }
    registry = CollectorRegistry()
    reaper = NodeReaper(A, FakeProcesses(procs, stubborn=set()), registry=registry)
    reaper.start()
    try:
        assert reaper.sweep() == {20: "term"}
        assert reaper.sweep() == {}
    finally:
        reaper.stop()
    assert isinstance(reaper.table, FakeProcesses) and 30 in reaper.table.procs
    page = generate_latest(registry).decode()
    assert 'tierline_reaped_engine_processes_total{signal="term"} 1.0' in page


# A stand-in engine: sleeps, optionally ignoring SIGTERM (as orphaned engine cores have).
ENGINE = (
    "import signal, sys, time\n"
    "if sys.argv[1] == 'stubborn': signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "time.sleep(120)"
)


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def _engine(
    spawned: list[subprocess.Popen[bytes]], mark: str | None, mode: str = "plain"
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != ENGINE_OWNER_ENV}
    if mark is not None:
        env[ENGINE_OWNER_ENV] = mark
    p = subprocess.Popen([sys.executable, "-c", ENGINE, mode], env=env)
    spawned.append(p)
    return p


def _wait_gone(p: subprocess.Popen[bytes], timeout_s: float) -> bool:
    try:
        p.wait(timeout=timeout_s)
        return True
    except subprocess.TimeoutExpired:
        return False


def test_the_watchdog_ends_its_replicas_engines_once_the_replica_dies(
    spawned: list[subprocess.Popen[bytes]],
) -> None:
    replica = subprocess.Popen(["sleep", "120"])
    spawned.append(replica)
    fs = ProcFs()
    ticks = fs.start_ticks(replica.pid)
    assert ticks is not None
    owner = EngineOwner(A, replica.pid, ticks, "replica-1")
    mine = [_engine(spawned, owner.mark()), _engine(spawned, owner.mark(), "stubborn")]
    other_replica = _engine(spawned, EngineOwner(A, replica.pid, ticks, "replica-2").mark())
    other_cluster = _engine(spawned, EngineOwner(B, replica.pid, ticks, "replica-1").mark())
    bare = _engine(spawned, None)
    time.sleep(0.5)  # their environments are in place
    snap = fs.snapshot()
    assert snap[mine[0].pid].owner == owner and snap[bare.pid].owner is None
    guard = start_guard(owner, grace_s=1.0)
    spawned.append(guard)
    time.sleep(0.5)
    assert all(p.poll() is None for p in mine), "the replica is alive: nothing may end"
    replica.kill()
    t0 = time.monotonic()
    assert all(_wait_gone(p, 10) for p in mine)
    took = time.monotonic() - t0
    assert _wait_gone(guard, 10) and guard.returncode == 0
    assert took < 5.0, took  # TERM for one, KILL after the 1 s grace for the stubborn one
    assert mine[1].returncode == -signal.SIGKILL
    for p in (other_replica, other_cluster, bare):
        assert p.poll() is None, "only the dead replica's own engines may end"
    # the other two are orphans too now (their replica is dead); a sweep of cluster A
    # ends only A's, and `tierline down` without --force only lists
    with pytest.raises(Exception) as listed:
        down(force=False, cluster=A, grace_s=1.0)
    assert getattr(listed.value, "exit_code", None) == 1
    assert other_replica.poll() is None
    down(force=True, cluster=A, grace_s=1.0)
    assert _wait_gone(other_replica, 5)
    assert other_cluster.poll() is None and bare.poll() is None


def test_stop_steps_are_bounded_and_given_up_on_when_ray_goes() -> None:
    """`tierline up`'s drain and Serve shutdown run bounded: a hung call is given up on once
    its time is up, or at once when the node is going down (a group SIGTERM)."""
    from tierline.cli.local import run_bounded

    hang = threading.Event()
    assert run_bounded(lambda: None, 5.0, abort=lambda: False)
    assert run_bounded(lambda: 1 / 0, 5.0, abort=lambda: False)  # failed, but finished
    t0 = time.monotonic()
    assert not run_bounded(lambda: hang.wait(30), 0.5, abort=lambda: False)
    assert not run_bounded(lambda: hang.wait(30), 30.0, abort=lambda: True)
    assert time.monotonic() - t0 < 3.0
    hang.set()


def test_the_node_exporter_runs_the_reaper_and_publishes_its_counter() -> None:
    from tierline.cluster.exporter import NodeGpuExporter

    exporter = NodeGpuExporter("cpu-0")
    exporter.start_reaper(A, interval_s=60)
    try:
        assert exporter.reaper is not None and exporter.reaper.cluster == A
        assert "# TYPE tierline_reaped_engine_processes_total counter" in exporter.scrape()
    finally:
        exporter.stop()
    assert exporter.reaper is None
