"""Quota windows that survive a restart: the ledger's export and import on wall-clock
stamps, the `quota` deployment's load, periodic save and last save (`QuotaService`, run
here without Ray over `MemoryQuotaStore`), and the SQLite snapshot store. The PostgreSQL
store's round trip is in test_responses_store_pg.py, on that module's server."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tierline.cluster.spec import GatewaySpec, QuotaSpec, ResponsesSpec
from tierline.deployments.gateway.quota.service import (
    TOKENS_REASON,
    WINDOW_S,
    QuotaLedger,
    QuotaService,
)
from tierline.deployments.gateway.quota.store import (
    MemoryQuotaStore,
    PostgresQuotaStore,
    QuotaEntry,
    QuotaSnapshot,
    SqliteQuotaStore,
    open_quota_store,
)
from tierline.deployments.gateway.responses.store import SqliteResponseStore, StoredResponse

WALL0 = 1.7e9

# Serve awaits `QuotaService.__del__` on shutdown; the garbage collector only makes the
# coroutine of the services these tests stopped themselves.
pytestmark = pytest.mark.filterwarnings(
    "ignore:coroutine 'QuotaService.__del__' was never awaited:RuntimeWarning"
)


class Clock:
    """A settable clock (monotonic or wall): `now` is what it reads."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ledger(**limits: int) -> QuotaLedger:
    return QuotaLedger({"t": QuotaSpec(**limits)}, QuotaSpec())


def gateway_data(**limits: int) -> dict[str, Any]:
    return GatewaySpec.model_validate({"tenants": [{"name": "t", **limits}]}).model_dump(
        mode="json"
    )


# -- the ledger's export and import ------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(
        st.tuples(st.floats(0, 3), st.integers(1, 300), st.booleans()), min_size=1, max_size=80
    ),
    gap=st.floats(0, 90),
)
def test_a_restored_ledger_never_admits_what_the_old_one_would_refuse(
    events: list[tuple[float, int, bool]], gap: float
) -> None:
    """Over any stream, a ledger restored (on another monotonic clock, `gap` s later) from
    the old one's export refuses every request the old one would refuse at that moment:
    restored entries are stamped at the end of their second, never earlier."""
    old = ledger(requests_per_min=30, tokens_per_min=2000)
    now = 0.0
    for step, tokens, settle in events:
        now += step
        a = old.admit("t", tokens, now)
        if a.ok and settle:
            old.release(a.ticket, tokens // 2, now)
    snap = QuotaSnapshot.from_json(old.export(now, WALL0).to_json())
    new = ledger(requests_per_min=30, tokens_per_min=2000)
    base = 5000.0  # the new process's monotonic clock starts elsewhere
    new.import_(snap, base, WALL0 + gap)
    for tokens in (1, 50, 500, 2000):
        before = old.admit("t", tokens, now + gap)
        after = new.admit("t", tokens, base)
        assert after.ok <= before.ok, (tokens, before, after)
        if before.ok:
            old.release(before.ticket, 0, now + gap)
        if after.ok:
            new.release(after.ticket, 0, base)


def test_export_import_round_trip_on_a_fake_clock() -> None:
    led = ledger(tokens_per_min=1000, requests_per_min=10)
    a = led.admit("t", 300, 10.0)
    led.release(a.ticket, 200, 10.5)
    b = led.admit("t", 400, 30.2)  # still open: its reservation is exported as charged
    snap = led.export(40.0, WALL0 + 40.0)
    assert snap.next_ticket == b.ticket + 1 and snap.saved_at == WALL0 + 40.0
    assert sorted((e.window, e.at, e.amount) for e in snap.entries) == [
        ("requests", WALL0 + 11.0, 1),  # 10.0 lies on a boundary: stamped at the next
        ("requests", WALL0 + 31.0, 1),  # 30.2 ends its second at 31
        ("tokens", WALL0 + 11.0, 200),
        ("tokens", WALL0 + 31.0, 400),
    ]
    assert QuotaSnapshot.from_json(snap.to_json()) == snap

    new = ledger(tokens_per_min=1000, requests_per_min=10)
    assert new.import_(snap, 0.0, WALL0 + 45.0) == 4
    st_ = new._tenants["t"]
    assert st_.tokens_used() == 600 and len(st_.requests) == 2 and st_.in_flight == 0
    assert [t for t, _, _ in st_.tokens] == [-34.0, -14.0]
    assert new.admit("t", 400, 0.0).ok and not new.admit("t", 1, 0.0).ok
    # The new ledger's tickets carry on after the old one's: a ticket a gateway replica
    # still holds from before the restart names no new request.
    c = new.admit("t", 0, 0.0)
    assert c.ok is False or c.ticket > b.ticket
    new.release(b.ticket, 0, 0.0)  # the old ticket: unknown, changes nothing
    assert new._tenants["t"].tokens_used() == 1000


def test_expired_entries_are_dropped_on_import() -> None:
    snap = QuotaSnapshot(
        WALL0,
        7,
        (
            QuotaEntry("t", "tokens", WALL0 - WINDOW_S, 900),  # exactly a window old
            QuotaEntry("t", "tokens", WALL0 - 100.0, 900),
            QuotaEntry("t", "requests", WALL0 - 61.0, 5),
            QuotaEntry("t", "tokens", WALL0 - 59.0, 100),
            QuotaEntry("t", "unknown", WALL0, 1),
        ),
    )
    led = ledger(tokens_per_min=1000)
    assert led.import_(snap, 0.0, WALL0) == 1
    st_ = led._tenants["t"]
    assert st_.tokens_used() == 100 and not st_.requests
    assert led.admit("t", 900, 0.0).ok and not led.admit("t", 1, 0.0).ok
    assert led.admit("t", 100, 1.0).ok  # the restored 100 leaves the window at 1 s


def test_a_snapshot_stays_small_for_a_busy_tenant() -> None:
    """Entries are summed per second: a minute of 6,000 requests is at most ~60 entries a
    window."""
    led = ledger()
    for i in range(6000):
        a = led.admit("t", 3, i * 0.01)
        led.release(a.ticket, 2, i * 0.01)
    snap = led.export(59.999, WALL0)  # the first request is still in the window
    assert len(snap.entries) <= 2 * 61
    assert sum(e.amount for e in snap.entries if e.window == "tokens") == 2 * 6000


def test_export_is_exact_while_threads_use_the_ledger() -> None:
    led = QuotaLedger({}, QuotaSpec(tokens_per_min=10**9))
    stop = threading.Event()
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            while not stop.is_set():
                a = led.admit(f"t{n}", 1, 0.0)
                led.release(a.ticket, 1, 0.0)
        except BaseException as err:
            errors.append(err)

    pool = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in pool:
        t.start()
    try:
        snaps = [led.export(0.0, WALL0) for _ in range(50)]
    finally:
        stop.set()
        for t in pool:
            t.join()
    assert not errors
    for snap in snaps:  # each export is one consistent moment: requests == tokens
        for n in range(4):
            reqs = sum(
                e.amount for e in snap.entries if e.tenant == f"t{n}" and e.window == "requests"
            )
            toks = sum(
                e.amount for e in snap.entries if e.tenant == f"t{n}" and e.window == "tokens"
            )
            assert reqs == toks


# -- the quota deployment across a restart ------------------------------------------------------


def service(store: MemoryQuotaStore, mono: Clock, wall: Clock, **kw: Any) -> QuotaService:
    return QuotaService(gateway_data(tokens_per_min=1000), store, mono, wall, **kw)


def test_a_tenant_at_its_budget_is_still_refused_after_a_restart() -> None:
    store = MemoryQuotaStore()

    async def go() -> None:
        mono, wall = Clock(100.0), Clock(WALL0)
        one = service(store, mono, wall)
        await one.check_health()  # Serve's first health check starts it
        a = one.admit("t", 1000, False)
        assert a.ok
        mono.now += 2.0
        wall.now += 2.0
        one.release(a.ticket, 900)
        assert not one.admit("t", 200, False).ok
        await one.stop()  # Serve's __del__: the last save

        mono2, wall2 = Clock(7.0), Clock(WALL0 + 10.0)  # a new process, 10 s later
        two = service(store, mono2, wall2)
        assert two.admit("t", 200, False).ok  # not started: an empty ledger
        two = service(store, mono2, wall2)
        await two.start()
        refused = two.admit("t", 200, False)
        assert not refused.ok and refused.reason == TOKENS_REASON
        assert 49.0 <= refused.retry_after_s <= 51.0  # the old charge, at its old time
        assert two.admit("t", 100, False).ok
        mono2.now += 51.0
        assert two.admit("t", 900, False).ok  # the restored charge left the window
        await two.stop()

    asyncio.run(go())


def test_the_service_saves_periodically_and_keeps_going_when_a_save_fails() -> None:
    class Flaky(MemoryQuotaStore):
        def __init__(self) -> None:
            super().__init__()
            self.failed = 0
            self.saved = asyncio.Event()

        async def save(self, snapshot: QuotaSnapshot) -> None:
            if self.failed == 0:
                self.failed += 1
                raise OSError("disk full")
            await super().save(snapshot)
            self.saved.set()

    async def go() -> None:
        store = Flaky()
        svc = service(store, Clock(0.0), Clock(WALL0), save_every_s=0.001)
        await svc.start()
        await svc.start()  # idempotent (every health check calls it)
        assert svc.admit("t", 10, False).ok
        await asyncio.wait_for(store.saved.wait(), timeout=30)
        assert store.failed == 1 and store.saves >= 1
        await svc.stop()
        await svc.stop()
        loaded = await store.load()
        assert loaded is not None and sum(e.amount for e in loaded.entries) == 11

    asyncio.run(go())


def test_the_service_opens_no_store_before_start(tmp_path: Path) -> None:
    data = GatewaySpec.model_validate(
        {
            "tenants": [{"name": "t", "tokens_per_min": 5}],
            "responses": {"store_uri": str(tmp_path / "x" / "r.db")},
        }
    ).model_dump(mode="json")
    svc = QuotaService(data)
    assert not (tmp_path / "x").exists()

    async def go() -> None:
        await svc.start()
        assert svc.admit("t", 5, False).ok
        await svc.stop()
        again = QuotaService(data)
        await again.start()
        assert not again.admit("t", 1, False).ok
        await again.stop()

    asyncio.run(go())


# -- the stores ---------------------------------------------------------------------------------


SNAP = QuotaSnapshot(
    WALL0,
    42,
    (QuotaEntry("t", "tokens", WALL0 - 1.0, 500), QuotaEntry("é ☃", "requests", WALL0, 3)),
)


def test_sqlite_store_round_trip_beside_the_responses_table(tmp_path: Path) -> None:
    path = tmp_path / "state" / "responses.db"

    async def go() -> None:
        responses = SqliteResponseStore(path)
        await responses.start()
        store = SqliteQuotaStore(path)
        assert await store.load() is None
        await store.save(SNAP)
        await store.save(SNAP)  # replaces, one row per key
        await store.close()
        again = SqliteQuotaStore(path)
        assert await again.load() == SNAP
        other = SqliteQuotaStore(path, key="other")
        assert await other.load() is None
        await again.close()
        await other.close()
        rec = StoredResponse("r1", "t", WALL0, 4.0e9, "small", {"id": "r1"})
        await responses.put(rec)
        assert await responses.get("t", "r1") == rec
        await responses.close()

    asyncio.run(go())
    with sqlite3.connect(path) as db:
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert db.execute("SELECT COUNT(*) FROM quota_snapshots").fetchone() == (1,)
    assert {"responses", "quota_snapshots"} <= names


def test_memory_store_round_trip() -> None:
    async def go() -> None:
        store = MemoryQuotaStore()
        assert await store.load() is None
        await store.save(SNAP)
        assert await store.load() == SNAP

    asyncio.run(go())


@pytest.mark.parametrize(
    ("uri", "kind"),
    [
        ("x/responses.db", SqliteQuotaStore),
        ("sqlite:////tmp/r.db", SqliteQuotaStore),
        ("postgresql://db/x", PostgresQuotaStore),
        ("postgres://db/x", PostgresQuotaStore),
    ],
)
def test_the_store_is_picked_by_the_responses_store_uri(uri: str, kind: type) -> None:
    assert isinstance(open_quota_store(ResponsesSpec(store_uri=uri)), kind)
