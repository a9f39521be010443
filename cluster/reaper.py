"""Orphaned vLLM engines: who owns an engine process, and ending those no replica owns.

Every tier replica marks its environment, before vLLM starts, with `ENGINE_OWNER_ENV`:
the cluster (its Ray GCS address), the replica process (pid and kernel start time, so a
reused pid is never mistaken for it) and the Serve replica id. vLLM's engine core and
workers inherit it, so `/proc/<pid>/environ` says which replica of which cluster started
them; an engine process without the mark (a bare `vllm serve`) is never ours.

The decision is pure (`orphans`: a process snapshot in, pids out), tested without Ray.
`reap` ends what it chose: SIGTERM, then SIGKILL after a grace period (vLLM's engine core
has been seen ignoring SIGTERM). Two things call it:

- `guard` (`python -m tierline.cluster.reaper guard --owner ...`): a small watchdog each
  replica starts in its own session before its engine. It waits on the replica's pidfd and,
  however the replica ends (SIGKILL, a killed raylet, `ray stop --force`), ends that
  replica's engine processes within the grace period, then exits.
- `NodeReaper`: a periodic sweep of one cluster's orphans on a node, with a Prometheus
  counter (run by the per-node exporter; `tierline down --force` runs one sweep).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "ENGINE_OWNER_ENV",
    "EngineOwner",
    "NodeReaper",
    "ProcFs",
    "ProcInfo",
    "ProcessTable",
    "orphans",
    "owned_by",
    "parse_owner",
    "reap",
    "start_guard",
]

log = logging.getLogger("tierline.reaper")

ENGINE_OWNER_ENV = "TIERLINE_ENGINE_OWNER"
_SEP = "|"
DEFAULT_GRACE_S = 5.0
DEFAULT_INTERVAL_S = 10.0


@dataclass(frozen=True)
class EngineOwner:
    cluster: str  # the Ray cluster's GCS address
    pid: int  # the replica process
    start_ticks: int  # its start time (/proc/<pid>/stat field 22), against pid reuse
    replica: str  # the Serve replica id

    def mark(self) -> str:
        return _SEP.join([self.cluster, str(self.pid), str(self.start_ticks), self.replica])


def parse_owner(value: str | None) -> EngineOwner | None:
    """The owner an `ENGINE_OWNER_ENV` value names; None for anything malformed."""
    if not value:
        return None
    parts = value.split(_SEP)
    if len(parts) != 4 or not parts[0]:
        return None
    try:
        return EngineOwner(parts[0], int(parts[1]), int(parts[2]), parts[3])
    except ValueError:
        return None


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    start_ticks: int
    name: str = ""
    owner: EngineOwner | None = None  # from its environment; None: not a tierline engine
    pidns: str | None = None  # its pid namespace ("pid:[4026531836]"); None: unreadable


def _alive(owner: EngineOwner, table: Mapping[int, ProcInfo]) -> bool:
    proc = table.get(owner.pid)
    return proc is not None and proc.start_ticks == owner.start_ticks


def orphans(
    table: Mapping[int, ProcInfo], cluster: str | None, me: int = -1, pidns: str | None = None
) -> list[int]:
    """Engine processes of `cluster` (None: of any tierline cluster) whose replica process
    is gone (its pid is not in `table`, or is now another process). Pure.

    With `pidns` (the caller's pid namespace), only engines in that namespace are judged:
    an engine in a container (another pid namespace) names its replica by a pid of the
    container's namespace, which this table cannot check, so it is never an orphan here
    (nor is one whose namespace could not be read)."""
    out = []
    for pid, proc in table.items():
        o = proc.owner
        if o is None or pid == me or pid == o.pid:
            continue
        if pidns is not None and proc.pidns != pidns:
            continue
        if cluster is not None and o.cluster != cluster:
            continue
        if not _alive(o, table):
            out.append(pid)
    return sorted(out)


def owned_by(table: Mapping[int, ProcInfo], owner: EngineOwner, me: int = -1) -> list[int]:
    """The engine processes `owner` started (exactly this cluster and replica). Pure."""
    return sorted(
        pid for pid, proc in table.items() if proc.owner == owner and pid not in (me, owner.pid)
    )


class ProcessTable(Protocol):
    def snapshot(self) -> dict[int, ProcInfo]: ...

    def exists(self, pid: int, start_ticks: int) -> bool: ...

    def signal(self, pid: int, sig: int, start_ticks: int) -> bool:
        """Send `sig` to `pid` only while it is still the process that started at
        `start_ticks` (checked right before sending); whether it was sent."""
        ...


def stat_fields(stat: str) -> list[str]:
    """The fields of a /proc/<pid>/stat line after the name (which may hold spaces and
    parentheses): state first, start time (field 22) at index 19."""
    return stat.rsplit(")", 1)[1].split()


def environ_value(environ: bytes, name: str) -> str | None:
    """`name`'s value in a /proc/<pid>/environ blob (NUL-separated NAME=value)."""
    prefix = name.encode() + b"="
    for entry in environ.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix) :].decode(errors="replace")
    return None


class ProcFs:
    """The real process table from /proc. Another user's environment is unreadable, so
    only this user's processes can ever carry a mark."""

    def __init__(self, root: Path = Path("/proc")) -> None:
        self.root = root

    def _stat(self, pid: int) -> list[str] | None:
        try:
            fields = stat_fields((self.root / str(pid) / "stat").read_text())
        except (OSError, IndexError):
            return None
        return fields if len(fields) > 19 else None

    def snapshot(self) -> dict[int, ProcInfo]:
        out = {}
        for entry in self.root.iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            fields = self._stat(pid)
            if fields is None or fields[0] == "Z":
                continue
            owner = None
            with contextlib.suppress(OSError):  # another user's, or gone
                environ = (entry / "environ").read_bytes()
                owner = parse_owner(environ_value(environ, ENGINE_OWNER_ENV))
            name = ""
            with contextlib.suppress(OSError):
                name = (entry / "comm").read_text().strip()
            out[pid] = ProcInfo(pid, int(fields[19]), name, owner, self._pidns(entry))
        return out

    def _pidns(self, entry: Path) -> str | None:
        try:
            return os.readlink(entry / "ns" / "pid")
        except OSError:
            return None

    def start_ticks(self, pid: int) -> int | None:
        fields = self._stat(pid)
        return None if fields is None else int(fields[19])

    def exists(self, pid: int, start_ticks: int) -> bool:
        """Whether `pid` is still that process and not a zombie (as good as gone)."""
        fields = self._stat(pid)
        return fields is not None and fields[0] != "Z" and int(fields[19]) == start_ticks

    def signal(self, pid: int, sig: int, start_ticks: int) -> bool:
        """Through a pidfd where the kernel has them: the fd pins the process, so once its
        start time is checked no reused pid can receive the signal."""
        try:
            fd = os.pidfd_open(pid)
        except (OSError, AttributeError):
            fd = None
        try:
            if not self.exists(pid, start_ticks):
                return False
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if fd is not None:
                    signal.pidfd_send_signal(fd, sig)
                else:
                    os.kill(pid, sig)
                return True
            return False
        finally:
            if fd is not None:
                os.close(fd)


def reap(
    pids: Iterable[int],
    table: ProcessTable,
    snapshot: Mapping[int, ProcInfo],
    grace_s: float = DEFAULT_GRACE_S,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[int, str]:
    """SIGTERM `pids`, SIGKILL those still there after `grace_s`. Returns how each ended
    ("term", "kill", or "gone": no longer that process when its SIGTERM was due). A pid
    counts as still there only while it is the same process, and each signal re-checks that
    identity (pid and start time) right before it is sent: a pid reused since the snapshot
    is left alone ("gone")."""
    targets = {pid: snapshot[pid].start_ticks for pid in pids if pid in snapshot}
    ended: dict[int, str] = {}
    for pid, ticks in targets.items():
        if not table.signal(pid, signal.SIGTERM, ticks):
            ended[pid] = "gone"
    deadline = clock() + grace_s
    while True:
        for pid, ticks in targets.items():
            if pid not in ended and not table.exists(pid, ticks):
                ended[pid] = "term"
        if len(ended) == len(targets) or clock() >= deadline:
            break
        sleep(0.2)
    for pid, ticks in targets.items():
        if pid not in ended:
            ended[pid] = "kill" if table.signal(pid, signal.SIGKILL, ticks) else "term"
    return ended


def _describe(snapshot: Mapping[int, ProcInfo], pid: int) -> str:
    p = snapshot[pid]
    o = p.owner
    return f"{pid} {p.name}" + (f" (replica {o.replica}, pid {o.pid})" if o else "")


class NodeReaper:
    """Ends this node's engine processes of `cluster` that no live replica owns, every
    `interval_s` once `start()`ed, and counts them in `tierline_reaped_engine_processes_total`
    on `registry` (a prometheus_client registry) when one is given."""

    def __init__(
        self,
        cluster: str | None,
        table: ProcessTable | None = None,
        grace_s: float = DEFAULT_GRACE_S,
        interval_s: float = DEFAULT_INTERVAL_S,
        registry: Any = None,
    ) -> None:
        self.cluster = cluster
        self.table = table or ProcFs()
        self.grace_s = grace_s
        self.interval_s = interval_s
        self._registry = registry
        self._counter: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep(self) -> dict[int, str]:
        """One pass: find and end the orphans now. Returns how each ended."""
        snap = self.table.snapshot()
        mine = snap.get(os.getpid())
        found = orphans(snap, self.cluster, me=os.getpid(), pidns=mine.pidns if mine else None)
        if not found:
            return {}
        for pid in found:
            log.warning("ending orphaned vLLM engine process %s", _describe(snap, pid))
        ended = reap(found, self.table, snap, self.grace_s)
        if self._counter is not None:
            for how in ended.values():
                if how != "gone":
                    self._counter.labels(signal=how).inc()
        log.warning("orphaned engine processes ended: %s", ended)
        return ended

    def start(self) -> None:
        if self._registry is not None and self._counter is None:
            from prometheus_client import Counter

            self._counter = Counter(
                "tierline_reaped_engine_processes",
                "vLLM engine processes of this cluster that outlived their replica and were "
                "ended by the node reaper (signal: term, or kill after the grace period)",
                ["signal"],
                registry=self._registry,
            )
        self._thread = threading.Thread(target=self._loop, name="tierline-reaper", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sweep()
            except Exception:  # a sweep must never stop the loop
                log.exception("orphan sweep failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + self.grace_s + 5)


def wait_owner_gone(owner: EngineOwner, table: ProcessTable, poll_s: float = 0.5) -> None:
    """Block until the owner process has ended (its pidfd turns readable, or polling)."""
    fd = None
    with contextlib.suppress(OSError, AttributeError):
        fd = os.pidfd_open(owner.pid)
    try:
        while table.exists(owner.pid, owner.start_ticks):
            if fd is not None:
                select.select([fd], [], [], poll_s)
            else:
                time.sleep(poll_s)
    finally:
        if fd is not None:
            os.close(fd)


def guard(owner: EngineOwner, grace_s: float = DEFAULT_GRACE_S) -> dict[int, str]:
    """Wait for the owner replica to end, then end the engine processes it started."""
    table = ProcFs()
    wait_owner_gone(owner, table)
    snap = table.snapshot()
    found = owned_by(snap, owner, me=os.getpid())
    ended = reap(found, table, snap, grace_s) if found else {}
    if ended:
        print(f"tierline guard: replica {owner.replica} ended; engines {ended}", file=sys.stderr)
    return ended


def guard_command(owner: EngineOwner, grace_s: float = DEFAULT_GRACE_S) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tierline.cluster.reaper",
        "guard",
        "--owner",
        owner.mark(),
        "--grace-s",
        str(grace_s),
    ]


def start_guard(owner: EngineOwner, grace_s: float = DEFAULT_GRACE_S) -> Any:
    """Start the owner's watchdog: its own session (a signal to the replica's process group
    does not reach it) and an environment without the mark (it is no engine process)."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != ENGINE_OWNER_ENV}
    return subprocess.Popen(
        guard_command(owner, grace_s),
        env=env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="tierline's orphaned-engine reaper.")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("guard", help="End one replica's engines once the replica has ended.")
    g.add_argument("--owner", required=True, help=f"The replica's {ENGINE_OWNER_ENV} value.")
    g.add_argument("--grace-s", type=float, default=DEFAULT_GRACE_S)
    s = sub.add_parser("sweep", help="End this node's orphaned engines once.")
    s.add_argument("--cluster", default=None, help="Only this cluster's (its GCS address).")
    s.add_argument("--grace-s", type=float, default=DEFAULT_GRACE_S)
    args = parser.parse_args(argv)
    if args.command == "guard":
        owner = parse_owner(args.owner)
        if owner is None:
            parser.error(f"--owner: not a {ENGINE_OWNER_ENV} value: {args.owner!r}")
        # Ctrl-C in a terminal, or a group signal, must not stop the watch half way.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        guard(owner, args.grace_s)
        return 0
    logging.basicConfig(level=logging.INFO)
    print(NodeReaper(args.cluster, grace_s=args.grace_s).sweep())
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
