"""The placement planner: sizes, packing invariants, explicit sizes, errors, cost, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tierline.cli.main import app
from tierline.cluster.inventory import Inventory, NodeInventory, load_inventory
from tierline.cluster.planner import (
    InfeasiblePlanError,
    Plan,
    apply_plan,
    engine_placement,
    plan_cluster,
)
from tierline.cluster.sizing import (
    derived_price_per_1m,
    model_size,
    params_b_from_config,
    read_checkpoint_config,
    tier_cost,
)
from tierline.cluster.spec import TierSpec
from tierline.cluster.specfile import load_spec
from tierline.deployments.engine.deployment import llm_config_kwargs
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
INVENTORIES = CONFIGS / "inventory"


def tier(**kw: Any) -> TierSpec:
    base: dict[str, Any] = {"name": "t", "model_source": "org/m", "max_context_tokens": 8192}
    return TierSpec.model_validate({**base, **kw})


def h100_nodes(n: int, gpus: int = 8) -> Inventory:
    return Inventory(
        nodes=[
            NodeInventory(
                name=f"gpu-{i}",
                gpus=gpus,
                gpu_type="H100",
                gpu_memory_gib=80,
                cpus=96,
                memory_gib=1024,
            )
            for i in range(n)
        ]
    )


def sizes_of(plan: Plan) -> dict[str, tuple[int, int, int]]:
    return {
        t.tier: (t.tensor_parallel_size, t.pipeline_parallel_size, t.replicas) for t in plan.tiers
    }


def test_single_node_config_plans_as_written() -> None:
    spec = load_spec(CONFIGS / "h100-single-node.yaml")
    plan = plan_cluster(spec.tiers, load_inventory(INVENTORIES / "h100-1x8.yaml"))
    assert sizes_of(plan) == {"small": (1, 1, 2), "medium": (2, 1, 1), "large": (4, 1, 1)}
    assert plan.idle_gpus == 0
    large = plan.tier("large")
    assert large.placement_group == {"bundles": [{"GPU": 1.0}] * 4, "strategy": "STRICT_PACK"}
    assert large.memory_per_gpu_gib <= large.usable_gpu_memory_gib


def test_multi_node_config_plans_pipeline_across_two_nodes() -> None:
    spec = load_spec(CONFIGS / "multi-node.yaml")
    plan = plan_cluster(spec.tiers, load_inventory(INVENTORIES / "h100-4x8.yaml"))
    assert sizes_of(plan) == {"small": (1, 1, 8), "large": (4, 1, 2), "frontier": (8, 2, 1)}
    assert plan.idle_gpus == 0
    (frontier,) = plan.tier("frontier").placements
    stage_nodes = [frontier.bundle_nodes[:8], frontier.bundle_nodes[8:]]
    assert all(len(set(s)) == 1 for s in stage_nodes)
    assert stage_nodes[0][0] != stage_nodes[1][0]
    assert plan.tier("frontier").placement_group["strategy"] == "PACK"
    small = plan.tier("small")
    assert [p.kind for p in small.placements].count("required") == 2
    assert small.max_replicas == 8


def test_unset_sizes_are_chosen_from_memory() -> None:
    tiers = [
        tier(name="s", params_b=8, dtype="bfloat16", accelerator_type="H100", replicas=1),
        tier(name="l", params_b=70.6, dtype="bfloat16", accelerator_type="H100", replicas=1),
        tier(
            name="l64k", params_b=70.6, dtype="bfloat16", accelerator_type="H100", replicas=1
        ).model_copy(update={"max_context_tokens": 65536}),
        tier(name="f", params_b=405, dtype="bfloat16", accelerator_type="H100", replicas=1),
    ]
    plan = plan_cluster(tiers, h100_nodes(3))
    # 8B fits one GPU; 70B (131 GiB) two, four with a 64k-token KV budget; 405B in bf16
    # (754 GiB) more than one node
    assert sizes_of(plan) == {"s": (1, 1, 1), "l": (2, 1, 1), "l64k": (4, 1, 1), "f": (8, 2, 1)}


def test_explicit_sizes_are_checked_not_overridden() -> None:
    t = tier(params_b=8, dtype="bfloat16", accelerator_type="H100", tensor_parallel_size=4)
    assert sizes_of(plan_cluster([t], h100_nodes(1)))["t"][:2] == (4, 1)
    too_small = tier(
        params_b=70.6,
        dtype="bfloat16",
        accelerator_type="H100",
        tensor_parallel_size=1,
        max_context_tokens=65536,
    )
    with pytest.raises(InfeasiblePlanError) as e:
        plan_cluster([too_small], h100_nodes(1))
    (issue,) = e.value.issues
    assert issue.tier == "t" and "weights" in issue.what
    assert "TP1 x PP1" in issue.where and "GiB per GPU" in issue.short_by
    uneven = tier(accelerator_type="H100", tensor_parallel_size=3)
    with pytest.raises(InfeasiblePlanError, match="does not divide"):
        plan_cluster([uneven], h100_nodes(1))


def test_infeasible_spec_lists_every_problem() -> None:
    tiers = [
        tier(name="a", accelerator_type="A100-80G"),
        tier(name="b", accelerator_type="H100", tensor_parallel_size=8, replicas=3),
        tier(name="c", accelerator_type="H100", pipeline_parallel_size=4),
    ]
    with pytest.raises(InfeasiblePlanError) as e:
        plan_cluster(tiers, h100_nodes(2))
    by_tier = {i.tier: i for i in e.value.issues}
    assert set(by_tier) == {"a", "b", "c"}
    assert "no A100-80G node" in by_tier["a"].where
    assert by_tier["b"].short_by == "8 GPU(s)" and "1 of 3" in by_tier["b"].what
    assert by_tier["c"].short_by == "2 node(s)"


def test_cpu_tiers_need_cpus_and_memory() -> None:
    inv = Inventory(nodes=[NodeInventory(name="c", cpus=3, memory_gib=8)])
    ok = tier(name="a", cpus_per_replica=1.0, env_vars={"VLLM_CPU_KVCACHE_SPACE": "1"})
    assert plan_cluster([ok], inv).tier("a").placements[0].bundle_nodes == ["c"]
    with pytest.raises(InfeasiblePlanError) as e:
        plan_cluster([ok, ok.model_copy(update={"name": "b"})], inv)
    assert "CPUs" in e.value.issues[0].short_by


def test_local_cpu_plan_matches_the_engine_deployment() -> None:
    spec = load_spec(CONFIGS / "local.yaml")
    plan = plan_cluster(spec.tiers, load_inventory(INVENTORIES / "local-cpu.yaml"))
    for t in spec.tiers:
        planned = plan.tier(t.name)
        kwargs = llm_config_kwargs(t)
        assert kwargs["placement_group_config"] == planned.placement_group
        assert kwargs["engine_kwargs"]["tensor_parallel_size"] == planned.tensor_parallel_size
        assert kwargs["deployment_config"]["num_replicas"] == planned.replicas


@pytest.mark.parametrize("name", ["h100-single-node.yaml", "multi-node.yaml", "local.yaml"])
def test_applied_plan_is_what_the_engines_deploy(name: str) -> None:
    spec = load_spec(CONFIGS / name)
    inv = {
        "h100-single-node.yaml": "h100-1x8.yaml",
        "multi-node.yaml": "h100-4x8.yaml",
        "local.yaml": "local-cpu.yaml",
    }[name]
    plan = plan_cluster(spec.tiers, load_inventory(INVENTORIES / inv))
    applied = apply_plan(spec, plan)
    assert sizes_of(plan_cluster(applied.tiers, load_inventory(INVENTORIES / inv))) == sizes_of(
        plan
    )
    for t in applied.tiers:
        kwargs = llm_config_kwargs(t)
        assert kwargs["placement_group_config"] == plan.tier(t.name).placement_group
        assert kwargs["placement_group_config"] == engine_placement(t)


# --- invariants over generated fleets -----------------------------------------------------

GPU_SHAPES = [("H100", 80.0), ("L4", 24.0)]


@st.composite
def fleets(draw: st.DrawFn) -> Inventory:
    n = draw(st.integers(1, 12))
    nodes = []
    for i in range(n):
        kind = draw(st.sampled_from([*GPU_SHAPES, None]))
        gpus = draw(st.sampled_from([1, 2, 4, 8])) if kind else 0
        nodes.append(
            NodeInventory(
                name=f"n{i}",
                gpus=gpus,
                gpu_type=kind[0] if kind else None,
                gpu_memory_gib=kind[1] if kind else 0.0,
                cpus=draw(st.sampled_from([4.0, 16.0, 64.0])),
                memory_gib=draw(st.sampled_from([16.0, 256.0])),
            )
        )
    return Inventory(nodes=nodes)


@st.composite
def tier_lists(draw: st.DrawFn) -> list[TierSpec]:
    out = []
    for i in range(draw(st.integers(1, 5))):
        kw: dict[str, Any] = {"name": f"t{i}", "max_context_tokens": 4096}
        accel = draw(st.sampled_from(["H100", "L4", None]))
        if accel:
            kw["accelerator_type"] = accel
            kw["params_b"] = draw(st.sampled_from([0.5, 8.0, 32.0, 70.0]))
            kw["dtype"] = draw(st.sampled_from(["bfloat16", "fp8"]))
            if draw(st.booleans()):
                kw["tensor_parallel_size"] = draw(st.sampled_from([1, 2, 4]))
        mode = draw(st.sampled_from(["replicas", "auto", "fill"]))
        if mode == "replicas":
            kw["replicas"] = draw(st.integers(1, 3))
        elif mode == "auto":
            lo = draw(st.integers(0, 2))
            kw["autoscaling"] = {
                "min_replicas": lo,
                "max_replicas": max(lo, 1) + draw(st.integers(0, 3)),
            }
        out.append(tier(**kw))
    return out


def check_plan(tiers: list[TierSpec], inv: Inventory, plan: Plan) -> None:
    nodes = {n.name: n for n in inv.nodes}
    gpus_used = dict.fromkeys(nodes, 0)
    for t, tp in zip(tiers, plan.tiers, strict=True):
        assert tp.replicas == len(tp.placements) >= tp.required_replicas
        if tp.max_replicas is not None:
            assert tp.replicas <= tp.max_replicas
        if "tensor_parallel_size" in t.model_fields_set:
            assert tp.tensor_parallel_size == t.tensor_parallel_size
        if not t.uses_gpu:
            assert tp.placement_group == {"bundles": [{"CPU": t.cpus_per_replica}]}
            continue
        size = tp.tensor_parallel_size
        assert size & (size - 1) == 0
        assert tp.memory_per_gpu_gib <= tp.usable_gpu_memory_gib
        assert len(tp.placement_group["bundles"]) == tp.gpus_per_replica
        for p in tp.placements:
            assert len(p.bundle_nodes) == tp.gpus_per_replica
            stages = [
                p.bundle_nodes[s * size : (s + 1) * size] for s in range(tp.pipeline_parallel_size)
            ]
            assert all(len(set(s)) == 1 for s in stages)  # TP stays inside a node
            assert len({s[0] for s in stages}) == len(stages)  # PP stages on distinct nodes
            for name in p.bundle_nodes:
                node = nodes[name]
                assert node.gpu_type == t.accelerator_type and node.gpus % size == 0
                gpus_used[name] += 1
    for usage in plan.nodes:
        assert usage.gpus_used == gpus_used[usage.node] <= nodes[usage.node].gpus
        assert usage.cpus_used <= nodes[usage.node].cpus + 1e-9
    assert plan.idle_gpus == inv.total_gpus - sum(gpus_used.values())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inv=fleets(), tiers=tier_lists())
def test_plans_respect_capacity_and_topology(inv: Inventory, tiers: list[TierSpec]) -> None:
    try:
        plan = plan_cluster(tiers, inv)
    except InfeasiblePlanError as e:
        assert e.issues and all(i.what and i.where and i.short_by for i in e.issues)
        return
    check_plan(tiers, inv, plan)


# --- sizing and cost ------------------------------------------------------------------------

LLAMA_3_8B = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "torch_dtype": "bfloat16",
    "tie_word_embeddings": False,
}


def test_model_size_from_config_json() -> None:
    assert params_b_from_config(LLAMA_3_8B) == pytest.approx(8.03, abs=0.02)
    size = model_size(tier(model_source="./ckpt"), LLAMA_3_8B)
    assert size.source == "config.json"
    assert size.weights_gib == pytest.approx(14.96, abs=0.05)
    assert size.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2  # 128 KiB per token
    fp8_kv = model_size(tier(engine_kwargs={"kv_cache_dtype": "fp8"}), LLAMA_3_8B)
    assert fp8_kv.kv_bytes_per_token == size.kv_bytes_per_token / 2
    assert not model_size(tier()).known


def test_checkpoint_config_is_read_for_local_paths_only() -> None:
    read: list[Path] = []

    def fake_read(path: Path) -> str:
        read.append(path)
        return json.dumps(LLAMA_3_8B)

    assert read_checkpoint_config(tier(model_source="/ckpt/m"), fake_read) == LLAMA_3_8B
    assert read == [Path("/ckpt/m/config.json")]
    assert read_checkpoint_config(tier(model_source="org/m"), fake_read) is None
    assert len(read) == 1


@given(
    gpus=st.integers(1, 16),
    hourly=st.floats(0.1, 20.0),
    tps=st.floats(10.0, 1e5),
)
def test_derived_token_price_formula(gpus: int, hourly: float, tps: float) -> None:
    price = derived_price_per_1m(gpus, hourly, tps)
    # cost of one hour of the replica == price of the tokens it makes in that hour
    assert price * tps * 3600 / 1e6 == pytest.approx(gpus * hourly)


def test_tier_cost_derives_only_missing_prices() -> None:
    t = tier(
        accelerator_type="H100",
        gpu_hour_price_usd=2.0,
        measured_output_tokens_per_s=1000.0,
        price_per_1m_input_tokens=0.1,
    )
    cost = tier_cost(t, gpus_per_replica=4, replicas=2)
    assert cost.usd_per_hour == 16.0 and cost.gpus == 8
    assert cost.output_derived and cost.output_per_1m == pytest.approx(8.0 * 1e6 / 3.6e6)
    assert not cost.input_derived and cost.input_per_1m == 0.1


# --- CLI -------------------------------------------------------------------------------------


def test_cli_plan_table_and_json(tmp_path: Path) -> None:
    args = [
        "plan",
        str(CONFIGS / "multi-node.yaml"),
        "--inventory",
        str(INVENTORIES / "h100-4x8.yaml"),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "frontier" in res.output and "8 x 2 x 1" in res.output
    assert "GPUs left idle: 0 of 32" in res.output
    out_spec = tmp_path / "planned.yaml"
    res = CliRunner().invoke(app, [*args, "--json", "--write-spec", str(out_spec)])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["idle_gpus"] == 0
    assert {t["tier"]: t["pipeline_parallel_size"] for t in data["tiers"]}["frontier"] == 2
    written = yaml.safe_load(out_spec.read_text())
    assert [t["tensor_parallel_size"] for t in written["tiers"]] == [1, 4, 8]


def test_cli_plan_reports_what_does_not_fit() -> None:
    res = CliRunner().invoke(
        app,
        [
            "plan",
            str(CONFIGS / "multi-node.yaml"),
            "--inventory",
            str(INVENTORIES / "h100-1x8.yaml"),
        ],
    )
    assert res.exit_code == 1
    assert "frontier" in res.output and "short by 1 node(s)" in res.output
    assert "Traceback" not in res.output
    res = CliRunner().invoke(app, ["plan", str(CONFIGS / "local.yaml")])
    assert res.exit_code == 2
