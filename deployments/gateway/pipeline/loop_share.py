"""Each tenant's fair share of the gateway replica's event loop.

A gateway replica answers every tenant on one event loop. A request that is refused
with 400 still costs the loop its way in (reading and parsing the body, validating it,
counting its tokens), so one tenant keeping a few expensive requests in flight
back-to-back makes every other tenant's requests wait behind them, whatever their quotas.

Each request's loop time is measured (`metered`: the time of every step the
request's own task takes on the loop) and charged to its tenant (`step_cost`: a step
longer than `long_step_s` is charged more than its length, since every other request
waits behind it) as an exponentially decaying sum over `window_s` (`decayed`). While
another tenant has had a request at this replica within `window_s`, a tenant whose sum is
past `max_fraction` of the window and larger than every such tenant's is refused at the
edge, after its key is checked and before its body is read (`refusal`: 429
`loop_share_exceeded` with the seconds until it is back under its share in `Retry-After`).
A tenant alone on the replica is never refused (the loop is all its own), and neither is
one that takes less of it than another active tenant (a light tenant is never refused
because a heavy one is there), nor anyone while the tenants' loop time together is under
`busy_fraction` of the window (the loop has room, so no one waits for it).
A request's cost is charged as its steps run, so two requests of one tenant arriving
together would both be admitted before either had cost anything. Each admitted request
is therefore charged up front what the tenant's requests have recently cost (`reserve`:
an exponential average of their costs, `next_estimate`), and that reservation is taken
back when the request ends (`finish`): a tenant whose requests are expensive cannot land
two of them back to back, and a cheap tenant's reservation is next to nothing.
The decisions are pure functions of `TenantUse`; `LoopShare` keeps the state of one
replica and reads the clock.
"""

from __future__ import annotations

import math
import sys
import types
from collections.abc import Callable, Coroutine, Generator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from tierline.cluster.spec import LoopShareSpec
from tierline.deployments.errors import APIError

T = TypeVar("T")
Clock = Callable[[], float]

__all__ = [
    "LoopShare",
    "Reservation",
    "TenantUse",
    "charged",
    "decayed",
    "heaviest_other",
    "metered",
    "next_estimate",
    "refusal",
    "released",
    "retry_after_s",
    "step_cost",
    "work_cost",
]


@dataclass(frozen=True)
class TenantUse:
    """One tenant's loop time (`used_s`, decayed to `at`) and its last request's arrival."""

    used_s: float = 0.0
    at: float = 0.0
    last_seen: float = -math.inf


def decayed(use: TenantUse, now: float, window_s: float) -> float:
    """`use.used_s` decayed from `use.at` to `now`: a tenant taking a steady fraction f of
    the loop settles at f x window_s."""
    elapsed = max(0.0, now - use.at)
    return use.used_s * math.exp(-elapsed / window_s)


def step_cost(step_s: float, long_step_s: float, window_s: float) -> float:
    """What one step of `step_s` on the loop is charged. Every request that becomes ready
    meanwhile waits for the step's whole length, so a step longer than `long_step_s` is
    charged `step_s` x `step_s / long_step_s` (the wait it adds to a request arriving at a
    random moment grows with the square of the step). At most `window_s`, so that no one
    step (a cold start's imports, say) keeps its tenant out for more than a few windows."""
    step_s = max(0.0, step_s)
    return min(step_s * max(1.0, step_s / long_step_s), window_s)


def work_cost(
    cpu_s: float, long_step_s: float, window_s: float, switch_s: float | None = None
) -> float:
    """What `cpu_s` of a worker thread's CPU in this process is charged: a thread holds
    the GIL in turns of up to the switch interval (`sys.getswitchinterval()`, 5 ms), so
    to a request waiting on the loop it is a step of min(cpu_s, interval), repeated; each
    second of it is weighted as such a step is (`step_cost`)."""
    interval = sys.getswitchinterval() if switch_s is None else switch_s
    cpu_s = max(0.0, cpu_s)
    turn = min(cpu_s, interval)
    return min(cpu_s * max(1.0, turn / long_step_s), window_s)


def charged(use: TenantUse, cost_s: float, now: float, window_s: float) -> TenantUse:
    """`use` with `cost_s` of (weighted) loop time added at `now`."""
    return TenantUse(decayed(use, now, window_s) + max(0.0, cost_s), now, use.last_seen)


ESTIMATE_WEIGHT = 0.5
"""Weight of a finished request's cost in its tenant's estimate (`next_estimate`)."""


def next_estimate(estimate: float | None, cost: float) -> float:
    """A tenant's per-request cost estimate after a request that cost `cost` (the first
    request sets it)."""
    if estimate is None:
        return cost
    return (1 - ESTIMATE_WEIGHT) * estimate + ESTIMATE_WEIGHT * cost


def released(use: TenantUse, held: float, held_at: float, now: float, window_s: float) -> TenantUse:
    """`use` without a reservation of `held` made at `held_at` (decayed as the rest since)."""
    left = decayed(use, now, window_s) - held * math.exp(-max(0.0, now - held_at) / window_s)
    return TenantUse(max(0.0, left), now, use.last_seen)


@dataclass(frozen=True)
class Reservation:
    """What an admitted request was charged up front (`LoopShare.reserve`)."""

    tenant: str
    held: float
    at: float


def heaviest_other(
    uses: Mapping[str, TenantUse], tenant: str, now: float, window_s: float
) -> float | None:
    """The largest decayed use of the tenants other than `tenant` that had a request arrive
    within `window_s`; None when there is none (`tenant` has the loop to itself)."""
    active = [
        decayed(u, now, window_s)
        for t, u in uses.items()
        if t != tenant and now - u.last_seen <= window_s
    ]
    return max(active, default=None)


def retry_after_s(used_s: float, limit_s: float, window_s: float) -> int:
    """Whole seconds until `used_s` decays to `limit_s` (at least 1)."""
    if used_s <= limit_s or limit_s <= 0:
        return 1
    return max(1, math.ceil(window_s * math.log(used_s / limit_s)))


def refusal(
    uses: Mapping[str, TenantUse], tenant: str, now: float, spec: LoopShareSpec
) -> APIError | None:
    """The 429 for a request of `tenant` arriving at `now`, or None to let it in."""
    if not spec.enabled:
        return None
    use = uses.get(tenant)
    if use is None:
        return None
    used = decayed(use, now, spec.window_s)
    limit = spec.max_fraction * spec.window_s
    if used <= limit:
        return None
    total = sum(decayed(u, now, spec.window_s) for u in uses.values())
    if total < spec.busy_fraction * spec.window_s:  # the loop has room: no one waits
        return None
    other = heaviest_other(uses, tenant, now, spec.window_s)
    if other is None or used <= other:  # alone, or not the heaviest: never refused
        return None
    wait = retry_after_s(used, limit, spec.window_s)
    return APIError(
        429,
        f"this tenant's requests took {used / spec.window_s:.0%} of the gateway replica's "
        f"event loop over the last {spec.window_s:g} s while other tenants were waiting; "
        f"the share is {spec.max_fraction:.0%} (gateway.loop_share.max_fraction). Retry "
        f"after {wait} s",
        code="loop_share_exceeded",
        headers={"Retry-After": str(wait)},
    )


class LoopShare:
    """One gateway replica's per-tenant loop time (state for `refusal`)."""

    def __init__(self, spec: LoopShareSpec, clock: Clock, step_clock: Clock) -> None:
        """`clock` dates arrivals and decay (monotonic); `step_clock` times each step
        (the gateway uses the loop thread's CPU time, `time.thread_time`, so that a step
        the OS preempted is not charged for the wait)."""
        self.spec = spec
        self.clock = clock
        self.step_clock = step_clock
        self.uses: dict[str, TenantUse] = {}
        self.estimates: dict[str, float] = {}  # per tenant: a request's recent cost

    def admit(self, tenant: str) -> APIError | None:
        """The refusal of a request of `tenant` arriving now; when admitted, the tenant
        counts as active from now on."""
        now = self.clock()
        err = refusal(self.uses, tenant, now, self.spec)
        if err is None:
            use = self.uses.get(tenant, TenantUse(at=now))
            self.uses[tenant] = TenantUse(use.used_s, use.at, now)
            self._forget(now)
        return err

    def reserve(self, tenant: str) -> Reservation:
        """Charge an admitted request of `tenant` its tenant's recent per-request cost now,
        before any of its steps run; `finish` takes it back."""
        held = self.estimates.get(tenant, 0.0)
        now = self.clock()
        use = self.uses.get(tenant)
        if use is not None and held > 0:
            self.uses[tenant] = charged(use, held, now, self.spec.window_s)
        return Reservation(tenant, held, now)

    def finish(self, reservation: Reservation, cost: float) -> None:
        """The request ended having been charged `cost` (its steps and its threads' work):
        its reservation is taken back and the tenant's estimate learns the cost."""
        t = reservation.tenant
        self.estimates[t] = next_estimate(self.estimates.get(t), cost)
        use = self.uses.get(t)
        if use is not None and reservation.held > 0:
            now = self.clock()
            self.uses[t] = released(use, reservation.held, reservation.at, now, self.spec.window_s)

    def charge(self, tenant: str, step_s: float) -> float:
        """Charge `tenant` one step of `step_s` its request took on the loop; returns the
        (weighted) cost charged."""
        use = self.uses.get(tenant)
        if use is None:
            return 0.0
        spec = self.spec
        cost = step_cost(step_s, spec.long_step_s, spec.window_s)
        self.uses[tenant] = charged(use, cost, self.clock(), spec.window_s)
        return cost

    def charge_work(self, tenant: str, cpu_s: float, local: bool = True) -> float:
        """Charge `tenant` `cpu_s` of CPU its request's work took in worker threads (here,
        `local`, or in the RAG replica: `tierline.rag.work`). Returns the cost charged.

        Work in this process's threads is weighted like a step of at most the GIL's
        switch interval (`work_cost`): while such a thread runs, the loop waits up to one
        interval for the GIL each time it has a request to serve. Another process's work
        does not hold this loop and is charged as it is."""
        use = self.uses.get(tenant)
        if use is None:
            return 0.0
        spec = self.spec
        cost = work_cost(cpu_s, spec.long_step_s, spec.window_s) if local else cpu_s
        cost = min(max(0.0, cost), spec.window_s)
        self.uses[tenant] = charged(use, cost, self.clock(), spec.window_s)
        return cost

    def _forget(self, now: float) -> None:
        """Drop tenants idle for many windows whose use has decayed to nothing."""
        if len(self.uses) < 64:
            return
        horizon = 20 * self.spec.window_s
        for t, u in list(self.uses.items()):
            if now - u.last_seen > horizon and now - u.at > horizon:
                del self.uses[t]
                self.estimates.pop(t, None)


def _never() -> bool:
    return False


@types.coroutine
def _drive(
    coro: Coroutine[Any, Any, T],
    clock: Clock,
    charge: Callable[[float], None],
    until: Callable[[], bool],
) -> Generator[Any, Any, T]:
    """Run `coro` step by step in the calling task, charging each step by `clock`, until
    `until()` says so: from then on `coro` runs on without this frame in between."""
    send: Any = None
    throw: BaseException | None = None
    while True:
        if throw is None and send is None and until():
            return (yield from coro)
        started = clock()
        try:
            yielded = coro.send(send) if throw is None else coro.throw(throw)
        except StopIteration as done:
            charge(clock() - started)
            return done.value
        except BaseException:
            charge(clock() - started)
            raise
        charge(clock() - started)
        try:
            send, throw = (yield yielded), None
        except BaseException as err:  # cancellation and the like go on into `coro`
            send, throw = None, err


async def metered(
    coro: Coroutine[Any, Any, T],
    clock: Clock,
    charge: Callable[[float], None],
    until: Callable[[], bool] = _never,
) -> T:
    """Await `coro`, charging the loop time of each of its steps (work it hands to threads
    or other tasks is not counted: it does not hold the loop) until `until()` is true.
    The gateway stops once the answer has started: what is left of a stream is passing
    the engine's bytes on, and timing each of its steps would cost the token path."""
    return await _drive(coro, clock, charge, until)
