"""Down-routing under a flood (issue 28): goodput, p99 time to first token, refusals and
the predicted loss spent, with `router.load_downgrade` on against off (today's
queue-then-refuse), at 3x the strong tier's capacity.

    .venv/bin/python -m bench.router_flood_bench [--rounds 2] [--factor 3]
        [--out bench/results/router_flood.json]

The cluster is `configs/tiny.yaml` (two tiny random-weight Llama tiers on CPU; the text is noise,
the serving path is real) with RAG off, every `auto` request routed to the large tier
(`learned.strong_share: 1.0`, so each request has somewhere to go down to) and the large tier's
limits set to `--running` running and `--queued` queued: the gateway admits `capacity` requests
there (`deployments.gateway.pipeline.admission`). Each variant starts its own cluster (the spec
differs only in `router.load_downgrade.enabled`), then sends `--rounds` floods
of `factor x capacity` concurrent streaming chats, prompts drawn in turn from a fixed
mixed list (easy and hard, so the scorer's predicted losses differ).

Goodput is the streams that ended with `[DONE]` per second of the flood's wall time;
time to first token is from the request's write to its first content chunk; refusals are
429/503 answers; the loss spent is read from the `x-tierline-route-reason` of the
answers sent down (`downgraded:load;expected_loss=L`). The figures go to `--out`; tests
check only the pure parts (spec, parsing, summary), never timings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
REASON_HEADER = "x-tierline-route-reason"
TIER_HEADER = "x-tierline-tier"

PROMPTS = (
    "What is the capital of France?",
    "Say hello in Spanish.",
    "Prove that there are infinitely many primes.",
    "What colour is the sky on a clear day?",
    "Derive the closed form of the sum of the first n squares, step by step.",
    "Name three fruits.",
    "A train leaves at 3 pm at 80 km/h; another at 4 pm at 100 km/h. When does it catch up?",
    "Translate 'good morning' into German.",
    "Explain why the halting problem is undecidable.",
    "What is 7 times 8?",
    "Write a Python function that merges two sorted lists in linear time and explain it.",
    "Is water wet?",
)


@dataclass(frozen=True)
class Outcome:
    status: int
    ttft_s: float | None
    """Write to first content chunk; None when the request was refused or failed."""
    done: bool
    """The stream ended with `[DONE]`."""
    tier: str
    reason: str


# -- pure parts ------------------------------------------------------------------------------
def flood_spec_data(
    data: dict[str, Any], downgrade: bool, running: int, queued: int, budget: float | None
) -> dict[str, Any]:
    """A spec's data for one variant: RAG off, every auto request routed to the most
    capable tier, that tier's limits set, and down-routing on or off."""
    out = json.loads(json.dumps(data))
    out.setdefault("rag", {})["enabled"] = False
    top = out["tiers"][-1]
    top["max_ongoing_requests"], top["max_queued_requests"] = running, queued
    router = out.setdefault("router", {})
    router["policy"] = "learned"
    learned = router.setdefault("learned", {})
    learned.pop("quality_target", None)
    learned["strong_share"] = 1.0
    router.pop("max_quality_loss", None)
    load = {"enabled": downgrade}
    if budget is not None:
        load["max_quality_loss"] = budget
    router["load_downgrade"] = load
    return out


def absolute_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """A spec's data with its tiers' relative paths (model, chat template) resolved
    against `base`, the source file's folder, and no keys file (the bench passes its own)."""
    out = json.loads(json.dumps(data))
    for tier in out["tiers"]:
        for key in ("model_source", "chat_template"):
            value = tier.get(key)
            if isinstance(value, str) and value.startswith("."):
                tier[key] = str((base / value).resolve())
    out.get("gateway", {}).get("auth", {}).pop("keys_file", None)
    return out


def loss_of(reason: str) -> float | None:
    """The expected loss a route reason reports (`...;expected_loss=0.031`), or None."""
    _, _, rest = reason.partition(";")
    for part in rest.split(";"):
        key, _, value = part.partition("=")
        if key.strip() == "expected_loss":
            try:
                return float(value)
            except ValueError:
                return None
    return None


def p99(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(0.99 * len(ordered)) - 1))]


def summarize(outcomes: Sequence[Outcome], wall_s: float) -> dict[str, Any]:
    """Goodput, p99 TTFT, refusals and the predicted loss spent over one or more floods."""
    done = [o for o in outcomes if o.done]
    ttfts = [o.ttft_s for o in done if o.ttft_s is not None]
    down = [o for o in outcomes if o.reason.startswith("downgraded:load")]
    losses = [x for x in (loss_of(o.reason) for o in down) if x is not None]
    by_tier: dict[str, int] = {}
    for o in done:
        by_tier[o.tier] = by_tier.get(o.tier, 0) + 1
    p = p99(ttfts)
    return {
        "requests": len(outcomes),
        "completed": len(done),
        "goodput_per_s": round(len(done) / wall_s, 3) if wall_s > 0 else None,
        "p99_ttft_ms": None if p is None else round(1000 * p, 1),
        "refusals": sum(1 for o in outcomes if o.status in (429, 503)),
        "errors": sum(1 for o in outcomes if o.status >= 500 and o.status != 503),
        "completed_by_tier": dict(sorted(by_tier.items())),
        "load_downgraded": len(down),
        "predicted_loss_spent": round(sum(losses), 4),
        "predicted_loss_mean": round(sum(losses) / len(losses), 4) if losses else None,
    }


def compare(on: dict[str, Any], off: dict[str, Any], budget: float) -> dict[str, Any]:
    """The issue's target: at least 2x the goodput of queue-then-refuse, loss budget held."""
    base = off.get("goodput_per_s") or 0.0
    ratio = (on.get("goodput_per_s") or 0.0) / base if base else None
    mean = on.get("predicted_loss_mean")
    held = mean is None or mean <= budget + 1e-9
    return {
        "goodput_ratio": None if ratio is None else round(ratio, 2),
        "loss_budget": budget,
        "loss_budget_held": held,
        "target_met": ratio is not None and ratio >= 2.0 and held,
    }


# -- I/O -------------------------------------------------------------------------------------
async def _one(client: Any, api_key: str, prompt: str, max_tokens: int) -> Outcome:
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
        "temperature": 0,
    }
    headers = {"Authorization": f"Bearer {api_key}"}
    t0 = time.perf_counter()
    ttft, done = None, False
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        tier, reason = r.headers.get(TIER_HEADER, "none"), r.headers.get(REASON_HEADER, "")
        if r.status_code != 200:
            await r.aread()
            return Outcome(r.status_code, None, False, tier, reason)
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
            elif ttft is None and '"content"' in line:
                ttft = time.perf_counter() - t0
    return Outcome(200, ttft, done, tier, reason)


async def flood(url: str, api_key: str, n: int, max_tokens: int) -> tuple[list[Outcome], float]:
    import httpx

    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
        outcomes = await asyncio.gather(*(_one(client, api_key, p, max_tokens) for p in prompts))
        return list(outcomes), time.perf_counter() - t0


def run_variant(args: argparse.Namespace, downgrade: bool, work: Path) -> dict[str, Any]:
    from tierline.cluster.specfile import load_spec
    from tierline.deployments.gateway.pipeline.admission import tier_limit
    from tierline.deployments.gateway.pipeline.auth import add_key

    from bench.servers import Tierline, free_port

    data = absolute_paths(yaml.safe_load(args.spec.read_text()), args.spec.parent)
    name = "on" if downgrade else "off"
    path = work / f"flood-{name}.yaml"
    varied = flood_spec_data(data, downgrade, args.running, args.queued, args.budget)
    path.write_text(yaml.safe_dump(varied, sort_keys=False))
    spec = load_spec(path)
    top = spec.tiers[-1]
    capacity = (tier_limit(top, spec.gateway.replicas) or 0) * spec.gateway.replicas
    n = args.factor * capacity
    keys_file = work / f"keys-{name}.json"
    api_key = add_key(keys_file, "bench")
    port = free_port()
    server = Tierline(path, port, keys_file, work / f"tierline-{name}.log")
    outcomes: list[Outcome] = []
    wall = 0.0
    try:
        server.start()
        for _ in range(args.rounds):
            time.sleep(args.pause_s)
            got, seconds = asyncio.run(flood(server.url, api_key, n, args.max_tokens))
            outcomes += got
            wall += seconds
    finally:
        server.stop()
    return {"capacity": capacity, "flood": n, **summarize(outcomes, wall)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", type=Path, default=ROOT / "configs" / "tiny.yaml")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--factor", type=int, default=3, help="flood = factor x capacity")
    parser.add_argument("--running", type=int, default=4)
    parser.add_argument("--queued", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--budget", type=float, default=0.1, help="load-loss budget")
    parser.add_argument("--pause-s", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "router_flood.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tierline-router-flood-"))
    off = run_variant(args, False, work)
    print(json.dumps({"off": off}), flush=True)
    on = run_variant(args, True, work)
    print(json.dumps({"on": on}), flush=True)
    result = {
        "what": (
            f"{args.rounds} floods of {args.factor}x the large tier's capacity of streaming "
            f"auto chats (max_tokens {args.max_tokens}), down-routing on vs off"
        ),
        "spec": str(args.spec.relative_to(ROOT) if args.spec.is_relative_to(ROOT) else args.spec),
        "off": off,
        "on": on,
        **compare(on, off, args.budget),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("goodput_ratio", "loss_budget_held", "target_met")}))


if __name__ == "__main__":
    main()
