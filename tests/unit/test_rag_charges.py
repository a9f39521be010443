"""The RAG routes settle to what the embedding model counted (issue 27: "every route
settles to what was served, using the embedder's own counts").

An ingest and a search reserve a bytes / 4 estimate before any work (429 when over) and
are then charged the tokens the embedder reported: for an ingest, its chunks' tokens;
for a search, its query's. An embedder that does not count leaves the estimate charged.
The real gateway app over a real `RagCore`, its embedder an honest counting fake.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tierline.cluster.spec import RagSpec
from tierline.cluster.specfile import load_spec_text
from tierline.deployments.gateway import GatewayCore, create_app
from tierline.deployments.gateway.pipeline.tokens import EstimatingCounter
from tierline.deployments.gateway.quota.service import LocalQuota, QuotaLedger, ledger_for
from tierline.deployments.gateway.rag_routes import InProcessRagClient
from tierline.rag.service import RagCore, RagSettings
from tierline.rag.store import MemoryChunkStore

from tests.unit.fakes import FakeEngine
from tests.unit.rag_fakes import DIM, CountingEmbedder, HashEmbedder, word_offsets

SPEC = """
tiers: [{name: small, model_source: org/small, max_context_tokens: 4096}]
gateway:
  max_body_bytes: 4194304
  default_quota: {tokens_per_min: 10000000}
rag: {enabled: true}
"""
TENANT = "default"  # no keys: every request is the default tenant's


def gateway(embedder: HashEmbedder) -> tuple[httpx.AsyncClient, QuotaLedger]:
    spec = load_spec_text(SPEC)
    ledger = ledger_for(spec.gateway)
    quota = LocalQuota(ledger, lambda: 0.0)  # one window: nothing expires
    core = GatewayCore(spec, {"small": FakeEngine("s")}, {"small": EstimatingCounter()}, quota)
    rag_settings = RagSettings(dim=DIM, chunk_tokens=8, chunk_overlap_tokens=2)
    rag_core = RagCore(rag_settings, MemoryChunkStore(), embedder, word_offsets)
    asyncio.run(rag_core.start())
    app = create_app(core, None, InProcessRagClient(rag_core, embedder, "embedder"))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")
    return client, ledger


async def charged_for(
    client: httpx.AsyncClient, ledger: QuotaLedger, path: str, body: dict[str, Any]
) -> tuple[int, httpx.Response]:
    """Tokens the ledger charged the tenant for one request, and its answer."""
    before = ledger._tenants[TENANT].tokens_used() if TENANT in ledger._tenants else 0
    r = await client.post(path, json=body)
    return ledger._tenants[TENANT].tokens_used() - before, r


def estimate(*texts: str) -> int:
    return sum(EstimatingCounter().text(t) for t in texts)


DOCS = [
    {"id": "a", "text": "a b c d e f g h i j k l m n o p q r s t"},
    {"id": "b", "text": "x, y; z. w v u!"},
]
QUERY = "a b c ?"


def test_ingest_and_search_are_charged_the_embedders_own_count() -> None:
    """Before: an ingest was charged its documents' bytes / 4 and a search its query's."""
    embedder = CountingEmbedder()
    client, ledger = gateway(embedder)

    async def run() -> None:
        async with client:
            assert (await client.post("/v1/rag/collections", json={"name": "kb"})).is_success
            counted = embedder.tokens
            charged, r = await charged_for(
                client, ledger, "/v1/rag/collections/kb/documents", {"documents": DOCS}
            )
            assert r.status_code == 200, r.text
            embedded = embedder.tokens - counted  # every chunk, overlaps included
            assert embedded != estimate(*(d["text"] for d in DOCS))
            assert charged == embedded
            assert r.json()["usage"] == {"prompt_tokens": embedded, "total_tokens": embedded}
            assert "embedded_tokens" not in r.json()

            charged, r = await charged_for(
                client, ledger, "/v1/rag/collections/kb/search", {"query": QUERY, "top_k": 2}
            )
            assert r.status_code == 200, r.text
            assert r.json()["results"]
            assert estimate(QUERY) == 2 and CountingEmbedder.count(QUERY) == 6
            retrieval = 2 * RagSpec().chunk_tokens  # top_k chunks: the most it returns
            assert charged == 6 + retrieval
            assert r.json()["usage"] == {
                "prompt_tokens": 6,
                "retrieval_tokens": retrieval,
                "total_tokens": 6 + retrieval,
            }
            assert ledger.in_flight(TENANT) == 0

    asyncio.run(run())


def test_an_embedder_without_a_count_leaves_the_estimate_charged() -> None:
    client, ledger = gateway(HashEmbedder())  # `Embedded.tokens` is None

    async def run() -> None:
        async with client:
            assert (await client.post("/v1/rag/collections", json={"name": "kb"})).is_success
            charged, r = await charged_for(
                client, ledger, "/v1/rag/collections/kb/documents", {"documents": DOCS}
            )
            assert r.status_code == 200, r.text
            assert charged == estimate(*(d["text"] for d in DOCS))
            assert r.json()["usage"]["total_tokens"] == charged
            charged, r = await charged_for(
                client, ledger, "/v1/rag/collections/kb/search", {"query": QUERY}
            )
            assert r.status_code == 200
            assert charged == estimate(QUERY) + 5 * RagSpec().chunk_tokens  # top_k 5
            assert r.json()["usage"]["total_tokens"] == charged

    asyncio.run(run())


def test_a_failed_ingest_is_charged_its_reservation() -> None:
    """An ingest the core refuses after admission (a document with no text to index)
    embeds nothing, settles nothing, and keeps its reservation, as before."""
    embedder = CountingEmbedder()
    client, ledger = gateway(embedder)
    docs = [{"id": "a", "text": "a b c"}, {"id": "blank", "text": "   "}]

    async def run() -> None:
        async with client:
            assert (await client.post("/v1/rag/collections", json={"name": "kb"})).is_success
            charged, r = await charged_for(
                client, ledger, "/v1/rag/collections/kb/documents", {"documents": docs}
            )
            assert r.status_code == 400, r.text
            assert embedder.tokens == 0 and charged == estimate(*(d["text"] for d in docs))
            assert ledger.in_flight(TENANT) == 0

    asyncio.run(run())


WORDS = st.text(alphabet="abcdefghij,.!? ", min_size=1, max_size=12).filter(str.strip)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    texts=st.lists(st.lists(WORDS, min_size=1, max_size=30).map(" ".join), min_size=1, max_size=4),
    query=st.lists(WORDS, min_size=1, max_size=6).map(" ".join),
)
def test_charges_match_the_count_over_generated_documents(texts: list[str], query: str) -> None:
    embedder = CountingEmbedder()
    client, ledger = gateway(embedder)
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)]

    async def run() -> None:
        async with client:
            assert (await client.post("/v1/rag/collections", json={"name": "kb"})).is_success
            charged, r = await charged_for(
                client, ledger, "/v1/rag/collections/kb/documents", {"documents": docs}
            )
            assert r.status_code == 200, r.text
            assert charged == embedder.tokens == r.json()["usage"]["total_tokens"]
            counted = embedder.tokens
            charged, r = await charged_for(
                client, ledger, "/v1/rag/collections/kb/search", {"query": query}
            )
            assert r.status_code == 200, r.text
            assert embedder.tokens - counted == CountingEmbedder.count(query)
            assert charged == CountingEmbedder.count(query) + 5 * RagSpec().chunk_tokens

    asyncio.run(run())
