"""Tier engines: a Ray Serve LLM `LLMServer` deployment per tier, generated from the spec.

`llm_config` is a pure translation from a `TierSpec` to Ray Serve LLM's `LLMConfig` inputs
(plain data), so it is unit-tested without Ray. `build_tier_app` binds the deployment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tierline.cluster.planner import engine_placement
from tierline.cluster.spec import TierSpec, deployment_name
from tierline.deployments.engine.adapters import (
    SOURCES_KEY,
    adapter_sources,
    check_local_sources,
    lora_config,
    lora_engine_kwargs,
)
from tierline.deployments.engine.autoscale import POLICY as AUTOSCALING_POLICY

if TYPE_CHECKING:
    from ray.serve.deployment import Application

# Ray Serve LLM's prefix-cache affinity router (public API since Ray 2.4x): it keeps a
# prefix tree of the prompts each replica has served and, while the replicas' queue
# lengths differ by less than `imbalanced_threshold`, picks the replica with the longest
# match; otherwise it falls back to power of two choices.
PREFIX_ROUTER = "ray.serve.llm.request_router:PrefixCacheAffinityRouter"

# Skips Ray Serve LLM's per-node download task where it would download nothing (a local
# path or a hub id); imported by path in the replica only
ENGINE_INIT_CALLBACK = "tierline.deployments.engine.init:SkipLocalSourceInit"


# Ray Serve settings for the replicas on the token path (engines and gateway), read by
# Serve when the replica process starts. By default Serve runs user code and the handle
# router on event loops in threads of their own, so every streamed token crosses threads
# several times per hop; on the replica's main loop it does not (about a fifth less CPU
# per request in these replicas; BENCHMARKS.md, "Cutting the overhead"). An explicit
# environment value where the graph is built wins, e.g. to measure the default.
REQUEST_PATH_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
}


def request_path_env() -> dict[str, str]:
    return {name: os.environ.get(name, value) for name, value in REQUEST_PATH_ENV.items()}


def parser_engine_kwargs(tier: TierSpec) -> dict[str, Any]:
    """vLLM's tool call parser (with auto tool choice on), reasoning parser and chat
    template for a tier; Ray Serve LLM hands the frontend ones to vLLM's OpenAI layer."""
    out: dict[str, Any] = {}
    if tier.tool_call_parser is not None:
        out["enable_auto_tool_choice"] = True
        out["tool_call_parser"] = tier.tool_call_parser
    if tier.reasoning_parser is not None:
        out["reasoning_parser"] = tier.reasoning_parser
    if tier.chat_template is not None:
        out["chat_template"] = str(Path(tier.chat_template).expanduser())
    return out


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
    engine_kwargs.update(parser_engine_kwargs(tier))
    engine_kwargs.update(lora_engine_kwargs(tier))

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
            # Serve's default rule, counting the requests relayed past its handles too
            "policy": {"policy_function": AUTOSCALING_POLICY},
        }
    else:
        deployment["num_replicas"] = tier.num_replicas
    if tier.replica_routing == "prefix":
        deployment["request_router_config"] = {
            "request_router_class": PREFIX_ROUTER,
            "request_router_kwargs": {"imbalanced_threshold": tier.prefix_imbalanced_threshold},
        }

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
        # no per-node download task for a local path or a hub id (deployments.engine.init)
        "callback_config": {"callback_class": ENGINE_INIT_CALLBACK},
    }
    lora = lora_config(tier)
    if lora is not None:  # Serve multiplexing: adapters load on demand, LRU per replica
        kwargs["lora_config"] = lora
        kwargs["experimental_configs"][SOURCES_KEY] = adapter_sources(tier)
    kwargs["runtime_env"] = {"env_vars": {**request_path_env(), **tier.env_vars}}
    if tier.uses_gpu:
        kwargs["accelerator_type"] = tier.accelerator_type
    # The planner's bundles and strategy (cluster.planner): one GPU bundle per worker,
    # STRICT_PACK so a TP group stays inside one node, PACK when PP spans nodes; CPU tiers
    # get one CPU bundle (Ray Serve LLM's default would ask for a GPU).
    kwargs["placement_group_config"] = engine_placement(tier)
    return kwargs


def build_tier_app(tier: TierSpec, drain_timeout_s: float = 30.0) -> Application:
    from ray.serve.llm import LLMConfig, build_llm_deployment
    from tierline.deployments.engine.server import TierLLMServer

    check_local_sources(tier)
    bind_kwargs = None
    if tier.adapters:
        from tierline.deployments.engine.adapter_loader import TierAdapterLoader

        bind_kwargs = {"model_downloader": TierAdapterLoader}
    return build_llm_deployment(
        LLMConfig(**llm_config_kwargs(tier, drain_timeout_s)),
        override_serve_options={"name": deployment_name(tier)},
        bind_kwargs=bind_kwargs,
        # LLMServer whose vLLM processes end with the replica (deployments.engine.server)
        deployment_cls=TierLLMServer,
    )
