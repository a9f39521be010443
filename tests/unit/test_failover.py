"""Retries and failover without Ray or HTTP: `until_first`, the attempt list, and
`Failover.first_item` over honest fake engines and a `TierBoard`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tierline.cluster.specfile import load_spec_text
from tierline.deployments.errors import APIError
from tierline.deployments.gateway.engines.board import TierBoard
from tierline.deployments.gateway.engines.engine_client import (
    OVERLOADED,
    EngineClient,
    EngineError,
    EngineItem,
    EngineUnavailable,
    Method,
)
from tierline.deployments.gateway.engines.failover import FailOver, Failover, attempts, until_first
from tierline.deployments.gateway.pipeline.schemas import ChatCompletionBody
from tierline.router.types import TierState

from tests.unit.fakes import FakeEngine

SPEC = """
tiers:
  - name: small
    model_source: org/small
    max_context_tokens: 128
    fallback_tier: {fallback}
    adapters: [{{name: sql, source: s3://bucket/sql}}]
  - {{name: large, model_source: org/large, max_context_tokens: 1024}}
gateway:
  retries: 2
  failover_timeout_s: 0.05
  request_timeout_s: 5
"""


class Scripted(FakeEngine):
    """Fails the first `failures` calls before any output with `error`, then answers
    (after `hold_s`, if set). Counts every call (`tries`) and those closed before their
    first item."""

    def __init__(
        self, model: str, failures: int = 0, error: Exception | None = None, hold_s: float = 0
    ) -> None:
        super().__init__(model)
        self.failures = failures
        self.error = error or ConnectionError("replica died")
        self.hold_s = hold_s
        self.closed = 0
        self.tries = 0

    async def generate(
        self, method: Method, body: dict[str, Any]
    ) -> AsyncGenerator[EngineItem, None]:
        self.tries += 1
        if self.tries <= self.failures:
            raise self.error
        try:
            if self.hold_s:
                await asyncio.sleep(self.hold_s)
        except asyncio.CancelledError:
            self.closed += 1
            raise
        async for item in super().generate(method, body):
            yield item


def setup(
    small: EngineClient, large: EngineClient | None = None, fallback: str = "large"
) -> tuple[Failover, TierBoard]:
    spec = load_spec_text(SPEC.format(fallback=fallback))
    board = TierBoard(spec.tiers, gateways=1)
    engines = {"small": small, "large": large or Scripted("large")}
    return Failover(spec, engines, board), board


def body(model: str = "auto") -> ChatCompletionBody:
    return ChatCompletionBody.model_validate(
        {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    )


def first(f: Failover, model: str = "auto", adapter_id: str | None = None) -> Any:
    headers = {"x-tierline-tier": "small", "x-tierline-route-reason": "auto:default"}
    slot = f.board.acquire("small")

    async def run() -> Any:
        tier, item, stream = await f.first_item(
            "chat", body(model), f.spec.tier("small"), headers, slot, adapter_id
        )
        await stream.aclose()
        return tier.name, item, headers, slot

    return asyncio.run(run())


# -- the pure parts -------------------------------------------------------------------------------
@given(st.integers(0, 10), st.booleans())
def test_attempts_try_the_tier_then_its_fallback(retries: int, has_fallback: bool) -> None:
    spec = load_spec_text(SPEC.format(fallback="large"))
    small, large = spec.tiers
    tries = attempts(small, large if has_fallback else None, retries)
    assert [t.name for t in tries] == ["small"] * (1 + retries) + ["large"] * has_fallback


async def _forever() -> AsyncGenerator[EngineItem, None]:
    await asyncio.Event().wait()
    yield "never"


def test_until_first_returns_times_out_or_fails_over() -> None:
    async def scenario() -> None:
        assert await until_first(FakeEngine("m").generate("chat", {"model": "m"}), 1.0) == (
            await anext(FakeEngine("m").generate("chat", {"model": "m"}))
        )
        with pytest.raises(TimeoutError):
            await until_first(_forever(), 0.01)
        with pytest.raises(FailOver, match=r"within 0\.01 s"):
            await until_first(_forever(), 5.0, give_up_s=0.01)
        down: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.01, down.set_result, None)
        with pytest.raises(FailOver, match="marked down"):
            await until_first(_forever(), 5.0, down=down, tier="small")

    asyncio.run(scenario())


# -- first_item -----------------------------------------------------------------------------------
def test_failures_before_output_are_retried_on_the_same_tier() -> None:
    small = Scripted("small", failures=2)
    f, board = setup(small)
    tier, item, headers, _ = first(f)
    assert tier == "small" and isinstance(item, dict) and small.tries == 3
    assert headers["x-tierline-route-reason"] == "auto:default" and board.health["small"]


def test_then_the_fallback_takes_it_with_the_slot_and_the_tier_is_down() -> None:
    small, large = Scripted("small", failures=99), Scripted("large")
    f, board = setup(small, large)
    tier, _, headers, slot = first(f)
    assert (tier, slot.tier) == ("large", "large")
    assert headers == {
        "x-tierline-tier": "large",
        "x-tierline-route-reason": "auto:default+fallback",
    }
    assert board.health["small"] is False and board.slots.in_flight == {"small": 0, "large": 1}
    assert small.tries == 3 and large.tries == 1
    # the states the router sees next skip it
    assert board.states(["small"]) == [TierState("small", 128, healthy=False)]


def test_an_adapter_request_never_leaves_its_tier() -> None:
    f, _ = setup(Scripted("small", failures=99))
    with pytest.raises(APIError) as err:
        first(f, "small:sql", adapter_id="small:sql")
    assert (err.value.status, err.value.code) == (503, "tier_unavailable")
    assert err.value.headers["Retry-After"] == "1"


def test_an_unavailable_tier_is_not_retried_and_keeps_its_status() -> None:
    no = EngineUnavailable(429, "provider says slow down", "rate_limited", retry_after_s="7")
    small = Scripted("small", failures=99, error=no)
    f, board = setup(small, fallback="null")
    with pytest.raises(APIError) as err:
        first(f)
    assert (err.value.status, err.value.headers["Retry-After"]) == (429, "7")
    assert small.tries == 1 and board.health["small"]  # a 429 is not an outage


def test_engine_errors_are_answered_not_retried() -> None:
    small = FakeEngine("small", fail="error", status=503)
    f, _ = setup(small)
    with pytest.raises(APIError) as err:
        first(f)
    assert err.value.status == 503 and err.value.headers["Retry-After"] == "1"
    assert len(small.calls) == 1


def test_a_tier_marked_down_hands_its_waiting_request_to_the_fallback() -> None:
    small = Scripted("small", hold_s=60)
    f, board = setup(small)

    async def scenario() -> str:
        slot = board.acquire("small")
        headers = {"x-tierline-tier": "small", "x-tierline-route-reason": "auto:default"}
        task = asyncio.create_task(
            f.first_item("chat", body(), f.spec.tier("small"), headers, slot)
        )
        while not board.down_waiters["small"]:
            await asyncio.sleep(0.001)
        board.mark_down("small")
        tier, _, stream = await asyncio.wait_for(task, 5)
        await stream.aclose()
        assert not board.down_waiters["small"]  # forgotten once the wait ended
        return tier.name

    assert asyncio.run(scenario()) == "large" and small.closed == 1


class Full(FakeEngine):
    """A tier whose Serve queue is full: every call is refused with `overloaded`."""

    async def generate(
        self, method: Method, body: dict[str, Any]
    ) -> AsyncGenerator[EngineItem, None]:
        self.calls.append(body)
        yield EngineError(503, "the tier is at capacity; retry shortly", OVERLOADED)


def test_a_full_queue_hands_the_request_to_the_fallback_without_marking_the_tier_down() -> None:
    small, large = Full("small"), Scripted("large")
    f, board = setup(small, large)
    tier, item, headers, slot = first(f)
    assert (tier, slot.tier) == ("large", "large") and isinstance(item, dict)
    assert headers["x-tierline-route-reason"] == "auto:default+fallback"
    assert len(small.calls) == 1  # no retry on a full queue
    assert board.health["small"]  # busy, not broken


def test_a_full_queue_without_room_elsewhere_is_answered_overloaded() -> None:
    for fallback in ("null", "large"):
        f, board = setup(Full("small"), Full("large"), fallback=fallback)
        with pytest.raises(APIError) as err:
            first(f)
        assert (err.value.status, err.value.code) == (503, OVERLOADED)
        assert err.value.headers["Retry-After"] == "1"
        assert board.health["small"]
