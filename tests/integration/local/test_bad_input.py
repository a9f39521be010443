"""Bad input against the real cluster: 4xx with an OpenAI-style body, and it keeps serving."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.integration.conftest import AUTH
from tests.integration.local.conftest import Cluster

OK = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

CASES = [
    ("malformed-json", b'{"model": "auto", "messages": [', 400),
    ("missing-messages", json.dumps({"model": "auto"}).encode(), 400),
    ("negative-max-tokens", json.dumps({**OK, "max_tokens": -5}).encode(), 400),
    ("unknown-model", json.dumps({**OK, "model": "gpt-17"}).encode(), 404),
    (
        "over-every-context",
        json.dumps({**OK, "messages": [{"role": "user", "content": "word " * 3000}]}).encode(),
        400,
    ),
    (
        "over-pinned-context",
        json.dumps(
            {**OK, "model": "small", "messages": [{"role": "user", "content": "word " * 700}]}
        ).encode(),
        400,
    ),
    ("bad-temperature", json.dumps({**OK, "temperature": "hot"}).encode(), 400),
    (
        "over-top-logprobs-cap",
        json.dumps({**OK, "model": "small", "logprobs": True, "top_logprobs": 10_000}).encode(),
        400,
    ),
    (  # within the gateway's caps; only the engine knows its vocabulary
        "engine-rejects-token-id",
        json.dumps({**OK, "model": "small", "logit_bias": {"99999": 5}}).encode(),
        400,
    ),
]


@pytest.mark.parametrize(("name", "body", "status"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(cluster: Cluster, name: str, body: bytes, status: int) -> None:
    r = httpx.post(
        f"{cluster.url}/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json", **AUTH},
        timeout=60,
    )
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"]
    ok = httpx.post(f"{cluster.url}/v1/chat/completions", json=OK, headers=AUTH, timeout=60)
    assert ok.status_code == 200


def test_openai_client_sees_typed_errors(cluster: Cluster) -> None:
    c = cluster.client()
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="nope", messages=OK["messages"], max_tokens=2)
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(
            model="small", max_tokens=2, messages=[{"role": "user", "content": "word " * 700}]
        )
    assert isinstance(err.value.body, dict)
    assert err.value.body["code"] == "context_length_exceeded"
