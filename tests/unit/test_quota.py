"""The quota ledger over generated request streams: it never admits past a limit, and it
admits again exactly when the rolling window frees room."""

from __future__ import annotations

import sys
import threading

from hypothesis import given, settings
from hypothesis import strategies as st
from tierline.cluster.spec import QuotaSpec
from tierline.deployments.gateway.quota.service import WINDOW_S, QuotaLedger


def ledger(**limits: int) -> QuotaLedger:
    return QuotaLedger({"t": QuotaSpec(**limits)}, QuotaSpec())


@settings(max_examples=300, deadline=None)
@given(
    rpm=st.integers(1, 20),
    tpm=st.integers(50, 2000),
    conc=st.integers(1, 5),
    events=st.lists(
        st.tuples(st.floats(0, 5), st.integers(1, 200), st.booleans(), st.integers(0, 200)),
        min_size=1,
        max_size=200,
    ),
)
def test_limits_hold_over_any_stream(rpm: int, tpm: int, conc: int, events: list) -> None:
    led = ledger(requests_per_min=rpm, tokens_per_min=tpm, max_concurrent=conc)
    now, open_tickets = 0.0, []
    admitted: list[tuple[float, int]] = []  # (time, tokens charged)
    for gap, tokens, finish_one, used in events:
        now += gap
        if finish_one and open_tickets:
            ticket, t0, reserved = open_tickets.pop(0)
            led.release(ticket, used, now)
            admitted[admitted.index((t0, reserved))] = (t0, used)
        a = led.admit("t", tokens, now)
        recent = [(t, n) for t, n in admitted if t > now - WINDOW_S]
        if a.ok:
            open_tickets.append((a.ticket, now, tokens))
            admitted.append((now, tokens))
            recent.append((now, tokens))
            assert len(recent) <= rpm
            assert sum(n for _, n in recent) <= tpm
            assert len(open_tickets) <= conc
        else:
            assert a.retry_after_s > 0
            assert (
                len(open_tickets) >= conc
                or len(recent) >= rpm
                or sum(n for _, n in recent) + tokens > tpm
            )
        assert led.in_flight("t") == len(open_tickets)


def test_retry_after_is_when_room_frees() -> None:
    led = ledger(requests_per_min=2)
    assert led.admit("t", 1, 0.0).ok and led.admit("t", 1, 10.0).ok
    refused = led.admit("t", 1, 20.0)
    assert not refused.ok and refused.reason == "requests per minute"
    assert refused.retry_after_s == WINDOW_S - 20.0
    assert not led.admit("t", 1, 59.9).ok
    assert led.admit("t", 1, 60.0).ok


def test_actual_usage_replaces_the_reservation() -> None:
    led = ledger(tokens_per_min=100)
    a = led.admit("t", 90, 0.0)
    assert not led.admit("t", 20, 1.0).ok
    led.release(a.ticket, 30, 2.0)  # it used 30, not the 90 reserved
    assert led.admit("t", 60, 3.0).ok
    assert not led.admit("t", 101, 3.0).ok  # larger than the whole quota


def test_unlisted_tenants_get_the_default_quota() -> None:
    led = QuotaLedger({"vip": QuotaSpec()}, QuotaSpec(max_concurrent=1))
    assert led.admit("other", 1, 0).ok and not led.admit("other", 1, 0).ok
    assert all(led.admit("vip", 1, 0).ok for _ in range(50))


def _hammer(led: QuotaLedger, tenants: int, threads: int, per_thread: int) -> list[BaseException]:
    """Many threads admit, resize and release at once (as `QuotaService`'s sync methods do
    in Ray Serve's thread pool); the errors they raised."""
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(seed: int) -> None:
        start.wait()
        try:
            for i in range(per_thread):
                tenant = f"t{(seed + i) % tenants}"
                got = led.admit(tenant, 1, 0.0)
                if got.ok:
                    led.resize(got.ticket, 1, 0.0)
                    if i % 3:
                        led.release(got.ticket, 1, 0.0)
        except BaseException as err:  # the test reports every kind
            errors.append(err)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    finally:
        sys.setswitchinterval(old)
    return errors


def test_the_ledger_is_exact_when_many_threads_use_it_at_once() -> None:
    """Before the ledger had a lock: 'deque mutated during iteration' (500s) and tenants
    admitted past their limits under concurrency."""
    tpm, tenants = 3000, 4
    led = QuotaLedger({}, QuotaSpec(tokens_per_min=tpm))
    errors = _hammer(led, tenants, threads=16, per_thread=1500)
    assert not errors, errors[:3]
    for n in range(tenants):
        st_ = led._tenants[f"t{n}"]
        # Every admission reserved (and was charged) 1 token at time 0: exactly tpm fit.
        assert len(st_.tokens) == tpm and st_.tokens_used() == tpm
        assert st_.in_flight == sum(1 for t in led._open.values() if t == f"t{n}")


# -- on_budget: downgrade ----------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(
    tpm=st.integers(50, 500),
    ceiling=st.one_of(st.none(), st.integers(10, 500)),
    sizes=st.lists(st.integers(1, 120), min_size=1, max_size=60),
)
def test_past_the_budget_a_downgrade_tenant_has_its_own_hard_ceiling(
    tpm: int, ceiling: int | None, sizes: list[int]
) -> None:
    """Within one window: the budget never passes tokens_per_min, the window past it never
    passes downgrade_tokens_per_min (unset: tokens_per_min), and a request goes past the
    budget only once the budget refused it."""
    q = QuotaSpec(tokens_per_min=tpm, on_budget="downgrade", downgrade_tokens_per_min=ceiling)
    ledger = QuotaLedger({"t": q}, QuotaSpec())
    limit = ceiling or tpm
    budget = past = 0
    for n in sizes:
        first = ledger.admit("t", n, 0.0)
        if first.ok:
            budget += n
        else:
            assert first.over_budget and budget + n > tpm
            second = ledger.admit("t", n, 0.0, downgrade=True)
            if second.ok:
                past += n
            else:
                assert past + n > limit
        assert budget <= tpm and past <= limit


def test_a_refuse_tenant_is_never_admitted_past_its_budget() -> None:
    ledger = QuotaLedger({"t": QuotaSpec(tokens_per_min=10)}, QuotaSpec())
    assert ledger.admit("t", 10, 0.0).ok
    assert ledger.admit("t", 1, 0.0).over_budget
    assert not ledger.admit("t", 1, 0.0, downgrade=True).ok


def test_a_downgraded_ticket_settles_and_expires_in_its_own_window() -> None:
    q = QuotaSpec(tokens_per_min=10, on_budget="downgrade", downgrade_tokens_per_min=20)
    ledger = QuotaLedger({"t": q}, QuotaSpec())
    assert ledger.admit("t", 10, 0.0).ok
    past = ledger.admit("t", 20, 1.0, downgrade=True)
    assert past.ok and ledger.in_flight("t") == 2
    ledger.release(past.ticket, 5, 2.0)  # used 5 of its 20: 15 free past the budget
    assert ledger.admit("t", 15, 3.0, downgrade=True).ok
    assert not ledger.admit("t", 1, 3.0, downgrade=True).ok
    assert ledger.admit("t", 20, 3.0 + WINDOW_S, downgrade=True).ok  # the window moved on
