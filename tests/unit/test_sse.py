"""`deployments.sse`, the one SSE reader: line framing, whole-event cuts, data objects."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from hypothesis import given
from hypothesis import strategies as st
from tierline.deployments import sse
from tierline.deployments.gateway.engines.engine_client import usage_of


async def _lines(lines: list[str]) -> AsyncIterator[str]:
    for line in lines:
        yield line


def _read(lines: list[str]) -> list[str]:
    async def collect() -> list[str]:
        return [e async for e in sse.read_events(_lines(lines))]

    return asyncio.run(collect())


def test_read_events_joins_data_lines_and_drops_comments_and_other_fields() -> None:
    lines = [": keep-alive", "", "event: x", 'data: {"a": 1}', "", "data:b", "data: c", ""]
    assert _read(lines) == ['data: {"a": 1}\n\n', "data: b\nc\n\n"]


def test_read_events_ends_an_unterminated_last_event() -> None:
    assert _read(["data: [DONE]"]) == [sse.DONE]
    assert _read(["", ": only a comment", ""]) == []


def test_events_end_cuts_after_the_last_whole_event() -> None:
    assert sse.events_end(b"") == 0
    assert sse.events_end(b'data: {"a":1}\n') == 0
    buf = b'data: {"a":1}\n\ndata: {"b"'
    assert buf[: sse.events_end(buf)] == b'data: {"a":1}\n\n'
    assert sse.events_end(sse.DONE_BYTES) == len(sse.DONE_BYTES)


@given(st.lists(st.text(alphabet="ab\n:{} ", max_size=12), max_size=6))
def test_events_end_always_leaves_whole_events_before_the_cut(parts: list[str]) -> None:
    buf = "".join(parts).encode()
    cut = sse.events_end(buf)
    assert cut == 0 or buf[:cut].endswith(b"\n\n")
    assert b"\n\n" not in buf[max(cut - 1, 0) :]


def test_data_objects_reads_json_objects_only() -> None:
    text = 'data: {"a": 1}\n\ndata: [DONE]\n\ndata: {bad\n\n: c\ndata: {"b": 2}\n\n'
    assert list(sse.data_objects(text)) == [{"a": 1}, {"b": 2}]


def test_data_objects_keep_line_separators_inside_json_strings() -> None:
    # Engines write U+2028 and U+0085 unescaped; they are not SSE line ends.
    chunk = {"choices": [{"delta": {"content": "a\u2028b\x85c"}}], "usage": {"total_tokens": 3}}
    text = sse.event(json.dumps(chunk, ensure_ascii=False))
    assert list(sse.data_objects(text)) == [chunk]
    assert usage_of(text) == {"total_tokens": 3}


def test_split_events_gives_the_block_back() -> None:
    block = sse.event('{"a": 1}') + sse.event('{"b": 2}') + sse.DONE
    events = sse.split_events(block)
    assert "\n\n".join(events) == block
    assert [e for e in events if e] == ['data: {"a": 1}', 'data: {"b": 2}', "data: [DONE]"]
