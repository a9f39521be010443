"""`tierline profile`: run a labelled prompt set through every tier of a live cluster.

Each prompt goes to each tier pinned by its served model name, streamed, so time to
first token and total latency are measured as a client sees them; tokens come from the
answer's `usage`, prices from `/v1/models`. The numbers are aggregated by the pure
`router.profile` and written as a table and a JSON profile (format: router/profile.py).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from tierline.router.profile import Answer, Prompt, TierPricing, build_profile, parse_prompts

console = Console()
err = Console(stderr=True)
DEFAULT_KEY_FILE = Path(".tierline/api-key")


def _key(key: str | None) -> str:
    if key:
        return key
    if DEFAULT_KEY_FILE.is_file():
        return DEFAULT_KEY_FILE.read_text().strip()
    return "none"


def _shown(path: Path) -> str:
    """A data file's path relative to the working directory where it is under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _tiers(client: Any) -> list[dict[str, Any]]:
    """Tier model cards of /v1/models, in the gateway's order (cheapest first)."""
    cards = client.models.list().model_dump()["data"]
    return [c for c in cards if c.get("tier")]


def run_one(client: Any, tier: str, model: str, prompt: Prompt, max_tokens: int) -> Answer:
    """One streamed chat completion, timed from the call to the first content chunk."""
    t0 = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    usage = None
    try:
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt.prompt}],
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            if chunk.choices:
                if first is None:
                    first = time.perf_counter() - t0
                parts.append(chunk.choices[0].delta.content or "")
            if chunk.usage is not None:
                usage = chunk.usage
    except Exception as e:  # the cluster refused or broke: count it, keep going
        return Answer(tier, prompt.id, ok=False, error=f"{type(e).__name__}: {e}"[:300])
    return Answer(
        tier,
        prompt.id,
        ok=True,
        ttft_s=first,
        total_s=time.perf_counter() - t0,
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
        text="".join(parts),
    )


def _fmt(v: Any, unit: str = "", digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}{unit}"
    return f"{v}{unit}"


def table(profile: dict[str, Any]) -> Table:
    t = Table(
        title=f"tier profile: {profile['prompts']} prompts, max_tokens {profile['max_tokens']}"
    )
    for col in (
        "tier",
        "ok/requests",
        "TTFT p50",
        "TTFT p90",
        "latency p50",
        "tokens in/out",
        "out tok/s",
        "$ / 1k req",
        "accuracy",
        "label score",
    ):
        t.add_column(col, justify="left" if col == "tier" else "right")
    for name, p in profile["tiers"].items():
        acc = f"{p['accuracy']:.2f} ({p['correct']}/{p['graded']})" if p["graded"] else "—"
        label = (
            f"{p['label_score']:.2f} ({p['label_output']})" if p["label_score"] is not None else "—"
        )
        t.add_row(
            name,
            f"{p['requests'] - p['errors']}/{p['requests']}",
            _fmt(p["ttft_p50_s"], " s"),
            _fmt(p["ttft_p90_s"], " s"),
            _fmt(p["latency_p50_s"], " s"),
            f"{p['prompt_tokens']}/{p['completion_tokens']}",
            _fmt(p["output_tokens_per_s"], "", 1),
            _fmt(p["cost_per_1k_requests_usd"], "", 5),
            acc,
            label,
        )
    return t


def profile(
    data: list[Path] = typer.Option(..., "--data", help="Labelled JSONL files (repeatable)."),
    endpoint: str = typer.Option("http://127.0.0.1:8000", "--endpoint", help="Gateway URL."),
    key: str | None = typer.Option(
        None, "--key", envvar="TIERLINE_API_KEY", help="API key (default: .tierline/api-key)."
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Prompts per file, at most."),
    max_tokens: int = typer.Option(64, "--max-tokens", min=1, help="Completion budget."),
    tier: list[str] = typer.Option([], "--tier", help="Only these tiers (repeatable)."),
    out: Path = typer.Option(Path("profile.json"), "--out", help="Where to write the JSON."),
    timeout_s: float = typer.Option(300.0, "--timeout", help="Per-request timeout, seconds."),
) -> None:
    """Run labelled prompts through every tier; write latency, tokens, cost and accuracy."""
    from openai import OpenAI

    prompts: list[Prompt] = []
    for path in data:
        if not path.is_file():
            err.print(f"[red]no such file[/]: {path}")
            raise typer.Exit(2)
        try:
            # JSONL lines end at "\n" only: prompts may hold U+2028 and other characters
            # that str.splitlines() would split on.
            rows = parse_prompts(path.read_text().split("\n"), str(path))
        except ValueError as e:
            err.print(f"[red]{e}[/]")
            raise typer.Exit(2) from None
        prompts += rows[:limit] if limit else rows
    client = OpenAI(
        base_url=endpoint.rstrip("/") + "/v1",
        api_key=_key(key),
        max_retries=0,
        timeout=timeout_s,
    )
    try:
        cards = _tiers(client)
    except Exception as e:
        err.print(f"[red]cannot list the cluster's models at {endpoint}[/]: {e}")
        raise typer.Exit(1) from None
    if tier:
        unknown = sorted(set(tier) - {c["tier"] for c in cards})
        if unknown:
            err.print(f"[red]unknown tier(s)[/]: {', '.join(unknown)}")
            raise typer.Exit(2)
        cards = [c for c in cards if c["tier"] in tier]
    answers: list[Answer] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeRemainingColumn(), console=err) as bar:
        task = bar.add_task("profiling", total=len(prompts) * len(cards))
        for p in prompts:
            for card in cards:
                answers.append(run_one(client, card["tier"], card["id"], p, max_tokens))
                bar.advance(task)
    pricing = {
        c["tier"]: TierPricing(
            float((c.get("pricing") or {}).get("input_per_1m_tokens") or 0.0),
            float((c.get("pricing") or {}).get("output_per_1m_tokens") or 0.0),
        )
        for c in cards
    }
    meta = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "endpoint": endpoint,
        "data": [_shown(p) for p in data],
        "max_tokens": max_tokens,
        "load_average": list(os.getloadavg()),
    }
    result = build_profile([c["tier"] for c in cards], answers, prompts, pricing, meta)
    console.print(table(result))
    failed = [a for a in answers if not a.ok]
    if failed:
        err.print(f"[yellow]{len(failed)} request(s) failed[/], e.g. {failed[0].error}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"profile written to {out}")
    if len(failed) == len(answers):
        raise typer.Exit(1)
