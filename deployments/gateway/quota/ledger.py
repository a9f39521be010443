"""The quota ledger: every tenant's rolling windows and the decisions on them.

`QuotaLedger` is the decision logic with time passed in (no hidden clock), so it is
tested exactly; `deployments.gateway.quota.service` holds it in the `QuotaService` deployment (or in
process, `LocalQuota`) and gives the gateway its `QuotaClient`.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from tierline.cluster.spec import GatewaySpec, QuotaSpec
from tierline.deployments.gateway.quota.store import WINDOWS, QuotaEntry, QuotaSnapshot

__all__ = ["TOKENS_REASON", "WINDOW_S", "Admission", "QuotaLedger", "ledger_for"]

WINDOW_S = 60.0
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
        `wall_now`), summed per whole second and stamped with its end: strictly after every
        instant in it (one on a second's boundary goes to the next second), so a restored
        entry never leaves its window before the original would, whatever the floating
        point of the two clocks' subtraction. Open requests' reservations are kept as
        charged; their concurrent slots are not exported."""
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
                        key = (tenant, window, float(math.floor(wall_now - (now - t)) + 1))
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
