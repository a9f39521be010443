"""What `GatewayCore.generate` answers: typed, not yet on the wire.

A whole answer is the engine's JSON object; a streamed one is its SSE events (`str` from
the handle path, the engine's own `bytes` from the relay) ending in `data: [DONE]`. Each
route adds what it must (citations, a Responses translation) to the typed answer and
encodes it once (`encoded`), so no answer is serialised, parsed and serialised again.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse, Response, StreamingResponse
from tierline.deployments.sse import data_payloads

__all__ = ["Answer", "StreamAnswer", "WholeAnswer", "encoded", "with_citations"]


@dataclass
class WholeAnswer:
    body: dict[str, Any]
    headers: dict[str, str]
    status_code: int = 200


@dataclass
class StreamAnswer:
    events: AsyncIterator[str | bytes]
    headers: dict[str, str]
    status_code: int = 200


Answer = WholeAnswer | StreamAnswer


def encoded(answer: Answer) -> Response:
    """The answer on the wire: JSON, or an SSE stream."""
    if isinstance(answer, WholeAnswer):
        return JSONResponse(answer.body, status_code=answer.status_code, headers=answer.headers)
    return StreamingResponse(
        answer.events,
        status_code=answer.status_code,
        media_type="text/event-stream",
        headers=answer.headers,
    )


def _inject(event: str, cites: list[dict[str, Any]]) -> str:
    """Add `citations` to the first `data: {...}` event of an SSE text block."""
    for payload in data_payloads(event):
        try:
            obj = json.loads(payload)
        except json.JSONDecodeError:
            return event
        obj["citations"] = cites
        return event.replace("data: " + payload, "data: " + json.dumps(obj), 1)
    return event


async def _cited_stream(
    body: AsyncIterable[Any], cites: list[dict[str, Any]]
) -> AsyncIterator[str | bytes]:
    first = True
    try:
        async for item in body:
            if first:
                text = item.decode() if isinstance(item, bytes) else str(item)
                injected = _inject(text, cites)
                first = injected == text
                yield injected
            else:
                yield item
    finally:
        # A client that leaves ends the inner stream now (its slot and quota ticket with
        # it), not whenever garbage collection gets to it.
        close = getattr(body, "aclose", None)
        if close is not None:
            await close()


def with_citations(answer: Answer, cites: list[dict[str, Any]] | None) -> Answer:
    """A grounded chat's answer with top-level `citations`: in the whole answer's object,
    or in the stream's first event (the rest of the stream passes as it is)."""
    if cites is None:
        return answer
    if isinstance(answer, StreamAnswer):
        return StreamAnswer(_cited_stream(answer.events, cites), answer.headers)
    if "error" not in answer.body:
        answer.body["citations"] = cites
    return answer
