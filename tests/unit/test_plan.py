"""The request plan: cheap checks, counting once per tokenizer, routing from the plan."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tierline.cluster.specfile import load_spec_text
from tierline.deployments.errors import APIError
from tierline.deployments.gateway import GatewayCore
from tierline.deployments.gateway.engines.engine_client import EngineItem, Method
from tierline.deployments.gateway.pipeline.plan import (
    RequestPlan,
    count_prompt_tokens,
    decide_route,
    needs_tokenizer,
    rules_policy,
    scope,
)
from tierline.deployments.gateway.pipeline.schemas import (
    ChatCompletionBody,
    CompletionBody,
    _Generation,
)
from tierline.deployments.gateway.pipeline.tokens import EstimatingCounter
from tierline.deployments.gateway.quota.service import Admission
from tierline.router.types import TierState

from tests.unit.fakes import CountingCounter, FakeEngine

SPEC = load_spec_text(
    """
tiers:
  - name: small
    model_source: org/small
    max_context_tokens: 128
    adapters: [{name: sql, source: s3://bucket/sql-lora}]
  - {name: large, model_source: org/large, max_context_tokens: 1024}
router:
  params: {long_prompt_tokens: 64}
gateway:
  max_tokens_limit: 256
  tenants:
    - {name: cheap, tiers: [small]}
    - {name: nobody, tiers: []}
"""
)


def chat(model: str = "auto", content: str = "hi", **kw: Any) -> ChatCompletionBody:
    return ChatCompletionBody.model_validate(
        {"model": model, "messages": [{"role": "user", "content": content}], **kw}
    )


def completion(prompt: Any, model: str = "auto") -> CompletionBody:
    return CompletionBody.model_validate({"model": model, "prompt": prompt, "max_tokens": 4})


def quota(tenant: str) -> Any:
    return next((t for t in SPEC.gateway.tenants if t.name == tenant), SPEC.gateway.default_quota)


def refused(body: _Generation, tenant: str = "default", **kw: Any) -> APIError:
    with pytest.raises(APIError) as err:
        scope(SPEC, quota(tenant), body, tenant, **kw)
    return err.value


# -- the cheap checks ----------------------------------------------------------------------------
def test_scope_names_the_tiers_a_request_may_use() -> None:
    assert scope(SPEC, quota("default"), chat(), "default").names == ("small", "large")
    assert scope(SPEC, quota("cheap"), chat(), "cheap").names == ("small",)
    pinned = scope(SPEC, quota("default"), chat("large"), "default")
    assert pinned.names == ("large",) and pinned.pinned is not None
    adapter = scope(SPEC, quota("default"), chat("small:sql"), "default")
    assert adapter.names == ("small",) and adapter.adapter_id == "small:sql"


def test_scope_refuses_with_the_right_status() -> None:
    assert (refused(chat(max_tokens=1000)).status, refused(chat(max_tokens=1000)).param) == (
        400,
        "max_tokens",
    )
    assert refused(chat("gpt-9")).status == 404
    assert refused(chat("large"), "cheap").code == "tier_not_allowed"
    assert refused(chat(), "nobody").code == "no_tiers"
    bad = refused(chat(), preference="cheapest", learned=True)
    assert (bad.status, bad.param) == (400, "x-tierline-preference")
    # the rules policy takes no preference: the header is not its business
    assert scope(SPEC, quota("default"), chat(), "default", "cheapest").names


# -- counting -------------------------------------------------------------------------------------
texts = st.text(min_size=0, max_size=60)


@given(st.one_of(texts, st.lists(texts, min_size=1, max_size=4)))
def test_counts_match_each_tiers_counter(prompt: str | list[str]) -> None:
    est = EstimatingCounter()
    counters = {"small": est, "large": EstimatingCounter()}
    counts = count_prompt_tokens(completion(prompt), counters, ["small", "large"])
    want = (
        est.text(prompt)
        if isinstance(prompt, str)
        else max((est.text(p) for p in prompt), default=0)
    )
    assert counts == {"small": want, "large": want}


@given(st.lists(st.integers(0, 50_000), min_size=1, max_size=50))
def test_token_id_prompts_are_not_tokenised(ids: list[int]) -> None:
    counter = CountingCounter()
    body = completion(ids)
    counters = {"small": counter, "large": counter}
    assert not needs_tokenizer(body, counters, ["small", "large"])
    assert count_prompt_tokens(body, counters, ["small", "large"]) == {
        "small": len(ids),
        "large": len(ids),
    }
    assert counter.calls == 0


def test_tiers_sharing_a_tokenizer_count_once() -> None:
    shared, own = CountingCounter(), CountingCounter()
    counters = {"a": shared, "b": shared, "c": own}
    counts = count_prompt_tokens(chat(content="hello there"), counters, ["a", "b", "c"])
    assert len(set(counts.values())) == 1 and (shared.calls, own.calls) == (1, 1)
    assert needs_tokenizer(chat(), counters, ["a"])
    assert not needs_tokenizer(chat(), {"a": EstimatingCounter()}, ["a"])


class ThreadNotingCounter(CountingCounter):
    def __init__(self) -> None:
        super().__init__()
        self.threads: set[int] = set()

    def chat(self, messages: Sequence[dict[str, Any]]) -> int:
        self.threads.add(threading.get_ident())
        return super().chat(messages)


def test_the_gateway_counts_off_the_event_loop_in_one_call() -> None:
    spec = load_spec_text(
        "tiers:\n  - {name: small, model_source: o/s, max_context_tokens: 128}\n"
        "  - {name: large, model_source: o/l, max_context_tokens: 1024}\n"
    )
    counters = {"small": ThreadNotingCounter(), "large": ThreadNotingCounter()}
    engines = {t.name: FakeEngine(t.model_name) for t in spec.tiers}
    core = GatewayCore(spec, engines, counters)

    async def plan() -> RequestPlan:
        return await core.plan(chat(), core.scope(chat(), "default"))

    plan_ = asyncio.run(plan())
    assert plan_.tiers == ("small", "large") and plan_.prompt_tokens["small"] > 0
    loop_thread = threading.get_ident()
    seen = counters["small"].threads | counters["large"].threads
    assert len(seen) == 1 and loop_thread not in seen  # one worker thread for both tiers


# -- the plan and the route ----------------------------------------------------------------------
def plan(pinned: str | None = None, prompt: int = 10, budget: int | None = 4) -> RequestPlan:
    tiers = (pinned,) if pinned is not None else ("small", "large")
    return RequestPlan(tiers, dict.fromkeys(tiers, prompt), budget, pinned, None, "hi")


def states(**health: bool) -> list[TierState]:
    return [
        TierState("small", 128, health.get("small", True)),
        TierState("large", 1024, health.get("large", True)),
    ]


@given(st.integers(0, 5000), st.one_of(st.none(), st.integers(1, 256)))
def test_reservation_and_context_read_the_plan(prompt: int, budget: int | None) -> None:
    p = plan(prompt=prompt, budget=budget)
    assert p.reservation("small") == prompt + (budget or 0)
    assert p.needed("large") == prompt + (budget or 1) == p.features().context_needed("large")


def test_decide_route_from_the_plan() -> None:
    policy = rules_policy(SPEC)
    assert decide_route(plan(), states(), policy).tier == "small"
    assert decide_route(plan(prompt=200), states(), policy).tier == "large"
    assert decide_route(plan(), states(small=False), policy).tier == "large"
    assert decide_route(plan("small"), states()[:1], policy).reason == "pinned"
    with pytest.raises(APIError) as down:
        decide_route(plan("small"), states(small=False)[:1], policy)
    assert down.value.status == 503 and down.value.headers["Retry-After"] == "1"
    with pytest.raises(APIError) as big:
        decide_route(plan(prompt=5000), states(), policy)
    assert big.value.status == 400 and "Retry-After" not in big.value.headers


# -- one count per request ------------------------------------------------------------------------
class RecordingQuota:
    """A `QuotaClient` that admits everything and records what each admission reserved."""

    def __init__(self) -> None:
        self.reserved: list[int] = []
        self.released: list[int | None] = []

    async def admit(self, tenant: str, tokens: int) -> Admission:
        self.reserved.append(tokens)
        return Admission(ok=True, ticket=len(self.reserved))

    async def release(self, ticket: int, used_tokens: int | None) -> None:
        self.released.append(used_tokens)


class SureNotEngine(FakeEngine):
    """Answers with a very low log-probability on every token: the cascade escalates."""

    async def generate(
        self, method: Method, body: dict[str, Any]
    ) -> AsyncGenerator[EngineItem, None]:
        async for item in super().generate(method, body):
            if isinstance(item, dict) and body.get("logprobs"):
                content = [{"token": "w", "logprob": -9.0, "top_logprobs": []}]
                item["choices"][0]["logprobs"] = {"content": content}
            yield item


def test_routing_quota_and_cascade_read_one_count() -> None:
    spec = load_spec_text(
        "tiers:\n  - {name: small, model_source: o/s, max_context_tokens: 512}\n"
        "  - {name: large, model_source: o/l, max_context_tokens: 4096}\n"
        "router: {cascade: {enabled: true, logprob_threshold: -1.0}}\n"
        "gateway: {default_quota: {tokens_per_min: 100000}}\n"
    )
    counters = {"small": CountingCounter(), "large": CountingCounter()}
    engines = {t.name: SureNotEngine(t.model_name) for t in spec.tiers}
    quota = RecordingQuota()
    core = GatewayCore(spec, engines, counters, quota=quota)
    request = chat(content="a question " * 20, max_tokens=4)
    resp = asyncio.run(core.generate("chat", request))
    assert resp.headers["x-tierline-route-reason"].endswith("+cascade:small>large")
    assert (counters["small"].calls, counters["large"].calls) == (1, 1)
    want = EstimatingCounter().chat([m.model_dump(exclude_none=True) for m in request.messages])
    assert quota.reserved == [want + 4] and len(quota.released) == 1
