"""The pure parts of server-side search: filter expressions, server features, versions, spec."""

from __future__ import annotations

import random
from typing import Any

import pytest
from pydantic import ValidationError
from tierline.cluster.spec import MILVUS_SERVER_SCHEMES, RagSpec
from tierline.rag.filters import MAX_LIST_VALUES, parse_filter
from tierline.rag.fusion import confidence_fusion
from tierline.rag.milvus_filter import literal, to_expression
from tierline.rag.milvus_search import (
    ServerFeatureError,
    check_server,
    current_hits,
    fused_hits,
    ranker_of,
    server_info,
)
from tierline.rag.records import Chunk, Hit, RagError
from tierline.rag.searcher import InProcessSearcher, SearchSettings
from tierline.rag.service import RagCore, RagSettings, searcher_for
from tierline.rag.store import MemoryChunkStore, MilvusChunkStore, is_remote
from tierline.rag.versions import ChunkRef

from tests.unit.rag_fakes import HashEmbedder, word_offsets

M = 'metadata["lang"]'


@pytest.mark.parametrize(
    ("spec", "expr"),
    [
        (None, None),
        ({}, None),
        ({"lang": "en"}, f'(exists {M} and {M} == "en")'),
        ({"lang": {"$ne": "en"}}, f'not ((exists {M} and {M} == "en"))'),
        (
            {"year": {"$gte": 2020, "$lt": 2024}},
            '((exists metadata["year"] and metadata["year"] >= 2020) and '
            '(exists metadata["year"] and metadata["year"] < 2024))',
        ),
        ({"lang": {"$in": ["en"]}}, f'(exists {M} and {M} == "en")'),
        ({"lang": {"$in": []}}, "false"),
        ({"lang": {"$nin": []}}, "true"),
        ({"document_id": {"$in": ["b", "a", "b"]}}, 'document_id in ["a", "b"]'),
        ({"document_id": 3}, "false"),
        ({"document_id": {"$ne": 3}}, "true"),
        ({"document_id": {"$gt": "m"}}, 'document_id > "m"'),
        ({"flag": True}, '(exists metadata["flag"] and metadata["flag"] == true)'),
        ({"x.y-z": 1.5}, '(exists metadata["x.y-z"] and metadata["x.y-z"] == 1.5)'),
        ({"$not": {"$and": [{}]}}, "false"),
        (
            {"$or": [{"a": 1}, {"$not": {"b": 2}}]},
            '((exists metadata["a"] and metadata["a"] == 1) or '
            'not ((exists metadata["b"] and metadata["b"] == 2)))',
        ),
    ],
)
def test_filters_become_guarded_milvus_expressions(spec: Any, expr: str | None) -> None:
    assert to_expression(spec) == expr


def test_literals_are_escaped_or_refused() -> None:
    assert literal('say "hi" \\ für 日本') == '"say \\"hi\\" \\\\ für 日本"'
    assert literal(False) == "false" and literal(-7) == "-7" and literal(0.25) == "0.25"
    for bad in ("line\nbreak", 1 << 63, float("inf"), float("nan")):
        with pytest.raises(RagError) as err:
            literal(bad)
        assert err.value.status == 400 and err.value.code == "invalid_filter"


def _random_filter(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth < 3 and roll < 0.3:
        op = rng.choice(["$and", "$or"])
        return {op: [_random_filter(rng, depth + 1) for _ in range(rng.randint(1, 3))]}
    if depth < 3 and roll < 0.4:
        return {"$not": _random_filter(rng, depth + 1)}
    key = rng.choice(["lang", "document_id", "n", "k.v"])
    op = rng.choice(["$eq", "$ne", "$gt", "$lte", "$in", "$nin"])
    value = rng.choice(["en", 'q"uote', "back\\slash", 3, 2.5, True])
    if op in ("$in", "$nin"):
        return {key: {op: [value] * rng.randint(0, 3)}}
    if op in ("$gt", "$lte") and isinstance(value, bool):
        value = 1
    return {key: {op: value}}


def test_every_valid_filter_translates_with_balanced_parentheses_and_quotes() -> None:
    rng = random.Random(5)
    for _ in range(2000):
        spec = _random_filter(rng)
        expr = to_expression(spec)
        assert expr is not None
        depth = 0
        in_string = escaped = False
        for ch in expr:
            if in_string:
                if escaped:
                    escaped = False
                elif ch == "\\":
                    escaped = True
                elif ch == '"':
                    in_string = False
            elif ch == '"':
                in_string = True
            elif ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                assert depth >= 0, expr
        assert depth == 0 and not in_string, expr


def test_the_caps_and_errors_are_the_in_process_filters() -> None:
    specs: list[Any] = [
        {"lang": {"$in": list(range(MAX_LIST_VALUES + 1))}},
        {"lang": {"$regex": "x"}},
        {"$and": []},
        [1],
        {"bad key!": 1},
    ]
    for spec in specs:
        with pytest.raises(RagError) as mine:
            to_expression(spec)
        with pytest.raises(RagError) as theirs:
            parse_filter(spec)
        assert mine.value.message == theirs.value.message


@pytest.mark.parametrize(
    ("version", "lite", "full_text"),
    [
        ("milvus_lite-3.2.2", True, True),
        ("v2.5.4", False, True),
        ("2.6.0", False, True),
        ("v2.4.15", False, False),
        ("2.3.5", False, False),
        ("unknown-build", False, True),
    ],
)
def test_server_features_from_the_version(version: str, lite: bool, full_text: bool) -> None:
    info = server_info(version)
    assert (info.lite, info.full_text) == (lite, full_text)
    if full_text:
        assert check_server(version) == info
    else:
        with pytest.raises(ServerFeatureError, match=r"BM25 function.*2\.5"):
            check_server(version)


def test_the_ranker_mirrors_the_fusion_settings() -> None:
    weighted = ranker_of(SearchSettings(bm25_weight=0.3))
    assert weighted.dict()["params"]["weights"] == pytest.approx([0.7, 0.3])
    rrf = ranker_of(SearchSettings(fusion="rrf", rrf_k=42))
    assert rrf.dict() == {"strategy": "rrf", "params": {"k": 42}}


def _rows(items: list[tuple[str, str, float]]) -> list[dict[str, Any]]:
    """Milvus search result rows: the entity's fields and the score as `distance`."""
    return [
        {
            "id": cid,
            "distance": x,
            "entity": {"chunk_id": cid, "document_id": d, "position": 0, "text": cid},
        }
        for cid, d, x in items
    ]


def test_server_rows_are_fused_by_the_embedded_rule() -> None:
    settings = SearchSettings()
    assert settings.fusion == "confidence"
    dense = [("remote#0", "remote", 0.61), ("leave#0", "leave", 0.42), ("park#0", "park", 0.2)]
    # Milvus's BM25 scores: two chunks of one page hold the rare code, nothing else close.
    sparse = [("park#0", "park", 9.0), ("park#1", "park", 8.7), ("leave#0", "leave", 1.0)]
    hits = fused_hits(_rows(dense), _rows(sparse), settings, 10)
    want = confidence_fusion(
        [(c, x) for c, _, x in dense],
        [(c, x) for c, _, x in sparse],
        {c: d for c, d, _ in sparse},
        settings.bm25_margin,
        settings.bm25_share_confident,
        settings.bm25_share_unsure,
    )
    assert [(h.chunk.chunk_id, h.score) for h in hits] == want
    assert hits[0].chunk.document_id == "park"  # BM25 confident: its page leads
    assert {h.chunk.document_id for h in hits} == {"remote", "leave", "park"}
    # BM25 unsure (two pages alike): dense's clear best leads.
    sparse = [("park#0", "park", 6.0), ("leave#0", "leave", 5.5)]
    assert fused_hits(_rows(dense), _rows(sparse), settings, 2)[0].chunk.chunk_id == "remote#0"
    assert fused_hits([], [], settings, 5) == []
    # The Milvus Lite 3 server reports BM25 negated, best (most negative) first.
    lite = [("park#0", "park", -9.0), ("park#1", "park", -8.7), ("leave#0", "leave", -1.0)]
    assert [h.chunk.chunk_id for h in fused_hits(_rows(dense), _rows(lite), settings, 10)] == [
        h.chunk.chunk_id for h in hits
    ]


def _hit(chunk_id: str, document_id: str) -> Hit:
    return Hit(Chunk(chunk_id, document_id, 0, "t"), 1.0)


def test_only_hits_of_the_newest_complete_version_survive() -> None:
    hits = [
        _hit("a#2:0/2", "a"),  # newest, complete
        _hit("a#1:0/1", "a"),  # superseded
        _hit("b#5:0/3", "b"),  # cut short: b's version 4 is the answer
        _hit("b#4:0/1", "b"),
        _hit("c#0", "c"),  # unversioned
    ]
    refs = [
        ChunkRef(i, d)
        for i, d in [
            ("a#2:0/2", "a"),
            ("a#2:1/2", "a"),
            ("a#1:0/1", "a"),
            ("b#5:0/3", "b"),
            ("b#4:0/1", "b"),
            ("c#0", "c"),
        ]
    ]
    assert [h.chunk.chunk_id for h in current_hits(hits, refs)] == ["a#2:0/2", "b#4:0/1", "c#0"]


def test_the_searcher_is_picked_by_the_store_uri() -> None:
    settings = RagSettings()
    local = RagCore(settings, MilvusChunkStore("/tmp/x/milvus.db"), HashEmbedder(), word_offsets)
    assert isinstance(local.searcher, InProcessSearcher) and local.searcher.holds_index
    memory = searcher_for(MemoryChunkStore(), settings)
    assert memory.holds_index
    server = searcher_for(MilvusChunkStore("http://127.0.0.1:19530"), settings)
    assert not server.holds_index
    assert getattr(server, "settings", None) == settings.search_settings()


def test_replicas_above_one_need_a_milvus_server() -> None:
    assert RagSpec(uri="http://milvus:19530", replicas=3).replicas == 3
    assert RagSpec().replicas == 1
    with pytest.raises(ValidationError, match="local Milvus Lite file"):
        RagSpec(uri=".tierline/rag/milvus.db", replicas=2)
    with pytest.raises(ValidationError):
        RagSpec(replicas=0)
    for uri in ("http://h:1", "https://h:1", "tcp://h:1", "grpc://h:1", "/data/m.db"):
        assert uri.startswith(MILVUS_SERVER_SCHEMES) == is_remote(uri)
