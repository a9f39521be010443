"""Where each engine replica's relay listens, and the cluster's relay token.

Engine replicas write here (`publish`), gateway replicas read (`read_relays`), through a
small key-value Protocol: Ray's GCS store in a cluster (`GcsKV`), a dict in unit tests.
Which entries are live is decided by the gateway from Serve's own replica list
(`live_relays`, a pure function): an entry whose replica Serve no longer reports is
dropped, and pruned from the store.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Collection, Mapping
from typing import Any, Protocol

from tierline.deployments.engine.relay_server import (
    RELAY_NAMESPACE,
    TOKEN_KEY,
    relay_key,
    relay_prefix,
)

__all__ = [
    "KV",
    "GcsKV",
    "MemoryKV",
    "cluster_token",
    "fetch_relays",
    "live_relays",
    "publish",
    "read_relays",
    "replica_ids",
]


class KV(Protocol):
    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, value: bytes, overwrite: bool = True) -> None: ...

    def keys(self, prefix: str) -> list[str]: ...

    def delete(self, key: str) -> None: ...


class MemoryKV:
    """The store as a dict (unit tests; one process)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def put(self, key: str, value: bytes, overwrite: bool = True) -> None:
        if overwrite or key not in self.data:
            self.data[key] = value

    def keys(self, prefix: str) -> list[str]:
        return [k for k in self.data if k.startswith(prefix)]

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


class GcsKV:
    """Ray's GCS key-value store, namespace `tierline` (blocking calls: run in a thread)."""

    def get(self, key: str) -> bytes | None:
        from ray.experimental import internal_kv

        value: bytes | None = internal_kv._internal_kv_get(key, namespace=RELAY_NAMESPACE)
        return value

    def put(self, key: str, value: bytes, overwrite: bool = True) -> None:
        from ray.experimental import internal_kv

        internal_kv._internal_kv_put(key, value, overwrite=overwrite, namespace=RELAY_NAMESPACE)

    def keys(self, prefix: str) -> list[str]:
        from ray.experimental import internal_kv

        found = internal_kv._internal_kv_list(prefix, namespace=RELAY_NAMESPACE)
        return [k.decode() if isinstance(k, bytes) else str(k) for k in found]

    def delete(self, key: str) -> None:
        from ray.experimental import internal_kv

        internal_kv._internal_kv_del(key, namespace=RELAY_NAMESPACE)


def cluster_token(kv: KV) -> str:
    """The relay token every replica of the cluster shares: created once (first writer
    wins), then read."""
    kv.put(TOKEN_KEY, secrets.token_hex(24).encode(), overwrite=False)
    value = kv.get(TOKEN_KEY)
    if not value:
        raise RuntimeError("the relay token could not be stored in Ray's key-value store")
    return value.decode()


def publish(kv: KV, app: str, deployment: str, replica: str, url: str) -> None:
    kv.put(relay_key(app, deployment, replica), json.dumps({"url": url}).encode())


def read_relays(kv: KV, app: str, deployment: str) -> dict[str, str]:
    """Replica id -> relay URL, as published (live or not)."""
    prefix = relay_prefix(app, deployment)
    out: dict[str, str] = {}
    for key in kv.keys(prefix):
        raw = kv.get(key)
        if not raw:
            continue
        try:
            url = json.loads(raw).get("url")
        except (ValueError, AttributeError):
            continue
        if isinstance(url, str):
            out[key[len(prefix) :]] = url
    return out


def live_relays(
    published: Mapping[str, str], running: Collection[str], known: Collection[str]
) -> tuple[dict[str, str], list[str]]:
    """The relays to send to (replicas Serve reports RUNNING) and the stale entries to
    prune (replicas Serve no longer reports in any state; a starting or stopping replica
    keeps its entry, it is just not sent to)."""
    live = {r: url for r, url in published.items() if r in running}
    stale = [r for r in published if r not in known]
    return live, stale


def replica_ids(details: Mapping[str, Any], app: str, deployment: str) -> tuple[set[str], set[str]]:
    """From Serve's instance details (the controller's plain dict): the deployment's
    RUNNING replica ids, and every replica id it reports in any state."""
    apps = details.get("applications") or {}
    d = ((apps.get(app) or {}).get("deployments") or {}).get(deployment) or {}
    running: set[str] = set()
    known: set[str] = set()
    for r in d.get("replicas") or ():
        rid = str(r.get("replica_id", ""))
        if not rid:
            continue
        known.add(rid)
        state = r.get("state")
        if str(getattr(state, "value", state)) == "RUNNING":
            running.add(rid)
    return running, known


def fetch_relays(
    kv: KV, details: Mapping[str, Any], app: str, deployments: Mapping[str, str]
) -> dict[str, dict[str, str]]:
    """Tier -> live relays (replica id -> URL); prunes entries of replicas that are gone.
    `deployments` maps tier name to its Serve deployment name. Blocking."""
    out: dict[str, dict[str, str]] = {}
    for tier, deployment in deployments.items():
        running, known = replica_ids(details, app, deployment)
        live, stale = live_relays(read_relays(kv, app, deployment), running, known)
        if app in (details.get("applications") or {}):  # never prune on a partial answer
            for replica in stale:
                kv.delete(relay_key(app, deployment, replica))
        out[tier] = live
    return out
