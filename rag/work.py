"""CPU work a request hands to threads, measured and reported to whoever meters it.

A request's own event-loop steps are timed where it is served (the gateway's loop
share). The work it hands to worker threads (a RAG search's filter, counting a long
prompt's tokens) holds the GIL and the cores just as well, but no loop step sees it. So
every such call goes through `off_loop`, which runs it in a thread, times it in that
thread's own CPU time (`time.thread_time`: time the OS gave another thread is not
counted) and `report`s it to the meter of the request that asked for it.

A meter is a callable taking seconds and whether the work ran in this process (where
its threads held this process's GIL) or in another one; it is set for the duration of
one request with
`metering` (a context variable, so concurrent requests each have their own and a call
made in a thread or a child task reports to its request). Where none is set, the work
is only done. A replica serving another process's requests (the RAG replica) meters
each call and returns the seconds with the answer; the caller `report`s them to its own
meter in turn.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")
Meter = Callable[[float, bool], None]
"""`meter(cpu_s, local)`: `local` when the work ran in this process's threads."""

__all__ = ["Meter", "Tally", "metering", "off_loop", "report"]

_meter: ContextVar[Meter | None] = ContextVar("tierline_work_meter", default=None)


def report(cpu_s: float, local: bool = True) -> None:
    """Charge `cpu_s` of thread work to the current request's meter, if it has one
    (`local`: done in this process; False for another replica's, returned with its
    answer)."""
    meter = _meter.get()
    if meter is not None and cpu_s > 0:
        meter(cpu_s, local)


@contextmanager
def metering(meter: Meter) -> Iterator[None]:
    """Within this block (and the threads and tasks it starts), work is reported to
    `meter`."""
    token = _meter.set(meter)
    try:
        yield
    finally:
        _meter.reset(token)


class Tally:
    """A meter that adds up what it is told (a replica's answer carries `cpu_s` back)."""

    def __init__(self) -> None:
        self.cpu_s = 0.0

    def __call__(self, cpu_s: float, local: bool = True) -> None:
        self.cpu_s += cpu_s


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a worker thread (`asyncio.to_thread`), its thread CPU time reported
    to the current request's meter, whether it returns or raises."""
    spent = [0.0]

    def timed() -> T:
        started = time.thread_time()
        try:
            return fn(*args)
        finally:
            spent[0] = time.thread_time() - started

    try:
        return await asyncio.to_thread(timed)
    finally:
        report(spent[0])
