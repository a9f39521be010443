"""`sse_events` reads the stream's usage through `engine_client.usage_of`, the one place
usage is parsed: the total it hands to `on_end` settles the tenant's quota."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator

from tierline.deployments.gateway.engines.engine_client import EngineItem
from tierline.deployments.gateway.pipeline.streams import sse_events, total_tokens

CHUNK = 'data: {"choices": [{"index": 0, "delta": {"content": "hi"}}], "usage": null}\n\n'
USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
LAST = f"data: {json.dumps({'choices': [], 'usage': USAGE})}\n\ndata: [DONE]\n\n"


async def rest(*items: EngineItem) -> AsyncGenerator[EngineItem, None]:
    for item in items:
        yield item


def run(hide_usage: bool) -> tuple[list[str], list[int | None]]:
    ended: list[int | None] = []

    async def on_end(used: int | None) -> None:
        ended.append(used)

    async def collect() -> list[str]:
        stream = sse_events(CHUNK, rest(CHUNK, LAST), on_end, hide_usage=hide_usage)
        return [event async for event in stream]

    return asyncio.run(collect()), ended


def test_the_usage_chunk_settles_the_stream_shown_or_hidden() -> None:
    shown, ended = run(hide_usage=False)
    assert ended == [7]
    assert any('"total_tokens": 7' in e for e in shown) and shown[-1].endswith("[DONE]\n\n")
    hidden, ended = run(hide_usage=True)
    assert ended == [7]
    assert not any('"total_tokens"' in e for e in hidden)
    assert "".join(hidden).rstrip().endswith("data: [DONE]")


def test_total_tokens_of_whole_answers_and_chunks() -> None:
    assert total_tokens({"usage": USAGE}) == 7
    assert total_tokens({"usage": None}) is None
    assert total_tokens(LAST) == 7
    assert total_tokens(CHUNK) is None
    assert total_tokens('data: {"usage": {"total_tokens": "7"}}\n\n') is None
