"""Autoscaling that counts relayed requests: the engine tiers' Serve autoscaling policy.

Serve's default policy scales on the requests its handles and replicas count. A request
the gateway relays to an engine replica's own vLLM app (`relay`) passes no Serve handle,
so each engine replica reports the requests it is relaying as a custom autoscaling metric
(`RELAY_ACTIVE`, `TierLLMServer.record_autoscaling_stats`), and this policy adds them to
Serve's count. The rest is Serve's: its default rule (`desired_replicas` below is that
rule over the sum), and the bounds, delays and scaling factors Serve applies to every
policy's answer. A tier at zero replicas has no relay, so its first request takes the
handle path and wakes it exactly as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["POLICY", "RELAY_ACTIVE", "desired_replicas", "relay_aware_policy"]

RELAY_ACTIVE = "tierline_relay_active"
"""The custom metric: requests a replica is relaying now (sampled by Serve)."""

POLICY = "tierline.deployments.engine.autoscale:relay_aware_policy"
"""Where Serve's controller imports the policy from (`autoscaling_config.policy`)."""


def desired_replicas(
    running: int,
    target_replicas: int,
    handle_requests: float,
    relayed: Iterable[float],
    target_ongoing: float,
) -> float:
    """Serve's default rule over all the tier's requests: replicas so that each holds
    `target_ongoing`. At zero running replicas the target stands (Serve's cold start
    path wakes the tier)."""
    if running == 0:
        return float(target_replicas)
    return (handle_requests + sum(relayed)) / target_ongoing


def relay_aware_policy(ctx: Any) -> tuple[float, dict[str, Any]]:
    """Serve's policy hook (an `AutoscalingContext` in, replicas and state out)."""
    metrics: Mapping[str, Mapping[Any, float]] = ctx.aggregated_metrics or {}
    relayed = (metrics.get(RELAY_ACTIVE) or {}).values()
    desired = desired_replicas(
        ctx.current_num_replicas,
        ctx.target_num_replicas,
        float(ctx.total_num_requests),
        relayed,
        float(ctx.config.get_target_ongoing_requests()),
    )
    return desired, {}
