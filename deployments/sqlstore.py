"""Connections to the deployment's database, shared by the stores that keep tables there
(the Responses store, `responses.store` / `responses.store_pg`, and the quota snapshots,
`quota_store`): one way to open SQLite, one way to open a PostgreSQL pool.

- `SqliteConnection`: one connection to a SQLite file in WAL mode (every gateway replica
  on the host opens the file at once), opened on first use with the caller's schema, its
  calls serialised by a lock and run in a worker thread, each one transaction.
- `PostgresPool`: psycopg 3's async pool, opened on first use (checked before each use, so
  a restarted server costs no failed call), the caller's schema created under one advisory
  lock; a server that does not answer fails with libpq's reason, naming the spec field.

Nothing connects at construction: `start` (or the first call) does.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout

__all__ = [
    "CONNECT_TIMEOUT_S",
    "POSTGRES_SCHEMES",
    "SCHEMA_LOCK",
    "PostgresPool",
    "SqliteConnection",
    "create_schema",
    "pg_sql",
    "sqlite_path",
    "why_unreachable",
]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
SCHEMA_LOCK = int.from_bytes(b"tierline", "big")
"""The advisory lock (a bigint) held while a schema is created."""
CONNECT_TIMEOUT_S = 30.0
"""How long `start` (and a call waiting for a free connection) waits before it fails."""


def sqlite_path(uri: str) -> str:
    """The file of a SQLite store URI (`sqlite:///path` or a plain path)."""
    return uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else uri


def pg_sql(statement: str) -> str:
    """A portable `?` statement with psycopg's placeholders (it holds no other `?`)."""
    return statement.replace("?", "%s")


class SqliteConnection:
    """One connection to the SQLite file at `path`, WAL mode; `schema` runs once when it
    opens. `run` (blocking) and `call` (in a worker thread) run one unit of work under the
    connection's lock and commit it, or roll it back when it raises."""

    def __init__(self, path: str | Path, schema: Sequence[str]) -> None:
        self.path = Path(path)
        self._schema = tuple(schema)
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            for statement in self._schema:
                db.execute(statement)
            db.commit()
            self._db = db
        return self._db

    def run(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            db = self._connect()
            try:
                out = work(db)
                db.commit()
                return out
            except BaseException:
                db.rollback()
                raise

    async def call(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        return await asyncio.to_thread(self.run, work)

    async def start(self) -> None:
        await self.call(lambda db: None)

    async def close(self) -> None:
        def shut() -> None:
            with self._lock:
                if self._db is not None:
                    self._db.close()
                    self._db = None

        await asyncio.to_thread(shut)


async def create_schema(conn: AsyncConnection, schema: Sequence[str]) -> None:
    """The tables, if missing, in one transaction serialised by `SCHEMA_LOCK`:
    `CREATE TABLE IF NOT EXISTS` alone can fail when several replicas run it at once (a
    duplicate row in the catalog)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        for statement in schema:
            await conn.execute(statement)


async def why_unreachable(uri: str) -> str:
    """libpq's reason for not connecting (the pool only says it timed out)."""
    try:
        conn = await AsyncConnection.connect(uri, connect_timeout=5)
    except psycopg.Error as err:
        return str(err).strip()
    await conn.close()
    return "it answers now"


class PostgresPool:
    """A psycopg pool of at most `max_size` connections to `uri`, opened by `ready` (the
    first caller opens it, the others wait), with `schema` created once it is open. A
    server that does not answer within `connect_timeout_s` fails `ready` with a
    `ConnectionError` that names `gateway.responses.store_uri` and gives libpq's reason."""

    def __init__(
        self,
        uri: str,
        schema: Sequence[str],
        name: str,
        max_size: int = 1,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.uri = uri
        self._schema = tuple(schema)
        self._name = name
        self._max_size = max_size
        self._timeout_s = connect_timeout_s
        self._pool: AsyncConnectionPool | None = None
        self._opening = asyncio.Lock()

    async def ready(self) -> AsyncConnectionPool:
        if self._pool is not None:
            return self._pool
        async with self._opening:
            if self._pool is None:
                pool = AsyncConnectionPool(
                    self.uri,
                    min_size=1,
                    max_size=self._max_size,
                    open=False,
                    check=AsyncConnectionPool.check_connection,
                    timeout=self._timeout_s,
                    name=self._name,
                )
                try:
                    await pool.open(wait=True, timeout=self._timeout_s)
                    async with pool.connection() as conn:
                        await create_schema(conn, self._schema)
                except PoolTimeout as err:
                    await pool.close()
                    raise ConnectionError(
                        "gateway.responses.store_uri: no connection to the PostgreSQL server in "
                        f"{self._timeout_s:g} s: {await why_unreachable(self.uri)}"
                    ) from err
                except BaseException:
                    await pool.close()
                    raise
                self._pool = pool
        return self._pool

    async def close(self) -> None:
        async with self._opening:
            if self._pool is not None:
                await self._pool.close()
                self._pool = None
