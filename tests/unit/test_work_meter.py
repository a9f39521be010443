"""Work handed to threads is charged to the request that asked for it (`rag.work`, issue
27: a hostile tenant's filtered RAG searches and long prompts ran in worker threads that
no loop step saw, so its share of the gateway never filled).

The spin below burns real thread CPU; the checks are lower bounds on what was charged
(CPU time the thread really took), never on how long anything lasted.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from tierline.cluster.spec import LoopShareSpec
from tierline.deployments.gateway.pipeline.loop_share import LoopShare
from tierline.deployments.gateway.pipeline.middleware import ANONYMOUS_TENANT, GatewayMiddleware
from tierline.deployments.rag.deployment import RagServer, ServeRagClient
from tierline.rag.records import RagError
from tierline.rag.work import Tally, metering, off_loop, report

SPIN_S = 0.05


def spin(cpu_s: float = SPIN_S) -> str:
    """Burn `cpu_s` of this thread's CPU time."""
    end = time.thread_time() + cpu_s
    while time.thread_time() < end:
        pass
    return "done"


def fail() -> None:
    spin()
    raise ValueError("boom")


def test_off_loop_reports_its_thread_cpu_to_the_current_meter() -> None:
    async def run() -> None:
        tally = Tally()
        with metering(tally):
            assert await off_loop(spin) == "done"
            with pytest.raises(ValueError, match="boom"):  # charged when it raises too
                await off_loop(fail)
        assert tally.cpu_s >= 2 * SPIN_S
        assert tally.cpu_s < 2 * SPIN_S + 1.0  # thread time, not the whole process's
        assert await off_loop(spin) == "done"  # no meter: the work is only done
        report(1.0)

    asyncio.run(run())


def test_concurrent_requests_each_charge_their_own_meter() -> None:
    async def request(tally: Tally, spins: int) -> None:
        with metering(tally):
            for _ in range(spins):
                await off_loop(spin)

    async def run() -> tuple[Tally, Tally]:
        light, heavy = Tally(), Tally()
        await asyncio.gather(request(light, 1), request(heavy, 4))
        return light, heavy

    light, heavy = asyncio.run(run())
    assert SPIN_S <= light.cpu_s < 2 * SPIN_S
    assert heavy.cpu_s >= 4 * SPIN_S


def test_loop_share_charges_thread_work_to_the_tenant_that_asked() -> None:
    spec = LoopShareSpec()
    share = LoopShare(spec, time.monotonic, time.thread_time)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/heavy":
            await off_loop(spin, 0.4)  # e.g. a filtered RAG search
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    mw = GatewayMiddleware(app, max_body_bytes=1 << 20, keys=None, loop_share=share)

    async def call(path: str) -> int:
        status: list[int] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        scope = {"type": "http", "method": "POST", "path": path, "headers": []}
        await mw(scope, receive, send)
        return status[0]

    assert asyncio.run(call("/heavy")) == 200
    used = share.uses[ANONYMOUS_TENANT].used_s
    assert used >= 0.3  # 0.4 s of thread CPU, decayed a little since
    assert used <= spec.window_s + 0.1  # capped at one window per charge


class FakeHandle:
    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = answer
        outer = self

        class Call:
            async def remote(self, *args: Any) -> dict[str, Any]:
                return outer.answer

        self.call = Call()


def test_the_rag_replica_returns_its_thread_work_and_the_gateway_charges_it() -> None:
    class Core:
        async def search(self, *args: Any) -> list[dict[str, Any]]:
            await off_loop(spin)
            return [{"id": "a"}]

        async def ingest(self, *args: Any) -> dict[str, Any]:
            await off_loop(spin)
            raise RagError(400, "bad documents")

    server = RagServer.__new__(RagServer)
    server._core = Core()  # type: ignore[assignment]
    server._lock = asyncio.Lock()

    async def run() -> tuple[dict[str, Any], dict[str, Any]]:
        return await server.call("search", "t", "c", "q", 5, None), await server.call(
            "ingest", "t", "c", []
        )

    ok, err = asyncio.run(run())
    assert ok["ok"] == [{"id": "a"}] and ok["cpu_s"] >= SPIN_S
    assert err["error"]["status"] == 400 and err["cpu_s"] >= SPIN_S  # refused work counts

    async def gateway_side() -> Tally:
        client = ServeRagClient(FakeHandle(ok), FakeHandle({}), "m")  # type: ignore[arg-type]
        tally = Tally()
        with metering(tally):
            assert await client.search("t", "c", "q", 5, None) == [{"id": "a"}]
        failing = ServeRagClient(FakeHandle(err), FakeHandle({}), "m")  # type: ignore[arg-type]
        with metering(tally), pytest.raises(RagError):
            await failing.ingest("t", "c", [])
        return tally

    assert asyncio.run(gateway_side()).cpu_s == pytest.approx(ok["cpu_s"] + err["cpu_s"])
