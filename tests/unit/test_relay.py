"""The relay path over real loopback HTTP: the gateway's app (uvicorn) → `RelayEngineClient`
(aiohttp) → the engine replica's relay server (`start_relay_server` + `RelayMiddleware`)
→ an engine app that answers the way vLLM's OpenAI app does (one SSE event per HTTP
chunk, a usage event when asked, `[DONE]`; aborting a request whose caller left).

No Ray and no vLLM here: the engine app is a fake with vLLM's wire behaviour; the
integration suite runs the same path on real engines."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from tierline.cluster.specfile import load_spec_text
from tierline.deployments.adapters import adapter_sources
from tierline.deployments.engine_client import EngineError
from tierline.deployments.gateway import GatewayCore, create_app
from tierline.deployments.quota import Admission
from tierline.deployments.relay import RelayDirectory, RelayEngineClient, engine_error_of
from tierline.deployments.relay_registry import (
    MemoryKV,
    cluster_token,
    fetch_relays,
    live_relays,
    publish,
    read_relays,
    replica_ids,
)
from tierline.deployments.relay_server import RelayMiddleware, relay_key, start_relay_server
from tierline.deployments.replica_choice import PrefixMemory, blocks, choose_replica, prefix_text
from tierline.deployments.tokens import EstimatingCounter

from tests.unit.fakes import FakeEngine

TOKEN = "relay-secret"
SPEC = """
tiers:
  - {name: small, model_source: org/small, served_model_name: small-model,
     max_context_tokens: 2048, fallback_tier: large,
     adapters: [{name: lora, source: s3://bucket/lora}]}
  - {name: large, model_source: org/large, max_context_tokens: 4096}
router: {policy: rules, default_tier: small}
gateway:
  retries: 1
  default_quota: {tokens_per_min: 1000000}
"""


@dataclass
class EngineApp:
    """An engine replica's app with vLLM's wire behaviour, recording what it saw."""

    name: str
    delay_s: float = 0.0
    die_after: int | None = None  # break the connection after this many events
    seen: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    adapters_loaded: list[str] = field(default_factory=list)

    def app(self) -> FastAPI:
        api = FastAPI()

        @api.post("/v1/chat/completions")
        async def chat(request: Request) -> Any:
            return await self.answer(request, chat=True)

        @api.post("/v1/completions")
        async def completions(request: Request) -> Any:
            return await self.answer(request, chat=False)

        return api

    async def answer(self, request: Request, chat: bool) -> Any:
        body = await request.json()
        self.seen.append(body)
        self.headers.append(dict(request.headers))
        rid = request.headers.get("x-request-id", "")
        if body.get("max_tokens", 1) < 0:
            return JSONResponse(
                {
                    "error": {
                        "message": "max_tokens must be at least 0",
                        "type": "BadRequestError",
                        "code": 400,
                    }
                },
                status_code=400,
            )
        n = int(body.get("max_tokens") or 4)
        usage = {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": 3 + n}
        if not body.get("stream"):
            key = "message" if chat else "text"
            value: Any = {"role": "assistant", "content": "w " * n} if chat else "w " * n
            return {
                "id": "x",
                "object": "chat.completion" if chat else "text_completion",
                "model": body["model"],
                "choices": [{"index": 0, key: value}],
                "usage": usage,
                "served_by": self.name,
            }

        async def events() -> AsyncIterator[str]:
            done = False
            try:
                for i in range(n):
                    if self.die_after is not None and i == self.die_after:
                        raise RuntimeError("engine died")
                    delta = {"delta": {"content": f"t{i} "}} if chat else {"text": f"t{i} "}
                    chunk = {
                        "id": "x",
                        "object": "chat.completion.chunk",
                        "model": body["model"],
                        "choices": [{"index": 0, **delta, "finish_reason": None}],
                    }
                    yield f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n"
                    if self.delay_s:
                        await asyncio.sleep(self.delay_s)
                if (body.get("stream_options") or {}).get("include_usage"):
                    last = {"id": "x", "choices": [], "usage": usage}
                    yield f"data: {json.dumps(last, separators=(',', ':'))}\n\n"
                yield "data: [DONE]\n\n"
                done = True
            finally:
                (self.finished if done else self.aborted).append(rid)

        return StreamingResponse(events(), media_type="text/event-stream")


class RecordingQuota:
    def __init__(self) -> None:
        self.released: list[int | None] = []

    async def admit(self, tenant: str, tokens: int) -> Admission:
        return Admission(ok=True, ticket=1)

    async def resize(self, ticket: int, tokens: int) -> Admission:
        return Admission(ok=True, ticket=ticket)

    async def release(self, ticket: int, used_tokens: int | None) -> None:
        self.released.append(used_tokens)


async def load_adapter_into(engine: EngineApp, name: str) -> None:
    if name == "missing":
        raise ValueError("no such adapter")
    engine.adapters_loaded.append(name)


@asynccontextmanager
async def relays(*engines: EngineApp) -> AsyncIterator[dict[str, str]]:
    """Each engine app behind a relay server on loopback: replica name -> URL."""
    handles = []
    try:
        for e in engines:

            async def load(name: str, e: EngineApp = e) -> None:
                await load_adapter_into(e, name)

            handles.append(
                await start_relay_server(RelayMiddleware(e.app(), TOKEN, load), "127.0.0.1")
            )
        yield {e.name: h.url for e, h in zip(engines, handles, strict=True)}
    finally:
        for h in handles:
            await h.stop()


@dataclass
class Gateway:
    url: str
    core: GatewayCore
    quota: RecordingQuota
    directory: RelayDirectory
    clients: dict[str, RelayEngineClient]


@asynccontextmanager
async def gateway(
    urls: dict[str, dict[str, str]], handle_fail: dict[str, str] | None = None
) -> AsyncIterator[Gateway]:
    """The gateway app on loopback, its engine tiers relayed to `urls` (tier -> replicas);
    the handle path (used while a tier has no relay) fails as `handle_fail` says."""
    spec = load_spec_text(SPEC)
    directory = RelayDirectory()
    directory.token = TOKEN
    for tier, replicas in urls.items():
        directory.set(tier, replicas)
    clients = {
        t.name: RelayEngineClient(
            t.name,
            FakeEngine(t.model_name, (handle_fail or {}).get(t.name)),
            directory,
            adapter_sources(t),
            stream_interval_ms=spec.gateway.stream_interval_ms,  # paced, as by default
        )
        for t in spec.tiers
    }
    quota = RecordingQuota()
    core = GatewayCore(
        spec, clients, {t.name: EstimatingCounter() for t in spec.tiers}, quota=quota
    )
    handle = await start_relay_server(create_app(core), "127.0.0.1")  # any ASGI app
    try:
        yield Gateway(handle.url, core, quota, directory, clients)
    finally:
        await handle.stop()
        for c in clients.values():
            await c.close()


def chat(**kw: Any) -> dict[str, Any]:
    return {
        "model": "small",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
        **kw,
    }


def data_lines(text: str) -> list[str]:
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


async def wait_until(check: Any, timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


# -- end to end over loopback ---------------------------------------------------------------------
async def test_stream_is_relayed_usage_charged_and_hidden_unless_asked() -> None:
    engine = EngineApp("r1")
    async with (
        relays(engine) as urls,
        gateway({"small": urls}) as gw,
        httpx.AsyncClient(timeout=10) as http,
    ):
        r = await http.post(
            f"{gw.url}/v1/chat/completions",
            json=chat(stream=True),
            headers={"x-request-id": "req-1"},
        )
        assert r.status_code == 200 and r.headers["x-tierline-tier"] == "small"
        events = data_lines(r.text)
        assert events[-1] == "[DONE]"
        assert [json.loads(e)["choices"][0]["delta"]["content"] for e in events[:-1]] == [
            f"t{i} " for i in range(5)
        ]
        assert not any('"usage"' in e for e in events)  # not asked: stripped
        await wait_until(lambda: gw.quota.released == [8])  # charged: 3 + 5 served
        # the engine was asked for usage, got the served model name and the request id
        assert engine.seen[0]["stream_options"]["include_usage"] is True
        assert engine.seen[0]["model"] == "small-model"
        assert engine.headers[0]["x-request-id"] == "req-1"

        asked = chat(stream=True, stream_options={"include_usage": True})
        r = await http.post(f"{gw.url}/v1/chat/completions", json=asked)
        usage = [json.loads(e)["usage"] for e in data_lines(r.text)[:-1] if '"usage"' in e]
        assert usage == [{"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}]
        await wait_until(lambda: gw.quota.released == [8, 8])


async def test_whole_answers_completions_and_adapters_take_the_relay() -> None:
    engine = EngineApp("r1")
    async with (
        relays(engine) as urls,
        gateway({"small": urls}) as gw,
        httpx.AsyncClient(timeout=10) as http,
    ):
        r = await http.post(f"{gw.url}/v1/chat/completions", json=chat())
        assert r.status_code == 200 and r.json()["served_by"] == "r1"
        r = await http.post(
            f"{gw.url}/v1/completions",
            json={"model": "small", "prompt": "hi", "max_tokens": 2, "stream": True},
        )
        assert data_lines(r.text)[-1] == "[DONE]"
        assert gw.quota.released == [8, 5]
        # a LoRA adapter of the tier: named to the relay, which loads it first
        r = await http.post(f"{gw.url}/v1/chat/completions", json=chat(model="small:lora"))
        assert r.status_code == 200, r.text
        adapter_id = engine.seen[-1]["model"]
        assert engine.adapters_loaded == [adapter_id]
        assert engine.headers[-1]["x-tierline-adapter"] == adapter_id
        # nothing went the fallback (Serve handle) way
        assert all(not isinstance(c.fallback, RelayEngineClient) for c in gw.clients.values())
        assert gw.clients["small"].fallback.calls == []  # type: ignore[attr-defined]


async def test_an_engine_4xx_is_the_clients_400_and_no_failover() -> None:
    engine = EngineApp("r1")
    async with (
        relays(engine) as urls,
        gateway({"small": urls}) as gw,
        httpx.AsyncClient(timeout=10) as http,
    ):
        r = await http.post(f"{gw.url}/v1/chat/completions", json=chat(max_tokens=-1))
    assert r.status_code == 400, r.text
    assert "max_tokens" in r.json()["error"]["message"]
    assert len(engine.seen) in (0, 1)  # the gateway may refuse it first; never a retry
    assert gw.clients["large"].fallback.calls == []  # type: ignore[attr-defined]


async def test_failover_before_the_first_byte_to_a_live_replica_then_the_fallback() -> None:
    live = EngineApp("live")
    async with relays(live) as urls:
        # the tier's only replica is dead (nothing listens) and the handle path fails too:
        # retried, then the fallback tier
        dead = {"dead": "http://127.0.0.1:9"}
        async with gateway({"small": dead, "large": urls}, {"small": "before"}) as gw:
            async with httpx.AsyncClient(timeout=20) as http:
                r = await http.post(f"{gw.url}/v1/chat/completions", json=chat(stream=True))
            assert r.status_code == 200, r.text
            assert r.headers["x-tierline-tier"] == "large"
            assert "+fallback" in r.headers["x-tierline-route-reason"]
            assert data_lines(r.text)[-1] == "[DONE]"
            # a dead replica next to a live one: the retry goes to the live one
            gw.directory.set("small", {"dead": "http://127.0.0.1:9", "live": urls["live"]})
            gw.core.board.health["small"] = True
            async with httpx.AsyncClient(timeout=20) as http:
                for _ in range(4):
                    r = await http.post(f"{gw.url}/v1/chat/completions", json=chat())
                    assert r.status_code == 200
                    assert r.headers["x-tierline-tier"] == "small", r.headers
    assert all(e["model"] in ("small-model", "large") for e in live.seen)


async def test_client_disconnect_aborts_the_engine_request() -> None:
    engine = EngineApp("r1", delay_s=0.05)
    async with relays(engine) as urls, gateway({"small": urls}) as gw:
        async with httpx.AsyncClient(timeout=10) as http:
            body = chat(stream=True, max_tokens=400)
            async with http.stream(
                "POST",
                f"{gw.url}/v1/chat/completions",
                json=body,
                headers={"x-request-id": "leaver"},
            ) as r:
                got = 0
                async for _ in r.aiter_lines():
                    got += 1
                    if got >= 6:
                        break
        t0 = asyncio.get_running_loop().time()
        await wait_until(lambda: engine.aborted == ["leaver"], timeout_s=3.0)
        assert asyncio.get_running_loop().time() - t0 < 1.0
        assert engine.finished == []
        await wait_until(lambda: len(gw.quota.released) == 1)  # the slot and ticket came back
        assert gw.core.active == 0
        assert gw.clients["small"].in_flight == {"r1": 0}


async def test_an_engine_dying_mid_stream_ends_the_stream_with_an_error_and_done() -> None:
    engine = EngineApp("r1", die_after=2)
    async with (
        relays(engine) as urls,
        gateway({"small": urls}) as gw,
        httpx.AsyncClient(timeout=10) as http,
    ):
        r = await http.post(f"{gw.url}/v1/chat/completions", json=chat(stream=True))
    events = data_lines(r.text)
    assert events[-1] == "[DONE]"
    assert any("error" in json.loads(e) for e in events[:-1]), events
    assert gw.core.active == 0


async def test_first_chunk_citations_on_a_relayed_stream() -> None:
    from tierline.deployments.answer import StreamAnswer, with_citations

    engine = EngineApp("r1")
    async with relays(engine) as urls, gateway({"small": urls}) as gw:
        response = await gw.core.generate("chat", _chat_body(stream=True), "default")
        assert isinstance(response, StreamAnswer)
        cited = with_citations(response, [{"id": 1, "source": "handbook.md"}])
        assert isinstance(cited, StreamAnswer)
        out = [c async for c in cited.events]
    text = "".join(c.decode() if isinstance(c, bytes) else c for c in out)
    events = [json.loads(e) for e in data_lines(text)[:-1]]
    assert events[0]["citations"] == [{"id": 1, "source": "handbook.md"}]
    assert not any("citations" in e for e in events[1:])
    assert all(isinstance(c, bytes) for c in out[1:])  # the rest passed on as relayed


def _chat_body(**kw: Any) -> Any:
    from tierline.deployments.schemas import ChatCompletionBody

    return ChatCompletionBody.model_validate(chat(**kw))


async def test_relay_server_refuses_callers_without_the_token_and_unknown_adapters() -> None:
    engine = EngineApp("r1")
    async with relays(engine) as urls, httpx.AsyncClient(timeout=10) as http:
        r = await http.post(urls["r1"] + "/v1/chat/completions", json=chat())
        assert r.status_code == 403
        r = await http.post(
            urls["r1"] + "/v1/chat/completions",
            json=chat(),
            headers={"x-tierline-relay-token": "wrong"},
        )
        assert r.status_code == 403
        r = await http.post(
            urls["r1"] + "/v1/chat/completions",
            json=chat(),
            headers={"x-tierline-relay-token": TOKEN, "x-tierline-adapter": "missing"},
        )
        assert r.status_code == 404 and "missing" in r.json()["error"]["message"]
        r = await http.post(
            urls["r1"] + "/v1/chat/completions",
            json=chat(),
            headers={"x-tierline-relay-token": TOKEN},
        )
        assert r.status_code == 200
    assert len(engine.seen) == 1


async def test_no_relay_known_takes_the_handle_path() -> None:
    async with gateway({}) as gw:
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.post(f"{gw.url}/v1/chat/completions", json=chat(stream=True))
        assert r.status_code == 200 and data_lines(r.text)[-1] == "[DONE]"
        assert len(gw.clients["small"].fallback.calls) == 1  # type: ignore[attr-defined]


# -- pure parts ---------------------------------------------------------------------------------
def test_engine_error_shapes() -> None:
    assert engine_error_of(400, b'{"error": {"message": "bad", "type": "BadRequestError"}}') == (
        EngineError(400, "bad", "BadRequestError")
    )
    assert engine_error_of(404, b'{"object": "error", "message": "no model"}').message == (
        "no model"
    )
    assert engine_error_of(400, b"not json").message == "not json"


def test_choose_replica_spreads_and_prefers_the_less_loaded() -> None:
    rng = random.Random(7)
    loads = {f"r{i}": 0 for i in range(4)}
    counts = dict.fromkeys(loads, 0)
    for _ in range(4000):
        counts[choose_replica(loads, rng=rng)] += 1
    assert all(800 < n < 1200 for n in counts.values()), counts
    # power of two choices: a replica more loaded than all others is never picked
    for _ in range(500):
        loads = {f"r{i}": rng.randrange(10) for i in range(5)}
        top = max(loads.values())
        pick = choose_replica(loads, rng=rng)
        assert loads[pick] < top or list(loads.values()).count(top) > 1
    assert choose_replica({"only": 99}) == "only"
    with pytest.raises(ValueError):
        choose_replica({})


def _prompt(seed: int, words: int = 200) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(["tier", "cache", "token", "replica", "gpu"]) for _ in range(words))


def test_prefix_affinity_keeps_conversations_and_spreads_new_ones() -> None:
    rng = random.Random(3)
    memory = PrefixMemory()
    replicas = ["r0", "r1", "r2"]
    loads = dict.fromkeys(replicas, 0)

    def route(text: str) -> str:
        keys = blocks(text)
        matches = {r: memory.match(r, keys) for r in replicas}
        sizes = {r: memory.size(r) for r in replicas}
        pick = choose_replica(loads, matches, sizes, imbalance=4, rng=rng)
        memory.record(pick, keys)
        return pick

    homes = {}
    for conv in range(30):
        history = f"system:{_prompt(conv)}\n"
        seen = set()
        for turn in range(5):
            history += f"user:question {turn}\nassistant:answer {turn}\n"
            seen.add(route(history))
        assert len(seen) == 1, (conv, seen)  # every turn on one replica
        homes[conv] = seen.pop()
    spread = [list(homes.values()).count(r) for r in replicas]
    assert min(spread) >= 8, spread  # new conversations go where the least text is held
    # a busy preferred replica: past the imbalance, power of two choices instead
    loads = {"r0": 0, "r1": 0, "r2": 0}
    home = homes[0]
    loads[home] = 5
    text = f"system:{_prompt(0)}\n"
    keys = blocks(text)
    matches = {r: memory.match(r, keys) for r in replicas}
    picks = {choose_replica(loads, matches, None, imbalance=4, rng=rng) for _ in range(50)}
    assert home not in picks
    loads[home] = 4
    assert choose_replica(loads, matches, None, imbalance=4, rng=rng) == home


def test_prefix_memory_matches_leading_blocks_and_stays_bounded() -> None:
    memory = PrefixMemory(max_blocks=10)
    a = blocks("x" * 128 * 5)
    assert len(a) == 5 and blocks("x" * 100) == []
    memory.record("r", a[:3])
    assert memory.match("r", a) == 3 and memory.match("other", a) == 0
    assert memory.match("r", blocks("y" * 128 * 5)) == 0
    memory.record("r", blocks("z" * 128 * 20))
    assert memory.size("r") == 10
    memory.keep_only(["s"])
    assert memory.size("r") == 0


def test_prefix_text_reads_the_prompts_start() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "S" * 600},
            {"role": "user", "content": "question"},
        ]
    }
    text = prefix_text("chat", body, chars=512)
    assert len(text) == 512 and text.startswith("system:SSS")
    longer = {"messages": [*body["messages"], {"role": "assistant", "content": "a"}]}
    assert prefix_text("chat", longer).startswith(prefix_text("chat", body))
    assert prefix_text("completions", {"prompt": "abc"}) == "abc"
    assert prefix_text("chat", {"messages": []}) == ""
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    assert prefix_text("chat", parts) == "user:hi\n"


def test_registry_token_publish_and_liveness() -> None:
    kv = MemoryKV()
    token = cluster_token(kv)
    assert len(token) >= 32 and cluster_token(kv) == token  # first writer wins
    publish(kv, "app", "tier-small", "a", "http://10.0.0.1:5000")
    publish(kv, "app", "tier-small", "b", "http://10.0.0.2:5000")
    publish(kv, "app", "tier-large", "c", "http://10.0.0.3:5000")
    kv.put(relay_key("app", "tier-small", "junk"), b"not json")
    assert read_relays(kv, "app", "tier-small") == {
        "a": "http://10.0.0.1:5000",
        "b": "http://10.0.0.2:5000",
    }
    live, stale = live_relays({"a": "u1", "b": "u2", "z": "u3"}, running={"a"}, known={"a", "b"})
    assert live == {"a": "u1"} and stale == ["z"]
    details = {
        "applications": {
            "app": {
                "deployments": {
                    "tier-small": {
                        "replicas": [
                            {"replica_id": "a", "state": "RUNNING"},
                            {"replica_id": "n", "state": "STARTING"},
                        ]
                    }
                }
            }
        }
    }
    assert replica_ids(details, "app", "tier-small") == ({"a"}, {"a", "n"})
    found = fetch_relays(kv, details, "app", {"small": "tier-small"})
    assert found == {"small": {"a": "http://10.0.0.1:5000"}}
    assert read_relays(kv, "app", "tier-small") == {"a": "http://10.0.0.1:5000"}  # b pruned
    # an answer without the app prunes nothing
    publish(kv, "app", "tier-small", "b", "http://10.0.0.2:5000")
    assert fetch_relays(kv, {}, "app", {"small": "tier-small"}) == {"small": {}}
    assert "b" in read_relays(kv, "app", "tier-small")


def test_directory_benches_a_failing_replica_for_a_while() -> None:
    now = [0.0]
    d = RelayDirectory(clock=lambda: now[0])
    d.set("small", {"a": "u1", "b": "u2"})
    d.bench("a")
    assert d.urls("small") == {"b": "u2"}
    now[0] = 10.0
    assert d.urls("small") == {"a": "u1", "b": "u2"}


@asynccontextmanager
async def relayed_app(app: Any) -> AsyncIterator[RelayDirectory]:
    """`app` behind a real relay server (the engine replica's door), and a directory
    naming it as tier `small`'s one replica."""

    async def load(name: str) -> None:
        return None

    handle = await start_relay_server(RelayMiddleware(app, TOKEN, load), "127.0.0.1")
    directory = RelayDirectory()
    directory.token = TOKEN
    directory.set("small", {"r": handle.url})
    try:
        yield directory
    finally:
        await handle.stop()


async def test_a_stopping_replica_waits_for_the_requests_it_relays() -> None:
    engine = EngineApp("r1", delay_s=0.05)

    async def load(name: str) -> None:
        return None

    gate = RelayMiddleware(engine.app(), TOKEN, load)
    handle = await start_relay_server(gate, "127.0.0.1")
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            body = chat(stream=True, max_tokens=10)
            headers = {"x-tierline-relay-token": TOKEN}
            call = asyncio.ensure_future(
                http.post(handle.url + "/v1/chat/completions", json=body, headers=headers)
            )
            await wait_until(lambda: gate.active == 1)
            assert await gate.drained(0.05) == 1  # still running: the wait gives up
            assert await gate.drained(5.0) == 0  # then it ends, whole
            r = await call
            assert data_lines(r.text)[-1] == "[DONE]" and engine.finished == [""]
    finally:
        await handle.stop()


async def test_relayed_items_hold_whole_events_however_the_bytes_were_cut() -> None:
    parts = [
        b'data: {"a":1}\n\ndata: {"b"',
        b":2}\n",
        b'\ndata: {"usage":{"total_tokens":3}}',
        b"\n\n",
        b"data: [DONE]\n\n",
    ]

    async def engine(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for p in parts:
            await send({"type": "http.response.body", "body": p, "more_body": True})
            await asyncio.sleep(0.02)
        await send({"type": "http.response.body", "body": b""})

    async with relayed_app(engine) as directory:
        client = RelayEngineClient("small", FakeEngine("x"), directory)
        try:
            items = [i async for i in client.generate("chat", {"model": "x", "stream": True})]
        finally:
            await client.close()
    assert all(isinstance(i, bytes) and i.endswith(b"\n\n") for i in items), items
    assert b"".join(items) == b"".join(parts)  # type: ignore[arg-type]


async def test_a_relayed_stream_is_paced_by_the_gateways_interval() -> None:
    """The gateway asks the replica to pace a stream (`gateway.stream_interval_ms`): the
    replica writes a burst of tokens in few writes, the first two at once, every byte in
    order; a whole answer and an unpaced stream are written as the app wrote them."""
    writes: list[int] = []

    async def engine(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        writes.append(0)
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for i in range(30):
            await send(
                {"type": "http.response.body", "body": b"data: %d\n\n" % i, "more_body": True}
            )
            await asyncio.sleep(0.001)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    expected = b"".join(b"data: %d\n\n" % i for i in range(30)) + b"data: [DONE]\n\n"
    async with relayed_app(engine) as directory:
        paced = RelayEngineClient("small", FakeEngine("x"), directory, stream_interval_ms=200)
        plain = RelayEngineClient("small", FakeEngine("x"), directory)
        try:
            items = [i async for i in paced.generate("chat", {"model": "x", "stream": True})]
            assert b"".join(items) == expected  # type: ignore[arg-type]
            assert len(items) <= 5, items  # two at once, the rest in one to three writes
            assert items[0] == b"data: 0\n\n"
            unpaced = [i async for i in plain.generate("chat", {"model": "x", "stream": True})]
            assert b"".join(unpaced) == expected  # type: ignore[arg-type]
        finally:
            await paced.close()
            await plain.close()


async def test_the_pace_header_goes_with_streams_only() -> None:
    engine = EngineApp("r1")
    async with (
        relays(engine) as urls,
        gateway({"small": urls}) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=10) as http,
    ):
        await http.post("/v1/chat/completions", json=chat(stream=True))
        await http.post("/v1/chat/completions", json=chat())
    assert engine.headers[0]["x-tierline-stream-interval-ms"] == "20"
    assert "x-tierline-stream-interval-ms" not in engine.headers[1]


async def test_the_relay_asks_vllm_for_tokens_per_event_from_the_tiers_pace() -> None:
    engine = EngineApp("r1")
    async with relays(engine) as urls:
        directory = RelayDirectory()
        directory.token = TOKEN
        directory.set("small", urls)
        client = RelayEngineClient("small", FakeEngine("x"), directory, stream_interval_ms=20)
        body = {"model": "x", "stream": True, "max_tokens": 3, "messages": []}
        try:
            [i async for i in client.generate("chat", body)]
            assert "stream_interval" not in engine.seen[0]  # the pace is not known yet
            client.pace.token_s = 0.005  # 5 ms a token: four fit 20 ms
            [i async for i in client.generate("chat", body)]
            assert engine.seen[1]["stream_interval"] == 4
            assert "stream_interval" not in body  # the caller's body is not changed
            [i async for i in client.generate("chat", {**body, "stream_interval": 1})]
            assert engine.seen[2]["stream_interval"] == 1  # one the request set stays
            [i async for i in client.generate("chat", {**body, "stream": False})]
            assert "stream_interval" not in engine.seen[3]  # a whole answer: no events
        finally:
            await client.close()
