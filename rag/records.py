"""Plain data that flows through retrieval: documents in, chunks stored, hits out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class RagError(Exception):
    """Bad input or a missing resource; the HTTP layer answers it with `status`."""

    def __init__(
        self, status: int, message: str, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    document_id: str
    position: int
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    chunk: Chunk
    score: float

    def as_result(self) -> dict[str, Any]:
        c = self.chunk
        return {
            "document_id": c.document_id,
            "chunk_id": c.chunk_id,
            "text": c.text,
            "score": self.score,
            "metadata": c.metadata,
        }
