"""Gateway admission control (a full tier is refused at once) and early failover (a tier
marked down hands its waiting requests to the fallback tier)."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncGenerator
from typing import Any

import pytest
from tierline.cluster.specfile import load_spec_text
from tierline.deployments.errors import APIError
from tierline.deployments.gateway import GatewayCore
from tierline.deployments.gateway.engines.engine_client import EngineItem, Method
from tierline.deployments.gateway.pipeline.admission import (
    Load,
    TierSlots,
    admits,
    as_router_state,
    gateway_limit,
    tier_limit,
)
from tierline.deployments.gateway.pipeline.routing import LearnedRouter
from tierline.deployments.gateway.pipeline.schemas import ChatCompletionBody
from tierline.deployments.gateway.pipeline.tokens import EstimatingCounter
from tierline.router.embedding import HashingEmbedder
from tierline.router.head import Head
from tierline.router.scorer import SHIPPED_ARTIFACT
from tierline.router.types import TierState

from tests.unit.fakes import FakeEngine

SPEC = """
tiers:
  - name: small
    model_source: org/small
    max_context_tokens: 128
    max_ongoing_requests: 1
    max_queued_requests: 1
    fallback_tier: large
  - name: large
    model_source: org/large
    max_context_tokens: 1024
    max_ongoing_requests: 2
    max_queued_requests: 2
router:
  policy: {policy}
  default_tier: small
  learned:
    strong_share: 0.0
gateway:
  retries: 1
  failover_timeout_s: 0.05
"""


# -- the pure limits ----------------------------------------------------------------------
def test_gateway_limits_add_up_to_serves_capacity() -> None:
    rng = random.Random(7)
    for _ in range(5000):
        ongoing, queued = rng.randint(1, 256), rng.randint(0, 256)
        replicas, gateways = rng.randint(1, 16), rng.randint(1, 8)
        limit = gateway_limit(ongoing, queued, replicas, gateways)
        assert limit is not None and limit >= 1 + queued
        # Serve: max_ongoing per engine replica (shared), max_queued per caller (gateway)
        serve_capacity = ongoing * replicas + queued * gateways
        assert serve_capacity <= gateways * limit < serve_capacity + gateways + 1


def test_no_queue_limit_means_no_admission_limit() -> None:
    assert gateway_limit(8, -1, 2, 2) is None
    assert admits(10**9, None)


def test_autoscaled_tiers_count_their_most_replicas() -> None:
    spec = load_spec_text(
        """
tiers:
  - name: t
    model_source: org/t
    max_context_tokens: 128
    max_ongoing_requests: 4
    max_queued_requests: 3
    autoscaling: {min_replicas: 1, max_replicas: 5}
"""
    )
    assert tier_limit(spec.tiers[0], gateways=2) == 10 + 3


def test_slots_hold_up_to_the_limit_and_move_with_the_request() -> None:
    slots = TierSlots({"a": 2, "b": 1, "c": None})
    first, second = slots.acquire("a"), slots.acquire("a")
    assert first is not None and second is not None
    assert slots.acquire("a") is None and slots.load("a").full
    assert first.move_to("b") and slots.in_flight == {"a": 1, "b": 1, "c": 0}
    assert not second.move_to("b")  # b is full: the slot stays on a
    assert second.tier == "a"
    first.release()
    first.release()  # idempotent
    second.release()
    assert slots.in_flight == {"a": 0, "b": 0, "c": 0}
    many = [slots.acquire("c") for _ in range(1000)]
    assert all(s is not None for s in many)


def test_a_full_tier_looks_overloaded_to_the_router() -> None:
    state = TierState("small", 128)
    assert as_router_state(state, Load(1, 2)) == state
    assert as_router_state(state, Load(3, None)) == state
    full = as_router_state(state, Load(2, 2))
    assert full.overloaded and full.queued == 2


# -- the gateway ----------------------------------------------------------------------------
class HeldEngine(FakeEngine):
    """With `hold`, keeps every request waiting before its first item, as Serve's queue
    does for a tier whose only replica died; first fails `fail_first` requests at once.
    Counts the requests that were cancelled."""

    def __init__(self, model: str, hold: bool = True, fail_first: int = 0) -> None:
        super().__init__(model)
        self.hold = hold
        self.fail_first = itertools.count()
        self.failures = fail_first
        self.closed = 0

    async def generate(
        self, method: Method, body: dict[str, Any]
    ) -> AsyncGenerator[EngineItem, None]:
        if next(self.fail_first) < self.failures:
            self.calls.append((method, body))
            raise ConnectionError("replica died")
        try:
            if self.hold:
                self.calls.append((method, body))
                await asyncio.Event().wait()  # never set: only cancellation ends it
            async for item in super().generate(method, body):
                yield item
        except (asyncio.CancelledError, GeneratorExit):
            self.closed += 1
            raise


def core_for(policy: str, small: FakeEngine, large: FakeEngine | None = None) -> GatewayCore:
    spec = load_spec_text(SPEC.format(policy=policy))
    engines = {"small": small, "large": large or FakeEngine("large")}
    counters = {t.name: EstimatingCounter() for t in spec.tiers}
    learned = (
        LearnedRouter(spec, HashingEmbedder(), Head.load(SHIPPED_ARTIFACT))
        if policy == "learned"
        else None
    )
    return GatewayCore(spec, engines, counters, learned=learned)


def body(model: str = "auto", stream: bool = False) -> ChatCompletionBody:
    return ChatCompletionBody.model_validate(
        {
            "model": model,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4,
            "stream": stream,
        }
    )


async def drain_response(resp: Any) -> None:
    if hasattr(resp, "events"):
        async for _ in resp.events:
            pass


def test_full_tier_is_refused_at_once_with_retry_after() -> None:
    async def scenario() -> None:
        small = FakeEngine("small")
        core = core_for("rules", small)
        assert core.slots.limits["small"] == 2  # 1 running + 1 queued, one gateway replica
        held = [await core.generate("chat", body("small", stream=True)) for _ in range(2)]
        calls = len(small.calls)
        with pytest.raises(APIError) as err:
            await core.generate("chat", body("small"))
        e = err.value
        assert e.status == 503 and e.code == "tier_at_capacity"
        assert e.headers["Retry-After"] == "1" and e.headers["x-tierline-tier"] == "small"
        assert len(small.calls) == calls  # the engine never saw it
        for resp in held:  # the open streams finish and give their slots back
            await drain_response(resp)
        assert core.slots.in_flight == {"small": 0, "large": 0}
        resp = await core.generate("chat", body("small"))
        assert resp.status_code == 200

    asyncio.run(scenario())


def test_slots_come_back_after_errors_and_rejections() -> None:
    async def scenario() -> None:
        core = core_for("rules", FakeEngine("small", fail="error", status=400))
        for _ in range(5):
            with pytest.raises(APIError):
                await core.generate("chat", body("small"))
        assert core.slots.in_flight == {"small": 0, "large": 0}
        assert core.active == 0

    asyncio.run(scenario())


def test_auto_spills_past_a_full_tier_with_the_learned_policy() -> None:
    async def scenario() -> None:
        core = core_for("learned", FakeEngine("small"))
        first = [await core.generate("chat", body(stream=True)) for _ in range(2)]
        assert all(r.headers["x-tierline-tier"] == "small" for r in first)
        spilled = await core.generate("chat", body())
        assert spilled.headers["x-tierline-tier"] == "large"
        assert "+spill" in spilled.headers["x-tierline-route-reason"]
        for resp in first:
            await drain_response(resp)
        again = await core.generate("chat", body())
        assert again.headers["x-tierline-tier"] == "small"

    asyncio.run(scenario())


def test_waiting_requests_fail_over_when_the_tier_is_marked_down() -> None:
    async def scenario() -> None:
        small = HeldEngine("small")  # a dead replica: requests wait in Serve's queue
        core = core_for("rules", small)
        waiting = [asyncio.create_task(core.generate("chat", body())) for _ in range(2)]
        while len(small.calls) < 2:
            await asyncio.sleep(0.001)
        core.mark_down("small")
        done = await asyncio.wait_for(asyncio.gather(*waiting), timeout=30)
        for resp in done:
            assert resp.status_code == 200
            assert resp.headers["x-tierline-tier"] == "large"
            assert resp.headers["x-tierline-route-reason"].endswith("+fallback")
        assert small.closed == 2  # the abandoned engine requests were cancelled
        assert core.slots.in_flight == {"small": 0, "large": 0}
        # new auto requests skip the tier; pinned ones get a 503 at once
        resp = await core.generate("chat", body())
        assert resp.headers["x-tierline-tier"] == "large"
        with pytest.raises(APIError) as err:
            await core.generate("chat", body("small"))
        assert err.value.status == 503

    asyncio.run(scenario())


def test_a_retry_without_output_fails_over_and_marks_the_tier_down() -> None:
    async def scenario() -> None:
        # the replica dies under the first attempt; the retry waits in the queue
        small = HeldEngine("small", fail_first=1)
        core = core_for("rules", small)
        resp = await asyncio.wait_for(core.generate("chat", body(stream=True)), timeout=30)
        assert resp.headers["x-tierline-tier"] == "large"
        await drain_response(resp)
        assert len(small.calls) == 2 and small.closed == 1
        assert core.health["small"] is False
        assert core.slots.in_flight == {"small": 0, "large": 0}

    asyncio.run(scenario())


def test_tiers_without_a_fallback_keep_waiting_for_their_replica() -> None:
    async def scenario() -> None:
        large = HeldEngine("large")
        core = core_for("rules", FakeEngine("small"), large)
        task = asyncio.create_task(core.generate("chat", body("large")))
        while not large.calls:
            await asyncio.sleep(0.001)
        core.mark_down("large")
        await asyncio.sleep(0.2)  # it is not woken: there is nowhere else to go
        assert not task.done() and large.closed == 0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert large.closed == 1 and core.slots.in_flight == {"small": 0, "large": 0}

    asyncio.run(scenario())


# -- request errors are not replica failures ----------------------------------------------
class UnusedHandle:
    """A `DeploymentHandle` stand-in that fails the test if a request reaches it."""

    def options(self, **_: Any) -> UnusedHandle:
        return self

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the engine was called ({name}) for an invalid request")


def test_an_invalid_body_is_a_400_not_a_dead_tier() -> None:
    from tierline.deployments.gateway.engines.engine_client import EngineError, ServeEngineClient

    async def first_item() -> EngineItem:
        client = ServeEngineClient(UnusedHandle(), "small")
        # vLLM refuses stream_options without stream (VLLMValidationError, not ValueError)
        body = {
            "model": "small",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": False,
            "stream_options": {"include_usage": True},
        }
        return await anext(client.generate("chat", body))

    item = asyncio.run(first_item())
    assert isinstance(item, EngineError) and item.status == 400


class OptionsHandle:
    def __init__(self) -> None:
        self.options_seen: list[dict[str, Any]] = []

    def options(self, **kw: Any) -> OptionsHandle:
        self.options_seen.append(kw)
        return self


@pytest.mark.parametrize(("grpc", "by_reference"), [(False, True), (True, False)])
def test_grpc_between_deployments_sets_the_handles_transport(
    grpc: bool, by_reference: bool
) -> None:
    from tierline.deployments.gateway.engines.engine_client import ServeEngineClient

    handle = OptionsHandle()
    ServeEngineClient(handle, "small", grpc=grpc)
    assert handle.options_seen == [{"stream": True, "_by_reference": by_reference}]


class _Refusing:
    """A streaming handle method whose first `refusals` calls Serve refuses for
    back-pressure; later calls stream one chunk."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.calls = 0

    def remote(self, request: Any) -> Any:
        self.calls += 1
        refused = self.calls <= self.refusals

        return _Stream(refused)


class _Stream:
    def __init__(self, refused: bool) -> None:
        self.refused = refused

    def __aiter__(self) -> Any:
        return self._items()

    async def _items(self) -> Any:
        from ray.serve.exceptions import BackPressureError

        if self.refused:
            raise BackPressureError(num_queued_requests=8, max_queued_requests=8)
        yield 'data: {"choices": []}\n\n'

    def cancel(self) -> None:
        pass


class _Handle:
    def __init__(self, refusals: int) -> None:
        self.completions = _Refusing(refusals)

    def options(self, **kw: Any) -> _Handle:
        return self


@pytest.mark.parametrize(("refusals", "wait_s", "overloaded"), [(2, 5.0, False), (99, 0.1, True)])
def test_a_momentarily_full_serve_queue_is_waited_for_then_reported(
    refusals: int, wait_s: float, overloaded: bool
) -> None:
    import asyncio

    from tierline.deployments.gateway.engines.engine_client import (
        OVERLOADED,
        EngineError,
        ServeEngineClient,
    )

    handle = _Handle(refusals)
    client = ServeEngineClient(handle, "small", queue_wait_s=wait_s)
    body = {"model": "small", "prompt": "hi", "max_tokens": 1}

    async def items() -> list[Any]:
        return [item async for item in client.generate("completions", body)]

    got = asyncio.run(items())
    if overloaded:
        assert len(got) == 1 and isinstance(got[0], EngineError) and got[0].type == OVERLOADED
        assert 2 <= handle.completions.calls < 99  # retried within the bound, then gave up
    else:
        assert not any(isinstance(i, EngineError) for i in got)
        assert handle.completions.calls == refusals + 1
