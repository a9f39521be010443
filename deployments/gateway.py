"""The gateway: one OpenAI-compatible HTTP surface over every tier.

A request flows through the gateway once, each concern in its own module:

1. the cheap checks (`plan.scope`): limits, the model, the tenant's tiers;
2. admission at the edge (`board.TierBoard`): a request no tier can take now is refused
   with 503 and Retry-After before it is tokenised or scored;
3. the plan (`plan.RequestPlan`): the prompt counted once per candidate tier, off the
   event loop, alongside the learned scorer's quality call;
4. the route (`plan.decide_route`, a pure call), the tier's slot, the tenant's quota;
5. the engine call with retries and failover (`failover.Failover`), then the cascade
   (`cascade.escalate`) for an unsure whole answer;
6. the answer on the wire (`streams`): SSE for streams, the usage read once, the stream
   cut at the request's deadline.

A grounded RAG chat is admitted (drain, cheap checks, the tenant's quota) before its
retrieval runs, and reserves its final prompt once it is known (`QuotaLedger.resize`).

The board is kept current by the loops in `watch` (health probes, Serve's replicas).

`create_app` builds the FastAPI app from a `GatewayCore`; the Ray Serve deployment in
`deployments.app` only wires real engine handles into it, so everything in this module
runs in unit tests without Ray.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from tierline.cluster.spec import AUTO_MODEL, ClusterSpec, QuotaSpec, TierSpec
from tierline.deployments.adapters import adapter_cards
from tierline.deployments.admission import Slot, TierSlots
from tierline.deployments.auth import KeyStore
from tierline.deployments.board import TierBoard
from tierline.deployments.cascade import cascade_for, escalate
from tierline.deployments.edge import (
    EDGE_PATHS,
    draining_error,
    edge_refusal,
    every_tier_full,
    tier_full,
)
from tierline.deployments.embeddings import (
    EMBEDDINGS_TIER,
    Embedder,
    EmbeddingsCard,
    embeddings_card,
    embeddings_router,
)
from tierline.deployments.engine_client import EngineClient, Method
from tierline.deployments.errors import APIError, error_response
from tierline.deployments.failover import Failover
from tierline.deployments.logs import event
from tierline.deployments.metrics import GatewayMetrics, PromRecorder, metered
from tierline.deployments.middleware import GatewayMiddleware, tenant_of
from tierline.deployments.plan import (
    REASON_HEADER,
    RETRY_AFTER_S,
    TIER_HEADER,
    RequestPlan,
    Scope,
    count_prompt_tokens,
    count_prompts,
    decide_route,
    needs_tokenizer,
    rules_policy,
    scope,
    spec_capabilities,
)
from tierline.deployments.quota import Admission, QuotaClient, is_limited, retry_after_header
from tierline.deployments.rag_routes import (
    RagClient,
    ground_chat,
    rag_router,
    upload_limits,
    with_citations,
)
from tierline.deployments.replicas import ReplicaWatcher
from tierline.deployments.responses import Affinity, MemoryResponseStore, ResponseStore
from tierline.deployments.responses.routes import responses_router
from tierline.deployments.routing import PREFERENCE_HEADER, LearnedRouter
from tierline.deployments.schemas import (
    ChatCompletionBody,
    CompletionBody,
    _Generation,
    wants_usage,
)
from tierline.deployments.streams import finish_whole_answer, sse_events, total_tokens
from tierline.deployments.tokens import TokenCounter
from tierline.deployments.watch import readiness, watch_health, watch_replicas
from tierline.router import Decision
from tierline.router.capabilities import Capabilities
from tierline.router.cascade import THRESHOLD_HEADER

__all__ = [
    "REASON_HEADER",
    "RETRY_AFTER_S",
    "TIER_HEADER",
    "GatewayCore",
    "create_app",
    "rules_policy",
]

logger = logging.getLogger("ray.serve.tierline.gateway")

Grounder = Callable[[_Generation], Awaitable[_Generation]]
"""Rewrites a request's body before it is planned (a grounded RAG chat's retrieval)."""
route_logger = logging.getLogger("ray.serve.tierline.router")


class GatewayCore:
    """Request handling with its collaborators passed in: engines and token counters."""

    def __init__(
        self,
        spec: ClusterSpec,
        engines: Mapping[str, EngineClient],
        counters: Mapping[str, TokenCounter],
        quota: QuotaClient | None = None,
        learned: LearnedRouter | None = None,
        replicas: ReplicaWatcher | None = None,
        metrics: GatewayMetrics | None = None,
        capabilities: Mapping[str, Capabilities] | None = None,
    ) -> None:
        missing = [t.name for t in spec.tiers if t.name not in engines or t.name not in counters]
        if missing:
            raise ValueError(f"no engine client or token counter for tiers {missing}")
        self.spec = spec
        self.engines = dict(engines)
        self.counters = dict(counters)
        self.policy = rules_policy(spec)
        # What each tier can serve (router.capabilities): from the spec alone unless the
        # replica read the models' configs at start-up (deployments.app).
        self.capabilities = dict(capabilities or spec_capabilities(spec))
        self.embeddings = embeddings_card(spec)  # None: the spec has no embedding model
        if spec.router.policy == "learned" and learned is None:
            raise ValueError("router.policy is 'learned': GatewayCore needs a LearnedRouter")
        self.learned = learned if spec.router.policy == "learned" else None
        if self.learned is not None:  # tracks queues, time to first token and token costs
            self.engines = self.learned.wrap(self.engines)
        # Metrics: Ray's recorder in Serve (deployments.app), in-memory otherwise.
        self.metrics = metrics or GatewayMetrics(spec, PromRecorder())
        self.engines = metered(self.engines, self.metrics)
        self.created = int(time.time())
        self.quota = quota
        self.quotas = {t.name: t for t in spec.gateway.tenants}
        # Health, replicas, warm-up, admission slots and down-waiters of every tier.
        self.board = TierBoard(spec.tiers, spec.gateway.replicas)
        self.failover = Failover(spec, self.engines, self.board)
        self.replica_watcher = replicas
        self.active = 0
        self.draining = False

    # -- the board, as callers read it -----------------------------------------------------
    @property
    def health(self) -> dict[str, bool]:
        return self.board.health

    @property
    def replicas(self) -> dict[str, int | None]:
        return self.board.replicas

    @property
    def warmed(self) -> set[str]:
        return self.board.warmed

    @property
    def slots(self) -> TierSlots:
        return self.board.slots

    @property
    def _down_waiters(self) -> dict[str, set[asyncio.Future[Any]]]:
        return self.board.down_waiters

    def mark_down(self, tier: str) -> None:
        """Auto routing skips `tier` until a health check passes again, and requests
        waiting for its first output move to its fallback tier now."""
        self.board.mark_down(tier)

    def quota_for(self, tenant: str) -> QuotaSpec:
        return self.quotas.get(tenant, self.spec.gateway.default_quota)

    # -- the request's way in ------------------------------------------------------------------
    def canonical(self, body: _Generation) -> _Generation:
        """`body` with an aliased `model` (`model_aliases`) replaced by what it stands for."""
        model = self.spec.canonical_model(body.model)
        return body if model == body.model else body.model_copy(update={"model": model})

    def scope(self, body: _Generation, tenant: str, preference: str | None = None) -> Scope:
        """The cheap checks (400/403/404): which tiers the request may use."""
        learned = self.learned is not None
        quota = self.quota_for(tenant)
        return scope(self.spec, quota, body, tenant, preference, learned, self.capabilities)

    async def fits_context(
        self, body: _Generation, tenant: str, messages: list[dict[str, Any]]
    ) -> bool:
        """Whether some tier `body` may use has room for `messages` and its completion
        budget (a grounded chat's retrieved context is trimmed until this holds)."""
        names = self.scope(body, tenant).names
        need = body.completion_budget() or 1  # type: ignore[attr-defined]

        def check() -> bool:
            return any(
                self.counters[n].chat(messages) + need <= self.spec.tier(n).max_context_tokens
                for n in names
            )

        return await asyncio.to_thread(check)

    def admit_at_edge(self, where: Scope) -> Slot | None:
        """Refuse now (503, Retry-After) when no tier the request may use has room: before
        it is tokenised or scored. A pinned request takes its tier's slot here; an auto
        request counts as pending until routing has chosen its tier."""
        if where.pinned is not None:
            name = where.pinned.name
            slot = self.board.acquire(name)
            if slot is None:
                raise self._at_capacity(name, {TIER_HEADER: name, REASON_HEADER: "pinned"})
            return slot
        if not self.board.room_for_auto(where.names):
            raise every_tier_full()
        return None

    def refusal_at_edge(self, raw: bytes, tenant: str) -> APIError | None:
        """The 503 for a generation request with body `raw`, decided before it is parsed
        (drain, a full pinned tier, no room for auto; `deployments.edge`); None: go on."""
        quota = self.quota_for(tenant)
        return edge_refusal(self.spec, self.board, quota, self.draining, raw)

    async def plan(self, body: _Generation, where: Scope) -> RequestPlan:
        """The request's plan: its prompt counted once per candidate tier, in one thread
        call (inline when there is nothing to tokenise)."""
        names = where.names
        if needs_tokenizer(body, self.counters, names):
            longest, total = await asyncio.to_thread(count_prompts, body, self.counters, names)
        else:
            longest, total = count_prompts(body, self.counters, names)
        return where.plan(longest, body.text(), total)  # type: ignore[attr-defined]

    async def quality(self, body: _Generation) -> Mapping[str, float] | None:
        """The learned scorer's per-tier predictions for an auto request, off the loop."""
        if self.learned is None or body.model != AUTO_MODEL:
            return None
        return await self.learned.quality_async(body.text())  # type: ignore[attr-defined]

    def decide(
        self,
        plan: RequestPlan,
        preference: str | None = None,
        quality: Mapping[str, float] | None = None,
        affinity: Affinity | None = None,
    ) -> Decision:
        """The route for a planned request, from the board's tier states now."""
        states = self.board.states(plan.tiers)
        decision = decide_route(
            plan, states, self.policy, self.learned, preference, quality, affinity
        )
        event(
            route_logger,
            "route",
            {"tier": decision.tier, "reason": decision.reason, "score": round(decision.score, 4)},
        )
        return decision

    def route(
        self,
        body: _Generation,
        tenant: str = "default",
        preference: str | None = None,
        quality: Mapping[str, float] | None = None,
    ) -> tuple[TierSpec, Decision]:
        """Scope, plan and decide in one blocking call, without admission (for tools and
        tests; requests go through `generate`)."""
        body = self.canonical(body)
        where = self.scope(body, tenant, preference)
        counts = count_prompt_tokens(body, self.counters, where.names)
        decision = self.decide(where.plan(counts, body.text()), preference, quality)  # type: ignore[attr-defined]
        return self.spec.tier(decision.tier), decision

    # -- answering -------------------------------------------------------------------------
    async def generate(
        self,
        method: Method,
        body: _Generation,
        tenant: str = "default",
        preference: str | None = None,
        cascade_threshold: str | None = None,
        ground: Grounder | None = None,
        affinity: Affinity | None = None,
    ) -> Response:
        """Answer a generation request. `ground` (a grounded RAG chat) rewrites the body
        before it is planned; it runs only once the request is past the drain check, the
        cheap checks and the tenant's quota, so a refused request does no retrieval."""
        t0 = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self.spec.gateway.request_timeout_s
        if self.draining:
            raise draining_error()
        ticket: int | None = None
        body = self.canonical(body)
        try:
            cascade = cascade_for(self.spec, method, body, cascade_threshold)  # None: none
            if ground is not None:
                self.scope(body, tenant, preference)  # 400/403/404 before any work
                ticket = await self._admit(tenant, 1, {})  # its prompt is reserved below
                body = await ground(body)
            tier, plan, headers, slot = await self._route(body, tenant, preference, affinity)
        except BaseException as err:
            await self._release_ticket(ticket)
            if isinstance(err, APIError):
                err.headers.setdefault(TIER_HEADER, "none")
                err.headers.setdefault(REASON_HEADER, f"rejected:{err.code or err.status}")
            raise
        try:
            reservation = plan.reservation(tier.name)
            if ticket is None:
                ticket = await self._admit(tenant, reservation, headers)
            else:
                await self._resize(tenant, ticket, reservation, headers)
        except BaseException:
            slot.release()
            await self._release_ticket(ticket)
            raise
        self.active += 1
        self.metrics.active(self.active)
        finish = self._finisher(ticket, slot)
        ask = body if cascade is None else body.model_copy(update=cascade.ask)
        try:
            tier, first, stream = await self.failover.first_item(
                method, ask, tier, headers, slot, plan.adapter_id, plan.allowed, deadline
            )
            if isinstance(first, dict) and cascade is not None:
                await finish_whole_answer(stream)
                first = await escalate(
                    self.failover, method, ask, tier, first, headers, slot, plan, cascade
                )
        except BaseException:
            await finish(None)
            raise
        if isinstance(first, dict):
            await finish_whole_answer(stream)
            await finish(total_tokens(first))
            self.answered(headers, tenant, 200, t0)
            return JSONResponse(first, headers=headers)
        return StreamingResponse(
            sse_events(
                first,
                stream,
                on_end=self._answered_on(finish, headers, tenant, t0),
                hide_usage=not wants_usage(body),
                deadline=deadline,
            ),
            media_type="text/event-stream",
            headers=headers,
        )

    async def _route(
        self,
        body: _Generation,
        tenant: str,
        preference: str | None,
        affinity: Affinity | None = None,
    ) -> tuple[TierSpec, RequestPlan, dict[str, str], Slot]:
        """Scope, edge, plan, route and slot: the request's tier, plan, answer headers,
        and its slot on the tier. Raises `APIError` (nothing held) when refused."""
        where = self.scope(body, tenant, preference)
        slot = self.admit_at_edge(where)
        auto = slot is None
        if auto:
            self.board.pending += 1
        try:
            if self.learned is not None and auto:
                plan, quality = await asyncio.gather(self.plan(body, where), self.quality(body))
            else:
                plan, quality = await self.plan(body, where), None
            decision = self.decide(plan, preference, quality, affinity)
            tier = self.spec.tier(decision.tier)
            # Tiers left out for lacking a capability: `+needs-tools`, `+needs-vision`, ...
            needs = where.needs.split(",") if where.needs else []
            reason = decision.reason + "".join(f"+needs-{n.replace('_', '-')}" for n in needs)
            headers = {TIER_HEADER: tier.name, REASON_HEADER: reason}
            if slot is None:  # a full tier: 503 now, before any engine call
                slot = self.board.acquire(tier.name)
                if slot is None:
                    raise self._at_capacity(tier.name, headers)
        except BaseException:
            if slot is not None:
                slot.release()
            raise
        finally:
            if auto:
                self.board.pending -= 1
        return tier, plan, headers, slot

    def _at_capacity(self, tier: str, headers: Mapping[str, str]) -> APIError:
        return tier_full(tier, self.board.load(tier).in_flight, headers)

    def answered(
        self, headers: Mapping[str, str], tenant: str, status: int, t0: float | None
    ) -> None:
        """Metrics and the request's log line, once its answer is complete."""
        seconds = None if t0 is None else time.perf_counter() - t0
        tier, reason = headers.get(TIER_HEADER, "none"), headers.get(REASON_HEADER, "none")
        if status < 400:
            self.metrics.answered(tier, reason, tenant, status, seconds)
        fields = {"tier": tier, "reason": reason, "tenant": tenant, "status": status}
        if seconds is not None:
            fields["duration_s"] = round(seconds, 4)
        event(logger, "answer", fields)

    def _answered_on(
        self,
        finish: Callable[[int | None], Awaitable[None]],
        headers: Mapping[str, str],
        tenant: str,
        t0: float,
    ) -> Callable[[int | None], Awaitable[None]]:
        async def end(used: int | None) -> None:
            await finish(used)
            self.answered(headers, tenant, 200, t0)

        return end

    def _finisher(
        self, ticket: int | None, slot: Slot | None = None
    ) -> Callable[[int | None], Awaitable[None]]:
        done = False

        async def finish(used_tokens: int | None) -> None:
            nonlocal done
            if done:
                return
            done = True
            self.active -= 1
            self.metrics.active(self.active)
            if slot is not None:
                slot.release()
            if ticket is not None and self.quota is not None:
                await self.quota.release(ticket, used_tokens)

        return finish

    async def _admit(self, tenant: str, tokens: int, headers: dict[str, str]) -> int | None:
        """The tenant's quota: reserve `tokens` (the plan's worst case on the tier); 429
        with Retry-After when over. None when the tenant has no quota to keep."""
        if self.quota is None or not is_limited(self.quota_for(tenant)):
            return None
        admission = await self.quota.admit(tenant, tokens)
        if not admission.ok:
            raise self._over_quota(tenant, tokens, admission, headers)
        return admission.ticket

    async def _resize(self, tenant: str, ticket: int, tokens: int, headers: dict[str, str]) -> None:
        """Reserve `tokens` on a ticket taken earlier (a grounded chat's, before retrieval)."""
        assert self.quota is not None
        admission = await self.quota.resize(ticket, tokens)
        if not admission.ok:
            raise self._over_quota(tenant, tokens, admission, headers)

    async def _release_ticket(self, ticket: int | None) -> None:
        if ticket is not None and self.quota is not None:
            await self.quota.release(ticket, None)

    def _over_quota(
        self, tenant: str, tokens: int, admission: Admission, headers: Mapping[str, str]
    ) -> APIError:
        limit = self.quota_for(tenant).tokens_per_min
        if limit is not None and tokens > limit:
            message = (
                f"this request may cost up to {tokens} tokens (its prompts x n plus the "
                "completion budget: max_tokens, or the tier's remaining context when "
                f"max_tokens is unset), more than tenant {tenant!r}'s tokens_per_min "
                f"({limit}); set a smaller max_tokens"
            )
        else:
            message = f"tenant {tenant!r} is over its quota ({admission.reason}); retry later"
        return APIError(
            429,
            message,
            code="quota_exceeded",
            headers={**headers, "Retry-After": retry_after_header(admission.retry_after_s)},
        )

    async def charge(self, tenant: str, tokens: int = 0) -> None:
        """Count one request and `tokens` embedded tokens against `tenant`'s quota, for
        work that is not a generation (RAG ingestion, search, collection creation,
        /v1/embeddings). Call it before the work, with the tokens it will embed (an
        estimate is fine, e.g. `EstimatingCounter().text`); raises `APIError` 429 (with
        Retry-After) when the tenant is over its quota, so the work is never started."""
        ticket = await self._admit(tenant, tokens, {})
        if ticket is not None and self.quota is not None:
            await self.quota.release(ticket, tokens)

    @asynccontextmanager
    async def charged(self, tenant: str, tokens: int = 0) -> AsyncIterator[None]:
        """`charge`, holding one of the tenant's concurrent requests (`max_concurrent`)
        while the block runs: `async with core.charged(tenant, n): ...`."""
        ticket = await self._admit(tenant, tokens, {})
        try:
            yield
        finally:
            if ticket is not None and self.quota is not None:
                await self.quota.release(ticket, tokens)

    def embedded(self, tenant: str, tokens: int, seconds: float) -> None:
        """Metrics and the log line of an answered /v1/embeddings request."""
        price = self.spec.embeddings.price_per_1m_input_tokens
        self.metrics.embedded(EMBEDDINGS_TIER, tenant, tokens, tokens * price / 1e6)
        headers = {TIER_HEADER: EMBEDDINGS_TIER, REASON_HEADER: "embeddings"}
        self.answered(headers, tenant, 200, time.perf_counter() - seconds)

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
        """Keep the board's health current (`watch.watch_health`)."""
        watched = self.replica_watcher is not None
        await watch_health(
            self.spec, self.board, self.engines, watched, period_s, timeout_s, failures_to_down
        )

    async def watch_replicas(self, period_s: float = 2.0) -> None:
        """Keep the board's replica counts current from Serve (`watch.watch_replicas`)."""
        if self.replica_watcher is not None:
            await watch_replicas(self.spec, self.board, self.replica_watcher, period_s)

    async def ready(self, timeout_s: float = 2.0) -> dict[str, bool]:
        return await readiness(self.spec, self.board, self.engines, timeout_s)

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
                    "type": "chat",
                    "max_model_len": t.max_context_tokens,
                    "capabilities": self.capabilities[t.name].card(),
                    "pricing": {
                        "input_per_1m_tokens": t.price_per_1m_input_tokens,
                        "output_per_1m_tokens": t.price_per_1m_output_tokens,
                    },
                    **({"external": True} if t.is_external else {}),
                }
            )
        cards += adapter_cards(self.spec, self.created)
        for card in cards:  # model_aliases, on the card of the name each stands for
            listed = card.get("aliases")
            own = [str(a) for a in listed] if isinstance(listed, list | tuple) else []
            names = {card["id"], *own}
            if card.get("type") == "chat" and card["tier"] is not None:
                names.add(card["tier"])
            extra = [a for a, target in self.spec.model_aliases.items() if target in names]
            if extra:
                card["aliases"] = [*own, *extra]
        if self.embeddings is not None:
            cards.append(self.embeddings.card(self.created))
        return cards


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
    core: GatewayCore,
    keys: KeyStore | None = None,
    rag: RagClient | None = None,
    embedder: Embedder | None = None,
    responses: ResponseStore | None = None,
) -> FastAPI:
    """The gateway's HTTP app. `keys` None means authentication is off; `rag` None, no RAG.
    `/v1/embeddings` is served by `embedder`, or without one by the RAG client's.
    `responses` None: stored responses live in this process only (`MemoryResponseStore`)."""
    store: ResponseStore = responses if responses is not None else MemoryResponseStore()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await store.start()
        watcher = asyncio.create_task(core.watch_health())
        replicas = asyncio.create_task(core.watch_replicas())
        try:
            yield
        finally:
            watcher.cancel()
            replicas.cancel()
            await store.close()

    def refused(err: APIError, tenant: str) -> None:
        tier, reason = err.headers.get(TIER_HEADER, "none"), err.headers.get(REASON_HEADER, "none")
        core.metrics.failed(err.status, err.code, tier, reason, tenant)
        core.answered(err.headers, tenant, err.status, None)

    def edge(raw: bytes, tenant: str) -> APIError | None:
        err = core.refusal_at_edge(raw, tenant)
        if err is not None:
            err.headers.setdefault(TIER_HEADER, "none")
            err.headers.setdefault(REASON_HEADER, f"rejected:{err.code or err.status}")
            refused(err, tenant)
        return err

    app = FastAPI(title="tierline gateway", version="0.1.0", lifespan=lifespan)
    app.add_middleware(
        GatewayMiddleware,
        max_body_bytes=core.spec.gateway.max_body_bytes,
        keys=keys,
        on_reject=lambda err: core.metrics.failed(err.status, err.code, "none", "none", "none"),
        route_limits=upload_limits(core.spec.rag) if rag is not None else (),
        edge=edge,
        edge_paths=EDGE_PATHS,
    )

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> Response:
        refused(err, tenant_of(request.state))
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> Response:
        message, param = _validation_message(err)
        core.metrics.failed(400, "invalid_request", "none", "none", tenant_of(request.state))
        return error_response(APIError(400, message, code="invalid_request", param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> Response:
        core.metrics.failed(err.status_code, None, "none", "none", tenant_of(request.state))
        return error_response(APIError(err.status_code, str(err.detail)))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> Response:
        logger.exception("unhandled error")
        core.metrics.failed(500, "internal_error", "none", "none", tenant_of(request.state))
        return error_response(APIError(500, "internal error", code="internal_error"))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> Response:
        # Public, so it says only ready or not; a valid key (or auth off) also gets each
        # tier's state. External tiers are never probed here (`watch.readiness`).
        tiers = await core.ready()
        # An external tier's outage is not the gateway's: it is listed, it does not gate.
        ok = all(up for name, up in tiers.items() if not core.spec.tier(name).is_external)
        body: dict[str, Any] = {"status": "ready" if ok else "not ready"}
        detail = keys is None or keys.authenticate(request.headers.get("authorization")) is not None
        if detail:
            body["tiers"] = tiers
            if any(r is not None for r in core.replicas.values()):  # autoscaled: running now
                body["replicas"] = {n: r for n, r in core.replicas.items() if r is not None}
        return JSONResponse(
            body,
            status_code=200 if ok else 503,
            headers=None if ok else {"Retry-After": str(RETRY_AFTER_S)},
        )

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": core.model_cards()}

    @app.get("/v1/models/{model:path}")
    async def model(model: str) -> dict[str, Any]:
        for card in core.model_cards():
            if model in (card["id"], card["tier"], *card.get("aliases", ())):
                return card
        raise APIError(
            404, f"model {model!r} does not exist", code="model_not_found", param="model"
        )

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionBody, request: Request) -> Response:
        preference = request.headers.get(PREFERENCE_HEADER)
        threshold = request.headers.get(THRESHOLD_HEADER)
        tenant = tenant_of(request.state)
        citations: list[dict[str, Any]] | None = None

        async def ground(plain: _Generation) -> _Generation:
            # RAG hook: retrieved context goes into the messages before routing sees
            # them. `generate` calls it after the drain, cheap and quota checks.
            nonlocal citations
            assert isinstance(plain, ChatCompletionBody)

            def fits(messages: list[dict[str, Any]]) -> Awaitable[bool]:
                return core.fits_context(plain, tenant, messages)

            grounded, citations = await ground_chat(
                rag, plain, tenant, core.spec.rag.default_top_k, core.metrics.rag, fits
            )
            return grounded

        wants_rag = "rag" in (body.model_extra or {})
        response = await core.generate(
            "chat", body, tenant, preference, threshold, ground if wants_rag else None
        )
        return with_citations(response, citations)

    @app.post("/v1/completions")
    async def completions(body: CompletionBody, request: Request) -> Response:
        preference = request.headers.get(PREFERENCE_HEADER)
        threshold = request.headers.get(THRESHOLD_HEADER)
        return await core.generate(
            "completions", body, tenant_of(request.state), preference, threshold
        )

    app.include_router(responses_router(core, store))
    if rag is not None:
        app.include_router(rag_router(rag, core.spec.rag, core.charge))
    source = embedder if embedder is not None else rag
    if source is not None:
        card = core.embeddings or EmbeddingsCard(
            getattr(source, "model", core.spec.embedding_model_name), core.spec.rag.embedding_dim
        )
        app.include_router(embeddings_router(source, card, core.charge, core.embedded))
    return app
