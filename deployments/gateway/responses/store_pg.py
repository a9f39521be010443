"""Stored responses in a PostgreSQL server: one store for gateway replicas on several hosts.

The SQLite store's tables and statements (`records.SQL_*`, `?` turned into psycopg's `%s`)
and its row codec, over psycopg 3's async connection pool (`sqlstore.PostgresPool`), so no
call blocks the event loop. Nothing connects before `start` (or the first call). The
schema is then created if missing, in one transaction that first takes an advisory lock:
`CREATE TABLE IF NOT EXISTS` alone can fail when several replicas run it at once (a
duplicate row in the catalog).

`uri` is libpq's (`postgresql://user@host:5432/db?sslmode=require`): what it leaves out
comes from libpq's environment (PGPASSWORD, PGSSLMODE, ~/.pgpass ...), so the password
can be a Kubernetes Secret exposed as PGPASSWORD rather than part of the spec.
"""

from __future__ import annotations

import time

from tierline.deployments.gateway.responses.records import (
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
from tierline.deployments.sqlstore import CONNECT_TIMEOUT_S, SCHEMA_LOCK, PostgresPool, pg_sql

__all__ = ["CONNECT_TIMEOUT_S", "SCHEMA_LOCK", "PostgresResponseStore", "pg_sql"]

PUT, GET, DELETE, PURGE = (pg_sql(s) for s in (SQL_PUT, SQL_GET, SQL_DELETE, SQL_PURGE))


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
        self._pool = PostgresPool(
            uri, SQL_SCHEMA, "tierline-responses", max_connections, connect_timeout_s
        )
        self._purge = PurgeSchedule()

    async def start(self) -> None:
        await self._pool.ready()

    async def close(self) -> None:
        await self._pool.close()

    async def put(self, record: StoredResponse) -> None:
        now = self._clock()
        purge = self._purge.due(now)
        pool = await self._pool.ready()
        async with pool.connection() as conn:
            if purge:
                await conn.execute(PURGE, (now,))
            await conn.execute(PUT, record_row(record))

    async def get(self, tenant: str, response_id: str) -> StoredResponse | None:
        now = self._clock()
        pool = await self._pool.ready()
        async with pool.connection() as conn:
            cursor = await conn.execute(GET, (response_id, tenant, now))
            row = await cursor.fetchone()
        return None if row is None else row_record(row)

    async def delete(self, tenant: str, response_id: str) -> bool:
        now = self._clock()
        pool = await self._pool.ready()
        async with pool.connection() as conn:
            cursor = await conn.execute(DELETE, (response_id, tenant, now))
            return cursor.rowcount > 0
