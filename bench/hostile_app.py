"""The gateway `make bench-hostile` measures, in this process: the real gateway app
(`create_app`: middleware, edge, loop share, quota, RAG routes) over an engine that answers
after a fixed delay and spends no CPU, an in-memory RAG store and a hashing embedder, so
every CPU second the bench sees is the gateway's own. (The fake engine and embedder are
the unit tests' own, `tests.unit.fakes` and `tests.unit.rag_fakes`: the bench runs from the
repository root, as `make bench-hostile` does.)"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncGenerator
from typing import Any, NamedTuple

SPEC = """
tiers:
  - name: small
    model_source: org/small
    max_context_tokens: 32768
    max_queued_requests: -1
    capabilities: {tools: true, structured_output: true}
gateway:
  tenants:
    - {name: normal, tokens_per_min: 1000000000}
    - {name: hostile, tokens_per_min: 1000000000}
rag:
  enabled: true
"""
KEYS = {"normal": "sk-normal", "hostile": "sk-hostile"}


class Gateway(NamedTuple):
    app: Any
    rag_core: Any
    ledger: Any
    """The quota ledger: what each tenant has been charged."""
    share: Any
    """The loop share, keeping the raw CPU seconds each tenant's requests took
    (`cpu_s`: their loop steps and their threads' work, unweighted)."""


def build_app(engine_delay_s: float) -> Gateway:
    """The gateway app and its RAG core (started and seeded by `seed`)."""
    from tierline.cluster.specfile import load_spec_text
    from tierline.deployments.gateway import GatewayCore, create_app
    from tierline.deployments.gateway.engines.engine_client import EngineItem, Method
    from tierline.deployments.gateway.pipeline.auth import KeyStore, hash_key
    from tierline.deployments.gateway.pipeline.loop_share import LoopShare
    from tierline.deployments.gateway.pipeline.tokens import EstimatingCounter
    from tierline.deployments.gateway.quota.service import LocalQuota, ledger_for
    from tierline.deployments.gateway.rag_routes import InProcessRagClient
    from tierline.rag.service import RagCore, RagSettings
    from tierline.rag.store import MemoryChunkStore

    from tests.unit.fakes import FakeEngine
    from tests.unit.rag_fakes import DIM, HashEmbedder, word_offsets

    class DelayedEngine(FakeEngine):
        """The fake engine, answering after a fixed delay (no CPU spent meanwhile)."""

        async def generate(
            self, method: Method, body: dict[str, Any]
        ) -> AsyncGenerator[EngineItem, None]:
            await asyncio.sleep(engine_delay_s)
            async for item in super().generate(method, body):
                yield item

    class CountedShare(LoopShare):
        """The gateway's loop share, also adding up each tenant's raw CPU seconds."""

        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self.cpu_s: Counter[str] = Counter()

        def charge(self, tenant: str, step_s: float) -> float:
            self.cpu_s[tenant] += step_s
            return super().charge(tenant, step_s)

        def charge_work(self, tenant: str, cpu_s: float, local: bool = True) -> float:
            self.cpu_s[tenant] += cpu_s
            return super().charge_work(tenant, cpu_s, local)

    spec = load_spec_text(SPEC)
    ledger = ledger_for(spec.gateway)
    quota = LocalQuota(ledger, time.monotonic)
    core = GatewayCore(
        spec, {"small": DelayedEngine("small")}, {"small": EstimatingCounter()}, quota
    )
    embedder = HashEmbedder()
    settings = RagSettings(dim=DIM, chunk_tokens=50, chunk_overlap_tokens=5)
    rag_core = RagCore(settings, MemoryChunkStore(), embedder, word_offsets)
    keys = KeyStore({hash_key(k): t for t, k in KEYS.items()})
    share = CountedShare(spec.gateway.loop_share, time.monotonic, time.thread_time)
    rag = InProcessRagClient(rag_core, embedder, "hash-embedder")
    return Gateway(create_app(core, keys, rag, loop_share=share), rag_core, ledger, share)
