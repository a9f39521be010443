"""The request path every deployment mode runs: the gateway replica itself answers on the
spec's port (Ray Serve direct ingress, no proxy hop), its engine handles talk gRPC, and
the API behaves as a client expects over it."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
from openai import OpenAI

from tests.integration.conftest import API_KEY, AUTH, listener
from tests.integration.local.conftest import Cluster, serve_log_records

MSG = [{"role": "user", "content": "Name a colour."}]


def test_the_gateway_replica_serves_the_spec_port_itself(cluster: Cluster) -> None:
    url = cluster.url
    port = int(url.rsplit(":", 1)[1])
    owner = listener(port)
    assert "ServeReplica" in owner and "gateway" in owner, owner
    assert "ProxyActor" not in owner


def test_auth_still_guards_every_route(cluster: Cluster) -> None:
    assert httpx.get(f"{cluster.url}/healthz", timeout=30).status_code == 200
    r = httpx.post(f"{cluster.url}/v1/chat/completions", json={"model": "auto", "messages": MSG})
    assert r.status_code == 401 and r.json()["error"]["type"]
    models = httpx.get(f"{cluster.url}/v1/models", headers=AUTH, timeout=30).json()
    assert {"auto", "tiny-small", "tiny-large"} <= {m["id"] for m in models["data"]}


@pytest.mark.parametrize(("model", "tier"), [("small", "small"), ("tiny-large", "large")])
def test_each_tier_answers_over_grpc(cluster: Cluster, model: str, tier: str) -> None:
    client = OpenAI(base_url=f"{cluster.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=MSG, max_tokens=6, temperature=0
    )
    assert raw.headers["x-tierline-tier"] == tier
    resp = raw.parse()
    assert resp.usage is not None and 1 <= resp.usage.completion_tokens <= 6


def test_auto_streaming_ends_with_done(cluster: Cluster) -> None:
    body = {"model": "auto", "messages": MSG, "max_tokens": 8, "stream": True}
    with httpx.stream(
        "POST", f"{cluster.url}/v1/chat/completions", json=body, headers=AUTH, timeout=120
    ) as r:
        assert r.status_code == 200
        assert r.headers["x-tierline-route-reason"].startswith("auto:")
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert len(lines) >= 3  # tokens arrive as separate events, then [DONE]
    assert lines[-1] == "data: [DONE]"


def _relay_records(request_id: str) -> list[dict[str, object]]:
    return [
        r
        for r in serve_log_records()
        if r.get("request_id") == request_id
        and r.get("event") == "relay"
        and "_tier-" in r["_file"]
    ]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "auto", "messages": MSG, "max_tokens": 6}),
        ("/v1/completions", {"model": "tiny-small", "prompt": "Once", "max_tokens": 6}),
    ],
)
def test_generation_takes_the_relay_to_the_engine_replicas_own_app(
    cluster: Cluster, path: str, body: dict[str, object], stream: bool
) -> None:
    """The gateway decides, then the engine replica's own vLLM app answers over its relay
    port: the replica's access record for this request id says so (a Serve handle call
    would be logged as `CALL chat`/`CALL completions` instead)."""
    rid = f"relay-{uuid.uuid4().hex[:10]}"
    headers = {**AUTH, "x-request-id": rid}
    r = httpx.post(
        f"{cluster.url}{path}", json={**body, "stream": stream}, headers=headers, timeout=120
    )
    assert r.status_code == 200, r.text
    if stream:
        assert r.text.rstrip().endswith("data: [DONE]")
        assert '"usage"' not in r.text  # the engine was asked for it; the client was not
    else:
        assert r.json()["usage"]["completion_tokens"] >= 1
    deadline = time.monotonic() + 30
    while not (found := _relay_records(rid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert found, f"no relay access record for {rid} in any engine replica's log"
    assert found[0]["status"] == 200 and "OK" in str(found[0]["message"])
    calls = [
        r
        for r in serve_log_records()
        if r.get("request_id") == rid
        and str(r.get("message", "")).startswith("CALL ")
        and "_tier-" in r["_file"]
    ]
    assert calls == [], calls
