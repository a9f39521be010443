"""External tiers without a network: the spec, the HTTP client against httpx's MockTransport
(an honest fake upstream), and the gateway's failure mapping and fallback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from tierline.cluster.spec import ExternalSpec
from tierline.cluster.specfile import SpecError, load_spec, load_spec_text, parse_spec, spec_to_data
from tierline.deployments.gateway import GatewayCore, create_app
from tierline.deployments.gateway.engines.engine_client import EngineError, EngineUnavailable
from tierline.deployments.gateway.engines.external import (
    ExternalEngineClient,
    ExternalKeyError,
    error_message,
    read_api_key,
)
from tierline.deployments.gateway.pipeline.tokens import EstimatingCounter

from tests.unit.fakes import FakeEngine

SPEC = """
tiers:
  - name: small
    model_source: org/small
    max_context_tokens: 512
  - name: frontier
    served_model_name: frontier-model
    max_context_tokens: 4096
    price_per_1m_input_tokens: 2.5
    price_per_1m_output_tokens: 10
    {fallback}
    external:
      base_url: http://upstream.test/v1
      model: gpt-x
      api_key_env: FRONTIER_KEY
      connect_timeout_s: 1
      timeout_s: 2
      max_concurrency: {limit}
"""

Handler = Callable[[httpx.Request], Any]


def spec_text(fallback: bool = False, limit: int = 4) -> str:
    return SPEC.format(fallback="fallback_tier: small" if fallback else "", limit=limit)


def completion(model: str, stream: bool) -> httpx.Response:
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    if not stream:
        body = {
            "id": "up",
            "object": "chat.completion",
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi there"}}],
            "usage": usage,
        }
        return httpx.Response(200, json=body)
    chunks = [
        {"id": "up", "object": "chat.completion.chunk", "choices": [{"delta": {"content": w}}]}
        for w in ("hi", " there")
    ]
    chunks.append({"id": "up", "choices": [], "usage": usage})
    text = (
        "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + ": keep-alive\n\ndata: [DONE]\n\n"
    )
    return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})


def upstream(seen: list[httpx.Request] | None = None) -> Handler:
    """A well-behaved OpenAI-compatible upstream."""

    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "gpt-x"}]})
        body = json.loads(request.content)
        return completion(body["model"], bool(body.get("stream")))

    return handle


def refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connection refused", request=request)


def silent(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


def rate_limited(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        429,
        json={"error": {"message": "slow down", "type": "rate_limit"}},
        headers={"Retry-After": "7"},
    )


def client_for(handler: Handler, fallback: bool = False, limit: int = 4) -> ExternalEngineClient:
    tier = load_spec_text(spec_text(fallback, limit)).tier("frontier")
    return ExternalEngineClient(tier, "sk-test", transport=httpx.MockTransport(handler))


async def collect(client: ExternalEngineClient, body: dict[str, Any]) -> list[Any]:
    return [item async for item in client.generate("chat", body)]


CHAT = {"model": "frontier-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


# -- spec ---------------------------------------------------------------------------------
def test_external_tier_validates_and_round_trips() -> None:
    spec = load_spec_text(spec_text(fallback=True))
    tier = spec.tier("frontier")
    assert tier.is_external and tier.model_source is None
    assert [t.name for t in spec.engine_tiers] == ["small"]
    # The gateway gets the spec as plain data (every field written out): it must parse.
    assert parse_spec(spec_to_data(spec)) == spec


@pytest.mark.parametrize(
    ("extra", "word"),
    [
        ("model_source: org/x", "model_source"),
        ("replicas: 2", "replicas"),
        ("engine_kwargs: {enforce_eager: true}", "engine_kwargs"),
        ("accelerator_type: H100", "accelerator_type"),
        ("env_vars: {A: b}", "env_vars"),
        ("adapters: [{name: a, source: ./a}]", "adapters"),
    ],
)
def test_external_tier_rejects_engine_fields(extra: str, word: str) -> None:
    text = spec_text().replace("    external:", f"    {extra}\n    external:")
    with pytest.raises(SpecError) as err:
        load_spec_text(text)
    assert any(i.path == "tiers[1]" and word in i.message for i in err.value.issues), err.value


def test_a_tier_needs_a_model_source_or_external() -> None:
    with pytest.raises(SpecError, match=r"model_source.*or external"):
        load_spec_text("tiers: [{name: a, max_context_tokens: 64}]")


def test_external_keys_and_urls_are_checked() -> None:
    with pytest.raises(SpecError, match="api_key_env or api_key_file"):
        load_spec_text(
            spec_text().replace(
                "api_key_env: FRONTIER_KEY", "api_key_env: K\n      api_key_file: /k"
            )
        )
    with pytest.raises(SpecError) as err:
        load_spec_text(spec_text().replace("http://upstream.test/v1", "upstream.test"))
    assert err.value.issues[0].path == "tiers[1].external.base_url"


def test_key_file_resolves_against_the_spec_file(tmp_path: Path) -> None:
    text = spec_text().replace("api_key_env: FRONTIER_KEY", "api_key_file: ./secret/key")
    (tmp_path / "spec.yaml").write_text(text)
    ext = load_spec(tmp_path / "spec.yaml").tier("frontier").external
    assert ext is not None and ext.api_key_file == str(tmp_path / "secret" / "key")


def test_read_api_key_names_what_is_missing(tmp_path: Path) -> None:
    ext = ExternalSpec(base_url="http://x/v1", model="m", api_key_env="FRONTIER_KEY")
    assert read_api_key(ext, {"FRONTIER_KEY": " sk-1 \n"}) == "sk-1"
    with pytest.raises(ExternalKeyError, match="FRONTIER_KEY"):
        read_api_key(ext, {})
    key = tmp_path / "key"
    ext = ExternalSpec(base_url="http://x/v1", model="m", api_key_file=str(key))
    with pytest.raises(ExternalKeyError, match=str(key)):
        read_api_key(ext, {})
    key.write_text("sk-2\n")
    assert read_api_key(ext, {}) == "sk-2"
    assert read_api_key(ExternalSpec(base_url="http://x/v1", model="m"), {}) is None


# -- the client -----------------------------------------------------------------------------
def test_non_streaming_sends_the_provider_model_and_key() -> None:
    seen: list[httpx.Request] = []
    items = asyncio.run(collect(client_for(upstream(seen)), CHAT))
    assert len(items) == 1 and items[0]["choices"][0]["message"]["content"] == "hi there"
    request = seen[0]
    assert request.url == "http://upstream.test/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test"
    assert json.loads(request.content)["model"] == "gpt-x"


def test_streaming_yields_one_event_per_sse_item() -> None:
    items = asyncio.run(collect(client_for(upstream()), {**CHAT, "stream": True}))
    assert all(isinstance(i, str) and i.startswith("data: ") and i.endswith("\n\n") for i in items)
    assert items[-1] == "data: [DONE]\n\n"
    assert json.loads(items[-2][6:])["usage"]["total_tokens"] == 5
    assert len(items) == 4  # two chunks, usage, [DONE]; the keep-alive comment is dropped


@pytest.mark.parametrize(
    ("handler", "status", "code", "retry_after", "down"),
    [
        (refused, 502, "upstream_unreachable", "1", True),
        (silent, 504, "upstream_timeout", None, False),
        (rate_limited, 429, "upstream_rate_limited", "7", False),
        (lambda r: httpx.Response(503, text="overloaded"), 502, "upstream_error", None, False),
        (
            lambda r: httpx.Response(401, json={"error": "bad key"}),
            502,
            "upstream_auth_failed",
            None,
            False,
        ),
    ],
)
def test_failures_before_output_raise_engine_unavailable(
    handler: Handler, status: int, code: str, retry_after: str | None, down: bool
) -> None:
    with pytest.raises(EngineUnavailable) as err:
        asyncio.run(collect(client_for(handler), CHAT))
    assert (err.value.status, err.value.code) == (status, code)
    assert err.value.retry_after_s == retry_after and err.value.down is down
    assert "frontier" in err.value.message


def test_request_errors_pass_through_as_engine_errors() -> None:
    def bad_request(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": {"message": "max_tokens is too large"}})

    items = asyncio.run(collect(client_for(bad_request), CHAT))
    assert items == [EngineError(400, items[0].message)]
    assert "max_tokens is too large" in items[0].message


def test_concurrency_limit_refuses_at_once() -> None:
    release = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return completion("gpt-x", False)

    async def scenario() -> None:
        client = client_for(slow, limit=2)
        first = [asyncio.ensure_future(collect(client, CHAT)) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert client.in_flight == 2
        with pytest.raises(EngineUnavailable) as err:
            await collect(client, CHAT)
        assert (err.value.status, err.value.code, err.value.retry_after_s) == (
            503,
            "tier_at_capacity",
            "1",
        )
        release.set()
        assert all(len(r) == 1 for r in await asyncio.gather(*first))
        assert client.in_flight == 0
        assert len(await collect(client, CHAT)) == 1

    asyncio.run(scenario())


def test_health_probe_looks_for_the_model() -> None:
    assert asyncio.run(client_for(upstream()).healthy(1.0)) is True
    assert asyncio.run(client_for(refused).healthy(1.0)) is False

    def other_models(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"data": [{"id": "not-it"}]})

    assert asyncio.run(client_for(other_models).healthy(1.0)) is False


def test_error_message_reads_any_body() -> None:
    assert error_message(b'{"error": {"message": "m"}}', 400) == "m"
    assert error_message(b'{"message": "n"}', 400) == "n"
    assert error_message(b"plain text", 500) == "plain text"
    assert error_message(b"", 502) == "HTTP 502"


# -- through the gateway ---------------------------------------------------------------------
def gateway(handler: Handler, fallback: bool = False) -> tuple[TestClient, FakeEngine]:
    spec = load_spec_text(spec_text(fallback))
    small = FakeEngine("small")
    engines = {"small": small, "frontier": client_for(handler, fallback)}
    counters = {t.name: EstimatingCounter() for t in spec.tiers}
    core = GatewayCore(spec, engines, counters)
    return TestClient(create_app(core), raise_server_exceptions=False), small


def ask(client: TestClient, **kw: Any) -> httpx.Response:
    return client.post("/v1/chat/completions", json={**CHAT, **kw})


def test_gateway_serves_an_external_tier_like_any_other() -> None:
    client, _ = gateway(upstream())
    with client:
        resp = ask(client)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-tierline-tier"] == "frontier"
        assert resp.json()["usage"]["total_tokens"] == 5
        resp = ask(client, stream=True)
        assert resp.status_code == 200
        assert resp.text.rstrip().endswith("data: [DONE]")
        cards = {c["id"]: c for c in client.get("/v1/models").json()["data"]}
        assert cards["frontier-model"]["external"] is True
        assert cards["frontier-model"]["pricing"]["output_per_1m_tokens"] == 10


@pytest.mark.parametrize(
    ("handler", "status", "retry_after"),
    [(refused, 502, "1"), (silent, 504, None), (rate_limited, 429, "7")],
)
def test_gateway_maps_failures_without_a_fallback(
    handler: Handler, status: int, retry_after: str | None
) -> None:
    client, small = gateway(handler)
    with client:
        resp = ask(client)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and "frontier" in err["message"]
    assert resp.headers.get("retry-after") == retry_after
    assert resp.headers["x-tierline-tier"] == "frontier"
    assert small.calls == []


@pytest.mark.parametrize("handler", [refused, silent, rate_limited])
def test_gateway_falls_back_when_the_upstream_fails(handler: Handler) -> None:
    client, small = gateway(handler, fallback=True)
    with client:
        resp = ask(client)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-tierline-tier"] == "small"
    assert resp.headers["x-tierline-route-reason"].endswith("+fallback")
    assert len(small.calls) == 1


@pytest.mark.parametrize("handler", [silent, rate_limited])
def test_a_slow_or_rate_limited_upstream_is_not_marked_down(handler: Handler) -> None:
    """Only an unreachable provider is down; the next request tries it again, then falls
    back again, instead of the router refusing the pinned tier."""
    client, small = gateway(handler, fallback=True)
    with client:
        for _ in range(3):
            resp = ask(client)
            assert resp.status_code == 200, resp.text
            assert resp.headers["x-tierline-route-reason"].endswith("+fallback")
    assert len(small.calls) == 3


def test_a_refused_upstream_is_tried_once_and_marked_down() -> None:
    calls: list[httpx.Request] = []

    def counting_refusal(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":  # not the health watcher's GET /models
            calls.append(request)
        return refused(request)

    spec = load_spec_text(spec_text())
    core = GatewayCore(
        spec,
        {"small": FakeEngine("small"), "frontier": client_for(counting_refusal)},
        {t.name: EstimatingCounter() for t in spec.tiers},
    )
    with TestClient(create_app(core), raise_server_exceptions=False) as client:
        assert ask(client).status_code == 502
        assert len(calls) == 1  # not retried: the fallback (none here) or the error at once
        assert core.health["frontier"] is False
        # Readiness is about the cluster's own tiers: a provider outage does not gate it.
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["tiers"]["frontier"] is False


def test_upstream_account_ids_and_host_do_not_reach_the_client() -> None:
    """Providers name the account in quota messages; before, they reached the client."""
    message = (
        "Rate limit reached for gpt-x in organization org-AbC123xyz789 on tokens per min "
        "(project proj_9Fh2kLm3Qx) at upstream.test; see upstream.test/docs"
    )

    def limited(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": {"message": message}})

    items = asyncio.run(collect(client_for(limited), CHAT))
    (err,) = items
    assert isinstance(err, EngineError) and "Rate limit reached" in err.message
    for leaked in ("org-AbC123xyz789", "proj_9Fh2kLm3Qx", "upstream.test"):
        assert leaked not in err.message
