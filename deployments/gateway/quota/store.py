"""Where the quota ledger's windows outlive a restart: a snapshot and the stores that keep it.

A `QuotaSnapshot` is the ledger's rolling windows as wall-clock-stamped entries
(`QuotaLedger.export` / `import_`): the ledger's own times are monotonic, which mean
nothing in another process. Entries are summed per tenant, window and whole second (each
stamped with the end of its second, so a restored entry never expires earlier than the
original), which keeps a snapshot to at most ~60 entries per tenant and window however
busy the tenant is.

The stores keep one snapshot per key in a table of the deployment's Responses store
(`gateway.responses.store_uri`): a SQLite file or a PostgreSQL server, the backend chosen
from the URI as `responses.store.open_store` does. `MemoryQuotaStore` is for tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tierline.cluster.spec import ResponsesSpec
from tierline.deployments.sqlstore import (
    CONNECT_TIMEOUT_S,
    POSTGRES_SCHEMES,
    PostgresPool,
    SqliteConnection,
    pg_sql,
    sqlite_path,
)

__all__ = [
    "WINDOWS",
    "MemoryQuotaStore",
    "PostgresQuotaStore",
    "QuotaEntry",
    "QuotaSnapshot",
    "QuotaSnapshotStore",
    "SqliteQuotaStore",
    "open_quota_store",
]

WINDOWS = ("requests", "tokens", "downgraded")
"""A tenant's rolling windows: requests per minute (an entry's amount is a count), tokens
per minute, and tokens served past the budget (`on_budget: downgrade`)."""
LEDGER_KEY = "ledger"
"""The key of the one ledger the `quota` deployment holds for every gateway replica."""

SQL_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS quota_snapshots ("
    " key TEXT PRIMARY KEY,"
    " saved_at DOUBLE PRECISION NOT NULL,"
    " body TEXT NOT NULL)"
)
SQL_SAVE = (
    "INSERT INTO quota_snapshots (key, saved_at, body) VALUES (?, ?, ?)"
    " ON CONFLICT (key) DO UPDATE SET saved_at = excluded.saved_at, body = excluded.body"
)
SQL_LOAD = "SELECT body FROM quota_snapshots WHERE key = ?"


@dataclass(frozen=True)
class QuotaEntry:
    tenant: str
    window: str
    """One of `WINDOWS`."""
    at: float
    """Wall-clock seconds (Unix time)."""
    amount: int


@dataclass(frozen=True)
class QuotaSnapshot:
    saved_at: float
    """Wall-clock seconds when it was taken."""
    next_ticket: int
    """The ledger's next ticket: a restored ledger starts there, so a ticket a gateway
    replica still holds from before the restart never names a new request."""
    entries: tuple[QuotaEntry, ...] = ()

    def to_json(self) -> str:
        rows = [[e.tenant, e.window, e.at, e.amount] for e in self.entries]
        return json.dumps({"saved_at": self.saved_at, "next_ticket": self.next_ticket, "e": rows})

    @classmethod
    def from_json(cls, text: str) -> QuotaSnapshot:
        data = json.loads(text)
        entries = tuple(
            QuotaEntry(str(t), str(w), float(at), int(n))
            for t, w, at, n in data["e"]
            if w in WINDOWS
        )
        return cls(float(data["saved_at"]), int(data["next_ticket"]), entries)


class QuotaSnapshotStore(Protocol):
    async def start(self) -> None:
        """Open connections and create the table (idempotent)."""
        ...

    async def close(self) -> None: ...

    async def save(self, snapshot: QuotaSnapshot) -> None:
        """Replace the stored snapshot."""
        ...

    async def load(self) -> QuotaSnapshot | None:
        """The last saved snapshot, or None (never saved)."""
        ...


class MemoryQuotaStore:
    """A `QuotaSnapshotStore` in this process (tests): it outlives the ledgers that use it,
    as a database outlives a replica. Snapshots pass through their JSON form."""

    def __init__(self) -> None:
        self.body: str | None = None
        self.saves = 0

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def save(self, snapshot: QuotaSnapshot) -> None:
        self.body = snapshot.to_json()
        self.saves += 1

    async def load(self) -> QuotaSnapshot | None:
        return None if self.body is None else QuotaSnapshot.from_json(self.body)


class SqliteQuotaStore:
    """A `QuotaSnapshotStore` in a table of the Responses store's SQLite file, opened as
    that store opens it (`sqlstore.SqliteConnection`: WAL mode, calls in a worker thread
    on one connection)."""

    def __init__(self, path: str | Path, key: str = LEDGER_KEY) -> None:
        self.path = Path(path)
        self.key = key
        self._db = SqliteConnection(self.path, (SQL_SCHEMA,))

    async def start(self) -> None:
        await self._db.start()

    async def close(self) -> None:
        await self._db.close()

    async def save(self, snapshot: QuotaSnapshot) -> None:
        row = (self.key, snapshot.saved_at, snapshot.to_json())
        await self._db.call(lambda db: db.execute(SQL_SAVE, row))

    async def load(self) -> QuotaSnapshot | None:
        row = await self._db.call(lambda db: db.execute(SQL_LOAD, (self.key,)).fetchone())
        return None if row is None else QuotaSnapshot.from_json(row[0])


class PostgresQuotaStore:
    """A `QuotaSnapshotStore` in a table of the Responses store's PostgreSQL database, over
    one pooled connection (`sqlstore.PostgresPool`: checked before use, so a restarted
    server costs one failed save at most). The table is created under the Responses
    store's advisory lock."""

    def __init__(
        self, uri: str, key: str = LEDGER_KEY, connect_timeout_s: float = CONNECT_TIMEOUT_S
    ) -> None:
        self.uri = uri
        self.key = key
        self._pool = PostgresPool(uri, (SQL_SCHEMA,), "tierline-quota", 1, connect_timeout_s)

    async def start(self) -> None:
        await self._pool.ready()

    async def close(self) -> None:
        await self._pool.close()

    async def save(self, snapshot: QuotaSnapshot) -> None:
        pool = await self._pool.ready()
        async with pool.connection() as conn:
            await conn.execute(pg_sql(SQL_SAVE), (self.key, snapshot.saved_at, snapshot.to_json()))

    async def load(self) -> QuotaSnapshot | None:
        pool = await self._pool.ready()
        async with pool.connection() as conn:
            cursor = await conn.execute(pg_sql(SQL_LOAD), (self.key,))
            row = await cursor.fetchone()
        return None if row is None else QuotaSnapshot.from_json(row[0])


def open_quota_store(spec: ResponsesSpec, key: str = LEDGER_KEY) -> QuotaSnapshotStore:
    """The snapshot store in the database `spec.store_uri` names; nothing opens before
    `start` (or the first call)."""
    uri = spec.store_uri
    if uri.startswith(POSTGRES_SCHEMES):
        return PostgresQuotaStore(uri, key)
    return SqliteQuotaStore(sqlite_path(uri), key)
