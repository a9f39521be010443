"""How RAG and `/v1/embeddings` reach an embedding model (`EmbeddingService`: asynchronous,
since the model may be another Serve deployment, and counting the model tokens a tenant is
charged), an in-process model as such a service (`LocalEmbedder`), and the model
tokenizer's offsets for chunking. The model Protocol itself is `cluster.embedding.Embedder`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from tierline.cluster.embedding import Embedder, resolve_model
from tierline.rag.chunking import Offsets


@dataclass(frozen=True)
class Embedded:
    """What an `EmbeddingService` gives back for a batch of texts."""

    vectors: np.ndarray
    """Unit-length float32 vectors, one row per text."""
    tokens: int | None
    """The model tokens the texts took, or None where the service does not count them
    (an in-process model that only RAG ingest and search use)."""


class EmbeddingService(Protocol):
    """Texts to vectors, asynchronously (the model may be another Serve deployment), with
    the model tokens they took: what RAG (`rag.service.RagCore`), the gateway's RAG client
    and `/v1/embeddings` call."""

    async def embed(self, texts: list[str]) -> Embedded: ...


class LocalEmbedder:
    """An `EmbeddingService` over an in-process `Embedder` (the benchmarks, the CLI's tests)."""

    def __init__(self, model: Embedder) -> None:
        self.model = model

    async def embed(self, texts: list[str]) -> Embedded:
        return Embedded(self.model.embed(texts), None)


class TokenizerOffsets:
    """Token character spans with the embedding model's own tokenizer, for chunking."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tok: Any = None

    def start(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(resolve_model(self.name))

    def __call__(self, text: str) -> Offsets:
        enc = self._tok(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return [tuple(span) for span in enc["offset_mapping"]]
