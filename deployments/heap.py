"""Keep a replica's long-lived objects out of the garbage collector's full passes.

CPython's collector scans every tracked object in its oldest generation on each full
pass, so a replica that has imported vLLM, torch and transformers pays for all of them
every time request churn triggers one: in process, the hostile-tenant bench saw full
passes of 100-120 ms, several a second, and every tenant's request waits behind them.
Moving the objects that live as long as the replica into the permanent generation
(`gc.freeze`) makes each pass scan only what requests allocate.

Ray Serve freezes once, at the end of a replica's construction. Much of what lives long
comes later: a replica started lazily (the RAG replica's store, tokenizer and index), and
each request path's first use (its imports, compiled templates and schemas). So a replica
settles again once it has started (`settle`) and after its first few requests of each
power of `SETTLE_EVERY` (`HeapSettle.request`): by then its paths have been used.

Freezing keeps whatever is alive at that moment out of later passes, the objects of the
requests then in flight too: those are still freed by reference counting, and only a
cycle among them would outlive its request. Three settles in a replica's life bound that.
"""

from __future__ import annotations

import gc

__all__ = ["SETTLE_AT", "HeapSettle", "settle"]

SETTLE_AT = (64, 512, 4096)
"""Request counts after which a replica settles its heap again."""


def settle() -> None:
    """Collect what is garbage now and freeze the rest. (Not `gc.get_freeze_count`: it
    walks the whole permanent generation, 18 ms over a gateway's heap.)"""
    gc.collect()
    gc.freeze()


class HeapSettle:
    """Counts a replica's requests and settles its heap after the `at`-th ones."""

    def __init__(self, at: tuple[int, ...] = SETTLE_AT) -> None:
        self.at = frozenset(at)
        self.last = max(at, default=0)
        self.count = 0

    def request(self) -> bool:
        """One more request arrived; True when this one settled the heap."""
        if self.count > self.last:
            return False
        self.count += 1
        if self.count in self.at:
            settle()
            return True
        return False
