"""The model cards `/v1/models` lists, from the spec and what each tier can serve."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tierline.cluster.spec import AUTO_MODEL, ClusterSpec
from tierline.deployments.engine.adapters import adapter_cards
from tierline.deployments.gateway.embeddings import EmbeddingsCard
from tierline.router.capabilities import Capabilities

__all__ = ["model_cards"]


def model_cards(
    spec: ClusterSpec,
    capabilities: Mapping[str, Capabilities],
    embeddings: EmbeddingsCard | None,
    created: int,
) -> list[dict[str, Any]]:
    """/v1/models: `auto`, each tier (capabilities, pricing, aliases), its adapters, and the
    embedding model when there is one."""
    cards = [
        {
            "id": AUTO_MODEL,
            "object": "model",
            "created": created,
            "owned_by": "tierline",
            "tier": None,
            "description": "routed: the router picks a tier per request",
        }
    ]
    for t in spec.tiers:
        cards.append(
            {
                "id": t.model_name,
                "object": "model",
                "created": created,
                "owned_by": "tierline",
                "tier": t.name,
                "type": "chat",
                "max_model_len": t.max_context_tokens,
                "capabilities": capabilities[t.name].card(),
                "pricing": {
                    "input_per_1m_tokens": t.price_per_1m_input_tokens,
                    "output_per_1m_tokens": t.price_per_1m_output_tokens,
                },
                **({"external": True} if t.is_external else {}),
            }
        )
    cards += adapter_cards(spec, created)
    for card in cards:  # model_aliases, on the card of the name each stands for
        listed = card.get("aliases")
        own = [str(a) for a in listed] if isinstance(listed, list | tuple) else []
        names = {card["id"], *own}
        if card.get("type") == "chat" and card["tier"] is not None:
            names.add(card["tier"])
        extra = [a for a, target in spec.model_aliases.items() if target in names]
        if extra:
            card["aliases"] = [*own, *extra]
    if embeddings is not None:
        cards.append(embeddings.card(created))
    return cards
