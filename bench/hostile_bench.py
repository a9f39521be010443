"""A normal tenant's chat latency while a hostile tenant sends the worst request of each
class (issue 27's target: p99 at most 1.5x the same chat with no hostile tenant).

    .venv/bin/python -m bench.hostile_bench [--seconds 6] [--rate 40] [--workers 2]
        [--engine-delay-ms 20] [--out bench/results/hostile.json]

In-process: the real gateway app (`create_app` over `GatewayCore`, quotas kept by a real
ledger, RAG over an in-process `RagCore` with a memory store) called through httpx's ASGI
transport. The fake engine answers after a fixed `--engine-delay-ms` (`asyncio.sleep`),
so what the hostile tenant can contend is the gateway's own CPU and event loop. Caveat:
RAG search and grounding run in this process too (in a cluster they run in the RAG
replica), so the RAG classes here overstate what they cost the gateway.

The normal tenant sends small chats open-loop at `--rate` per second (each request's
latency from its send to its answer, never waiting on the one before). Phases of
`--seconds` each: `baseline` (no hostile tenant), then one per hostile class with
`--workers` hostile requests always in flight, then `baseline_end` (the machine's drift).
Each phase's p50/p99 and its p99 over the first baseline's go to `--out`; a table is
printed. Tests cover only the pure parts (`summarize`, `with_ratios`), never timings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
from tierline.deployments.heap import SETTLE_AT

from bench.hostile_app import KEYS, Gateway, build_app

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 1.5
COST_TARGET_S_PER_1K = 1.0
"""Issue 27: no request costs more than 1 s of shared CPU per 1,000 tokens it is charged."""


# -- pure parts ---------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0-100), nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(latencies_s: Sequence[float], statuses: Sequence[int]) -> dict[str, Any]:
    """One phase's normal-tenant figures, in milliseconds."""
    return {
        "n": len(latencies_s),
        "p50_ms": round(percentile(latencies_s, 50) * 1000, 2),
        "p99_ms": round(percentile(latencies_s, 99) * 1000, 2),
        "max_ms": round(max(latencies_s, default=math.nan) * 1000, 2),
        "errors": sum(1 for s in statuses if s != 200),
        "error_statuses": dict(Counter(str(s) for s in statuses if s != 200)),
    }


def with_ratios(phases: Mapping[str, dict[str, Any]], baseline: str = "baseline") -> dict[str, Any]:
    """Each phase with `p50_ratio` and `p99_ratio` over `baseline`'s, and `within_target`
    (p99 ratio at most `TARGET_RATIO`)."""
    base = phases[baseline]
    out: dict[str, Any] = {}
    for name, row in phases.items():
        p50 = row["p50_ms"] / base["p50_ms"] if base["p50_ms"] else math.nan
        p99 = row["p99_ms"] / base["p99_ms"] if base["p99_ms"] else math.nan
        out[name] = {
            **row,
            "p50_ratio": round(p50, 2),
            "p99_ratio": round(p99, 2),
            "within_target": bool(p99 <= TARGET_RATIO),
        }
    return out


def worst_ratio(phases: Mapping[str, dict[str, Any]]) -> float:
    """The largest p99 ratio of the hostile phases (the baselines left out)."""
    hostile = [r["p99_ratio"] for n, r in phases.items() if not n.startswith("baseline")]
    return max(hostile, default=math.nan)


def table(phases: Mapping[str, dict[str, Any]]) -> str:
    head = f"{'phase':<22}{'n':>6}{'p50 ms':>9}{'p99 ms':>9}{'p99 x':>7}{'err':>5}  hostile answers"
    lines = [head, "-" * len(head)]
    for name, r in phases.items():
        hostile = ", ".join(f"{k}:{v}" for k, v in sorted(r.get("hostile_statuses", {}).items()))
        lines.append(
            f"{name:<22}{r['n']:>6}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
            f"{r['p99_ratio']:>7.2f}{r['errors']:>5}  {hostile or '-'}"
        )
    return "\n".join(lines)


# -- the hostile requests (the worst of each class; tests/unit/test_hostile_inputs.py) -----
def _tools(count: int, description_chars: int) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": f"fn_{i}",
                "description": "x" * description_chars,
                "parameters": {
                    "type": "object",
                    "properties": {f"field_{j}": {"type": "string"} for j in range(8)},
                },
            },
        }
        for i in range(count)
    ]


def _schema(approx_bytes: int) -> dict[str, Any]:
    props: dict[str, Any] = {}
    i = 0
    while len(json.dumps(props)) < approx_bytes:
        props[f"property_{i}"] = {"type": "string", "enum": [f"v{i}_{j}" for j in range(20)]}
        i += 1
    return {"type": "object", "properties": props, "required": list(props)}


def _chat(content: str = "hi", **kw: Any) -> dict[str, Any]:
    return {
        "model": "auto",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 8,
        **kw,
    }


Request = Callable[[httpx.AsyncClient, dict[str, str]], Any]


def _post_json(path: str, body: Any) -> Request:
    raw = json.dumps(body).encode()

    def send(c: httpx.AsyncClient, headers: dict[str, str]) -> Any:
        return c.post(path, content=raw, headers={**headers, "content-type": "application/json"})

    return send


def _post_raw(path: str, raw: bytes) -> Request:
    def send(c: httpx.AsyncClient, headers: dict[str, str]) -> Any:
        return c.post(path, content=raw, headers={**headers, "content-type": "application/json"})

    return send


def _upload(files: int) -> Request:
    parts = [("file", (f"f{i}.txt", b"a few words", "text/plain")) for i in range(files)]
    # Encoded once, like the JSON bodies: building 1,000 parts takes httpx ~6 ms, which in
    # process is the attacker's CPU spent on the gateway's loop (over a socket it is not).
    built = httpx.Request("POST", "http://gw/", files=parts)
    raw, content_type = built.read(), built.headers["content-type"]

    def send(c: httpx.AsyncClient, headers: dict[str, str]) -> Any:
        return c.post(
            "/v1/rag/collections/up/documents",
            content=raw,
            headers={**headers, "content-type": content_type},
        )

    return send


def hostile_requests() -> dict[str, Request]:
    """Each class's worst request that fits the default 1 MiB body limit."""
    deep = 400_000
    at_caps = {
        "stop": ["s" * 256] * 4,
        "logit_bias": {str(i): 1 for i in range(300)},
        "bad_words": [f"word{i}" for i in range(64)],
        "stop_token_ids": list(range(1024)),
        "allowed_token_ids": list(range(1024)),
        "logprobs": True,
        "top_logprobs": 20,
    }
    vals = list(range(1024))
    wide_filter = {"$or": [{"n": {"$in": vals}}, {"n": {"$nin": vals}}, {"tag": {"$in": vals}}]}
    reasoning = {"type": "reasoning", "summary": [{"type": "summary_text", "text": "r" * 900_000}]}
    return {
        "huge_tools": _post_json("/v1/chat/completions", _chat(tools=_tools(128, 7000))),
        "engine_fields_at_caps": _post_json("/v1/chat/completions", _chat(**at_caps)),
        "deep_json": _post_raw(
            "/v1/chat/completions",
            b'{"model":"auto","messages":[{"role":"user","content":"hi"}],"x":'
            + b"[" * deep
            + b"]" * deep
            + b"}",
        ),
        "big_json_schema": _post_json(
            "/v1/chat/completions",
            _chat(
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "big", "schema": _schema(148_000)},
                }
            ),
        ),
        "grounded_needs_trim": _post_json(
            "/v1/chat/completions",
            _chat("alpha beta " * 11_500, rag={"collection": "kb", "top_k": 50}),
        ),
        "rag_filter": _post_json(
            "/v1/rag/collections/kb/search",
            {"query": "alpha beta", "top_k": 50, "filter": wide_filter},
        ),
        "upload_many_files": _upload(1000),
        "responses_reasoning": _post_json(
            "/v1/responses",
            {
                "model": "auto",
                "max_output_tokens": 8,
                "input": [reasoning, {"role": "user", "content": "hi"}],
            },
        ),
    }


def cost_row(samples: Sequence[tuple[float, int, int]]) -> dict[str, Any]:
    """One class's cost from (gateway CPU seconds, tokens charged, status) per request:
    medians, and the CPU per 1,000 tokens charged (None where nothing was charged)."""
    cpu_s = percentile([c for c, _, _ in samples], 50)
    tokens = int(percentile([t for _, t, _ in samples], 50))
    return {
        "n": len(samples),
        "cpu_ms": round(cpu_s * 1000, 2),
        "tokens_charged": tokens,
        "cpu_s_per_1k_tokens": round(cpu_s / (tokens / 1000), 4) if tokens else None,
        "statuses": dict(Counter(str(st) for _, _, st in samples)),
    }


def cost_table(costs: Mapping[str, dict[str, Any]]) -> str:
    lines = [f"{'class':24} {'cpu ms':>8} {'tokens':>8} {'s/1k tok':>9}  statuses", "-" * 64]
    for name, r in costs.items():
        per = r["cpu_s_per_1k_tokens"]
        per_s = "-" if per is None else f"{per:.4f}"
        lines.append(
            f"{name:24} {r['cpu_ms']:8.2f} {r['tokens_charged']:8d} {per_s:>9}  {r['statuses']}"
        )
    return "\n".join(lines)


async def seed(c: httpx.AsyncClient, chunks: int = 1000) -> None:
    """The hostile tenant's collections: `kb` with `chunks` documents, `up` for uploads."""
    headers = _auth("hostile")
    for name in ("kb", "up"):
        r = await c.post("/v1/rag/collections", json={"name": name}, headers=headers)
        assert r.is_success, r.text
    docs = [
        {"id": f"d{i}", "text": f"alpha beta doc {i}", "metadata": {"n": i, "tag": i}}
        for i in range(chunks)
    ]
    for at in range(0, chunks, 250):
        body = {"documents": docs[at : at + 250]}
        r = await c.post("/v1/rag/collections/kb/documents", json=body, headers=headers)
        assert r.status_code == 200, r.text


def _auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


async def phase(
    c: httpx.AsyncClient, seconds: float, rate: float, hostile: Request | None, workers: int
) -> dict[str, Any]:
    """Normal chats open-loop at `rate`/s for `seconds`, with `workers` hostile requests
    in flight throughout when `hostile` is given."""
    latencies: list[float] = []
    statuses: list[int] = []
    hostile_statuses: Counter[int] = Counter()
    stop = asyncio.Event()
    normal_body = json.dumps(_chat("what is the capital of Zorbania?")).encode()
    normal_headers = {**_auth("normal"), "content-type": "application/json"}

    async def one_normal() -> None:
        t0 = time.perf_counter()
        r = await c.post("/v1/chat/completions", content=normal_body, headers=normal_headers)
        latencies.append(time.perf_counter() - t0)
        statuses.append(r.status_code)

    async def hostile_loop() -> None:
        assert hostile is not None
        while not stop.is_set():
            try:
                r = await hostile(c, _auth("hostile"))
                hostile_statuses[r.status_code] += 1
            except httpx.HTTPError as err:
                hostile_statuses[type(err).__name__] += 1  # type: ignore[index]
            # An answer refused at the edge may never suspend in-process; a client over a
            # socket would yield here, so the loop is not starved by the bench itself.
            await asyncio.sleep(0)

    loop = asyncio.get_running_loop()
    bullies = [asyncio.create_task(hostile_loop()) for _ in range(workers if hostile else 0)]
    if bullies:
        await asyncio.sleep(0.2)  # the hostile requests are in flight before we measure
    sent: list[asyncio.Task[None]] = []
    start = loop.time()
    i = 0
    while True:
        due = start + i / rate
        if due - start >= seconds:
            break
        await asyncio.sleep(max(0.0, due - loop.time()))
        sent.append(asyncio.create_task(one_normal()))
        i += 1
    await asyncio.gather(*sent)
    stop.set()
    await asyncio.gather(*bullies)
    row = summarize(latencies, statuses)
    if hostile is not None:
        row["hostile_statuses"] = {str(k): v for k, v in hostile_statuses.items()}
    return row


async def costs(
    c: httpx.AsyncClient, gw: Gateway, attacks: Mapping[str, Request], n: int
) -> dict[str, Any]:
    """Each class's worst request sent `n` times, one at a time, by the hostile tenant
    alone (so the loop share never refuses it): the gateway CPU it took (its loop steps
    until the answer started and its threads' work, as the loop share times them) and
    the tokens the quota charged it."""
    rows: dict[str, Any] = {}
    for name, send in attacks.items():
        samples = []
        for _ in range(n):
            cpu0 = gw.share.cpu_s["hostile"]
            tokens0 = gw.ledger.tokens_used("hostile", time.monotonic())
            r = await send(c, _auth("hostile"))
            tokens = gw.ledger.tokens_used("hostile", time.monotonic()) - tokens0
            samples.append((gw.share.cpu_s["hostile"] - cpu0, tokens, r.status_code))
        rows[name] = cost_row(samples)
    return rows


async def started(
    c: httpx.AsyncClient, attacks: Mapping[str, Request], args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    """Seed the gateway, warm it up and measure the baseline phase (the phases so far)."""
    await seed(c)
    # warm-up: first calls import and compile what a long-running replica has loaded, and
    # the replica settles its heap after its first requests (deployments.heap): that one
    # full collection is part of starting, not of any measured phase
    await phase(c, max(1.0, 1.5 * SETTLE_AT[0] / args.rate), args.rate, None, 0)
    for send in attacks.values():
        await send(c, _auth("hostile"))
    phases = {"baseline": await phase(c, args.seconds, args.rate, None, 0)}
    print(f"baseline: {phases['baseline']}", flush=True)
    return phases


async def run(args: argparse.Namespace) -> dict[str, Any]:
    gw = build_app(args.engine_delay_ms / 1000)
    app, rag_core = gw.app, gw.rag_core
    await rag_core.start()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=120) as c:
        attacks = hostile_requests()
        phases = await started(c, attacks, args)
        for name, send in attacks.items():
            phases[name] = await phase(c, args.seconds, args.rate, send, args.workers)
            print(f"{name}: {phases[name]}", flush=True)
        phases["baseline_end"] = await phase(c, args.seconds, args.rate, None, 0)
        await asyncio.sleep(5 * gw.share.spec.window_s)  # the normal tenant goes quiet
        cost = await costs(c, gw, attacks, args.cost_samples)
    return {
        **phases_result(
            "bench.hostile_bench",
            args,
            phases,
            "in-process: RAG search/grounding share the gateway's event loop here",
        ),
        "cost_target_s_per_1k_tokens": COST_TARGET_S_PER_1K,
        "worst_cpu_s_per_1k_tokens": max(
            (r["cpu_s_per_1k_tokens"] or 0.0 for r in cost.values()), default=0.0
        ),
        "costs": cost,
    }


def phases_result(
    module: str, args: argparse.Namespace, phases: Mapping[str, dict[str, Any]], note: str
) -> dict[str, Any]:
    """A run's figures (phases with their ratios, the worst, the machine) as written to
    `--out` by this bench and bench/hostile_tcp.py."""
    rows = with_ratios(phases)
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": f"python -m {module} "
        + f"--seconds {args.seconds} --rate {args.rate} --workers {args.workers} "
        + f"--engine-delay-ms {args.engine_delay_ms}",
        "load_average": list(os.getloadavg()),
        "cpus": os.cpu_count(),
        "target_p99_ratio": TARGET_RATIO,
        "worst_p99_ratio": worst_ratio(rows),
        "baseline_end_p99_ratio": rows["baseline_end"]["p99_ratio"],
        "note": note,
        "phases": rows,
    }


def phase_args(ap: argparse.ArgumentParser) -> None:
    """The options both hostile benches take."""
    ap.add_argument("--seconds", type=float, default=6.0, help="length of each phase")
    ap.add_argument("--rate", type=float, default=40.0, help="normal chats per second")
    ap.add_argument("--workers", type=int, default=2, help="hostile requests in flight")
    ap.add_argument("--engine-delay-ms", type=float, default=20.0)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    phase_args(ap)
    ap.add_argument("--cost-samples", type=int, default=5, help="requests per class, costs")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/hostile.json")
    args = ap.parse_args(argv)
    logging.disable(logging.INFO)  # one log line per request would be most of the output
    result = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result["phases"]))
    print(f"load average {result['load_average']}; worst p99 ratio {result['worst_p99_ratio']}")
    print(cost_table(result["costs"]))


if __name__ == "__main__":
    main()
