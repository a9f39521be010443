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

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from psycopg_pool import AsyncConnectionPool, PoolTimeout
from tierline.cluster.spec import ResponsesSpec
from tierline.deployments.responses.store import POSTGRES_SCHEMES, sqlite_path
from tierline.deployments.responses.store_pg import (
    CONNECT_TIMEOUT_S,
    SCHEMA_LOCK,
    pg_sql,
    why_unreachable,
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
    """A `QuotaSnapshotStore` in a table of the Responses store's SQLite file (WAL mode, as
    that store opens it). Calls run in a worker thread on one connection."""

    def __init__(self, path: str | Path, key: str = LEDGER_KEY) -> None:
        self.path = Path(path)
        self.key = key
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _run(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            if self._db is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute(SQL_SCHEMA)
                db.commit()
                self._db = db
            try:
                out = work(self._db)
                self._db.commit()
                return out
            except BaseException:
                self._db.rollback()
                raise

    async def start(self) -> None:
        await asyncio.to_thread(self._run, lambda db: None)

    async def close(self) -> None:
        def shut() -> None:
            with self._lock:
                if self._db is not None:
                    self._db.close()
                    self._db = None

        await asyncio.to_thread(shut)

    async def save(self, snapshot: QuotaSnapshot) -> None:
        row = (self.key, snapshot.saved_at, snapshot.to_json())
        await asyncio.to_thread(self._run, lambda db: db.execute(SQL_SAVE, row))

    async def load(self) -> QuotaSnapshot | None:
        row = await asyncio.to_thread(
            self._run, lambda db: db.execute(SQL_LOAD, (self.key,)).fetchone()
        )
        return None if row is None else QuotaSnapshot.from_json(row[0])


class PostgresQuotaStore:
    """A `QuotaSnapshotStore` in a table of the Responses store's PostgreSQL database, over
    one pooled connection (checked before use, so a restarted server costs one failed save
    at most). The table is created under the Responses store's advisory lock."""

    def __init__(
        self, uri: str, key: str = LEDGER_KEY, connect_timeout_s: float = CONNECT_TIMEOUT_S
    ) -> None:
        self.uri = uri
        self.key = key
        self._timeout_s = connect_timeout_s
        self._pool: AsyncConnectionPool | None = None
        self._opening = asyncio.Lock()

    async def _ready(self) -> AsyncConnectionPool:
        async with self._opening:
            if self._pool is None:
                pool = AsyncConnectionPool(
                    self.uri,
                    min_size=1,
                    max_size=1,
                    open=False,
                    check=AsyncConnectionPool.check_connection,
                    timeout=self._timeout_s,
                    name="tierline-quota",
                )
                try:
                    await pool.open(wait=True, timeout=self._timeout_s)
                    async with pool.connection() as conn, conn.transaction():
                        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                        await conn.execute(SQL_SCHEMA)
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

    async def save(self, snapshot: QuotaSnapshot) -> None:
        pool = await self._ready()
        async with pool.connection() as conn:
            await conn.execute(pg_sql(SQL_SAVE), (self.key, snapshot.saved_at, snapshot.to_json()))

    async def load(self) -> QuotaSnapshot | None:
        pool = await self._ready()
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
