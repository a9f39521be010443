"""Paced streaming (`deployments.engine.pacing`): fewer writes, nothing lost or reordered, the
first token and the last chunk never held, no chunk held past the interval."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from tierline.deployments.engine.pacing import (
    IMMEDIATE,
    MAX_TOKENS_PER_EVENT,
    PacedSend,
    TokenPace,
    parse_interval,
)

SSE_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/event-stream; charset=utf-8")],
}


class Sink:
    def __init__(self, fail_after: int | None = None) -> None:
        self.messages: list[dict[str, Any]] = []
        self.times: list[float] = []
        self.fail_after = fail_after

    async def __call__(self, message: dict[str, Any]) -> None:
        if self.fail_after is not None and len(self.messages) >= self.fail_after:
            raise OSError("the caller left")
        self.messages.append(message)
        self.times.append(asyncio.get_running_loop().time())

    def bodies(self) -> list[bytes]:
        return [m["body"] for m in self.messages if m["type"] == "http.response.body"]


def body(data: bytes, more: bool = True) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


async def test_a_burst_is_written_in_few_writes_with_every_byte_in_order() -> None:
    sink = Sink()
    paced = PacedSend(sink, 0.05)
    await paced(SSE_START)
    chunks = [f"data: {i}\n\n".encode() for i in range(40)]
    for c in chunks:
        await paced(body(c))
    await paced(body(b"data: [DONE]\n\n", more=False))
    await paced.close()
    assert b"".join(sink.bodies()) == b"".join(chunks) + b"data: [DONE]\n\n"
    # the first two at once, then everything else with the last message
    assert len(sink.bodies()) == IMMEDIATE + 1
    assert sink.bodies()[0] == chunks[0] and sink.bodies()[1] == chunks[1]
    assert sink.messages[-1]["more_body"] is False


async def test_a_held_chunk_is_written_by_the_interval_without_a_later_chunk() -> None:
    sink = Sink()
    paced = PacedSend(sink, 0.03)
    await paced(SSE_START)
    for c in (b"a", b"b", b"c", b"d"):
        await paced(body(c))
    assert sink.bodies() == [b"a", b"b"]  # c, d held
    await asyncio.sleep(0.2)
    assert sink.bodies() == [b"a", b"b", b"cd"]
    gap = sink.times[-1] - sink.times[-2]
    assert gap < 0.2  # written by the timer, not by the next chunk
    await paced(body(b"", more=False))
    await paced.close()
    assert sink.messages[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def test_chunks_slower_than_the_interval_go_out_one_by_one() -> None:
    sink = Sink()
    paced = PacedSend(sink, 0.01)
    await paced(SSE_START)
    for i in range(5):
        await paced(body(b"%d" % i))
        await asyncio.sleep(0.03)
    await paced(body(b"", more=False))
    await paced.close()
    assert sink.bodies()[:5] == [b"0", b"1", b"2", b"3", b"4"]


@pytest.mark.parametrize(
    "start",
    [
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        },
        SSE_START,
    ],
)
async def test_whole_answers_and_interval_zero_pass_through(start: dict[str, Any]) -> None:
    sink = Sink()
    paced = PacedSend(sink, 0.05 if start is not SSE_START else 0.0)
    await paced(start)
    for c in (b"x", b"y", b"z"):
        await paced(body(c))
    await paced(body(b"", more=False))
    await paced.close()
    assert sink.bodies() == [b"x", b"y", b"z", b""]


async def test_a_failed_timed_write_is_raised_at_the_apps_next_send() -> None:
    sink = Sink(fail_after=3)  # start, two immediate chunks; the timer's write fails
    paced = PacedSend(sink, 0.02)
    await paced(SSE_START)
    for c in (b"a", b"b", b"c"):
        await paced(body(c))
    await asyncio.sleep(0.1)
    with pytest.raises(OSError):
        await paced(body(b"d"))
    await paced.close()


async def test_close_stops_a_pending_timer() -> None:
    sink = Sink()
    paced = PacedSend(sink, 0.5)
    await paced(SSE_START)
    for c in (b"a", b"b", b"c"):
        await paced(body(c))
    await paced.close()  # the app went away (cancelled): nothing more is written
    await asyncio.sleep(0.05)
    assert sink.bodies() == [b"a", b"b"]


def test_parse_interval() -> None:
    assert parse_interval(None) == 0.0
    assert parse_interval(b"20") == pytest.approx(0.02)
    assert parse_interval("2.5") == pytest.approx(0.0025)
    for bad in (b"", b"x", b"-5", b"0", b"5000", b"nan"):
        assert parse_interval(bad) == 0.0


def test_token_pace_asks_for_as_many_tokens_per_event_as_fit_the_interval() -> None:
    pace = TokenPace(weight=0.5)
    assert pace.tokens_per_event(0.02) == 1  # unknown pace: one token per event
    pace.observe(0.02, 4, 1)  # 4 one-token events in 20 ms: 5 ms a token
    assert pace.token_s == pytest.approx(0.005)
    assert pace.tokens_per_event(0.02) == 4
    pace.observe(0.02, 1, 4)  # one 4-token event in 20 ms: the same pace
    assert pace.tokens_per_event(0.02) == 4
    pace.observe(0.2, 1, 4)  # the tier slowed (50 ms a token): fewer tokens per event
    assert pace.tokens_per_event(0.02) == 1
    for _ in range(50):
        pace.observe(0.001, 10, 1)  # very fast: capped
    assert pace.tokens_per_event(0.02) == MAX_TOKENS_PER_EVENT
    pace.observe(0.0, 3, 1)  # nothing to learn from
    pace.observe(0.01, 0, 1)
    assert pace.tokens_per_event(0.0) == 1
