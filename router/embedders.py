"""The embedders a router head may name, opened by name (`Head.embedder`).

Kept apart from `embedding` (the Protocol and full MiniLM) and `static_embedding` (the
distilled table, which takes its constants from `embedding`), so neither imports the other
back.
"""

from __future__ import annotations

from tierline.router.embedding import MINILM_NAME, Embedder, MiniLMEmbedder
from tierline.router.static_embedding import STATIC_NAME, StaticMiniLMEmbedder

__all__ = ["open_embedder"]


def open_embedder(name: str, threads: int | None = None) -> Embedder:
    """The started embedder a head names (`Head.embedder`)."""
    if name == MINILM_NAME:
        return MiniLMEmbedder(threads=threads).start()
    if name == STATIC_NAME:
        return StaticMiniLMEmbedder().start()
    raise ValueError(f"unknown embedder {name!r} (known: {MINILM_NAME}, {STATIC_NAME})")
