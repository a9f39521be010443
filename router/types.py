"""Plain data the router decides on. No Ray, no HTTP: everything here is a value."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RequestFeatures:
    """What the router knows about one request."""

    text: str
    """The request's user-visible text (messages or prompt), for content heuristics."""
    prompt_tokens: Mapping[str, int]
    """Prompt length in each tier's own tokenizer, chat template included."""
    completion_tokens: int
    """Tokens the request may generate (max_tokens, or 1 when unset)."""
    pinned_tier: str | None = None
    """A tier named by the request's `model` field; None for `auto`."""
    quality: Mapping[str, float] | None = None
    """Learned policy: predicted probability that each tier answers well enough."""
    preference: str | None = None
    """Learned policy: the request's cost|balanced|quality|latency preference, if any."""
    traffic_class: str | None = None
    """Learned policy under a per-class bound: the prompt's traffic class
    (`router.classes.classify`, or `out-of-domain`); None: the pooled bound."""

    def context_needed(self, tier: str) -> int:
        return self.prompt_tokens[tier] + self.completion_tokens


class TierQuality(dict[str, float]):
    """Predicted quality per tier (a plain mapping), carrying the traffic class of the
    prompt it was predicted for (`Head.traffic_class`; None: no per-class bound), so the
    class computed from the prompt's embedding travels with the prediction."""

    def __init__(self, quality: Mapping[str, float], traffic_class: str | None = None) -> None:
        super().__init__(quality)
        self.traffic_class = traffic_class


@dataclass(frozen=True)
class TierState:
    """A tier as the router sees it at decision time."""

    name: str
    max_context_tokens: int
    healthy: bool = True
    queued: int = 0
    """Requests sent to the tier that have not had their first token yet."""
    queue_limit: int | None = None
    """Above this many queued requests the tier counts as overloaded; None: no limit."""
    ttft_s: float | None = None
    """Recent time to first token (seconds); None when not yet measured."""
    replicas: int | None = None
    """Engine replicas running now (autoscaling); None when not watched."""

    @property
    def overloaded(self) -> bool:
        return self.queue_limit is not None and self.queued > self.queue_limit

    @property
    def cold(self) -> bool:
        """Scaled to zero: a request sent here waits for a replica to start."""
        return self.replicas == 0


@dataclass(frozen=True)
class Decision:
    tier: str
    score: float
    """The policy's difficulty estimate; 0 for pinned requests. Rules: in [0, 1]. Learned:
    the predicted quality gain of leaving the cheapest tier, in [-1, 1]."""
    reason: str
    """Why, as a short machine-readable string: it goes in x-tierline-route-reason."""
    escalations: tuple[str, ...] = field(default=())
    """Tiers passed over on the way up, each with why (e.g. 'small:context')."""
    threshold: float | None = None
    """Learned policy: the calibrated tolerance the score was compared with."""
    preference: str | None = None
    """Learned policy: the preference applied."""
    target_share: float | None = None
    """Learned policy: the share of traffic above the cheapest tier this preference aims for."""
    max_quality_loss: float | None = None
    """Learned policy under a quality-loss bound: the bound in force (then no target share)."""
    traffic_class: str | None = None
    """Learned policy under a per-class bound: the class whose thresholds were used
    (`out-of-domain`: the strictest of each pair); None: the pooled bound or none."""


class RoutingError(Exception):
    """No tier can take the request. Carries the HTTP status the gateway should answer."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
