"""Hybrid query latency of the embedded path at 100k chunks, with the shipped fusion.

    TIERLINE_PYDOC_HTML=<python3-doc html/> .venv/bin/python -m bench.rag_fusion_latency

The corpus is `bench.rag_bench`'s (python3-doc pages chunked at 64 tokens, topped up to
100k chunks with generated text); vectors are MiniLM embeddings of `--real-vectors` real
chunks and synthetic mixes of those for the rest (latency depends on the index sizes, not
on what the vectors mean). The chunks go straight into `InProcessSearcher`'s indexes (what
a RAG replica holds); each query runs `search` with its ready vector, so the query
embedding is excluded, for `fusion: confidence` (shipped), `fusion: weighted` (shipped
before) and `fusion: rrf`, with and without a metadata filter, query by query in rotating
order after a warm-up pass. Writes bench/results/rag_fusion_latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from dataclasses import replace
from pathlib import Path

from tierline.cluster.embedding import SentenceEmbedder
from tierline.cluster.specfile import load_spec
from tierline.deployments.rag.deployment import settings_of
from tierline.rag.embed import TokenizerOffsets
from tierline.rag.searcher import InProcessSearcher
from tierline.rag.store import MemoryChunkStore

from bench.rag_bench import CACHE, corpus, mixed_vectors, pct

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--real-vectors", type=int, default=3000)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/rag_fusion_latency.json")
    args = ap.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    CACHE.mkdir(parents=True, exist_ok=True)
    spec = load_spec(ROOT / "configs" / "local.yaml")
    settings = settings_of(spec.rag).search_settings()
    tokenize = TokenizerOffsets(spec.rag.embedding_model)
    tokenize.start()
    model = SentenceEmbedder(spec.rag.embedding_model)
    model.start()
    chunks, info = corpus(tokenize, args.chunks)
    vecs, _ = mixed_vectors(model, chunks, info["real_chunks"], args.real_vectors)
    searcher = InProcessSearcher(MemoryChunkStore(), settings)
    searcher.create("bench")
    t0 = time.perf_counter()
    for i in range(0, len(chunks), 10_000):
        searcher.collections["bench"].put(chunks[i : i + 10_000], vecs[i : i + 10_000])
    build_s = time.perf_counter() - t0
    rng = random.Random(1)
    picks = rng.sample(range(info["real_chunks"]), args.queries)
    queries = [" ".join(chunks[i].text.split()[3:15]) for i in picks]
    qvecs = model.embed(queries)
    out: dict[str, object] = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average_at_start": os.getloadavg(),
        "corpus": {**info, "chunks": len(chunks), "vectors_embedded": args.real_vectors},
        "index_build_s": round(build_s, 1),
    }
    # Each query runs under every fusion, rotating which goes first, after one pass to
    # warm BM25's per-term arrays (built lazily on a term's first query): otherwise the
    # first setting measured pays for every cold term.
    for q, v in zip(queries, qvecs, strict=True):
        searcher.search("bench", q, v, 10)
    fusions = {f: replace(settings, fusion=f) for f in ("confidence", "weighted", "rrf")}
    for label, flt in (("", None), ("_filtered", {"src": "python-doc"})):
        lat: dict[str, list[float]] = {f: [] for f in fusions}
        for n, (q, v) in enumerate(zip(queries, qvecs, strict=True)):
            names = list(fusions)
            order = names[n % len(names) :] + names[: n % len(names)]
            for f in order:
                searcher.settings = fusions[f]
                t = time.perf_counter()
                searcher.search("bench", q, v, 10, flt)
                lat[f].append(time.perf_counter() - t)
        for f, xs in lat.items():
            out[f"{f}{label}"] = {"p50_ms": round(pct(xs, 50), 2), "p99_ms": round(pct(xs, 99), 2)}
    out["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
