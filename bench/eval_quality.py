"""`make eval`: answer quality of `make run`'s models, measured live.

Starts configs/local.yaml or `--spec` (real models, RAG on, auth off, a fresh store, a free port),
then, with the official `openai` client and the OpenAI Agents SDK as callers:
- grounded-answer accuracy: the answer contains the planted fact, RAG on and RAG off,
  on each labelled set of bench/eval_sets.py (entities, policies), per split;
- citation precision: cited chunks that come from the planted document, over all cited
  chunks (and how often the planted document is cited at all);
- Responses follow-up recall: a fact told in one turn is in the answer to the next,
  chained by `previous_response_id`;
- Agents SDK tool runs, streamed and not: the tool is called and its result (a planted
  date) is in the final output;
- the router on live outcomes: each tier's accuracy on labelled questions, the live
  `auto` answers', and the quality/cost curve of the router's scores where the tiers
  differ (bench/eval_router.py).
Writes bench/results/eval.json and the `make eval` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from bench.eval_report import write_section
from bench.eval_router import head_scorer, notable, outcome, routing_sets, summarize
from bench.eval_sets import (
    GroundedItem,
    MemoryItem,
    ToolItem,
    contains,
    entities,
    memory,
    policies,
    split,
    tool_items,
)

ROOT = Path(__file__).resolve().parents[1]
STORE = ROOT / ".cache" / "eval" / "milvus.db"
COLLECTION = "eval_facts"
CONCURRENCY = 4


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _bounded(coros: list[Any], limit: int = CONCURRENCY) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(c: Any) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))


def ingest(endpoint: str, api_key: str, items: list[GroundedItem]) -> None:
    import httpx

    auth = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=endpoint, headers=auth, timeout=600) as http:
        http.post("/v1/rag/collections", json={"name": COLLECTION}).raise_for_status()
        docs = [{"id": i.doc_id, "text": i.text, "metadata": {}} for i in items]
        for start in range(0, len(docs), 16):
            resp = http.post(
                f"/v1/rag/collections/{COLLECTION}/documents",
                json={"documents": docs[start : start + 16]},
            )
            resp.raise_for_status()


async def grounded(
    client: Any, item: GroundedItem, rag: bool, top_k: int | None = None
) -> dict[str, Any]:
    opts: dict[str, Any] = {"collection": COLLECTION}
    if top_k is not None:
        opts["top_k"] = top_k
    extra = {"rag": opts} if rag else {}
    t0 = time.monotonic()
    raw = await client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": item.question}],
        max_tokens=48,
        temperature=0,
        extra_body=extra,
    )
    body = json.loads(raw.text)
    text = body["choices"][0]["message"].get("content") or ""
    cites = [c.get("document_id") for c in body.get("citations") or []]
    return {
        "id": item.doc_id,
        "ok": contains(text, item.answer),
        "answer": text.strip()[:200],
        "expected": item.answer,
        "tier": raw.headers.get("x-tierline-tier"),
        "cited": cites,
        "s": round(time.monotonic() - t0, 2),
    }


def grounded_summary(rows: list[dict[str, Any]], planted: dict[str, str]) -> dict[str, Any]:
    n = len(rows)
    cited = [c for r in rows for c in r["cited"]]
    right = sum(1 for r in rows for c in r["cited"] if c == r["id"])
    out: dict[str, Any] = {
        "n": n,
        "accuracy": round(sum(r["ok"] for r in rows) / n, 3) if n else None,
        "tiers": {t: sum(1 for r in rows if r["tier"] == t) for t in {r["tier"] for r in rows}},
    }
    if cited:
        out["citation_precision"] = round(right / len(cited), 3)
        out["planted_doc_cited"] = round(sum(r["id"] in r["cited"] for r in rows) / n, 3)
        out["citations_per_answer"] = round(len(cited) / n, 2)
    out["misses"] = [
        {"q": planted[r["id"]], "expected": r["expected"], "answer": r["answer"]}
        for r in rows
        if not r["ok"]
    ][:8]
    return out


async def follow_up(client: Any, item: MemoryItem) -> dict[str, Any]:
    first = await client.responses.create(
        model="auto", input=item.statement, max_output_tokens=48, temperature=0
    )
    second = await client.responses.create(
        model="auto",
        input=item.question,
        previous_response_id=first.id,
        max_output_tokens=48,
        temperature=0,
    )
    text = second.output_text or ""
    return {"ok": contains(text, item.answer), "expected": item.answer, "answer": text[:200]}


async def tool_run(
    endpoint: str, api_key: str, item: ToolItem, streamed: bool, choice: str
) -> dict[str, Any]:
    from agents import (
        Agent,
        ModelSettings,
        OpenAIChatCompletionsModel,
        Runner,
        ToolCallItem,
        function_tool,
    )
    from openai import AsyncOpenAI

    calls: list[str] = []

    @function_tool
    def order_status(order_id: str) -> str:
        """Look up when an order ships."""
        calls.append(order_id)
        return f"Order {order_id} ships on {item.ship_date}."

    client = AsyncOpenAI(base_url=f"{endpoint}/v1", api_key=api_key, max_retries=0)
    agent = Agent(
        name="support",
        instructions="You answer questions about orders. Use the tools.",
        tools=[order_status],
        model=OpenAIChatCompletionsModel(model="auto", openai_client=client),
        model_settings=ModelSettings(tool_choice=choice, max_tokens=64, temperature=0),
    )
    try:
        if streamed:
            result: Any = Runner.run_streamed(agent, item.question, max_turns=4)
            async for _ in result.stream_events():
                pass
        else:
            result = await Runner.run(agent, item.question, max_turns=4)
        final = str(result.final_output or "")
        called = any(isinstance(i, ToolCallItem) for i in result.new_items)
        error = None
    except Exception as err:  # an agent run that raises is a failed run; say why
        final, called, error = "", bool(calls), f"{type(err).__name__}: {str(err)[:160]}"
    ok = called and contains(final, item.ship_date)
    return {
        "ok": ok,
        "called": called,
        "args_right": item.order_id in calls,
        "final": final[:200],
        "expected": item.ship_date,
        "error": error,
    }


def rate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    out: dict[str, Any] = {"n": n, "rate": round(sum(r["ok"] for r in rows) / n, 3)}
    if rows and "called" in rows[0]:
        out["tool_called"] = round(sum(r["called"] for r in rows) / n, 3)
        out["errors"] = sorted({r["error"] for r in rows if r["error"]})[:4]
    out["misses"] = [r for r in rows if not r["ok"]][:5]
    return out


async def routing(client: Any, spec: Any, parts: tuple[str, ...]) -> dict[str, Any]:
    """The router on live outcomes (bench/eval_router.py), per set and split in `parts`."""
    tiers = [(t.name, t.model_name) for t in spec.tiers]
    names = [name for name, _ in tiers]
    out: dict[str, Any] = {"tiers": names}
    scores = head_scorer(spec)
    for name, split_items in routing_sets().items():
        for part, items in split_items.items():
            if part not in parts:
                continue
            rows = await _bounded([outcome(client, i, tiers) for i in items])
            key = f"{name}/{part}"
            out[key] = summarize(rows, names, scores([i.question for i in items]))
            out[key]["misses"] = notable(rows)
            print(key, {k: v for k, v in out[key].items() if k != "misses"})
    return out


async def measure(
    endpoint: str,
    api_key: str,
    quick: bool,
    parts: tuple[str, ...],
    top_k: int | None,
    spec: Any,
) -> dict[str, Any]:
    """Grounded answers and the router on live outcomes on each split in `parts`;
    follow-ups and tool runs on `held_out`, or on `dev` when that is the only split asked
    for (tuning)."""
    from agents import set_tracing_disabled
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    client = AsyncOpenAI(base_url=f"{endpoint}/v1", api_key=api_key, max_retries=0, timeout=600)
    sets = {"entities": split(entities(), dev=10), "policies": split(policies(), dev=6)}
    planted = {i.doc_id: i.question for s in sets.values() for part in s.values() for i in part}
    out: dict[str, Any] = {"grounded": {}}
    for name, split_items in sets.items():
        for part, items in split_items.items():
            if part not in parts or (quick and part == "dev"):
                continue
            for rag in (True, False):
                rows = await _bounded([grounded(client, i, rag, top_k) for i in items])
                key = f"{name}/{part}/rag_{'on' if rag else 'off'}"
                out["grounded"][key] = grounded_summary(rows, planted)
                print(key, {k: v for k, v in out["grounded"][key].items() if k != "misses"})
    other = "dev" if parts == ("dev",) else "held_out"
    mem = split(memory(), dev=2)[other]
    rows = await _bounded([follow_up(client, m) for m in mem])
    out["follow_up"] = rate(rows)
    print("follow_up", out["follow_up"]["rate"])
    tools = split(tool_items(), dev=2)[other]
    out["tools"] = {}
    for streamed in (False, True):
        for choice in ("required", "auto"):
            if quick and choice == "auto":
                continue
            rows = await _bounded([tool_run(endpoint, api_key, t, streamed, choice) for t in tools])
            key = f"{'streamed' if streamed else 'not_streamed'}/tool_choice_{choice}"
            out["tools"][key] = rate(rows)
            print(key, out["tools"][key]["rate"], out["tools"][key].get("errors"))
    out["routing"] = await routing(
        client, spec, tuple(p for p in parts if not (quick and p == "dev"))
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "eval.json")
    ap.add_argument(
        "--spec",
        type=Path,
        default=ROOT / "configs" / "local.yaml",
        help="The cluster spec: started (RAG on, auth off) unless --endpoint is given; its "
        "tiers are the ones the router part asks by name.",
    )
    ap.add_argument("--endpoint", help="An already running cluster of --spec to measure.")
    ap.add_argument("--api-key", default="unused", help="Its API key (with --endpoint).")
    ap.add_argument("--quick", action="store_true", help="Held-out splits only, no auto tools.")
    ap.add_argument("--no-report", action="store_true", help="Leave BENCHMARKS.md alone.")
    ap.add_argument(
        "--split",
        choices=("all", "dev", "held_out"),
        default="all",
        help="dev: the tune splits only (grounded, router, follow-ups and tool runs), for "
        "trying a change; held_out: the reported splits only; all (default): grounded and "
        "router on both.",
    )
    ap.add_argument(
        "--top-k",
        type=int,
        help="Chunks per grounded chat (default: the spec's rag.default_top_k).",
    )
    args = ap.parse_args()
    parts = ("dev", "held_out") if args.split == "all" else (args.split,)

    sets = entities() + policies()  # one collection: every other document is a distractor
    started = None
    endpoint = args.endpoint
    top_k: int | str = args.top_k or "rag.default_top_k"
    t0 = time.monotonic()
    from tierline.cluster.specfile import load_spec

    spec = load_spec(args.spec)
    if endpoint is None:
        from tierline.cli import local
        from tierline.cluster.real_models import ensure_real_models
        from tierline.router.static_embedding import cache_dir

        ensure_real_models(ROOT / "models", cache_dir() / "gguf")
        shutil.rmtree(STORE.parent, ignore_errors=True)
        STORE.parent.mkdir(parents=True, exist_ok=True)
        auth = spec.gateway.auth.model_copy(update={"enabled": False})
        gateway = spec.gateway.model_copy(update={"port": free_port(), "auth": auth})
        rag = spec.rag.model_copy(update={"uri": str(STORE)})
        top_k = args.top_k or rag.default_top_k
        spec = spec.model_copy(update={"gateway": gateway, "rag": rag})
        started = local.start(spec, ready_timeout_s=900)
        endpoint = started.endpoint
    ready_s = time.monotonic() - t0
    try:
        ingest(endpoint, args.api_key, sets)
        result = {
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "spec": _shown(args.spec)
            + (" (auth off, fresh store)" if started else f" at {endpoint} (`make run`)"),
            "ready_s": round(ready_s, 1) if started else None,
            "split": args.split,
            "top_k": top_k,
            **asyncio.run(measure(endpoint, args.api_key, args.quick, parts, args.top_k, spec)),
            "took_s": round(time.monotonic() - t0, 1),
        }
    finally:
        if started is not None:
            from tierline.cli import local

            local.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if not args.no_report:
        write_section(ROOT / "BENCHMARKS.md", result)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
