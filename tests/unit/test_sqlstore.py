"""`deployments.sqlstore`: the one way the Responses store and the quota snapshots open
SQLite and PostgreSQL (no Ray; PostgreSQL only as a port nothing listens on)."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from pathlib import Path

import pytest
from tierline.deployments.gateway.quota.store import PostgresQuotaStore, SqliteQuotaStore
from tierline.deployments.gateway.responses.store import SqliteResponseStore
from tierline.deployments.gateway.responses.store_pg import PostgresResponseStore
from tierline.deployments.sqlstore import SqliteConnection, pg_sql, sqlite_path

SCHEMA = ("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)",)


def test_sqlite_work_commits_or_rolls_back_as_one_unit(tmp_path: Path) -> None:
    async def run() -> list[tuple[str, int]]:
        db = SqliteConnection(tmp_path / "sub" / "x.db", SCHEMA)  # the folder is made
        await db.start()
        await db.call(lambda c: c.execute("INSERT INTO t VALUES (?, ?)", ("a", 1)))

        def half_then_fail(c: sqlite3.Connection) -> None:
            c.execute("INSERT INTO t VALUES (?, ?)", ("b", 2))
            c.execute("INSERT INTO t VALUES (?, ?)", ("a", 3))  # duplicate key

        with pytest.raises(sqlite3.IntegrityError):
            await db.call(half_then_fail)
        mode = await db.call(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0])
        assert mode == "wal"
        rows = await db.call(lambda c: c.execute("SELECT k, v FROM t ORDER BY k").fetchall())
        await db.close()
        await db.close()  # idempotent
        return [tuple(r) for r in rows]

    assert asyncio.run(run()) == [("a", 1)]  # "b" rolled back with the failed unit


def test_both_stores_share_one_sqlite_file(tmp_path: Path) -> None:
    """The quota snapshots live in a table of the Responses store's file, each store
    creating only its own tables."""
    path = tmp_path / "responses.db"

    async def run() -> set[str]:
        responses, quota = SqliteResponseStore(path), SqliteQuotaStore(path)
        await responses.start()
        await quota.start()
        await responses.close()
        await quota.close()
        with sqlite3.connect(path) as c:
            return {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    assert {"responses", "quota_snapshots"} <= asyncio.run(run())


def test_uri_helpers() -> None:
    assert sqlite_path("sqlite:///var/x.db") == "var/x.db" and sqlite_path("x.db") == "x.db"
    assert pg_sql("SELECT ? WHERE a = ?") == "SELECT %s WHERE a = %s"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("store", ["responses", "quota"])
def test_an_unreachable_postgres_fails_start_naming_the_field_and_the_reason(store: str) -> None:
    uri = f"postgresql://nobody@127.0.0.1:{_closed_port()}/db?connect_timeout=1"
    pg = (
        PostgresResponseStore(uri, connect_timeout_s=0.5)
        if store == "responses"
        else PostgresQuotaStore(uri, connect_timeout_s=0.5)
    )

    async def run() -> str:
        with pytest.raises(ConnectionError) as err:
            await pg.start()
        await pg.close()  # nothing was kept open
        return str(err.value)

    message = asyncio.run(run())
    assert message.startswith(
        "gateway.responses.store_uri: no connection to the PostgreSQL server in 0.5 s: "
    )
    assert "refused" in message.lower() or "connect" in message.lower()
