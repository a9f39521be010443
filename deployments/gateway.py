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
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cluster.spec import AUTO_MODEL, ClusterSpec, QuotaSpec, TierSpec
from deployments.auth import KeyStore
from deployments.engine_client import EngineClient, EngineError, EngineItem, Method
from deployments.errors import APIError, error_body, error_response
from deployments.middleware import GatewayMiddleware, tenant_of
from deployments.quota import QuotaClient, is_limited, retry_after_header
from deployments.rag_routes import RagClient, ground_chat, rag_router, with_citations
from deployments.routing import PREFERENCE_HEADER, LearnedRouter
from deployments.schemas import ChatCompletionBody, CompletionBody, _Generation, dump_for_engine
from deployments.tokens import TokenCounter
from router import Decision, RequestFeatures, RoutingError, RulesPolicy, TierState, decide

logger = logging.getLogger("ray.serve.tierline.gateway")

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
    )


class GatewayCore:
    """Request handling with its collaborators passed in: engines and token counters."""

    def __init__(
        self,
        spec: ClusterSpec,
        engines: Mapping[str, EngineClient],
        counters: Mapping[str, TokenCounter],
        quota: QuotaClient | None = None,
        learned: LearnedRouter | None = None,
    ) -> None:
        missing = [t.name for t in spec.tiers if t.name not in engines or t.name not in counters]
        if missing:
            raise ValueError(f"no engine client or token counter for tiers {missing}")
        self.spec = spec
        self.engines = dict(engines)
        self.counters = dict(counters)
        self.policy = rules_policy(spec)
        if spec.router.policy == "learned" and learned is None:
            raise ValueError("router.policy is 'learned': GatewayCore needs a LearnedRouter")
        self.learned = learned if spec.router.policy == "learned" else None
        if self.learned is not None:  # tracks queues, time to first token and token costs
            self.engines = self.learned.wrap(self.engines)
        self.created = int(time.time())
        self.quota = quota
        self.quotas = {t.name: t for t in spec.gateway.tenants}
        self.health = {t.name: True for t in spec.tiers}
        self.active = 0
        self.draining = False

    def quota_for(self, tenant: str) -> QuotaSpec:
        return self.quotas.get(tenant, self.spec.gateway.default_quota)

    def allowed_tiers(self, tenant: str) -> list[TierSpec]:
        allowed = self.quota_for(tenant).tiers
        return [t for t in self.spec.tiers if allowed is None or t.name in allowed]

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

    async def quality(self, body: _Generation) -> Mapping[str, float] | None:
        """The learned scorer's per-tier predictions for an auto request, off the loop."""
        if self.learned is None or body.model != AUTO_MODEL:
            return None
        return await self.learned.quality_async(body.text())  # type: ignore[attr-defined]

    def route(
        self,
        body: _Generation,
        tenant: str = "default",
        preference: str | None = None,
        quality: Mapping[str, float] | None = None,
    ) -> tuple[TierSpec, Decision]:
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
        allowed = self.allowed_tiers(tenant)
        if pinned is not None and pinned not in allowed:
            raise APIError(
                403,
                f"tenant {tenant!r} may not use tier {pinned.name!r}",
                code="tier_not_allowed",
                param="model",
            )
        tiers = [pinned] if pinned is not None else allowed
        if not tiers:
            raise APIError(403, f"tenant {tenant!r} may not use any tier", code="no_tiers")
        features = RequestFeatures(
            text=body.text(),  # type: ignore[attr-defined]
            prompt_tokens={t.name: self._count(t, body) for t in tiers},
            completion_tokens=budget or 1,
            pinned_tier=pinned.name if pinned is not None else None,
        )
        states = [TierState(t.name, t.max_context_tokens, self.health[t.name]) for t in tiers]
        try:
            if self.learned is not None and pinned is None:
                decision = self.learned.decide(features, states, preference, quality)
            else:
                decision = decide(features, states, self.policy)
        except RoutingError as err:
            headers = {"Retry-After": str(RETRY_AFTER_S)} if err.status == 503 else None
            raise APIError(
                err.status, err.message, code=err.code, param=err.param, headers=headers
            ) from None
        return self.spec.tier(decision.tier), decision

    # -- answering -------------------------------------------------------------------------
    async def generate(
        self,
        method: Method,
        body: _Generation,
        tenant: str = "default",
        preference: str | None = None,
    ) -> Response:
        if self.draining:
            raise APIError(
                503,
                "the gateway is draining for shutdown; retry shortly",
                code="draining",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        try:
            tier, decision = self.route(body, tenant, preference, await self.quality(body))
        except APIError as err:
            err.headers.setdefault(TIER_HEADER, "none")
            err.headers.setdefault(REASON_HEADER, f"rejected:{err.code or err.status}")
            raise
        headers = {TIER_HEADER: tier.name, REASON_HEADER: decision.reason}
        ticket = await self._admit(tenant, tier, body, headers)
        self.active += 1
        finish = self._finisher(ticket)
        try:
            tier, first, stream = await self._first_item(method, body, tier, headers)
        except BaseException:
            await finish(None)
            raise
        if isinstance(first, dict):
            await stream.aclose()
            await finish(_total_tokens(first))
            return JSONResponse(first, headers=headers)
        return StreamingResponse(
            sse_events(first, stream, on_end=finish),
            media_type="text/event-stream",
            headers=headers,
        )

    def _finisher(self, ticket: int | None) -> Callable[[int | None], Awaitable[None]]:
        done = False

        async def finish(used_tokens: int | None) -> None:
            nonlocal done
            if done:
                return
            done = True
            self.active -= 1
            if ticket is not None and self.quota is not None:
                await self.quota.release(ticket, used_tokens)

        return finish

    async def _admit(
        self, tenant: str, tier: TierSpec, body: _Generation, headers: dict[str, str]
    ) -> int | None:
        if self.quota is None or not is_limited(self.quota_for(tenant)):
            return None
        tokens = self._count(tier, body) + (body.completion_budget() or 0)  # type: ignore[attr-defined]
        admission = await self.quota.admit(tenant, tokens)
        if not admission.ok:
            raise APIError(
                429,
                f"tenant {tenant!r} is over its quota ({admission.reason}); retry later",
                code="quota_exceeded",
                headers={**headers, "Retry-After": retry_after_header(admission.retry_after_s)},
            )
        return admission.ticket

    async def _first_item(
        self, method: Method, body: _Generation, tier: TierSpec, headers: dict[str, str]
    ) -> tuple[TierSpec, EngineItem, AsyncGenerator[EngineItem, None]]:
        """Start the request and wait for its first item, retrying failures before any
        output on the same tier, then on its fallback tier."""
        attempts = [tier] * (1 + self.spec.gateway.retries)
        if tier.fallback_tier is not None:
            attempts.append(self.spec.tier(tier.fallback_tier))
        timeout = self.spec.gateway.request_timeout_s
        last_error: Exception | None = None
        for i, target in enumerate(attempts):
            if target.name != tier.name:
                if not self.health.get(target.name, True):
                    continue
                headers[TIER_HEADER] = target.name
                headers[REASON_HEADER] += "+fallback"
            engine_body = dump_for_engine(body, target.model_name, force_usage=True)
            stream = self.engines[target.name].generate(method, engine_body)
            try:
                first = await asyncio.wait_for(anext(stream), timeout=timeout)
            except StopAsyncIteration:
                last_error = RuntimeError("empty answer")
                continue
            except TimeoutError:
                await stream.aclose()
                raise APIError(
                    504, f"tier {target.name!r} did not answer in time", headers=headers
                ) from None
            except Exception as err:  # the replica died or was unreachable: try again
                logger.warning("tier %s attempt %d failed before output: %r", target.name, i, err)
                last_error = err
                await asyncio.sleep(min(0.05 * 2**i, 0.5))
                continue
            if isinstance(first, EngineError):
                await stream.aclose()
                status = first.status if 400 <= first.status < 600 else 502
                extra = {"Retry-After": str(RETRY_AFTER_S)} if status in (429, 503) else {}
                raise APIError(status, first.message, code=first.type, headers={**headers, **extra})
            if i > 0:
                self.health[target.name] = True
            return target, first, stream
        logger.warning("tier %s failed after %d attempts: %r", tier.name, len(attempts), last_error)
        self.health[tier.name] = False
        raise APIError(
            503,
            f"tier {tier.name!r} is unavailable; retry shortly",
            code="tier_unavailable",
            headers={**headers, "Retry-After": str(RETRY_AFTER_S)},
        )

    async def drain(self, timeout_s: float) -> int:
        """Refuse new requests and wait up to `timeout_s` for in-flight ones to finish.
        Returns how many were still running when the wait ended."""
        self.draining = True
        deadline = time.monotonic() + timeout_s
        while self.active > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.active

    async def watch_health(
        self, period_s: float = 5.0, timeout_s: float = 10.0, failures_to_down: int = 3
    ) -> None:
        """Keep `health` current: a tier whose engine fails `failures_to_down` checks in a
        row is skipped by auto routing until a check passes again. One slow check under
        load is not an outage."""
        failures = dict.fromkeys(self.health, 0)
        seen_up: set[str] = set()
        while True:
            names = [t.name for t in self.spec.tiers]
            checks = await asyncio.gather(
                *(self.engines[n].healthy(timeout_s) for n in names), return_exceptions=True
            )
            for name, ok in zip(names, checks, strict=True):
                if ok is True:
                    seen_up.add(name)
                    failures[name] = 0
                    self.health[name] = True
                elif name in seen_up:  # a tier still warming up has not failed yet
                    failures[name] += 1
                    if failures[name] >= failures_to_down:
                        self.health[name] = False
            await asyncio.sleep(period_s)

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


def _total_tokens(body: dict[str, Any]) -> int | None:
    usage = body.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("total_tokens"), int):
        return int(usage["total_tokens"])
    return None


def _usage_of_event(event: str) -> int | None:
    for line in event.splitlines():
        if line.startswith("data: {") and '"usage"' in line:
            try:
                return _total_tokens(json.loads(line[6:]))
            except ValueError:
                return None
    return None


async def sse_events(
    first: EngineItem,
    rest: AsyncGenerator[EngineItem, None],
    on_end: Callable[[int | None], Awaitable[None]] | None = None,
) -> AsyncIterator[str]:
    """The engine's stream as SSE, always ending in `data: [DONE]`, errors included.

    `on_end` gets the total tokens from the stream's usage chunk, however the stream ends
    (completed, broken, or the client went away)."""
    done = False
    used: int | None = None

    def emit(item: EngineItem) -> str:
        nonlocal done, used
        if isinstance(item, EngineError):
            return _sse_error(item.message)
        if isinstance(item, dict):
            return f"data: {json.dumps(item)}\n\n"
        if item.rstrip().endswith("data: [DONE]"):
            done = True
        used = _usage_of_event(item) or used
        return item

    try:
        yield emit(first)
        async for item in rest:
            yield emit(item)
        if not done:
            yield "data: [DONE]\n\n"
    except (asyncio.CancelledError, GeneratorExit):
        raise  # the client went away: closing `rest` cancels the engine request
    except Exception as err:
        logger.warning("stream broke mid-way: %r", err)
        yield _sse_error("the engine stream broke before the answer was complete")
        yield "data: [DONE]\n\n"
    finally:
        await rest.aclose()
        if on_end is not None:
            await on_end(used)


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


def create_app(
    core: GatewayCore, keys: KeyStore | None = None, rag: RagClient | None = None
) -> FastAPI:
    """The gateway's HTTP app. `keys` None means authentication is off; `rag` None, no RAG."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        watcher = asyncio.create_task(core.watch_health())
        try:
            yield
        finally:
            watcher.cancel()

    app = FastAPI(title="tierline gateway", version="0.1.0", lifespan=lifespan)
    app.add_middleware(
        GatewayMiddleware, max_body_bytes=core.spec.gateway.max_body_bytes, keys=keys
    )

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
    async def chat(body: ChatCompletionBody, request: Request) -> Response:
        preference = request.headers.get(PREFERENCE_HEADER)
        # RAG hook: retrieved context goes into the messages before routing sees them.
        body, citations = await ground_chat(rag, body, core.spec.rag.default_top_k)
        response = await core.generate("chat", body, tenant_of(request.state), preference)
        return with_citations(response, citations)

    @app.post("/v1/completions")
    async def completions(body: CompletionBody, request: Request) -> Response:
        preference = request.headers.get(PREFERENCE_HEADER)
        return await core.generate("completions", body, tenant_of(request.state), preference)

    if rag is not None:
        app.include_router(rag_router(rag))
    return app
