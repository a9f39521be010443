"""`replicas.ServeDetails`: the gateway's one poll of Serve's controller, shared by the
relay directory's watch (always fresh) and the replica watcher (a recent answer will do)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import Any

import pytest
from tierline.deployments.gateway.engines.replicas import (
    ReplicaCount,
    ServeDetails,
    ServeReplicaWatcher,
)

APP = "tierline"


def details(running: int) -> dict[str, Any]:
    replicas = [{"replica_id": f"r{i}", "state": "RUNNING"} for i in range(running)]
    deployment = {"status": "HEALTHY", "replicas": replicas}
    return {"applications": {APP: {"deployments": {"small-engine": deployment}}}}


class Controller:
    """A blocking `fetch` that answers `details(running)` and counts its calls; `gate`
    holds every call until it is set (to overlap readers)."""

    def __init__(self) -> None:
        self.running = 1
        self.calls = 0
        self.fail = False
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self) -> Mapping[str, Any]:
        self.calls += 1
        self.gate.wait(5)
        if self.fail:
            raise ConnectionError("controller busy")
        return details(self.running)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_recent_answer_is_reused_until_it_is_max_age_old() -> None:
    controller, clock = Controller(), Clock()
    shared = ServeDetails(controller, max_age_s=1.5, clock=clock)

    async def run() -> None:
        assert await shared.get() == details(1)
        controller.running = 2
        clock.now += 1.4
        assert await shared.get() == details(1)  # kept
        clock.now += 0.1
        assert await shared.get() == details(2)  # 1.5 s old: fetched again

    asyncio.run(run())
    assert controller.calls == shared.fetches == 2


def test_fresh_reads_never_take_a_kept_answer() -> None:
    controller, clock = Controller(), Clock()
    shared = ServeDetails(controller, clock=clock)

    async def run() -> None:
        await shared.get()
        controller.running = 3
        assert await shared.get(fresh=True) == details(3)
        assert await shared.get() == details(3)  # the fresh answer is the kept one now

    asyncio.run(run())
    assert controller.calls == 2


@pytest.mark.parametrize("fresh", [False, True])
def test_readers_during_a_fetch_share_it(fresh: bool) -> None:
    controller = Controller()
    controller.gate.clear()
    shared = ServeDetails(controller)

    async def run() -> list[Mapping[str, Any]]:
        readers = [asyncio.ensure_future(shared.get(fresh=fresh)) for _ in range(5)]
        await asyncio.sleep(0.05)
        controller.gate.set()
        return await asyncio.gather(*readers)

    assert asyncio.run(run()) == [details(1)] * 5
    assert controller.calls == 1


def test_a_failed_fetch_fails_its_readers_and_is_not_kept() -> None:
    controller = Controller()
    controller.fail = True
    shared = ServeDetails(controller)

    async def run() -> None:
        with pytest.raises(ConnectionError):
            await shared.get()
        controller.fail = False
        assert await shared.get() == details(1)

    asyncio.run(run())
    assert controller.calls == 2


def test_a_cancelled_reader_does_not_cancel_the_fetch_of_the_others() -> None:
    controller = Controller()
    controller.gate.clear()
    shared = ServeDetails(controller)

    async def run() -> Mapping[str, Any]:
        first = asyncio.ensure_future(shared.get())
        second = asyncio.ensure_future(shared.get())
        await asyncio.sleep(0.05)
        first.cancel()
        controller.gate.set()
        return await second

    assert asyncio.run(run()) == details(1)
    assert controller.calls == 1


def test_the_replica_watcher_reads_the_shared_answer() -> None:
    controller, clock = Controller(), Clock()
    shared = ServeDetails(controller, clock=clock)
    watcher = ServeReplicaWatcher(APP, {"small": "small-engine"}, shared)

    async def run() -> None:
        await shared.get(fresh=True)  # the relay directory's poll
        controller.running = 2
        assert await watcher.counts() == {"small": ReplicaCount(1, 0, True)}
        clock.now += 2.0
        assert await watcher.counts() == {"small": ReplicaCount(2, 0, True)}

    asyncio.run(run())
    assert controller.calls == 2


def test_a_watcher_without_a_shared_poll_has_its_own() -> None:
    watcher = ServeReplicaWatcher(APP, {"small": "small-engine"})
    assert isinstance(watcher.details, ServeDetails)
    assert watcher.details is not ServeReplicaWatcher(APP, {}).details
