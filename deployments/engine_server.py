"""The tier engine's Serve deployment class: Ray Serve LLM's `LLMServer`, plus a guarantee
that vLLM's processes end with the replica (see `tierline.cluster.reaper`).

Before the engine starts, the replica (1) ends this node's engine processes of its cluster
that no live replica owns (a node Ray restarted may hold some), (2) marks its environment
with its identity, which vLLM's engine core and workers inherit, and (3) starts a watchdog
in its own session that ends exactly those processes once the replica process is gone,
however it went (SIGKILL, a killed raylet, `ray stop --force`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from ray.serve.llm.deployment import LLMServer
from tierline.cluster.reaper import (
    DEFAULT_GRACE_S,
    ENGINE_OWNER_ENV,
    EngineOwner,
    NodeReaper,
    ProcFs,
    start_guard,
)

__all__ = ["TierLLMServer", "replica_owner"]

logger = logging.getLogger("ray.serve.tierline.engine")


def replica_owner() -> EngineOwner | None:
    """This replica's identity: its cluster (GCS address), process and Serve replica id;
    None without a readable /proc (not Linux), where nothing can be marked or watched."""
    import ray
    from ray import serve

    pid = os.getpid()
    ticks = ProcFs().start_ticks(pid)
    if ticks is None:
        return None
    return EngineOwner(
        cluster=str(ray.get_runtime_context().gcs_address),
        pid=pid,
        start_ticks=ticks,
        replica=serve.get_replica_context().replica_id.unique_id,
    )


class TierLLMServer(LLMServer):
    """`LLMServer` whose vLLM processes never outlive the replica."""

    _guard: Any = None

    async def start(self) -> None:
        owner = replica_owner()
        if owner is None:
            logger.warning("no /proc here: the engine's processes are not watched")
            await super().start()
            return
        ended = await asyncio.to_thread(NodeReaper(owner.cluster).sweep)
        if ended:
            logger.warning("ended %d orphaned engine process(es) before starting", len(ended))
        os.environ[ENGINE_OWNER_ENV] = owner.mark()
        self._guard = start_guard(owner, DEFAULT_GRACE_S)
        await super().start()
