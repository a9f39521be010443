"""API keys: each key maps to a tenant. Keys are kept only as SHA-256 hashes at rest.

Keys are long random tokens, so a fast hash is enough; the plaintext is shown once, when
`tierline keys add` makes it, and never logged.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tierline.cluster.spec import AuthSpec

KEY_PREFIX = "tl-"


@dataclass(frozen=True)
class Principal:
    tenant: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


class KeyStore:
    """Looks a bearer token up among known key hashes."""

    def __init__(self, tenants_by_hash: Mapping[str, str]) -> None:
        self._by_hash = dict(tenants_by_hash)

    def __len__(self) -> int:
        return len(self._by_hash)

    def authenticate(self, authorization: str | None) -> Principal | None:
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        tenant = self._by_hash.get(hash_key(token.strip()))
        return None if tenant is None else Principal(tenant)


def read_keys_file(path: Path) -> dict[str, str]:
    """{sha256: tenant} from a keys file; a missing file has no keys."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read API keys file {path}: {err}") from None
    out = {}
    for i, entry in enumerate(data.get("keys", []) if isinstance(data, dict) else []):
        if not (isinstance(entry, dict) and {"tenant", "sha256"} <= set(entry)):
            raise ValueError(f"{path}: keys[{i}] needs 'tenant' and 'sha256'")
        out[str(entry["sha256"])] = str(entry["tenant"])
    return out


def load_key_store(auth: AuthSpec, environ: Mapping[str, str] | None = None) -> KeyStore:
    """Keys from the spec's keys file and environment variable. Reads at start-up only."""
    env = os.environ if environ is None else environ
    by_hash = read_keys_file(Path(auth.keys_file)) if auth.keys_file else {}
    env_key = env.get(auth.env_var, "").strip()
    if env_key:
        by_hash[hash_key(env_key)] = auth.env_tenant
    return KeyStore(by_hash)


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def add_key(keys_file: Path, tenant: str) -> str:
    """Make a new key for `tenant`, store its hash in `keys_file`, return the plaintext."""
    try:
        data = json.loads(keys_file.read_text())
    except FileNotFoundError:
        data = {"keys": []}
    key = new_key()
    data.setdefault("keys", []).append(
        {"tenant": tenant, "sha256": hash_key(key), "created": int(time.time())}
    )
    _write_private(keys_file, json.dumps(data, indent=2) + "\n")
    return key


def ensure_local_key(folder: Path, keys_file: Path, tenant: str = "local") -> tuple[str, bool]:
    """The local development key in `folder/api-key` (mode 600), made on first use.

    Returns (key, created_now). Its hash goes into `keys_file`.
    """
    key_path = folder / "api-key"
    if key_path.is_file():
        key = key_path.read_text().strip()
        if hash_key(key) in read_keys_file(keys_file):
            return key, False
    key = add_key(keys_file, tenant)
    _write_private(key_path, key + "\n")
    return key, True
