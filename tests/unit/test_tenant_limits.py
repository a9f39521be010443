"""Issue 16, the gateway's side: quotas charge what is served, failover stays inside the
tenant's tiers, streams end at their deadline with their slot and ticket freed, and an
anonymous /readyz learns only ready or not. Honest fakes, no Ray, no network."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import assume, given
from hypothesis import strategies as st
from tierline.cluster.specfile import load_spec_text
from tierline.deployments.errors import APIError
from tierline.deployments.gateway import GatewayCore, create_app
from tierline.deployments.gateway.engines.engine_client import EngineItem, Method
from tierline.deployments.gateway.pipeline.auth import KeyStore, hash_key
from tierline.deployments.gateway.pipeline.plan import reservation_of
from tierline.deployments.gateway.pipeline.schemas import ChatCompletionBody
from tierline.deployments.gateway.pipeline.streams import DEADLINE_MESSAGE
from tierline.deployments.gateway.pipeline.tokens import EstimatingCounter
from tierline.deployments.gateway.quota.service import Admission, QuotaLedger, ledger_for

from tests.unit.fakes import FakeEngine
from tests.unit.test_gateway import SPEC, assert_openai_error, chat, sse_events


class RecordingQuota:
    """A `QuotaClient` over a real ledger that records what was reserved and charged."""

    def __init__(self, ledger: QuotaLedger) -> None:
        self.ledger = ledger
        self.now = 0.0
        self.reserved: list[int] = []
        self.resized: list[int] = []
        self.released: list[int | None] = []

    async def admit(self, tenant: str, tokens: int) -> Admission:
        self.reserved.append(tokens)
        return self.ledger.admit(tenant, tokens, self.now)

    async def resize(self, ticket: int, tokens: int) -> Admission:
        self.resized.append(tokens)
        return self.ledger.resize(ticket, tokens, self.now)

    async def release(self, ticket: int, used_tokens: int | None) -> None:
        await asyncio.sleep(0)  # a call to the quota deployment: the task suspends here
        self.released.append(used_tokens)
        self.ledger.release(ticket, used_tokens, self.now)


class LongEngine(FakeEngine):
    """Writes `max_tokens` words, or 100 when the request sets none (to the context's end)."""

    async def generate(
        self, method: Method, body: dict[str, Any]
    ) -> AsyncGenerator[EngineItem, None]:
        async for item in super().generate(method, {"max_tokens": 100, **body}):
            yield item


def core_with(
    quota_yaml: str, engine: type[FakeEngine] = FakeEngine, spec_text: str = SPEC
) -> tuple[GatewayCore, RecordingQuota, dict[str, FakeEngine]]:
    spec = load_spec_text(spec_text + quota_yaml)
    engines = {t.name: engine(t.model_name) for t in spec.tiers}
    quota = RecordingQuota(ledger_for(spec.gateway))
    counters = {t.name: EstimatingCounter() for t in spec.tiers}
    return GatewayCore(spec, engines, counters, quota=quota), quota, engines


def client_of(core: GatewayCore, **kw: Any) -> TestClient:
    return TestClient(create_app(core, **kw), raise_server_exceptions=False)


# -- A: quotas charge what is served ----------------------------------------------------------
@pytest.mark.parametrize("options", [None, {"include_usage": False}])
def test_a_stream_without_a_usage_line_is_still_charged_its_usage(options: Any) -> None:
    core, quota, engines = core_with("  default_quota: {tokens_per_min: 10000}\n")
    extra = {} if options is None else {"stream_options": options}
    r = client_of(core).post("/v1/chat/completions", json=chat(stream=True, **extra))
    events = sse_events(r)
    assert events[-1] == "[DONE]" and not any('"usage"' in e for e in events)
    sent = engines["small"].calls[-1][1]
    assert sent["stream_options"] == {"include_usage": True}  # the engine is always asked
    assert quota.released == [5 + 4]  # the fake engine's usage, not the reservation


def test_the_usage_line_reaches_a_client_that_asked_for_it() -> None:
    core, quota, _ = core_with("  default_quota: {tokens_per_min: 10000}\n")
    asked = {"include_usage": True}
    r = client_of(core).post("/v1/chat/completions", json=chat(stream=True, stream_options=asked))
    assert json.loads(sse_events(r)[-2])["usage"]["total_tokens"] == 9
    assert quota.released == [9]


@given(
    st.integers(0, 4000),
    st.integers(1, 64),
    st.integers(1, 16),
    st.one_of(st.none(), st.integers(1, 4096)),
    st.integers(16, 8192),
)
def test_the_reservation_covers_anything_the_request_can_cost(
    total: int, prompts: int, n: int, budget: int | None, context: int
) -> None:
    reserved = reservation_of(total, prompts, n, budget, context)
    # every completion of every prompt runs to its budget (or to the context's end)
    each = [total // prompts] * prompts
    each[0] += total - sum(each)
    assume(max(each) <= context)  # a longer prompt is refused (400) before admission
    room = [budget if budget is not None else max(context - p, 0) for p in each]
    assert reserved >= total + n * sum(room)
    assert reserved == n * (total + (prompts * budget if budget else sum(room)))


def test_a_request_without_max_tokens_reserves_the_tiers_remaining_context() -> None:
    core, quota, _ = core_with("  default_quota: {tokens_per_min: 100000}\n")
    body = {"model": "small", "messages": [{"role": "user", "content": "hi"}]}
    assert client_of(core).post("/v1/chat/completions", json=body).status_code == 200
    assert quota.reserved == [128]  # small's whole context: prompt plus what may follow


def test_a_prompt_list_reserves_every_prompt_times_n() -> None:
    core, quota, _ = core_with("  default_quota: {tokens_per_min: 100000}\n")
    prompts = ["a" * 40, "b" * 80, "c" * 4]  # 10, 20 and 1 estimated tokens
    body = {"model": "large", "prompt": prompts, "max_tokens": 4, "n": 2}
    assert client_of(core).post("/v1/completions", json=body).status_code == 200
    assert quota.reserved == [2 * (10 + 20 + 1 + 3 * 4)]  # the old code reserved 20 + 4


def test_a_prompt_list_over_the_cap_is_a_400_naming_it() -> None:
    core, _, _ = core_with("  max_prompts: 3\n")
    body = {"model": "large", "prompt": ["x"] * 4, "max_tokens": 2}
    r = client_of(core).post("/v1/completions", json=body)
    err = assert_openai_error(r, 400)
    assert err["code"] == "too_many_prompts" and err["param"] == "prompt"
    assert "at most 3" in err["message"] and "gateway.max_prompts" in err["message"]
    ok = client_of(core).post("/v1/completions", json={**body, "prompt": [1, 2, 3, 4, 5]})
    assert ok.status_code == 200  # token ids are one prompt


def test_tokens_served_to_a_tenant_stay_within_tokens_per_min() -> None:
    """The issue's finding: with tokens_per_min 200, ten streams without max_tokens or a
    usage line were all admitted and served 1,000 tokens while 130 were charged."""
    core, _, _ = core_with("  default_quota: {tokens_per_min: 200}\n", engine=LongEngine)
    client = client_of(core)
    served, codes = 0, []
    for _ in range(10):
        body = {
            "model": "small",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": False},
        }
        r = client.post("/v1/chat/completions", json=body)
        codes.append(r.status_code)
        if r.status_code == 200:  # counted on the client's side: one word per chunk
            chunks = [json.loads(e) for e in sse_events(r) if e != "[DONE]"]
            served += 5 + sum(1 for c in chunks if c["choices"])
    assert codes.count(200) >= 1 and 429 in codes
    assert served <= 200


def test_a_request_that_cannot_fit_the_quota_is_told_to_set_max_tokens() -> None:
    core, _, _ = core_with("  default_quota: {tokens_per_min: 100}\n")
    body = {"model": "small", "messages": [{"role": "user", "content": "hi"}]}
    err = assert_openai_error(client_of(core).post("/v1/chat/completions", json=body), 429)
    assert err["code"] == "quota_exceeded" and "max_tokens" in err["message"]


class CountingRag:
    """A `RagClient` stand-in that counts retrievals (grounded chat calls `search`)."""

    model = "embedder"

    def __init__(self) -> None:
        self.searches = 0

    async def search(self, *args: Any) -> list[dict[str, Any]]:
        self.searches += 1
        hit = {"document_id": "d", "chunk_id": "d:0", "text": "context", "score": 1.0}
        return [{**hit, "id": "d:0", "metadata": {}}]

    async def search_counted(self, *args: Any) -> tuple[list[dict[str, Any]], int | None]:
        return await self.search(*args), None  # no model count: the estimate stands


def test_the_quota_is_checked_before_any_retrieval() -> None:
    core, quota, _ = core_with("  default_quota: {requests_per_min: 1}\n")
    rag = CountingRag()
    client = client_of(core, rag=rag)  # type: ignore[arg-type]
    body = chat("what is in the docs?", rag={"collection": "docs"})
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    assert rag.searches == 1 and len(quota.resized) == 1  # reserved its grounded prompt
    assert quota.resized[0] > quota.reserved[0]
    r = client.post("/v1/chat/completions", json=body)
    assert assert_openai_error(r, 429)["code"] == "quota_exceeded"
    assert rag.searches == 1  # refused before retrieving
    core.draining = True
    assert client.post("/v1/chat/completions", json=body).status_code == 503
    assert rag.searches == 1


def test_a_grounded_chat_whose_final_prompt_does_not_fit_is_refused_and_released() -> None:
    core, quota, _ = core_with("  default_quota: {tokens_per_min: 6, max_concurrent: 1}\n")
    body = chat("what is in the docs?", rag={"collection": "docs"}, max_tokens=1)
    r = client_of(core, rag=CountingRag()).post("/v1/chat/completions", json=body)
    assert assert_openai_error(r, 429)["code"] == "quota_exceeded"
    assert quota.ledger.in_flight("default") == 0


def test_rag_work_is_charged_to_the_tenant() -> None:
    core, quota, _ = core_with("  default_quota: {tokens_per_min: 100, max_concurrent: 1}\n")

    async def run() -> None:
        await core.charge("default", 60)
        with pytest.raises(APIError) as over:
            await core.charge("default", 60)  # 120 > 100 per minute
        assert over.value.status == 429 and "Retry-After" in over.value.headers
        async with core.charged("default", 10):
            assert quota.ledger.in_flight("default") == 1
            with pytest.raises(APIError):  # max_concurrent: 1
                await core.charge("default", 1)
        assert quota.ledger.in_flight("default") == 0

    asyncio.run(run())
    assert quota.released == [60, 10]


def test_resize_keeps_the_window_and_refuses_past_it() -> None:
    led = ledger_for(load_spec_text(SPEC + "  default_quota: {tokens_per_min: 100}\n").gateway)
    a = led.admit("t", 1, 0.0)
    assert led.resize(a.ticket, 90, 1.0).ok
    assert not led.admit("t", 20, 2.0).ok
    assert not led.resize(a.ticket, 101, 2.0).ok
    b = led.admit("t", 10, 2.0)
    assert b.ok and not led.resize(b.ticket, 11, 3.0).ok  # 90 + 11 > 100
    led.release(a.ticket, 30, 4.0)
    assert led.resize(b.ticket, 70, 5.0).ok


# -- B: failover inside the allowlist -----------------------------------------------------------
FALLBACK_SPEC = SPEC.replace(
    "    max_context_tokens: 128\n", "    max_context_tokens: 128\n    fallback_tier: large\n", 1
)


def test_failover_never_leaves_the_tenants_tiers() -> None:
    """The finding: a tenant limited to `small`, pinning `small` while it fails, was
    answered by its fallback tier `large`."""
    limited = "  tenants:\n    - {name: default, tiers: [small]}\n"
    spec = load_spec_text(FALLBACK_SPEC + limited)
    engines = {"small": FakeEngine("small-model", "before"), "large": FakeEngine("large")}
    core = GatewayCore(spec, engines, {t.name: EstimatingCounter() for t in spec.tiers})
    r = client_of(core).post("/v1/chat/completions", json=chat(model="small"))
    assert r.status_code == 503 and r.headers["x-tierline-tier"] == "small"
    assert engines["large"].calls == []
    assert core.slots.in_flight == {"small": 0, "large": 0}
    # a tenant that may use `large` still fails over to it
    spec = load_spec_text(FALLBACK_SPEC)
    engines = {"small": FakeEngine("small-model", "before"), "large": FakeEngine("large")}
    core = GatewayCore(spec, engines, {t.name: EstimatingCounter() for t in spec.tiers})
    r = client_of(core).post("/v1/chat/completions", json=chat(model="small"))
    assert r.status_code == 200 and r.headers["x-tierline-tier"] == "large"


# -- D: a real deadline for streams --------------------------------------------------------------
class TricklingEngine(FakeEngine):
    """Streams one chunk every `every_s`, for ever, until it is closed."""

    def __init__(self, model: str, every_s: float = 0.05) -> None:
        super().__init__(model)
        self.every_s = every_s
        self.closed = 0

    async def generate(
        self, method: Method, body: dict[str, Any]
    ) -> AsyncGenerator[EngineItem, None]:
        try:
            while True:
                chunk = {"id": "x", "choices": [{"index": 0, "delta": {"content": "w"}}]}
                yield f"data: {json.dumps(chunk)}\n\n"
                await asyncio.sleep(self.every_s)
        finally:
            self.closed += 1


def trickling_core(timeout_s: float) -> tuple[GatewayCore, RecordingQuota, TricklingEngine]:
    text = SPEC + f"  request_timeout_s: {timeout_s}\n  default_quota: {{max_concurrent: 1}}\n"
    spec = load_spec_text(text)
    engine = TricklingEngine("small-model")
    engines = {"small": engine, "large": FakeEngine("large")}
    quota = RecordingQuota(ledger_for(spec.gateway))
    counters = {t.name: EstimatingCounter() for t in spec.tiers}
    return GatewayCore(spec, engines, counters, quota=quota), quota, engine


def stream_body() -> ChatCompletionBody:
    return ChatCompletionBody.model_validate(chat(model="small", stream=True))


def test_a_trickling_stream_is_cut_at_its_deadline_and_frees_slot_and_ticket() -> None:
    core, quota, engine = trickling_core(0.5)

    async def run() -> tuple[list[str], float]:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        response = await core.generate("chat", stream_body())
        assert core.slots.in_flight["small"] == 1 and quota.ledger.in_flight("default") == 1
        events = [str(e) async for e in response.events]  # type: ignore[attr-defined]
        return events, loop.time() - t0

    events, took = asyncio.run(run())
    assert 0.5 <= took < 2.0
    assert DEADLINE_MESSAGE in events[-2] and events[-1] == "data: [DONE]\n\n"
    assert engine.closed == 1  # the engine request was closed
    assert core.slots.in_flight["small"] == 0  # the slot is free...
    assert quota.ledger.in_flight("default") == 0 and quota.released == [None]  # ...the ticket
    assert core.active == 0


def test_a_client_that_leaves_frees_slot_and_ticket() -> None:
    core, quota, engine = trickling_core(30)

    async def run() -> None:
        response = await core.generate("chat", stream_body())
        body = response.events  # type: ignore[union-attr]
        await anext(body)
        await anext(body)
        await body.aclose()  # the client went away

    asyncio.run(run())
    assert engine.closed == 1
    assert core.slots.in_flight["small"] == 0 and quota.ledger.in_flight("default") == 0
    assert core.active == 0


def test_the_first_item_wait_counts_against_the_same_deadline() -> None:
    core, _, _ = trickling_core(0.3)

    class Silent(FakeEngine):
        async def generate(
            self, method: Method, body: dict[str, Any]
        ) -> AsyncGenerator[EngineItem, None]:
            await asyncio.sleep(10)
            yield "never"

    core.engines["small"] = core.failover.engines["small"] = Silent("small-model")  # type: ignore[index]
    with pytest.raises(APIError) as late:
        asyncio.run(core.generate("chat", stream_body()))
    assert late.value.status == 504
    assert core.slots.in_flight["small"] == 0


# -- E: /readyz ----------------------------------------------------------------------------------
def test_an_anonymous_readyz_says_only_ready_or_not() -> None:
    spec = load_spec_text(SPEC)
    engines = {t.name: FakeEngine(t.model_name) for t in spec.tiers}
    core = GatewayCore(spec, engines, {t.name: EstimatingCounter() for t in spec.tiers})
    keys = KeyStore({hash_key("sk-test"): "team"})
    client = client_of(core, keys=keys)
    assert client.get("/readyz").json() == {"status": "ready"}
    engines["large"].healthy_answer = False
    core.readiness.ttl_s = 0  # the next calls probe again (tested: test_gateway)
    anonymous = client.get("/readyz")
    assert anonymous.status_code == 503 and anonymous.json() == {"status": "not ready"}
    bad = client.get("/readyz", headers={"Authorization": "Bearer nope"})
    assert bad.json() == {"status": "not ready"}
    keyed = client.get("/readyz", headers={"Authorization": "Bearer sk-test"})
    assert keyed.json()["tiers"] == {"small": True, "large": False}
