"""The serving benchmark's command line, its saved runs, and the specs and engine
arguments each system is started with."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
from tierline.cluster.specfile import load_spec

from bench import report as rp
from bench.serve_bench import (
    int_list,
    load_runs,
    order_text,
    profiled,
    prompts_per_concurrency,
    system_list,
)
from bench.serve_llm_server import direct_streaming_env
from bench.servers import bare_vllm_args, serve_llm_config_kwargs, vllm_engine_kwargs
from tests.unit.bench_runs import REAL

ROOT = Path(__file__).resolve().parents[2]


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
    from tierline.deployments.engine.deployment import llm_config_kwargs

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
    from tierline.deployments.engine.deployment import llm_config_kwargs

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
