from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tierline.cluster.specfile import load_spec_text
from tierline.cluster.tiny_models import build_tokenizer
from tierline.deployments.gateway import GatewayCore, create_app
from tierline.deployments.gateway.pipeline.auth import KeyStore
from tierline.deployments.gateway.pipeline.tokens import EstimatingCounter, HFCounter
from tierline.deployments.gateway.quota.service import QuotaClient

from tests.unit.fakes import FakeEngine

SPEC = """
tiers:
  - name: small
    model_source: org/small
    served_model_name: small-model
    max_context_tokens: 128
  - name: large
    model_source: org/large
    max_context_tokens: 1024
router:
  params:
    long_prompt_tokens: 64
gateway:
  max_body_bytes: 16384
  max_tokens_limit: 256
  max_n: 4
  max_messages: 8
"""


def make(
    fail: dict[str, str] | None = None,
    keys: KeyStore | None = None,
    spec_text: str = SPEC,
    quota: QuotaClient | None = None,
) -> tuple[TestClient, dict[str, FakeEngine]]:
    spec = load_spec_text(spec_text)
    engines = {t.name: FakeEngine(t.model_name, (fail or {}).get(t.name)) for t in spec.tiers}
    counters = {t.name: EstimatingCounter() for t in spec.tiers}
    core = GatewayCore(spec, engines, counters, quota=quota)
    return TestClient(create_app(core, keys), raise_server_exceptions=False), engines


def chat(content: str = "hi", **kw: object) -> dict[str, object]:
    return {
        "model": "auto",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 4,
        **kw,
    }


def assert_openai_error(resp, status: int) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    return err


def sse_events(resp) -> list[str]:
    return [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]


def test_auto_chat_routes_and_sets_headers() -> None:
    client, engines = make()
    r = client.post("/v1/chat/completions", json=chat())
    assert r.status_code == 200
    assert r.headers["x-tierline-tier"] == "small"
    assert r.headers["x-tierline-route-reason"] == "auto:default"
    assert r.headers["x-request-id"]
    assert r.json()["usage"]["completion_tokens"] == 4
    # the engine gets the served model name, not what the client asked for
    assert engines["small"].calls[0][1]["model"] == "small-model"


@pytest.mark.parametrize("model", ["small", "small-model", "large"])
def test_pinned_by_tier_or_served_name(model: str) -> None:
    client, _ = make()
    r = client.post("/v1/chat/completions", json=chat(model=model))
    assert r.status_code == 200
    assert r.headers["x-tierline-tier"] == ("large" if model == "large" else "small")
    assert r.headers["x-tierline-route-reason"] == "pinned"


def test_keyword_and_context_escalation() -> None:
    client, _ = make()
    r = client.post("/v1/chat/completions", json=chat("Please prove that it halts"))
    assert (r.headers["x-tierline-tier"], r.headers["x-tierline-route-reason"]) == (
        "large",
        "auto:keyword",
    )
    long = client.post("/v1/chat/completions", json=chat("word " * 150))
    assert long.headers["x-tierline-tier"] == "large"


def test_streaming_ends_with_done_and_carries_usage_when_asked() -> None:
    client, _ = make()
    asked = {"include_usage": True}
    r = client.post("/v1/chat/completions", json=chat(stream=True, stream_options=asked))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r)
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["usage"]["completion_tokens"] == 4
    # Not asked for: no usage line (the gateway still reads it, to charge the quota).
    for options in (None, {"include_usage": False}):
        extra = {} if options is None else {"stream_options": options}
        r = client.post("/v1/chat/completions", json=chat(stream=True, **extra))
        events = sse_events(r)
        assert events[-1] == "[DONE]" and len(events) == 5
        assert not any("usage" in e for e in events)


def test_completions_endpoint() -> None:
    client, _ = make()
    r = client.post("/v1/completions", json={"model": "auto", "prompt": "abc", "max_tokens": 3})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "w0 w1 w2"
    s = client.post(
        "/v1/completions",
        json={"model": "large", "prompt": [1, 2, 3], "max_tokens": 2, "stream": True},
    )
    assert sse_events(s)[-1] == "[DONE]"


def test_models_lists_tiers_and_auto() -> None:
    client, _ = make()
    data = client.get("/v1/models").json()["data"]
    assert [m["id"] for m in data] == ["auto", "small-model", "large"]
    assert client.get("/v1/models/small").json()["id"] == "small-model"
    assert_openai_error(client.get("/v1/models/nope"), 404)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (json.dumps({"model": "auto"}).encode(), 400, "messages"),
        (json.dumps(chat(max_tokens=-1)).encode(), 400, "max_tokens"),
        (json.dumps(chat(max_tokens=1000)).encode(), 400, "max_tokens"),
        (json.dumps(chat(n=5)).encode(), 400, "n"),
        (json.dumps(chat(model="gpt-9")).encode(), 404, "model"),
        (json.dumps(chat("x " * 3000)).encode(), 400, "messages"),
        (json.dumps({"model": "auto", "messages": "hi"}).encode(), 400, "messages"),
        (json.dumps({"model": 3, "messages": []}).encode(), 400, None),
        (json.dumps({**chat(), "messages": [{"role": "user"}] * 9}).encode(), 400, "messages"),
        (json.dumps([1, 2]).encode(), 400, None),
    ],
)
def test_bad_input_gets_openai_4xx(body: bytes, status: int, param: str | None) -> None:
    client, _ = make()
    r = client.post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    err = assert_openai_error(r, status)
    if param is not None:
        assert err["param"] == param
    # and the gateway keeps serving
    assert client.post("/v1/chat/completions", json=chat()).status_code == 200


def test_pinned_prompt_over_context_says_by_how_much() -> None:
    client, _ = make()
    r = client.post("/v1/chat/completions", json=chat("xyz " * 200, model="small"))
    err = assert_openai_error(r, 400)
    assert err["code"] == "context_length_exceeded" and "accepts 128 tokens" in err["message"]
    assert r.headers["x-tierline-tier"] == "none"


def test_body_too_large_is_413() -> None:
    client, _ = make()
    r = client.post("/v1/chat/completions", json=chat("x" * 20000))
    assert_openai_error(r, 413)


def test_unknown_route_and_method_are_openai_errors() -> None:
    client, _ = make()
    assert_openai_error(client.get("/v1/nothing"), 404)
    assert_openai_error(client.get("/v1/chat/completions"), 405)


def test_engine_errors_keep_their_status() -> None:
    client, _ = make({"small": "error"})
    r = client.post("/v1/chat/completions", json=chat())
    assert assert_openai_error(r, 400)["message"] == "engine says no"
    assert r.headers["x-tierline-tier"] == "small"


def test_engine_dead_before_first_token_is_503_with_retry_after() -> None:
    client, _ = make({"small": "before"})
    r = client.post("/v1/chat/completions", json=chat())
    assert_openai_error(r, 503)
    assert r.headers["retry-after"] == "1"


def test_stream_broken_midway_ends_with_error_event_then_done() -> None:
    client, _ = make({"small": "midway"})
    r = client.post("/v1/chat/completions", json=chat(stream=True))
    events = sse_events(r)
    assert events[-1] == "[DONE]"
    assert "error" in json.loads(events[-2])


def test_readyz_reflects_every_tier() -> None:
    client, engines = make(spec_text=SPEC + "  readyz_cache_s: 0\n")  # probe every call
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    engines["large"].healthy_answer = False
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["tiers"] == {"small": True, "large": False}


class Ticking:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_of_readyz_calls_costs_one_probe_per_interval() -> None:
    spec = load_spec_text(SPEC)
    assert spec.gateway.readyz_cache_s == 1.0  # the default
    engines = {t.name: ProbeCounting(t.model_name) for t in spec.tiers}
    core = GatewayCore(spec, engines, {t.name: EstimatingCounter() for t in spec.tiers})
    clock = Ticking()
    core.readiness.clock = clock
    client = TestClient(create_app(core), raise_server_exceptions=False)
    for _ in range(50):
        assert client.get("/readyz").status_code == 200
    assert {n: e.probes for n, e in engines.items()} == {"small": 1, "large": 1}
    engines["large"].healthy_answer = False
    assert client.get("/readyz").status_code == 200  # still the cached answer
    clock.now += 1.0
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["tiers"] == {"small": True, "large": False}
    assert {n: e.probes for n, e in engines.items()} == {"small": 2, "large": 2}


async def test_concurrent_readyz_calls_share_one_probe() -> None:
    import asyncio

    from tierline.deployments.gateway.engines.watch import ReadinessCache

    cache, started, gate = ReadinessCache(1.0), [], asyncio.Event()

    async def probe() -> dict[str, bool]:
        started.append(1)
        await gate.wait()
        return {"small": True}

    calls = [asyncio.ensure_future(cache.get(probe)) for _ in range(100)]
    await asyncio.sleep(0.01)
    gate.set()
    assert all(r == {"small": True} for r in await asyncio.gather(*calls))
    assert len(started) == 1


class ProbeCounting(FakeEngine):
    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.probes = 0

    async def healthy(self, timeout_s: float) -> bool:
        self.probes += 1
        return await super().healthy(timeout_s)


def test_hf_counter_counts_the_chat_template(tmp_path: Path) -> None:
    build_tokenizer(tmp_path, 300)
    from transformers import AutoTokenizer

    counter = HFCounter(AutoTokenizer.from_pretrained(tmp_path))
    msgs = [{"role": "user", "content": "hello there"}]
    with_template = counter.chat(msgs)
    assert with_template > counter.text("hello there") >= 2
