"""The tier engine's Serve deployment class: Ray Serve LLM's `LLMServer`, plus a guarantee
that vLLM's processes end with the replica (see `tierline.cluster.reaper`).

Before the engine starts, the replica (1) ends this node's engine processes of its cluster
that no live replica owns (a node Ray restarted may hold some), (2) marks its environment
with its identity, which vLLM's engine core and workers inherit, and (3) starts a watchdog
in its own session that ends exactly those processes once the replica process is gone,
however it went (SIGKILL, a killed raylet, `ray stop --force`).

Once the engine runs, the replica also serves vLLM's own OpenAI app on a port of its node
(`deployments.engine.relay_server`) and publishes where (`deployments.engine.relay_registry`): the
gateway sends generation requests there and relays the answer's bytes.
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
from tierline.deployments.engine.autoscale import RELAY_ACTIVE
from tierline.deployments.engine.relay_registry import GcsKV, cluster_token, publish
from tierline.deployments.engine.relay_server import (
    RelayHandle,
    RelayMiddleware,
    start_relay_server,
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
    """`LLMServer` whose vLLM processes never outlive the replica, and whose engine also
    answers over its own HTTP port (the gateway's relay path)."""

    _guard: Any = None
    _relay: RelayHandle | None = None
    _gate: RelayMiddleware | None = None

    async def start(self) -> None:
        owner = replica_owner()
        if owner is None:
            logger.warning("no /proc here: the engine's processes are not watched")
        else:
            ended = await asyncio.to_thread(NodeReaper(owner.cluster).sweep)
            if ended:
                logger.warning("ended %d orphaned engine process(es) before starting", len(ended))
            os.environ[ENGINE_OWNER_ENV] = owner.mark()
            self._guard = start_guard(owner, DEFAULT_GRACE_S)
        await super().start()
        await self._start_relay()

    async def _start_relay(self) -> None:
        import ray
        from ray import serve

        kv = GcsKV()
        token = await asyncio.to_thread(cluster_token, kv)
        assert self.engine is not None  # started above
        app = await self.engine.build_asgi_app()
        host = ray.util.get_node_ip_address()
        self._gate = RelayMiddleware(app, token, self._load_adapter)
        self._relay = await start_relay_server(self._gate, host)
        ctx = serve.get_replica_context()
        await asyncio.to_thread(
            publish, kv, ctx.app_name, ctx.deployment, ctx.replica_id.unique_id, self._relay.url
        )

    async def __del__(self) -> None:
        """A stopping replica (redeploy, scale-down, shutdown) lets the requests it is
        relaying finish first, like the handle calls Serve waits for, within the same
        window (`graceful_shutdown_timeout_s`), then stops its relay and its engine. The
        gateway stops sending here as soon as Serve no longer reports the replica
        RUNNING."""
        if self._gate is not None:
            window = float(
                self._llm_config.deployment_config.get("graceful_shutdown_timeout_s", 30.0)
            )
            left = await self._gate.drained(window)
            if left:
                logger.warning("stopping with %d relayed request(s) still running", left)
        if self._relay is not None:
            await self._relay.stop()
        await super().__del__()

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's custom autoscaling metric hook: the requests this replica is relaying,
        which Serve's own count misses (`deployments.engine.autoscale`)."""
        return {RELAY_ACTIVE: float(self._gate.active if self._gate is not None else 0)}

    async def _load_adapter(self, adapter: str) -> None:
        """Load a LoRA adapter into this replica's engine (Serve's multiplexing loader:
        cached, least recently used evicted) for a relayed request that names it."""
        if self._llm_config.lora_config is None:
            raise ValueError("this tier serves no adapters")
        disk = await self._load_model(adapter)
        assert self.engine is not None
        await self.engine.resolve_lora(disk)
