"""Server-sent events: the one place tierline reads (and frames) SSE.

An OpenAI-style stream is `data: <json>\\n\\n` events ending in `data: [DONE]\\n\\n`. Every
reader of that text goes through here:

- `read_events`: an upstream's SSE *lines* (httpx's `aiter_lines`) as whole events,
  multi-line `data:` joined and comments dropped (`deployments.gateway.engines.external`);
- `events_end`: where the last whole event of a byte buffer ends, so the relay can pass
  the engine's bytes on in whole events without decoding them (`deployments.gateway.engines.relay`);
- `split_events`, `data_payloads`, `data_objects`: the events of a text block and the
  JSON of their `data: {...}` lines (usage, citations, the Responses translation).

Everything here is pure and cheap: the relay's hot path calls `events_end` once per
read, never per event.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

__all__ = [
    "DONE",
    "DONE_BYTES",
    "data_objects",
    "data_payloads",
    "event",
    "events_end",
    "read_events",
    "split_events",
]

DONE = "data: [DONE]\n\n"
DONE_BYTES = b"data: [DONE]\n\n"
_END = "\n\n"
_END_BYTES = b"\n\n"
_OBJECT = "data: {"


def event(payload: str) -> str:
    """One SSE event carrying `payload` (one line: JSON)."""
    return f"data: {payload}\n\n"


async def read_events(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """SSE lines -> one `data: ...\\n\\n` event per item (comments and other fields dropped;
    the `data:` lines of one event joined with newlines, as the SSE spec reads them)."""
    data: list[str] = []
    async for line in lines:
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line == "" and data:
            yield event("\n".join(data))
            data = []
    if data:
        yield event("\n".join(data))


def events_end(buf: bytes) -> int:
    """The index just past the last whole event in `buf` (0 when it holds none)."""
    i = buf.rfind(_END_BYTES)
    return i + 2 if i >= 0 else 0


def split_events(text: str) -> list[str]:
    """The events of an SSE text block, split at their blank lines (`"\\n\\n".join` of the
    result gives the block back)."""
    return text.split(_END)


def data_payloads(text: str) -> Iterator[str]:
    """The payloads of the `data: {...}` lines of SSE text (JSON objects, not parsed).

    Lines end at `\n` only: `str.splitlines` would also cut at U+2028 or U+0085, which
    engines write unescaped inside JSON strings."""
    for line in text.split("\n"):
        if line.startswith(_OBJECT):
            yield line[6:]


def data_objects(text: str) -> Iterator[dict[str, Any]]:
    """The JSON objects of the `data: {...}` lines of SSE text; lines that do not parse as
    an object are skipped (`[DONE]` is not an object)."""
    for payload in data_payloads(text):
        try:
            obj = json.loads(payload)
        except ValueError:
            continue
        if isinstance(obj, dict):
            yield obj
