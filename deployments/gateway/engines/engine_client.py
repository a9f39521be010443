"""How the gateway talks to a tier's engine: a small Protocol and its Ray Serve implementation.

Engine output is normalised to three kinds of item so the gateway's streaming logic does
not depend on Ray Serve LLM's batching or response classes:
- `EngineError`: the engine refused the request (status and message from vLLM);
- a `dict`: a whole non-streaming response body;
- a `str`: one or more SSE events (`data: {...}\\n\\n`), possibly `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncGenerator, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from tierline.deployments import sse

Method = Literal["chat", "completions"]


OVERLOADED = "overloaded"
"""`EngineError.type` of a call Serve refused because the tier's queue is full."""


@dataclass(frozen=True)
class EngineError:
    status: int
    message: str
    type: str = "invalid_request_error"


EngineItem = EngineError | dict[str, Any] | str | bytes


class EngineUnavailable(Exception):
    """The tier cannot take the request now (raised before any output): unreachable,
    too slow, or rate-limited upstream. The gateway does not retry the same tier; it goes
    to the tier's fallback, else answers `status` with `retry_after_s` (if any)."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        retry_after_s: str | None = None,
        down: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.retry_after_s = retry_after_s
        self.down = down  # the tier looks down: auto routing should skip it


class EngineClient(Protocol):
    def generate(
        self, method: Method, body: dict[str, Any]
    ) -> AsyncGenerator[EngineItem, None]: ...

    async def healthy(self, timeout_s: float) -> bool: ...


def normalise(item: Any) -> list[EngineItem]:
    """Turn one item of LLMServer's output stream into gateway items."""
    if isinstance(item, list):
        return [n for sub in item for n in normalise(sub)]
    if isinstance(item, str):
        return [item]
    error = getattr(item, "error", None)
    if error is not None and hasattr(error, "code"):
        return [EngineError(int(error.code), str(error.message), str(error.type))]
    if hasattr(item, "model_dump_json"):
        if getattr(item, "object", "") in ("chat.completion", "text_completion"):
            return [item.model_dump(mode="json")]
        return [sse.event(item.model_dump_json())]
    if isinstance(item, dict):
        return [item]
    return [sse.event(json.dumps(item))]


def _engine_request(method: Method, body: dict[str, Any]) -> Any:
    from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

    if method == "chat":
        request = ChatCompletionRequest.model_validate(body)
        # Pydantic keeps iterable message content as a lazy, unpicklable iterator.
        for i, message in enumerate(request.messages):
            plain: dict[str, Any] = (
                message if isinstance(message, dict) else message.model_dump()  # type: ignore[assignment]
            )
            content = plain.get("content")
            if content is not None and not isinstance(content, str):
                plain["content"] = list(content)
            request.messages[i] = plain
        return request
    return CompletionRequest.model_validate(body)


def import_request_models() -> None:
    """Import vLLM's protocol models now (seconds of work) instead of on the first request."""
    from ray.serve.llm import openai_api_models  # noqa: F401


class ServeEngineClient:
    """An engine reached through a Ray Serve `DeploymentHandle` to its `LLMServer`.

    Readiness means a request really went through: the first `healthy` call starts a
    one-token generation in the background (vLLM's first request pays one-off set-up
    costs of many seconds), and the client reports healthy only once it has succeeded.
    """

    def __init__(
        self,
        handle: Any,
        model: str,
        adapters: Collection[str] = (),
        grpc: bool = True,
        queue_wait_s: float = 1.0,
    ) -> None:
        self._handle = handle
        # A burst can find Serve's queue of the tier full for a moment, while requests in
        # it are still being handed to replicas: a call Serve refuses for back-pressure is
        # tried again (short, growing pauses) for up to `queue_wait_s` before the tier is
        # reported overloaded. The gateway only calls for requests it has admitted.
        self._queue_wait_s = queue_wait_s
        # `grpc`: the calls go over the replicas' inter-deployment gRPC servers instead of
        # Ray actor calls (measured in BENCHMARKS.md: about half the CPU per call). Set on
        # the handle here, in the gateway replica: the handles arrive built by the driver
        # with its default.
        self._stream = handle.options(stream=True, _by_reference=not grpc)
        self._model = model
        self._adapters = frozenset(adapters)  # engine-side adapter ids (multiplexed)
        self._warm: asyncio.Future[None] | None = None

    async def generate(
        self, method: Method, body: dict[str, Any]
    ) -> AsyncGenerator[EngineItem, None]:
        from pydantic import ValidationError
        from vllm.exceptions import VLLMClientError

        try:
            request = _engine_request(method, body)
        except (ValidationError, ValueError, VLLMClientError) as err:
            yield EngineError(400, f"invalid request: {err}")
            return
        from ray.serve.exceptions import BackPressureError

        target = self._stream
        if body.get("model") in self._adapters:  # Serve loads it (LRU) on a replica
            target = target.options(multiplexed_model_id=body["model"])
        give_up = time.monotonic() + self._queue_wait_s
        for attempt in itertools.count():
            stream = getattr(target, method).remote(request)
            finished = False
            try:
                async for item in stream:
                    for out in normalise(item):
                        yield out
                finished = True
                return
            except BackPressureError:
                finished = True  # refused before any output: nothing runs to cancel
                pause = min(0.02 * 2**attempt, 0.2)
                if time.monotonic() + pause < give_up:
                    await asyncio.sleep(pause)
                    continue
                # Still full: refuse rather than queue without bound.
                yield EngineError(503, "the tier is at capacity; retry shortly", OVERLOADED)
                return
            except (VLLMClientError, ValueError, TypeError) as err:
                # The engine refused this request's input (Ray re-raises the replica's error
                # as an instance of its class): a 400, not a replica failure to retry or
                # fail over.
                finished = True
                yield EngineError(400, f"invalid request: {err}")
                return
            finally:
                if not finished:
                    stream.cancel()  # the client left or we stopped reading: stop generating

    async def _warm_up(self) -> None:
        base = {"model": self._model, "max_tokens": 1, "temperature": 0}
        bodies: list[tuple[Method, dict[str, Any]]] = [
            ("completions", {**base, "prompt": "ready"}),
            ("chat", {**base, "messages": [{"role": "user", "content": "ready"}]}),
        ]
        for method, body in bodies:
            async for item in self.generate(method, body):
                if isinstance(item, EngineError):
                    raise RuntimeError(f"warm-up {method} request failed: {item.message}")

    async def healthy(self, timeout_s: float) -> bool:
        if self._warm is None:
            self._warm = asyncio.ensure_future(self._warm_up())
        if not self._warm.done():
            await asyncio.wait({self._warm}, timeout=timeout_s)
            if not self._warm.done():
                return False
        if self._warm.cancelled() or self._warm.exception() is not None:
            self._warm = None  # try again on the next check
            return False
        try:
            await asyncio.wait_for(self._handle.check_health.remote(), timeout_s)
        except Exception:
            return False
        return True


USAGE_MARK = b'"usage":{'
"""How a relayed event with a usage object starts it (vLLM writes compact JSON); events
without it are not parsed at all."""


def usage_of(item: EngineItem) -> Mapping[str, Any] | None:
    """The `usage` object of a whole answer or of a stream chunk, if it carries one."""
    if isinstance(item, dict):
        u = item.get("usage")
        return u if isinstance(u, dict) else None
    if isinstance(item, bytes):
        if USAGE_MARK not in item:
            return None
        item = item.decode()
    if isinstance(item, str) and '"usage"' in item:
        for obj in sse.data_objects(item):
            u = obj.get("usage")
            if isinstance(u, dict):
                return u
    return None
