"""Issue 27's target: the quota is exact within 5% under 200 concurrent mixed requests
(chat with tools, streamed and not; /v1/responses, streamed and not; /v1/embeddings; RAG
search; grounded chat) from two tenants, with zero 5xx.

The real gateway app over honest fakes, called in-process through httpx's ASGI transport.
What each request should cost is read from what the fakes reported: the usage of each
generation (the fake engine's count, checked against the calls it received) and of each
embeddings answer and RAG search (the fake embedder's count, which the answer carries).
What the ledger charged is measured from the outside, through the `QuotaClient` Protocol
only: the largest reservation each tenant can still take (given back at once).

With a budget that refuses some requests, the ledger may still pass the budget by what
settled usages exceeded their reservations (`QuotaLedger` admits only what fits, then a
release replaces the reservation with the usage), so: charged <= budget + that overshoot.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from tierline.cluster.spec import RagSpec
from tierline.cluster.specfile import load_spec_text
from tierline.deployments.gateway import GatewayCore, create_app
from tierline.deployments.gateway.engines.engine_client import EngineItem, Method
from tierline.deployments.gateway.pipeline.auth import KeyStore, hash_key
from tierline.deployments.gateway.pipeline.tokens import EstimatingCounter
from tierline.deployments.gateway.quota.service import (
    Admission,
    LocalQuota,
    QuotaClient,
    ledger_for,
)
from tierline.deployments.gateway.rag_routes import InProcessRagClient
from tierline.rag.service import RagCore, RagSettings
from tierline.rag.store import MemoryChunkStore

from tests.unit.fakes import FakeEngine
from tests.unit.rag_fakes import DIM, CountingEmbedder, word_offsets
from tests.unit.test_hostile_inputs import tools

TENANTS = ("alice", "bob")
KEYS = {t: f"sk-{t}" for t in TENANTS}
SPEC = """
tiers:
  - name: small
    model_source: org/small
    max_context_tokens: 32768
    max_queued_requests: -1
    capabilities: {{tools: true, structured_output: true}}
gateway:
  max_body_bytes: 4194304
  # 200 requests at once on one in-process loop saturate it: the loop share (its own
  # tests: test_loop_share.py) would refuse the heavier tenant, which is not what this
  # test measures.
  loop_share: {{enabled: false}}
  tenants:
    - {{name: alice, tokens_per_min: {budget}}}
    - {{name: bob, tokens_per_min: {budget}}}
rag:
  enabled: true
  default_top_k: 2
"""
DOCS = [
    {"id": f"d{i}", "text": f"Zorbania fact {i}: the capital is Quillport, river {i}."}
    for i in range(12)
]
KINDS = (
    "chat_tools",
    "chat_tools_stream",
    "chat_stream_no_usage",
    "responses",
    "responses_stream",
    "embeddings",
    "rag_search",
    "grounded_chat",
)
TOOLS = tools(2000)  # ~500 tokens reserved, never billed by the fake engine


class YieldingEngine(FakeEngine):
    """The fake engine, suspending before it answers (as a remote call does), so the 200
    requests are all in flight together."""

    async def generate(
        self, method: Method, body: dict[str, Any]
    ) -> AsyncGenerator[EngineItem, None]:
        await asyncio.sleep(0.001)
        async for item in super().generate(method, body):
            await asyncio.sleep(0)
            yield item


@dataclass
class RecordingQuota:
    """A `QuotaClient` over another that records each ticket's reservation and usage."""

    inner: QuotaClient
    reserved: dict[int, int] = field(default_factory=dict)
    used: dict[int, int | None] = field(default_factory=dict)

    async def admit(self, tenant: str, tokens: int, downgrade: bool = False) -> Admission:
        a = await self.inner.admit(tenant, tokens, downgrade)
        if a.ok:
            self.reserved[a.ticket] = tokens
        return a

    async def resize(self, ticket: int, tokens: int) -> Admission:
        a = await self.inner.resize(ticket, tokens)
        if a.ok:
            self.reserved[ticket] = tokens
        return a

    async def release(self, ticket: int, used_tokens: int | None) -> None:
        await asyncio.sleep(0)  # a call to the quota deployment: the task suspends here
        self.used[ticket] = used_tokens
        await self.inner.release(ticket, used_tokens)

    def overshoot(self) -> int:
        """Tokens settled past their reservations (what the budget may be passed by)."""
        return sum(
            max(0, used - self.reserved[t]) for t, used in self.used.items() if used is not None
        )


class ReservationCharging(RecordingQuota):
    """Broken on purpose: settles every request to its reservation, not its usage."""

    async def release(self, ticket: int, used_tokens: int | None) -> None:
        await super().release(ticket, None)


async def charged(quota: QuotaClient, tenant: str, budget: int) -> int:
    """Tokens the ledger holds against `tenant`: the budget less the largest reservation
    it still admits (each probe is given back at once, charged 0)."""
    lo, hi = 0, budget  # lo: admitted
    while lo < hi:
        mid = (lo + hi + 1) // 2
        a = await quota.admit(tenant, mid)
        if a.ok:
            await quota.release(a.ticket, 0)
            lo = mid
        else:
            hi = mid - 1
    return budget - lo


def body_of(kind: str, i: int) -> tuple[str, dict[str, Any]]:
    """The path and body of request `i` of `kind`; max tokens vary with `i`."""
    n = 1 + i % 7
    ask = f"question {i}: what is the capital of Zorbania and which river runs there?"
    chat = {"model": "auto", "messages": [{"role": "user", "content": ask}], "max_tokens": n}
    if kind == "chat_tools":
        return "/v1/chat/completions", {**chat, "tools": TOOLS, "tool_choice": "auto"}
    if kind == "chat_tools_stream":
        opts = {"stream": True, "stream_options": {"include_usage": True}}
        return "/v1/chat/completions", {**chat, "tools": TOOLS, **opts}
    if kind == "chat_stream_no_usage":
        return "/v1/chat/completions", {**chat, "stream": True}
    if kind in ("responses", "responses_stream"):
        fn = {"type": "function", "name": "lookup", "parameters": {"type": "object"}}
        body = {"model": "auto", "input": ask, "max_output_tokens": n, "tools": [fn]}
        return "/v1/responses", {**body, "stream": kind == "responses_stream"}
    if kind == "embeddings":
        words = " ".join(f"passage{j}" for j in range(1 + i % 9))
        return "/v1/embeddings", {"model": "embedder", "input": [words, f"{ask} {words}"]}
    if kind == "rag_search":
        return "/v1/rag/collections/kb/search", {"query": ask, "top_k": 3}
    assert kind == "grounded_chat"
    return "/v1/chat/completions", {**chat, "rag": {"collection": "kb", "top_k": 2}}


def _events(text: str) -> list[Any]:
    out = []
    for line in text.splitlines():
        if line.startswith("data: ") and line[6:] != "[DONE]":
            out.append(json.loads(line[6:]))
    return out


def cost_of(kind: str, body: dict[str, Any], r: httpx.Response) -> int:
    """What a served request should be charged, from what the fakes reported."""
    if kind == "rag_search":  # the embedder's count of the query (not bytes / 4) and top_k
        retrieval = body["top_k"] * RagSpec().chunk_tokens  # chunks, the most it returns
        want = CountingEmbedder.count(body["query"]) + retrieval
        assert r.json()["usage"]["total_tokens"] == want
    if kind in ("chat_tools", "grounded_chat", "embeddings", "rag_search"):
        return int(r.json()["usage"]["total_tokens"])
    if kind == "chat_tools_stream":
        return int(_events(r.text)[-1]["usage"]["total_tokens"])
    if kind == "chat_stream_no_usage":  # no usage line: 5 prompt tokens, one word a chunk
        events = _events(r.text)
        assert not any("usage" in e for e in events)
        return 5 + sum(1 for e in events if e.get("choices"))
    if kind == "responses":
        return int(r.json()["usage"]["total_tokens"])
    if kind == "responses_stream":
        done = [e for e in _events(r.text) if e.get("type") == "response.completed"]
        return int(done[-1]["response"]["usage"]["total_tokens"])
    raise AssertionError(kind)


@dataclass
class Outcome:
    statuses: list[int]
    expected: dict[str, int]  # served requests' costs, per tenant
    charged: dict[str, int]
    engine_usage: int  # what the fake engine reported over all its calls
    generation_usage: int  # the same, as the answers carried it
    overshoot: int
    in_flight: dict[str, int]
    refused_grounded: dict[str, int]  # grounded chats answered 429


async def mixed_burst(budget: int, quota_type: type[RecordingQuota] = RecordingQuota) -> Outcome:
    spec = load_spec_text(SPEC.format(budget=budget))
    engine = YieldingEngine("small")
    ledger = ledger_for(spec.gateway)
    quota = quota_type(LocalQuota(ledger, lambda: 0.0))  # one window: nothing expires
    core = GatewayCore(spec, {"small": engine}, {"small": EstimatingCounter()}, quota)
    embedder = CountingEmbedder()
    settings = RagSettings(dim=DIM, chunk_tokens=40, chunk_overlap_tokens=5)
    rag_core = RagCore(settings, MemoryChunkStore(), embedder, word_offsets)
    await rag_core.start()
    keys = KeyStore({hash_key(k): t for t, k in KEYS.items()})
    app = create_app(core, keys, InProcessRagClient(rag_core, embedder, "hash-embedder"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=60) as c:
        for tenant in TENANTS:  # each tenant's collection, charged before the burst
            auth = {"Authorization": f"Bearer {KEYS[tenant]}"}
            assert (
                await c.post("/v1/rag/collections", json={"name": "kb"}, headers=auth)
            ).is_success
            r = await c.post(
                "/v1/rag/collections/kb/documents", json={"documents": DOCS}, headers=auth
            )
            assert r.status_code == 200, r.text
        before = {t: await charged(quota.inner, t, budget) for t in TENANTS}
        calls_before = len(engine.calls)
        plan = [(KINDS[i % len(KINDS)], TENANTS[(i // len(KINDS)) % 2], i) for i in range(200)]

        async def one(
            kind: str, tenant: str, i: int
        ) -> tuple[str, str, dict[str, Any], httpx.Response]:
            path, body = body_of(kind, i)
            auth = {"Authorization": f"Bearer {KEYS[tenant]}"}
            return kind, tenant, body, await c.post(path, json=body, headers=auth)

        answers = await asyncio.gather(*(one(*p) for p in plan))
        after = {t: await charged(quota.inner, t, budget) for t in TENANTS}
    expected = dict.fromkeys(TENANTS, 0)
    refused_grounded = dict.fromkeys(TENANTS, 0)
    generation_usage = 0
    for kind, tenant, body, r in answers:
        if r.status_code == 429 and kind == "grounded_chat":
            refused_grounded[tenant] += 1
        if r.status_code == 200:
            cost = cost_of(kind, body, r)
            expected[tenant] += cost
            if kind not in ("embeddings", "rag_search"):
                generation_usage += cost
    calls = engine.calls[calls_before:]
    engine_usage = sum(5 + (b.get("max_tokens") or 4) for _, b in calls)  # FakeEngine's usage
    return Outcome(
        statuses=[r.status_code for *_, r in answers],
        expected=expected,
        charged={t: after[t] - before[t] for t in TENANTS},
        engine_usage=engine_usage,
        generation_usage=generation_usage,
        overshoot=quota.overshoot(),
        in_flight={t: ledger.in_flight(t) for t in TENANTS},
        refused_grounded=refused_grounded,
    )


def within(charged: int, expected: int, tolerance: float = 0.05) -> bool:
    return abs(charged - expected) <= tolerance * max(expected, 1)


def test_200_mixed_requests_under_a_large_budget_are_charged_their_usage() -> None:
    out = asyncio.run(mixed_burst(budget=10_000_000))
    assert [s for s in out.statuses if s >= 500] == []
    assert set(out.statuses) == {200}, out.statuses  # nothing refused
    assert out.engine_usage == out.generation_usage  # the answers carried the engine's counts
    for tenant in TENANTS:
        assert out.expected[tenant] > 0
        assert within(out.charged[tenant], out.expected[tenant]), (tenant, out)
    assert out.in_flight == dict.fromkeys(TENANTS, 0)  # every ticket given back


@pytest.mark.parametrize("budget", [600, 3000])
def test_200_mixed_requests_under_a_tight_budget_refuse_some_and_stay_exact(budget: int) -> None:
    out = asyncio.run(mixed_burst(budget=budget))
    assert [s for s in out.statuses if s >= 500] == []
    assert set(out.statuses) <= {200, 429}
    assert 429 in out.statuses and out.statuses.count(200) >= 20
    assert out.engine_usage == out.generation_usage
    for tenant in TENANTS:
        assert out.charged[tenant] <= budget + out.overshoot, (tenant, out)
        # A grounded chat is admitted with 1 token before retrieval; refused when its
        # grounded prompt does not fit, it keeps that token (released with no usage).
        low, high = out.expected[tenant], out.expected[tenant] + out.refused_grounded[tenant]
        assert low <= out.charged[tenant] <= high, (tenant, out)
        assert within(out.charged[tenant], out.expected[tenant]), (tenant, out)
    assert out.in_flight == dict.fromkeys(TENANTS, 0)


def test_the_check_fails_when_settling_charges_the_reservation() -> None:
    """The test above can fail: a ledger charged reservations instead of usage (the tools
    alone reserve ~500 tokens a request) is far outside 5%."""
    out = asyncio.run(mixed_burst(budget=10_000_000, quota_type=ReservationCharging))
    assert [s for s in out.statuses if s >= 500] == []
    assert not any(within(out.charged[t], out.expected[t]) for t in TENANTS), out
