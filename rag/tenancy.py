"""Which tenant owns a collection: the owner is part of the collection's name in the store.

A collection `docs` of tenant `acme` is stored as `tl_61636d65_docs`: `tl_`, the tenant's
UTF-8 bytes in hex, `_`, the name the tenant sees. The mapping is reversible without a
registry, so names may repeat across tenants, an operator listing can say who owns what,
and on a shared Milvus server tierline touches only collections of this shape.
Collections made before tenancy (no prefix) are not served unless `rag.legacy_tenant`
adopts them (`RagCore.start`).
"""

from __future__ import annotations

import re

from tierline.rag.records import RagError

PREFIX = "tl_"
MAX_TENANT_BYTES = 90  # 180 hex characters + prefix + a 63-character name < Milvus's 255
_PHYSICAL = re.compile(r"^tl_((?:[0-9a-f]{2})+)_([a-z][a-z0-9_]{0,62})$")


def physical_name(tenant: str, name: str) -> str:
    raw = tenant.encode()
    if not raw or len(raw) > MAX_TENANT_BYTES:
        raise RagError(
            400,
            f"tenant names used with RAG must have 1 to {MAX_TENANT_BYTES} bytes",
            code="invalid_tenant",
        )
    return f"{PREFIX}{raw.hex()}_{name}"


def owner_of(physical: str) -> tuple[str, str] | None:
    """(tenant, name) of a tierline collection; None for any other collection."""
    m = _PHYSICAL.match(physical)
    if m is None:
        return None
    try:
        return bytes.fromhex(m.group(1)).decode(), m.group(2)
    except UnicodeDecodeError:
        return None
