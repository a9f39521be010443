"""Admission at the edge: under a flood, a request no tier can take is refused before it
is tokenised and before the learned router scores it (issue 15).

Capacity 12 at this gateway replica (two tiers of 6 running, no queue, so the learned
router's own queue limit matches the gateway's and a full small tier always spills to
the large one); the engines hold every request before its first item, so the admitted
ones keep their slots.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from tierline.cluster.specfile import load_spec_text
from tierline.deployments.errors import APIError
from tierline.deployments.gateway import GatewayCore
from tierline.deployments.gateway.pipeline.routing import LearnedRouter
from tierline.deployments.gateway.pipeline.schemas import ChatCompletionBody
from tierline.router.head import Head
from tierline.router.scorer import SHIPPED_ARTIFACT

from tests.unit.fakes import CountingCounter, CountingEmbedder, GatedEngine

SPEC = """
tiers:
  - {name: small, model_source: org/small, max_context_tokens: 512,
     max_ongoing_requests: 6, max_queued_requests: 0}
  - {name: large, model_source: org/large, max_context_tokens: 4096,
     max_ongoing_requests: 6, max_queued_requests: 0}
router:
  policy: learned
  learned: {strong_share: 0.0}
"""
CAPACITY = 12
FLOOD = 160


class Flood:
    """A gateway core over gated engines, counting tokeniser and scorer calls."""

    def __init__(self) -> None:
        spec = load_spec_text(SPEC)
        self.gate = asyncio.Event()
        self.engines = {t.name: GatedEngine(t.model_name, self.gate) for t in spec.tiers}
        self.counters = {t.name: CountingCounter() for t in spec.tiers}
        self.embedder = CountingEmbedder()
        learned = LearnedRouter(spec, self.embedder, Head.load(SHIPPED_ARTIFACT))
        self.core = GatewayCore(spec, self.engines, self.counters, learned=learned)

    def counted(self) -> int:
        return sum(c.calls for c in self.counters.values())

    def engine_calls(self) -> int:
        return sum(len(e.calls) for e in self.engines.values())

    def in_flight(self) -> int:
        return sum(self.core.slots.in_flight.values())


def body(model: str = "auto") -> ChatCompletionBody:
    return ChatCompletionBody.model_validate(
        {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    )


def assert_refused_at_capacity(result: Any) -> None:
    assert isinstance(result, APIError), result
    assert (result.status, result.code) == (503, "tier_at_capacity")
    assert result.headers["Retry-After"] == "1"


async def until(condition: Any, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.001)


def test_a_flood_past_capacity_is_refused_before_tokenising_or_scoring() -> None:
    async def scenario() -> None:
        f = Flood()
        held = [asyncio.create_task(f.core.generate("chat", body())) for _ in range(CAPACITY)]
        await until(lambda: f.in_flight() == CAPACITY)
        assert f.core.slots.in_flight == {"small": 6, "large": 6}  # spilled when small filled
        counted, scored, called = f.counted(), f.embedder.texts, f.engine_calls()
        assert scored == CAPACITY

        flood = [f.core.generate("chat", body()) for _ in range(FLOOD - CAPACITY)]
        results = await asyncio.gather(*flood, return_exceptions=True)
        for r in results:
            assert_refused_at_capacity(r)
            assert r.headers["x-tierline-tier"] == "none"
            assert r.headers["x-tierline-route-reason"] == "rejected:tier_at_capacity"
        # neither tokenised, nor scored, nor sent to an engine
        assert (f.counted(), f.embedder.texts, f.engine_calls()) == (counted, scored, called)

        # a pinned request to a full tier: refused the same way, under its tier's name
        with pytest.raises(APIError) as err:
            await f.core.generate("chat", body("small"))
        assert_refused_at_capacity(err.value)
        assert err.value.headers["x-tierline-tier"] == "small"
        assert f.counted() == counted

        # the refusal is made in the request's first step: it never waits on the loop
        step = f.core.generate("chat", body())
        with pytest.raises(APIError):
            step.send(None)

        f.gate.set()
        for resp in await asyncio.gather(*held):
            assert resp.status_code == 200
        assert f.in_flight() == 0 and f.core.board.pending == 0 and f.core.active == 0

    asyncio.run(scenario())


def test_a_flood_arriving_at_once_is_tokenised_only_for_what_fits() -> None:
    async def scenario() -> None:
        f = Flood()
        tasks = [asyncio.create_task(f.core.generate("chat", body())) for _ in range(FLOOD)]
        # every request either holds a slot (its engine waits) or was answered
        await until(lambda: f.in_flight() + sum(t.done() for t in tasks) >= FLOOD)
        assert (f.in_flight(), sum(t.done() for t in tasks)) == (CAPACITY, FLOOD - CAPACITY)
        # Each admitted request counted once per tier's tokenizer; the rest not at all.
        assert f.counted() == CAPACITY * len(f.counters)
        assert f.embedder.texts == CAPACITY
        f.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        answered = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, BaseException)]
        assert len(answered) == CAPACITY and all(r.status_code == 200 for r in answered)
        assert len(refused) == FLOOD - CAPACITY
        for r in refused:
            assert_refused_at_capacity(r)
        assert f.in_flight() == 0 and f.core.board.pending == 0

    asyncio.run(scenario())


def test_requests_refused_later_give_their_pending_place_back() -> None:
    async def scenario() -> None:
        f = Flood()
        f.gate.set()
        bad = body()
        bad.messages[0].content = "word " * 5000  # no tier's context holds it: 400
        for _ in range(3 * CAPACITY):
            with pytest.raises(APIError) as err:
                await f.core.generate("chat", bad)
            assert err.value.status == 400
        assert f.core.board.pending == 0 and f.in_flight() == 0
        assert (await f.core.generate("chat", body())).status_code == 200

    asyncio.run(scenario())
