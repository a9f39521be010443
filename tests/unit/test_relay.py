"""The relay path over real loopback HTTP: the gateway's app (uvicorn) → `RelayEngineClient`
(aiohttp) → the engine replica's relay server (`start_relay_server` + `RelayMiddleware`)
→ an engine app that answers the way vLLM's OpenAI app does (one SSE event per HTTP
chunk, a usage event when asked, `[DONE]`; aborting a request whose caller left).

No Ray and no vLLM here: the engine app is a fake with vLLM's wire behaviour; the
integration suite runs the same path on real engines."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from tierline.deployments.gateway.engines.relay import RelayEngineClient

from tests.unit.relay_fakes import (
    TOKEN,
    EngineApp,
    chat,
    data_lines,
    gateway,
    relays,
    wait_until,
)


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
    from tierline.deployments.gateway.pipeline.answer import StreamAnswer, with_citations

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
    from tierline.deployments.gateway.pipeline.schemas import ChatCompletionBody

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
