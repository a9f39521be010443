"""What the router embeds with: the deterministic stand-in of unit tests, the on-disk cache
of training embeddings, and the probe that ties a head to the embeddings it was trained on.

The router's pure core never embeds anything itself: the gateway (or the CLI, or the
benchmark) turns text into vectors with an `Embedder` (the one embedding-model Protocol,
`cluster.embedding`) and passes the vector in as a feature. Full MiniLM is `cluster.
embedding.SentenceEmbedder` (`minilm_embedder` configures it as the router reads it); the
shipped head's static table is `router.static_embedding`.
`HashingEmbedder` is a deterministic stand-in with the same shape for unit tests.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tierline.cluster.embedding import MINILM_DIM, MINILM_NAME, Embedder, SentenceEmbedder

ROUTER_MAX_SEQ_TOKENS = 256
PROBE_TEXT = "How many prime numbers are there between 10 and 50? Explain briefly."
"""Embedded when a head is trained and again at start-up: embeddings that disagree with
those the head was trained on (another model build, a changed distillation) are refused."""
PROBE_TOLERANCE = 1e-3


def minilm_embedder(threads: int | None = None) -> SentenceEmbedder:
    """Full all-MiniLM-L6-v2 as the router reads it (its first 256 pieces, batches of 32)."""
    return SentenceEmbedder(
        MINILM_NAME, batch_size=32, threads=threads, max_seq_tokens=ROUTER_MAX_SEQ_TOKENS
    )


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
