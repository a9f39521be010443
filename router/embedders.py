"""The embedders a router head may name, opened by name (`Head.embedder`).

Kept apart from `embedding` (full MiniLM as the router reads it) and `static_embedding` (the
distilled table), so neither imports the other back.
"""

from __future__ import annotations

from tierline.cluster.embedding import MINILM_NAME, Embedder
from tierline.router.embedding import minilm_embedder
from tierline.router.static_embedding import STATIC_NAME, StaticMiniLMEmbedder

__all__ = ["open_embedder"]


def open_embedder(name: str, threads: int | None = None) -> Embedder:
    """The started embedder a head names (`Head.embedder`)."""
    if name == MINILM_NAME:
        return minilm_embedder(threads).start()
    if name == STATIC_NAME:
        return StaticMiniLMEmbedder().start()
    raise ValueError(f"unknown embedder {name!r} (known: {MINILM_NAME}, {STATIC_NAME})")
