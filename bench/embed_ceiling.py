"""The embedding model's own ceiling on this machine: MiniLM-L6 encode throughput alone.

    .venv/bin/python -m bench.embed_ceiling

RAG ingestion embeds every chunk with the packaged all-MiniLM-L6-v2 (sentence-transformers,
CPU). This times that model alone, outside Ray and without the store, on batches of 64
chunks of about 166 and 54 tokens, with torch on 1 and then 2 threads: what no
end-to-end ingestion on this machine can beat. Writes bench/results/embed_ceiling.json.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "embed_ceiling.json"
WORDS = [
    "the",
    "cluster",
    "routes",
    "each",
    "query",
    "to",
    "the",
    "cheapest",
    "tier",
    "that",
    "answers",
    "it",
    "well",
    "and",
    "retrieves",
    "company",
    "documents",
    "from",
    "the",
    "vector",
    "store",
]


def main() -> None:
    import torch
    from sentence_transformers import SentenceTransformer
    from tierline.cluster.embedding import resolve_model

    model = SentenceTransformer(resolve_model("all-MiniLM-L6-v2"), device="cpu")
    out: dict[str, object] = {"cpus": os.cpu_count(), "batch": 64, "chunks_per_s": {}}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for n_words in (150, 48):
            text = " ".join(WORDS[i % len(WORDS)] for i in range(n_words))
            tokens = len(model.tokenizer(text)["input_ids"])
            batch = [f"{text} {i}" for i in range(64)]
            model.encode(batch[:8], batch_size=32)  # warm-up
            t0 = time.perf_counter()
            model.encode(batch, batch_size=32)
            rate = round(len(batch) / (time.perf_counter() - t0), 1)
            out["chunks_per_s"][f"{threads}_threads_{tokens}_tokens"] = rate  # type: ignore[index]
            print(f"{threads} thread(s), {tokens}-token chunks: {rate} chunks/s", flush=True)
    out["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
