"""Per-tenant quotas: requests/min, tokens/min and concurrent requests.

`QuotaLedger` (`deployments.gateway.quota.ledger`) is the decision logic with time passed in (no
hidden clock), so it is tested exactly. A request reserves its worst case
(`plan.reservation_of`) and is charged its real usage when it ends; a grounded chat's early
ticket is `resize`d once its prompt is known; work that is not a generation (RAG,
embeddings) is charged with `Charge`.

A tenant with `on_budget: downgrade` that is past its tokens per minute may be admitted
again with `downgrade=True`: the request is then charged to a second window,
`downgrade_tokens_per_min` (the hard ceiling past the budget), while its requests per
minute and concurrent requests count as any other's.

All gateway replicas share one ledger held by the `QuotaService` Serve deployment, so
limits hold across replicas with no per-replica drift. That deployment loads the ledger's
windows from the deployment's store (`quota_store`) before it serves, saves them every
`SAVE_EVERY_S` off the event loop and once more when it stops, so a restart does not hand
every tenant a fresh minute.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

from tierline.cluster.spec import GatewaySpec, QuotaSpec
from tierline.deployments.errors import APIError
from tierline.deployments.gateway.quota.ledger import (
    TOKENS_REASON,
    WINDOW_S,
    Admission,
    QuotaLedger,
    ledger_for,
)
from tierline.deployments.gateway.quota.store import QuotaSnapshotStore, open_quota_store

__all__ = [
    "SAVE_EVERY_S",
    "TOKENS_REASON",
    "WINDOW_S",
    "Admission",
    "Charge",
    "Hold",
    "LocalQuota",
    "QuotaClient",
    "QuotaHold",
    "QuotaLedger",
    "QuotaService",
    "ServeQuota",
    "Settle",
    "charge_hold",
    "is_limited",
    "ledger_for",
    "no_charge",
    "note_ticket",
    "retry_after_header",
    "tickets_noted",
]

logger = logging.getLogger(__name__)

SAVE_EVERY_S = 5.0


def is_limited(q: QuotaSpec) -> bool:
    return any(v is not None for v in (q.requests_per_min, q.tokens_per_min, q.max_concurrent))


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


Settle = Callable[[int], None]
"""Records the tokens a held request really used (the model's own count)."""


_TICKETS_TAKEN: ContextVar[list[int] | None] = ContextVar("tierline_tickets_taken", default=None)


@contextmanager
def tickets_noted() -> Iterator[Callable[[], bool]]:
    """Within the block (one request), note whether the request took a quota ticket:
    yields a function that says so. The middleware charges a refused request its body
    only when it was charged nothing else."""
    taken: list[int] = []
    reset = _TICKETS_TAKEN.set(taken)
    try:
        yield lambda: bool(taken)
    finally:
        _TICKETS_TAKEN.reset(reset)


def note_ticket(admission: Admission) -> None:
    """Record an admitted ticket for the request being served (see `tickets_noted`)."""
    taken = _TICKETS_TAKEN.get()
    if taken is not None and admission.ok:
        taken.append(admission.ticket)


class Hold(Protocol):
    """`async with hold(tenant, tokens) as settle:` reserves `tokens` against the tenant's
    quota and holds one of its concurrent requests (`max_concurrent`) while the block
    runs; raises the 429 `APIError` when over. The request is charged what the block
    `settle`d, or the reservation when it settled nothing."""

    def __call__(self, tenant: str, tokens: int) -> AbstractAsyncContextManager[Settle]: ...


class QuotaHold:
    """`Hold` over a `QuotaClient` (None: no quotas kept) and the tenants' quotas."""

    def __init__(self, quota: QuotaClient | None, quota_for: Callable[[str], QuotaSpec]) -> None:
        self._quota = quota
        self._quota_for = quota_for

    @asynccontextmanager
    async def __call__(self, tenant: str, tokens: int) -> AsyncIterator[Settle]:
        if self._quota is None or not is_limited(self._quota_for(tenant)):
            yield _ignore
            return
        admission = await self._quota.admit(tenant, tokens)
        note_ticket(admission)
        if not admission.ok:
            raise APIError(
                429,
                f"tenant {tenant!r} is over its quota ({admission.reason}); retry later",
                code="quota_exceeded",
                headers={"Retry-After": retry_after_header(admission.retry_after_s)},
            )
        used = tokens

        def settle(n: int) -> None:
            nonlocal used
            used = n

        try:
            yield settle
        finally:
            await self._quota.release(admission.ticket, used)


def _ignore(tokens: int) -> None:
    """The `Settle` of a request no quota counts."""


Charge = Callable[[str, int], Awaitable[None]]
"""Counts one request and N embedded tokens against a tenant's quota; raises the 429
`APIError` when over (`GatewayCore.charge`). The RAG routes call it before their work."""


async def no_charge(tenant: str, tokens: int) -> None:
    """The `Charge` of a gateway without quotas (and of unit tests)."""


def charge_hold(charge: Charge) -> Hold:
    """A `Hold` that only `charge`s up front: it holds no concurrent request and settles
    nothing (the routes' behaviour when the gateway gives them no `Hold`)."""

    @asynccontextmanager
    async def hold(tenant: str, tokens: int) -> AsyncIterator[Settle]:
        await charge(tenant, tokens)
        yield _ignore

    return hold


class QuotaClient(Protocol):
    async def admit(self, tenant: str, tokens: int, downgrade: bool = False) -> Admission: ...

    async def resize(self, ticket: int, tokens: int) -> Admission: ...

    async def release(self, ticket: int, used_tokens: int | None) -> None: ...

    async def debit(self, tenant: str, tokens: int) -> None: ...


class LocalQuota:
    """A ledger in this process (one gateway replica, or tests)."""

    def __init__(self, ledger: QuotaLedger, clock: Any) -> None:
        self._ledger = ledger
        self._clock = clock

    async def admit(self, tenant: str, tokens: int, downgrade: bool = False) -> Admission:
        return self._ledger.admit(tenant, tokens, self._clock(), downgrade)

    async def resize(self, ticket: int, tokens: int) -> Admission:
        return self._ledger.resize(ticket, tokens, self._clock())

    async def release(self, ticket: int, used_tokens: int | None) -> None:
        self._ledger.release(ticket, used_tokens, self._clock())

    async def debit(self, tenant: str, tokens: int) -> None:
        self._ledger.debit(tenant, tokens, self._clock())


class QuotaService:
    """The Serve deployment (one replica) that owns the cluster-wide ledger. Its own
    monotonic clock times every replica's requests, so replicas' clocks never disagree.

    `start` (run by Serve's first health check, which a replica passes before it gets any
    request) loads the last snapshot from `store` (default: a table in the Responses
    store's database) and saves one every `save_every_s`; `stop` (Serve's `__del__`)
    saves a last one. A failed save is logged and retried at the next tick; a store that
    cannot be read at start fails the replica, and Serve starts another."""

    def __init__(
        self,
        gateway_data: dict[str, Any],
        store: QuotaSnapshotStore | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        save_every_s: float = SAVE_EVERY_S,
    ) -> None:
        spec = GatewaySpec.model_validate(gateway_data)
        self._ledger = ledger_for(spec)
        self._store = store if store is not None else open_quota_store(spec.responses)
        self._clock = clock
        self._wall = wall
        self._save_every_s = save_every_s
        self._saver: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        async with self._starting:
            if self._saver is not None:
                return
            await self._store.start()
            snapshot = await self._store.load()
            if snapshot is not None:
                kept = self._ledger.import_(snapshot, self._clock(), self._wall())
                logger.info("quota windows restored: %d of %d entries", kept, len(snapshot.entries))
            self._stopping = asyncio.Event()
            self._saver = asyncio.create_task(self._save_forever(self._stopping))

    async def save(self) -> None:
        """Store the ledger's windows now (exported in a worker thread: the ledger's lock
        is shared with the request threads)."""
        snapshot = await asyncio.to_thread(self._ledger.export, self._clock(), self._wall())
        await self._store.save(snapshot)

    async def _save_forever(self, stopping: asyncio.Event) -> None:
        while True:
            try:
                await asyncio.wait_for(stopping.wait(), self._save_every_s)
                return
            except TimeoutError:
                pass
            try:
                await self.save()
            except Exception:
                logger.exception("quota windows not saved; retrying in %g s", self._save_every_s)

    async def stop(self) -> None:
        async with self._starting:
            if self._saver is None:
                return
            saver, self._saver = self._saver, None
            self._stopping.set()
            await saver  # a periodic save in flight ends before the last one starts
            try:
                await self.save()
            finally:
                await self._store.close()

    async def check_health(self) -> None:
        await self.start()

    async def __del__(self) -> None:
        await self.stop()

    def admit(self, tenant: str, tokens: int, downgrade: bool = False) -> Admission:
        return self._ledger.admit(tenant, tokens, self._clock(), downgrade)

    def resize(self, ticket: int, tokens: int) -> Admission:
        return self._ledger.resize(ticket, tokens, self._clock())

    def release(self, ticket: int, used_tokens: int | None) -> None:
        self._ledger.release(ticket, used_tokens, self._clock())

    def debit(self, tenant: str, tokens: int) -> None:
        self._ledger.debit(tenant, tokens, self._clock())


class ServeQuota:
    """`QuotaClient` over a handle to the `QuotaService` deployment."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    async def admit(self, tenant: str, tokens: int, downgrade: bool = False) -> Admission:
        result: Admission = await self._handle.admit.remote(tenant, tokens, downgrade)
        return result

    async def resize(self, ticket: int, tokens: int) -> Admission:
        result: Admission = await self._handle.resize.remote(ticket, tokens)
        return result

    async def release(self, ticket: int, used_tokens: int | None) -> None:
        await self._handle.release.remote(ticket, used_tokens)

    async def debit(self, tenant: str, tokens: int) -> None:
        await self._handle.debit.remote(tenant, tokens)
