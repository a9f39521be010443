"""The RAG settings the Helm chart passes as environment variables, read through typed helpers.

- `TIERLINE_MILVUS_TOKEN` (from the Secret named in the chart's `rag.tokenSecret`): the
  Milvus server's token. It never goes into the spec, which the RayService shows to
  anyone who can read it. Read by the RAG replica when it opens the store.
- `TIERLINE_RAG_STORE_RESOURCE` (set when the store is Milvus Lite on the head's volume):
  a Ray custom resource only the pod holding that volume advertises (its
  `rayStartParams.resources`). The RAG deployment asks for a sliver of it, so Ray
  places the replica where the data is. Read where the application graph is built.

Errors name the variable. Both are unset in local runs: nothing changes there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from tierline.cluster.spec import RagSpec
from tierline.rag.store import MilvusChunkStore

MILVUS_TOKEN_ENV = "TIERLINE_MILVUS_TOKEN"
RAG_STORE_RESOURCE_ENV = "TIERLINE_RAG_STORE_RESOURCE"
# A fraction, not the whole unit: a replacement replica may be placed while the old one
# stops (Milvus Lite still has one owner at a time: the old replica closes it first).
STORE_RESOURCE_AMOUNT = 0.01
RESOURCE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$")
RAG_CPUS = 0.5


class RagEnvError(ValueError):
    """A malformed variable; the message names it."""


def milvus_token(spec: RagSpec, environ: Mapping[str, str]) -> str | None:
    """The token for the store client: the spec's `rag.token`, else the variable's value."""
    if spec.token:
        return spec.token
    token = environ.get(MILVUS_TOKEN_ENV, "").strip()
    return token or None


def chunk_store(spec: RagSpec, environ: Mapping[str, str]) -> MilvusChunkStore:
    """The RAG replica's store client (not connected yet: its `start()` does that)."""
    return MilvusChunkStore(
        spec.uri, milvus_token(spec, environ), spec.hnsw_m, spec.hnsw_ef_construction
    )


def store_resource(environ: Mapping[str, str]) -> str | None:
    """The custom resource the RAG replica must be placed on, or None (anywhere)."""
    name = environ.get(RAG_STORE_RESOURCE_ENV, "").strip()
    if not name:
        return None
    if not RESOURCE_NAME.match(name):
        raise RagEnvError(f"{RAG_STORE_RESOURCE_ENV}={name!r} is not a Ray resource name")
    return name


def rag_actor_options(environ: Mapping[str, str]) -> dict[str, Any]:
    """`ray_actor_options` of the RAG (store) deployment."""
    options: dict[str, Any] = {"num_cpus": RAG_CPUS}
    resource = store_resource(environ)
    if resource is not None:
        options["resources"] = {resource: STORE_RESOURCE_AMOUNT}
    return options
