"""`/v1/embeddings` without RAG: served when the spec has an embedding model, listed in
`/v1/models`, quota-checked before the model runs and metered (tier `embeddings`)."""

from __future__ import annotations

import base64

import numpy as np
from fastapi.testclient import TestClient
from tierline.cluster.specfile import load_spec_text
from tierline.deployments.gateway import GatewayCore, create_app
from tierline.deployments.gateway.pipeline.tokens import EstimatingCounter
from tierline.deployments.gateway.quota.service import ledger_for
from tierline.rag.embed import Embedded

from tests.unit.fakes import FakeEngine
from tests.unit.test_tenant_limits import RecordingQuota

SPEC = """
tiers: [{name: small, model_source: org/small, max_context_tokens: 256}]
embeddings: {enabled: true, served_model_name: minilm, price_per_1m_input_tokens: 1000000}
gateway: {default_quota: {tokens_per_min: 100}}
"""


class FakeEmbedder:
    """An `Embedder` with fixed 3-dim unit vectors; one token per word."""

    def __init__(self) -> None:
        self.texts = 0

    async def embed(self, texts: list[str]) -> Embedded:
        self.texts += len(texts)
        vectors = np.array([[1.0, 0.0, 0.0] for _ in texts], dtype=np.float32)
        return Embedded(vectors, sum(len(t.split()) for t in texts))


def gateway(spec_text: str = SPEC, embedder: FakeEmbedder | None = None):
    spec = load_spec_text(spec_text)
    quota = RecordingQuota(ledger_for(spec.gateway))
    core = GatewayCore(
        spec,
        {t.name: FakeEngine(t.model_name) for t in spec.tiers},
        {t.name: EstimatingCounter() for t in spec.tiers},
        quota=quota,
    )
    client = TestClient(create_app(core, embedder=embedder), raise_server_exceptions=False)
    return client, core, quota


def test_embeddings_without_rag_are_served_charged_and_metered() -> None:
    embedder = FakeEmbedder()
    client, core, quota = gateway(embedder=embedder)
    r = client.post("/v1/embeddings", json={"input": ["a b", "c"], "model": "whatever"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model"] == "minilm" and [d["index"] for d in out["data"]] == [0, 1]
    assert out["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    assert quota.reserved == [2]  # estimated before the model ran: 1 + 1 tokens (bytes / 4)
    b64 = client.post("/v1/embeddings", json={"input": "x", "encoding_format": "base64"})
    raw = np.frombuffer(base64.b64decode(b64.json()["data"][0]["embedding"]), dtype="<f4")
    assert raw.tolist() == [1.0, 0.0, 0.0]
    m = core.metrics.recorder
    tokens = m.value(
        "ray_tierline_gateway_prompt_tokens_total", tier="embeddings", tenant="default"
    )  # type: ignore[attr-defined]
    assert tokens == 4
    cost = m.value(  # type: ignore[attr-defined]
        "ray_tierline_gateway_estimated_cost_usd_total", tier="embeddings", tenant="default"
    )
    assert cost == 4.0  # $1M per 1M tokens
    over = client.post("/v1/embeddings", json={"input": ["a" * 400]})
    assert over.status_code == 429 and embedder.texts == 3  # refused before embedding
    cards = {c["id"]: c for c in client.get("/v1/models").json()["data"]}
    assert cards["minilm"]["type"] == "embedding" and cards["minilm"]["dimensions"] == 384
    assert client.post("/v1/embeddings", json={"input": []}).status_code == 400


class UncountedEmbedder(FakeEmbedder):
    """An `Embedder` that does not count model tokens (`Embedded.tokens` None)."""

    async def embed(self, texts: list[str]) -> Embedded:
        return Embedded((await super().embed(texts)).vectors, None)


def test_an_embedder_without_a_token_count_is_charged_the_estimate() -> None:
    client, _, quota = gateway(embedder=UncountedEmbedder())
    r = client.post("/v1/embeddings", json={"input": ["a" * 40, "b"]})
    assert r.status_code == 200, r.text
    estimate = EstimatingCounter().text("a" * 40) + EstimatingCounter().text("b")
    assert quota.reserved == [estimate]
    assert r.json()["usage"] == {"prompt_tokens": estimate, "total_tokens": estimate}
    assert [d["embedding"] for d in r.json()["data"]] == [[1.0, 0.0, 0.0]] * 2


def test_no_embedding_model_no_route_and_no_card() -> None:
    client, _, _ = gateway("tiers: [{name: s, model_source: o/s, max_context_tokens: 64}]")
    assert client.post("/v1/embeddings", json={"input": "x"}).status_code == 404
    types = {c.get("type") for c in client.get("/v1/models").json()["data"]}
    assert "embedding" not in types
