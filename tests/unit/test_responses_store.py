"""Stored responses: CRUD, tenancy, expiry and purging on every backend, and one database
shared by two stores (as two gateway replicas share it): a SQLite file, and a real
PostgreSQL server (tests/unit/pg_server.py)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psycopg
import pytest
from tierline.cluster.spec import ClusterSpec, ResponsesSpec
from tierline.deployments.gateway.responses.store import (
    MemoryResponseStore,
    ResponseStore,
    SqliteResponseStore,
    StoredResponse,
    open_store,
    sqlite_path,
    with_absolute_store,
)
from tierline.deployments.gateway.responses.store_pg import PostgresResponseStore

from tests.unit.pg_server import new_database, running_server


@pytest.fixture(scope="module")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(tmp_path_factory) as uri:
        yield uri


@pytest.fixture
def pg_uri(pg_server: str) -> str:
    return new_database(pg_server)


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


class Backend(Protocol):
    def store(self, clock: Callable[[], float]) -> ResponseStore:
        """A new store on this backend's database (another gateway replica's)."""
        ...

    def ids(self) -> list[str]:
        """The ids in the responses table, read beside the stores."""
        ...


@dataclass
class SqliteBackend:
    path: Path

    def store(self, clock: Callable[[], float]) -> ResponseStore:
        return SqliteResponseStore(self.path, clock)

    def ids(self) -> list[str]:
        with sqlite3.connect(self.path) as db:
            return sorted(r[0] for r in db.execute("SELECT id FROM responses"))


@dataclass
class PostgresBackend:
    uri: str

    def store(self, clock: Callable[[], float]) -> ResponseStore:
        return PostgresResponseStore(self.uri, clock)

    def ids(self) -> list[str]:
        with psycopg.connect(self.uri) as db:
            return sorted(r[0] for r in db.execute("SELECT id FROM responses"))


class MemoryBackend:
    """One process's store: nothing is shared, so only the CRUD test takes it."""

    def store(self, clock: Callable[[], float]) -> ResponseStore:
        return MemoryResponseStore(clock)

    def ids(self) -> list[str]:
        raise NotImplementedError


SHARED = ["sqlite", "postgres"]


@pytest.fixture
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    kind: str = request.param
    if kind == "sqlite":
        return SqliteBackend(tmp_path / "deep" / "r.db")
    if kind == "postgres":
        return PostgresBackend(request.getfixturevalue("pg_uri"))
    return MemoryBackend()


@pytest.mark.parametrize("backend", [*SHARED, "memory"], indirect=True)
def test_crud_tenancy_and_expiry(backend: Backend) -> None:
    clock = Clock()
    store = backend.store(clock)

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


@pytest.mark.parametrize("backend", SHARED, indirect=True)
def test_two_stores_share_one_database(backend: Backend) -> None:
    """Two gateway replicas: each sees the other's writes and deletes, also when both
    write at once; neither needs `start` first (the first call opens the store)."""
    one, two = backend.store(Clock()), backend.store(Clock())

    async def go() -> None:
        await one.put(record("resp_x"))
        assert await two.get("a", "resp_x") == record("resp_x")
        assert await two.get("b", "resp_x") is None
        assert await two.delete("a", "resp_x")
        assert await one.get("a", "resp_x") is None
        await asyncio.gather(
            *(one.put(record(f"r{i}")) for i in range(20)),
            *(two.put(record(f"s{i}")) for i in range(20)),
        )
        found = await asyncio.gather(
            *(one.get("a", f"s{i}") for i in range(20)),
            *(two.get("a", f"r{i}") for i in range(20)),
        )
        assert all(f is not None for f in found)
        await one.close()
        await two.close()

    asyncio.run(go())
    assert len(backend.ids()) == 40


def test_sqlite_is_wal(tmp_path: Path) -> None:
    path = tmp_path / "r.db"

    async def go() -> None:
        store = SqliteResponseStore(path, Clock())
        await store.start()
        await store.close()

    asyncio.run(go())
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("backend", SHARED, indirect=True)
def test_expired_rows_are_purged_on_write(backend: Backend) -> None:
    clock = Clock()
    store = backend.store(clock)

    async def go() -> None:
        await store.put(record("old", expires=1500.0))
        clock.now = 5000.0
        await store.put(record("new", expires=9000.0))
        await store.close()

    asyncio.run(go())
    assert backend.ids() == ["new"]


def test_store_uri_forms(tmp_path: Path) -> None:
    assert sqlite_path("sqlite:///var/x.db") == "var/x.db"
    assert sqlite_path("sqlite:////abs/x.db") == "/abs/x.db"
    assert isinstance(
        open_store(ResponsesSpec(store_uri=str(tmp_path / "a.db"))), SqliteResponseStore
    )
    for uri in ("postgresql://u@db:5432/tierline", "postgres://db/tierline?sslmode=require"):
        store = open_store(ResponsesSpec(store_uri=uri))  # connects on start, not here
        assert isinstance(store, PostgresResponseStore) and store.uri == uri
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
