"""An engine's answer on its way out: SSE for streams, a clean end for whole answers.

The engine client's items (`EngineError`, a whole answer `dict`, SSE text) become the
wire format here, once. `sse_events` also reads the usage chunk, so the gateway can
settle the tenant's quota with the tokens really used (the engine is always asked for it;
a client that did not ask gets the stream without it), and cuts a stream at the
request's end-to-end deadline (`gateway.request_timeout_s`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

import anyio
from tierline.deployments import sse
from tierline.deployments.errors import error_body
from tierline.deployments.gateway.engines.engine_client import (
    USAGE_MARK,
    EngineError,
    EngineItem,
    usage_of,
)

__all__ = ["DEADLINE_MESSAGE", "finish_whole_answer", "sse_events", "total_tokens", "without_usage"]

logger = logging.getLogger("ray.serve.tierline.gateway")


async def finish_whole_answer(
    stream: AsyncGenerator[EngineItem, None], timeout_s: float = 2.0
) -> None:
    """After a whole (non-streaming) answer, let the engine call end by itself before
    closing the stream: cancelling it right after its only item races the engine's own
    end, and the engine replica then logs the call as cancelled or not at all (its log
    loses the request id). Bounded: an engine that does not end in `timeout_s` is closed."""
    try:
        async with asyncio.timeout(timeout_s):
            async for _ in stream:
                pass
    except Exception as err:  # TimeoutError, or the engine failed after answering
        logger.debug("engine stream after a whole answer: %r", err)
    finally:
        await stream.aclose()


def _sse_error(message: str) -> str:
    return sse.event(json.dumps(error_body(500, message, code="stream_error")))


def total_tokens(item: EngineItem) -> int | None:
    """`usage.total_tokens` of a whole answer or a stream chunk (`usage_of`, the one place
    usage is read), or None when it carries none."""
    usage = usage_of(item)
    if usage is not None and isinstance(usage.get("total_tokens"), int):
        return int(usage["total_tokens"])
    return None


def _usage_only(event: str) -> bool:
    """Whether an SSE event is the stream's usage chunk (usage, and no choices)."""
    for payload in sse.data_payloads(event):
        if '"usage"' in payload:
            try:
                data = json.loads(payload)
            except ValueError:
                return False
            return isinstance(data, dict) and bool(data.get("usage")) and not data.get("choices")
    return False


def without_usage(item: str) -> str:
    """SSE text less its usage chunk: for a client that did not ask for usage (the
    gateway always asks the engine for it, to charge the tenant)."""
    if '"usage"' not in item:
        return item
    return "\n\n".join(e for e in sse.split_events(item) if not _usage_only(e))


def _without_usage_bytes(item: bytes) -> bytes:
    """`without_usage` for relayed bytes (only events that carry a usage object are read)."""
    if USAGE_MARK not in item:
        return item
    return without_usage(item.decode()).encode()


DEADLINE_MESSAGE = "the request ran past its deadline (gateway.request_timeout_s) and was cut"


async def sse_events(
    first: EngineItem,
    rest: AsyncGenerator[EngineItem, None],
    on_end: Callable[[int | None], Awaitable[None]] | None = None,
    *,
    hide_usage: bool = False,
    deadline: float | None = None,
) -> AsyncIterator[str | bytes]:
    """The engine's stream as SSE, always ending in `data: [DONE]`, errors included.

    `on_end` gets the total tokens from the stream's usage chunk, however the stream ends
    (completed, broken, cut at its deadline, or the client went away): the gateway frees
    the request's slot and settles its quota there. `hide_usage`: the usage chunk is read
    but not sent (the client did not ask for it). `deadline` (the event loop's clock): a
    stream still running then is cut with an error event and `[DONE]`, and the engine
    request is closed."""
    done = False
    used: int | None = None

    def emit(item: EngineItem) -> str | bytes:
        nonlocal done, used
        if isinstance(item, bytes):  # relayed: the engine's own SSE bytes
            if USAGE_MARK in item:
                used = total_tokens(item) or used
                item = _without_usage_bytes(item) if hide_usage else item
            if item.endswith(sse.DONE_BYTES):
                done = True
            return item
        if isinstance(item, EngineError):
            return _sse_error(item.message)
        if isinstance(item, dict):
            return sse.event(json.dumps(item))
        if item.rstrip().endswith("data: [DONE]"):
            done = True
        used = total_tokens(item) or used
        return without_usage(item) if hide_usage else item

    try:
        if out := emit(first):
            yield out
        while True:
            try:
                async with asyncio.timeout_at(deadline) as limit:
                    item = await anext(rest)
            except StopAsyncIteration:
                break
            except TimeoutError:
                if not limit.expired():
                    raise
                logger.warning("stream cut at its deadline")
                yield _sse_error(DEADLINE_MESSAGE)
                break
            if out := emit(item):
                yield out
        if not done:
            yield sse.DONE
    except (asyncio.CancelledError, GeneratorExit):
        raise  # the client went away: closing `rest` cancels the engine request
    except Exception as err:
        logger.warning("stream broke mid-way: %r", err)
        yield _sse_error("the engine stream broke before the answer was complete")
        yield sse.DONE
    finally:
        # Shielded: Starlette stops a stream whose client left by cancelling an anyio
        # task group, which cancels every later await here too; the engine request must
        # still close and the slot and quota ticket still be given back.
        with anyio.CancelScope(shield=True):
            await rest.aclose()
            if on_end is not None:
                await on_end(used)
