"""Admission at the edge: refuse what cannot be admitted before the request is parsed.

Under a flood most requests are refused, and each refusal costs the gateway replica's one event loop
the same as an admitted request's way in: FastAPI routing, the pydantic body, the exception handler.
The gateway's ASGI middleware (`deployments.gateway.pipeline.middleware`) instead asks
`edge_refusal` with the request's raw body, once the API key is checked; a refusal is answered
there. What it refuses, and only that:
- everything, while the replica drains for shutdown (503 `draining`);
- a request whose `model` pins a tier (by tier, served name, adapter or alias) that the
  tenant may use and that has no free slot at this replica (503 `tier_at_capacity`);
- an `auto` request when no tier the tenant may use has room left (503, as the full path
  would answer it: the request's own candidates are a subset of those).
Before those, a body nested deeper than `gateway.limits.max_json_depth` is refused with
400 (`bounds.too_deep`): parsing it would recurse once per level, here and in FastAPI.
Anything else, a body that does not parse included, goes on to the full path, which
checks it again on the state it finds then and answers 400/403/404 where due. So a request
that is both invalid and bound for a full tier is told 503 (retry later) before 400.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from tierline.cluster.spec import AUTO_MODEL, ClusterSpec, QuotaSpec
from tierline.deployments.errors import APIError
from tierline.deployments.gateway.engines.board import TierBoard
from tierline.deployments.gateway.pipeline.bounds import too_deep
from tierline.deployments.gateway.pipeline.plan import REASON_HEADER, RETRY_AFTER_S, TIER_HEADER

# The generation routes whose JSON body names a `model`.
EDGE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses"})


def draining_error() -> APIError:
    return APIError(
        503,
        "the gateway is draining for shutdown; retry shortly",
        code="draining",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def tier_full(tier: str, in_flight: int, headers: Mapping[str, str]) -> APIError:
    return APIError(
        503,
        f"tier {tier!r} is at capacity ({in_flight} requests in flight at this gateway "
        "replica); retry shortly",
        code="tier_at_capacity",
        headers={**headers, "Retry-After": str(RETRY_AFTER_S)},
    )


def every_tier_full() -> APIError:
    return APIError(
        503,
        "every tier this request may use is at capacity at this gateway replica; retry shortly",
        code="tier_at_capacity",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


PARSED_BODY = "parsed_body"
"""Request state: the edge's parse of a JSON object body, which the route's body model
reads instead of parsing the body again (`ParsedBodyRoute`)."""


def requested_model(raw: bytes, keep: dict[str, Any] | None = None) -> str | None:
    """The `model` of a JSON body, or None when the body is not a JSON object naming one.
    `keep`: where a parsed object is left under `PARSED_BODY`."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    if keep is not None:
        keep[PARSED_BODY] = data
    model = data.get("model")
    return model if isinstance(model, str) else None


class _ParsedBodyRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            parsed = self.scope.get("state", {}).pop(PARSED_BODY, None)
            if parsed is None:
                return await super().json()
            self._json = parsed
        return self._json


class ParsedBodyRoute(APIRoute):
    """A route whose JSON body is the edge's parse when there is one: a megabyte of tool
    definitions is parsed once, not twice (a millisecond of the event loop each time)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def parsed_once(request: Request) -> Response:
            return await handler(_ParsedBodyRequest(request.scope, request.receive))

        return parsed_once


def edge_refusal(
    spec: ClusterSpec,
    board: TierBoard,
    quota: QuotaSpec,
    is_draining: bool,
    raw: bytes,
    keep: dict[str, Any] | None = None,
) -> APIError | None:
    """The refusal of a generation request with body `raw` from a tenant with `quota`,
    from the board's state now; None: let it through (the parsed body left in `keep`,
    see `requested_model`)."""
    if is_draining:
        return draining_error()
    deep = too_deep(raw, spec.gateway.limits.max_json_depth)
    if deep is not None:
        return deep
    model = requested_model(raw, keep)
    if model is None:
        return None
    model = spec.canonical_model(model)
    allowed = [t.name for t in spec.tiers if quota.tiers is None or t.name in quota.tiers]
    if model == AUTO_MODEL:
        if allowed and not board.room_for_auto(allowed):
            return every_tier_full()
        return None
    tier = spec.resolve_model(model)
    if tier is None or tier.name not in allowed:
        return None
    load = board.load(tier.name)
    if not load.full:
        return None
    return tier_full(tier.name, load.in_flight, {TIER_HEADER: tier.name, REASON_HEADER: "pinned"})
