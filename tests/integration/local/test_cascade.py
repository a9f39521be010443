"""The cascade on the real local cluster: vLLM's log-probabilities decide an escalation.

The tiny random-weight models are unsure of every token (mean log-probability far below
0), so a request's own threshold decides the outcome: 0 escalates every cheap answer, and
the integration spec's default (-1e9) keeps it. Both calls' tokens are in `usage`.
"""

from __future__ import annotations

from typing import Any

from tests.integration.local.conftest import Cluster
from tests.integration.local.test_learned_routing import EASY

HEADER = "x-tierline-cascade-threshold"


def _ask(cluster: Cluster, threshold: str | None, **kw: Any) -> tuple[dict[str, str], dict]:
    raw = cluster.client().chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": EASY[1]}],
        max_tokens=6,
        temperature=0,
        extra_headers={HEADER: threshold} if threshold is not None else None,
        **kw,
    )
    return dict(raw.headers), raw.parse().model_dump()


def test_an_unsure_answer_escalates_and_usage_counts_both_tiers(cluster: Cluster) -> None:
    headers, body = _ask(cluster, "0")
    assert headers["x-tierline-tier"] == "large"
    assert headers["x-tierline-route-reason"].startswith("auto:learned:balanced")
    assert headers["x-tierline-route-reason"].endswith("+cascade:small>large")
    steps = body["cascade"]["steps"]
    assert [s["tier"] for s in steps] == ["small", "large"]
    assert all(s["mean_logprob"] is not None and s["mean_logprob"] < 0 for s in steps)
    assert all(s["usage"]["completion_tokens"] > 0 for s in steps)
    for field in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert body["usage"][field] == sum(s["usage"][field] for s in steps)
    assert body["model"] == "tiny-large"
    assert body["choices"][0]["logprobs"] is None  # asked for by the gateway, not the client


def test_a_threshold_below_the_answer_keeps_the_cheap_tier(cluster: Cluster) -> None:
    for threshold in (None, "-1000"):
        headers, body = _ask(cluster, threshold)
        assert headers["x-tierline-tier"] == "small"
        assert "cascade" not in headers["x-tierline-route-reason"]
        (step,) = body["cascade"]["steps"]
        assert step["tier"] == "small" and step["mean_logprob"] > -1000
        assert body["usage"]["total_tokens"] == step["usage"]["total_tokens"]


def test_client_logprobs_survive_and_streams_never_cascade(cluster: Cluster) -> None:
    _, body = _ask(cluster, "-1000", logprobs=True)
    assert body["choices"][0]["logprobs"]["content"]
    stream = cluster.client().chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": EASY[1]}],
        max_tokens=4,
        stream=True,
        extra_headers={HEADER: "0"},
    )
    chunks = list(stream)
    assert chunks and all("cascade" not in (c.model_extra or {}) for c in chunks)
