"""Issue 16, the gateway's side, continued from `test_tenant_limits.py`: external tiers get
an allow-list and their errors name no URL or key; RAG and embeddings count against the
tenant; a client that leaves under a cancelled task group frees its slot and ticket."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
from tierline.cluster.spec import RagSpec
from tierline.cluster.specfile import load_spec_text
from tierline.deployments.gateway.engines.external import forwarded_body
from tierline.rag.embed import Embedded

from tests.unit import test_external as ext
from tests.unit.test_gateway import assert_openai_error
from tests.unit.test_tenant_limits import (
    CountingRag,
    client_of,
    core_with,
    stream_body,
    trickling_core,
)


# -- C: external tiers get an allow-list, and their errors name no URL or key --------------------
def test_an_external_tier_gets_only_allow_listed_fields() -> None:
    seen: list[httpx.Request] = []
    client = ext.client_for(ext.upstream(seen))
    body = {
        **ext.CHAT,
        "stream": True,
        "stream_options": {"include_usage": False, "continuous_usage_stats": True},
        "store": True,
        "service_tier": "priority",
        "metadata": {"a": "b"},
        "user": "someone",
        "temperature": 0.5,
        "top_k": 5,
    }
    asyncio.run(ext.collect(client, body))
    sent = json.loads(seen[0].content)
    assert set(sent) == {
        "model",
        "messages",
        "max_tokens",
        "stream",
        "stream_options",
        "temperature",
    }
    assert sent["stream_options"] == {"include_usage": True}
    assert forwarded_body({"stream_options": {"include_usage": False}}) == {}


def test_the_spec_extends_the_allow_list() -> None:
    text = ext.spec_text().replace(
        "      max_concurrency: 4\n",
        "      max_concurrency: 4\n      forward_fields: [user, top_k]\n",
    )
    tier = load_spec_text(text).tier("frontier")
    seen: list[httpx.Request] = []
    client = ext.ExternalEngineClient(
        tier, "sk-test", transport=httpx.MockTransport(ext.upstream(seen))
    )
    asyncio.run(ext.collect(client, {**ext.CHAT, "user": "u1", "top_k": 3, "store": True}))
    sent = json.loads(seen[0].content)
    assert sent["user"] == "u1" and sent["top_k"] == 3 and "store" not in sent


@pytest.mark.parametrize(
    "handler",
    [
        ext.refused,
        lambda r: httpx.Response(401, json={"error": {"message": "Incorrect API key sk-test"}}),
        lambda r: httpx.Response(
            400, json={"error": {"message": "see http://upstream.test/v1/docs, key sk-test"}}
        ),
        lambda r: httpx.Response(500, text="upstream http://upstream.test/v1 broke"),
    ],
)
def test_external_errors_never_show_the_upstream_url_or_key(handler: Any) -> None:
    client, _ = ext.gateway(handler)
    with client:
        resp = ext.ask(client)
    assert resp.status_code >= 400
    assert "upstream.test" not in resp.text and "sk-test" not in resp.text
    assert "frontier" in resp.json()["error"]["message"]


class EmbeddingRag(CountingRag):
    """Counts embeddings too (`/v1/embeddings`)."""

    def __init__(self) -> None:
        super().__init__()
        self.embedded = 0

    async def embed(self, texts: list[str]) -> Embedded:
        self.embedded += len(texts)
        return Embedded(np.array([[0.0, 1.0] for _ in texts], dtype=np.float32), len(texts))


def test_rag_routes_and_embeddings_count_against_the_tenant() -> None:
    retrieval = 5 * RagSpec().chunk_tokens  # a search's top_k (5) chunks
    core, quota, _ = core_with(f"  default_quota: {{tokens_per_min: {retrieval + 100}}}\n")
    rag = EmbeddingRag()
    client = client_of(core, rag=rag)  # type: ignore[arg-type]
    ok = client.post("/v1/embeddings", json={"input": ["a" * 200], "model": "embedder"})
    # reserved as 200 bytes / 4 = 50 tokens, then charged what the model reported (1)
    assert ok.status_code == 200 and quota.released == [1]
    search = client.post("/v1/rag/collections/kb/search", json={"query": "q" * 200})
    assert search.status_code == 200 and rag.searches == 1
    assert quota.released[-1] == 50 + retrieval  # the query's estimate and its chunks
    over = client.post("/v1/embeddings", json={"input": ["a" * 200], "model": "embedder"})
    assert assert_openai_error(over, 429)["code"] == "quota_exceeded"
    assert rag.embedded == 1  # refused before embedding
    # 51 tokens used of 100: a search that would embed 50 more is refused before its work
    assert (
        client.post("/v1/rag/collections/kb/search", json={"query": "q" * 200}).status_code == 429
    )
    assert rag.searches == 1


def test_a_client_that_leaves_under_a_cancelled_task_group_frees_slot_and_ticket() -> None:
    """Starlette's StreamingResponse stops on a disconnect by cancelling an anyio task
    group: every await in the stream's clean-up is cancelled again unless shielded."""
    core, quota, engine = trickling_core(30)

    async def run() -> None:
        response = await core.generate("chat", stream_body())
        body = response.events  # type: ignore[union-attr]

        async def consume() -> None:
            async for _ in body:
                pass

        async with anyio.create_task_group() as group:
            group.start_soon(consume)
            await anyio.sleep(0.2)
            group.cancel_scope.cancel()  # the client went away

    asyncio.run(run())
    assert engine.closed == 1
    assert core.slots.in_flight["small"] == 0 and quota.ledger.in_flight("default") == 0
