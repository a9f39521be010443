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
from tierline.cluster.spec import AUTO_MODEL, ClusterSpec, QuotaSpec, TierSpec
from tierline.deployments.adapters import adapter_cards
from tierline.deployments.admission import Slot, TierSlots, as_router_state
from tierline.deployments.auth import KeyStore
from tierline.deployments.engine_client import (
    EngineClient,
    EngineError,
    EngineItem,
    EngineUnavailable,
    Method,
)
from tierline.deployments.errors import APIError, error_body, error_response
from tierline.deployments.logs import event
from tierline.deployments.metrics import GatewayMetrics, PromRecorder, metered
from tierline.deployments.middleware import GatewayMiddleware, tenant_of
from tierline.deployments.quota import QuotaClient, is_limited, retry_after_header
from tierline.deployments.rag_routes import (
    RagClient,
    ground_chat,
    rag_router,
    upload_limits,
    with_citations,
)
from tierline.deployments.replicas import ReplicaWatcher
from tierline.deployments.routing import PREFERENCE_HEADER, LearnedRouter
from tierline.deployments.schemas import (
    ChatCompletionBody,
    CompletionBody,
    _Generation,
    dump_for_engine,
)
from tierline.deployments.tokens import TokenCounter
from tierline.router import Decision, RequestFeatures, RoutingError, RulesPolicy, TierState, decide
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
    usage_of,
)

logger = logging.getLogger("ray.serve.tierline.gateway")
route_logger = logging.getLogger("ray.serve.tierline.router")

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
        # Metrics: Ray's recorder in Serve (deployments.app), in-memory otherwise.
        self.metrics = metrics or GatewayMetrics(spec, PromRecorder())
        self.engines = metered(self.engines, self.metrics)
        self.created = int(time.time())
        self.quota = quota
        self.quotas = {t.name: t for t in spec.gateway.tenants}
        self.health = {t.name: True for t in spec.tiers}
        # Admission control: in-flight requests per tier against the spec's limits.
        self.slots = TierSlots.for_tiers(spec.tiers, spec.gateway.replicas)
        # Requests waiting for a tier's first output, woken when the tier is marked down.
        self._down_waiters: dict[str, set[asyncio.Future[Any]]] = {
            t.name: set() for t in spec.tiers
        }
        # Autoscaled tiers: replicas running now (None: not watched), and the tiers that
        # scale to zero and have answered once: Serve's status stands in for their health
        # probes from then on, so that the gateway never wakes them (see watch_replicas).
        self.replica_watcher = replicas
        self.replicas: dict[str, int | None] = {t.name: None for t in spec.tiers}
        self.warmed: set[str] = set()
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
        states = [
            TierState(
                t.name, t.max_context_tokens, self.health[t.name], replicas=self.replicas[t.name]
            )
            for t in tiers
        ]
        # A tier at its admission limit looks overloaded: the learned policy spills past it.
        states = [as_router_state(s, self.slots.load(s.name)) for s in states]
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
        event(
            route_logger,
            "route",
            {"tier": decision.tier, "reason": decision.reason, "score": round(decision.score, 4)},
        )
        return self.spec.tier(decision.tier), decision

    # -- answering -------------------------------------------------------------------------
    async def generate(
        self,
        method: Method,
        body: _Generation,
        tenant: str = "default",
        preference: str | None = None,
        cascade_threshold: str | None = None,
    ) -> Response:
        t0 = time.perf_counter()
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
        slot = self._slot(tier, headers)  # a full tier: 503 now, before any engine call
        try:
            ticket = await self._admit(tenant, tier, body, headers)
        except BaseException:
            slot.release()
            raise
        self.active += 1
        self.metrics.active(self.active)
        finish = self._finisher(ticket, slot)
        cascade = self._cascade_plan(method, body, cascade_threshold)  # None: no cascade
        ask = body if cascade is None else body.model_copy(update=cascade[1])
        try:
            tier, first, stream = await self._first_item(method, ask, tier, headers, slot)
            if isinstance(first, dict) and cascade is not None:
                await finish_whole_answer(stream)
                first = await self._cascade(
                    method, ask, tier, first, headers, slot, tenant, cascade
                )
        except BaseException:
            await finish(None)
            raise
        if isinstance(first, dict):
            await finish_whole_answer(stream)
            await finish(_total_tokens(first))
            self.answered(headers, tenant, 200, t0)
            return JSONResponse(first, headers=headers)
        return StreamingResponse(
            sse_events(first, stream, on_end=self._answered_on(finish, headers, tenant, t0)),
            media_type="text/event-stream",
            headers=headers,
        )

    def _cascade_plan(
        self, method: Method, body: _Generation, header: str | None
    ) -> tuple[CascadePolicy, dict[str, Any], bool] | None:
        """Non-streaming auto requests with router.cascade on: the policy, the fields that
        ask the engine for log-probabilities, and whether the client wants them back."""
        spec = self.spec.router.cascade
        if not spec.enabled or body.stream or body.model != AUTO_MODEL:
            return None
        try:
            threshold = request_threshold(header, spec.logprob_threshold)
        except ValueError as err:
            raise APIError(400, str(err), param=THRESHOLD_HEADER) from None
        fields, keep = logprob_fields(method, body.model_extra or {})
        return CascadePolicy(threshold, spec.max_escalations), fields, keep

    async def _cascade(
        self,
        method: Method,
        body: _Generation,
        tier: TierSpec,
        answer: dict[str, Any],
        headers: dict[str, str],
        slot: Slot,
        tenant: str,
        plan: tuple[CascadePolicy, dict[str, Any], bool],
    ) -> dict[str, Any]:
        """Escalate an unsure answer up the tiers (the decisions: router.cascade). An
        escalation that fails or finds no room keeps the answer already made."""
        policy, _, keep_logprobs = plan
        steps = [CascadeStep(tier.name, mean_token_logprob(answer), usage_of(answer))]
        while should_escalate(steps[-1].mean_logprob, len(steps) - 1, policy):
            allowed = self.allowed_tiers(tenant)
            states = [
                as_router_state(
                    TierState(
                        t.name,
                        t.max_context_tokens,
                        self.health[t.name],
                        replicas=self.replicas[t.name],
                    ),
                    self.slots.load(t.name),
                )
                for t in allowed
            ]
            budget = body.completion_budget() or 1  # type: ignore[attr-defined]
            needed = {t.name: self._count(t, body) + budget for t in allowed}
            up = next_tier(steps[-1].tier, states, needed)
            if up is None or not slot.move_to(up):
                break
            try:
                target, item, stream = await self._first_item(
                    method, body, self.spec.tier(up), headers, slot
                )
            except APIError as err:
                logger.warning("cascade to tier %s failed: %s", up, err.message)
                break
            await finish_whole_answer(stream)
            if not isinstance(item, dict):
                break
            answer = item
            steps.append(CascadeStep(target.name, mean_token_logprob(item), usage_of(item)))
        headers[TIER_HEADER] = steps[-1].tier
        headers[REASON_HEADER] += reason_suffix(steps)
        return cascaded_answer(answer, steps, policy, keep_logprobs)

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

    def _slot(self, tier: TierSpec, headers: dict[str, str]) -> Slot:
        slot = self.slots.acquire(tier.name)
        if slot is None:
            load = self.slots.load(tier.name)
            raise APIError(
                503,
                f"tier {tier.name!r} is at capacity ({load.in_flight} requests in flight at "
                "this gateway replica); retry shortly",
                code="tier_at_capacity",
                headers={**headers, "Retry-After": str(RETRY_AFTER_S)},
            )
        return slot

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
        self,
        method: Method,
        body: _Generation,
        tier: TierSpec,
        headers: dict[str, str],
        slot: Slot | None = None,
    ) -> tuple[TierSpec, EngineItem, AsyncGenerator[EngineItem, None]]:
        """Start the request and wait for its first item, retrying failures before any
        output on the same tier, then on its fallback tier.

        Early failover, for tiers with a fallback: a retry waits at most
        `failover_timeout_s` for its first output (a dead replica's requests otherwise
        wait in Serve's queue for its replacement), and once the tier is marked down every
        request still waiting for its first output there moves to the fallback at once."""
        attempts = [tier] * (1 + self.spec.gateway.retries)
        fallback = self.spec.tier(tier.fallback_tier) if tier.fallback_tier is not None else None
        # A LoRA adapter request runs on its tier only: no other tier has the adapter.
        adapter = self.spec.resolve_adapter(body.model)
        adapter_id = tier.adapter_model_id(adapter[1]) if adapter is not None else None
        if adapter_id is not None:
            fallback = None
        if fallback is not None:
            attempts.append(fallback)
        last_error: Exception | None = None
        unavailable: EngineUnavailable | None = None  # the tier said no: no retry there
        for i, target in enumerate(attempts):
            if unavailable is not None and target.name == tier.name:
                continue
            failover = fallback is not None and target.name == tier.name
            if target.name != tier.name:
                if unavailable is None or unavailable.down:  # not for a 429 or a timeout
                    self.mark_down(tier.name)  # every attempt on it failed: the rest fail over too
                if not self.health.get(target.name, True):
                    continue
                if slot is not None and not slot.move_to(target.name):
                    continue  # the fallback tier is at capacity as well
                headers[TIER_HEADER] = target.name
                headers[REASON_HEADER] += "+fallback"
            elif failover and i > 0 and not self.health[tier.name]:
                continue  # marked down meanwhile: straight to the fallback
            timeout = self.spec.gateway.request_timeout_s
            cold = self.replicas.get(target.name) == 0
            if cold:  # Serve starts a replica for it; the wait for that is bounded
                timeout = min(timeout, self.spec.router.cold_start_timeout_s)
            model = adapter_id if adapter_id is not None else target.model_name
            engine_body = dump_for_engine(body, model, force_usage=True)
            stream = self.engines[target.name].generate(method, engine_body)
            give_up_s = self.spec.gateway.failover_timeout_s if failover and i > 0 else None
            try:
                first = await self._until_first(stream, target.name, timeout, failover, give_up_s)
            except StopAsyncIteration:
                last_error = RuntimeError("empty answer")
                continue
            except _FailOver as err:
                await stream.aclose()
                logger.warning("tier %s attempt %d: %s", target.name, i, err)
                last_error = err
                continue
            except TimeoutError:
                await stream.aclose()
                what = "start from zero replicas" if cold else "answer"
                raise APIError(
                    504, f"tier {target.name!r} did not {what} in time", headers=headers
                ) from None
            except EngineUnavailable as err:  # e.g. an external tier refused, 429, timed out
                await stream.aclose()
                logger.warning("tier %s attempt %d: %s", target.name, i, err.message)
                unavailable = err
                if err.down:
                    self.mark_down(target.name)
                continue
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
        if unavailable is not None:  # its own status: 429/502/503/504, Retry-After as given
            extra = {"Retry-After": unavailable.retry_after_s} if unavailable.retry_after_s else {}
            raise APIError(
                unavailable.status,
                unavailable.message,
                code=unavailable.code,
                headers={**headers, **extra},
            )
        logger.warning("tier %s failed after %d attempts: %r", tier.name, len(attempts), last_error)
        self.mark_down(tier.name)
        raise APIError(
            503,
            f"tier {tier.name!r} is unavailable; retry shortly",
            code="tier_unavailable",
            headers={**headers, "Retry-After": str(RETRY_AFTER_S)},
        )

    async def _until_first(
        self,
        stream: AsyncGenerator[EngineItem, None],
        tier: str,
        timeout_s: float,
        failover: bool,
        give_up_s: float | None,
    ) -> EngineItem:
        """The stream's first item. TimeoutError after `timeout_s`; `_FailOver` after
        `give_up_s`, or (with `failover`) as soon as the tier is marked down."""
        first: asyncio.Future[Any] = asyncio.ensure_future(anext(stream))
        down: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if failover:
            self._down_waiters[tier].add(down)
        wait_s = timeout_s if give_up_s is None else min(timeout_s, give_up_s)
        try:
            done, _ = await asyncio.wait(
                {first, down}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED
            )
            if first in done:
                return first.result()
            if down in done:
                raise _FailOver(f"tier {tier!r} was marked down while waiting")
            if give_up_s is not None and give_up_s < timeout_s:
                raise _FailOver(f"no output within {give_up_s:g} s of a retry")
            raise TimeoutError
        finally:
            self._down_waiters[tier].discard(down)
            if not first.done():
                first.cancel()  # closes the engine request (ServeEngineClient cancels it)
                await asyncio.gather(first, return_exceptions=True)

    def mark_down(self, tier: str) -> None:
        """Auto routing skips `tier` until a health check passes again, and requests
        waiting for its first output move to its fallback tier now."""
        self.health[tier] = False
        for waiter in list(self._down_waiters[tier]):
            if not waiter.done():
                waiter.set_result(None)

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
            names = [t.name for t in self.spec.tiers if t.name not in self.warmed]
            checks = await asyncio.gather(
                *(self.engines[n].healthy(timeout_s) for n in names), return_exceptions=True
            )
            for name, ok in zip(names, checks, strict=True):
                if ok is True:
                    seen_up.add(name)
                    failures[name] = 0
                    self.health[name] = True
                    if self.spec.tier(name).scales_to_zero and self.replica_watcher is not None:
                        self.warmed.add(name)
                elif name in seen_up:  # a tier still warming up has not failed yet
                    failures[name] += 1
                    if failures[name] >= failures_to_down:
                        self.health[name] = False
            await asyncio.sleep(period_s)

    async def watch_replicas(self, period_s: float = 2.0) -> None:
        """Keep `replicas` of autoscaled tiers current from Serve's status. Tiers that
        scale to zero and have answered once take their health from it too: a probe would
        count as load and keep them from ever scaling down (or wake them up).

        A tier that does not scale to zero and had running replicas is marked down as soon
        as Serve reports none running (they died): its waiting requests move to the
        fallback tier now, not after the health checks have failed (tens of seconds)."""
        if self.replica_watcher is None:
            return
        had_running: dict[str, bool] = {}
        while True:
            try:
                counts = await self.replica_watcher.counts()
            except Exception as err:  # the controller is busy or restarting: keep the last
                logger.warning("replica counts unavailable: %r", err)
                counts = {}
            for name, count in counts.items():
                tier = self.spec.tier(name)
                if tier.autoscaling is not None:
                    self.replicas[name] = count.running
                if name in self.warmed:
                    self.health[name] = count.healthy
                if tier.scales_to_zero:
                    continue
                if count.running == 0 and had_running.get(name) and self.health[name]:
                    logger.warning("tier %s: no replica running (Serve): marked down", name)
                    self.mark_down(name)
                had_running[name] = count.running > 0
            await asyncio.sleep(period_s)

    async def ready(self, timeout_s: float = 2.0) -> dict[str, bool]:
        names = [t.name for t in self.spec.tiers]

        async def check(name: str) -> bool:
            if name in self.warmed:  # no probe: it may be scaled to zero, and stays so
                return self.health[name]
            return await self.engines[name].healthy(timeout_s)

        checks = await asyncio.gather(*(check(n) for n in names))
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
                    **({"external": True} if t.is_external else {}),
                }
            )
        return cards + adapter_cards(self.spec, self.created)


async def finish_whole_answer(
    stream: AsyncGenerator[EngineItem, None], timeout_s: float = 2.0
) -> None:
    """After a whole (non-streaming) answer, let the engine call end by itself before
    closing the stream: cancelling it right after its only item races the engine's own
    end, and the engine replica then logs the call as cancelled or not at all (its log
    loses the request id). Bounded: an engine that does not end in `timeout_s` is closed."""
    try:
        async with asyncio.timeout(timeout_s):
            async for _ in stream:
                pass
    except Exception as err:  # TimeoutError, or the engine failed after answering
        logger.debug("engine stream after a whole answer: %r", err)
    finally:
        await stream.aclose()


class _FailOver(Exception):
    """A request waiting for a tier's first output gives up on it for the fallback."""


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
        replicas = asyncio.create_task(core.watch_replicas())
        try:
            yield
        finally:
            watcher.cancel()
            replicas.cancel()

    app = FastAPI(title="tierline gateway", version="0.1.0", lifespan=lifespan)
    app.add_middleware(
        GatewayMiddleware,
        max_body_bytes=core.spec.gateway.max_body_bytes,
        keys=keys,
        on_reject=lambda err: core.metrics.failed(err.status, err.code, "none", "none", "none"),
        route_limits=upload_limits(core.spec.rag) if rag is not None else (),
    )

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> Response:
        tenant = tenant_of(request.state)
        tier, reason = err.headers.get(TIER_HEADER, "none"), err.headers.get(REASON_HEADER, "none")
        core.metrics.failed(err.status, err.code, tier, reason, tenant)
        core.answered(err.headers, tenant, err.status, None)
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
    async def readyz() -> Response:
        tiers = await core.ready()
        # An external tier's outage is not the gateway's: it is listed, it does not gate.
        ok = all(up for name, up in tiers.items() if not core.spec.tier(name).is_external)
        body: dict[str, Any] = {"status": "ready" if ok else "not ready", "tiers": tiers}
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
        # RAG hook: retrieved context goes into the messages before routing sees them.
        body, citations = await ground_chat(
            rag, body, core.spec.rag.default_top_k, core.metrics.rag
        )
        threshold = request.headers.get(THRESHOLD_HEADER)
        response = await core.generate(
            "chat", body, tenant_of(request.state), preference, threshold
        )
        return with_citations(response, citations)

    @app.post("/v1/completions")
    async def completions(body: CompletionBody, request: Request) -> Response:
        preference = request.headers.get(PREFERENCE_HEADER)
        threshold = request.headers.get(THRESHOLD_HEADER)
        return await core.generate(
            "completions", body, tenant_of(request.state), preference, threshold
        )

    if rag is not None:
        app.include_router(rag_router(rag))
    return app
