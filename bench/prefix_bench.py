"""Cache-aware replica routing benchmark: prefix-cache affinity vs power of two choices.

    .venv/bin/python -m bench.prefix_bench [--conversations 8] [--turns 6] [--concurrency 4]

For each replica routing mode it starts the local cluster of configs/prefix.yaml (one
tier, two replicas of the tiny model, vLLM prefix caching on) with that mode, runs the
same multi-turn chat workload through the gateway with the openai client, and stops the
cluster. Workload: every conversation starts with one shared system prompt and a long
document of its own (RAG context), then grows turn by turn (each turn re-sends the whole
history plus a new question). Conversations run `--concurrency` at a time; turns within a
conversation run in order.

Measured per mode:
- prefix cache hit rate: vLLM's own counters (`vllm:prefix_cache_hits` over
  `vllm:prefix_cache_queries`, in prompt tokens), exported by Ray per replica; the change
  over the workload, in total and per replica;
- TTFT p50/p99 (streamed, time to the first chunk with content, as the client sees it),
  over all turns and over follow-up turns (turn >= 2, the ones a cache can help);
- requests per replica, from the same counters (replicas with lookups).

Writes bench/results/prefix.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tierline.cli import local
from tierline.cluster.engine_metrics import (
    PrefixCache,
    delta,
    prefix_cache_by_replica,
    total,
)
from tierline.cluster.spec import ClusterSpec
from tierline.cluster.specfile import load_spec
from tierline.cluster.tiny_models import ensure_tiny_models
from tierline.deployments.gateway.pipeline.auth import add_key

ROOT = Path(__file__).resolve().parents[1]

SPEC = ROOT / "configs" / "prefix.yaml"
WORDS = [
    "cluster",
    "tier",
    "engine",
    "replica",
    "token",
    "cache",
    "prefix",
    "router",
    "gateway",
    "model",
    "request",
    "queue",
    "latency",
    "budget",
    "tenant",
    "quota",
    "stream",
    "answer",
    "context",
    "window",
    "batch",
    "prompt",
]


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def workload(conversations: int, seed: int = 0) -> list[tuple[str, str]]:
    """(shared system prompt, document) per conversation: same for both modes."""
    rng = random.Random(seed)
    system = "You are a careful assistant for the operations team. " + _text(rng, 60)
    return [(system, f"Document {i}: " + _text(rng, 180)) for i in range(conversations)]


def _spec(mode: str, port: int, keys_file: Path) -> ClusterSpec:
    spec = load_spec(SPEC)
    tiers = [t.model_copy(update={"replica_routing": mode}) for t in spec.tiers]
    auth = spec.gateway.auth.model_copy(update={"keys_file": str(keys_file)})
    gateway = spec.gateway.model_copy(update={"port": port, "auth": auth})
    return spec.model_copy(update={"tiers": tiers, "gateway": gateway})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scrape() -> str:
    import ray

    node = next(n for n in ray.nodes() if n["Alive"])
    url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    return httpx.get(url, timeout=30).text


def _quiet(model: str) -> dict[str, PrefixCache]:
    """Counters once Ray's export has caught up with earlier requests (the gateway's
    warm-up ones included): unchanged over 15 s of scrapes."""
    last, since = prefix_cache_by_replica(_scrape(), model), time.monotonic()
    deadline = since + 120
    while time.monotonic() - since < 15 and time.monotonic() < deadline:
        time.sleep(3)
        now = prefix_cache_by_replica(_scrape(), model)
        if now != last:
            last, since = now, time.monotonic()
    return last


def _conversation(
    client: Any, model: str, system: str, document: str, turns: int, max_tokens: int
) -> tuple[list[tuple[int, float]], int]:
    messages = [{"role": "system", "content": f"{system}\n\n{document}"}]
    ttfts: list[tuple[int, float]] = []
    prompt_tokens = 0
    for turn in range(1, turns + 1):
        messages.append({"role": "user", "content": f"Question {turn}: what does it say?"})
        t0 = time.perf_counter()
        first: float | None = None
        parts: list[str] = []
        for chunk in client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        ):
            if chunk.choices:
                if first is None and chunk.choices[0].delta.content:
                    first = time.perf_counter() - t0
                parts.append(chunk.choices[0].delta.content or "")
            if chunk.usage is not None:
                prompt_tokens += chunk.usage.prompt_tokens
        if first is not None:
            ttfts.append((turn, first))
        messages.append({"role": "assistant", "content": "".join(parts)})
    return ttfts, prompt_tokens


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 2) if values else None


def run_mode(mode: str, args: argparse.Namespace, keys_file: Path, key: str) -> dict[str, Any]:
    from openai import OpenAI

    port = args.port or _free_port()
    spec = _spec(mode, port, keys_file)
    model = spec.tiers[0].model_name
    run = local.start(spec, ready_timeout_s=900)
    try:
        client = OpenAI(base_url=f"{run.endpoint}/v1", api_key=key, max_retries=0, timeout=300)
        convs = workload(args.conversations, args.seed)
        before = _quiet(model)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(
                pool.map(
                    lambda c: _conversation(client, model, c[0], c[1], args.turns, args.max_tokens),
                    convs,
                )
            )
        wall = time.perf_counter() - t0
        sent = sum(r[1] for r in results)
        # Ray exports engine metrics every few seconds: wait until every prompt token
        # sent has been counted as looked up.
        deadline = time.monotonic() + 180
        while True:
            scrape = _scrape()
            d = delta(prefix_cache_by_replica(scrape, model), before)
            if total(d).queries >= sent or time.monotonic() > deadline:
                break
            time.sleep(3)
        if args.save_scrape is not None:  # a real scrape, for the parser's unit test
            lines = [line for line in scrape.splitlines() if "prefix_cache" in line]
            args.save_scrape.write_text("\n".join(lines) + "\n")
    finally:
        local.stop()
    all_ttft = [t for r in results for _, t in r[0]]
    follow = [t for r in results for turn, t in r[0] if turn >= 2]
    overall = total(d)
    return {
        "replica_routing": mode,
        "requests": args.conversations * args.turns,
        "prompt_tokens_sent": sent,
        "prefix_cache_queries_tokens": overall.queries,
        "prefix_cache_hits_tokens": overall.hits,
        "prefix_cache_hit_rate": round(overall.hit_rate or 0.0, 4),
        "per_replica": {
            r[:8]: {"queries": c.queries, "hits": c.hits, "hit_rate": round(c.hit_rate or 0, 4)}
            for r, c in sorted(d.items())
            if c.queries
        },
        "ttft_ms": {"p50": _pct(all_ttft, 50), "p99": _pct(all_ttft, 99)},
        "ttft_follow_up_turns_ms": {"p50": _pct(follow, 50), "p99": _pct(follow, 99)},
        "wall_s": round(wall, 2),
        "cluster_ready_s": round(run.ready_s, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conversations", type=int, default=8)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--port", type=int, default=0, help="Gateway port (0: a free one).")
    ap.add_argument("--modes", default="prefix,pow2")
    ap.add_argument("--save-scrape", type=Path, default=None, help="Keep one raw scrape.")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "prefix.json")
    args = ap.parse_args()
    ensure_tiny_models(ROOT / "models")
    keys_file = Path(tempfile.mkdtemp(prefix="tierline-bench-keys-")) / "keys.json"
    key = add_key(keys_file, "bench")
    results: dict[str, Any] = {}
    for mode in args.modes.split(","):
        print(f"[prefix-bench] {mode}: starting the cluster", flush=True)
        results[mode] = run_mode(mode, args, keys_file, key)
        print(json.dumps(results[mode], indent=2), flush=True)
        out = {  # written after each mode, so a cut-short run keeps what it measured
            "benchmark": "multi-turn chat, shared system prompt + per-conversation document",
            "spec": str(SPEC.relative_to(ROOT)),
            "conversations": args.conversations,
            "turns": args.turns,
            "concurrency": args.concurrency,
            "max_tokens": args.max_tokens,
            "load_average_at_end": list(os.getloadavg()),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "modes": results,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"[prefix-bench] wrote {args.out}")


if __name__ == "__main__":
    main()
