"""The cascade, as pure functions: keep a cheap tier's answer, or escalate to the next tier.

For non-streaming `auto` requests with `router.cascade.enabled`, the gateway asks the
routed tier for its answer with token log-probabilities; when their mean is below
`logprob_threshold` (or the request's `x-tierline-cascade-threshold` header) it asks the
next tier up (healthy, with room for the prompt), at most `max_escalations` times. The
client gets the last answer, whose `usage` counts the tokens of every call, plus a
top-level `cascade` object with each step's tier, mean log-probability and usage, so
metrics and billing can count both tiers.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tierline.router.types import TierState

USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")
THRESHOLD_HEADER = "x-tierline-cascade-threshold"


@dataclass(frozen=True)
class CascadePolicy:
    logprob_threshold: float
    """Escalate when the answer's mean token log-probability is below this."""
    max_escalations: int = 1


@dataclass(frozen=True)
class CascadeStep:
    tier: str
    mean_logprob: float | None
    usage: Mapping[str, int]


def mean_token_logprob(answer: Mapping[str, Any]) -> float | None:
    """Mean log-probability of the generated tokens over all choices; None if none came.

    Chat answers carry `choices[].logprobs.content[].logprob`, text completions
    `choices[].logprobs.token_logprobs[]` (vLLM's formats, the same as OpenAI's)."""
    values: list[float] = []
    for choice in answer.get("choices") or ():
        lp = choice.get("logprobs") if isinstance(choice, Mapping) else None
        if not isinstance(lp, Mapping):
            continue
        if isinstance(lp.get("content"), list):
            raw = [t.get("logprob") for t in lp["content"] if isinstance(t, Mapping)]
        else:
            raw = list(lp.get("token_logprobs") or ())
        values += [float(v) for v in raw if isinstance(v, int | float) and not isinstance(v, bool)]
    finite = [v if math.isfinite(v) else -1e9 for v in values]  # -inf: a surely wrong token
    return sum(finite) / len(finite) if finite else None


def should_escalate(mean_logprob: float | None, escalations: int, policy: CascadePolicy) -> bool:
    """Whether to ask a stronger tier: only with evidence, and within the escalation budget."""
    if escalations >= policy.max_escalations or mean_logprob is None:
        return False
    return mean_logprob < policy.logprob_threshold


def next_tier(current: str, tiers: Sequence[TierState], needed: Mapping[str, int]) -> str | None:
    """The first tier above `current` (tiers cheapest first) that is healthy, not scaled to
    zero, not overloaded, and has context for `needed[tier]` tokens; None if there is none."""
    names = [t.name for t in tiers]
    if current not in names:
        return None
    for t in tiers[names.index(current) + 1 :]:
        if t.healthy and not t.cold and not t.overloaded and needed[t.name] <= t.max_context_tokens:
            return t.name
    return None


def usage_counts(usage: Mapping[str, Any] | None) -> dict[str, int]:
    """A `usage` object (as `deployments.gateway.engines.engine_client.usage_of` reads it from an
    answer; None when there is none) as the three counts, missing ones 0."""
    usage = usage or {}
    return {k: int(usage.get(k) or 0) for k in USAGE_FIELDS}


def total_usage(steps: Sequence[CascadeStep]) -> dict[str, int]:
    return {k: sum(int(s.usage.get(k, 0)) for s in steps) for k in USAGE_FIELDS}


def reason_suffix(steps: Sequence[CascadeStep]) -> str:
    """For x-tierline-route-reason: `+cascade:small>large` after an escalation, nothing
    when the first answer was kept. Tier names only: the metrics' reason label stays
    bounded."""
    if len(steps) < 2:
        return ""
    return "+cascade:" + ">".join(s.tier for s in steps)


def request_threshold(header: str | None, default: float) -> float:
    """The threshold for one request: `x-tierline-cascade-threshold` (a log-probability,
    at most 0) overrides the spec's; ValueError with a message for a bad value."""
    if header is None:
        return default
    try:
        value = float(header)
    except ValueError:
        value = math.nan
    if math.isnan(value) or value > 0:
        raise ValueError(
            f"{THRESHOLD_HEADER} must be a number at most 0 (a mean log-probability), "
            f"not {header[:40]!r}"
        )
    return value


def cascaded_answer(
    answer: Mapping[str, Any],
    steps: Sequence[CascadeStep],
    policy: CascadePolicy,
    keep_logprobs: bool,
) -> dict[str, Any]:
    """The final answer: usage summed over every call, the steps, and the log-probabilities
    removed again unless the client asked for them."""
    out = copy.deepcopy(dict(answer))
    out["usage"] = {**(out.get("usage") or {}), **total_usage(steps)}
    out["cascade"] = {
        "logprob_threshold": policy.logprob_threshold,
        "steps": [
            {
                "tier": s.tier,
                "mean_logprob": None if s.mean_logprob is None else round(s.mean_logprob, 4),
                "usage": dict(s.usage),
            }
            for s in steps
        ],
    }
    if not keep_logprobs:
        for choice in out.get("choices") or ():
            if isinstance(choice, dict) and "logprobs" in choice:
                choice["logprobs"] = None
    return out


def logprob_fields(method: str, asked: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """Body fields that make the engine return the sampled tokens' log-probabilities, and
    whether the client asked for log-probabilities itself (then they stay in the answer)."""
    if method == "chat":
        keep = bool(asked.get("logprobs"))
        return ({} if keep else {"logprobs": True}), keep
    keep = asked.get("logprobs") is not None
    return ({} if keep else {"logprobs": 0}), keep
