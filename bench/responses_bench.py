"""Responses API conversations: replica affinity vs none, on two replicas of one tier.

    .venv/bin/python -m bench.responses_bench [--conversations 8] [--turns 5] [--concurrency 4]

One local cluster runs configs/prefix.yaml's tier twice: `chat` (two replicas,
`replica_routing: prefix`: Ray Serve LLM's prefix-cache affinity router, which sends a
follow-up turn to the replica whose prefix tree holds the conversation) and `chat-pow2`
(the same two-replica tier with power-of-two-choices routing: no affinity). The same
multi-turn workload runs against each, through `/v1/responses` with the official openai
client: turn 1 sends the instructions and a document of the conversation's own, every
later turn sends only its question and `previous_response_id`; the gateway rebuilds the
conversation from its store and Serve's router picks the replica. Each mode names its
tier, so the gateway's tier affinity (`affinity:kept`, for `model: auto`) is not what is
compared here: the follow-up turns' route reasons are recorded, and read `pinned`.

Measured per mode: vLLM's prefix-cache hit rate over the workload (prompt tokens, from
the engines' own counters, per replica too), and TTFT (streamed: time to the first
`response.output_text.delta`) over all turns and over follow-up turns.

Writes bench/results/responses.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tierline.cli import local
from tierline.cluster.engine_metrics import delta, prefix_cache_by_replica, total
from tierline.cluster.spec import ClusterSpec
from tierline.cluster.specfile import load_spec
from tierline.cluster.tiny_models import ensure_tiny_models
from tierline.deployments.gateway.pipeline.auth import add_key

from bench.prefix_bench import _free_port, _pct, _quiet, _scrape, workload

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "configs" / "prefix.yaml"
MODES = {"affinity": "prefix", "no-affinity": "pow2"}


def _spec(port: int, keys_file: Path, store: Path) -> ClusterSpec:
    spec = load_spec(SPEC)
    (base,) = spec.tiers
    tiers = [
        base.model_copy(update={"replica_routing": "prefix"}),
        base.model_copy(
            update={
                "name": f"{base.name}-pow2",
                "served_model_name": f"{base.model_name}-pow2",
                "replica_routing": "pow2",
            }
        ),
    ]
    auth = spec.gateway.auth.model_copy(update={"keys_file": str(keys_file)})
    responses = spec.gateway.responses.model_copy(update={"store_uri": str(store)})
    gateway = spec.gateway.model_copy(update={"port": port, "auth": auth, "responses": responses})
    return spec.model_copy(update={"tiers": tiers, "gateway": gateway})


def _conversation(
    client: Any, model: str, system: str, document: str, turns: int, max_tokens: int
) -> tuple[list[tuple[int, float]], int, list[str]]:
    ttfts: list[tuple[int, float]] = []
    prompt_tokens, reasons = 0, []
    previous: str | None = None
    for turn in range(1, turns + 1):
        question = f"Question {turn}: what does it say?"
        text = f"{document}\n\n{question}" if turn == 1 else question
        t0 = time.perf_counter()
        first: float | None = None
        raw = client.responses.with_raw_response.create(
            model=model,
            instructions=system,
            input=text,
            previous_response_id=previous,
            max_output_tokens=max_tokens,
            temperature=0,
            stream=True,
        )
        if turn > 1:
            reasons.append(raw.headers.get("x-tierline-route-reason", "none"))
        for event in raw.parse():
            if event.type == "response.output_text.delta" and first is None:
                first = time.perf_counter() - t0
            if event.type in ("response.completed", "response.incomplete"):
                previous = event.response.id
                if event.response.usage is not None:
                    prompt_tokens += event.response.usage.input_tokens
        if first is not None:
            ttfts.append((turn, first))
    return ttfts, prompt_tokens, reasons


def run_mode(client: Any, model: str, args: argparse.Namespace) -> dict[str, Any]:
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
    deadline = time.monotonic() + 180
    while True:  # Ray exports engine metrics every few seconds
        d = delta(prefix_cache_by_replica(_scrape(), model), before)
        if total(d).queries >= sent or time.monotonic() > deadline:
            break
        time.sleep(3)
    overall = total(d)
    all_ttft = [t for r in results for _, t in r[0]]
    follow = [t for r in results for turn, t in r[0] if turn >= 2]
    return {
        "requests": args.conversations * args.turns,
        "follow_up_turns": args.conversations * (args.turns - 1),
        # the gateway's route reason of each follow-up turn: `pinned` here, since each mode
        # names its tier (tier affinity is for `model: auto`; the replica is Serve's pick)
        "follow_up_route_reasons": dict(Counter(x for r in results for x in r[2])),
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
    }


def main() -> None:
    from openai import OpenAI

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conversations", type=int, default=8)
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--port", type=int, default=0, help="Gateway port (0: a free one).")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "responses.json")
    args = ap.parse_args()
    ensure_tiny_models(ROOT / "models")
    scratch = Path(tempfile.mkdtemp(prefix="tierline-bench-responses-"))
    keys_file = scratch / "keys.json"
    key = add_key(keys_file, "bench")
    spec = _spec(args.port or _free_port(), keys_file, scratch / "responses.db")
    print("[responses-bench] starting the cluster (two tiers x two replicas)", flush=True)
    run = local.start(spec, ready_timeout_s=1200)
    results: dict[str, Any] = {}
    try:
        client = OpenAI(base_url=f"{run.endpoint}/v1", api_key=key, max_retries=0, timeout=300)
        for (mode, routing), tier in zip(MODES.items(), spec.tiers, strict=True):
            assert tier.replica_routing == routing
            results[mode] = {"tier": tier.name, "replica_routing": routing}
            results[mode] |= run_mode(client, tier.model_name, args)
            print(f"[responses-bench] {mode}: {json.dumps(results[mode])}", flush=True)
            out = {
                "benchmark": "Responses API multi-turn conversations (previous_response_id), "
                "replica affinity (prefix routing) vs none (pow2), two replicas each",
                "spec": str(SPEC.relative_to(ROOT)),
                "conversations": args.conversations,
                "turns": args.turns,
                "concurrency": args.concurrency,
                "max_output_tokens": args.max_tokens,
                "cluster_ready_s": round(run.ready_s, 1),
                "load_average_at_end": list(os.getloadavg()),
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "modes": results,
            }
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(out, indent=2) + "\n")
    finally:
        local.stop()
    print(f"[responses-bench] wrote {args.out}")


if __name__ == "__main__":
    main()
