"""Retrieval quality: does RAG find the passage that answers the question?

    .venv/bin/python -m bench.rag_quality          # or: make bench-rag

Over the labelled sets of bench/data/rag_quality (built by `bench.rag_quality_data`:
Python library reference pages with planted entity facts, and hand-written paraphrased
questions), ingested through `RagCore` with the shipped settings (configs/local.yaml's
`rag`), the real MiniLM tokenizer and embedding model. For dense only, BM25 only,
reciprocal rank fusion (the old hybrid) and the shipped hybrid (`rag.fusion`), it reports,
per set and per split (`tune`, `held_out`):
- document recall@1/5/10 and MRR (the question's page among the ranked documents);
- for entity questions, chunk recall@5 (a returned chunk holds the planted sentence).
Writes bench/results/rag_quality.json. Chunk embeddings are cached under .cache/.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from tierline.cluster.specfile import load_spec
from tierline.deployments.rag import settings_of
from tierline.rag.embed import SentenceTransformerModel, TokenizerOffsets
from tierline.rag.fusion import reciprocal_rank_fusion
from tierline.rag.service import RagCore
from tierline.rag.store import MemoryChunkStore

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "data" / "rag_quality"
CACHE = ROOT / ".cache" / "rag_quality"
TENANT, COLLECTION = "bench", "docs"
KS = (1, 5, 10)


class CachedEmbedder:
    """MiniLM, with the vectors of each batch of texts cached on disk by content."""

    def __init__(self, model: SentenceTransformerModel) -> None:
        self.model = model

    async def embed(self, texts: list[str]) -> np.ndarray:
        key = hashlib.sha256("\n\x00".join(texts).encode()).hexdigest()[:20]
        path = CACHE / f"{key}.npy"
        if path.exists():
            return np.load(path)
        vecs = await asyncio.to_thread(self.model.encode, texts)
        CACHE.mkdir(parents=True, exist_ok=True)
        np.save(path, vecs)
        return vecs


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
    if "passage" in q:
        out["chunk_recall@5"] = float(any(q["answer"] in t for t in ranked_texts[:5]))
    return out


async def build(settings_override: dict[str, Any] | None = None) -> tuple[RagCore, float]:
    spec = load_spec(ROOT / "configs" / "local.yaml")
    settings = settings_of(spec.rag)
    if settings_override:
        settings = type(settings)(**{**settings.__dict__, **settings_override})
    tokenize = TokenizerOffsets(spec.rag.embedding_model)
    tokenize.start()
    model = SentenceTransformerModel(spec.rag.embedding_model)
    model.start()
    core = RagCore(settings, MemoryChunkStore(), CachedEmbedder(model), tokenize)
    await core.start()
    await core.create_collection(TENANT, COLLECTION)
    docs = load_jsonl(DATA / "corpus.jsonl")
    t0 = time.perf_counter()
    for i in range(0, len(docs), 16):
        batch = [
            {"id": d["id"], "text": d["text"], "metadata": {"title": d["title"]}}
            for d in docs[i : i + 16]
        ]
        await core.ingest(TENANT, COLLECTION, batch)
    return core, time.perf_counter() - t0


async def evaluate(core: RagCore, questions: list[dict[str, Any]]) -> dict[str, Any]:
    _, col = core._get(TENANT, COLLECTION)
    vectors = await core.embedder.embed([q["question"] for q in questions])
    n = max(core.settings.candidates, 50)
    per: dict[tuple[str, str, str], list[dict[str, float]]] = defaultdict(list)
    for q, v in zip(questions, vectors, strict=True):
        dense = [i for i, _ in col.dense.search(v, n)]
        bm25 = [i for i, _ in col.sparse.search(q["question"], n)]
        methods = {
            "dense": dense,
            "bm25": bm25,
            "rrf": [i for i, _ in reciprocal_rank_fusion([dense, bm25], k=core.settings.rrf_k)],
            "hybrid": [
                h.chunk.chunk_id for h in core.retrieve(TENANT, COLLECTION, q["question"], v, n)
            ],
        }
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
    print(f"{'set':<11}{'split':<10}{'method':<8}{'n':>5}  r@1    r@5    r@10   MRR    chunk@5")
    for qset, splits in table.items():
        for split, methods in splits.items():
            for method, m in methods.items():
                chunk = f"{m['chunk_recall@5']:.3f}" if "chunk_recall@5" in m else "  -"
                print(
                    f"{qset:<11}{split:<10}{method:<8}{m['n']:>5}  {m['recall@1']:.3f}  "
                    f"{m['recall@5']:.3f}  {m['recall@10']:.3f}  {m['mrr']:.3f}  {chunk}"
                )


async def main(out: Path, split: str | None) -> None:
    core, ingest_s = await build()
    questions = load_jsonl(DATA / "questions.jsonl")
    if split:
        questions = [q for q in questions if q["split"] == split]
    table = await evaluate(core, questions)
    print_table(table)
    _, col = core._get(TENANT, COLLECTION)
    result = {
        "corpus": {"documents": len(col.documents), "chunks": len(col.chunks)},
        "ingest_s_cached_embeddings": round(ingest_s, 1),
        "quality": table,
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
