"""Admission at the edge, over HTTP: the gateway's middleware refuses a generation request that
cannot be admitted from its raw body, before FastAPI parses it (deployments.gateway.pipeline.edge),
and lets everything else through to the full path with its body intact."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from tierline.cluster.spec import QuotaSpec
from tierline.cluster.specfile import load_spec_text
from tierline.deployments.gateway import GatewayCore, create_app
from tierline.deployments.gateway.engines.board import TierBoard
from tierline.deployments.gateway.pipeline.edge import edge_refusal, requested_model

from tests.unit.fakes import CountingCounter, GatedEngine

SPEC = """
tiers:
  - {name: small, model_source: org/small, served_model_name: small-chat,
     max_context_tokens: 512, max_ongoing_requests: 2, max_queued_requests: 0}
  - {name: large, model_source: org/large, max_context_tokens: 4096,
     max_ongoing_requests: 2, max_queued_requests: 0}
model_aliases: {gpt-4o-mini: small, gpt-5: auto}
router: {policy: rules, default_tier: small}
"""
CHAT = {"model": "small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
# No `messages`: the full path answers 400, so a 503 for it can only come from the edge.
INVALID = {"model": "small", "max_tokens": 4}


def raw(body: Any) -> bytes:
    return json.dumps(body).encode()


# -- the decision, on plain data -----------------------------------------------------------------
def board_with(spec: Any, full: set[str]) -> TierBoard:
    board = TierBoard(spec.tiers, spec.gateway.replicas)
    for name in full:
        while board.acquire(name) is not None:
            pass
    return board


def test_edge_refuses_only_what_the_full_path_would_refuse_for_capacity() -> None:
    spec = load_spec_text(SPEC)
    anyone = QuotaSpec()
    small_full = board_with(spec, {"small"})
    refusal = edge_refusal(spec, small_full, anyone, False, raw(CHAT))
    assert refusal is not None and (refusal.status, refusal.code) == (503, "tier_at_capacity")
    assert refusal.headers["x-tierline-tier"] == "small"
    assert refusal.headers["x-tierline-route-reason"] == "pinned"
    assert refusal.headers["Retry-After"] == "1"
    # an alias of the full tier, and its served name, are the same tier
    assert edge_refusal(spec, small_full, anyone, False, raw({"model": "gpt-4o-mini"}))
    assert edge_refusal(spec, small_full, anyone, False, raw({"model": "small-chat"}))
    # another tier, and auto with room left on large: let through
    assert edge_refusal(spec, small_full, anyone, False, raw({"model": "large"})) is None
    assert edge_refusal(spec, small_full, anyone, False, raw({"model": "auto"})) is None
    assert edge_refusal(spec, small_full, anyone, False, raw({"model": "gpt-5"})) is None
    # every tier full: auto (and its alias) refused too
    both_full = board_with(spec, {"small", "large"})
    for model in ("auto", "gpt-5"):
        refusal = edge_refusal(spec, both_full, anyone, False, raw({"model": model}))
        assert refusal is not None and refusal.code == "tier_at_capacity"
    # a tenant that may not use the full tier is not told 503: the full path says 403
    large_only = QuotaSpec(tiers=["large"])
    assert edge_refusal(spec, small_full, large_only, False, raw(CHAT)) is None
    # auto for that tenant looks at its own tiers only
    assert edge_refusal(spec, small_full, large_only, False, raw({"model": "auto"})) is None
    # what the edge cannot read goes on to the full path (which answers 400/404)
    for body in (b"{not json", b"[1, 2]", raw({"model": 7}), raw({"messages": []})):
        assert edge_refusal(spec, both_full, anyone, False, body) is None
    assert edge_refusal(spec, both_full, anyone, False, raw({"model": "nope"})) is None
    # draining refuses everything, readable or not
    for body in (raw(CHAT), b"{not json"):
        refusal = edge_refusal(spec, TierBoard(spec.tiers, 1), anyone, True, body)
        assert refusal is not None and (refusal.status, refusal.code) == (503, "draining")


def test_requested_model_reads_only_a_string_model() -> None:
    assert requested_model(raw({"model": "small", "stream": True})) == "small"
    assert requested_model(raw({"model": None})) is None
    assert requested_model(b"\xff\xfe") is None


# -- over HTTP ----------------------------------------------------------------------------------
class Gateway:
    """The gateway's app over gated engines; `hold` fills a tier with held requests."""

    def __init__(self, spec_text: str = SPEC) -> None:
        self.spec = load_spec_text(spec_text)
        self.gate = asyncio.Event()
        engines = {t.name: GatedEngine(t.model_name, self.gate) for t in self.spec.tiers}
        self.counters = {t.name: CountingCounter() for t in self.spec.tiers}
        self.core = GatewayCore(self.spec, engines, self.counters)
        self.app = create_app(self.core)
        self.held: list[asyncio.Task[Any]] = []

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://t")

    async def hold(self, c: httpx.AsyncClient, tier: str, n: int) -> None:
        body = {**CHAT, "model": tier}
        self.held += [
            asyncio.create_task(c.post("/v1/chat/completions", json=body)) for _ in range(n)
        ]
        async with asyncio.timeout(10):
            while self.core.slots.in_flight.get(tier, 0) < n:
                await asyncio.sleep(0.001)

    def counted(self) -> int:
        return sum(c.calls for c in self.counters.values())


def test_a_full_tier_is_refused_before_the_body_is_parsed() -> None:
    async def scenario() -> None:
        g = Gateway()
        async with g.client() as c:
            await g.hold(c, "small", 2)
            counted = g.counted()
            r = await c.post("/v1/chat/completions", json=INVALID)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "tier_at_capacity"
            assert r.headers["x-tierline-tier"] == "small"
            assert r.headers["retry-after"] == "1"
            r = await c.post("/v1/completions", json={"model": "small", "prompt": "hi"})
            assert r.status_code == 503
            assert g.counted() == counted  # nothing tokenised
            # another tier's requests pass the edge; an invalid one is told so by the app
            r = await c.post("/v1/chat/completions", json={**INVALID, "model": "large"})
            assert r.status_code == 400, r.text
            g.gate.set()
            assert [h.status_code for h in await asyncio.gather(*g.held)] == [200, 200]
            # room again: the same invalid body now gets the full path's 400
            r = await c.post("/v1/chat/completions", json=INVALID)
            assert r.status_code == 400, r.text

    asyncio.run(scenario())


def test_requests_let_through_keep_their_body_and_stream() -> None:
    async def scenario() -> None:
        g = Gateway()
        g.gate.set()
        async with g.client() as c:
            r = await c.post("/v1/chat/completions", json=CHAT)
            assert r.status_code == 200 and r.json()["object"] == "chat.completion"
            async with c.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as s:
                lines = [ln async for ln in s.aiter_lines() if ln.startswith("data: ")]
            assert s.status_code == 200 and lines[-1] == "data: [DONE]"
            r = await c.post("/v1/completions", json={"model": "large", "prompt": "hi"})
            assert r.status_code == 200
            r = await c.post("/v1/chat/completions", content=b"{not json")
            assert r.status_code == 400

    asyncio.run(scenario())


def test_a_body_the_edge_parsed_is_not_parsed_again(monkeypatch: Any) -> None:
    """Each generation route's body model reads the edge's parse: a big body costs the
    loop one json.loads, not two; a body that is not a JSON object is parsed as before."""
    real_loads = json.loads
    parsed: list[bytes] = []

    def loads(text: Any, *args: Any, **kw: Any) -> Any:
        if isinstance(text, bytes | bytearray):
            parsed.append(bytes(text))
        return real_loads(text, *args, **kw)

    monkeypatch.setattr(json, "loads", loads)

    async def scenario() -> None:
        g = Gateway()
        g.gate.set()
        async with g.client() as c:
            long = [{"role": "user", "content": "a few words " * 20}]
            responses = {"model": "small", "input": "hi", "max_output_tokens": 4}
            for path, body in (
                ("/v1/chat/completions", {**CHAT, "messages": long}),
                ("/v1/completions", {"model": "large", "prompt": "hi", "max_tokens": 4}),
                ("/v1/responses", responses),
            ):
                sent = raw(body)
                headers = {"content-type": "application/json"}
                r = await c.post(path, content=sent, headers=headers)
                assert r.status_code == 200, (path, r.text)
                assert parsed.count(sent) == 1, path
            listed = raw([CHAT])
            r = await c.post("/v1/chat/completions", content=listed, headers=headers)
            assert r.status_code == 400 and parsed.count(listed) == 2  # edge, then FastAPI

    asyncio.run(scenario())


def test_draining_refuses_generation_at_the_edge_and_keeps_the_rest() -> None:
    async def scenario() -> None:
        g = Gateway()
        g.gate.set()
        g.core.draining = True
        async with g.client() as c:
            for path, body in (
                ("/v1/chat/completions", CHAT),
                ("/v1/completions", {"model": "small", "prompt": "hi"}),
                ("/v1/responses", {"model": "small", "input": "hi"}),
            ):
                r = await c.post(path, json=body)
                assert r.status_code == 503 and r.json()["error"]["code"] == "draining", path
            assert (await c.get("/v1/models")).status_code == 200
            assert (await c.get("/healthz")).status_code == 200

    asyncio.run(scenario())


def test_a_body_over_the_limit_is_refused_while_reading_it() -> None:
    async def scenario() -> None:
        g = Gateway(SPEC + "gateway: {max_body_bytes: 1024}\n")
        g.gate.set()

        async def chunks() -> Any:  # no content-length: the limit is met while reading
            for _ in range(4):
                yield b" " * 512

        async with g.client() as c:
            r = await c.post("/v1/chat/completions", content=chunks())
            assert r.status_code == 413, r.text
            assert r.json()["error"]["code"] == "request_too_large"

    asyncio.run(scenario())
