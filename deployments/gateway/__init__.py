"""The gateway: one OpenAI-compatible HTTP surface over every tier.

Its rooms: `http` and `core` (the app and what it does per request), `pipeline/` (from the
client's bytes to an admitted, routed request, and the answer on its way out),
`engines/` (how a tier is called: the relay, the handle path, external endpoints,
replica choice, failover, the tier board), `quota/`, `observe/` (metrics),
`responses/` (the Responses API), `rag_routes` and `embeddings` (their HTTP routes).

A request flows through the gateway once, each concern in its own module:

1. the cheap checks (`pipeline.plan.scope`): limits, the model, the tenant's tiers;
2. admission at the edge (`pipeline.edge`, `engines.board.TierBoard`): a request no tier
   can take now is refused with 503 and Retry-After before it is tokenised or scored;
3. the plan (`pipeline.plan.RequestPlan`): the prompt counted once per candidate tier,
   off the event loop, alongside the learned scorer's quality call;
4. the route (`pipeline.plan.decide_route`, a pure call), the tier's slot, the tenant's
   quota;
5. the engine call with retries and failover (`engines.failover.Failover`), over the
   relay to the chosen engine replica's own vLLM app (`engines.relay`), then the cascade
   (`pipeline.cascade.escalate`) for an unsure whole answer;
6. the typed answer (`pipeline.answer`), encoded once by the route: SSE for streams (the
   engine's bytes passed on, the usage read once, the stream cut at the request's
   deadline; `pipeline.streams`).

A grounded RAG chat is admitted (drain, cheap checks, the tenant's quota) before its
retrieval runs, and reserves its final prompt once it is known (`QuotaLedger.resize`).

The board is kept current by the loops in `engines.watch` (health probes, Serve's
replicas).

`create_app` builds the FastAPI app from a `GatewayCore`; the Ray Serve deployment in
`deployments.app` only wires real engine handles into it, so everything in this package
runs in unit tests without Ray.
"""

from tierline.deployments.gateway.core import GatewayCore, Grounder
from tierline.deployments.gateway.http import create_app
from tierline.deployments.gateway.pipeline.plan import (
    REASON_HEADER,
    RETRY_AFTER_S,
    TIER_HEADER,
    rules_policy,
)

__all__ = [
    "REASON_HEADER",
    "RETRY_AFTER_S",
    "TIER_HEADER",
    "GatewayCore",
    "Grounder",
    "create_app",
    "rules_policy",
]
