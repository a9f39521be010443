"""Planned placement groups on a simulated 4 x 8-GPU Ray cluster land where the plan says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tierline.cluster.inventory import (
    NODE_LABEL,
    Inventory,
    inventory_from_live_cluster,
    ray_node_name,
)
from tierline.cluster.planner import Plan, plan_cluster
from tierline.cluster.spec import TierSpec
from tierline.cluster.specfile import load_spec
from tierline.deployments.engine.deployment import llm_config_kwargs

from tests.integration.multinode.conftest import GPU_NODES, GPUS_PER_NODE

ROOT = Path(__file__).resolve().parents[3]


def serve_bundles(tier: TierSpec) -> tuple[list[dict[str, float]], str]:
    """The bundles and strategy Ray Serve LLM asks for one replica of this tier."""
    from ray.llm._internal.serve.core.server.llm_server import LLMServer
    from ray.serve.llm import LLMConfig

    options = LLMServer.get_deployment_options(LLMConfig(**llm_config_kwargs(tier)))
    return options["placement_group_bundles"], options["placement_group_strategy"]


def node_names() -> dict[str, str]:
    import ray

    return {n["NodeID"]: ray_node_name(n) for n in ray.nodes()}


def replica_groups(plan: Plan) -> list[tuple[str, list[str]]]:
    """(tier, bundle nodes) of every planned replica, in the planner's placement order."""
    out = []
    for kind in ("required", "autoscaling", "fill"):
        for t in sorted(plan.tiers, key=lambda t: -t.gpus_per_replica):
            out += [(t.tier, p.bundle_nodes) for p in t.placements if p.kind == kind]
    return out


def create_and_wait(groups: list[dict[str, Any]], timeout_s: float = 60.0) -> list[Any]:
    import ray
    from ray.util.placement_group import placement_group

    pgs = [placement_group(**g) for g in groups]
    ray.get([pg.ready() for pg in pgs], timeout=timeout_s)
    return pgs


def remove_all(pgs: list[Any]) -> None:
    from ray.util.placement_group import remove_placement_group

    for pg in pgs:
        remove_placement_group(pg)


def landed(pg: Any) -> list[str]:
    from ray.util.placement_group import placement_group_table

    names = node_names()
    table = placement_group_table(pg)["bundles_to_node_id"]
    return [names[table[i]] for i in range(len(table))]


@pytest.fixture(scope="module")
def live_inventory(ray_cluster: object) -> Inventory:
    return inventory_from_live_cluster()


def test_live_inventory(live_inventory: Inventory) -> None:
    gpu_nodes = [n for n in live_inventory.nodes if n.gpus]
    assert sorted(n.name for n in gpu_nodes) == [f"gpu-{i}" for i in range(GPU_NODES)]
    assert all(n.gpus == GPUS_PER_NODE and n.gpu_type == "H100" for n in gpu_nodes)
    assert all(n.gpu_memory_gib == 80 for n in gpu_nodes)


def test_planned_groups_fit_the_cluster_on_the_planned_nodes(live_inventory: Inventory) -> None:
    spec = load_spec(ROOT / "configs" / "multi-node.yaml")
    plan = plan_cluster(spec.tiers, live_inventory)
    assert plan.idle_gpus == 0 and plan.total_gpus == GPU_NODES * GPUS_PER_NODE
    groups, expected = [], []
    for name, nodes in replica_groups(plan):
        bundles, strategy = serve_bundles(spec.tier(name))
        assert len(bundles) == len(nodes)
        groups.append(
            {
                "bundles": bundles,
                "strategy": strategy,
                "bundle_label_selector": [{NODE_LABEL: n} for n in nodes],
            }
        )
        expected.append(nodes)
    # every planned replica at once, with the exact bundles Serve would ask for
    pgs = create_and_wait(groups)
    try:
        assert [landed(pg) for pg in pgs] == expected
    finally:
        remove_all(pgs)


def test_serve_strategies_alone_realise_the_plan(live_inventory: Inventory) -> None:
    """Without pinning (as Serve creates them), the groups still all fit, TP inside nodes."""
    spec = load_spec(ROOT / "configs" / "multi-node.yaml")
    plan = plan_cluster(spec.tiers, live_inventory)
    groups, shapes = [], []
    for name, _nodes in replica_groups(plan):
        bundles, strategy = serve_bundles(spec.tier(name))
        t = plan.tier(name)
        groups.append({"bundles": bundles, "strategy": strategy})
        shapes.append((t.tensor_parallel_size, t.pipeline_parallel_size))
    pgs = create_and_wait(groups)
    try:
        used: dict[str, int] = {}
        for pg, (tp, pp) in zip(pgs, shapes, strict=True):
            nodes = landed(pg)
            stages = [nodes[s * tp : (s + 1) * tp] for s in range(pp)]
            assert all(len(set(s)) == 1 for s in stages), nodes  # TP inside one node
            assert len({s[0] for s in stages}) == pp, nodes  # PP stages on distinct nodes
            for n in nodes:
                used[n] = used.get(n, 0) + 1
        assert sorted(used.values()) == sorted(u.gpus_used for u in plan.nodes if u.gpus_used)
    finally:
        remove_all(pgs)


def test_infeasible_extra_group_stays_pending(live_inventory: Inventory) -> None:
    """The plan leaves no GPU idle: one more 1-GPU group than planned cannot be placed."""
    import ray

    spec = load_spec(ROOT / "configs" / "multi-node.yaml")
    plan = plan_cluster(spec.tiers, live_inventory)
    groups = []
    for name, _nodes in replica_groups(plan):
        bundles, strategy = serve_bundles(spec.tier(name))
        groups.append({"bundles": bundles, "strategy": strategy})
    pgs = create_and_wait(groups)
    try:
        from ray.util.placement_group import placement_group

        extra = placement_group([{"GPU": 1.0}], strategy="STRICT_PACK")
        ready, _ = ray.wait([extra.ready()], timeout=3)
        assert not ready
        pgs.append(extra)
    finally:
        remove_all(pgs)


def test_node_exporters_report_zero_gpus_without_a_driver(ray_cluster: object) -> None:
    """One exporter actor per node; on this GPU-less machine every node reads 0 GPUs."""
    import urllib.request

    import ray
    from prometheus_client.parser import text_string_to_metric_families
    from tierline.cluster.exporter import start_node_exporters

    handles = start_node_exporters(port=0)
    assert sorted(h.node for h in handles) == [f"gpu-{i}" for i in range(GPU_NODES)]
    for h in handles:
        with urllib.request.urlopen(f"http://127.0.0.1:{h.port}/metrics", timeout=10) as r:
            body = r.read().decode()
        assert "Traceback" not in body
        # each also runs its node's orphaned-engine reaper (tierline.cluster.reaper)
        assert "# TYPE tierline_reaped_engine_processes_total counter" in body
        gpus = {
            s.labels["node"]: s.value
            for fam in text_string_to_metric_families(body)
            for s in fam.samples
            if s.name == "tierline_gpus"
        }
        assert gpus == {h.node: 0.0}
        assert "tierline_gpus" in ray.get(h.actor.scrape.remote())
    for h in handles:
        ray.kill(h.actor)


def test_cli_plans_from_the_live_cluster(ray_cluster: object) -> None:
    import json

    from tierline.cli.main import app
    from typer.testing import CliRunner

    spec = str(ROOT / "configs" / "multi-node.yaml")
    res = CliRunner().invoke(app, ["plan", spec, "--from-cluster", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["total_gpus"] == GPU_NODES * GPUS_PER_NODE and data["idle_gpus"] == 0
    frontier = next(t for t in data["tiers"] if t["tier"] == "frontier")
    assert (frontier["tensor_parallel_size"], frontier["pipeline_parallel_size"]) == (8, 2)
    table = CliRunner().invoke(app, ["plan", spec, "--from-cluster"])
    assert table.exit_code == 0 and "GPUs left idle: 0 of 32" in table.output
