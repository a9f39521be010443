"""`POST /v1/embeddings`, served whenever the spec has an embedding model.

The route talks to an `EmbeddingService` (the embeddings deployment's handle in Serve, an
in-process model in unit tests): with RAG on that is the RAG client's embeddings handle,
with RAG off (`embeddings.enabled`) the embeddings deployment alone. Each call is
quota-checked before the model runs (`Charge`, like the RAG routes) and metered
(requests, prompt tokens and cost under tier `embeddings`).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictStr
from tierline.cluster.spec import ClusterSpec
from tierline.deployments.errors import APIError
from tierline.deployments.gateway.pipeline.middleware import tenant_of
from tierline.deployments.gateway.pipeline.tokens import EstimatingCounter
from tierline.deployments.gateway.quota.service import Charge, Hold, charge_hold, no_charge
from tierline.rag.embed import Embedded, EmbeddingService

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle

__all__ = [
    "EMBEDDINGS_TIER",
    "MAX_EMBED_INPUTS",
    "EmbeddingService",
    "EmbeddingsBody",
    "EmbeddingsCard",
    "HandleEmbedder",
    "embeddings_card",
    "embeddings_router",
]

EMBEDDINGS_TIER = "embeddings"
"""The tier label of embeddings requests in metrics and logs."""
MAX_EMBED_INPUTS = 2048


class HandleEmbedder:
    """`rag.embed.EmbeddingService` over the embeddings deployment's handle
    (`deployments.rag.deployment.EmbeddingServer`): the RAG replicas' and the gateway's."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self._handle = handle

    async def embed(self, texts: list[str]) -> Embedded:
        if not texts:
            return Embedded(np.zeros((0, 0), dtype=np.float32), 0)
        vectors, tokens = await self._handle.embed.remote(texts)
        return Embedded(np.asarray(vectors, dtype=np.float32), int(tokens))


@dataclass(frozen=True)
class EmbeddingsCard:
    """The embedding model as `/v1/models` lists it."""

    model: str
    dimensions: int
    price_per_1m_input_tokens: float = 0.0

    def card(self, created: int) -> dict[str, Any]:
        return {
            "id": self.model,
            "object": "model",
            "created": created,
            "owned_by": "tierline",
            "tier": None,
            "type": "embedding",
            "dimensions": self.dimensions,
            "pricing": {"input_per_1m_tokens": self.price_per_1m_input_tokens},
        }


def embeddings_card(spec: ClusterSpec) -> EmbeddingsCard | None:
    """The spec's embedding model, or None when it serves no embeddings."""
    if not spec.serves_embeddings:
        return None
    return EmbeddingsCard(
        spec.embedding_model_name, spec.rag.embedding_dim, spec.embeddings.price_per_1m_input_tokens
    )


class EmbeddingsBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    input: StrictStr | list[StrictStr] = Field(description="Text or texts to embed.")
    model: StrictStr | None = None
    encoding_format: str = "float"


def _base64(vector: list[float]) -> str:
    """OpenAI's base64 encoding: little-endian float32 bytes (the openai SDK's default)."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


Metered = Callable[[str, int, float], None]
"""(tenant, tokens, seconds) of an answered embeddings request."""


def _unmetered(tenant: str, tokens: int, seconds: float) -> None:
    """The `Metered` hook of unit tests that do not look at metrics."""


def embeddings_router(
    embedder: EmbeddingService,
    card: EmbeddingsCard,
    charge: Charge = no_charge,
    metered: Metered = _unmetered,
    hold: Hold | None = None,
) -> APIRouter:
    """The `/v1/embeddings` route. `hold` (`quota.QuotaHold`) reserves the estimated
    tokens before the model runs (429 when the tenant is over its quota), holds one of the
    tenant's concurrent requests while it runs, and settles to the model's own token
    count; without one, `charge` (`GatewayCore.charge`) charges the estimate up front."""
    router = APIRouter()
    held = hold if hold is not None else charge_hold(charge)

    @router.post("/v1/embeddings")
    async def embeddings(body: EmbeddingsBody, request: Request) -> dict[str, Any]:
        # Any `model` is accepted (the OpenAI SDK's examples name OpenAI's models): the
        # cluster has one embedding model, and the answer names it.
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or len(texts) > MAX_EMBED_INPUTS or any(not t for t in texts):
            raise APIError(
                400, f"input must be 1 to {MAX_EMBED_INPUTS} non-empty strings", param="input"
            )
        if body.encoding_format not in ("float", "base64"):
            raise APIError(
                400, "encoding_format must be 'float' or 'base64'", param="encoding_format"
            )
        tenant = tenant_of(request.state)
        t0 = time.perf_counter()
        estimate = sum(EstimatingCounter().text(t) for t in texts)
        async with held(tenant, estimate) as settle:
            got = await embedder.embed(texts)
            tokens = got.tokens if got.tokens is not None else estimate
            settle(tokens)
        metered(tenant, tokens, time.perf_counter() - t0)
        encode = _base64 if body.encoding_format == "base64" else list
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": encode(v)}
                for i, v in enumerate(got.vectors.tolist())
            ],
            "model": card.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    return router
