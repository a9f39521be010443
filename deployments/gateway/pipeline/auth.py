"""API keys: each key maps to a tenant. Keys are kept only as SHA-256 hashes at rest.

Keys are long random tokens, so a fast hash is enough; the plaintext is shown once, when
`tierline keys add` makes it, and never logged. An entry may carry `"role": "operator"`:
such a key's `Principal` has `operator=True` (RAG lets operators see every tenant's
collections).

The keys file is re-read when it changes: each replica's `ReloadingKeyStore` looks at the
file's status (inode, size, mtime of the resolved path, so a Kubernetes Secret's symlink
swap counts) at most every `RELOAD_CHECK_S` seconds, before it authenticates. A key added
to the file works, and one removed is refused, within seconds on every replica, with no
restart. A file that no longer parses keeps the keys read last (and logs why).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tierline.cluster.spec import AuthSpec

KEY_PREFIX = "tl-"
ROLES = ("tenant", "operator")
RELOAD_CHECK_S = 2.0
logger = logging.getLogger("ray.serve.tierline.gateway")


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: its tenant, and whether the key has the operator role."""

    tenant: str
    operator: bool = False


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _principal(value: str | Principal) -> Principal:
    return value if isinstance(value, Principal) else Principal(value)


class KeyStore:
    """Looks a bearer token up among known key hashes."""

    def __init__(self, principals_by_hash: Mapping[str, str | Principal]) -> None:
        self._by_hash = {h: _principal(p) for h, p in principals_by_hash.items()}

    def __len__(self) -> int:
        return len(self._by_hash)

    def authenticate(self, authorization: str | None) -> Principal | None:
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self._by_hash.get(hash_key(token.strip()))


FileState = tuple[int, int, int, int] | None


def file_state(path: Path) -> FileState:
    """What changes when the file does: device, inode, size and mtime of the file the path
    resolves to (a Secret mount swaps a symlink to a new file); None when it is missing."""
    try:
        st = os.stat(path)  # follows symlinks
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class ReloadingKeyStore(KeyStore):
    """A `KeyStore` over a keys file that follows the file's changes (see the module doc).

    `fixed` keys (the environment variable's) stay whatever the file says."""

    def __init__(
        self,
        path: Path,
        fixed: Mapping[str, str | Principal] | None = None,
        check_every_s: float = RELOAD_CHECK_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__({})
        self.path = path
        self._fixed = {h: _principal(p) for h, p in (fixed or {}).items()}
        self._every = check_every_s
        self._clock = clock
        self._checked: float | None = None
        self._state: FileState = None
        self._loaded = False

    def load(self) -> ReloadingKeyStore:
        """Read the file now; a malformed file is a ValueError (at start-up)."""
        state = file_state(self.path)
        self._by_hash = {**read_keys_file(self.path), **self._fixed}
        self._state, self._loaded, self._checked = state, True, self._clock()
        return self

    def refresh(self) -> bool:
        """Re-read the file if it changed (checked at most every `check_every_s`). Returns
        whether the keys were replaced."""
        now = self._clock()
        if self._loaded and self._checked is not None and now - self._checked < self._every:
            return False
        self._checked = now
        try:
            state = file_state(self.path)
        except OSError as err:  # e.g. no permission: keep what was read
            logger.warning("keeping the API keys read before: cannot stat %s: %s", self.path, err)
            return False
        if self._loaded and state == self._state:
            return False
        try:
            keys = read_keys_file(self.path)
        except ValueError as err:
            logger.warning("keeping the API keys read before: %s", err)
            self._state = state  # said once per change, not on every request
            return False
        self._by_hash = {**keys, **self._fixed}
        self._state, self._loaded = state, True
        logger.info("API keys file %s read: %d keys", self.path, len(self._by_hash))
        return True

    def __len__(self) -> int:
        self.refresh()
        return super().__len__()

    def authenticate(self, authorization: str | None) -> Principal | None:
        self.refresh()
        return super().authenticate(authorization)


def _entry(path: Path, i: int, entry: Any) -> tuple[str, Principal]:
    if not (isinstance(entry, dict) and {"tenant", "sha256"} <= set(entry)):
        raise ValueError(f"{path}: keys[{i}] needs 'tenant' and 'sha256'")
    role = entry.get("role", "tenant")
    if role not in ROLES:
        raise ValueError(f"{path}: keys[{i}].role is {role!r}; one of {', '.join(ROLES)}")
    return str(entry["sha256"]), Principal(str(entry["tenant"]), role == "operator")


def read_keys_file(path: Path) -> dict[str, Principal]:
    """{sha256: Principal} from a keys file; a missing file has no keys."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read API keys file {path}: {err}") from None
    entries = data.get("keys", []) if isinstance(data, dict) else []
    return dict(_entry(path, i, e) for i, e in enumerate(entries))


def load_key_store(auth: AuthSpec, environ: Mapping[str, str] | None = None) -> KeyStore:
    """Keys from the spec's keys file (followed as it changes) and environment variable.

    The environment variable is read once, here; a malformed keys file fails here."""
    env = os.environ if environ is None else environ
    fixed: dict[str, str | Principal] = {}
    env_key = env.get(auth.env_var, "").strip()
    if env_key:
        fixed[hash_key(env_key)] = auth.env_tenant
    if auth.keys_file:
        return ReloadingKeyStore(Path(auth.keys_file), fixed).load()
    return KeyStore(fixed)


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _read_for_update(keys_file: Path) -> dict[str, Any]:
    try:
        data = json.loads(keys_file.read_text())
    except FileNotFoundError:
        return {"keys": []}
    except ValueError as err:
        raise ValueError(f"cannot read API keys file {keys_file}: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.setdefault("keys", []), list):
        raise ValueError(f"{keys_file} is not a keys file (an object with a 'keys' list)")
    return data


def add_key(keys_file: Path, tenant: str, role: str = "tenant") -> str:
    """Make a new key for `tenant` (role `tenant` or `operator`), store its hash in
    `keys_file`, return the plaintext."""
    if role not in ROLES:
        raise ValueError(f"role {role!r}: one of {', '.join(ROLES)}")
    data = _read_for_update(keys_file)
    key = new_key()
    entry: dict[str, Any] = {"tenant": tenant, "sha256": hash_key(key), "created": int(time.time())}
    if role != "tenant":
        entry["role"] = role
    data["keys"].append(entry)
    _write_private(keys_file, json.dumps(data, indent=2) + "\n")
    return key


def remove_keys(
    keys_file: Path, *, key: str | None = None, sha256_prefix: str | None = None
) -> int:
    """Drop the entries of `key` (the plaintext) or of hashes starting with `sha256_prefix`
    (at least 8 hex digits) from `keys_file`. Returns how many went."""
    if (key is None) == (sha256_prefix is None):
        raise ValueError("give the key or a sha256 prefix, not both")
    if sha256_prefix is not None and len(sha256_prefix) < 8:
        raise ValueError("a sha256 prefix needs at least 8 hex digits")
    data = _read_for_update(keys_file)

    def match(entry: Any) -> bool:
        digest = str(entry.get("sha256", "")) if isinstance(entry, dict) else ""
        if key is not None:
            return digest == hash_key(key)
        return digest.startswith(str(sha256_prefix).lower())

    kept = [e for e in data["keys"] if not match(e)]
    removed = len(data["keys"]) - len(kept)
    if removed:
        data["keys"] = kept
        _write_private(keys_file, json.dumps(data, indent=2) + "\n")
    return removed


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
