"""One plan per request: the tiers it may use, its prompt length in each, its budget.

A request is looked at in two steps. `scope` does the cheap checks (limits, the model
it names, the tenant's tiers, the preference header) and says which tiers the request
may use; nothing is tokenised. Once the request is past admission at the edge,
`count_prompt_tokens` counts its prompt in each candidate tier's tokenizer (blocking: the
gateway runs it off the event loop, in one thread call), and `Scope.plan` freezes the
result into a `RequestPlan`. Routing (`decide_route`), the quota reservation and the
cascade all read their counts from the plan: a request is tokenised once.

Pure functions of plain data, besides the learned router's calibration state, which
`LearnedRouter.decide` advances.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tierline.cluster.spec import AUTO_MODEL, ClusterSpec, QuotaSpec, TierSpec
from tierline.deployments.errors import APIError
from tierline.deployments.gateway.pipeline.bounds import check_engine_fields, check_media_urls
from tierline.deployments.gateway.pipeline.routing import LearnedRouter
from tierline.deployments.gateway.pipeline.schemas import (
    ChatCompletionBody,
    CompletionBody,
    _Generation,
)
from tierline.deployments.gateway.pipeline.tokens import EstimatingCounter, TokenCounter
from tierline.deployments.gateway.responses.affinity import Affinity, sticky_decision
from tierline.router import Decision, RequestFeatures, RoutingError, RulesPolicy, TierState, decide
from tierline.router.capabilities import (
    IMAGE_PART_TYPES,
    Capabilities,
    Needs,
    capable,
    needs_of,
    refusal,
)
from tierline.router.capabilities import tier_capabilities as _tier_capabilities
from tierline.router.learned import PREFERENCES

__all__ = [
    "REASON_HEADER",
    "RETRY_AFTER_S",
    "TIER_HEADER",
    "RequestPlan",
    "Scope",
    "count_prompt_tokens",
    "count_prompts",
    "decide_route",
    "image_parts",
    "needs_tokenizer",
    "prompt_count",
    "request_needs",
    "reservation_of",
    "rules_policy",
    "scope",
    "spec_capabilities",
]

TIER_HEADER = "x-tierline-tier"
REASON_HEADER = "x-tierline-route-reason"
RETRY_AFTER_S = 1


def rules_policy(spec: ClusterSpec) -> RulesPolicy:
    p = spec.router.params
    return RulesPolicy(
        long_prompt_tokens=p.long_prompt_tokens,
        hard_keywords=tuple(p.hard_keywords),
        default_tier=spec.router.default_tier,
        hard_tier=p.hard_tier,
        cold_start=spec.router.cold_start,
    )


@dataclass(frozen=True)
class RequestPlan:
    """What routing, admission and the cascade need to know of one request."""

    tiers: tuple[str, ...]
    """Candidate tiers, cheapest first: the pinned tier alone, or the tenant's tiers."""
    prompt_tokens: Mapping[str, int]
    """Prompt length in each candidate tier's tokenizer, chat template included."""
    completion_budget: int | None
    """max_tokens (or max_completion_tokens); None when the request sets none."""
    pinned: str | None
    """The tier the request's `model` names; None for auto."""
    adapter_id: str | None
    """The engine-side id of the LoRA adapter the request names, if any."""
    text: str
    """The request's text, for content heuristics and the learned scorer."""
    prompts: int = 1
    """Prompts in the request (a /v1/completions list); each gets `n` completions."""
    n: int = 1
    """Completions per prompt."""
    prompt_total: Mapping[str, int] | None = None
    """All prompts' tokens in each tier (None: `prompt_tokens`, one prompt)."""
    context: Mapping[str, int] = field(default_factory=dict)
    """Each candidate tier's context length (the budget of a request without max_tokens)."""
    allowed: tuple[str, ...] | None = None
    """The tenant's tiers (None: all): failover and the cascade never leave them."""

    def features(self) -> RequestFeatures:
        return RequestFeatures(
            text=self.text,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_budget or 1,
            pinned_tier=self.pinned,
        )

    def reservation(self, tier: str) -> int:
        """Tokens the tenant's quota reserves for the request on `tier`: the most it can
        cost, n x (every prompt plus each prompt's completion budget). Without max_tokens
        a completion may run to the end of the tier's context (`reservation_of`)."""
        total = (self.prompt_total or self.prompt_tokens)[tier]
        return reservation_of(
            total, self.prompts, self.n, self.completion_budget, self.context.get(tier)
        )

    def needed(self, tier: str) -> int:
        """Context the request needs on `tier` (as the router counts it)."""
        return self.prompt_tokens[tier] + (self.completion_budget or 1)


def reservation_of(
    prompt_total: int, prompts: int, n: int, budget: int | None, context: int | None
) -> int:
    """The worst case a request costs: `n` completions of each of `prompts` prompts
    (`prompt_total` tokens in all), each completion up to `budget` tokens, or without a
    budget up to the tier's `context` less its prompt (the prompts' remaining context
    sums to prompts x context - prompt_total). Prompts count once per completion, as
    the most an engine may bill."""
    if budget is not None:
        completion = prompts * budget
    elif context is not None:
        completion = max(prompts * context - prompt_total, 0)
    else:
        completion = 0
    return n * (prompt_total + completion)


@dataclass(frozen=True)
class Scope:
    """The tiers a request may use, from the cheap checks alone (nothing tokenised)."""

    tiers: tuple[TierSpec, ...]
    pinned: TierSpec | None
    adapter_id: str | None
    completion_budget: int | None
    prompts: int = 1
    n: int = 1
    allowed: tuple[str, ...] | None = None
    needs: str | None = None
    """What the request needs that some tier lacks (e.g. `tools`), when that narrowed
    its tiers; None otherwise. The route reason carries it (`+needs-tools`)."""
    image_tokens: int = 0
    """Tokens reserved for the request's image parts (`gateway.limits.image_reserve_tokens`
    each): a tokenizer counts an image as a placeholder, the engine bills its pixels."""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tiers)

    def _with_images(
        self, longest: Mapping[str, int], total: Mapping[str, int] | None
    ) -> dict[str, int] | None:
        """All prompts' tokens with the images' reservation added (None: as `longest`)."""
        if not self.image_tokens:
            return None if total is None else dict(total)
        base = longest if total is None else total
        return {name: n + self.image_tokens for name, n in base.items()}

    def plan(
        self,
        prompt_tokens: Mapping[str, int],
        text: str,
        prompt_total: Mapping[str, int] | None = None,
    ) -> RequestPlan:
        return RequestPlan(
            tiers=self.names,
            prompt_tokens=dict(prompt_tokens),
            completion_budget=self.completion_budget,
            pinned=self.pinned.name if self.pinned is not None else None,
            adapter_id=self.adapter_id,
            text=text,
            prompts=self.prompts,
            n=self.n,
            prompt_total=self._with_images(prompt_tokens, prompt_total),
            context={t.name: t.max_context_tokens for t in self.tiers},
            allowed=self.allowed,
        )


def _check_limits(spec: ClusterSpec, body: _Generation, budget: int | None) -> None:
    g = spec.gateway
    if budget is not None and budget > g.max_tokens_limit:
        raise APIError(
            400,
            f"max_tokens is {budget}; this gateway allows at most {g.max_tokens_limit}",
            code="max_tokens_too_large",
            param="max_tokens",
        )
    if body.n > g.max_n:
        raise APIError(
            400, f"n is {body.n}; at most {g.max_n} is allowed", code="n_too_large", param="n"
        )
    if prompt_count(body) > g.max_prompts:
        raise APIError(
            400,
            f"{prompt_count(body)} prompts; at most {g.max_prompts} are allowed in one "
            "request (gateway.max_prompts)",
            code="too_many_prompts",
            param="prompt",
        )
    if isinstance(body, ChatCompletionBody) and len(body.messages) > g.max_messages:
        raise APIError(
            400,
            f"{len(body.messages)} messages; at most {g.max_messages} are allowed",
            code="too_many_messages",
            param="messages",
        )
    check_engine_fields(g.limits, body.model_extra or {})
    if isinstance(body, ChatCompletionBody):
        check_media_urls(g.limits, media_parts(body))


def spec_capabilities(
    spec: ClusterSpec, model_configs: Mapping[str, Mapping[str, Any] | None] | None = None
) -> dict[str, Capabilities]:
    """Each tier's capabilities, from the spec and (where given) its model's config.json."""
    configs = model_configs or {}
    return {t.name: _tier_capabilities(t, configs.get(t.name)) for t in spec.tiers}


def request_needs(body: _Generation) -> Needs:
    """What the request needs of a tier (`router.capabilities.needs_of`), read from the
    validated body without dumping it: its extra fields and its messages' part types."""
    data: dict[str, Any] = dict(body.model_extra or {})
    if isinstance(body, ChatCompletionBody):
        data["messages"] = [
            {"content": [{"type": p.type} for p in m.content]}
            for m in body.messages
            if isinstance(m.content, list)
        ]
    return needs_of(data)


_NEED_PARAMS = {"tools": "tools", "vision": "messages", "structured_output": "response_format"}


def _capable_tiers(
    allowed: list[TierSpec],
    pinned: TierSpec | None,
    needs: Needs,
    capabilities: Mapping[str, Capabilities] | None,
    spec: ClusterSpec,
) -> tuple[list[TierSpec], str | None]:
    """The allowed tiers that can serve the request (a hard rule, before any scorer),
    and what narrowed them; 400 when the request's tier, or every allowed tier, cannot."""
    if not (needs.tools or needs.vision or needs.structured_output):
        return allowed, None
    caps = capabilities if capabilities is not None else spec_capabilities(spec)
    verdict = capable(needs, {t.name: caps[t.name] for t in allowed})
    if (pinned is not None and pinned.name in verdict.refused) or not verdict.tiers:
        refused = (
            {pinned.name: verdict.refused[pinned.name]} if pinned is not None else verdict.refused
        )
        code, message = refusal(replace(verdict, refused=refused), pinned.name if pinned else None)
        first = next(iter(refused.values()))[0]
        raise APIError(400, message, code=code, param=_NEED_PARAMS.get(first))
    lacking = sorted({m for missing in verdict.refused.values() for m in missing})
    kept = [t for t in allowed if t.name in verdict.tiers]
    return kept, ",".join(lacking) or None


def scope(
    spec: ClusterSpec,
    quota: QuotaSpec,
    body: _Generation,
    tenant: str,
    preference: str | None = None,
    learned: bool = False,
    capabilities: Mapping[str, Capabilities] | None = None,
) -> Scope:
    """The cheap checks, in order: limits (400), the model (404), the tenant's tiers
    (403), what the tiers can serve (400: tools, images, structured output), and with
    the learned policy the preference header (400). Tiers that cannot serve the request
    are left out of its candidates and of its failover and cascade (`Scope.allowed`)."""
    budget: int | None = body.completion_budget()  # type: ignore[attr-defined]
    _check_limits(spec, body, budget)
    pinned: TierSpec | None = None
    if body.model != AUTO_MODEL:
        pinned = spec.resolve_model(body.model)
        if pinned is None:
            known = ", ".join([AUTO_MODEL, *(t.model_name for t in spec.tiers)])
            raise APIError(
                404,
                f"model {body.model!r} does not exist; available: {known}",
                code="model_not_found",
                param="model",
            )
    allowed = [t for t in spec.tiers if quota.tiers is None or t.name in quota.tiers]
    if pinned is not None and pinned not in allowed:
        raise APIError(
            403,
            f"tenant {tenant!r} may not use tier {pinned.name!r}",
            code="tier_not_allowed",
            param="model",
        )
    if not allowed:
        raise APIError(403, f"tenant {tenant!r} may not use any tier", code="no_tiers")
    before = len(allowed)
    allowed, needs = _capable_tiers(allowed, pinned, request_needs(body), capabilities, spec)
    tiers = [pinned] if pinned is not None else allowed
    if learned and pinned is None and preference is not None and preference not in PREFERENCES:
        raise APIError(
            400,
            f"preference {preference!r} is not one of {', '.join(PREFERENCES)}",
            code="invalid_preference",
            param="x-tierline-preference",
        )
    # A LoRA adapter request runs on its tier only: no other tier has the adapter.
    adapter = spec.resolve_adapter(body.model)
    adapter_id = (
        pinned.adapter_model_id(adapter[1]) if adapter is not None and pinned is not None else None
    )
    narrowed = before != len(allowed)
    allowed_names = None if quota.tiers is None and not narrowed else tuple(t.name for t in allowed)
    return Scope(
        tuple(tiers),
        pinned,
        adapter_id,
        budget,
        prompt_count(body),
        body.n,
        allowed_names,
        needs if narrowed and pinned is None else None,
        image_parts(body) * spec.gateway.limits.image_reserve_tokens,
    )


def media_parts(body: ChatCompletionBody) -> Iterator[dict[str, Any]]:
    """The extra fields (`image_url` and the like) of a chat's content parts."""
    for m in body.messages:
        if isinstance(m.content, list):
            for p in m.content:
                if p.model_extra:
                    yield p.model_extra


def image_parts(body: _Generation) -> int:
    """Image content parts in a chat request's messages."""
    if not isinstance(body, ChatCompletionBody):
        return 0
    return sum(
        1
        for m in body.messages
        if isinstance(m.content, list)
        for p in m.content
        if p.type in IMAGE_PART_TYPES
    )


# -- counting ------------------------------------------------------------------------------------
def prompt_count(body: _Generation) -> int:
    """Prompts in the request: a /v1/completions list of texts has one each."""
    if isinstance(body, CompletionBody) and isinstance(body.prompt, list) and not _token_ids(body):
        return max(len(body.prompt), 1)
    return 1


def _both(n: int) -> tuple[int, int]:
    return n, n


def _prompt_counter(body: _Generation) -> Callable[[TokenCounter], tuple[int, int]]:
    """How to count the request's prompts with one tokenizer (the body read once): the
    longest prompt (for context fit) and all of them (for the quota)."""
    if isinstance(body, ChatCompletionBody):
        messages: list[dict[str, Any]] = [m.model_dump(exclude_none=True) for m in body.messages]
        rendered = _rendered_fields(body)
        if rendered is None:
            return lambda counter: _both(counter.chat(messages))
        return lambda counter: _both(counter.chat(messages) + counter.text(rendered))
    assert isinstance(body, CompletionBody)
    prompt = body.prompt
    if isinstance(prompt, str):
        text = prompt
        return lambda counter: _both(counter.text(text))
    if prompt and all(isinstance(p, int) for p in prompt):
        n = len(prompt)
        return lambda _: (n, n)
    texts = [p for p in prompt if isinstance(p, str)]

    def count(counter: TokenCounter) -> tuple[int, int]:
        each = [counter.text(p) for p in texts]
        return max(each, default=0), sum(each)

    return count


RENDERED_FIELDS = ("tools", "tool_choice", "response_format")
"""Chat fields the engine renders into the prompt (the chat template writes out the tool
definitions; a JSON-schema format adds its instructions), so the quota reserves them."""


def _rendered_fields(body: ChatCompletionBody) -> str | None:
    """The chat fields rendered into the prompt, as the JSON text counted for them."""
    extra = body.model_extra or {}
    present = {k: extra[k] for k in RENDERED_FIELDS if extra.get(k) is not None}
    if not present:
        return None
    return json.dumps(present, separators=(",", ":"), ensure_ascii=False)


def _token_ids(body: _Generation) -> bool:
    return (
        isinstance(body, CompletionBody)
        and isinstance(body.prompt, list)
        and bool(body.prompt)
        and all(isinstance(p, int) for p in body.prompt)
    )


def needs_tokenizer(
    body: _Generation, counters: Mapping[str, TokenCounter], tiers: Sequence[str]
) -> bool:
    """Whether counting takes a tokenizer's time (worth a thread): not for token-id
    prompts, nor when every counter is the byte-length estimate."""
    if _token_ids(body):
        return False
    return not all(isinstance(counters[t], EstimatingCounter) for t in tiers)


def count_prompts(
    body: _Generation, counters: Mapping[str, TokenCounter], tiers: Sequence[str]
) -> tuple[dict[str, int], dict[str, int]]:
    """The longest prompt's length and all prompts' length in each tier's tokenizer;
    tiers sharing a counter count once. Blocking (a tokenizer's work): the gateway calls
    it off the event loop."""
    count = _prompt_counter(body)
    by_counter: dict[int, tuple[int, int]] = {}
    longest, total = {}, {}
    for name in tiers:
        counter = counters[name]
        key = id(counter)
        if key not in by_counter:
            by_counter[key] = count(counter)
        longest[name], total[name] = by_counter[key]
    return longest, total


def count_prompt_tokens(
    body: _Generation, counters: Mapping[str, TokenCounter], tiers: Sequence[str]
) -> dict[str, int]:
    """The (longest) prompt's length in each tier's tokenizer (`count_prompts`)."""
    return count_prompts(body, counters, tiers)[0]


# -- routing -------------------------------------------------------------------------------------
def decide_route(
    plan: RequestPlan,
    states: Sequence[TierState],
    policy: RulesPolicy,
    learned: LearnedRouter | None = None,
    preference: str | None = None,
    quality: Mapping[str, float] | None = None,
    affinity: Affinity | None = None,
) -> Decision:
    """The tier for a planned request, from the tiers' states (`states`: the plan's
    tiers, cheapest first). The router's refusals become API errors (503s with
    Retry-After). `affinity` (a Responses follow-up turn, model auto): the previous
    turn's tier while it can take the request (`responses.affinity`), else the policy's
    choice with why the conversation left in the reason."""
    features = plan.features()
    left = ""
    if affinity is not None and plan.pinned is None:
        sticky = sticky_decision(affinity, states, plan.needed)
        if isinstance(sticky, Decision):
            return sticky
        left = f"+affinity-left:{sticky}"
    try:
        if learned is not None and plan.pinned is None:
            decision = learned.decide(features, states, preference, quality)
        else:
            decision = decide(features, states, policy)
        return replace(decision, reason=decision.reason + left) if left else decision
    except RoutingError as err:
        headers = {"Retry-After": str(RETRY_AFTER_S)} if err.status == 503 else None
        raise APIError(
            err.status, err.message, code=err.code, param=err.param, headers=headers
        ) from None
