"""The hostile-tenant bench over TCP, one process per party, as in a cluster.

    .venv/bin/python -m bench.hostile_tcp [--seconds 6] [--rate 40] [--workers 2]
        [--engine-delay-ms 20] [--out bench/results/hostile_tcp.json]

The same gateway app, fake engine, RAG core and hostile requests as bench/hostile_bench.py,
but the gateway is served by uvicorn (httptools, uvloop: what a gateway replica runs) in a
process of its own, the hostile tenant's requests come from a second process over their
own connections, and the normal tenant's chats from this one. In process, the
attacker's client (building and reading thousands of requests a second) ran on the
gateway's own event loop; here it costs the gateway only what its requests cost a real
gateway. What the process layout cannot remove: this machine has 2 cores, so the three
processes still share them.

Phases and figures as in hostile_bench (`summarize`, `with_ratios`); the per-class cost
section stays in process (it reads the gateway's own meters).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.hostile_app import build_app
from bench.hostile_bench import (
    ROOT,
    _auth,
    hostile_requests,
    phase,
    phase_args,
    phases_result,
    started,
    table,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the gateway's process ------------------------------------------------------------------
def serve(port: int, engine_delay_s: float) -> None:
    """The bench's gateway app on 127.0.0.1:`port`, as a replica serves it."""
    import logging

    import uvicorn
    import uvloop

    logging.disable(logging.INFO)
    gw = build_app(engine_delay_s)

    async def main() -> None:
        await gw.rag_core.start()
        config = uvicorn.Config(
            gw.app,
            host="127.0.0.1",
            port=port,
            http="httptools",
            log_level="warning",
            access_log=False,
            timeout_keep_alive=300,
        )
        await uvicorn.Server(config).serve()

    uvloop.run(main())


# -- the hostile tenant's process -----------------------------------------------------------
def attack(url: str, name: str, workers: int, seconds: float) -> None:
    """`workers` of class `name`'s request always in flight for `seconds` after printing
    `ready`; then one JSON line of the answers' statuses."""
    send = hostile_requests()[name]

    async def main() -> Counter[str]:
        counts: Counter[str] = Counter()
        limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:
            await c.get("/healthz")  # connected before the phase starts
            print("ready", flush=True)
            loop = asyncio.get_running_loop()
            end = loop.time() + seconds

            async def worker() -> None:
                while loop.time() < end:
                    try:
                        r = await send(c, _auth("hostile"))
                        counts[str(r.status_code)] += 1
                    except httpx.HTTPError as err:
                        counts[type(err).__name__] += 1

            await asyncio.gather(*(worker() for _ in range(workers)))
        return counts

    print(json.dumps(dict(asyncio.run(main()))), flush=True)


# -- the normal tenant, and the run ---------------------------------------------------------
async def _wait_ready(url: str, server: asyncio.subprocess.Process, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=url, timeout=2) as c:
        while time.monotonic() < deadline:
            if server.returncode is not None:
                raise RuntimeError(f"the gateway process exited with {server.returncode}")
            try:
                if (await c.get("/healthz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"the gateway did not answer /healthz within {timeout_s} s")


async def _attacked_phase(
    c: httpx.AsyncClient, url: str, name: str, args: argparse.Namespace
) -> dict[str, Any]:
    me = [sys.executable, "-m", "bench.hostile_tcp"]
    proc = await asyncio.create_subprocess_exec(
        *me,
        "--attack",
        name,
        "--url",
        url,
        "--workers",
        str(args.workers),
        "--for",
        str(args.seconds + 0.5),
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 120)
    if line.strip() != b"ready":
        raise RuntimeError(f"the attacker for {name} did not start: {line!r}")
    await asyncio.sleep(0.2)  # the hostile requests are in flight before we measure
    row = await phase(c, args.seconds, args.rate, None, 0)
    out, _ = await proc.communicate()
    row["hostile_statuses"] = json.loads(out.decode().strip().splitlines()[-1])
    return row


async def run(args: argparse.Namespace) -> dict[str, Any]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.hostile_tcp",
        "--serve",
        str(port),
        "--engine-delay-ms",
        str(args.engine_delay_ms),
        cwd=ROOT,
    )
    try:
        await _wait_ready(url, server, 180)
        limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:
            attacks = hostile_requests()
            phases = await started(c, attacks, args)
            for name in attacks:
                phases[name] = await _attacked_phase(c, url, name, args)
                print(f"{name}: {phases[name]}", flush=True)
            phases["baseline_end"] = await phase(c, args.seconds, args.rate, None, 0)
    finally:
        server.terminate()
        await server.wait()
    return phases_result(
        "bench.hostile_tcp",
        args,
        phases,
        "gateway (uvicorn, httptools, uvloop), hostile client and normal client in "
        "three processes over TCP on one 2-core machine",
    )


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    phase_args(ap)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/hostile_tcp.json")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the gateway's process
    ap.add_argument("--attack", help=argparse.SUPPRESS)  # the hostile tenant's process
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--for", dest="for_s", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve is not None:
        serve(args.serve, args.engine_delay_ms / 1000)
        return
    if args.attack is not None:
        attack(args.url, args.attack, args.workers, args.for_s)
        return
    result = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result["phases"]))
    print(f"load average {result['load_average']}; worst p99 ratio {result['worst_p99_ratio']}")


if __name__ == "__main__":
    main()
