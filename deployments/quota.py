"""Per-tenant quotas: requests/min, tokens/min and concurrent requests.

`QuotaLedger` is the decision logic with time passed in (no hidden clock), so it is
tested exactly. A request reserves its worst case (`plan.reservation_of`) and is charged
its real usage when it ends; a grounded chat's early ticket is `resize`d once its prompt is
known; work that is not a generation (RAG, embeddings) is charged with `Charge`.

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
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

from tierline.cluster.spec import GatewaySpec, QuotaSpec
from tierline.deployments.errors import APIError
from tierline.deployments.quota_store import (
    WINDOWS,
    QuotaEntry,
    QuotaSnapshot,
    QuotaSnapshotStore,
    open_quota_store,
)

logger = logging.getLogger(__name__)

WINDOW_S = 60.0
SAVE_EVERY_S = 5.0
TOKENS_REASON = "tokens per minute"


@dataclass(frozen=True)
class Admission:
    ok: bool
    ticket: int = 0
    retry_after_s: float = 0.0
    reason: str = ""

    @property
    def over_budget(self) -> bool:
        """Refused for the tenant's tokens per minute (what `on_budget` acts on)."""
        return not self.ok and self.reason == TOKENS_REASON


@dataclass
class _Tenant:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int, int]] = field(default_factory=deque)  # (t, ticket, n)
    downgraded: deque[tuple[float, int, int]] = field(default_factory=deque)
    """Tokens served past the budget (`on_budget: downgrade`), in their own window."""
    in_flight: int = 0

    def expire(self, now: float) -> None:
        while self.requests and self.requests[0] <= now - WINDOW_S:
            self.requests.popleft()
        for window in (self.tokens, self.downgraded):
            while window and window[0][0] <= now - WINDOW_S:
                window.popleft()

    def tokens_used(self) -> int:
        return sum(n for _, _, n in self.tokens)


class QuotaLedger:
    """Rolling-window quota accounting for every tenant.

    Safe to call from several threads at once (`QuotaService`'s sync methods run in Ray
    Serve's thread pool): each call holds the ledger's lock, so a check and the
    reservation it allows are one step, and no deque is changed while another call reads
    it."""

    def __init__(self, quotas: Mapping[str, QuotaSpec], default: QuotaSpec) -> None:
        self._quotas = dict(quotas)
        self._default = default
        self._tenants: dict[str, _Tenant] = {}
        self._next_ticket = 1
        self._open: dict[int, str] = {}
        self._lock = threading.Lock()

    def quota(self, tenant: str) -> QuotaSpec:
        return self._quotas.get(tenant, self._default)

    def admit(self, tenant: str, tokens: int, now: float, downgrade: bool = False) -> Admission:
        """Admit a request that may use up to `tokens` (prompt + max completion);
        `downgrade`: charge it to the tenant's window past the budget instead (refused
        when the tenant has none: `on_budget: refuse`)."""
        with self._lock:
            return self._admit(tenant, tokens, now, downgrade)

    def resize(self, ticket: int, tokens: int, now: float) -> Admission:
        """Make an open request's reservation `tokens` (a grounded chat is admitted before
        retrieval, and reserves its final prompt once it is known). Refused, the old
        reservation kept, when the tenant's window has no room for the difference."""
        with self._lock:
            return self._resize(ticket, tokens, now)

    def release(self, ticket: int, used_tokens: int | None, now: float) -> None:
        """End a request; `used_tokens` replaces its reservation when known."""
        with self._lock:
            self._release(ticket, used_tokens, now)

    def debit(self, tenant: str, tokens: int, now: float) -> None:
        """Charge `tokens` to the tenant's window whatever its room: work already done for
        a request that was then refused (its body read and judged), so no request is
        free. It holds no concurrent slot and no request of `requests_per_min`."""
        if tokens <= 0:
            return
        with self._lock:
            st = self._tenants.setdefault(tenant, _Tenant())
            st.expire(now)
            st.tokens.append((now, 0, tokens))

    def tokens_used(self, tenant: str, now: float) -> int:
        """Tokens charged to `tenant` in the window ending `now` (open reservations as
        reserved)."""
        with self._lock:
            st = self._tenants.get(tenant)
            if st is None:
                return 0
            st.expire(now)
            return st.tokens_used()

    def in_flight(self, tenant: str) -> int:
        with self._lock:
            st = self._tenants.get(tenant)
            return 0 if st is None else st.in_flight

    def export(self, now: float, wall_now: float) -> QuotaSnapshot:
        """Every tenant's windows as wall-clock entries (`now` on the ledger's clock is
        `wall_now`), summed per whole second and stamped with its end. Open requests'
        reservations are kept as charged; their concurrent slots are not exported."""
        with self._lock:
            sums: dict[tuple[str, str, float], int] = {}
            for tenant, st in self._tenants.items():
                st.expire(now)
                stamped = (
                    ("requests", ((t, 1) for t in st.requests)),
                    ("tokens", ((t, n) for t, _, n in st.tokens)),
                    ("downgraded", ((t, n) for t, _, n in st.downgraded)),
                )
                for window, stamps in stamped:
                    for t, n in stamps:
                        key = (tenant, window, float(math.ceil(wall_now - (now - t))))
                        sums[key] = sums.get(key, 0) + n
            entries = tuple(QuotaEntry(t, w, at, n) for (t, w, at), n in sums.items())
            return QuotaSnapshot(wall_now, self._next_ticket, entries)

    def import_(self, snapshot: QuotaSnapshot, now: float, wall_now: float) -> int:
        """Add a snapshot's entries to the windows (`now` on the ledger's clock is
        `wall_now`), dropping those a window has already passed; returns how many were
        kept. Restored entries belong to no open request (ticket 0), and tickets carry on
        after the snapshot's."""
        kept = 0
        with self._lock:
            self._next_ticket = max(self._next_ticket, snapshot.next_ticket)
            touched: set[str] = set()
            for e in snapshot.entries:
                t = now - max(0.0, wall_now - e.at)
                if e.window not in WINDOWS or t <= now - WINDOW_S or e.amount <= 0:
                    continue
                st = self._tenants.setdefault(e.tenant, _Tenant())
                if e.window == "requests":
                    st.requests.extend([t] * e.amount)
                else:
                    window = st.tokens if e.window == "tokens" else st.downgraded
                    window.append((t, 0, e.amount))
                touched.add(e.tenant)
                kept += 1
            for tenant in touched:
                st = self._tenants[tenant]
                st.requests = deque(sorted(st.requests))
                st.tokens = deque(sorted(st.tokens, key=lambda x: x[0]))
                st.downgraded = deque(sorted(st.downgraded, key=lambda x: x[0]))
        return kept

    def _admit(self, tenant: str, tokens: int, now: float, downgrade: bool = False) -> Admission:
        q = self.quota(tenant)
        st = self._tenants.setdefault(tenant, _Tenant())
        st.expire(now)
        if q.max_concurrent is not None and st.in_flight >= q.max_concurrent:
            return Admission(False, retry_after_s=1.0, reason="concurrent requests")
        if q.requests_per_min is not None and len(st.requests) >= q.requests_per_min:
            wait = st.requests[0] + WINDOW_S - now
            return Admission(False, retry_after_s=wait, reason="requests per minute")
        window = st.downgraded if downgrade else st.tokens
        limit = q.downgrade_ceiling if downgrade else q.tokens_per_min
        if downgrade and limit is None:
            return Admission(False, retry_after_s=WINDOW_S, reason="no downgrade past the budget")
        refused = _over_tokens(limit, window, tokens, now)
        if refused is not None:
            return refused
        ticket = self._next_ticket
        self._next_ticket += 1
        st.requests.append(now)
        window.append((now, ticket, tokens))
        st.in_flight += 1
        self._open[ticket] = tenant
        return Admission(True, ticket=ticket)

    def _resize(self, ticket: int, tokens: int, now: float) -> Admission:
        tenant = self._open.get(ticket)
        if tenant is None:
            return Admission(False, reason="unknown ticket")
        st = self._tenants[tenant]
        st.expire(now)
        at = next((i for i, (_, tk, _) in enumerate(st.tokens) if tk == ticket), None)
        held = 0 if at is None else st.tokens[at][2]
        refused = _over_tokens(self.quota(tenant).tokens_per_min, st.tokens, tokens, now, held)
        if refused is not None:
            return refused
        if at is None:
            st.tokens.append((now, ticket, tokens))
        else:
            st.tokens[at] = (st.tokens[at][0], ticket, tokens)
        return Admission(True, ticket=ticket)

    def _release(self, ticket: int, used_tokens: int | None, now: float) -> None:
        tenant = self._open.pop(ticket, None)
        if tenant is None:
            return
        st = self._tenants[tenant]
        st.in_flight -= 1
        if used_tokens is not None and not _settle(st.tokens, ticket, used_tokens):
            _settle(st.downgraded, ticket, used_tokens)
        st.expire(now)


def _settle(window: deque[tuple[float, int, int]], ticket: int, used: int) -> bool:
    """Replace `ticket`'s reservation in `window` with what it used; False: not there."""
    for i, (t, tk, _) in enumerate(window):
        if tk == ticket:
            window[i] = (t, tk, used)
            return True
    return False


def _over_tokens(
    limit: int | None,
    window: deque[tuple[float, int, int]],
    tokens: int,
    now: float,
    held: int = 0,
) -> Admission | None:
    """The refusal when `tokens` more (less `held`, already reserved) pass `limit` tokens
    per minute over `window`; None when they fit (or there is no limit)."""
    if limit is None:
        return None
    if tokens > limit:
        return Admission(False, retry_after_s=WINDOW_S, reason=TOKENS_REASON)
    excess = sum(n for _, _, n in window) - held + tokens - limit
    if excess <= 0:
        return None
    freed, wait = 0, WINDOW_S
    for t, _, n in window:
        freed += n
        if freed >= excess:
            wait = t + WINDOW_S - now
            break
    return Admission(False, retry_after_s=wait, reason=TOKENS_REASON)


def ledger_for(gateway: GatewaySpec) -> QuotaLedger:
    return QuotaLedger({t.name: t for t in gateway.tenants}, gateway.default_quota)


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
