"""RAG on a Milvus server: hybrid query latency and RAG replica start time, by corpus size.

    .venv/bin/python -m bench.rag_server_bench      # or: make bench-rag-server
writes bench/results/rag_server.json. The server is Milvus Lite 3's gRPC server
(`python -m milvus_lite server`) on loopback, the one Milvus that installs from PyPI with
the BM25 function; a Milvus 2.5+ cluster is another program and will give other figures.

The corpus is generated (Zipf-distributed words, 45 per chunk, a rare planted name in
some; 384-dim unit vectors around 200 topics), written through `MilvusChunkStore` in
batches until `--chunks` or `--ingest-budget-s`, whichever comes first; the size reached is
reported. Query vectors are ready-made: the figures exclude the query embedding, like the
embedded path's p50 in bench/results/rag.json. Measured at each size: `RagCore.start()`
of a fresh replica (connect, check the server, open the collection), and hybrid
`RagCore.retrieve` (dense + BM25 in one `hybrid_search`, version check included) without
and with a metadata filter, and dense-only and BM25-only `search` calls for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tierline.rag.embed import Embedded
from tierline.rag.milvus_search import ranker_of
from tierline.rag.records import Chunk
from tierline.rag.service import RagCore, RagSettings
from tierline.rag.store import SPARSE_FIELD, MilvusChunkStore
from tierline.rag.tenancy import physical_name
from tierline.rag.versions import versioned_id

ROOT = Path(__file__).resolve().parents[1]
DIM = 384
TENANT, NAME = "bench", "kb"
BATCH = 5000


def pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(xs) * 1000, q)), 2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def milvus_server(data: Path) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data)]
    proc = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the Milvus Lite server did not start")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=60)


class Corpus:
    """Deterministic generated chunks and vectors, made batch by batch."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.vocab = np.array([f"w{i}" for i in range(30_000)])
        ranks = np.arange(1, len(self.vocab) + 1, dtype=np.float64)
        self.p = (1 / ranks) / (1 / ranks).sum()
        topics = self.rng.standard_normal((200, DIM)).astype(np.float32)
        self.topics = topics / np.linalg.norm(topics, axis=1, keepdims=True)

    def batch(self, start: int, n: int) -> tuple[list[Chunk], np.ndarray]:
        words = self.rng.choice(self.vocab, size=(n, 45), p=self.p)
        chunks = []
        for i in range(n):
            k = start + i
            text = " ".join(words[i])
            if k % 97 == 0:  # a rare name, as in entity look-ups
                text += f" Zorb{k}corp"
            doc = f"doc-{k // 4}"
            meta = {"lang": "en" if k % 3 else "de", "year": 2000 + k % 25}
            chunks.append(Chunk(versioned_id(doc, 1, k % 4, 4), doc, k % 4, text, meta))
        t = self.topics[self.rng.integers(len(self.topics), size=n)]
        v = t + 0.4 * self.rng.standard_normal((n, DIM)).astype(np.float32) / np.sqrt(DIM) * 8
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return chunks, v.astype(np.float32)

    def queries(self, n: int, size: int) -> list[tuple[str, np.ndarray]]:
        out = []
        for i in range(n):
            words = " ".join(self.rng.choice(self.vocab[:3000], size=6))
            if i % 2 == 0:  # half name a rare planted term
                words += f" Zorb{97 * int(self.rng.integers(max(1, size // 97)))}corp"
            v = self.topics[int(self.rng.integers(len(self.topics)))]
            v = v + 0.05 * self.rng.standard_normal(DIM).astype(np.float32)
            out.append((words, (v / np.linalg.norm(v)).astype(np.float32)))
        return out


def settings() -> RagSettings:
    return RagSettings(dim=DIM)


def start_core(uri: str) -> tuple[RagCore, float]:
    core = RagCore(settings(), MilvusChunkStore(uri), _NoEmbedder(), _no_tokens)
    t0 = time.perf_counter()
    asyncio.run(core.start())
    return core, time.perf_counter() - t0


class _NoEmbedder:
    async def embed(self, texts: list[str]) -> Embedded:  # queries come pre-embedded
        raise RuntimeError("the benchmark passes ready vectors")


def _no_tokens(text: str) -> list[tuple[int, int]]:
    raise RuntimeError("the benchmark writes chunks directly")


def latencies(core: RagCore, queries: list[tuple[str, np.ndarray]]) -> dict[str, Any]:
    physical = physical_name(TENANT, NAME)
    client = core.store.client
    out: dict[str, Any] = {}

    def timed(call: Any, n: int = len(queries)) -> dict[str, float]:
        call(*queries[0])  # warm
        lat = []
        for q, v in queries[:n]:
            t = time.perf_counter()
            call(q, v)
            lat.append(time.perf_counter() - t)
        return {"p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "n": len(lat)}

    out["hybrid"] = timed(lambda q, v: core.retrieve(TENANT, NAME, q, v, 10))
    out["hybrid_filtered"] = timed(
        lambda q, v: core.retrieve(TENANT, NAME, q, v, 10, {"lang": "en", "year": {"$gte": 2010}}),
        max(5, len(queries) // 10),  # Milvus Lite evaluates JSON filters row by row: slow
    )
    params = {"metric_type": "COSINE", "params": {"ef": 128}}

    def bare_hybrid(q: str, v: np.ndarray) -> Any:
        from pymilvus import AnnSearchRequest

        requests = [
            AnnSearchRequest([v.tolist()], "dense", params, limit=50),
            AnnSearchRequest([q], SPARSE_FIELD, {"metric_type": "BM25"}, limit=50),
        ]
        return client.hybrid_search(
            physical, requests, ranker_of(core.settings.search_settings()), limit=50
        )

    # Milvus's hybrid_search alone: no output fields, no version check (what `hybrid` adds).
    out["hybrid_search_only"] = timed(bare_hybrid)
    out["dense_only"] = timed(
        lambda q, v: client.search(
            physical, [v.tolist()], anns_field="dense", limit=50, search_params=params
        )
    )
    out["bm25_only"] = timed(
        lambda q, v: client.search(
            physical, [q], anns_field=SPARSE_FIELD, limit=50, search_params={"metric_type": "BM25"}
        )
    )
    return out


def main(out: Path, target: int, sizes: list[int], budget_s: float, n_queries: int) -> None:
    result: dict[str, Any] = {
        "server": None,
        "machine": f"{platform.machine()}, 2 cores shared with other work",
        "command": "make bench-rag-server",
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "corpus": "generated: Zipf words, 45 per chunk; 384-dim vectors around 200 topics",
        "excludes": "the query embedding",
        "sizes": [],
    }
    corpus = Corpus()
    with tempfile.TemporaryDirectory() as tmp, milvus_server(Path(tmp) / "srv") as uri:
        writer, _ = start_core(uri)
        result["server"] = str(writer.store.client.get_server_version())
        asyncio.run(writer.create_collection(TENANT, NAME))
        physical = physical_name(TENANT, NAME)
        stored, ingest_s, t_begin = 0, 0.0, time.perf_counter()
        marks = sorted({s for s in sizes if s <= target} | {target})
        for mark in marks:
            while stored < mark and time.perf_counter() - t_begin < budget_s:
                n = min(BATCH, mark - stored)
                chunks, vectors = corpus.batch(stored, n)
                t0 = time.perf_counter()
                writer.store.replace_documents(physical, [], chunks, vectors)
                ingest_s += time.perf_counter() - t0
                stored += n
                print(f"  {stored} chunks stored ({stored / ingest_s:.0f}/s)", flush=True)
            core, start_s = start_core(uri)
            row = {
                "chunks": stored,
                "ingest_chunks_per_s_no_embedding": round(stored / ingest_s, 1),
                "replica_start_s": round(start_s, 2),
                **latencies(core, corpus.queries(n_queries, stored)),
            }
            core.store.close()
            result["sizes"].append(row)
            print(json.dumps(row), flush=True)
            write(out, result)  # each size as it is measured: a cut-short run keeps them
            if stored < mark:
                result["stopped"] = (
                    f"ingest budget of {budget_s:.0f} s reached at {stored} chunks "
                    f"(target {target})"
                )
                break
        writer.store.close()
    write(out, result)
    print(f"-> {out}")


def write(out: Path, result: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "rag_server.json")
    ap.add_argument("--chunks", type=int, default=100_000)
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 30_000])
    ap.add_argument("--ingest-budget-s", type=float, default=300.0)
    ap.add_argument("--queries", type=int, default=60)
    a = ap.parse_args()
    main(a.out, a.chunks, a.sizes, a.ingest_budget_s, a.queries)
