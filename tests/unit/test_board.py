"""The tier board: one place for each tier's health, replicas, slots and down-waiters."""

from __future__ import annotations

import asyncio
import random

from tierline.cluster.specfile import load_spec_text
from tierline.deployments.gateway.engines.board import TierBoard
from tierline.router.types import TierState

SPEC = load_spec_text(
    """
tiers:
  - {name: a, model_source: o/a, max_context_tokens: 128, max_ongoing_requests: 2,
     max_queued_requests: 1}
  - {name: b, model_source: o/b, max_context_tokens: 512, max_ongoing_requests: 1,
     max_queued_requests: 0}
  - {name: c, model_source: o/c, max_context_tokens: 1024, max_queued_requests: -1}
"""
)


def test_room_at_the_edge_counts_free_slots_against_pending_requests() -> None:
    rng = random.Random(15)
    for _ in range(2000):
        board = TierBoard(SPEC.tiers, gateways=1)
        assert board.slots.limits == {"a": 3, "b": 1, "c": None}
        held = [board.acquire(n) for n in ("a", "b") for _ in range(rng.randint(0, 4))]
        board.pending = rng.randint(0, 5)
        free = (3 - board.slots.in_flight["a"]) + (1 - board.slots.in_flight["b"])
        assert board.free(["a", "b"]) == free
        assert board.room_for_auto(["a", "b"]) is (free > board.pending)
        assert board.room_for_auto(["a", "c"])  # no limit on c: always room
        for slot in held:
            if slot is not None:
                slot.release()
        assert board.slots.in_flight == {"a": 0, "b": 0, "c": 0}


def test_states_show_health_replicas_and_full_tiers() -> None:
    board = TierBoard(SPEC.tiers, gateways=1)
    board.replicas["c"] = 0
    slot = board.acquire("b")
    assert slot is not None
    a, b, c = board.states(["a", "b", "c"])
    assert a == TierState("a", 128)
    assert b.overloaded and b.queued == 1  # full: the learned policy spills past it
    assert c.cold and board.is_cold("c")
    board.mark_down("a")
    assert board.states(["a"]) == [TierState("a", 128, healthy=False)]


def test_marking_down_wakes_the_waiters_of_that_tier_only() -> None:
    async def scenario() -> None:
        board = TierBoard(SPEC.tiers, gateways=1)
        wa, wb = board.down_waiter("a"), board.down_waiter("b")
        board.mark_down("a")
        assert wa.done() and not wb.done()
        board.forget("a", wa)
        board.forget("b", wb)
        assert board.down_waiters == {"a": set(), "b": set(), "c": set()}

    asyncio.run(scenario())
