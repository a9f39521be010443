"""The relay path's test harness over real loopback HTTP: an engine app with vLLM's wire
behaviour (one SSE event per HTTP chunk, a usage event when asked, `[DONE]`; aborting a
request whose caller left) behind the engine replica's relay server, and the gateway's app
relaying to it. No Ray and no vLLM; `test_relay.py` and `test_relay_parts.py` use it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from tierline.cluster.specfile import load_spec_text
from tierline.deployments.engine.adapters import adapter_sources
from tierline.deployments.engine.relay_server import RelayMiddleware, start_relay_server
from tierline.deployments.gateway import GatewayCore, create_app
from tierline.deployments.gateway.engines.relay import RelayDirectory, RelayEngineClient
from tierline.deployments.gateway.pipeline.tokens import EstimatingCounter
from tierline.deployments.gateway.quota.service import Admission

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
