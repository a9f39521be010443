"""Retrieval quality: does RAG find the document that answers the question?

    .venv/bin/python -m bench.rag_quality          # or: make bench-rag

Over every labelled set of bench/data/rag_quality, each corpus in its own collection,
ingested through `RagCore` with the shipped settings (configs/local.yaml's `rag`), the
real MiniLM tokenizer and embedding model:
- `python` corpus (`bench.rag_quality_data`): 171 Python library reference pages with
  planted facts; sets `entity` (look-ups of a made-up organisation) and `paraphrase`
  (hand-written questions about what a page documents);
- `handbook`, `catalog`, `codes` corpora (`bench.rag_quality_sets`, generated from
  seeds): sets `policy` (policy paragraphs asked in other words), `multi`
  (multi-sentence questions), `catalog` (fact look-ups on product cards) and `codes`
  (look-ups by error code or configuration key).

For dense only, BM25 only, reciprocal rank fusion, the weighted fusion shipped before
(`fusion: weighted`) and the confidence fusion shipped now (`fusion: confidence`, the
default), each through the replica's real search path, it reports per set and split
(`tune`, `held_out`): document recall@1/5/10 and MRR (the question's document among the
ranked documents), and for questions with a planted answer, chunk recall@5 (a returned
chunk holds the answer). Writes bench/results/rag_quality.json. Chunk embeddings are
cached under .cache/.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tierline.cluster.embedding import SentenceEmbedder
from tierline.cluster.specfile import load_spec
from tierline.deployments.rag.deployment import settings_of
from tierline.rag.embed import Embedded, TokenizerOffsets
from tierline.rag.searcher import InProcessSearcher
from tierline.rag.service import RagCore
from tierline.rag.store import MemoryChunkStore

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "data" / "rag_quality"
CACHE = ROOT / ".cache" / "rag_quality"
TENANT = "bench"
KS = (1, 5, 10)
# Corpus name -> folder holding its corpus.jsonl and questions.jsonl.
CORPORA = {
    "python": DATA,
    "handbook": DATA / "handbook",
    "catalog": DATA / "catalog",
    "codes": DATA / "codes",
}
# Reported method -> the searcher's `fusion` setting (None: one retriever alone).
METHODS = {
    "dense": None,
    "bm25": None,
    "rrf": "rrf",
    "weighted": "weighted",
    "confidence": "confidence",
}


class CachedEmbedder:
    """MiniLM, with the vectors of each batch of texts cached on disk by content."""

    def __init__(self, model: SentenceEmbedder) -> None:
        self.model = model

    async def embed(self, texts: list[str]) -> Embedded:
        key = hashlib.sha256("\n\x00".join(texts).encode()).hexdigest()[:20]
        path = CACHE / f"{key}.npy"
        if path.exists():
            return Embedded(np.load(path), None)
        vecs = await asyncio.to_thread(self.model.embed, texts)
        CACHE.mkdir(parents=True, exist_ok=True)
        np.save(path, vecs)
        return Embedded(vecs, None)


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def documents_ranked(chunk_ids: list[str], core_chunks: dict[str, Any]) -> list[str]:
    seen: dict[str, None] = {}
    for cid in chunk_ids:
        seen.setdefault(core_chunks[cid].document_id, None)
    return list(seen)


def score(ranked_docs: list[str], ranked_texts: list[str], q: dict[str, Any]) -> dict[str, float]:
    out = {}
    rank = ranked_docs.index(q["document_id"]) + 1 if q["document_id"] in ranked_docs else None
    for k in KS:
        out[f"recall@{k}"] = float(rank is not None and rank <= k)
    out["mrr"] = 1.0 / rank if rank else 0.0
    if "answer" in q:
        out["chunk_recall@5"] = float(any(q["answer"] in t for t in ranked_texts[:5]))
    return out


async def build(
    settings_override: dict[str, Any] | None = None, corpora: list[str] | None = None
) -> tuple[RagCore, float]:
    """One core, one collection per corpus (default: all), ingested (cached embeddings)."""
    spec = load_spec(ROOT / "configs" / "local.yaml")
    settings = settings_of(spec.rag)
    if settings_override:
        settings = replace(settings, **settings_override)
    tokenize = TokenizerOffsets(spec.rag.embedding_model)
    tokenize.start()
    model = SentenceEmbedder(spec.rag.embedding_model)
    model.start()
    core = RagCore(settings, MemoryChunkStore(), CachedEmbedder(model), tokenize)
    await core.start()
    t0 = time.perf_counter()
    for name in corpora or list(CORPORA):
        folder = CORPORA[name]
        await core.create_collection(TENANT, name)
        docs = load_jsonl(folder / "corpus.jsonl")
        for i in range(0, len(docs), 16):
            batch = [
                {"id": d["id"], "text": d["text"], "metadata": {"title": d["title"]}}
                for d in docs[i : i + 16]
            ]
            await core.ingest(TENANT, name, batch)
    return core, time.perf_counter() - t0


def questions_of(corpus: str) -> list[dict[str, Any]]:
    return load_jsonl(CORPORA[corpus] / "questions.jsonl")


@dataclass(frozen=True)
class Candidates:
    """One question's raw retriever output: what every fusion rule starts from."""

    question: dict[str, Any]
    dense: list[tuple[str, float]]
    bm25: list[tuple[str, float]]
    document_of: dict[str, str]  # chunk id -> document id, for the chunks above


async def candidates(
    core: RagCore, corpus: str, questions: list[dict[str, Any]]
) -> list[Candidates]:
    """Dense and BM25 candidate lists per question, as the searcher fetches them."""
    _, col = core._get(TENANT, corpus)
    vectors = (await core.embedder.embed([q["question"] for q in questions])).vectors
    n = core.settings.candidates
    out = []
    for q, v in zip(questions, vectors, strict=True):
        dense = col.dense.search(v, n)
        bm25 = col.sparse.search(q["question"], n)
        docs = {i: col.chunks[i].document_id for i, _ in [*dense, *bm25]}
        out.append(Candidates(q, dense, bm25, docs))
    return out


async def evaluate(core: RagCore, corpus: str, questions: list[dict[str, Any]]) -> dict[str, Any]:
    physical, col = core._get(TENANT, corpus)
    searcher = core.searcher
    assert isinstance(searcher, InProcessSearcher)
    shipped = searcher.settings
    vectors = (await core.embedder.embed([q["question"] for q in questions])).vectors
    n = max(shipped.candidates, 50)
    per: dict[tuple[str, str, str], list[dict[str, float]]] = defaultdict(list)
    for q, v in zip(questions, vectors, strict=True):
        methods = {
            "dense": [i for i, _ in col.dense.search(v, n)],
            "bm25": [i for i, _ in col.sparse.search(q["question"], n)],
        }
        for method, fusion in METHODS.items():
            if fusion is None:
                continue
            searcher.settings = replace(shipped, fusion=fusion)
            try:
                hits = searcher.search(physical, q["question"], v, n)
            finally:
                searcher.settings = shipped
            methods[method] = [h.chunk.chunk_id for h in hits]
        for method, ids in methods.items():
            docs = documents_ranked(ids, col.chunks)
            texts = [col.chunks[i].text for i in ids]
            per[(q["set"], q["split"], method)].append(score(docs, texts, q))
    table: dict[str, Any] = {}
    for (qset, split, method), rows in sorted(per.items()):
        agg = {m: round(float(np.mean([r[m] for r in rows])), 3) for m in rows[0]}
        table.setdefault(qset, {}).setdefault(split, {})[method] = {"n": len(rows), **agg}
    return table


def print_table(table: dict[str, Any]) -> None:
    print(f"{'set':<11}{'split':<10}{'method':<11}{'n':>5}  r@1    r@5    r@10   MRR    chunk@5")
    for qset, splits in table.items():
        for split, methods in splits.items():
            for method, m in methods.items():
                chunk = f"{m['chunk_recall@5']:.3f}" if "chunk_recall@5" in m else "  -"
                print(
                    f"{qset:<11}{split:<10}{method:<11}{m['n']:>5}  {m['recall@1']:.3f}  "
                    f"{m['recall@5']:.3f}  {m['recall@10']:.3f}  {m['mrr']:.3f}  {chunk}"
                )


def gaps(table: dict[str, Any], method: str = "confidence") -> dict[str, dict[str, float]]:
    """recall@5 of `method` minus the better of dense and BM25 alone, per set and split."""
    out: dict[str, dict[str, float]] = {}
    for qset, splits in table.items():
        for split, m in splits.items():
            best = max(m["dense"]["recall@5"], m["bm25"]["recall@5"])
            out.setdefault(qset, {})[split] = round(m[method]["recall@5"] - best, 3)
    return out


async def main(out: Path, split: str | None) -> None:
    core, ingest_s = await build()
    table: dict[str, Any] = {}
    corpus_sizes = {}
    for corpus in CORPORA:
        questions = questions_of(corpus)
        if split:
            questions = [q for q in questions if q["split"] == split]
        table.update(await evaluate(core, corpus, questions))
        _, col = core._get(TENANT, corpus)
        corpus_sizes[corpus] = {"documents": len(col.documents), "chunks": len(col.chunks)}
    print_table(table)
    gap = gaps(table)
    print("confidence fusion recall@5 minus the better single retriever:", gap)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "fusion_shipped": core.settings.fusion,
        "corpora": corpus_sizes,
        "ingest_s_cached_embeddings": round(ingest_s, 1),
        "quality": table,
        "confidence_minus_best_single_recall@5": gap,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "rag_quality.json")
    ap.add_argument("--split", choices=["tune", "held_out"], default=None)
    args = ap.parse_args()
    asyncio.run(main(args.out, args.split))
