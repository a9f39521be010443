"""Breaking the cluster on purpose: quotas across replicas, overload, a killed engine
replica, a client that walks away mid-stream, and SIGTERM under load.

Each test counts outcomes and prints them (`-s` shows the figures); the assertions are
on outcomes, never on wall-clock speed. What is timed (time to reject under overload, time
to fail over and to recover after a replica kill) goes to `bench/results/resilience.json`
(`figures.record`). The SIGTERM test stops the cluster, so it is last.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from dataclasses import dataclass, field

import httpx
from tierline.cli.local import wait_ready

from tests.integration.conftest import (
    AUTH,
    descendants,
    engine_processes,
    replica_process,
    seconds_until_gone,
)
from tests.integration.resilience.conftest import QUOTA_RPM, UpCluster
from tests.integration.resilience.figures import percentiles_ms, record

# The small tier: one engine replica taking 4 requests at once, and Serve queues 4 more at each of
# the 2 gateway replicas: 4 + 2 * 4 = 12 in flight. The gateway admits ceil(4 / 2) + 4 = 6 per
# replica (deployments.gateway.pipeline.admission), the same 12 in all. The flood sends 160 at once,
# over 10x that.
SMALL_CAPACITY = 16
# The large tier: 8 at once on its replica, 8 queued at each gateway replica: 8 + 2 * 8.
LARGE_CAPACITY = 24


def chat(model: str = "auto", max_tokens: int = 8, stream: bool = False, text: str = "hi"):
    return {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "stream": stream,
        "temperature": 0,
    }


@dataclass
class Outcome:
    status: int
    seconds: float
    done: bool = True  # streams: ended with [DONE]
    error_event: bool = False
    events: int = 0
    stream: bool = False
    tier: str = ""
    reason: str = ""
    code: str = ""  # error responses: the OpenAI-style error code
    started: float = 0.0  # time.monotonic() when it was sent
    retry_after: str = ""


@dataclass
class Tally:
    outcomes: list[Outcome] = field(default_factory=list)

    def by_status(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for o in self.outcomes:
            out[o.status] = out.get(o.status, 0) + 1
        return dict(sorted(out.items()))


def _error_code(r: httpx.Response) -> str:
    try:
        return str(r.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return ""


async def send(client: httpx.AsyncClient, body: dict, headers: dict[str, str]) -> Outcome:
    t0 = time.monotonic()
    try:
        if not body.get("stream"):
            r = await client.post("/v1/chat/completions", json=body, headers=headers)
            return Outcome(
                r.status_code,
                time.monotonic() - t0,
                tier=r.headers.get("x-tierline-tier", ""),
                reason=r.headers.get("x-tierline-route-reason", ""),
                code=_error_code(r) if r.status_code != 200 else "",
                started=t0,
                retry_after=r.headers.get("retry-after", ""),
            )
        async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
            if r.status_code != 200:
                await r.aread()
                return Outcome(
                    r.status_code,
                    time.monotonic() - t0,
                    stream=True,
                    code=_error_code(r),
                    started=t0,
                    retry_after=r.headers.get("retry-after", ""),
                )
            lines = [ln async for ln in r.aiter_lines() if ln.startswith("data: ")]
            return Outcome(
                200,
                time.monotonic() - t0,
                done=bool(lines) and lines[-1] == "data: [DONE]",
                error_event=any('"error"' in ln for ln in lines[:-1]),
                events=len(lines),
                stream=True,
                tier=r.headers.get("x-tierline-tier", ""),
                reason=r.headers.get("x-tierline-route-reason", ""),
                started=t0,
            )
    except httpx.HTTPError:
        return Outcome(
            -1, time.monotonic() - t0, done=False, stream=bool(body.get("stream")), started=t0
        )


def client_for(cluster: UpCluster, timeout_s: float = 120) -> httpx.AsyncClient:
    """A client whose requests take turns over the gateway replicas: each serves its own
    port (direct ingress; in a local run replica i is on gateway.port + i), as a load
    balancer in front of them would spread them."""
    ports = itertools.cycle(cluster.gateway_ports)

    async def spread(request: httpx.Request) -> None:
        request.url = request.url.copy_with(port=next(ports))

    return httpx.AsyncClient(
        base_url=cluster.url,
        timeout=timeout_s,
        limits=httpx.Limits(max_connections=400, max_keepalive_connections=400),
        event_hooks={"request": [spread]},
    )


def test_quota_is_exact_across_two_gateway_replicas(up_cluster: UpCluster) -> None:
    headers = {"Authorization": f"Bearer {up_cluster.quota_key}"}

    async def burst() -> Tally:
        tally = Tally()
        async with client_for(up_cluster) as c:
            for _ in range(10):  # 100 requests, 10 at a time, well inside one minute
                tally.outcomes += await asyncio.gather(
                    *(send(c, chat("large", max_tokens=1), headers) for _ in range(10))
                )
        return tally

    tally = asyncio.run(burst())
    counts = tally.by_status()
    print(f"quota burst of 100 at {QUOTA_RPM}/min over 2 gateway replicas: {counts}")
    assert set(counts) <= {200, 429}
    assert abs(counts.get(200, 0) - QUOTA_RPM) <= QUOTA_RPM * 0.05


def test_overload_at_ten_times_capacity(up_cluster: UpCluster) -> None:
    n = 10 * SMALL_CAPACITY

    async def flood() -> Tally:
        async with client_for(up_cluster) as c:
            return Tally(
                list(
                    await asyncio.gather(
                        *(send(c, chat("small", max_tokens=32), AUTH) for _ in range(n))
                    )
                )
            )

    tally = asyncio.run(flood())
    counts = tally.by_status()
    rejected = [o for o in tally.outcomes if o.status in (429, 503)]
    served = [o.seconds for o in tally.outcomes if o.status == 200]
    codes: dict[str, int] = {}
    for o in rejected:
        codes[o.code] = codes.get(o.code, 0) + 1
    reject_ms = percentiles_ms([o.seconds for o in rejected])
    print(
        f"overload {n} concurrent: {counts}; rejections by code {codes}; time to reject "
        f"p50 {reject_ms['p50_ms']} ms, p99 {reject_ms['p99_ms']} ms"
    )
    record(
        "overload",
        {
            "what": f"{n} concurrent chat requests pinned to the small tier (capacity 12)",
            "sent": n,
            "by_status": {str(k): v for k, v in counts.items()},
            "rejections_by_code": codes,
            "time_to_reject": reject_ms,
            "time_to_answer_200": percentiles_ms(served),
        },
    )
    assert set(counts) <= {200, 429, 503}, counts  # no other 5xx, no dropped connection
    assert counts.get(200, 0) >= 1 and len(rejected) >= 1
    assert all(o.retry_after for o in rejected)

    # and it keeps serving
    ok = httpx.post(f"{up_cluster.url}/v1/chat/completions", json=chat(), headers=AUTH, timeout=60)
    assert ok.status_code == 200


def test_a_request_to_a_full_tier_is_refused_at_once(up_cluster: UpCluster) -> None:
    """The large tier held full by long streams; then one client's requests one after
    another: each is refused with Retry-After, and the time each took is what a client
    waits to hear "full" (the flood above instead times 160 arrivals queueing for 2 cores).
    The large tier, because its 2,048-token context makes streams that last seconds."""
    probes, holders = 30, 3 * LARGE_CAPACITY

    async def scenario() -> list[Outcome]:
        async with client_for(up_cluster) as c:
            long = {**chat("large", max_tokens=1500, stream=True), "ignore_eos": True}
            # More than the capacity, so each gateway replica is sure to get its share.
            hold = [asyncio.create_task(send(c, long, AUTH)) for _ in range(holders)]
            await asyncio.sleep(1.0)  # a check sent with them could take a holder's place
            deadline, full = time.monotonic() + 60, False
            async with client_for(up_cluster, timeout_s=2.0) as check:
                while not full and time.monotonic() < deadline:  # refused: full
                    full = (await send(check, chat("large"), AUTH)).status in (429, 503)
            if not full:
                held = [t.result().status for t in hold if t.done()]
                raise AssertionError(f"the large tier never filled up; holders ended: {held}")
            out = [await send(c, chat("large"), AUTH) for _ in range(probes)]
            ended = [t.result() for t in hold if t.done()]
            print(
                "holders ended before the probes did: "
                f"{[(o.status, o.code, o.events, round(o.seconds, 2)) for o in ended]}"
            )
            for task in hold:  # the clients walk away; the engine stops their streams
                task.cancel()
            await asyncio.gather(*hold, return_exceptions=True)
            return out

    out = asyncio.run(scenario())
    refused = [o for o in out if o.status in (429, 503)]
    reject_ms = percentiles_ms([o.seconds for o in refused])
    print(f"full tier, {probes} sequential requests: {[o.status for o in out]}; {reject_ms}")
    record(
        "full_tier_probe",
        {
            "what": f"{probes} sequential chat requests pinned to the large tier (capacity "
            f"{LARGE_CAPACITY}) while {holders} long streams were sent to hold it full",
            "sent": probes,
            "by_status": {str(s): sum(o.status == s for o in out) for s in {o.status for o in out}},
            "time_to_reject": reject_ms,
        },
    )
    assert len(refused) == probes, [o.status for o in out]
    assert all(o.retry_after for o in refused)
    ok = httpx.post(f"{up_cluster.url}/v1/chat/completions", json=chat(), headers=AUTH, timeout=60)
    assert ok.status_code == 200


def test_killing_an_engine_replica_loses_nothing(up_cluster: UpCluster) -> None:
    victim = replica_process("tier-small")
    engines = engine_processes(victim.pid)  # its vLLM engine core and workers
    assert engines, "no vLLM process under the replica"
    children = victim.children(recursive=True)  # those, and the replica's watchdog
    engines_gone: list[float] = []

    async def load() -> tuple[Tally, float]:
        tally = Tally()
        killed = asyncio.Event()
        stop_at = [float("inf")]

        async with client_for(up_cluster) as c:

            async def worker(i: int) -> None:
                # Steady load from before the kill until well after it (bounded).
                for j in range(400):
                    if time.monotonic() > stop_at[0]:
                        return
                    stream = (i + j) % 3 == 0
                    tally.outcomes.append(await send(c, chat(max_tokens=16, stream=stream), AUTH))

            async def killer() -> float:
                await asyncio.sleep(1.5)
                victim.send_signal(signal.SIGKILL)
                killed.set()
                now = time.monotonic()
                stop_at[0] = now + 20.0
                # no engine process of the dead replica may be left after 15 s
                gone = await asyncio.to_thread(seconds_until_gone, engines, now, 15.0)
                engines_gone.append(gone)
                return now

            results = await asyncio.gather(*(worker(i) for i in range(4)), killer())
        return tally, float(results[-1])

    tally, killed_at = asyncio.run(load())
    assert not victim.is_running(), "the replica was not killed"
    for p in [victim, *children]:
        up_cluster.tree.pop(p.pid, None)
    print(f"replica SIGKILL: its last vLLM process gone after {engines_gone[0]:.1f} s")
    plain = [o for o in tally.outcomes if not o.stream]
    streams = [o for o in tally.outcomes if o.stream]
    lost = [o for o in plain if o.status != 200]
    # a stream must end properly: [DONE] (after an error event if it broke), or be
    # refused up front with a retryable status; never cut off or left hanging
    broken = [o for o in streams if not (o.done or o.status in (429, 503))]
    print(
        f"replica kill under load: {len(tally.outcomes)} requests, {tally.by_status()}, "
        f"lost non-streaming {len(lost)}, streams not ended properly {len(broken)}, "
        f"streams ended by an error event {sum(o.error_event for o in streams)}"
    )
    assert not lost, [o.status for o in lost]
    assert not broken
    # Where the small tier's work went: Serve holds requests for a dead replica until its
    # replacement is up, or the gateway retries them onto the fallback tier.
    by_tier: dict[str, int] = {}
    for o in plain:
        by_tier[o.tier] = by_tier.get(o.tier, 0) + 1
    print(
        f"non-streaming answered by tier: {by_tier}; slowest {max(o.seconds for o in plain):.1f} s"
    )
    # How long the kill held requests up: those in flight at the kill, and those sent after
    at_kill = [o for o in tally.outcomes if o.started <= killed_at < o.started + o.seconds]
    after = [o for o in tally.outcomes if o.started > killed_at]
    failover = {
        "requests": len(tally.outcomes),
        "by_status": {str(k): v for k, v in tally.by_status().items()},
        "lost_non_streaming": len(lost),
        "streams_not_ended_properly": len(broken),
        "streams_ended_by_error_event": sum(o.error_event for o in streams),
        "answered_by_tier": by_tier,
        "fallback_answers": sum("+fallback" in o.reason for o in tally.outcomes),
        "unhealthy_skips": sum("+unhealthy" in o.reason for o in tally.outcomes),
        "in_flight_at_kill": {
            "count": len(at_kill),
            **percentiles_ms([o.seconds for o in at_kill]),
        },
        "sent_after_kill": {"count": len(after), **percentiles_ms([o.seconds for o in after])},
        "slowest_request_ms": round(max(o.seconds for o in tally.outcomes) * 1000, 1),
    }
    # Serve replaces the replica; time until a request pinned to the small tier works again
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        r = httpx.post(
            f"{up_cluster.url}/v1/chat/completions", json=chat("small"), headers=AUTH, timeout=120
        )
        if r.status_code == 200:
            break
        time.sleep(2.0)
    assert r.status_code == 200
    recovered_s = time.monotonic() - killed_at
    print(f"time to recover (small tier serving again): {recovered_s:.0f} s; {failover}")
    record(
        "replica_kill",
        {
            **failover,
            "what": "SIGKILL of the small tier's only engine replica under steady auto load "
            "(4 clients, 1 in 3 streaming); small falls back to large",
            "small_tier_serving_again_s": round(recovered_s, 1),
            "engine_processes_of_the_dead_replica": len(engines),
            "last_engine_process_gone_s": round(engines_gone[0], 2),
        },
    )
    assert replica_process("tier-small").pid != victim.pid
    wait_ready(up_cluster.url, timeout_s=600)


def test_client_disconnect_mid_stream_keeps_the_cluster_serving(up_cluster: UpCluster) -> None:
    with httpx.stream(
        "POST",
        f"{up_cluster.url}/v1/chat/completions",
        json=chat("large", max_tokens=1500, stream=True),
        headers=AUTH,
        timeout=60,
    ) as r:
        assert r.status_code == 200
        for i, _ in enumerate(r.iter_lines()):
            if i >= 5:
                break  # walk away mid-answer
    for _ in range(3):
        ok = httpx.post(
            f"{up_cluster.url}/v1/chat/completions", json=chat("large"), headers=AUTH, timeout=60
        )
        assert ok.status_code == 200


def test_sigterm_under_load_drains_then_stops(up_cluster: UpCluster) -> None:
    async def scenario() -> tuple[Tally, Tally, int | None]:
        async with client_for(up_cluster) as c:
            in_flight = [
                asyncio.create_task(send(c, chat("large", max_tokens=300, stream=True), AUTH))
                for _ in range(6)
            ]
            await asyncio.sleep(1.5)  # they are generating
            up_cluster.tree.update(descendants(up_cluster.process.pid))
            up_cluster.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(1.0)
            late = Tally(list(await asyncio.gather(*(send(c, chat(), AUTH) for _ in range(5)))))
            done = Tally(list(await asyncio.gather(*in_flight)))
        code = await asyncio.to_thread(up_cluster.process.wait, 240)
        return done, late, code

    done, late, code = asyncio.run(scenario())
    print(
        f"SIGTERM: in-flight {done.by_status()} (all ended with [DONE]: "
        f"{all(o.done for o in done.outcomes)}), new during drain {late.by_status()}, "
        f"exit code {code}"
    )
    assert all(o.status == 200 and o.done and not o.error_event for o in done.outcomes)
    # new requests during the drain window: refused with 503 (or, once the proxy is gone,
    # the connection is refused), never accepted and cut off
    assert all(o.status in (503, -1) for o in late.outcomes), late.by_status()
    assert code == 0
    assert "stopped." in up_cluster.log.read_text()
