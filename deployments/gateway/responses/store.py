"""Stored responses: a small Protocol, an embedded SQLite store and an in-memory one.

A stored response keeps the Response object and the conversation that rebuilds it (the
input items of every turn so far and this turn's output items), with the tier that
served it and the tenant that owns it. Every read and delete is by tenant and id: another
tenant's response is indistinguishable from a missing one.

Why SQLite by default: embedded (no server for a local run), durable, and one file that
every gateway replica on the host opens at once (WAL mode: readers never block the one
writer; each turn is one small insert). Gateway replicas on several hosts need a
database server: `store_pg.PostgresResponseStore` runs the same statements on PostgreSQL
(`records`: the portable SQL, the row codec and the purge schedule both stores share).
`open_store` picks the store from the URI.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Protocol

from tierline.cluster.spec import ClusterSpec, ResponsesSpec
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
from tierline.deployments.gateway.responses.store_pg import PostgresResponseStore
from tierline.deployments.sqlstore import POSTGRES_SCHEMES, SqliteConnection, sqlite_path

__all__ = [
    "POSTGRES_SCHEMES",
    "MemoryResponseStore",
    "PurgeSchedule",
    "ResponseStore",
    "SqliteResponseStore",
    "StoredResponse",
    "open_store",
    "sqlite_path",
    "with_absolute_store",
]


class ResponseStore(Protocol):
    async def start(self) -> None:
        """Open connections and create the schema (idempotent)."""
        ...

    async def close(self) -> None: ...

    async def put(self, record: StoredResponse) -> None: ...

    async def get(self, tenant: str, response_id: str) -> StoredResponse | None:
        """The tenant's unexpired response, or None (missing, expired or another's)."""
        ...

    async def delete(self, tenant: str, response_id: str) -> bool:
        """Whether the tenant's response existed (and is now gone)."""
        ...


class MemoryResponseStore:
    """A `ResponseStore` in this process: unit tests, and a gateway built without a spec'd
    store (`create_app` with none). Not shared between processes."""

    def __init__(self, clock: Clock = time.time) -> None:
        self._rows: dict[str, StoredResponse] = {}
        self._clock = clock

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def put(self, record: StoredResponse) -> None:
        self._rows[record.id] = record

    async def get(self, tenant: str, response_id: str) -> StoredResponse | None:
        row = self._rows.get(response_id)
        if row is None or row.tenant != tenant:
            return None
        if row.expires_at <= self._clock():
            del self._rows[response_id]
            return None
        return row

    async def delete(self, tenant: str, response_id: str) -> bool:
        row = self._rows.get(response_id)
        if row is None or row.tenant != tenant or row.expires_at <= self._clock():
            return False
        del self._rows[response_id]
        return True


class SqliteResponseStore:
    """A `ResponseStore` in one SQLite file, WAL mode: every gateway replica on the host
    opens it. Calls run in a worker thread on one connection per store, serialised by a
    lock (`sqlstore.SqliteConnection`); expired rows are purged at most once a minute."""

    def __init__(self, path: str | Path, clock: Clock = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._db = SqliteConnection(self.path, SQL_SCHEMA)
        self._purge = PurgeSchedule()

    async def start(self) -> None:
        await self._db.start()

    async def close(self) -> None:
        await self._db.close()

    async def put(self, record: StoredResponse) -> None:
        now = self._clock()
        purge = self._purge.due(now)
        row = record_row(record)

        def work(db: sqlite3.Connection) -> None:
            if purge:
                db.execute(SQL_PURGE, (now,))
            db.execute(SQL_PUT, row)

        await self._db.call(work)

    async def get(self, tenant: str, response_id: str) -> StoredResponse | None:
        now = self._clock()
        row = await self._db.call(
            lambda db: db.execute(SQL_GET, (response_id, tenant, now)).fetchone()
        )
        return None if row is None else row_record(row)

    async def delete(self, tenant: str, response_id: str) -> bool:
        now = self._clock()
        deleted = await self._db.call(
            lambda db: db.execute(SQL_DELETE, (response_id, tenant, now)).rowcount
        )
        return bool(deleted)


def open_store(spec: ResponsesSpec, clock: Clock = time.time) -> ResponseStore:
    """The store `spec.store_uri` names; nothing is opened until `start` (or first use)."""
    uri = spec.store_uri
    if uri.startswith(POSTGRES_SCHEMES):
        return PostgresResponseStore(uri, clock)
    return SqliteResponseStore(sqlite_path(uri), clock)


def with_absolute_store(spec: ClusterSpec, base: Path) -> ClusterSpec:
    """A relative SQLite store path resolved where the graph is built (the working
    directory of `tierline up` or `serve deploy`), not in each gateway replica."""
    r = spec.gateway.responses
    if "://" in r.store_uri and not r.store_uri.startswith("sqlite:///"):
        return spec
    path = Path(sqlite_path(r.store_uri)).expanduser()
    if path.is_absolute():
        return spec
    responses = r.model_copy(update={"store_uri": str((base / path).resolve())})
    gateway = spec.gateway.model_copy(update={"responses": responses})
    return spec.model_copy(update={"gateway": gateway})
