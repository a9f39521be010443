"""A replica's long-lived objects leave the collector's full passes (`deployments.heap`,
issue 27: in process, a hostile tenant's allocation churn set off full passes of
100-120 ms over everything vLLM and torch had imported, several a second, and every
tenant's request waited behind them)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from tierline.deployments.heap import SETTLE_AT, HeapSettle, settle


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the rest of the test session scans as it did


def test_settle_collects_garbage_and_freezes_what_lives() -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self  # a cycle: only the collector frees it

    kept = [{"long": "lived"} for _ in range(1000)]
    cycle_alive = Node()
    Node()  # garbage now
    settle()
    assert gc.get_freeze_count() >= len(kept)
    assert gc.get_count()[0] < 10
    assert not any(o is cycle_alive for o in gc.get_objects())  # out of every pass
    assert sum(isinstance(o, Node) for o in gc.get_objects()) == 0


def test_settles_after_the_given_request_counts_and_then_never_again() -> None:
    heap = HeapSettle((3, 5))
    settled = [i + 1 for i in range(50) if heap.request()]
    assert settled == [3, 5]
    assert gc.get_freeze_count() > 0
    assert heap.count == 6  # counting stops past the last settle point
    assert tuple(sorted(SETTLE_AT)) == SETTLE_AT and SETTLE_AT[0] >= 16
