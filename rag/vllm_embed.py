"""An embedding model served by a vLLM engine (the pooling runner), in the calling process.

`rag.embedding_engine: vllm` puts one of these in each embeddings replica instead of
sentence-transformers: on GPU hosts the embedding model then runs on vLLM's kernels and
scheduler, and any pooling model vLLM supports can be named. vLLM's engine batches
concurrent requests itself. Long texts are truncated to the engine's context, as
sentence-transformers truncates to its `max_seq_length`. The engine starts in `start()`
(an engine-core process, about 20 s on CPU), never at construction.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tierline.cluster.embedding import resolve_model


def unit_rows(rows: Sequence[Any]) -> np.ndarray:
    """Float32 rows scaled to unit length (zero rows stay zero)."""
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    out = np.stack([np.asarray(r, dtype=np.float32).reshape(-1) for r in rows])
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0)


class VllmEmbeddingModel:
    """`encode_counted` over a vLLM `AsyncLLM` with `runner="pooling"`."""

    def __init__(self, name: str, engine_kwargs: Mapping[str, Any] | None = None) -> None:
        self.name = name
        self.engine_kwargs = dict(engine_kwargs or {})
        self._engine: Any = None
        self._dim = 0

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def max_tokens(self) -> int:
        return int(self._engine.model_config.max_model_len)

    async def start(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(
            model=resolve_model(self.name), runner="pooling", **self.engine_kwargs
        )
        self._engine = AsyncLLM.from_engine_args(args)
        vectors, _ = await self.encode_counted(["dimension probe"])
        self._dim = int(vectors.shape[1])

    async def _one(self, text: str) -> tuple[Any, int]:
        from vllm import PoolingParams

        final = None
        limit = {"truncation": True, "max_length": self.max_tokens}
        async for out in self._engine.encode(
            text,
            PoolingParams(task="embed"),
            f"embed-{uuid.uuid4().hex}",
            tokenization_kwargs=limit,
        ):
            final = out
        if final is None:
            raise RuntimeError(f"vLLM returned no embedding for a text of {len(text)} characters")
        return final.outputs.data, len(final.prompt_token_ids)

    async def encode_counted(self, texts: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """Unit vectors for `texts`, and the model tokens each took (after truncation)."""
        if self._engine is None:
            raise RuntimeError("VllmEmbeddingModel.start() must be called before encoding")
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32), []
        results = await asyncio.gather(*(self._one(t) for t in texts))
        return unit_rows([r[0] for r in results]), [r[1] for r in results]

    def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None
