"""Tier engines: a Ray Serve LLM `LLMServer` deployment per tier, generated from the spec.

`llm_config` is a pure translation from a `TierSpec` to Ray Serve LLM's `LLMConfig` inputs
(plain data), so it is unit-tested without Ray. `build_tier_app` binds the deployment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cluster.planner import engine_placement
from cluster.spec import TierSpec, deployment_name

if TYPE_CHECKING:
    from ray.serve.deployment import Application


def llm_config_kwargs(tier: TierSpec, drain_timeout_s: float = 30.0) -> dict[str, Any]:
    """Keyword arguments for `ray.serve.llm.LLMConfig` that serve this tier."""
    engine_kwargs: dict[str, Any] = {
        "max_model_len": tier.max_context_tokens,
        "tensor_parallel_size": tier.tensor_parallel_size,
        "pipeline_parallel_size": tier.pipeline_parallel_size,
    }
    if tier.dtype in ("float32", "bfloat16", "float16"):
        engine_kwargs["dtype"] = tier.dtype
    engine_kwargs.update(tier.engine_kwargs)

    deployment: dict[str, Any] = {
        "max_ongoing_requests": tier.max_ongoing_requests,
        # Past this many waiting requests Serve refuses at once (the gateway answers 503
        # with Retry-After) instead of queueing without bound.
        "max_queued_requests": tier.max_queued_requests,
        # A redeploy lets in-flight generations finish before a replica stops.
        "graceful_shutdown_timeout_s": drain_timeout_s,
    }
    if tier.autoscaling is not None:
        a = tier.autoscaling
        deployment["autoscaling_config"] = {
            "min_replicas": a.min_replicas,
            "initial_replicas": max(a.min_replicas, 1),
            "max_replicas": a.max_replicas,
            "target_ongoing_requests": a.target_ongoing_requests,
            "upscale_delay_s": a.upscale_delay_s,
            "downscale_delay_s": a.downscale_delay_s,
        }
    else:
        deployment["num_replicas"] = tier.num_replicas

    kwargs: dict[str, Any] = {
        "model_loading_config": {
            "model_id": tier.model_name,
            "model_source": tier.model_source,
        },
        "engine_kwargs": engine_kwargs,
        "deployment_config": deployment,
        # tierline streams tokens as the engine makes them: Ray Serve LLM's default
        # batches stream chunks every 50 ms, which adds latency and bursts.
        "experimental_configs": {"stream_batching_interval_ms": 0},
        "log_engine_metrics": True,
    }
    if tier.env_vars:
        kwargs["runtime_env"] = {"env_vars": dict(tier.env_vars)}
    if tier.uses_gpu:
        kwargs["accelerator_type"] = tier.accelerator_type
    # The planner's bundles and strategy (cluster.planner): one GPU bundle per worker,
    # STRICT_PACK so a TP group stays inside one node, PACK when PP spans nodes; CPU tiers
    # get one CPU bundle (Ray Serve LLM's default would ask for a GPU).
    kwargs["placement_group_config"] = engine_placement(tier)
    return kwargs


def build_tier_app(tier: TierSpec, drain_timeout_s: float = 30.0) -> Application:
    from ray.serve.llm import LLMConfig, build_llm_deployment

    return build_llm_deployment(
        LLMConfig(**llm_config_kwargs(tier, drain_timeout_s)),
        override_serve_options={"name": deployment_name(tier)},
    )
