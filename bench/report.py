"""Pure parts of the serving benchmark: vLLM result parsing, aggregation, CPU accounting,
the comparisons between systems and the targets (issue 25).

Everything here is plain data in, plain data out (no processes, no clock), so it is
unit-tested on saved `vllm bench serve` output (tests/unit/test_bench_report.py); the
generated BENCHMARKS.md section is written from it by `bench.report_md`. Process roles
and CPU accounting are in `bench.cpu_roles` (re-exported here).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# Process roles and CPU accounting live in `bench.cpu_roles`; re-exported here.
from bench.cpu_roles import NATIVE_ROLES as NATIVE_ROLES
from bench.cpu_roles import cpu_by_role as cpu_by_role
from bench.cpu_roles import is_serving_role as is_serving_role
from bench.cpu_roles import process_role as process_role
from bench.cpu_roles import serving_cpu_ms

SYSTEMS = ("bare", "serve-llm", "serve-llm-ds", "tierline", "tierline-auto")
SYSTEM_LABELS = {
    "bare": "bare vLLM",
    "serve-llm": "Ray Serve LLM",
    "serve-llm-ds": "Ray Serve LLM direct streaming (HAProxy)",
    "tierline": "tierline",
    "tierline-auto": "tierline, model auto (two tiers)",
}
TIERLINE_SYSTEMS = ("tierline", "tierline-auto")

# Targets (issue 25), read at the high concurrency (16) unless said otherwise.
TARGET_CPU_RATIO = 1.5  # serving CPU per request, tierline / bare vLLM's API server
TARGET_VS_BARE = 0.90  # output tok/s, tierline / bare vLLM
TARGET_TTFT_OVERHEAD_MS = 3.0  # TTFT p50 at the low concurrency (1), tierline - bare vLLM
TARGET_VS_SERVE_LLM = 2.5  # output tok/s, tierline / Ray Serve LLM's default app
# output tok/s, tierline serving `model: auto` / Ray Serve LLM's direct-streaming mode,
# pooled over at least MIN_ROUNDS_VS_SERVE_LLM_DS rounds (its spread reported)
TARGET_VS_SERVE_LLM_DS = 1.2
MIN_ROUNDS_VS_SERVE_LLM_DS = 3
TARGET_FLOOD_P99_REFUSE_MS = 100.0  # bench/results/flood.json: p99 time to refuse


@dataclass(frozen=True)
class Comparison:
    """One system against another: `system`'s output tok/s over `base`'s, and so on."""

    key: str
    system: str
    base: str


COMPARISONS = (
    Comparison("tierline_vs_bare", "tierline", "bare"),
    Comparison("tierline_vs_serve_llm", "tierline", "serve-llm"),
    # issue 25: this row is measured with tierline serving `model: auto` over two tiers
    Comparison("tierline_auto_vs_serve_llm_ds", "tierline-auto", "serve-llm-ds"),
)


@dataclass(frozen=True)
class Run:
    """One `vllm bench serve` run (one system, one concurrency, one round)."""

    system: str
    concurrency: int
    round: int
    completed: int
    failed: int
    duration_s: float
    output_tokens: int
    output_tok_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float
    itl_p99_ms: float
    tpot_p50_ms: float
    ttfts_ms: tuple[float, ...] = field(default=(), repr=False)
    itls_ms: tuple[float, ...] = field(default=(), repr=False)
    cpu_s: Mapping[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("ttfts_ms")
        out.pop("itls_ms")
        out["cpu_s"] = dict(self.cpu_s)
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}


def _num(data: Mapping[str, Any], *keys: str) -> float:
    for key in keys:
        value = data.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    raise ValueError(f"vLLM bench result has none of {keys}")


def parse_vllm_result(
    data: Mapping[str, Any], system: str, round_: int, cpu_s: Mapping[str, float] | None = None
) -> Run:
    """A `vllm bench serve --save-result [--save-detailed]` JSON as a `Run`.

    Per-request lists (`ttfts` in seconds, `itls` per request in seconds) are kept when
    the result has them (`--save-detailed`), so rounds can be pooled exactly."""
    if system not in SYSTEMS:
        raise ValueError(f"unknown system {system!r}; expected one of {SYSTEMS}")
    concurrency = data.get("max_concurrency")
    if not isinstance(concurrency, int):
        raise ValueError("vLLM bench result has no max_concurrency (run with --max-concurrency)")
    ttfts: list[float] = []
    itls: list[float] = []
    errors = data.get("errors") or []
    raw_ttfts = data.get("ttfts") or []
    raw_itls = data.get("itls") or []
    for i, t in enumerate(raw_ttfts):
        failed = i < len(errors) and bool(errors[i])
        if not failed and isinstance(t, int | float) and t > 0:
            ttfts.append(1000.0 * float(t))
    for i, request_itls in enumerate(raw_itls):
        failed = i < len(errors) and bool(errors[i])
        if not failed and isinstance(request_itls, list):
            itls.extend(1000.0 * float(x) for x in request_itls)
    return Run(
        system=system,
        concurrency=concurrency,
        round=round_,
        completed=int(_num(data, "completed")),
        failed=int(data.get("failed", 0) or 0),
        duration_s=_num(data, "duration"),
        output_tokens=int(_num(data, "total_output_tokens")),
        output_tok_s=_num(data, "output_throughput"),
        ttft_p50_ms=_num(data, "p50_ttft_ms", "median_ttft_ms"),
        ttft_p99_ms=_num(data, "p99_ttft_ms"),
        itl_p50_ms=_num(data, "p50_itl_ms", "median_itl_ms"),
        itl_p99_ms=_num(data, "p99_itl_ms"),
        tpot_p50_ms=_num(data, "p50_tpot_ms", "median_tpot_ms"),
        ttfts_ms=tuple(ttfts),
        itls_ms=tuple(itls),
        cpu_s=dict(cpu_s or {}),
    )


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), q in [0, 100]."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside [0, 100]")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50.0)


@dataclass(frozen=True)
class Stats:
    """One system at one concurrency, over every round."""

    rounds: int
    completed: int
    failed: int
    output_tok_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float
    itl_p99_ms: float
    tpot_p50_ms: float
    pooled: bool

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def combine(runs: Sequence[Run]) -> Stats:
    """Rounds of one system and concurrency as one figure each.

    Throughput is all output tokens over all benchmark time. Latency percentiles come from
    the pooled per-request samples when every run has them, else the median of the runs'
    own percentiles."""
    if not runs:
        raise ValueError("no runs to combine")
    if len({(r.system, r.concurrency) for r in runs}) != 1:
        raise ValueError("combine() takes runs of one system at one concurrency")
    duration = sum(r.duration_s for r in runs)
    throughput = sum(r.output_tokens for r in runs) / duration if duration > 0 else 0.0
    pooled = all(r.ttfts_ms and r.itls_ms for r in runs)
    if pooled:
        ttfts = [t for r in runs for t in r.ttfts_ms]
        itls = [t for r in runs for t in r.itls_ms]
        ttft_p50, ttft_p99 = percentile(ttfts, 50), percentile(ttfts, 99)
        itl_p50, itl_p99 = percentile(itls, 50), percentile(itls, 99)
    else:
        ttft_p50 = median([r.ttft_p50_ms for r in runs])
        ttft_p99 = median([r.ttft_p99_ms for r in runs])
        itl_p50 = median([r.itl_p50_ms for r in runs])
        itl_p99 = median([r.itl_p99_ms for r in runs])
    return Stats(
        rounds=len(runs),
        completed=sum(r.completed for r in runs),
        failed=sum(r.failed for r in runs),
        output_tok_s=throughput,
        ttft_p50_ms=ttft_p50,
        ttft_p99_ms=ttft_p99,
        itl_p50_ms=itl_p50,
        itl_p99_ms=itl_p99,
        tpot_p50_ms=median([r.tpot_p50_ms for r in runs]),
        pooled=pooled,
    )


def aggregate(runs: Iterable[Run]) -> dict[str, dict[int, Stats]]:
    """`{system: {concurrency: Stats}}` over all rounds."""
    groups: dict[tuple[str, int], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.system, r.concurrency), []).append(r)
    out: dict[str, dict[int, Stats]] = {}
    for (system, c), group in sorted(groups.items()):
        out.setdefault(system, {})[c] = combine(group)
    return out


def deltas(base: Stats, other: Stats) -> dict[str, float]:
    """`other` (tierline) against `base` (bare vLLM or Ray Serve LLM) at one concurrency:
    a ratio for throughput, differences (other - base, ms) for latencies."""
    ratio = other.output_tok_s / base.output_tok_s if base.output_tok_s > 0 else math.nan
    return {
        "throughput_ratio": round(ratio, 4),
        "ttft_p50_ms": round(other.ttft_p50_ms - base.ttft_p50_ms, 3),
        "ttft_p99_ms": round(other.ttft_p99_ms - base.ttft_p99_ms, 3),
        "itl_p50_ms": round(other.itl_p50_ms - base.itl_p50_ms, 3),
        "itl_p99_ms": round(other.itl_p99_ms - base.itl_p99_ms, 3),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return round(a / b, 4)


def round_ratios(runs: Iterable[Run], system: str, base: str, c: int) -> dict[int, float]:
    """`{round: system's output tok/s / base's}` at concurrency `c`, over the rounds in
    which both ran (and base made tokens)."""
    tok_s: dict[tuple[str, int], float] = {}
    for r in runs:
        if r.concurrency == c and r.system in (system, base):
            tok_s[(r.system, r.round)] = r.output_tok_s
    out = {}
    for (name, round_), value in sorted(tok_s.items()):
        other = tok_s.get((base, round_))
        if name == system and other:
            out[round_] = round(value / other, 4)
    return out


def spread(values: Sequence[float]) -> dict[str, float] | None:
    """How far per-round figures lie apart: min, max, max - min and the sample standard
    deviation (0 for one value). None for no values."""
    if not values:
        return None
    return {
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "range": round(max(values) - min(values), 4),
        "stdev": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
    }


def compare(
    stats: Mapping[str, Mapping[int, Stats]],
    runs: Sequence[Run],
    cpu: Mapping[str, Mapping[int, Mapping[str, float]]],
    comparison: Comparison,
    c: int,
) -> dict[str, Any] | None:
    """`comparison` at concurrency `c`: the pooled throughput ratio (all tokens over all
    time of every round, each side), per-round ratios and their spread, latency
    differences and the serving CPU of both; None when either side did not run at `c`."""
    system, base = comparison.system, comparison.base
    if c not in stats.get(system, {}) or c not in stats.get(base, {}):
        return None
    d = deltas(stats[base][c], stats[system][c])
    per_round = round_ratios(runs, system, base, c)
    serving = {name: serving_cpu_ms(name, cpu.get(name, {}).get(c, {})) for name in (system, base)}
    return {
        "system": system,
        "base": base,
        "throughput_ratio": d["throughput_ratio"],
        "rounds": len(per_round),
        "per_round": {str(k): v for k, v in per_round.items()},
        "spread": spread(list(per_round.values())),
        "ttft_p50_ms": d["ttft_p50_ms"],
        "ttft_p99_ms": d["ttft_p99_ms"],
        "itl_p50_ms": d["itl_p50_ms"],
        "serving_cpu_ms": serving,
        "cpu_ratio": _ratio(serving[system], serving[base]),
    }


def _target(
    measure: str, op: str, limit: float, value: float | None, **extra: Any
) -> dict[str, Any]:
    """One target: `value op limit` (op `>=` or `<=`); `met` is None when not measured."""
    met = None
    if value is not None and not math.isnan(value):
        met = value >= limit if op == ">=" else value <= limit
    return {"measure": measure, "target": f"{op} {limit:g}", "value": value, "met": met, **extra}


def _get(ratios: Mapping[str, Any], c: int, key: str, field_: str) -> Any:
    entry = ratios.get(str(c), {}).get(key)
    return None if entry is None else entry[field_]


def headline(
    runs: Sequence[Run],
    low_c: int = 1,
    high_c: int = 16,
    cpu: Mapping[str, Mapping[int, Mapping[str, float]]] | None = None,
    flood: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The report's top-level figures and targets (issue 25): every comparison at every
    concurrency it ran at (`ratios`), each system against bare vLLM (`vs_bare`), and each
    target measured, met or not (`met` None where a system did not run). `cpu` defaults to
    `cpu_per_request(runs)`; `flood` is bench/results/flood.json's summary."""
    stats = aggregate(runs)
    cpu = cpu_per_request(runs) if cpu is None else cpu
    concurrencies = sorted({r.concurrency for r in runs})
    ratios = {
        str(c): {k.key: compare(stats, runs, cpu, k, c) for k in COMPARISONS} for c in concurrencies
    }
    vs_bare = {
        str(c): {
            system: deltas(stats["bare"][c], by_c[c])["throughput_ratio"]
            for system, by_c in stats.items()
            if c in by_c and c in stats.get("bare", {})
        }
        for c in concurrencies
    }
    serving = {
        str(c): {system: serving_cpu_ms(system, cpu.get(system, {}).get(c, {})) for system in stats}
        for c in concurrencies
    }
    vs_ds = ratios.get(str(high_c), {}).get("tierline_auto_vs_serve_llm_ds")
    refuse = (flood or {}).get("time_to_refuse") or {}
    zero_itl = [
        f"{system} c={c}"
        for system in TIERLINE_SYSTEMS
        for c, s in sorted(stats.get(system, {}).items())
        if not s.itl_p50_ms > 0.0
    ]
    tl_ran = any(system in stats for system in TIERLINE_SYSTEMS)
    head: dict[str, Any] = {
        # tierline / bare vLLM output tok/s at the high concurrency (the name it always had)
        "throughput_ratio": _get(ratios, high_c, "tierline_vs_bare", "throughput_ratio"),
        "throughput_ratio_vs_serve_llm": _get(
            ratios, high_c, "tierline_vs_serve_llm", "throughput_ratio"
        ),
        "throughput_ratio_vs_serve_llm_ds": None if vs_ds is None else vs_ds["throughput_ratio"],
        "ttft_p50_overhead_ms": _get(ratios, low_c, "tierline_vs_bare", "ttft_p50_ms"),
        "cpu_ratio": _get(ratios, high_c, "tierline_vs_bare", "cpu_ratio"),
    }
    targets = {
        "cpu_ratio": _target(
            f"serving CPU per request at c={high_c}, tierline ÷ bare vLLM's API server",
            "<=",
            TARGET_CPU_RATIO,
            head["cpu_ratio"],
        ),
        "throughput_ratio": _target(
            f"output throughput at c={high_c}, tierline ÷ bare vLLM",
            ">=",
            TARGET_VS_BARE,
            head["throughput_ratio"],
        ),
        "ttft_p50_overhead_ms": _target(
            f"TTFT p50 at c={low_c}, tierline - bare vLLM (ms)",
            "<=",
            TARGET_TTFT_OVERHEAD_MS,
            head["ttft_p50_overhead_ms"],
        ),
        "throughput_ratio_vs_serve_llm": _target(
            f"output throughput at c={high_c}, tierline ÷ Ray Serve LLM's default app",
            ">=",
            TARGET_VS_SERVE_LLM,
            head["throughput_ratio_vs_serve_llm"],
        ),
        "throughput_ratio_vs_serve_llm_ds": _target(
            f"output throughput at c={high_c}, tierline serving `model: auto` over two tiers "
            f"÷ Ray Serve LLM's direct-streaming mode (HAProxy), pooled over at least "
            f"{MIN_ROUNDS_VS_SERVE_LLM_DS} rounds",
            ">=",
            TARGET_VS_SERVE_LLM_DS,
            head["throughput_ratio_vs_serve_llm_ds"],
            min_rounds=MIN_ROUNDS_VS_SERVE_LLM_DS,
            rounds=0 if vs_ds is None else vs_ds["rounds"],
            per_round={} if vs_ds is None else vs_ds["per_round"],
            spread=None if vs_ds is None else vs_ds["spread"],
        ),
        "flood_p99_refuse_ms": _target(
            "flood: p99 time to refuse, "
            + (
                f"{flood['requests']} against a capacity of {flood['capacity']} (ms)"
                if flood and flood.get("requests")
                else "(ms)"
            ),
            "<=",
            TARGET_FLOOD_P99_REFUSE_MS,
            float(refuse["p99_ms"]) if "p99_ms" in refuse else None,
        ),
        "itl_p50_nonzero": {
            "measure": "ITL p50 of tierline above zero at every concurrency (no token batching)",
            "target": "> 0 ms",
            "value": zero_itl,
            "met": (not zero_itl) if tl_ran else None,
        },
    }
    ds = targets["throughput_ratio_vs_serve_llm_ds"]
    if ds["met"] is not None and ds["rounds"] < MIN_ROUNDS_VS_SERVE_LLM_DS:
        ds["met"] = False  # fewer rounds than the target asks for cannot meet it
    return {
        **head,
        "ratios": ratios,
        "vs_bare": vs_bare,
        "serving_cpu_ms": serving,
        "targets": targets,
    }


def cpu_per_request(runs: Iterable[Run]) -> dict[str, dict[int, dict[str, float]]]:
    """CPU milliseconds per completed request, by process role, over all rounds:
    `{system: {concurrency: {role: ms}}}`. Warm-up requests count in the CPU time but not
    in the request count, so these are slight over-estimates, the same way for all."""
    totals: dict[tuple[str, int], dict[str, float]] = {}
    counts: dict[tuple[str, int], int] = {}
    for r in runs:
        key = (r.system, r.concurrency)
        counts[key] = counts.get(key, 0) + r.completed
        bucket = totals.setdefault(key, {})
        for role, cpu in r.cpu_s.items():
            bucket[role] = bucket.get(role, 0.0) + cpu
    out: dict[str, dict[int, dict[str, float]]] = {}
    for (system, c), bucket in sorted(totals.items()):
        n = counts[(system, c)]
        if n == 0 or not bucket:
            continue
        per = {role: round(1000.0 * cpu / n, 2) for role, cpu in sorted(bucket.items())}
        per["total"] = round(sum(v for k, v in per.items()), 2)
        out.setdefault(system, {})[c] = per
    return out
