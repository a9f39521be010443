"""Stored responses: CRUD, tenancy, expiry, and one SQLite file shared by two stores (as
two gateway replicas on one host share it)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from tierline.cluster.spec import ClusterSpec, ResponsesSpec
from tierline.deployments.responses.store import (
    MemoryResponseStore,
    ResponseStore,
    SqliteResponseStore,
    StoredResponse,
    open_store,
    sqlite_path,
    with_absolute_store,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(rid: str = "resp_1", tenant: str = "a", expires: float = 2000.0) -> StoredResponse:
    return StoredResponse(
        id=rid,
        tenant=tenant,
        created_at=1000.0,
        expires_at=expires,
        tier="small",
        response={"id": rid, "object": "response", "output": []},
        items=[{"type": "message", "role": "user", "content": "hi"}],
    )


Factory = Callable[[Path, Clock], ResponseStore]
STORES: dict[str, Factory] = {
    "sqlite": lambda tmp, clock: SqliteResponseStore(tmp / "r.db", clock),
    "memory": lambda tmp, clock: MemoryResponseStore(clock),
}


@pytest.mark.parametrize("kind", STORES)
def test_crud_tenancy_and_expiry(kind: str, tmp_path: Path) -> None:
    clock = Clock()
    store = STORES[kind](tmp_path, clock)

    async def go() -> None:
        await store.start()
        await store.put(record())
        got = await store.get("a", "resp_1")
        assert got is not None and got == record()
        assert await store.get("b", "resp_1") is None  # another tenant: as if missing
        assert await store.get("a", "resp_2") is None
        assert await store.delete("b", "resp_1") is False
        assert await store.get("a", "resp_1") is not None
        assert await store.delete("a", "resp_1") is True
        assert await store.delete("a", "resp_1") is False
        assert await store.get("a", "resp_1") is None
        await store.put(record("resp_3"))
        clock.now = 2000.0  # expired
        assert await store.get("a", "resp_3") is None
        assert await store.delete("a", "resp_3") is False
        await store.close()

    asyncio.run(go())


def test_sqlite_is_wal_and_shared_between_stores(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "r.db"
    one, two = SqliteResponseStore(path, Clock()), SqliteResponseStore(path, Clock())

    async def go() -> None:
        await one.put(record("resp_x"))
        assert await two.get("a", "resp_x") == record("resp_x")
        assert await two.delete("a", "resp_x")
        assert await one.get("a", "resp_x") is None
        await asyncio.gather(*(one.put(record(f"r{i}")) for i in range(20)))
        await asyncio.gather(*(two.put(record(f"s{i}")) for i in range(20)))
        found = await asyncio.gather(*(one.get("a", f"s{i}") for i in range(20)))
        assert all(f is not None for f in found)
        await one.close()
        await two.close()

    asyncio.run(go())
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sqlite_purges_expired_rows_on_write(tmp_path: Path) -> None:
    clock = Clock()
    store = SqliteResponseStore(tmp_path / "r.db", clock)

    async def go() -> None:
        await store.put(record("old", expires=1500.0))
        clock.now = 5000.0
        await store.put(record("new", expires=9000.0))
        await store.close()

    asyncio.run(go())
    ids = [r[0] for r in sqlite3.connect(tmp_path / "r.db").execute("SELECT id FROM responses")]
    assert ids == ["new"]


def test_store_uri_forms(tmp_path: Path) -> None:
    assert sqlite_path("sqlite:///var/x.db") == "var/x.db"
    assert sqlite_path("sqlite:////abs/x.db") == "/abs/x.db"
    assert isinstance(
        open_store(ResponsesSpec(store_uri=str(tmp_path / "a.db"))), SqliteResponseStore
    )
    with pytest.raises(ValueError, match="PostgreSQL"):
        open_store(ResponsesSpec(store_uri="postgresql://u:p@db/tierline"))
    with pytest.raises(ValueError, match="store_uri"):
        ResponsesSpec(store_uri="redis://x")


def test_relative_store_path_resolves_where_the_graph_is_built(tmp_path: Path) -> None:
    spec = ClusterSpec.model_validate(
        {"tiers": [{"name": "small", "model_source": "org/m", "max_context_tokens": 64}]}
    )
    out = with_absolute_store(spec, tmp_path)
    assert out.gateway.responses.store_uri == str(tmp_path / ".tierline" / "responses.db")
    server = spec.model_copy(
        update={
            "gateway": spec.gateway.model_copy(
                update={"responses": ResponsesSpec(store_uri="postgresql://db/x")}
            )
        }
    )
    assert with_absolute_store(server, tmp_path) is server
