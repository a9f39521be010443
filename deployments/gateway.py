"""The gateway: one OpenAI-compatible HTTP surface over every tier.

A request is parsed and bounded here, the router picks a tier (a pure call), and the
tier's engine client does the I/O. `create_app` builds the FastAPI app from a
`GatewayCore`; the Ray Serve deployment in `deployments.app` only wires real engine
handles into it, so everything in this module runs in unit tests without Ray.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cluster.spec import AUTO_MODEL, ClusterSpec, TierSpec
from deployments.engine_client import EngineClient, EngineError, EngineItem, Method
from deployments.errors import APIError, error_body, error_response
from deployments.schemas import ChatCompletionBody, CompletionBody, _Generation, dump_for_engine
from deployments.tokens import TokenCounter
from router import Decision, RequestFeatures, RoutingError, RulesPolicy, TierState, decide

logger = logging.getLogger("tierline.gateway")

TIER_HEADER = "x-tierline-tier"
REASON_HEADER = "x-tierline-route-reason"
REQUEST_ID_HEADER = "x-request-id"
RETRY_AFTER_S = 1


def rules_policy(spec: ClusterSpec) -> RulesPolicy:
    p = spec.router.params
    return RulesPolicy(
        long_prompt_tokens=p.long_prompt_tokens,
        hard_keywords=tuple(p.hard_keywords),
        default_tier=spec.router.default_tier,
        hard_tier=p.hard_tier,
    )


class GatewayCore:
    """Request handling with its collaborators passed in: engines and token counters."""

    def __init__(
        self,
        spec: ClusterSpec,
        engines: Mapping[str, EngineClient],
        counters: Mapping[str, TokenCounter],
    ) -> None:
        missing = [t.name for t in spec.tiers if t.name not in engines or t.name not in counters]
        if missing:
            raise ValueError(f"no engine client or token counter for tiers {missing}")
        self.spec = spec
        self.engines = dict(engines)
        self.counters = dict(counters)
        self.policy = rules_policy(spec)
        self.created = int(time.time())

    # -- routing ---------------------------------------------------------------------------
    def _check_limits(self, body: _Generation, budget: int | None) -> None:
        g = self.spec.gateway
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
        if isinstance(body, ChatCompletionBody) and len(body.messages) > g.max_messages:
            raise APIError(
                400,
                f"{len(body.messages)} messages; at most {g.max_messages} are allowed",
                code="too_many_messages",
                param="messages",
            )

    def _count(self, tier: TierSpec, body: _Generation) -> int:
        counter = self.counters[tier.name]
        if isinstance(body, ChatCompletionBody):
            return counter.chat([m.model_dump(exclude_none=True) for m in body.messages])
        assert isinstance(body, CompletionBody)
        prompt = body.prompt
        if isinstance(prompt, str):
            return counter.text(prompt)
        if prompt and all(isinstance(p, int) for p in prompt):
            return len(prompt)
        return max((counter.text(p) for p in prompt if isinstance(p, str)), default=0)

    def route(self, body: _Generation) -> tuple[TierSpec, Decision]:
        budget = body.completion_budget()  # type: ignore[attr-defined]
        self._check_limits(body, budget)
        pinned: TierSpec | None = None
        if body.model != AUTO_MODEL:
            pinned = self.spec.resolve_model(body.model)
            if pinned is None:
                known = ", ".join([AUTO_MODEL, *(t.model_name for t in self.spec.tiers)])
                raise APIError(
                    404,
                    f"model {body.model!r} does not exist; available: {known}",
                    code="model_not_found",
                    param="model",
                )
        tiers = [pinned] if pinned is not None else self.spec.tiers
        features = RequestFeatures(
            text=body.text(),  # type: ignore[attr-defined]
            prompt_tokens={t.name: self._count(t, body) for t in tiers},
            completion_tokens=budget or 1,
            pinned_tier=pinned.name if pinned is not None else None,
        )
        states = [TierState(t.name, t.max_context_tokens) for t in tiers]
        try:
            decision = decide(features, states, self.policy)
        except RoutingError as err:
            headers = {"Retry-After": str(RETRY_AFTER_S)} if err.status == 503 else None
            raise APIError(
                err.status, err.message, code=err.code, param=err.param, headers=headers
            ) from None
        return self.spec.tier(decision.tier), decision

    # -- answering -------------------------------------------------------------------------
    async def generate(self, method: Method, body: _Generation) -> Response:
        try:
            tier, decision = self.route(body)
        except APIError as err:
            err.headers.setdefault(TIER_HEADER, "none")
            err.headers.setdefault(REASON_HEADER, f"rejected:{err.code or err.status}")
            raise
        headers = {TIER_HEADER: tier.name, REASON_HEADER: decision.reason}
        engine_body = dump_for_engine(body, tier.model_name, force_usage=True)
        stream = self.engines[tier.name].generate(method, engine_body)
        try:
            first = await asyncio.wait_for(
                anext(stream), timeout=self.spec.gateway.request_timeout_s
            )
        except StopAsyncIteration:
            raise APIError(502, f"tier {tier.name!r} returned nothing", headers=headers) from None
        except TimeoutError:
            await stream.aclose()
            raise APIError(
                504, f"tier {tier.name!r} did not answer in time", headers=headers
            ) from None
        except APIError:
            raise
        except Exception as err:
            logger.warning("tier %s failed before its first token: %r", tier.name, err)
            raise APIError(
                503,
                f"tier {tier.name!r} is unavailable; retry shortly",
                code="tier_unavailable",
                headers={**headers, "Retry-After": str(RETRY_AFTER_S)},
            ) from None
        if isinstance(first, EngineError):
            await stream.aclose()
            status = first.status if 400 <= first.status < 600 else 502
            raise APIError(status, first.message, code=first.type, headers=headers)
        if isinstance(first, dict):
            await stream.aclose()
            return JSONResponse(first, headers=headers)
        return StreamingResponse(
            sse_events(first, stream), media_type="text/event-stream", headers=headers
        )

    async def ready(self, timeout_s: float = 2.0) -> dict[str, bool]:
        names = [t.name for t in self.spec.tiers]
        checks = await asyncio.gather(*(self.engines[n].healthy(timeout_s) for n in names))
        return dict(zip(names, checks, strict=True))

    def model_cards(self) -> list[dict[str, Any]]:
        cards = [
            {
                "id": AUTO_MODEL,
                "object": "model",
                "created": self.created,
                "owned_by": "tierline",
                "tier": None,
                "description": "routed: the router picks a tier per request",
            }
        ]
        for t in self.spec.tiers:
            cards.append(
                {
                    "id": t.model_name,
                    "object": "model",
                    "created": self.created,
                    "owned_by": "tierline",
                    "tier": t.name,
                    "max_model_len": t.max_context_tokens,
                    "pricing": {
                        "input_per_1m_tokens": t.price_per_1m_input_tokens,
                        "output_per_1m_tokens": t.price_per_1m_output_tokens,
                    },
                }
            )
        return cards


def _sse_error(message: str) -> str:
    return f"data: {json.dumps(error_body(500, message, code='stream_error'))}\n\n"


async def sse_events(first: EngineItem, rest: AsyncIterator[EngineItem]) -> AsyncIterator[str]:
    """The engine's stream as SSE, always ending in `data: [DONE]`, errors included."""
    done = False

    def emit(item: EngineItem) -> str:
        nonlocal done
        if isinstance(item, EngineError):
            return _sse_error(item.message)
        if isinstance(item, dict):
            return f"data: {json.dumps(item)}\n\n"
        if item.rstrip().endswith("data: [DONE]"):
            done = True
        return item

    try:
        yield emit(first)
        async for item in rest:
            yield emit(item)
    except asyncio.CancelledError:
        raise
    except Exception as err:
        logger.warning("stream broke mid-way: %r", err)
        yield _sse_error("the engine stream broke before the answer was complete")
    if not done:
        yield "data: [DONE]\n\n"


def _validation_message(err: RequestValidationError) -> tuple[str, str | None]:
    errors = err.errors()
    if not errors:
        return "invalid request body", None
    e = errors[0]
    loc = [str(p) for p in e.get("loc", ()) if p != "body"]
    if e.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    where = ".".join(loc)
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return (f"{where}: {e.get('msg')}{more}" if where else f"{e.get('msg')}{more}"), (
        loc[0] if loc else None
    )


def create_app(core: GatewayCore) -> FastAPI:
    app = FastAPI(title="tierline gateway", version="0.1.0")
    max_body = core.spec.gateway.max_body_bytes

    @app.middleware("http")
    async def request_id_and_size(request: Request, call_next: Any) -> Response:
        rid = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body:
            response: Response = error_response(
                APIError(
                    413,
                    f"request body is {length} bytes; the limit is {max_body}",
                    code="request_too_large",
                )
            )
        else:
            response = await call_next(request)
        response.headers[REQUEST_ID_HEADER] = rid
        return response

    @app.exception_handler(APIError)
    async def _api_error(_: Request, err: APIError) -> Response:
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> Response:
        message, param = _validation_message(err)
        return error_response(APIError(400, message, code="invalid_request", param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException) -> Response:
        return error_response(APIError(err.status_code, str(err.detail)))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, err: Exception) -> Response:
        logger.exception("unhandled error")
        return error_response(APIError(500, "internal error", code="internal_error"))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        tiers = await core.ready()
        ok = all(tiers.values())
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "tiers": tiers},
            status_code=200 if ok else 503,
            headers=None if ok else {"Retry-After": str(RETRY_AFTER_S)},
        )

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": core.model_cards()}

    @app.get("/v1/models/{model:path}")
    async def model(model: str) -> dict[str, Any]:
        for card in core.model_cards():
            if card["id"] == model or card["tier"] == model:
                return card
        raise APIError(
            404, f"model {model!r} does not exist", code="model_not_found", param="model"
        )

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionBody) -> Response:
        return await core.generate("chat", body)

    @app.post("/v1/completions")
    async def completions(body: CompletionBody) -> Response:
        return await core.generate("completions", body)

    return app
