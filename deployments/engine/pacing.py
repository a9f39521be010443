"""Paced streaming: a streamed answer's chunks written at most once per interval.

vLLM's API layer writes one SSE event per token, and every write costs a socket send in
the engine replica and, on the relay path, a read, a parse and another send in the
gateway: at 64 tokens an answer that is most of the gateway's CPU per request
(BENCHMARKS.md, "Where the CPU goes"). `PacedSend` wraps an ASGI `send` for one
response: the first `IMMEDIATE` body chunks go out at once (the role chunk and the first
token, so time to first token is untouched), later ones are gathered and written
together at most once per `interval_s`, and the last message goes out at once with
whatever is still held. No chunk waits longer than `interval_s` (a timer flushes it when
no further chunk comes), and nothing is reordered or dropped. Answers that are not
streams (`text/event-stream`) pass through untouched.

A write that fails in the timer (the caller left) is raised at the app's next `send`, so
the app learns of the disconnect exactly as it would have without pacing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["IMMEDIATE", "PacedSend", "TokenPace", "interval_header_value", "parse_interval"]

Message = dict[str, Any]
Send = Callable[[Message], Awaitable[None]]

IMMEDIATE = 2
"""Body chunks written as they come before pacing starts (chat's role chunk, then the
first token; a completion's first two tokens)."""
MAX_INTERVAL_MS = 1000


def parse_interval(raw: bytes | str | None) -> float:
    """The pacing interval in seconds a request asks for (its header value, in
    milliseconds); 0 (no pacing) when absent or not a number in 0..MAX_INTERVAL_MS."""
    if raw is None:
        return 0.0
    try:
        ms = float(raw)
    except ValueError:
        return 0.0
    if not 0 < ms <= MAX_INTERVAL_MS:
        return 0.0
    return ms / 1000


def interval_header_value(interval_ms: float) -> str:
    return f"{interval_ms:g}"


def _is_event_stream(message: Message) -> bool:
    for k, v in message.get("headers", ()):
        if k.lower() == b"content-type":
            return bytes(v).startswith(b"text/event-stream")
    return False


class PacedSend:
    """An ASGI `send` for one response that writes a stream's chunks at most once per
    `interval_s` (see the module's docstring). `close()` must be called when the app is
    done (it stops the timer)."""

    def __init__(
        self,
        send: Send,
        interval_s: float,
        clock: Callable[[], float] | None = None,
        immediate: int = IMMEDIATE,
    ) -> None:
        self._send = send
        self.interval_s = interval_s
        self._clock = clock or asyncio.get_running_loop().time
        self._immediate = immediate
        self._streaming = False
        self._held: list[bytes] = []
        self._last = float("-inf")
        self._lock = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._ended = False
        self.writes = 0
        """Body writes made (for tests and measurement)."""

    async def __call__(self, message: Message) -> None:
        if self._error is not None:
            raise self._error
        kind = message["type"]
        if kind == "http.response.start":
            self._streaming = self.interval_s > 0 and _is_event_stream(message)
            await self._send(message)
            return
        if kind != "http.response.body" or not self._streaming:
            await self._send(message)
            return
        body = message.get("body", b"")
        if not message.get("more_body", False):
            async with self._lock:
                self._ended = True
                held, self._held = b"".join(self._held), []
                self.writes += 1
                await self._send({**message, "body": held + body})
            return
        if not body:
            return
        self._held.append(body)
        if self.writes < self._immediate or self._clock() - self._last >= self.interval_s:
            await self._flush()
        elif self._timer is None or self._timer.done():
            self._timer = asyncio.create_task(self._flush_when_due())

    async def _flush(self) -> None:
        async with self._lock:
            if self._ended or not self._held:
                return
            held, self._held = b"".join(self._held), []
            self._last = self._clock()
            self.writes += 1
            await self._send({"type": "http.response.body", "body": held, "more_body": True})

    async def _flush_when_due(self) -> None:
        while (wait := self._last + self.interval_s - self._clock()) > 0:
            await asyncio.sleep(wait)
        try:
            await self._flush()
        except Exception as err:  # the caller left: the app hears of it at its next send
            self._error = err

    async def close(self) -> None:
        if self._timer is not None and not self._timer.done():
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._timer


MAX_TOKENS_PER_EVENT = 8


class TokenPace:
    """How fast a tier's streams make tokens, as the gateway sees them arrive, and so how
    many tokens vLLM may put in one event (its per-request `stream_interval`) without a
    token waiting longer than the pacing interval: vLLM then formats, encodes and writes
    one event per that many tokens (the first and the last at once, as always), which
    takes most of the per-token work out of the engine replica's API layer too.

    `observe` takes each read after a stream's first: the time since the previous read and
    the events it held, each carrying `tokens_per_event` tokens. The estimate is an
    exponentially weighted mean of seconds per token over the tier's streams."""

    def __init__(self, weight: float = 0.1) -> None:
        self.weight = weight
        self.token_s: float | None = None

    def observe(self, gap_s: float, events: int, tokens_per_event: int) -> None:
        tokens = events * tokens_per_event
        if tokens <= 0 or gap_s <= 0:
            return
        sample = gap_s / tokens
        if self.token_s is None:
            self.token_s = sample
        else:
            self.token_s += self.weight * (sample - self.token_s)

    def tokens_per_event(self, interval_s: float) -> int:
        """Tokens per event so that an event holds at most `interval_s` of tokens
        (1 until the pace is known)."""
        if not self.token_s or interval_s <= 0:
            return 1
        return max(1, min(MAX_TOKENS_PER_EVENT, int(interval_s / self.token_s)))
