"""`tierline status`: a live table of a running cluster, from its documented endpoints.

Sources: the gateway's `/readyz` (tiers and readiness, with the key), its `/v1/models` (each
tier's served model name, with an API key) and the metrics page of Ray's metrics agent
(`--metrics-url`, one per node: tierline's `ray_tierline_*`, Serve's `ray_serve_*`,
vLLM's `ray_vllm_*` and the nodes' GPU gauges `ray_node_gram_*`). The table itself is
built by pure functions of parsed samples (`parse_samples`, `tier_rows`, `summary`),
unit-tested on saved scrapes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import typer
from rich.console import Console, Group
from rich.table import Table

console = Console()
err = Console(stderr=True)

DEFAULT_METRICS_URL = "http://127.0.0.1:8080/metrics"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class Scrape:
    """Every sample of one moment (all metrics URLs together) and when it was taken."""

    at_s: float
    samples: tuple[Sample, ...]

    def select(self, name: str, **labels: str) -> list[Sample]:
        return [
            s
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]

    def total(self, name: str, **labels: str) -> float:
        return sum(s.value for s in self.select(name, **labels))


@dataclass(frozen=True)
class TierRow:
    tier: str
    ready: bool | None
    replicas_healthy: int | None
    replicas_total: int | None
    queued: float
    running: float | None
    tokens_per_s: float | None
    route_share: float | None
    requests: float
    cost_usd: float


@dataclass(frozen=True)
class GpuRow:
    node: str
    gpu: str
    name: str
    memory_used_bytes: float
    memory_total_bytes: float
    utilization_ratio: float


@dataclass(frozen=True)
class Summary:
    requests: float
    rejections: float
    errors: float
    cost_usd: float
    saving_usd: float
    all_top_tier_cost_usd: float
    realised_strong_share: float | None
    target_strong_share: float | None
    tiers: list[TierRow] = field(default_factory=list)
    gpus: list[GpuRow] = field(default_factory=list)
    max_quality_loss: float | None = None
    """The quality-loss bound in force (`router.max_quality_loss`); None: none."""
    cheap_share: float | None = None
    """Live share of auto requests answered below the top tier (since start)."""
    downgraded: dict[str, float] = field(default_factory=dict)
    """Auto requests sent a tier down instead of refused, by why (`load`, `budget`)."""
    load_loss_mean: float | None = None
    """Mean predicted loss of the latest load-downgraded requests (worst replica)."""
    load_loss_budget: float | None = None
    """The load-loss budget that mean is held to (`router.load_downgrade`)."""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


# -- pure parts ------------------------------------------------------------------------------
def parse_samples(text: str) -> list[Sample]:
    """Samples of a Prometheus text page (counters keep their `_total` names)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.append(Sample(s.name, dict(s.labels), float(s.value)))
    return out


def _tier_of_deployment(deployment: str, tiers: Iterable[str]) -> str | None:
    for t in tiers:
        if deployment == f"tier-{t}" or deployment.startswith(f"tier-{t}:"):
            return t
    return None


def tier_rows(
    cur: Scrape,
    prev: Scrape | None,
    tiers: Sequence[str],
    ready: Mapping[str, bool] | None = None,
    served_names: Mapping[str, str] | None = None,
) -> list[TierRow]:
    """One row per tier. Rates (tokens/s) need a previous scrape; shares are since start."""
    requests = {t: cur.total("ray_tierline_gateway_requests_total", tier=t) for t in tiers}
    all_requests = sum(requests.values())
    healthy: dict[str, list[float]] = {t: [] for t in tiers}
    for s in cur.select("ray_serve_deployment_replica_healthy"):
        t = _tier_of_deployment(s.labels.get("deployment", ""), tiers)
        if t is not None:
            healthy[t].append(s.value)
    rows = []
    for t in tiers:
        tokens_per_s = None
        if prev is not None and cur.at_s > prev.at_s:
            done = cur.total("ray_tierline_gateway_completion_tokens_total", tier=t)
            before = prev.total("ray_tierline_gateway_completion_tokens_total", tier=t)
            tokens_per_s = max(0.0, done - before) / (cur.at_s - prev.at_s)
        running = None
        model = (served_names or {}).get(t)
        if model is not None:
            running = cur.total("ray_vllm_num_requests_running", model_name=model)
        reps = healthy[t]
        rows.append(
            TierRow(
                tier=t,
                ready=None if ready is None else ready.get(t),
                replicas_healthy=int(sum(1 for v in reps if v >= 1)) if reps else None,
                replicas_total=len(reps) if reps else None,
                queued=cur.total("ray_tierline_tier_queued_requests", tier=t),
                running=running,
                tokens_per_s=tokens_per_s,
                route_share=requests[t] / all_requests if all_requests else None,
                requests=requests[t],
                cost_usd=cur.total("ray_tierline_gateway_estimated_cost_usd_total", tier=t),
            )
        )
    return rows


def gpu_rows(cur: Scrape) -> list[GpuRow]:
    """GPUs from Ray's node gauges (memory in MiB there, utilisation in percent)."""
    rows = []
    for s in cur.select("ray_node_gram_used"):
        key = {k: s.labels.get(k, "") for k in ("instance", "GpuIndex")}
        free = [
            a.value
            for a in cur.select("ray_node_gram_available")
            if all(a.labels.get(k, "") == v for k, v in key.items())
        ]
        util = [
            u.value
            for u in cur.select("ray_node_gpus_utilization")
            if all(u.labels.get(k, "") == v for k, v in key.items())
        ]
        used = s.value * MIB
        rows.append(
            GpuRow(
                node=s.labels.get("ip") or s.labels.get("instance") or "?",
                gpu=s.labels.get("GpuIndex", "?"),
                name=s.labels.get("GpuDeviceName", ""),
                memory_used_bytes=used,
                memory_total_bytes=used + (free[0] * MIB if free else 0.0),
                utilization_ratio=(util[0] / 100.0) if util else 0.0,
            )
        )
    return sorted(rows, key=lambda r: (r.node, r.gpu))


def _mean(samples: list[Sample]) -> float | None:
    return sum(s.value for s in samples) / len(samples) if samples else None


def _max(samples: list[Sample]) -> float | None:
    return max(s.value for s in samples) if samples else None


AUTO_REASONS = ("auto:", "downgraded:")
"""Route reasons of auto requests (the routing policy's, and those sent down)."""


def cheap_share(cur: Scrape, tiers: Sequence[str]) -> float | None:
    """The live share of auto requests answered below the top tier (`tiers`, cheapest
    first), from the gateway's answered requests by tier and route reason."""
    if len(tiers) < 2:
        return None
    auto = [
        s
        for s in cur.select("ray_tierline_gateway_requests_total")
        if s.labels.get("reason", "").startswith(AUTO_REASONS) and s.labels.get("tier") in tiers
    ]
    total = sum(s.value for s in auto)
    if not total:
        return None
    return sum(s.value for s in auto if s.labels.get("tier") != tiers[-1]) / total


def downgraded(cur: Scrape) -> dict[str, float]:
    """Auto requests sent down instead of refused, by why (`load`, `budget`)."""
    out: dict[str, float] = {}
    for s in cur.select("ray_tierline_router_downgraded_total"):
        why = s.labels.get("reason", "other")
        out[why] = out.get(why, 0.0) + s.value
    return out


def summary(
    cur: Scrape,
    prev: Scrape | None,
    tiers: Sequence[str],
    ready: Mapping[str, bool] | None = None,
    served_names: Mapping[str, str] | None = None,
) -> Summary:
    return Summary(
        requests=cur.total("ray_tierline_gateway_requests_total"),
        rejections=cur.total("ray_tierline_gateway_rejections_total"),
        errors=cur.total("ray_tierline_gateway_errors_total"),
        cost_usd=cur.total("ray_tierline_gateway_estimated_cost_usd_total"),
        saving_usd=cur.total("ray_tierline_gateway_estimated_saving_usd_total"),
        all_top_tier_cost_usd=cur.total("ray_tierline_gateway_all_top_tier_cost_usd_total"),
        realised_strong_share=_mean(cur.select("ray_tierline_router_realised_strong_share")),
        target_strong_share=_mean(cur.select("ray_tierline_router_target_strong_share")),
        tiers=tier_rows(cur, prev, tiers, ready, served_names),
        gpus=gpu_rows(cur),
        max_quality_loss=_max(cur.select("ray_tierline_router_max_quality_loss")),
        cheap_share=cheap_share(cur, tiers),
        downgraded=downgraded(cur),
        load_loss_mean=_max(cur.select("ray_tierline_router_load_loss_mean")),
        load_loss_budget=_max(cur.select("ray_tierline_router_load_loss_budget")),
    )


def _fmt(value: float | None, pattern: str = "{:.1f}") -> str:
    return "-" if value is None else pattern.format(value)


def render(s: Summary) -> Group:
    """The rich tables for a summary."""
    table = Table(title="tierline tiers", title_justify="left")
    for col in ("tier", "ready", "replicas", "queue", "running", "tokens/s", "share", "cost $"):
        table.add_column(col, justify="left" if col == "tier" else "right")
    for r in s.tiers:
        reps = f"{r.replicas_healthy}/{r.replicas_total}" if r.replicas_total is not None else "-"
        ready = "-" if r.ready is None else ("[green]yes[/]" if r.ready else "[red]no[/]")
        table.add_row(
            r.tier,
            ready,
            reps,
            _fmt(r.queued, "{:.0f}"),
            _fmt(r.running, "{:.0f}"),
            _fmt(r.tokens_per_s),
            _fmt(None if r.route_share is None else 100 * r.route_share, "{:.0f}%"),
            f"{r.cost_usd:.6f}",
        )
    saved_pct = 100 * s.saving_usd / s.all_top_tier_cost_usd if s.all_top_tier_cost_usd else None
    lines = Table.grid(padding=(0, 2))
    lines.add_row(
        f"requests {s.requests:.0f}",
        f"rejected {s.rejections:.0f}",
        f"errors {s.errors:.0f}",
        f"strong share {_fmt(s.realised_strong_share, '{:.2f}')}"
        f" (target {_fmt(s.target_strong_share, '{:.2f}')})",
    )
    lines.add_row(
        f"cost ${s.cost_usd:.6f}",
        f"saved ${s.saving_usd:.6f} ({_fmt(saved_pct, '{:.0f}%')})",
        "vs all on the top tier",
        "",
    )
    bound = "none" if s.max_quality_loss is None else f"{s.max_quality_loss:.2f}"
    cheap = None if s.cheap_share is None else 100 * s.cheap_share
    down = " ".join(f"{k} {v:.0f}" for k, v in sorted(s.downgraded.items())) or "0"
    spent, budget = _fmt(s.load_loss_mean, "{:.3f}"), _fmt(s.load_loss_budget, "{:.2f}")
    lines.add_row(
        f"loss bound {bound}",
        f"cheap share {_fmt(cheap, '{:.0f}%')}",
        f"downgraded {down}",
        f"load loss {spent} (budget {budget})",
    )
    parts: list[Any] = [table, lines]
    if s.gpus:
        gpus = Table(title="GPUs", title_justify="left")
        for col in ("node", "gpu", "name", "memory", "util"):
            gpus.add_column(col)
        for g in s.gpus:
            gpus.add_row(
                g.node,
                g.gpu,
                g.name,
                f"{g.memory_used_bytes / 2**30:.1f}/{g.memory_total_bytes / 2**30:.1f} GiB",
                f"{100 * g.utilization_ratio:.0f}%",
            )
        parts.append(gpus)
    return Group(*parts)


# -- I/O -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sources:
    url: str
    metrics_urls: tuple[str, ...]
    api_key: str | None = None


def scrape(metrics_urls: Sequence[str], timeout_s: float = 10.0) -> Scrape:
    import httpx

    samples: list[Sample] = []
    for url in metrics_urls:
        resp = httpx.get(url, timeout=timeout_s)
        resp.raise_for_status()
        samples.extend(parse_samples(resp.text))
    return Scrape(time.monotonic(), tuple(samples))


def gateway_state(src: Sources) -> tuple[list[str], dict[str, bool] | None, dict[str, str]]:
    """Tier names and readiness (`/readyz`), and served model names (`/v1/models`)."""
    import httpx

    ready: dict[str, bool] | None = None
    names: dict[str, str] = {}
    base = src.url.rstrip("/")
    auth = {"Authorization": f"Bearer {src.api_key}"} if src.api_key else {}
    try:  # per-tier readiness needs a key; anonymously /readyz says only ready or not
        resp = httpx.get(f"{base}/readyz", headers=auth, timeout=10)
        ready = {str(k): bool(v) for k, v in resp.json().get("tiers", {}).items()}
    except (httpx.HTTPError, ValueError, AttributeError):
        ready = None
    if src.api_key:
        try:
            resp = httpx.get(
                f"{base}/v1/models",
                headers=auth,
                timeout=10,
            )
            if resp.status_code == 200:
                for card in resp.json().get("data", []):
                    if card.get("tier"):
                        names[str(card["tier"])] = str(card["id"])
        except (httpx.HTTPError, ValueError):
            pass
    tiers = list(ready) if ready else list(names)
    return tiers, ready, names


def collect(src: Sources, prev: Scrape | None) -> tuple[Summary, Scrape]:
    tiers, ready, names = gateway_state(src)
    cur = scrape(src.metrics_urls)
    if not tiers:  # gateway unreachable: the tiers the metrics know of
        tiers = sorted(
            {s.labels["tier"] for s in cur.samples if s.labels.get("tier") not in (None, "none")}
        )
    return summary(cur, prev, tiers, ready, names), cur


def status(
    url: str = typer.Option("http://127.0.0.1:8000", "--url", help="The gateway's base URL."),
    metrics_url: list[str] = typer.Option(
        [DEFAULT_METRICS_URL],
        "--metrics-url",
        help="Ray's metrics page of a node (repeat for every node).",
    ),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="TIERLINE_API_KEY", help="Bearer token (for model names)."
    ),
    watch: bool = typer.Option(False, "--watch", help="Refresh until Ctrl-C."),
    interval_s: float = typer.Option(2.0, "--interval", help="Seconds between refreshes."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object and exit."),
) -> None:
    """Tiers, replicas, queues, tokens/s, route share, cost saved and GPUs of a running cluster."""
    import httpx

    src = Sources(url, tuple(metrics_url), api_key)
    try:
        # Two scrapes `interval_s` apart give the rates of the first table.
        _, first = collect(src, None)
        time.sleep(interval_s)
        result, prev = collect(src, first)
    except httpx.HTTPError as e:
        err.print(f"[red]cannot read the cluster's metrics[/]: {e}")
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(result.as_json(), indent=2))
        return
    if not watch:
        console.print(render(result))
        return
    from rich.live import Live

    with Live(render(result), console=console, refresh_per_second=4) as live:
        try:
            while True:
                time.sleep(interval_s)
                result, prev = collect(src, prev)
                live.update(render(result))
        except KeyboardInterrupt:
            pass
