"""The pure parts of bench/hostile_bench.py: percentiles, summaries and ratios (no timings)."""

from __future__ import annotations

import math

from bench.hostile_bench import (
    TARGET_RATIO,
    cost_row,
    cost_table,
    hostile_requests,
    percentile,
    summarize,
    table,
    with_ratios,
    worst_ratio,
)


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0], 99) == 3.0
    assert math.isnan(percentile([], 50))


def test_summary_is_in_milliseconds_and_counts_errors() -> None:
    row = summarize([0.010] * 98 + [0.100, 0.200], [200] * 99 + [429])
    assert row == {
        "n": 100,
        "p50_ms": 10.0,
        "p99_ms": 100.0,
        "max_ms": 200.0,
        "errors": 1,
        "error_statuses": {"429": 1},
    }


def test_ratios_are_over_the_baseline_and_the_target_is_judged_on_p99() -> None:
    phases = {
        "baseline": {"n": 10, "p50_ms": 20.0, "p99_ms": 40.0, "max_ms": 41.0, "errors": 0},
        "calm": {
            "n": 10,
            "p50_ms": 30.0,
            "p99_ms": 40.0 * TARGET_RATIO,
            "max_ms": 61.0,
            "errors": 0,
        },
        "bad": {"n": 10, "p50_ms": 20.0, "p99_ms": 200.0, "max_ms": 300.0, "errors": 0},
        "baseline_end": {"n": 10, "p50_ms": 20.0, "p99_ms": 400.0, "max_ms": 400.0, "errors": 0},
    }
    rows = with_ratios(phases)
    assert rows["baseline"]["p99_ratio"] == 1.0 and rows["baseline"]["within_target"]
    assert rows["calm"]["p50_ratio"] == 1.5 and rows["calm"]["within_target"]
    assert rows["bad"]["p99_ratio"] == 5.0 and not rows["bad"]["within_target"]
    assert worst_ratio(rows) == 5.0  # the baselines are not hostile phases
    text = table({**rows, "bad": {**rows["bad"], "hostile_statuses": {"400": 3}}})
    assert "bad" in text and "400:3" in text


def test_every_hostile_class_has_a_request() -> None:
    names = set(hostile_requests())
    assert {
        "huge_tools",
        "deep_json",
        "big_json_schema",
        "rag_filter",
        "upload_many_files",
    } <= names


def test_cost_rows_give_cpu_per_thousand_tokens_charged() -> None:
    row = cost_row([(0.002, 500, 200), (0.004, 500, 200), (0.003, 1000, 200)])
    assert row["cpu_ms"] == 3.0 and row["tokens_charged"] == 500
    assert row["cpu_s_per_1k_tokens"] == 0.006
    refused = cost_row([(0.009, 0, 400), (0.008, 0, 400)])
    assert refused["cpu_s_per_1k_tokens"] is None and refused["statuses"] == {"400": 2}
    assert "refused" not in cost_table({"a": row, "b": refused})
    assert cost_table({"b": refused}).splitlines()[-1].split()[3] == "-"


def test_the_ledger_reports_what_a_tenant_was_charged() -> None:
    from tierline.cluster.spec import GatewaySpec
    from tierline.deployments.gateway.quota.service import ledger_for

    ledger = ledger_for(GatewaySpec())
    assert ledger.tokens_used("t", 0.0) == 0
    ticket = ledger.admit("t", 300, 0.0).ticket
    assert ledger.tokens_used("t", 1.0) == 300  # reserved counts as charged
    ledger.release(ticket, 120, 2.0)
    assert ledger.tokens_used("t", 3.0) == 120
    assert ledger.tokens_used("t", 1000.0) == 0  # out of the window
