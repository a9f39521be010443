"""The PostgreSQL store on a real server (tests/unit/pg_server.py): what only a server store
has. The behaviour every store shares (CRUD, tenancy, expiry, purging, two replicas on one
database) is tested on it in test_responses_store.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from tierline.cluster.spec import ResponsesSpec
from tierline.deployments.gateway.quota.store import (
    PostgresQuotaStore,
    QuotaEntry,
    QuotaSnapshot,
    open_quota_store,
)
from tierline.deployments.gateway.responses.store import StoredResponse, open_store
from tierline.deployments.gateway.responses.store_pg import PostgresResponseStore

from tests.unit.pg_server import database_uri, new_database, running_server


@pytest.fixture(scope="module")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(tmp_path_factory) as uri:
        yield uri


@pytest.fixture
def pg_uri(pg_server: str) -> str:
    return new_database(pg_server)


def record(rid: str, tenant: str = "a") -> StoredResponse:
    return StoredResponse(
        id=rid,
        tenant=tenant,
        created_at=1.0e9,
        expires_at=4.0e9,  # the stores here read the real clock
        tier="small",
        response={"id": rid, "object": "response", "output": [{"text": "é ☃ \u0000?"}]},
        items=[{"type": "message", "role": "user", "content": "hi"}],
        replica="gw-1",
    )


def tables(uri: str) -> list[tuple[str, str]]:
    with psycopg.connect(uri) as db:
        rows = db.execute(
            "SELECT tablename, indexname FROM pg_indexes WHERE schemaname = 'public'"
            " ORDER BY indexname"
        ).fetchall()
    return [(t, i) for t, i in rows]


def test_replicas_starting_at_once_create_the_schema_once(pg_uri: str) -> None:
    """Gateway replicas rolled out together all start on an empty database: the advisory
    lock serialises their CREATE ... IF NOT EXISTS, so none fails, and all then work."""
    stores = [PostgresResponseStore(pg_uri, max_connections=2) for _ in range(8)]

    async def go() -> None:
        await asyncio.gather(*(s.start() for s in stores))
        await asyncio.gather(*(s.put(record(f"r{i}")) for i, s in enumerate(stores)))
        for i, s in enumerate(stores):
            assert await stores[-1 - i].get("a", f"r{i}") is not None
            await s.close()
        again = PostgresResponseStore(pg_uri)  # a later start: the schema is there
        await again.start()
        assert await again.get("a", "r0") is not None
        await again.close()

    asyncio.run(go())
    assert tables(pg_uri) == [("responses", "responses_expiry"), ("responses", "responses_pkey")]


def test_open_store_uri_reaches_the_server(pg_uri: str) -> None:
    """A spec's `postgresql://` and `postgres://` URIs (libpq's, here a Unix socket's
    `?host=`) open the same database; a store reopens after `close` on its next call."""
    one = open_store(ResponsesSpec(store_uri=pg_uri))
    two = open_store(ResponsesSpec(store_uri=pg_uri.replace("postgresql://", "postgres://", 1)))
    assert isinstance(one, PostgresResponseStore) and isinstance(two, PostgresResponseStore)

    async def go() -> None:
        await one.put(record("resp_1"))
        assert await two.get("a", "resp_1") == record("resp_1")
        await one.close()
        assert await one.get("a", "resp_1") is not None  # reopened lazily
        await one.close()
        await two.close()

    asyncio.run(go())


def test_password_comes_from_the_environment(
    pg_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spec's URI names no password; libpq takes it from PGPASSWORD (as a Kubernetes
    Secret sets it). A role that must give a password is refused without it."""
    role, name = "tierline_pw", "pw_db"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD 's3cret'").format(sql.Identifier(role))
        )
        admin.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(role)
            )
        )
        (hba,) = admin.execute("SHOW hba_file").fetchone() or ("",)
        rules = Path(hba).read_text()
        Path(hba).write_text(f"local all {role} scram-sha-256\n{rules}")
        admin.execute("SELECT pg_reload_conf()")
    uri = database_uri(pg_server, name).replace("postgresql://postgres:@", f"postgresql://{role}@")
    assert "s3cret" not in uri
    monkeypatch.delenv("PGPASSWORD", raising=False)
    deadline = time.monotonic() + 10
    while True:  # until the server has reloaded its rules
        try:
            psycopg.connect(uri).close()
        except psycopg.OperationalError as err:
            assert "password" in str(err)
            break
        assert time.monotonic() < deadline, "pg_hba.conf reload not seen"
        time.sleep(0.1)

    store = open_store(ResponsesSpec(store_uri=uri))
    monkeypatch.setenv("PGPASSWORD", "s3cret")

    async def go() -> None:
        await store.put(record("resp_pw"))
        assert await store.get("a", "resp_pw") is not None
        await store.close()

    asyncio.run(go())


def test_unreachable_server_fails_start_in_time(tmp_path: Path) -> None:
    """No server behind the URI: `start` (so the gateway's start) fails, not hangs."""
    store = PostgresResponseStore(f"postgresql://u@/db?host={tmp_path}", connect_timeout_s=1.0)

    async def go() -> None:
        with pytest.raises(ConnectionError, match=r"store_uri: .* 1 s: .*No such file"):
            await store.start()
        await store.close()

    asyncio.run(go())


def test_quota_snapshots_round_trip_beside_the_responses(pg_uri: str) -> None:
    """The quota deployment's snapshot store (deployments/gateway/quota/store.py) keeps one row per
    key in its own table of the same database; a save replaces it."""
    snap = QuotaSnapshot(1.7e9, 9, (QuotaEntry("é", "tokens", 1.7e9 - 1.0, 500),))

    async def go() -> None:
        responses = open_store(ResponsesSpec(store_uri=pg_uri))
        await responses.put(record("resp_q"))
        store = open_quota_store(ResponsesSpec(store_uri=pg_uri))
        assert isinstance(store, PostgresQuotaStore)
        assert await store.load() is None
        await store.save(QuotaSnapshot(1.0, 1))
        await store.save(snap)
        await store.close()
        again = PostgresQuotaStore(pg_uri)
        assert await again.load() == snap
        await again.close()
        assert await responses.get("a", "resp_q") is not None
        await responses.close()

    asyncio.run(go())
    with psycopg.connect(pg_uri) as db:
        assert db.execute("SELECT COUNT(*) FROM quota_snapshots").fetchone() == (1,)
