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
The decisions are pure functions of `TenantUse`; `LoopShare` keeps the state of one
replica and reads the clock.
"""

from __future__ import annotations

import math
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
    "TenantUse",
    "charged",
    "decayed",
    "heaviest_other",
    "metered",
    "refusal",
    "retry_after_s",
    "step_cost",
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


def charged(use: TenantUse, cost_s: float, now: float, window_s: float) -> TenantUse:
    """`use` with `cost_s` of (weighted) loop time added at `now`."""
    return TenantUse(decayed(use, now, window_s) + max(0.0, cost_s), now, use.last_seen)


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

    def charge(self, tenant: str, step_s: float) -> None:
        """Charge `tenant` one step of `step_s` its request took on the loop."""
        use = self.uses.get(tenant)
        if use is not None:
            spec = self.spec
            cost = step_cost(step_s, spec.long_step_s, spec.window_s)
            self.uses[tenant] = charged(use, cost, self.clock(), spec.window_s)

    def charge_work(self, tenant: str, cpu_s: float) -> None:
        """Charge `tenant` `cpu_s` of CPU its request's work took in worker threads (here
        or in the RAG replica: `tierline.rag.work`). Charged as it is, not weighted like a
        long step: a thread gives the loop the GIL back every few milliseconds."""
        use = self.uses.get(tenant)
        if use is not None:
            window = self.spec.window_s
            self.uses[tenant] = charged(use, min(cpu_s, window), self.clock(), window)

    def _forget(self, now: float) -> None:
        """Drop tenants idle for many windows whose use has decayed to nothing."""
        if len(self.uses) < 64:
            return
        horizon = 20 * self.spec.window_s
        for t, u in list(self.uses.items()):
            if now - u.last_seen > horizon and now - u.at > horizon:
                del self.uses[t]


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
