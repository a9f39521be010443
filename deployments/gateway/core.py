"""`GatewayCore`: a generation request's one way through the gateway (the steps are in
the package's docstring, `deployments.gateway`), answered as a typed `Answer`. No Ray and
no HTTP here: engines are `EngineClient`s, so all of it runs in unit tests."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from tierline.cluster.spec import AUTO_MODEL, ClusterSpec, QuotaSpec, TierSpec
from tierline.deployments.errors import APIError
from tierline.deployments.gateway.cards import model_cards
from tierline.deployments.gateway.downgrades import Downgrades
from tierline.deployments.gateway.embeddings import (
    EMBEDDINGS_TIER,
    embeddings_card,
)
from tierline.deployments.gateway.engines.board import TierBoard
from tierline.deployments.gateway.engines.engine_client import EngineClient, Method
from tierline.deployments.gateway.engines.failover import Failover
from tierline.deployments.gateway.engines.replicas import ReplicaWatcher
from tierline.deployments.gateway.engines.watch import (
    ReadinessCache,
    readiness,
    watch_health,
    watch_replicas,
)
from tierline.deployments.gateway.observe.metrics import GatewayMetrics, PromRecorder, metered
from tierline.deployments.gateway.pipeline.admission import Slot, TierSlots
from tierline.deployments.gateway.pipeline.answer import Answer, StreamAnswer, WholeAnswer
from tierline.deployments.gateway.pipeline.cascade import cascade_for, escalate
from tierline.deployments.gateway.pipeline.edge import (
    draining_error,
    edge_refusal,
    every_tier_full,
    tier_full,
)
from tierline.deployments.gateway.pipeline.plan import (
    REASON_HEADER,
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
from tierline.deployments.gateway.pipeline.routing import LearnedRouter
from tierline.deployments.gateway.pipeline.salting import salted
from tierline.deployments.gateway.pipeline.schemas import (
    _Generation,
    wants_usage,
)
from tierline.deployments.gateway.pipeline.streams import (
    finish_whole_answer,
    sse_events,
    total_tokens,
)
from tierline.deployments.gateway.pipeline.tokens import TokenCounter
from tierline.deployments.gateway.quota.service import QuotaClient
from tierline.deployments.gateway.responses import Affinity
from tierline.deployments.gateway.tickets import Tickets
from tierline.deployments.logs import event
from tierline.rag.work import off_loop
from tierline.router import Decision
from tierline.router.capabilities import Capabilities

__all__ = ["GatewayCore", "Grounder"]

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
        self.tickets = Tickets(quota, self.quota_for)
        # Health, replicas, warm-up, admission slots and down-waiters of every tier.
        self.board = TierBoard(spec.tiers, spec.gateway.replicas)
        self.failover = Failover(spec, self.engines, self.board)
        # Down a tier instead of refusing: under load, or past a tenant's token budget.
        self.downgrades = Downgrades(spec, self.metrics)
        self.replica_watcher = replicas
        self.readiness = ReadinessCache(spec.gateway.readyz_cache_s)
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

        return await off_loop(check)

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

    def refusal_at_edge(
        self, raw: bytes, tenant: str, keep: dict[str, Any] | None = None
    ) -> APIError | None:
        """The 503 for a generation request with body `raw`, decided before it is parsed (drain, a
        full pinned tier, no room for auto; `deployments.gateway.pipeline.edge`); None: go on, the
        parsed body left in `keep`."""
        quota = self.quota_for(tenant)
        return edge_refusal(self.spec, self.board, quota, self.draining, raw, keep)

    async def plan(self, body: _Generation, where: Scope) -> RequestPlan:
        """The request's plan: its prompt counted once per candidate tier, in one thread
        call (inline when there is nothing to tokenise)."""
        names = where.names
        if needs_tokenizer(body, self.counters, names):
            longest, total = await off_loop(count_prompts, body, self.counters, names)
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
    ) -> Answer:
        """Answer a generation request, typed (the route encodes it). `ground` (a grounded
        RAG chat) rewrites the body before it is planned; it runs only once the request is
        past the drain check, the cheap checks and the tenant's quota, so a refused request
        does no retrieval."""
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
            route = await self._route(body, tenant, preference, affinity)
            tier, plan, headers, slot, quality = route
        except BaseException as err:
            await self._release_ticket(ticket)
            if isinstance(err, APIError):
                err.headers.setdefault(TIER_HEADER, "none")
                err.headers.setdefault(REASON_HEADER, f"rejected:{err.code or err.status}")
            raise
        try:
            if ticket is None:
                quota = self.quota_for(tenant)
                admitted = await self.downgrades.admit(
                    self.tickets, self.board, quota, tenant, plan, tier.name, headers, slot, quality
                )
                ticket, headers = admitted.ticket, admitted.headers
                tier = self.spec.tier(admitted.tier)
            else:
                await self._resize(tenant, ticket, plan.reservation(tier.name), headers)
        except BaseException:
            slot.release()
            await self._release_ticket(ticket)
            raise
        self.active += 1
        self.metrics.active(self.active)
        finish = self._finisher(ticket, slot)
        if headers[REASON_HEADER].startswith("downgraded:"):
            cascade = None  # sent down on purpose: no escalating back to where it came from
        ask = body if cascade is None else body.model_copy(update=cascade.ask)
        gw = self.spec.gateway  # engine tiers' prefix cache: the tenant's own
        ask = salted(ask, tenant, gw.tenant_cache_salt, one_tenant=not gw.auth.enabled)
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
            return WholeAnswer(first, headers)
        return StreamAnswer(
            sse_events(
                first,
                stream,
                on_end=self._answered_on(finish, headers, tenant, t0),
                hide_usage=not wants_usage(body),
                deadline=deadline,
            ),
            headers,
        )

    async def _route(
        self,
        body: _Generation,
        tenant: str,
        preference: str | None,
        affinity: Affinity | None = None,
    ) -> tuple[TierSpec, RequestPlan, dict[str, str], Slot, Mapping[str, float] | None]:
        """Scope, edge, plan, route and slot: the request's tier, plan, answer headers,
        its slot on the tier, and the scorer's predictions (None: none made). A full tier
        sends an auto request a tier down when the load-loss budget allows
        (`Downgrades.for_load`). Raises `APIError` (nothing held) when refused."""
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
                    down = self.downgrades.for_load(self.board, plan, tier.name, quality)
                    if down is None:
                        raise self._at_capacity(tier.name, headers)
                    slot, moved = down
                    tier = self.spec.tier(moved.tier)
                    headers = {TIER_HEADER: tier.name, REASON_HEADER: moved.reason}
        except BaseException:
            if slot is not None:
                slot.release()
            raise
        finally:
            if auto:
                self.board.pending -= 1
        return tier, plan, headers, slot, quality

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
            await self.tickets.release(ticket, used_tokens)

        return finish

    async def _admit(self, tenant: str, tokens: int, headers: dict[str, str]) -> int | None:
        return await self.tickets.admit(tenant, tokens, headers)

    async def _resize(self, tenant: str, ticket: int, tokens: int, headers: dict[str, str]) -> None:
        await self.tickets.resize(tenant, ticket, tokens, headers)

    async def _release_ticket(self, ticket: int | None) -> None:
        await self.tickets.release(ticket, None)

    async def charge(self, tenant: str, tokens: int = 0) -> None:
        """`Tickets.charge`: count work that is not a generation, before it is done."""
        await self.tickets.charge(tenant, tokens)

    def charged(self, tenant: str, tokens: int = 0) -> AbstractAsyncContextManager[None]:
        """`Tickets.charged`: `charge`, holding one of the tenant's concurrent requests."""
        return self.tickets.charged(tenant, tokens)

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
        """Each tier's readiness, probed at most once per `gateway.readyz_cache_s`."""
        return await self.readiness.get(
            lambda: readiness(self.spec, self.board, self.engines, timeout_s)
        )

    def model_cards(self) -> list[dict[str, Any]]:
        return model_cards(self.spec, self.capabilities, self.embeddings, self.created)
