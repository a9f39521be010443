"""Stored responses in a PostgreSQL server: one store for gateway replicas on several hosts.

The SQLite store's tables and statements (`records.SQL_*`, `?` turned into psycopg's `%s`)
and its row codec, over psycopg 3's async connection pool, so no call blocks the event
loop. Nothing connects before `start` (or the first call). The schema is then created if
missing, in one transaction that first takes an advisory lock: `CREATE TABLE IF NOT EXISTS`
alone can fail when several replicas run it at once (a duplicate row in the catalog).

`uri` is libpq's (`postgresql://user@host:5432/db?sslmode=require`): what it leaves out
comes from libpq's environment (PGPASSWORD, PGSSLMODE, ~/.pgpass ...), so the password
can be a Kubernetes Secret exposed as PGPASSWORD rather than part of the spec.
"""

from __future__ import annotations

import asyncio
import time

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from tierline.deployments.responses.records import (
    SQL_DELETE,
    SQL_GET,
    SQL_PURGE,
    SQL_PUT,
    SQL_SCHEMA,
    Clock,
    PurgeSchedule,
    StoredResponse,
    record_row,
    row_record,
)

__all__ = ["SCHEMA_LOCK", "PostgresResponseStore", "create_schema", "pg_sql"]

SCHEMA_LOCK = int.from_bytes(b"tierline", "big")
"""The advisory lock (a bigint) held while the schema is created."""
CONNECT_TIMEOUT_S = 30.0
"""How long `start` (and a call waiting for a free connection) waits before it fails."""


def pg_sql(statement: str) -> str:
    """A `records.SQL_*` statement with psycopg's placeholders (they hold no other `?`)."""
    return statement.replace("?", "%s")


PUT, GET, DELETE, PURGE = (pg_sql(s) for s in (SQL_PUT, SQL_GET, SQL_DELETE, SQL_PURGE))


async def create_schema(conn: AsyncConnection) -> None:
    """The tables, if missing, in one transaction serialised by `SCHEMA_LOCK`."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        for statement in SQL_SCHEMA:
            await conn.execute(statement)


async def why_unreachable(uri: str) -> str:
    """libpq's reason for not connecting (the pool only says it timed out)."""
    try:
        conn = await AsyncConnection.connect(uri, connect_timeout=5)
    except psycopg.Error as err:
        return str(err).strip()
    await conn.close()
    return "it answers now"


class PostgresResponseStore:
    """A `ResponseStore` in a PostgreSQL database, shared by every gateway replica that
    names it. Each call takes a pooled connection (at most `max_connections` per store,
    checked before use so a restarted server costs no failed request) and runs one
    transaction; expired rows are purged on a write at most once a minute per store."""

    def __init__(
        self,
        uri: str,
        clock: Clock = time.time,
        max_connections: int = 4,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.uri = uri
        self._clock = clock
        self._max_connections = max_connections
        self._timeout_s = connect_timeout_s
        self._pool: AsyncConnectionPool | None = None
        self._opening = asyncio.Lock()
        self._purge = PurgeSchedule()

    async def _ready(self) -> AsyncConnectionPool:
        if self._pool is not None:
            return self._pool
        async with self._opening:
            if self._pool is None:
                pool = AsyncConnectionPool(
                    self.uri,
                    min_size=1,
                    max_size=self._max_connections,
                    open=False,
                    check=AsyncConnectionPool.check_connection,
                    timeout=self._timeout_s,
                    name="tierline-responses",
                )
                try:
                    await pool.open(wait=True, timeout=self._timeout_s)
                    async with pool.connection() as conn:
                        await create_schema(conn)
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

    async def start(self) -> None:
        await self._ready()

    async def close(self) -> None:
        async with self._opening:
            if self._pool is not None:
                await self._pool.close()
                self._pool = None

    async def put(self, record: StoredResponse) -> None:
        now = self._clock()
        purge = self._purge.due(now)
        pool = await self._ready()
        async with pool.connection() as conn:
            if purge:
                await conn.execute(PURGE, (now,))
            await conn.execute(PUT, record_row(record))

    async def get(self, tenant: str, response_id: str) -> StoredResponse | None:
        now = self._clock()
        pool = await self._ready()
        async with pool.connection() as conn:
            cursor = await conn.execute(GET, (response_id, tenant, now))
            row = await cursor.fetchone()
        return None if row is None else row_record(row)

    async def delete(self, tenant: str, response_id: str) -> bool:
        now = self._clock()
        pool = await self._ready()
        async with pool.connection() as conn:
            cursor = await conn.execute(DELETE, (response_id, tenant, now))
            return cursor.rowcount > 0
