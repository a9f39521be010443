"""LoRA adapters on a tier's engine: Ray Serve LLM multiplexing, fed from the spec.

A tier's adapters are requested as `tier:adapter`, `served_model_name:adapter` or the
adapter's own `served_model_name` (the gateway resolves all three, `ClusterSpec.
resolve_adapter`). On the engine an adapter is the multiplexed model id
`served_model_name:adapter` (`TierSpec.adapter_model_id`): Serve routes the request to a
replica that has it loaded where it can, and each replica keeps at most
`max_adapters_per_replica` loaded, evicting the least recently used.

Ray Serve LLM's own loader only fetches adapters from one object-store folder
(`dynamic_lora_loading_path`). tierline's spec names each adapter's source, local
directory or URI, so the engine gets a loader (`deployments.engine.adapter_loader`) that looks
the source up by id in the table `llm_config_kwargs` puts in the `LLMConfig`. The
functions here are pure and import no Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tierline.cluster.spec import REMOTE_URI_PREFIXES, ClusterSpec, TierSpec

ADAPTER_CONFIG = "adapter_config.json"
# Where the engine's adapter loader (deployments.engine.adapter_loader) finds each source.
SOURCES_KEY = "tierline_adapter_sources"


class AdapterSourceError(ValueError):
    """A local adapter directory that is missing or holds no adapter."""


def adapter_sources(tier: TierSpec) -> dict[str, str]:
    """Engine-side adapter id -> source, for every adapter of the tier."""
    return {tier.adapter_model_id(a): a.source for a in tier.adapters}


def check_local_sources(tier: TierSpec) -> None:
    """Fail at deploy time, naming the adapter, when a local source is not an adapter."""
    for a in tier.adapters:
        if a.source.startswith(REMOTE_URI_PREFIXES):
            continue
        path = Path(a.source).expanduser()
        if not (path / ADAPTER_CONFIG).is_file():
            raise AdapterSourceError(
                f"tier {tier.name!r} adapter {a.name!r}: {path} holds no {ADAPTER_CONFIG}"
            )


def lora_engine_kwargs(tier: TierSpec) -> dict[str, Any]:
    """vLLM engine arguments that turn LoRA on for a tier with adapters."""
    if not tier.adapters:
        return {}
    return {
        "enable_lora": True,
        "max_lora_rank": tier.max_lora_rank,
        # Adapters in one batch, and adapters vLLM keeps in host memory (its own LRU).
        "max_loras": min(tier.max_adapters_per_replica, len(tier.adapters)),
        "max_cpu_loras": tier.max_adapters_per_replica,
    }


def lora_config(tier: TierSpec) -> dict[str, Any] | None:
    """`LLMConfig.lora_config`: turns on Serve's multiplexing with its per-replica limit."""
    if not tier.adapters:
        return None
    return {"max_num_adapters_per_replica": tier.max_adapters_per_replica}


def adapter_cards(spec: ClusterSpec, created: int) -> list[dict[str, Any]]:
    """`/v1/models` entries for every adapter, after the base models."""
    cards = []
    for t in spec.tiers:
        for a in t.adapters:
            cards.append(
                {
                    "id": a.served_model_name or t.adapter_model_id(a),
                    "object": "model",
                    "created": created,
                    "owned_by": "tierline",
                    "tier": t.name,
                    "parent": t.model_name,
                    "adapter": a.name,
                    "aliases": t.adapter_names(a),
                    "max_model_len": t.max_context_tokens,
                    "pricing": {
                        "input_per_1m_tokens": t.price_per_1m_input_tokens,
                        "output_per_1m_tokens": t.price_per_1m_output_tokens,
                    },
                }
            )
    return cards
