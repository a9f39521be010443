"""Tenant-scoped prefix caching: the `cache_salt` each engine request carries.

vLLM's automatic prefix caching shares KV blocks between requests whose prompts start
alike, so a request's time to first token says whether another request already sent the
same prefix: across tenants, a side channel. vLLM folds a request's `cache_salt` into
the hash of its first block, so requests only share cached blocks with requests of the
same salt.

With `gateway.tenant_cache_salt` on (the default) every engine request gets the salt
`tenant_salt(tenant, client_salt)`: a hash of the tenant and of whatever salt the client
sent. A tenant's requests still share their prefixes with each other (one tenant: the
cache works exactly as without salts); a client salt only splits its own tenant's cache
further, and no value a client sends can name another tenant's salt. Off, the client's
`cache_salt` is dropped (`bounds.ENGINE_FIELDS` lets it through only for this) and every
tenant shares one cache.

Where there is one tenant only (authentication off: every request is the anonymous
tenant's) there is no other tenant to hide a prefix from, so a request without a client
salt goes as it came: no salt, and no copy of its body. A client's own salt is still mixed
with the tenant's, as above.
"""

from __future__ import annotations

import hashlib

from tierline.deployments.gateway.pipeline.schemas import _Generation

__all__ = ["salted", "tenant_salt"]

_DOMAIN = b"tierline cache_salt v1\0"


def tenant_salt(tenant: str, client_salt: str | None = None) -> str:
    """The salt of `tenant`'s requests; a client's own salt is mixed in, never taken."""
    digest = hashlib.sha256(_DOMAIN)
    digest.update(tenant.encode())
    digest.update(b"\0")
    digest.update((client_salt or "").encode())
    return digest.hexdigest()[:32]


def salted(body: _Generation, tenant: str, on: bool, one_tenant: bool = False) -> _Generation:
    """`body` as engine tiers get it: its `cache_salt` the tenant's (on), or none (off).
    `one_tenant` (on, and no other tenant can exist): a body without a client salt needs
    none and comes back as it is, not copied. `body` itself is never changed."""
    extra = body.model_extra or {}
    client = extra.get("cache_salt")
    if one_tenant and on and "cache_salt" not in extra:
        return body
    if not on:
        if "cache_salt" not in extra:
            return body
        copy = body.model_copy()
        assert copy.model_extra is not None
        copy.model_extra.pop("cache_salt", None)
        return copy
    copy = body.model_copy()
    assert copy.model_extra is not None
    copy.model_extra["cache_salt"] = tenant_salt(
        tenant, client if isinstance(client, str) else None
    )
    return copy
