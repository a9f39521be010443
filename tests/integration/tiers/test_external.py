"""External tiers against a real vLLM OpenAI server on loopback and broken stand-ins.

Each failure must map to a clear OpenAI-style error or the fallback tier, fast: the
openai client's own timeout (60 s) is the "never a hang" bound here."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.integration.conftest import AUTH
from tests.integration.tiers.conftest import RETRY_AFTER, UPSTREAM_MODEL, TiersCluster

MESSAGES = [{"role": "user", "content": "Say something."}]


def test_external_tier_answers_like_the_provider(cluster: TiersCluster) -> None:
    raw = cluster.client().chat.completions.with_raw_response.create(
        model="ext", messages=MESSAGES, max_tokens=8, temperature=0
    )
    assert raw.headers["x-tierline-tier"] == "ext"
    ours = raw.parse()
    direct = cluster.upstream().chat.completions.create(
        model=UPSTREAM_MODEL, messages=MESSAGES, max_tokens=8, temperature=0
    )
    assert ours.choices[0].message.content == direct.choices[0].message.content
    assert ours.usage is not None and ours.usage.total_tokens == direct.usage.total_tokens


def test_external_tier_streams(cluster: TiersCluster) -> None:
    stream = cluster.client().completions.create(
        model="ext",
        prompt="Once upon",
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_auto_routing_sends_hard_prompts_to_the_external_tier(cluster: TiersCluster) -> None:
    raw = cluster.client().chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": "Prove that there are infinitely many primes."}],
        max_tokens=4,
    )
    assert raw.headers["x-tierline-tier"] == "ext"
    assert raw.headers["x-tierline-route-reason"].startswith("auto:")


def test_models_and_readiness_include_external_tiers(cluster: TiersCluster) -> None:
    cards = {m.id: m for m in cluster.client().models.list().data}
    assert getattr(cards["ext"], "external", None) is True
    ready = httpx.get(f"{cluster.url}/readyz", headers=AUTH, timeout=30)
    assert ready.status_code == 200  # broken providers do not gate the gateway
    assert ready.json()["tiers"]["ext"] is True


def post(cluster: TiersCluster, model: str) -> httpx.Response:
    body = {"model": model, "messages": MESSAGES, "max_tokens": 4}
    return httpx.post(f"{cluster.url}/v1/chat/completions", json=body, headers=AUTH, timeout=60)


def assert_error(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == code, err


def test_refused_connection_is_a_502_without_fallback(cluster: TiersCluster) -> None:
    resp = post(cluster, "ext-refused")
    assert_error(resp, 502, "upstream_unreachable")
    assert "ext-refused" in resp.json()["error"]["message"]
    # Now marked down: the next pinned request is refused by the router at once.
    again = post(cluster, "ext-refused")
    assert again.status_code in (502, 503) and again.headers.get("retry-after")


def test_refused_connection_goes_to_the_fallback_tier(cluster: TiersCluster) -> None:
    resp = post(cluster, "ext-refused-fb")
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-tierline-tier"] == "small"
    assert resp.headers["x-tierline-route-reason"].endswith("+fallback")


def test_silent_provider_times_out_with_504(cluster: TiersCluster) -> None:
    resp = post(cluster, "ext-silent")  # timeout_s 3; the client would wait 60
    assert_error(resp, 504, "upstream_timeout")
    stream = httpx.post(
        f"{cluster.url}/v1/chat/completions",
        json={"model": "ext-silent", "messages": MESSAGES, "max_tokens": 4, "stream": True},
        headers=AUTH,
        timeout=60,
    )
    assert_error(stream, 504, "upstream_timeout")


def test_upstream_429_passes_through_with_retry_after(cluster: TiersCluster) -> None:
    resp = post(cluster, "ext-429")
    assert_error(resp, 429, "upstream_rate_limited")
    assert resp.headers["retry-after"] == RETRY_AFTER
    with pytest.raises(openai.RateLimitError):
        cluster.client().chat.completions.create(model="ext-429", messages=MESSAGES, max_tokens=4)


def test_upstream_429_goes_to_the_fallback_tier(cluster: TiersCluster) -> None:
    resp = post(cluster, "ext-429-fb")
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-tierline-tier"] == "small"
