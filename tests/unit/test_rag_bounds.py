"""RAG work is counted and charged before it is done (issue 27).

- An upload's documents are counted against `rag.max_documents_per_request` and charged
  to the tenant's quota before any file is parsed (parsing takes a shared worker).
- A grounded chat's retrieved context is trimmed with a logarithmic number of prompt
  counts, not one count per dropped chunk.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import yaml
from fastapi import FastAPI
from hypothesis import given, settings
from hypothesis import strategies as st
from tierline.cluster.spec import GatewaySpec, RagSpec
from tierline.cluster.specfile import load_spec_text
from tierline.deployments.errors import APIError, error_response
from tierline.deployments.gateway import GatewayCore, create_app
from tierline.deployments.gateway.embeddings import EmbeddingsCard, embeddings_router
from tierline.deployments.gateway.pipeline.schemas import ChatCompletionBody
from tierline.deployments.gateway.pipeline.tokens import EstimatingCounter
from tierline.deployments.gateway.quota.service import LocalQuota, QuotaHold, ledger_for
from tierline.deployments.gateway.rag_routes import InProcessRagClient, ground_chat, rag_router
from tierline.rag.embed import Embedded
from tierline.rag.prompt import grounded_messages
from tierline.rag.service import RagCore, RagSettings
from tierline.rag.store import MemoryChunkStore

from tests.unit.fakes import FakeEngine
from tests.unit.rag_fakes import DIM, HashEmbedder, word_offsets

SPEC = """
tiers:
  - name: small
    model_source: org/small
    max_context_tokens: 4096
gateway:
  max_body_bytes: 4194304
  default_quota:
    requests_per_min: {rpm}
rag:
  enabled: true
  max_documents_per_request: 3
"""


def gateway(rpm: int) -> httpx.AsyncClient:
    spec = load_spec_text(SPEC.format(rpm=rpm))
    quota = LocalQuota(ledger_for(spec.gateway), lambda: 0.0)
    core = GatewayCore(spec, {"small": FakeEngine("s")}, {"small": EstimatingCounter()}, quota)
    embedder = HashEmbedder()
    settings_ = RagSettings(dim=DIM, chunk_tokens=50, chunk_overlap_tokens=5)
    rag = InProcessRagClient(
        RagCore(settings_, MemoryChunkStore(), embedder, word_offsets), embedder
    )
    app = create_app(core, None, rag)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")


# Files no parser accepts: parsing one answers 415, so a 415 means a parse was tried.
UNPARSEABLE = [("file", (f"f{i}.exe", b"MZ")) for i in range(20)]


def test_an_upload_over_quota_is_refused_before_any_file_is_parsed() -> None:
    """Before: a tenant over its quota had its files parsed, then got its 429."""

    async def run() -> httpx.Response:
        async with gateway(rpm=1) as client:
            assert (
                await client.post("/v1/rag/collections", json={"name": "kb"})
            ).status_code == 201
            return await client.post("/v1/rag/collections/kb/documents", files=UNPARSEABLE[:3])

    r = asyncio.run(run())
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "quota_exceeded"


def test_an_upload_with_too_many_files_is_refused_before_any_is_parsed() -> None:
    async def run() -> httpx.Response:
        async with gateway(rpm=100) as client:
            await client.post("/v1/rag/collections", json={"name": "kb"})
            return await client.post("/v1/rag/collections/kb/documents", files=UNPARSEABLE[:4])

    r = asyncio.run(run())
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "too_many_documents" and "rag.max_documents_per_request" in err["message"]


def test_a_multipart_upload_stops_being_read_at_the_first_file_over_the_cap() -> None:
    """Before: all of an upload's parts were read and taken apart (1,000 files: ~0.7 s of
    the gateway's loop, bench/hostile_bench.py) before the count was checked."""
    boundary = "b0undary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f{i}.txt"\r\n'
        f"Content-Type: text/plain\r\n\r\n{'x' * 64}\r\n".encode()
        for i in range(200)
    ] + [f"--{boundary}--\r\n".encode()]
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for part in parts:
            sent += 1
            yield part

    async def run() -> httpx.Response:
        async with gateway(rpm=100) as client:
            await client.post("/v1/rag/collections", json={"name": "kb"})
            return await client.post(
                "/v1/rag/collections/kb/documents",
                content=body(),
                headers={"content-type": f"multipart/form-data; boundary={boundary}"},
            )

    r = asyncio.run(run())
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "too_many_documents"
    assert sent < 10, f"{sent} of {len(parts)} parts were read before the refusal"


def hits(n: int) -> list[dict[str, Any]]:
    return [
        {"document_id": f"d{i}", "chunk_id": f"d{i}:0", "score": 1 - i / 100, "text": "w " * 40}
        for i in range(n)
    ]


class Retrieved:
    """A `RagClient` whose search returns the given hits (the rest is not used here)."""

    model = "fake"

    def __init__(self, found: list[dict[str, Any]]) -> None:
        self.found = found

    async def search(self, tenant: str, name: str, query: Any, top_k: Any, filter: Any) -> Any:
        return list(self.found)

    async def search_counted(
        self, tenant: str, name: str, query: Any, top_k: Any, filter: Any
    ) -> Any:
        return await self.search(tenant, name, query, top_k, filter), None


def trimmed(found: int, room: int) -> tuple[int, int]:
    """(hits kept, prompt counts made) for a grounded chat whose prompt fits when its
    byte length is at most `room`."""
    counts = 0
    counter = EstimatingCounter()

    async def fits(messages: list[dict[str, Any]]) -> bool:
        nonlocal counts
        counts += 1
        return counter.chat(messages) <= room

    body = ChatCompletionBody.model_validate(
        {
            "model": "auto",
            "messages": [{"role": "user", "content": "q"}],
            "rag": {"collection": "kb"},
        }
    )
    client: Any = Retrieved(hits(found))
    _, cites = asyncio.run(ground_chat(client, body, "t", found, None, fits))
    assert cites is not None
    return len(cites), counts


def linear(found: int, room: int) -> int:
    """Hits kept when trimming one at a time (the reference)."""
    counter = EstimatingCounter()
    messages = [{"role": "user", "content": "q"}]
    kept = hits(found)
    while kept and counter.chat(grounded_messages(messages, kept)) > room:
        kept = kept[:-1]
    return len(kept)


def test_trimming_counts_the_prompt_a_logarithmic_number_of_times() -> None:
    """Before: 50 hits of which 3 fit took 48 counts; a conversation too long even without
    context took 51 (6.9 s with a real tokenizer on a 100 kB message)."""
    assert trimmed(50, 10**9) == (50, 1)  # everything fits: one count
    kept, counts = trimmed(50, 260)
    assert kept == linear(50, 260) and counts <= 2 + 6
    assert trimmed(50, 5) == (0, 2)  # nothing fits: two counts


@settings(max_examples=200, deadline=None)
@given(found=st.integers(0, 64), room=st.integers(0, 2000))
def test_trimming_keeps_what_trimming_one_at_a_time_keeps(found: int, room: int) -> None:
    kept, counts = trimmed(found, room)
    assert kept == linear(found, room)
    assert counts <= 3 + max(found, 1).bit_length()


# -- embeddings and RAG routes hold max_concurrent and settle to the model's count -----------------
class SlowEmbedder:
    """An `Embedder` that waits for `gate` and reports `tokens_each` model tokens a text
    (a real model's count, not the gateway's bytes / 4 estimate)."""

    def __init__(self, gate: asyncio.Event, tokens_each: int) -> None:
        self.gate = gate
        self.tokens_each = tokens_each

    async def embed(self, texts: list[str]) -> Embedded:
        await self.gate.wait()
        vectors = np.array([[1.0, 0.0] for _ in texts], dtype=np.float32)
        return Embedded(vectors, self.tokens_each * len(texts))


def held_app(quota_yaml: str, embedder: SlowEmbedder) -> tuple[httpx.AsyncClient, Any]:

    gw = GatewaySpec.model_validate({"default_quota": yaml.safe_load(quota_yaml)})
    ledger = ledger_for(gw)
    hold = QuotaHold(LocalQuota(ledger, lambda: 0.0), lambda tenant: gw.default_quota)
    app = FastAPI()

    async def answer(request: Any, err: Any) -> Any:
        return error_response(err)

    app.add_exception_handler(APIError, answer)
    app.include_router(embeddings_router(embedder, EmbeddingsCard("e", 2), hold=hold))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw"), ledger


def test_embeddings_hold_a_concurrent_request_while_the_model_runs() -> None:
    """Before: /v1/embeddings charged and released at once, so max_concurrent never held."""

    async def run() -> tuple[int, int]:
        gate = asyncio.Event()
        client, _ = held_app("{max_concurrent: 1}", SlowEmbedder(gate, 3))
        async with client:
            first = asyncio.create_task(client.post("/v1/embeddings", json={"input": "a b"}))
            await asyncio.sleep(0.2)
            second = await client.post("/v1/embeddings", json={"input": "c"})
            gate.set()
            return (await first).status_code, second.status_code

    assert asyncio.run(run()) == (200, 429)


def test_embeddings_are_charged_the_models_own_token_count() -> None:
    async def run() -> int:
        gate = asyncio.Event()
        gate.set()
        client, ledger = held_app("{tokens_per_min: 100000}", SlowEmbedder(gate, 40))
        async with client:
            r = await client.post("/v1/embeddings", json={"input": ["x", "y"]})
            assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 80
        return ledger._tenants["default"].tokens_used()

    assert asyncio.run(run()) == 80  # not the estimate (2 tokens)


class GatedRag(Retrieved):
    """A `RagClient` whose search waits for `gate`; ingest and create answer at once."""

    def __init__(self, gate: asyncio.Event) -> None:
        super().__init__(hits(1))
        self.gate = gate
        self.ingested: list[Any] = []

    async def search(self, tenant: str, name: str, query: Any, top_k: Any, filter: Any) -> Any:
        await self.gate.wait()
        return await super().search(tenant, name, query, top_k, filter)

    async def create_collection(self, tenant: str, name: str) -> dict[str, Any]:
        return {"name": name, "created": True}

    async def ingest(self, tenant: str, name: str, documents: list[dict[str, Any]]) -> Any:
        self.ingested.append(documents)
        return {"collection": name, "chunks": len(documents)}


def test_rag_routes_hold_a_concurrent_request_until_their_work_is_done() -> None:
    async def run() -> tuple[list[int], int]:
        gate = asyncio.Event()
        gw = GatewaySpec.model_validate({"default_quota": {"max_concurrent": 1}})
        ledger = ledger_for(gw)
        hold = QuotaHold(LocalQuota(ledger, lambda: 0.0), lambda tenant: gw.default_quota)
        app = FastAPI()

        async def answer(request: Any, err: Any) -> Any:
            return error_response(err)

        app.add_exception_handler(APIError, answer)
        rag: Any = GatedRag(gate)
        app.include_router(rag_router(rag, None, hold=hold))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            search = {"query": "q"}
            first = asyncio.create_task(client.post("/v1/rag/collections/kb/search", json=search))
            await asyncio.sleep(0.2)
            docs = {"documents": [{"id": "a", "text": "some words"}]}
            busy = [
                (await client.post("/v1/rag/collections/kb/search", json=search)).status_code,
                (await client.post("/v1/rag/collections/kb/documents", json=docs)).status_code,
            ]
            gate.set()
            busy.append((await first).status_code)
            busy.append(
                (await client.post("/v1/rag/collections/kb/documents", json=docs)).status_code
            )
        return busy, ledger.in_flight("default")

    codes, in_flight = asyncio.run(run())
    assert codes == [429, 429, 200, 200] and in_flight == 0


def test_a_long_query_is_refused_and_a_grounded_chat_retrieves_for_its_head() -> None:
    """Before: a 100 kB message was embedded and BM25-tokenised whole, on every grounded
    chat (the embedding model reads only its first few hundred tokens of it)."""
    cap = RagSettings().max_query_chars
    assert cap == RagSpec().max_query_chars == 4096  # one default, in the spec

    async def search_route() -> tuple[int, int]:
        async with gateway(rpm=1000) as c:
            r = await c.post("/v1/rag/collections", json={"name": "kb"})
            assert r.status_code in (200, 201), r.text
            long = await c.post("/v1/rag/collections/kb/search", json={"query": "w " * cap})
            short = await c.post("/v1/rag/collections/kb/search", json={"query": "w " * 100})
            return long.status_code, short.status_code

    long_status, short_status = asyncio.run(search_route())
    assert (long_status, short_status) == (400, 200)

    queries: list[str] = []

    class Recorded(Retrieved):
        async def search(self, tenant: str, name: str, query: Any, top_k: Any, filter: Any) -> Any:
            queries.append(query)
            return await super().search(tenant, name, query, top_k, filter)

    message = "question " + "w " * 60_000
    body = ChatCompletionBody.model_validate(
        {
            "model": "auto",
            "messages": [{"role": "user", "content": message}],
            "rag": {"collection": "kb"},
        }
    )
    client = Recorded(hits(2))
    grounded, cites = asyncio.run(ground_chat(client, body, "t", 2, None, None, cap))  # type: ignore[arg-type]
    assert queries == [message[:cap]]
    assert cites is not None and len(cites) == 2
    assert message in str(grounded.messages[-1].content)  # the model still gets all of it
