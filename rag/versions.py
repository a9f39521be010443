"""Versioned chunk ids, so a re-ingested document is either fully old or fully new.

A document's chunks are written under a new version before the old version is removed.
Each chunk id carries its version and the version's chunk count,
`<document>#<version>:<position>/<count>`, so a reader can tell a complete version from
one cut short by a failed or interrupted write. `resolve` keeps, per document, the newest
complete version and names every other chunk as garbage. Ids without a version (written
before versioning, `<document>#<position>`) form version 0, taken as complete.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

_VERSIONED = re.compile(r"#([0-9a-f]{1,16}):(\d+)/(\d+)$")
_last = 0


def new_version() -> int:
    """A version later than every one this process made before (wall clock, ns)."""
    global _last
    _last = max(time.time_ns(), _last + 1)
    return _last


def versioned_id(document_id: str, version: int, position: int, count: int) -> str:
    return f"{document_id}#{version:x}:{position}/{count}"


@dataclass(frozen=True)
class ChunkRef:
    chunk_id: str
    document_id: str


def version_of(chunk_id: str) -> tuple[int, int | None]:
    """(version, chunk count of that version); (0, None) for an unversioned id."""
    m = _VERSIONED.search(chunk_id)
    if m is None:
        return 0, None
    return int(m.group(1), 16), int(m.group(3))


def resolve(refs: Iterable[ChunkRef]) -> tuple[set[str], set[str]]:
    """(chunk ids to serve, chunk ids to delete): the newest complete version per document."""
    by_doc: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    counts: dict[tuple[str, int], int | None] = {}
    for ref in refs:
        version, count = version_of(ref.chunk_id)
        by_doc[ref.document_id][version].append(ref.chunk_id)
        counts[(ref.document_id, version)] = count
    keep: set[str] = set()
    drop: set[str] = set()
    for doc, versions in by_doc.items():
        complete = [
            v
            for v, ids in versions.items()
            if counts[(doc, v)] is None or len(set(ids)) == counts[(doc, v)]
        ]
        chosen = max(complete) if complete else None
        for v, ids in versions.items():
            (keep if v == chosen else drop).update(ids)
    return keep, drop
