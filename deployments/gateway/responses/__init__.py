"""The Responses API (`/v1/responses`) over the gateway's chat-completions path.

- `body`: the request body (pydantic) and its translation to a chat-completions body;
- `output`: a chat completion (whole or streamed) translated back into a Response;
- `store`, `store_pg`, `records`: stored responses and their conversations (`ResponseStore`:
  SQLite by default, PostgreSQL for gateway replicas on several hosts, memory);
- `affinity`: the pure rule that keeps a conversation on the tier that served it;
- `routes`: the FastAPI router the gateway includes.
"""

from tierline.deployments.gateway.responses.affinity import AFFINITY_KEPT, Affinity, sticky_decision
from tierline.deployments.gateway.responses.store import (
    MemoryResponseStore,
    ResponseStore,
    SqliteResponseStore,
    StoredResponse,
    open_store,
)

__all__ = [
    "AFFINITY_KEPT",
    "Affinity",
    "MemoryResponseStore",
    "ResponseStore",
    "SqliteResponseStore",
    "StoredResponse",
    "open_store",
    "sticky_decision",
]
