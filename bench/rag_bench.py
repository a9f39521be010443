"""RAG benchmark: recall and latency of retrieval at >= 100k chunks, ingestion, RAG TTFT.

    .venv/bin/python -m bench.rag_bench            # or: make bench-rag
writes bench/results/rag.json. Corpus: Debian's python3-doc HTML (apt-get install
python3-doc), chunked with the MiniLM tokenizer, topped up with generated sentences to
--chunks. Embeddings are cached under .cache/rag_bench/ so the corpus is embedded once.

Measured in one run:
- recall@10 of the in-process HNSW index against an exact numpy scan (same vectors);
- query latency without the embedding: HNSW, exact numpy, hybrid (HNSW + BM25 + RRF),
  and Milvus Lite's own server-side search, the store's alternative;
- ingestion throughput: documents -> chunks -> MiniLM -> Milvus Lite (flushed) -> index;
- extra time to first token of a RAG chat vs the same chat without RAG, on the local
  cluster with RAG enabled (and its deploy time and memory with vs without RAG).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from tierline.cluster.embedding import SentenceEmbedder
from tierline.rag.chunking import chunk_document
from tierline.rag.dense import DenseIndex
from tierline.rag.embed import LocalEmbedder, TokenizerOffsets
from tierline.rag.parsing import html_to_text
from tierline.rag.records import Chunk, Document
from tierline.rag.service import RagCore, RagSettings
from tierline.rag.store import MilvusChunkStore
from tierline.rag.tenancy import physical_name

ROOT = Path(__file__).resolve().parents[1]

CACHE = ROOT / ".cache" / "rag_bench"
# Debian python3-doc; elsewhere set TIERLINE_PYDOC_HTML to an extracted copy of its html/.
DOCS = Path(os.environ.get("TIERLINE_PYDOC_HTML", "/usr/share/doc/python3-doc/html"))
CHUNK_TOKENS, OVERLAP = 64, 8


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000, q))


def corpus(tokenize: TokenizerOffsets, n_chunks: int) -> tuple[list[Chunk], dict[str, Any]]:
    files = sorted(DOCS.rglob("*.html"))
    if not files:
        raise SystemExit(f"no HTML under {DOCS}: apt-get install python3-doc")
    chunks: list[Chunk] = []
    for f in files:
        text = html_to_text(f.read_text(errors="replace"))
        doc = Document(str(f.relative_to(DOCS)).replace("/", ":"), text, {"src": "python-doc"})
        if text.strip():
            chunks.extend(chunk_document(doc, tokenize, CHUNK_TOKENS, OVERLAP))
    real = len(chunks)
    rng = random.Random(0)
    words = [w for c in chunks[:20000] for w in c.text.split() if w.isalpha()]
    g = 0
    while len(chunks) < n_chunks:  # generated text: words of the real corpus, shuffled
        text = " ".join(rng.choice(words) for _ in range(45))
        chunks.append(Chunk(f"gen-{g}#0", f"gen-{g}", 0, text, {"src": "generated"}))
        g += 1
    return chunks, {"real_chunks": real, "generated_chunks": g, "html_files": len(files)}


def embeddings(model: SentenceEmbedder, texts: list[str]) -> tuple[np.ndarray, float]:
    key = hashlib.sha256("\n\x00".join(texts).encode()).hexdigest()[:16]
    path = CACHE / f"emb-{key}.npy"
    if path.exists():
        return np.load(path), 0.0
    t0 = time.perf_counter()
    vecs = model.embed(texts)
    took = time.perf_counter() - t0
    np.save(path, vecs)
    return vecs, took


def mixed_vectors(
    model: SentenceEmbedder, chunks: list[Chunk], n_real: int, n_embed: int
) -> tuple[np.ndarray, float]:
    rng = np.random.default_rng(0)
    picked = np.sort(rng.choice(n_real, size=min(n_embed, n_real), replace=False))
    real, took = embeddings(model, [chunks[i].text for i in picked])
    a = real[rng.integers(len(real), size=len(chunks))]
    b = real[rng.integers(len(real), size=len(chunks))]
    noise = rng.standard_normal(a.shape).astype(np.float32) * 0.02
    vecs = 0.7 * a + 0.3 * b + noise
    vecs[picked] = real
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs.astype(np.float32), took


def retrieval(
    chunks: list[Chunk],
    vecs: np.ndarray,
    qvecs: np.ndarray,
    queries: list[str],
    settings: RagSettings,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    idx = DenseIndex(
        vecs.shape[1], settings.hnsw_m, settings.hnsw_ef_construction, settings.hnsw_ef_search
    )
    ids = [c.chunk_id for c in chunks]
    for i in range(0, len(ids), 10000):
        idx.add(ids[i : i + 10000], vecs[i : i + 10000])
    out["hnsw_build_s"] = round(time.perf_counter() - t0, 1)
    pos = {cid: i for i, cid in enumerate(ids)}
    exact_lat, exact_top = [], []
    for q in qvecs:
        t = time.perf_counter()
        scores = vecs @ q
        top = np.argpartition(-scores, 10)[:10]
        top = top[np.argsort(-scores[top])]
        exact_lat.append(time.perf_counter() - t)
        exact_top.append(set(top.tolist()))
    out["exact_numpy"] = {"p50_ms": pct(exact_lat, 50), "p99_ms": pct(exact_lat, 99)}
    for ef in (16, 32, 64, 128):
        idx.ef = ef
        lat, hits = [], 0
        for q, want in zip(qvecs, exact_top, strict=True):
            t = time.perf_counter()
            got = idx.search(q, 10)
            lat.append(time.perf_counter() - t)
            hits += len({pos[c] for c, _ in got} & want)
        out[f"hnsw_ef{ef}"] = {
            "recall_at_10": hits / (10 * len(qvecs)),
            "p50_ms": pct(lat, 50),
            "p99_ms": pct(lat, 99),
        }
    idx.ef = settings.hnsw_ef_search
    return out


def hybrid_latency(core: RagCore, name: str, queries: list[str], qvecs: np.ndarray) -> dict:
    lat = []
    for q, v in zip(queries, qvecs, strict=True):
        t = time.perf_counter()
        core.retrieve("t", name, q, v, 10)
        lat.append(time.perf_counter() - t)
    flt = []
    for q, v in zip(queries, qvecs, strict=True):
        t = time.perf_counter()
        core.retrieve("t", name, q, v, 10, {"src": "python-doc"})
        flt.append(time.perf_counter() - t)
    return {
        "hybrid_p50_ms": pct(lat, 50),
        "hybrid_p99_ms": pct(lat, 99),
        "hybrid_filtered_p50_ms": pct(flt, 50),
    }


async def store_and_index(
    chunks: list[Chunk],
    vecs: np.ndarray,
    settings: RagSettings,
    tokenize: TokenizerOffsets,
    model: SentenceEmbedder,
) -> tuple[RagCore, dict]:
    path = CACHE / "milvus-100k.db"
    shutil.rmtree(path, ignore_errors=True)
    store = MilvusChunkStore(str(path))
    core = RagCore(settings, store, LocalEmbedder(model), tokenize)
    await core.start()
    await core.create_collection("t", "bench")
    by_doc: dict[str, list[int]] = {}
    for i, c in enumerate(chunks):
        by_doc.setdefault(c.document_id, []).append(i)
    t0 = time.perf_counter()
    docs = list(by_doc.items())
    for s in range(0, len(docs), 400):
        part = docs[s : s + 400]
        rows = [i for _, idxs in part for i in idxs]
        await asyncio.to_thread(
            store.replace_documents,
            physical_name("t", "bench"),
            [d for d, _ in part],
            [chunks[i] for i in rows],
            vecs[rows],
        )
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    core2 = RagCore(settings, MilvusChunkStore(str(path)), LocalEmbedder(model), tokenize)
    store.close()
    await core2.start()  # reload + rebuild the HNSW and BM25 indexes from the store
    rebuild_s = time.perf_counter() - t0
    return core2, {
        "store_write_chunks_per_s": round(len(chunks) / write_s),
        "restart_rebuild_s": round(rebuild_s, 1),
    }


def milvus_server_side(core: RagCore, qvecs: np.ndarray, n: int) -> dict:
    client = core.store.client  # type: ignore[attr-defined]
    lat = []
    for q in qvecs[:n]:
        t = time.perf_counter()
        client.search(
            physical_name("t", "bench"),
            [q.tolist()],
            anns_field="dense",
            limit=10,
            output_fields=["document_id"],
        )
        lat.append(time.perf_counter() - t)
    return {"queries": n, "p50_ms": pct(lat, 50), "index": "FLAT (Milvus Lite 3, pure Python)"}


async def ingestion(
    tokenize: TokenizerOffsets, model: SentenceEmbedder, settings: RagSettings, n_files: int
) -> dict:
    files = sorted(DOCS.rglob("*.html"))[:n_files]
    docs = [
        {
            "id": f"f{i}",
            "text": html_to_text(f.read_text(errors="replace")),
            "metadata": {"file": f.name},
        }
        for i, f in enumerate(files)
    ]
    docs = [d for d in docs if str(d["text"]).strip()]
    path = CACHE / "milvus-ingest.db"
    shutil.rmtree(path, ignore_errors=True)
    core = RagCore(settings, MilvusChunkStore(str(path)), LocalEmbedder(model), tokenize)
    await core.start()
    await core.create_collection("t", "ingest")
    t0 = time.perf_counter()
    n = 0
    for s in range(0, len(docs), 8):
        n += (await core.ingest("t", "ingest", docs[s : s + 8]))["chunks"]
    took = time.perf_counter() - t0
    core.store.close()
    return {
        "documents": len(docs),
        "chunks": n,
        "seconds": round(took, 1),
        "chunks_per_s": round(n / took, 1),
    }


def cluster_phase(ask: int) -> dict:
    """Local cluster without and with RAG: deploy time, memory, and RAG TTFT."""
    import psutil
    from tierline.cli import local
    from tierline.cluster.specfile import load_spec

    before = {p.pid for p in psutil.process_iter()} - {os.getpid()}

    def rss_gib() -> float:
        """Resident memory of this process and every process started since (our cluster)."""
        total = 0
        for p in psutil.process_iter():
            if p.pid not in before:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
        return round(total / 2**30, 2)

    base = load_spec(ROOT / "configs" / "local.yaml")
    auth = base.gateway.auth.model_copy(update={"enabled": False})
    base = base.model_copy(
        update={
            "gateway": base.gateway.model_copy(update={"port": free_port(), "auth": auth}),
            "router": base.router.model_copy(update={"policy": "rules"}),
        }
    )
    rag = base.rag.model_copy(
        update={
            "enabled": True,
            "uri": str(CACHE / "milvus-ttft.db"),
            "chunk_tokens": 48,
            "chunk_overlap_tokens": 8,
        }
    )
    shutil.rmtree(CACHE / "milvus-ttft.db", ignore_errors=True)
    out: dict[str, Any] = {}

    def rag_rss_gib() -> float:
        """Resident memory of the RAG and embeddings replicas alone."""
        total = 0
        for p in psutil.process_iter(["cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if p.pid not in before and (":rag" in cmd or ":embeddings" in cmd):
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
        return round(total / 2**30, 2)

    plain = base.model_copy(update={"rag": base.rag.model_copy(update={"enabled": False})})
    runs = [("with_rag", base.model_copy(update={"rag": rag}))]
    if os.environ.get("RAG_BENCH_BASELINE") == "1":  # a second cluster start, for deploy time
        runs.insert(0, ("without_rag", plain))
    for label, spec in runs:
        run = local.start(spec, ready_timeout_s=900)
        try:
            time.sleep(5)
            out[label] = {"ready_s": round(run.ready_s, 1), "rss_gib": rss_gib()}
            if label == "with_rag":
                out["ttft"] = ttft(run.endpoint, ask)
                out[label]["rss_gib_after_use"] = rss_gib()
                out[label]["rag_and_embeddings_replicas_rss_gib"] = rag_rss_gib()
        finally:
            local.stop()
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ttft(url: str, n: int) -> dict:
    """Time to first content token of the same streamed chat with and without `rag`,
    alternating request by request; and the search route alone (embedding + hybrid)."""
    import httpx

    with httpx.Client(base_url=url, timeout=300) as http:
        t0 = time.perf_counter()
        http.post("/v1/rag/collections", json={"name": "ttft"})
        files = sorted(DOCS.rglob("*.html"))[:10]
        docs = [
            {"id": f"t{i}", "text": html_to_text(f.read_text(errors="replace"))}
            for i, f in enumerate(files)
        ]
        http.post("/v1/rag/collections/ttft/documents", json={"documents": docs}).raise_for_status()
        first_ingest_s = time.perf_counter() - t0

        def first_token(body: dict) -> float:
            t = time.perf_counter()
            with http.stream("POST", "/v1/chat/completions", json=body) as r:
                r.raise_for_status()
                for line in r.iter_lines():
                    if line.startswith("data: ") and '"content"' in line:
                        return time.perf_counter() - t
            return time.perf_counter() - t

        q = "How do I read a file line by line?"
        base = {
            "model": "tiny-large",
            "messages": [{"role": "user", "content": q}],
            "max_tokens": 4,
            "stream": True,
        }
        rag = {**base, "rag": {"collection": "ttft", "top_k": 4}}
        search = []
        for body in (base, rag):  # warm both paths
            first_token(body)
        tokens = {}
        for label, body in (("plain", base), ("rag", rag)):
            r = http.post("/v1/chat/completions", json={**body, "stream": False})
            r.raise_for_status()
            tokens[label] = r.json()["usage"]["prompt_tokens"]
        load_before = os.getloadavg()[0]
        plain, grounded = [], []
        for _ in range(n):
            plain.append(first_token(base))
            grounded.append(first_token(rag))
            t = time.perf_counter()
            http.post(
                "/v1/rag/collections/ttft/search", json={"query": q, "top_k": 4}
            ).raise_for_status()
            search.append(time.perf_counter() - t)
    extra = [g - p for g, p in zip(grounded, plain, strict=True)]  # pairwise, alternating
    return {
        "requests": n,
        "model": "tiny-large (pinned, same tier both ways)",
        "prompt_tokens_plain": tokens["plain"],
        "prompt_tokens_rag": tokens["rag"],
        "ttft_plain_p50_ms": round(pct(plain, 50), 1),
        "ttft_plain_p99_ms": round(pct(plain, 99), 1),
        "ttft_rag_p50_ms": round(pct(grounded, 50), 1),
        "ttft_rag_p99_ms": round(pct(grounded, 99), 1),
        "extra_ttft_p50_ms": round(pct(grounded, 50) - pct(plain, 50), 1),
        "extra_ttft_paired_p50_ms": round(pct(extra, 50), 1),
        "extra_ttft_paired_p99_ms": round(pct(extra, 99), 1),
        "search_http_p50_ms": round(pct(search, 50), 1),
        "search_http_p99_ms": round(pct(search, 99), 1),
        "first_ingest_s": round(first_ingest_s, 1),
        "load_avg_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--skip-cluster", action="store_true")
    ap.add_argument(
        "--real-vectors",
        type=int,
        default=10**9,
        help="Embed only this many real chunks with MiniLM; synthesize the rest.",
    )
    ap.add_argument("--ingest-files", type=int, default=60)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "rag.json")
    ap.add_argument("--cluster-only", action="store_true", help="Add the cluster phase to --out.")
    ap.add_argument("--ttft-requests", type=int, default=40, help="Pairs of chat requests.")
    args = ap.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    CACHE.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any]
    if args.cluster_only:
        result = json.loads(args.out.read_text())
        result["cluster"] = cluster_phase(args.ttft_requests)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result["cluster"], indent=2))
        return
    settings = RagSettings(chunk_tokens=CHUNK_TOKENS, chunk_overlap_tokens=OVERLAP)
    tokenize = TokenizerOffsets("all-MiniLM-L6-v2")
    tokenize.start()
    model = SentenceEmbedder("all-MiniLM-L6-v2")
    model.start()
    result = {
        "machine": f"{os.cpu_count()} cores",
        "embedding": "all-MiniLM-L6-v2 CPU",
    }
    t0 = time.perf_counter()
    chunks, info = corpus(tokenize, args.chunks)
    info["chunking_s"] = round(time.perf_counter() - t0, 1)
    result["corpus"] = {**info, "chunks": len(chunks), "chunk_tokens": CHUNK_TOKENS}
    print(json.dumps(result), flush=True)
    if args.real_vectors >= len(chunks):
        vecs, embed_s = embeddings(model, [c.text for c in chunks])
        result["corpus"]["vectors"] = "MiniLM embeddings of every chunk"
    else:
        vecs, embed_s = mixed_vectors(model, chunks, info["real_chunks"], args.real_vectors)
        result["corpus"]["vectors"] = (
            f"MiniLM embeddings of {args.real_vectors} real chunks; the other chunks get "
            "synthetic unit vectors mixed from those (0.7 a + 0.3 b + noise): the full "
            "MiniLM pass did not fit this run's time on the shared 2 cores"
        )
    if embed_s:
        result["corpus"]["embed_s"] = round(embed_s, 1)
    rng = random.Random(1)
    picks = rng.sample(range(info["real_chunks"]), args.queries)
    queries = [" ".join(chunks[i].text.split()[3:15]) for i in picks]
    qvecs = model.embed(queries)
    result["retrieval"] = retrieval(chunks, vecs, qvecs, queries, settings)
    print(json.dumps(result["retrieval"]), flush=True)
    core, store_info = asyncio.run(store_and_index(chunks, vecs, settings, tokenize, model))
    result["store"] = store_info
    result["retrieval"].update(hybrid_latency(core, "bench", queries, qvecs))
    result["milvus_lite_server_side_dense"] = milvus_server_side(core, qvecs, 20)
    core.store.close()
    print(json.dumps(result), flush=True)
    result["ingestion"] = asyncio.run(ingestion(tokenize, model, settings, args.ingest_files))
    print(json.dumps(result["ingestion"]), flush=True)
    if not args.skip_cluster:
        result["cluster"] = cluster_phase(args.ttft_requests)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
