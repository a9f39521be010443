"""The gateway's cascade hook: an unsure cheap answer is asked again a tier up.

The decisions are pure (`tierline.router.cascade`); this module runs them. `cascade_for`
says whether a request cascades and which fields ask its engine for log-probabilities;
`escalate` walks up the plan's tiers through `Failover` while the answer stays unsure.
An escalation that fails or finds no room keeps the answer already made.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from tierline.cluster.spec import AUTO_MODEL, ClusterSpec, TierSpec
from tierline.deployments.errors import APIError
from tierline.deployments.gateway.engines.engine_client import Method, usage_of
from tierline.deployments.gateway.engines.failover import Failover
from tierline.deployments.gateway.pipeline.admission import Slot
from tierline.deployments.gateway.pipeline.plan import REASON_HEADER, TIER_HEADER, RequestPlan
from tierline.deployments.gateway.pipeline.schemas import _Generation
from tierline.deployments.gateway.pipeline.streams import finish_whole_answer
from tierline.router.cascade import (
    THRESHOLD_HEADER,
    CascadePolicy,
    CascadeStep,
    cascaded_answer,
    logprob_fields,
    mean_token_logprob,
    next_tier,
    reason_suffix,
    request_threshold,
    should_escalate,
    usage_counts,
)

__all__ = ["Cascade", "cascade_for", "escalate"]

logger = logging.getLogger("ray.serve.tierline.gateway")


@dataclass(frozen=True)
class Cascade:
    """How one request cascades."""

    policy: CascadePolicy
    ask: dict[str, Any]
    """Body fields that ask the engine for the sampled tokens' log-probabilities."""
    keep_logprobs: bool
    """Whether the client asked for log-probabilities itself (they stay in the answer)."""


def cascade_for(
    spec: ClusterSpec, method: Method, body: _Generation, header: str | None
) -> Cascade | None:
    """Non-streaming auto requests with router.cascade on; None for the rest. A bad
    `x-tierline-cascade-threshold` header is a 400."""
    c = spec.router.cascade
    if not c.enabled or body.stream or body.model != AUTO_MODEL:
        return None
    try:
        threshold = request_threshold(header, c.logprob_threshold)
    except ValueError as err:
        raise APIError(400, str(err), param=THRESHOLD_HEADER) from None
    fields, keep = logprob_fields(method, body.model_extra or {})
    return Cascade(CascadePolicy(threshold, c.max_escalations), fields, keep)


async def escalate(
    failover: Failover,
    method: Method,
    body: _Generation,
    tier: TierSpec,
    answer: dict[str, Any],
    headers: dict[str, str],
    slot: Slot,
    plan: RequestPlan,
    cascade: Cascade,
) -> dict[str, Any]:
    """The answer to return: `answer`, or a more capable tier's when it was unsure.
    Sets the answer's tier and `+cascade:...` reason in `headers`; moves `slot`."""
    policy = cascade.policy
    needed = {name: plan.needed(name) for name in plan.tiers}
    steps = [CascadeStep(tier.name, mean_token_logprob(answer), usage_counts(usage_of(answer)))]
    while should_escalate(steps[-1].mean_logprob, len(steps) - 1, policy):
        up = next_tier(steps[-1].tier, failover.board.states(plan.tiers), needed)
        if up is None or not slot.move_to(up):
            break
        try:
            target, item, stream = await failover.first_item(
                method, body, failover.spec.tier(up), headers, slot, allowed=plan.allowed
            )
        except APIError as err:
            logger.warning("cascade to tier %s failed: %s", up, err.message)
            break
        await finish_whole_answer(stream)
        if not isinstance(item, dict):
            break
        answer = item
        steps.append(
            CascadeStep(target.name, mean_token_logprob(item), usage_counts(usage_of(item)))
        )
    headers[TIER_HEADER] = steps[-1].tier
    headers[REASON_HEADER] += reason_suffix(steps)
    return cascaded_answer(answer, steps, policy, cascade.keep_logprobs)
