"""The serving benchmark's pure parts: vLLM result parsing, aggregation, the comparisons
and targets of issue 25 (its report: `test_bench_report_md.py`; its command line and
specs: `test_bench_cli.py`)."""

from __future__ import annotations

import copy
import math
import random
from typing import Any

import pytest

from bench import report as rp
from tests.unit.bench_runs import FLOOD, REAL, five, run


# -- parsing ---------------------------------------------------------------------------------
def test_parse_real_result() -> None:
    r = rp.parse_vllm_result(REAL, "tierline", 2, {"gateway replica": 1.5})
    assert (r.system, r.concurrency, r.round) == ("tierline", 1, 2)
    assert (r.completed, r.failed, r.output_tokens) == (24, 0, 1536)
    assert r.output_tok_s == pytest.approx(77.8583)
    assert r.ttft_p50_ms == pytest.approx(98.3672)
    assert r.itl_p50_ms == pytest.approx(3.7471)
    assert r.ttfts_ms == pytest.approx((83.537, 58.47, 60.215))
    assert len(r.itls_ms) == 12 and r.itls_ms[0] == pytest.approx(132.323)
    summary = r.summary()
    assert "ttfts_ms" not in summary and "itls_ms" not in summary
    assert summary["cpu_s"] == {"gateway replica": 1.5}


def test_parse_falls_back_to_median_keys_and_skips_failed_requests() -> None:
    data = copy.deepcopy(REAL)
    for key in ("p50_ttft_ms", "p50_itl_ms", "p50_tpot_ms"):
        del data[key]
    data["errors"] = ["", "boom", ""]
    r = rp.parse_vllm_result(data, "bare", 1)
    assert r.ttft_p50_ms == pytest.approx(98.3672)
    assert r.ttfts_ms == pytest.approx((83.537, 60.215))
    assert len(r.itls_ms) == 8


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"max_concurrency": None}, "max_concurrency"),
        ({"p99_ttft_ms": None}, "p99_ttft_ms"),
        ({"duration": "long"}, "duration"),
    ],
)
def test_parse_rejects_incomplete_results(change: dict[str, Any], message: str) -> None:
    data = {**REAL, **change}
    with pytest.raises(ValueError, match=message):
        rp.parse_vllm_result(data, "bare", 1)


def test_parse_rejects_unknown_system() -> None:
    with pytest.raises(ValueError, match="unknown system"):
        rp.parse_vllm_result(REAL, "ray-llm", 1)


# -- percentiles and aggregation --------------------------------------------------------------
def test_percentile_matches_numpy_linear() -> None:
    np = pytest.importorskip("numpy")
    rng = random.Random(7)
    for _ in range(300):
        xs = [rng.uniform(0, 500) for _ in range(rng.randint(1, 60))]
        q = rng.choice([0, 1, 25, 50, 90, 99, 100, rng.uniform(0, 100)])
        assert rp.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    with pytest.raises(ValueError):
        rp.percentile([], 50)
    with pytest.raises(ValueError):
        rp.percentile([1.0], 101)


def test_combine_pools_samples_and_throughput_over_time() -> None:
    a = run("bare", 1, 1, ttfts_ms=(10.0, 20.0), itls_ms=(1.0, 2.0), output_tokens=100)
    b = run("bare", 1, 2, ttfts_ms=(30.0, 40.0), itls_ms=(3.0, 4.0), output_tokens=300)
    b = rp.Run(**{**b.__dict__, "duration_s": 30.0})
    s = rp.combine([a, b])
    assert s.pooled and s.rounds == 2 and s.completed == 20
    assert s.output_tok_s == pytest.approx(400 / 40.0)  # not the mean of 10 and 10
    assert s.ttft_p50_ms == pytest.approx(25.0)
    assert s.itl_p50_ms == pytest.approx(2.5)


def test_combine_without_samples_takes_the_median_of_rounds() -> None:
    runs = [run("tierline", 16, i, ttft_p50_ms=float(v)) for i, v in enumerate([5, 100, 7], 1)]
    s = rp.combine(runs)
    assert not s.pooled
    assert s.ttft_p50_ms == 7.0


def test_combine_refuses_mixed_groups() -> None:
    with pytest.raises(ValueError):
        rp.combine([run("bare", 1), run("tierline", 1)])
    with pytest.raises(ValueError):
        rp.combine([])


# -- the five systems, comparisons and targets ------------------------------------------------
def test_every_target_met_with_its_figures() -> None:
    head = rp.headline(five(), flood=FLOOD)
    assert head["throughput_ratio"] == pytest.approx(0.95)
    assert head["throughput_ratio_vs_serve_llm"] == pytest.approx(950 / 340, abs=1e-4)
    assert head["throughput_ratio_vs_serve_llm_ds"] == pytest.approx(900 / 700, abs=1e-4)
    assert head["ttft_p50_overhead_ms"] == pytest.approx(2.5)
    # tierline's serving processes (gateway, engine replica, Serve proxy) / bare's API server
    assert head["cpu_ratio"] == pytest.approx((6.0 + 7.0 + 1.0) / 10.0)
    t = head["targets"]
    assert {name: x["met"] for name, x in t.items()} == dict.fromkeys(t, True)
    assert [t[k]["target"] for k in ("cpu_ratio", "throughput_ratio", "ttft_p50_overhead_ms")] == [
        "<= 1.5",
        ">= 0.9",
        "<= 3",
    ]
    assert t["throughput_ratio_vs_serve_llm"]["target"] == ">= 2.5"
    assert t["throughput_ratio_vs_serve_llm_ds"]["target"] == ">= 1.2"
    assert t["throughput_ratio_vs_serve_llm_ds"]["rounds"] == 3
    assert t["throughput_ratio_vs_serve_llm_ds"]["spread"]["range"] == 0.0
    assert t["flood_p99_refuse_ms"]["value"] == 80.0
    assert "160 against a capacity of 12" in t["flood_p99_refuse_ms"]["measure"]
    # HAProxy (C) and its manager count as the direct-streaming peer's serving CPU
    assert head["serving_cpu_ms"]["16"]["serve-llm-ds"] == pytest.approx(12 + 2 + 3 + 1)
    ds = head["ratios"]["16"]["tierline_auto_vs_serve_llm_ds"]
    assert ds["cpu_ratio"] == pytest.approx(15.0 / 18.0, abs=1e-4)
    assert head["vs_bare"]["16"]["serve-llm-ds"] == pytest.approx(0.7)


@pytest.mark.parametrize(
    ("runs_kw", "flood_p99", "missed"),
    [
        ({"at16": {"tierline": {"output_tokens": 890}}}, 80.0, {"throughput_ratio"}),
        ({"ttft1": {"tierline": 43.5}}, 80.0, {"ttft_p50_overhead_ms"}),
        ({"at16": {"serve-llm": {"output_tokens": 400}}}, 80.0, {"throughput_ratio_vs_serve_llm"}),
        (
            {"at16": {"serve-llm-ds": {"output_tokens": 760}}},
            80.0,
            {"throughput_ratio_vs_serve_llm_ds"},
        ),
        (
            {"at16": {"tierline": {"cpu_s": {"gateway replica": 0.1, "tier-large replica": 0.06}}}},
            80.0,
            {"cpu_ratio"},
        ),
        ({}, 155.2, {"flood_p99_refuse_ms"}),
    ],
)
def test_each_target_missed_on_its_own(
    runs_kw: dict[str, Any], flood_p99: float, missed: set[str]
) -> None:
    flood = {**FLOOD, "time_to_refuse": {"p50_ms": 86.0, "p99_ms": flood_p99, "count": 444}}
    t = rp.headline(five(**runs_kw), flood=flood)["targets"]
    assert {name for name, x in t.items() if x["met"] is False} == missed
    assert all(x["met"] is True for name, x in t.items() if name not in missed)


def test_pooled_ratio_against_direct_streaming_and_its_spread() -> None:
    runs = five(per_round16={"serve-llm-ds": [600, 900, 700], "tierline-auto": [840, 900, 910]})
    head = rp.headline(runs)
    ds = head["ratios"]["16"]["tierline_auto_vs_serve_llm_ds"]
    assert ds["per_round"] == {"1": 1.4, "2": 1.0, "3": 1.3}
    # pooled: all tokens over all time on each side (2650 / 2200), not the mean of rounds
    assert ds["throughput_ratio"] == pytest.approx(2650 / 2200, abs=1e-4)
    assert ds["spread"] == {
        "min": 1.0,
        "max": 1.4,
        "range": 0.4,
        "stdev": pytest.approx(0.2082, abs=1e-4),
    }
    t = head["targets"]["throughput_ratio_vs_serve_llm_ds"]
    assert t["met"] is True and t["per_round"] == ds["per_round"] and t["rounds"] == 3


def test_direct_streaming_target_needs_three_rounds() -> None:
    t = rp.headline(five(rounds=2, at16={"serve-llm-ds": {"output_tokens": 500}}))["targets"]
    ds = t["throughput_ratio_vs_serve_llm_ds"]
    assert ds["value"] == pytest.approx(1.8) and ds["rounds"] == 2 and ds["min_rounds"] == 3
    assert ds["met"] is False


def test_pooled_ratio_lies_within_the_rounds_over_generated_runs() -> None:
    """Equal run times: the pooled ratio is a mediant of the per-round ratios, so it lies
    between their min and max; met exactly when it reaches 1.2 over at least 3 rounds."""
    rng = random.Random(25)
    for _ in range(300):
        rounds = rng.randint(1, 6)
        ds = [rng.randint(100, 2000) for _ in range(rounds)]
        auto = [rng.randint(100, 2000) for _ in range(rounds)]
        runs = [
            run(system, 16, i + 1, duration_s=2.0, output_tokens=2 * n, output_tok_s=float(n))
            for i in range(rounds)
            for system, n in (("serve-llm-ds", ds[i]), ("tierline-auto", auto[i]))
        ]
        head = rp.headline(runs)
        r = head["ratios"]["16"]["tierline_auto_vs_serve_llm_ds"]
        assert r["rounds"] == rounds
        assert r["spread"]["min"] - 1e-3 <= r["throughput_ratio"] <= r["spread"]["max"] + 1e-3
        assert r["throughput_ratio"] == pytest.approx(sum(auto) / sum(ds), abs=1e-4)
        t = head["targets"]["throughput_ratio_vs_serve_llm_ds"]
        assert t["met"] is (r["throughput_ratio"] >= 1.2 and rounds >= 3)
        # nothing else ran: those targets are not measured rather than missed
        assert head["targets"]["throughput_ratio"]["met"] is None
        assert head["ratios"]["16"]["tierline_vs_bare"] is None


def test_c64_rows_in_the_ratios() -> None:
    head = rp.headline(five(rounds=1, concurrencies=(1, 16, 64)))
    assert set(head["ratios"]) == {"1", "16", "64"}
    assert head["ratios"]["64"]["tierline_vs_bare"]["throughput_ratio"] == pytest.approx(1.0)
    assert set(head["vs_bare"]["64"]) == set(rp.SYSTEMS)


def test_headline_without_cpu_samples_or_flood_is_not_measured() -> None:
    runs = [rp.Run(**{**r.__dict__, "cpu_s": {}}) for r in five()]
    t = rp.headline(runs)["targets"]
    assert t["cpu_ratio"]["met"] is None and t["cpu_ratio"]["value"] is None
    assert t["flood_p99_refuse_ms"]["met"] is None
    assert t["throughput_ratio"]["met"] is True


def test_zero_itl_of_either_tierline_system_is_reported() -> None:
    runs = [
        rp.Run(**{**r.__dict__, "itl_p50_ms": 0.0})
        if (r.system, r.concurrency) == ("tierline-auto", 16)
        else r
        for r in five(rounds=1)
    ]
    t = rp.headline(runs)["targets"]["itl_p50_nonzero"]
    assert t["met"] is False and t["value"] == ["tierline-auto c=16"]


@pytest.mark.parametrize(
    ("system", "per", "expected"),
    [
        ("bare", {"vllm api server": 9.3, "vllm engine core": 36.3}, 9.3),
        ("bare", {"vllm engine core": 36.3}, None),
        ("tierline", {"gateway replica": 1.0, "tier-a replica": 2.0, "serve proxy": 0.5}, 3.5),
        ("serve-llm", {"ingress replica": 1.0, "LLMServer replica": 2.0, "ray other": 9.0}, 3.0),
        ("serve-llm", {"vllm worker": 5.0, "other": 1.0}, None),
        (
            "serve-llm-ds",
            {"LLMServer replica": 2.0, "LLMRouter replica": 0.5, "haproxy": 1.0, "other": 4.0},
            3.5,
        ),
        ("serve-llm-ds", {"haproxy manager": 0.25, "vllm engine core": 30.0}, 0.25),
    ],
)
def test_serving_cpu_leaves_out_the_engine_and_ray(
    system: str, per: dict[str, float], expected: float | None
) -> None:
    assert rp.serving_cpu_ms(system, per) == expected


def test_deltas_ratio_is_nan_without_bare_throughput() -> None:
    bare = rp.combine([run("bare", 16, output_tokens=0)])
    tl = rp.combine([run("tierline", 16)])
    assert math.isnan(rp.deltas(bare, tl)["throughput_ratio"])


def test_round_ratios_skip_rounds_one_side_missed() -> None:
    runs = [
        run("tierline-auto", 16, 1, output_tok_s=120.0),
        run("serve-llm-ds", 16, 1, output_tok_s=100.0),
        run("tierline-auto", 16, 2, output_tok_s=90.0),  # its peer failed to start
        run("serve-llm-ds", 16, 3, output_tok_s=0.0),  # no tokens: no ratio
        run("tierline-auto", 16, 3, output_tok_s=50.0),
    ]
    assert rp.round_ratios(runs, "tierline-auto", "serve-llm-ds", 16) == {1: 1.2}
    assert rp.spread([]) is None
    assert rp.spread([1.5]) == {"min": 1.5, "max": 1.5, "range": 0.0, "stdev": 0.0}
