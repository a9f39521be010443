"""A CPU-only plan drives the real local deployment (configs/local.yaml, `tierline up`).

Ray is started the way `tierline.cli.local.start` starts it; the inventory is read from it; the plan
must be what `deployments.engine.deployment` hands Ray Serve LLM, and the placement groups Serve
would create for it (plus the gateway's CPUs) must fit the node. No engine is started: the local
integration suite does that.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tierline.cli import local
from tierline.cluster.inventory import inventory_from_live_cluster
from tierline.cluster.planner import plan_cluster
from tierline.cluster.real_models import ensure_real_models
from tierline.cluster.sizing import model_size, read_checkpoint_config
from tierline.cluster.spec import ClusterSpec
from tierline.cluster.specfile import load_spec
from tierline.deployments.engine.deployment import llm_config_kwargs

from tests.integration.multinode.test_placement import create_and_wait, landed, remove_all

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[ClusterSpec]:
    import ray

    ensure_real_models(ROOT / "models", ROOT / ".cache" / "gguf")  # local.yaml serves them
    spec = load_spec(ROOT / "configs" / "local.yaml")
    ray.init(
        address="local",
        num_cpus=local.logical_cpus(spec),
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield spec
    finally:
        ray.shutdown()


def test_cpu_plan_matches_the_local_deployment(local_ray: ClusterSpec) -> None:
    from ray.llm._internal.serve.core.server.llm_server import LLMServer
    from ray.serve.llm import LLMConfig
    from tierline.deployments.app import build_graph, gateway_options

    spec = local_ray
    inv = inventory_from_live_cluster()
    (node,) = inv.nodes
    assert node.gpus == 0 and node.cpus == local.logical_cpus(spec)
    sizes = {t.name: model_size(t, read_checkpoint_config(t)) for t in spec.tiers}
    assert all(s.source == "params_b/dtype" and s.kv_bytes_per_token > 0 for s in sizes.values())
    plan = plan_cluster(spec.tiers, inv, sizes)

    groups, reserved_cpus = [], 0.0
    for tier in spec.tiers:
        planned = plan.tier(tier.name)
        assert (planned.tensor_parallel_size, planned.pipeline_parallel_size) == (1, 1)
        assert planned.replicas == tier.num_replicas
        kwargs = llm_config_kwargs(tier)
        assert kwargs["placement_group_config"] == planned.placement_group
        options = LLMServer.get_deployment_options(LLMConfig(**kwargs))
        bundles = options["placement_group_bundles"]
        # one CPU bundle, plus the replica actor's CPU that Serve LLM merges into it
        assert [{k: v for k, v in b.items() if v} for b in bundles] == [
            {"CPU": tier.cpus_per_replica + 1}
        ]
        for _ in planned.placements:
            groups.append({"bundles": bundles, "strategy": options["placement_group_strategy"]})
            reserved_cpus += sum(b["CPU"] for b in bundles)
    assert plan.nodes[0].cpus_used == pytest.approx(reserved_cpus)

    gateway_cpus = gateway_options(spec)["ray_actor_options"]["num_cpus"] * spec.gateway.replicas
    groups.append({"bundles": [{"CPU": gateway_cpus}], "strategy": "STRICT_PACK"})
    pgs = create_and_wait(groups)
    try:
        assert all(landed(pg) == [node.name] for pg in pgs)
    finally:
        remove_all(pgs)
    build_graph(spec)  # the real application graph builds from the planned configs
