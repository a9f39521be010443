"""Grounded chats on a live local cluster: do they cite the question's document, and how
fast does ingestion run end to end?

    .venv/bin/python -m bench.rag_citations       # part of `make bench-rag`

Starts configs/local.yaml as `make run` serves it (RAG on: MiniLM embeddings deployment,
Milvus Lite store, the shipped fusion settings), with a fresh store and auth off. Then:
- ingests bench/data/rag_quality/corpus.jsonl (171 Python library pages with planted
  facts) through `POST /v1/rag/collections/{name}/documents`, 16 documents per request,
  one request at a time: chunks per second end to end (HTTP, chunking, MiniLM embedding on
  the embeddings replica, the Milvus Lite write, indexing);
- sends grounded chats (`"rag": {"collection": ...}`, the default top_k, `model: auto`)
  with the official `openai` client for every held-out question (all paraphrases, a
  fixed sample of the entity look-ups) and counts those whose `citations` include the
  question's document: the citation hit rate, per set.
Writes bench/results/rag_citations.json. Not tuned on: the held-out questions were kept
out of every retrieval decision (`bench.rag_quality`).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

from bench.rag_quality import DATA, load_jsonl

ROOT = Path(__file__).resolve().parents[1]
STORE = ROOT / ".cache" / "rag_citations" / "milvus.db"
COLLECTION = "pydocs"
BATCH_DOCS = 16


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ingest(url: str) -> dict[str, Any]:
    import httpx

    docs = load_jsonl(DATA / "corpus.jsonl")
    chunks, batches = 0, []
    with httpx.Client(base_url=url, timeout=600) as http:
        http.post("/v1/rag/collections", json={"name": COLLECTION}).raise_for_status()
        t0 = time.perf_counter()
        for i in range(0, len(docs), BATCH_DOCS):
            body = {
                "documents": [
                    {"id": d["id"], "text": d["text"], "metadata": {"title": d["title"]}}
                    for d in docs[i : i + BATCH_DOCS]
                ]
            }
            t1 = time.perf_counter()
            resp = http.post(f"/v1/rag/collections/{COLLECTION}/documents", json=body)
            resp.raise_for_status()
            n = int(resp.json()["chunks"])
            chunks += n
            batches.append(n / (time.perf_counter() - t1))
        took = time.perf_counter() - t0
    return {
        "documents": len(docs),
        "chunks": chunks,
        "seconds": round(took, 1),
        "chunks_per_s": round(chunks / took, 1),
        "chunks_per_s_batch_p50": round(sorted(batches)[len(batches) // 2], 1),
    }


def reused(url: str) -> dict[str, Any]:
    import httpx

    listed = httpx.get(f"{url}/v1/rag/collections", timeout=60).json()["data"]
    (col,) = [c for c in listed if c["name"] == COLLECTION]
    return {"reused_store": True, "documents": col["documents"], "chunks": col["chunks"]}


def questions(entity_sample: int, seed: int) -> list[dict[str, Any]]:
    held = [q for q in load_jsonl(DATA / "questions.jsonl") if q["split"] == "held_out"]
    entity = [q for q in held if q["set"] == "entity"]
    rest = [q for q in held if q["set"] != "entity"]
    random.Random(seed).shuffle(entity)
    return rest + entity[:entity_sample]


def cite(url: str, qs: list[dict[str, Any]]) -> dict[str, Any]:
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
    per: dict[str, list[bool]] = {}
    misses: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for q in qs:
        answer = client.chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": q["question"]}],
            max_tokens=1,
            extra_body={"rag": {"collection": COLLECTION}},
        )
        cited = [c["document_id"] for c in (answer.model_extra or {}).get("citations", [])]
        hit = q["document_id"] in cited
        per.setdefault(q["set"], []).append(hit)
        if not hit:
            misses.append({"question": q["question"], "want": q["document_id"], "cited": cited})
    out: dict[str, Any] = {
        s: {"n": len(h), "hits": sum(h), "hit_rate": round(sum(h) / len(h), 3)}
        for s, h in sorted(per.items())
    }
    every = [x for h in per.values() for x in h]
    out["all"] = {
        "n": len(every),
        "hits": sum(every),
        "hit_rate": round(sum(every) / len(every), 3),
    }
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["misses"] = misses
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "rag_citations.json")
    ap.add_argument("--entity-sample", type=int, default=120)
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument(
        "--reuse-store",
        action="store_true",
        help="Keep the store of the last run (its corpus ingested) and skip ingestion.",
    )
    args = ap.parse_args()

    from tierline.cli import local
    from tierline.cluster.specfile import load_spec
    from tierline.cluster.tiny_models import ensure_tiny_models

    ensure_tiny_models(ROOT / "models")
    spec = load_spec(ROOT / "configs" / "local.yaml")
    if not args.reuse_store:
        shutil.rmtree(STORE.parent, ignore_errors=True)
    STORE.parent.mkdir(parents=True, exist_ok=True)
    auth = spec.gateway.auth.model_copy(update={"enabled": False})
    gateway = spec.gateway.model_copy(update={"port": free_port(), "auth": auth})
    rag = spec.rag.model_copy(update={"uri": str(STORE)})
    spec = spec.model_copy(update={"gateway": gateway, "rag": rag})
    assert spec.rag.enabled, "configs/local.yaml must have RAG on"
    run = local.start(spec, ready_timeout_s=900)
    try:
        result = {
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "spec": "configs/local.yaml (fresh store, auth off)",
            "top_k": spec.rag.default_top_k,
            "ingest": reused(run.endpoint) if args.reuse_store else ingest(run.endpoint),
            "citations_held_out": cite(run.endpoint, questions(args.entity_sample, args.seed)),
        }
    finally:
        local.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    summary = {k: v for k, v in result["citations_held_out"].items() if k != "misses"}
    print(json.dumps({"ingest": result["ingest"], "citations_held_out": summary}, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
