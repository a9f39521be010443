"""The request path every deployment mode runs: the gateway replica itself answers on the
spec's port (Ray Serve direct ingress, no proxy hop), its engine handles talk gRPC, and
the API behaves as a client expects over it."""

from __future__ import annotations

import httpx
import psutil
import pytest
from openai import OpenAI

from tests.integration.conftest import API_KEY, AUTH
from tests.integration.local.conftest import Cluster

MSG = [{"role": "user", "content": "Name a colour."}]


def _listener(port: int) -> str:
    """The command line of the process listening on `port`."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return " ".join(psutil.Process(conn.pid).cmdline())
    raise AssertionError(f"nothing listens on port {port}")


def test_the_gateway_replica_serves_the_spec_port_itself(cluster: Cluster) -> None:
    url = cluster.url
    port = int(url.rsplit(":", 1)[1])
    owner = _listener(port)
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
