"""Property-based fuzzing of the RAG routes, with authentication on (issue 16).

The gateway app with RAG enabled (an in-process core over the memory store) and a keys
file: whatever schemathesis generates from the OpenAPI schema for the RAG routes,
`/v1/embeddings` and grounded chat, the answer is never a 5xx. A seeded collection gives
the generated requests something to find.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from pathlib import Path

import hypothesis
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from tierline.cluster.spec import AuthSpec
from tierline.cluster.specfile import load_spec_text
from tierline.deployments.gateway import GatewayCore, create_app
from tierline.deployments.gateway.pipeline.auth import add_key, load_key_store
from tierline.deployments.gateway.pipeline.tokens import EstimatingCounter
from tierline.deployments.gateway.rag_routes import InProcessRagClient
from tierline.rag.service import RagCore, RagSettings
from tierline.rag.store import MemoryChunkStore

from tests.unit.fakes import FakeEngine
from tests.unit.rag_fakes import DIM, HashEmbedder, word_offsets

CASES_PER_OPERATION = 80
SPEC = """
tiers:
  - name: small
    model_source: org/small
    max_context_tokens: 4096
rag:
  enabled: true
"""
FUZZED = ("/v1/rag/", "/v1/embeddings", "/v1/chat/completions")


def rag_app(tmp_path: Path) -> tuple[TestClient, str]:
    keys_file = tmp_path / "keys.json"
    key = add_key(keys_file, "fuzz")
    add_key(keys_file, "ops", role="operator")
    keys = load_key_store(AuthSpec(keys_file=str(keys_file)), environ={})
    spec = load_spec_text(SPEC)
    core = GatewayCore(spec, {"small": FakeEngine("tiny-small")}, {"small": EstimatingCounter()})
    embedder = HashEmbedder()
    settings_ = RagSettings(dim=DIM, chunk_tokens=40, chunk_overlap_tokens=5)
    rag_core = RagCore(settings_, MemoryChunkStore(), embedder, word_offsets)

    async def seed() -> None:
        await rag_core.start()
        await rag_core.create_collection("fuzz", "kb")
        docs = [{"id": "a", "text": "alpha beta gamma", "metadata": {"lang": "en", "n": 1}}]
        await rag_core.ingest("fuzz", "kb", docs)

    asyncio.run(seed())
    rag = InProcessRagClient(rag_core, embedder, "hash-embedder")
    client = TestClient(create_app(core, keys, rag), raise_server_exceptions=False)
    return client, key


def test_fuzz_rag_routes_with_auth_no_server_errors(tmp_path: Path) -> None:
    client, key = rag_app(tmp_path)
    auth = {"Authorization": f"Bearer {key}"}
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app, headers=auth)
    operations = [
        op.ok()
        for op in schema.get_all_operations()
        if op.ok().path.startswith(FUZZED) or op.ok().path in FUZZED
    ]
    paths = {op.path for op in operations}
    assert {"/v1/rag/collections", "/v1/rag/collections/{name}/search"} <= paths, paths
    seen: list[tuple[str, str, int]] = []

    for op, mode in itertools.product(operations, list(GenerationMode)):
        strategy = op.as_strategy(generation_mode=mode)

        @settings(
            max_examples=CASES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[hypothesis.Phase.generate],
        )
        @hypothesis.given(case=strategy)
        def one(case) -> None:  # type: ignore[no-untyped-def]
            resp = case.call(headers=auth)
            seen.append((case.method, case.path, resp.status_code))
            assert resp.status_code < 500, (case.method, case.formatted_path, case.body, resp.text)

        try:
            one()
        except hypothesis.errors.Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE

    # The same routes without a key, or with a wrong one: 401, never further.
    for path in sorted(paths):
        url = path.replace("{name}", "kb").replace("{document_id}", "a")
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            assert client.post(url, json={}, headers=headers).status_code in (401, 405)
    print(f"fuzzed {len(seen)} cases, statuses {sorted(Counter(s for *_, s in seen).items())}")
    statuses = {s for *_, s in seen}
    assert 200 in statuses and any(400 <= s < 500 for s in statuses)
    assert len(seen) >= CASES_PER_OPERATION * len(operations)
