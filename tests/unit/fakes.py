"""Honest fakes: they implement the same Protocols as the real collaborators."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import numpy as np
from tierline.deployments.gateway.engines.engine_client import EngineError, EngineItem, Method
from tierline.deployments.gateway.pipeline.tokens import EstimatingCounter
from tierline.router.embedding import HashingEmbedder


class FakeEngine:
    """An `EngineClient` that answers like vLLM's OpenAI server, with scripted failures.

    fail: None, "before" (raise before the first item), "error" (an engine error
    response), "midway" (raise after the first stream chunk).
    """

    def __init__(self, model: str, fail: str | None = None, status: int = 400) -> None:
        self.model = model
        self.fail = fail
        self.status = status
        self.calls: list[tuple[Method, dict[str, Any]]] = []
        self.healthy_answer = True

    async def generate(
        self, method: Method, body: dict[str, Any]
    ) -> AsyncGenerator[EngineItem, None]:
        self.calls.append((method, body))
        if self.fail == "before":
            raise ConnectionError("replica died")
        if self.fail == "error":
            yield EngineError(self.status, "engine says no")
            return
        n = body.get("max_tokens") or 4
        words = [f"w{i}" for i in range(n)]
        usage = {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n}
        chat = method == "chat"
        if not body.get("stream"):
            choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
            if chat:
                choice["message"] = {"role": "assistant", "content": " ".join(words)}
            else:
                choice["text"] = " ".join(words)
            yield {
                "id": "x",
                "object": "chat.completion" if chat else "text_completion",
                "created": 0,
                "model": body["model"],
                "choices": [choice],
                "usage": usage,
            }
            return
        for i, w in enumerate(words):
            delta = {"delta": {"content": w}} if chat else {"text": w}
            chunk = {
                "id": "x",
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, **delta, "finish_reason": None}],
            }
            yield f"data: {json.dumps(chunk)}\n\n"
            if self.fail == "midway" and i == 0:
                raise ConnectionError("replica died mid-stream")
        if (body.get("stream_options") or {}).get("include_usage"):
            yield f"data: {json.dumps({'id': 'x', 'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"

    async def healthy(self, timeout_s: float) -> bool:
        return self.healthy_answer


class GatedEngine(FakeEngine):
    """A FakeEngine whose requests wait before their first item until `gate` is set, as
    requests do on a busy tier: each holds its gateway slot meanwhile."""

    def __init__(self, model: str, gate: asyncio.Event) -> None:
        super().__init__(model)
        self.gate = gate

    async def generate(
        self, method: Method, body: dict[str, Any]
    ) -> AsyncGenerator[EngineItem, None]:
        await self.gate.wait()
        async for item in super().generate(method, body):
            yield item


class CountingCounter:
    """A `TokenCounter` (the byte estimate) that counts its calls, from any thread."""

    def __init__(self) -> None:
        self._inner = EstimatingCounter()
        self._lock = threading.Lock()
        self.calls = 0

    def _count(self) -> None:
        with self._lock:
            self.calls += 1

    def chat(self, messages: Sequence[dict[str, Any]]) -> int:
        self._count()
        return self._inner.chat(messages)

    def text(self, prompt: str) -> int:
        self._count()
        return self._inner.text(prompt)


class CountingEmbedder:
    """An `Embedder` (feature hashing) that counts the texts it embedded: the learned
    router's quality call embeds the prompt."""

    name = "hashing"

    def __init__(self) -> None:
        self._inner = HashingEmbedder()
        self.dim = self._inner.dim
        self._lock = threading.Lock()
        self.texts = 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            self.texts += len(texts)
        return self._inner.embed(texts)
