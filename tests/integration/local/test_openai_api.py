"""The local cluster through the official openai client: both tiers, auto and pinned."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.conftest import AUTH
from tests.integration.local.conftest import Cluster

MSG = [{"role": "user", "content": "Name three colours."}]


def test_models_lists_every_tier_and_auto(cluster: Cluster) -> None:
    ids = [m.id for m in cluster.client().models.list()]
    assert ids == ["auto", "tiny-small", "tiny-large", "all-MiniLM-L6-v2"]  # + the embedder


def test_ready_and_healthy(cluster: Cluster) -> None:
    assert httpx.get(f"{cluster.url}/healthz").status_code == 200
    r = httpx.get(f"{cluster.url}/readyz", headers=AUTH)
    assert r.status_code == 200 and r.json()["tiers"] == {"small": True, "large": True}
    anonymous = httpx.get(f"{cluster.url}/readyz")
    assert anonymous.status_code == 200 and anonymous.json() == {"status": "ready"}


def test_auto_chat_non_streaming(cluster: Cluster) -> None:
    raw = cluster.client().chat.completions.with_raw_response.create(
        model="auto", messages=MSG, max_tokens=12, temperature=0
    )
    tier = raw.headers["x-tierline-tier"]
    assert raw.headers["x-tierline-route-reason"].startswith("auto:learned:")
    resp = raw.parse()
    assert resp.model == {"small": "tiny-small", "large": "tiny-large"}[tier]
    assert resp.choices[0].message.role == "assistant"
    assert resp.usage is not None
    assert 1 <= resp.usage.completion_tokens <= 12
    assert resp.usage.prompt_tokens > 0


def test_temperature_zero_is_deterministic(cluster: Cluster) -> None:
    c = cluster.client()
    texts = {
        c.chat.completions.create(model="tiny-large", messages=MSG, max_tokens=10, temperature=0)
        .choices[0]
        .message.content
        for _ in range(3)
    }
    assert len(texts) == 1


@pytest.mark.parametrize(
    ("model", "tier"), [("small", "small"), ("tiny-large", "large"), ("large", "large")]
)
def test_pinned_tier_by_name_or_served_name(cluster: Cluster, model: str, tier: str) -> None:
    raw = cluster.client().chat.completions.with_raw_response.create(
        model=model, messages=MSG, max_tokens=4
    )
    assert raw.headers["x-tierline-tier"] == tier
    assert raw.headers["x-tierline-route-reason"] == "pinned"


def test_auto_routes_hard_and_long_prompts_up(cluster: Cluster) -> None:
    c = cluster.client()
    hard = c.chat.completions.with_raw_response.create(
        model="auto",
        max_tokens=4,
        messages=[{"role": "user", "content": "Prove that there are infinitely many primes."}],
    )
    assert (hard.headers["x-tierline-tier"], hard.headers["x-tierline-route-reason"]) == (
        "large",
        "auto:learned:balanced",
    )
    # Longer than the small tier's 512-token context: only the large tier can take it,
    # whatever the scorer thinks of it.
    long = c.chat.completions.with_raw_response.create(
        model="auto",
        max_tokens=4,
        messages=[{"role": "user", "content": "colour " * 400}],
    )
    assert long.headers["x-tierline-tier"] == "large"


def test_streaming_chat_with_usage_and_done(cluster: Cluster) -> None:
    stream = cluster.client().chat.completions.create(
        model="auto",
        messages=MSG,
        max_tokens=8,
        stream=True,
        temperature=0,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    usage = [ch.usage for ch in chunks if ch.usage is not None]
    assert usage and usage[-1].completion_tokens <= 8
    assert isinstance(text, str)
    # on the wire: SSE ending in [DONE], with the tier headers
    body = {"model": "tiny-large", "messages": MSG, "max_tokens": 5, "stream": True}
    with httpx.stream(
        "POST", f"{cluster.url}/v1/chat/completions", json=body, headers=AUTH, timeout=60
    ) as r:
        assert r.headers["x-tierline-tier"] == "large"
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"


def test_completions_streaming_and_not(cluster: Cluster) -> None:
    c = cluster.client()
    resp = c.completions.create(model="auto", prompt="Once upon a time", max_tokens=6)
    assert resp.usage is not None and resp.usage.completion_tokens <= 6
    assert resp.choices[0].text is not None
    chunks = list(c.completions.create(model="small", prompt="Once", max_tokens=6, stream=True))
    assert any(ch.choices for ch in chunks)
