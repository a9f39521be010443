"""`tierline down`: this machine's vLLM engine processes that tierline started, and, with
`--force`, an end to those whose replica is gone.

Ray does not stop processes it does not know by name: after `ray stop --force`, or a
node whose Ray daemons were killed, vLLM's engine core and workers can outlive their
replica. Each replica's watchdog ends them within seconds (`tierline.cluster.reaper`);
`tierline down --force` is the manual sweep for whatever a watchdog could not (say, one
killed along with everything else by `kill -9 -1`). Ownership is read from each process's
environment, so a `vllm serve` started by hand is never listed or touched, and only engines
in this shell's pid namespace are judged: a containerised engine (another namespace) names
its replica by a pid this host cannot check, so it is listed as "in a container" and never
ended.
"""

from __future__ import annotations

import os

import typer
from rich.console import Console
from rich.table import Table
from tierline.cluster.reaper import DEFAULT_GRACE_S, NodeReaper, ProcFs, orphans

console = Console()


def down(
    force: bool = typer.Option(
        False, "--force", help="End (SIGTERM, then SIGKILL) the engines whose replica is gone."
    ),
    cluster: str | None = typer.Option(
        None, help="Only this Ray cluster's engines (its GCS address, host:port)."
    ),
    grace_s: float = typer.Option(DEFAULT_GRACE_S, help="Seconds between SIGTERM and SIGKILL."),
) -> None:
    """List tierline's vLLM engine processes on this machine; --force ends the orphans."""
    snap = ProcFs().snapshot()
    engines = {
        pid: p
        for pid, p in snap.items()
        if p.owner is not None and (cluster is None or p.owner.cluster == cluster)
    }
    me = snap.get(os.getpid())
    pidns = me.pidns if me is not None else None
    orphaned = set(orphans(snap, cluster, pidns=pidns))
    if not engines:
        console.print("no tierline engine processes on this machine")
        return
    table = Table(title="tierline engine processes")
    for col in ("pid", "process", "cluster", "replica", "state"):
        table.add_column(col)
    for pid, p in sorted(engines.items()):
        assert p.owner is not None
        if pid in orphaned:
            state = "orphaned"
        elif pidns is not None and p.pidns != pidns:
            state = "in a container (not judged)"
        else:
            state = f"replica pid {p.owner.pid} alive"
        table.add_row(str(pid), p.name, p.owner.cluster, p.owner.replica, state)
    console.print(table)
    if not orphaned:
        return
    if not force:
        console.print(f"{len(orphaned)} orphaned: `tierline down --force` ends them")
        raise typer.Exit(1)
    ended = NodeReaper(cluster, grace_s=grace_s).sweep()
    kills = sum(how == "kill" for how in ended.values())
    console.print(f"ended {len(ended)} orphaned engine process(es) ({kills} needed SIGKILL)")
