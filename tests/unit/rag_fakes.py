"""Honest fakes for RAG: a bag-of-words embedder and a word tokenizer (same Protocols)."""

from __future__ import annotations

import hashlib
import re

import numpy as np
from tierline.rag.chunking import Offsets
from tierline.rag.embed import Embedded

DIM = 64


def word_offsets(text: str) -> Offsets:
    return [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]


class HashEmbedder:
    """Hashed bag of words, unit length: texts sharing words are close, as with a real model."""

    def __init__(self, dim: int = DIM) -> None:
        self.dim = dim
        self.calls = 0

    def vector(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float32)
        for w in re.findall(r"\w+", text.lower()):
            v[int(hashlib.md5(w.encode()).hexdigest(), 16) % self.dim] += 1.0
        n = float(np.linalg.norm(v))
        return v / n if n else v

    async def embed(self, texts: list[str]) -> Embedded:
        self.calls += 1
        if not texts:
            return Embedded(np.zeros((0, self.dim), dtype=np.float32), None)
        return Embedded(np.stack([self.vector(t) for t in texts]), None)


class CountingEmbedder(HashEmbedder):
    """`HashEmbedder` that counts model tokens as a WordPiece model does: one a word or
    punctuation mark, plus [CLS] and [SEP] per text (so never the bytes / 4 estimate)."""

    def __init__(self, dim: int = DIM) -> None:
        super().__init__(dim)
        self.tokens = 0

    @staticmethod
    def count(text: str) -> int:
        return len(re.findall(r"\w+|[^\w\s]", text)) + 2

    async def embed(self, texts: list[str]) -> Embedded:
        got = await super().embed(texts)
        tokens = sum(self.count(t) for t in texts)
        self.tokens += tokens
        return Embedded(got.vectors, tokens)
