"""A stored response, and how a database keeps it: the SQL every store's server or file
runs (`SQL_*`: types both SQLite and PostgreSQL accept, `?` placeholders; the PostgreSQL
store turns them into `%s`), the row codec, and when a write also purges expired rows.
Shared by `store` (SQLite) and `store_pg` (PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "PURGE_EVERY_S",
    "SQL_DELETE",
    "SQL_GET",
    "SQL_PURGE",
    "SQL_PUT",
    "SQL_SCHEMA",
    "Clock",
    "PurgeSchedule",
    "Row",
    "StoredResponse",
    "record_row",
    "row_record",
]

Clock = Callable[[], float]


@dataclass(frozen=True)
class StoredResponse:
    id: str
    tenant: str
    created_at: float
    expires_at: float
    tier: str
    """The tier that answered (after any failover): the conversation's affinity."""
    response: dict[str, Any]
    items: list[dict[str, Any]] = field(default_factory=list)
    """The conversation: every turn's input items and output items, this turn's last."""
    replica: str | None = None

    def size(self) -> int:
        return len(json.dumps(self.response)) + len(json.dumps(self.items))


SQL_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS responses ("
    " id TEXT PRIMARY KEY,"
    " tenant TEXT NOT NULL,"
    " created_at DOUBLE PRECISION NOT NULL,"
    " expires_at DOUBLE PRECISION NOT NULL,"
    " tier TEXT NOT NULL,"
    " replica TEXT,"
    " response TEXT NOT NULL,"
    " items TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS responses_expiry ON responses (expires_at)",
)
SQL_PUT = (
    "INSERT INTO responses (id, tenant, created_at, expires_at, tier, replica, response, items)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
SQL_GET = (
    "SELECT id, tenant, created_at, expires_at, tier, replica, response, items"
    " FROM responses WHERE id = ? AND tenant = ? AND expires_at > ?"
)
SQL_DELETE = "DELETE FROM responses WHERE id = ? AND tenant = ? AND expires_at > ?"
SQL_PURGE = "DELETE FROM responses WHERE expires_at <= ?"

PURGE_EVERY_S = 60.0

Row = tuple[Any, ...]


def record_row(record: StoredResponse) -> Row:
    """`record` as `SQL_PUT`'s parameters."""
    return (
        record.id,
        record.tenant,
        record.created_at,
        record.expires_at,
        record.tier,
        record.replica,
        json.dumps(record.response),
        json.dumps(record.items),
    )


def row_record(row: Row) -> StoredResponse:
    """A row `SQL_GET` selected, as a `StoredResponse`."""
    rid, owner, created, expires, tier, replica, response, items = row
    return StoredResponse(
        id=rid,
        tenant=owner,
        created_at=created,
        expires_at=expires,
        tier=tier,
        replica=replica,
        response=json.loads(response),
        items=json.loads(items),
    )


class PurgeSchedule:
    """Whether a write also deletes the expired rows: at most once every PURGE_EVERY_S
    per store (each gateway replica purges on its own schedule; any one suffices)."""

    def __init__(self) -> None:
        self._last = 0.0

    def due(self, now: float) -> bool:
        if now - self._last <= PURGE_EVERY_S:
            return False
        self._last = now
        return True
