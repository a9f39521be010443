"""The engine tiers' autoscaling policy: Serve's rule over handle and relayed requests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tierline.cluster.spec import ClusterSpec
from tierline.deployments.engine.autoscale import (
    POLICY,
    RELAY_ACTIVE,
    desired_replicas,
    relay_aware_policy,
)
from tierline.deployments.engine.deployment import llm_config_kwargs


def test_relayed_requests_count_like_handle_requests() -> None:
    # 2 replicas, target 2 each: 3 via handles + 5 relayed = 8 -> 4 replicas
    assert desired_replicas(2, 2, 3.0, [2.0, 3.0], 2.0) == 4.0
    # relayed only: Serve's count alone would say 0 and scale the tier down
    assert desired_replicas(1, 1, 0.0, [6.0], 2.0) == 3.0
    assert desired_replicas(3, 3, 0.0, [], 1.0) == 0.0


def test_a_tier_at_zero_keeps_its_target() -> None:
    # No replica, so no relay: the handle path's cold start wakes the tier.
    assert desired_replicas(0, 1, 0.0, [], 1.0) == 1.0


@dataclass
class _Config:
    target: float

    def get_target_ongoing_requests(self) -> float:
        return self.target


@dataclass
class _Ctx:
    current_num_replicas: int
    target_num_replicas: int
    total_num_requests: float
    config: _Config
    aggregated_metrics: dict[str, dict[Any, float]] = field(default_factory=dict)


def test_the_serve_hook_reads_the_custom_metric() -> None:
    ctx = _Ctx(2, 2, 1.0, _Config(1.0), {RELAY_ACTIVE: {"r1": 2.0, "r2": 1.5}})
    assert relay_aware_policy(ctx) == (4.5, {})
    assert relay_aware_policy(_Ctx(1, 1, 2.0, _Config(1.0)))[0] == 2.0


def test_autoscaled_tiers_use_the_policy_and_every_engine_tier_is_relayed() -> None:
    from tierline.deployments.app import relayed_tiers

    spec = ClusterSpec.model_validate(
        {
            "tiers": [
                {
                    "name": "a",
                    "model_source": "/m/a",
                    "max_context_tokens": 512,
                    "autoscaling": {"min_replicas": 0, "max_replicas": 2},
                },
                {"name": "b", "model_source": "/m/b", "max_context_tokens": 512},
            ]
        }
    )
    config = llm_config_kwargs(spec.tiers[0])
    policy = config["deployment_config"]["autoscaling_config"]["policy"]
    assert policy == {"policy_function": POLICY}
    module, name = POLICY.split(":")
    assert getattr(__import__(module, fromlist=[name]), name) is relay_aware_policy
    assert [t.name for t in relayed_tiers(spec)] == ["a", "b"]
