"""Retries and failover: a request's first output, from its tier or the tier's fallback.

`Failover.first_item` starts the engine call and waits for its first item. Failures
before any output are retried on the same tier (`gateway.retries`, with a short backoff),
then the request moves to the tier's fallback (its slot with it), never to a tier outside
the tenant's allowed tiers (`gateway.tenants[].tiers`). Early failover, for
tiers with a fallback: a retry waits at most `failover_timeout_s` for its first output (a
dead replica's requests otherwise wait in Serve's queue for its replacement), and once
the tier is marked down (`TierBoard.mark_down`) every request still waiting for its first
output there moves to the fallback at once. A tier whose queue is full (Serve's back-pressure,
`overloaded`) hands the request to its fallback at once as well, without being marked
down: it is busy, not broken (e.g. its replica died and the requests already sent wait
for the replacement).

Why not tenacity or stamina: both retry one callable on exceptions with a wait between
tries. Here the attempts are not alike: the last one goes to another tier and moves the
request's slot and headers; what ends the wait decides what happens next (a down-waiter
firing or a retry's give-up time: straight on, no backoff; `EngineUnavailable`: skip the
rest of this tier; a timeout or an engine error: answer now, no retry); and each wait
is a race of the first item against the down-waiter. Expressed as their retry/stop/wait
callbacks this loop would be split across several closures sharing state, and no shorter.

No Ray here: engines are `EngineClient`s, tier state is the `TierBoard`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from tierline.cluster.spec import ClusterSpec, TierSpec
from tierline.deployments.errors import APIError
from tierline.deployments.gateway.engines.board import TierBoard
from tierline.deployments.gateway.engines.engine_client import (
    OVERLOADED,
    EngineClient,
    EngineError,
    EngineItem,
    EngineUnavailable,
    Method,
)
from tierline.deployments.gateway.pipeline.admission import Slot
from tierline.deployments.gateway.pipeline.bounds import ENGINE_FIELDS
from tierline.deployments.gateway.pipeline.plan import REASON_HEADER, RETRY_AFTER_S, TIER_HEADER
from tierline.deployments.gateway.pipeline.schemas import _Generation, dump_for_engine

__all__ = ["FailOver", "Failover", "RetryPolicy", "attempts", "fallback_within", "until_first"]

logger = logging.getLogger("ray.serve.tierline.gateway")


Stream = AsyncGenerator[EngineItem, None]


class FailOver(Exception):
    """A request waiting for a tier's first output gives up on it for the fallback."""


@dataclass(frozen=True)
class RetryPolicy:
    retries: int
    """Extra attempts on the same tier after a failure before any output."""
    request_timeout_s: float
    failover_timeout_s: float
    """How long a retry on a tier with a fallback waits for its first output."""
    cold_start_timeout_s: float
    """How long a call to a tier scaled to zero waits for a replica to start."""

    @classmethod
    def of(cls, spec: ClusterSpec) -> RetryPolicy:
        g = spec.gateway
        return cls(
            g.retries, g.request_timeout_s, g.failover_timeout_s, spec.router.cold_start_timeout_s
        )

    def backoff_s(self, attempt: int) -> float:
        return min(0.05 * 2**attempt, 0.5)


def attempts(tier: TierSpec, fallback: TierSpec | None, retries: int) -> list[TierSpec]:
    """The tiers tried in order: the tier `1 + retries` times, then its fallback."""
    return [tier] * (1 + retries) + ([fallback] if fallback is not None else [])


async def until_first(
    stream: Stream,
    timeout_s: float,
    give_up_s: float | None = None,
    down: asyncio.Future[Any] | None = None,
    tier: str = "",
) -> EngineItem:
    """The stream's first item. TimeoutError after `timeout_s`; `FailOver` after
    `give_up_s`, or as soon as `down` is set (the tier was marked down). The pending
    read is cancelled on the way out, which closes the engine request."""
    first: asyncio.Future[Any] = asyncio.ensure_future(anext(stream))
    wait_s = timeout_s if give_up_s is None else min(timeout_s, give_up_s)
    try:
        done, _ = await asyncio.wait(
            {first} if down is None else {first, down},
            timeout=wait_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if first in done:
            return first.result()
        if down is not None and down in done:
            raise FailOver(f"tier {tier!r} was marked down while waiting")
        if give_up_s is not None and give_up_s < timeout_s:
            raise FailOver(f"no output within {give_up_s:g} s of a retry")
        raise TimeoutError
    finally:
        if not first.done():
            first.cancel()  # closes the engine request (ServeEngineClient cancels it)
            await asyncio.gather(first, return_exceptions=True)


def _fields(tier: TierSpec) -> frozenset[str] | None:
    """The request fields sent to `tier`: the engine allow-list, or all of them for an
    external tier, whose client keeps its own (`external.forwarded_body`)."""
    return None if tier.is_external else ENGINE_FIELDS


def fallback_within(
    spec: ClusterSpec, tier: TierSpec, allowed: Collection[str] | None
) -> TierSpec | None:
    """`tier`'s fallback tier, if it has one the tenant may use (`allowed`; None: all)."""
    if tier.fallback_tier is None:
        return None
    if allowed is not None and tier.fallback_tier not in allowed:
        return None
    return spec.tier(tier.fallback_tier)


class Failover:
    """Engine calls with retries on the same tier, then failover to its fallback."""

    def __init__(
        self, spec: ClusterSpec, engines: Mapping[str, EngineClient], board: TierBoard
    ) -> None:
        self.spec = spec
        self.engines = engines
        self.board = board
        self.policy = RetryPolicy.of(spec)

    async def first_item(
        self,
        method: Method,
        body: _Generation,
        tier: TierSpec,
        headers: dict[str, str],
        slot: Slot | None = None,
        adapter_id: str | None = None,
        allowed: Collection[str] | None = None,
        deadline: float | None = None,
    ) -> tuple[TierSpec, EngineItem, Stream]:
        """Start the request on `tier` and wait for its first item; the tier that
        answered, the item and the rest of the stream. A move to the fallback updates
        `headers` (tier, `+fallback` reason) and moves `slot`. `allowed`: the tenant's
        tiers (None: all); a fallback outside them is never used. `deadline` (the event
        loop's clock): the request's end-to-end deadline bounds every wait. Raises
        `APIError`."""
        board, policy = self.board, self.policy
        fallback = fallback_within(self.spec, tier, allowed)
        if adapter_id is not None:  # only its own tier has the adapter
            fallback = None
        tries = attempts(tier, fallback, policy.retries)
        last_error: Exception | None = None
        unavailable: EngineUnavailable | None = None  # the tier said no: no retry there
        full: EngineError | None = None  # the tier's queue is full: on to the fallback
        for i, target in enumerate(tries):
            if (unavailable is not None or full is not None) and target.name == tier.name:
                continue
            failover = fallback is not None and target.name == tier.name
            if target.name != tier.name:
                if full is None and (unavailable is None or unavailable.down):
                    # every attempt failed (not a 429, a timeout or a full queue): the
                    # tier is down, and the requests still waiting there fail over too
                    board.mark_down(tier.name)
                if not board.health.get(target.name, True):
                    continue
                if slot is not None and not slot.move_to(target.name):
                    continue  # the fallback tier is at capacity as well
                headers[TIER_HEADER] = target.name
                headers[REASON_HEADER] += "+fallback"
            elif failover and i > 0 and not board.health[tier.name]:
                continue  # marked down meanwhile: straight to the fallback
            timeout = policy.request_timeout_s
            if deadline is not None:
                timeout = min(timeout, max(deadline - asyncio.get_running_loop().time(), 0.0))
            cold = board.is_cold(target.name)
            if cold:  # Serve starts a replica for it; the wait for that is bounded
                timeout = min(timeout, policy.cold_start_timeout_s)
            model = adapter_id if adapter_id is not None else target.model_name
            stream = self.engines[target.name].generate(
                method, dump_for_engine(body, model, True, _fields(target))
            )
            give_up_s = policy.failover_timeout_s if failover and i > 0 else None
            down = board.down_waiter(target.name) if failover else None
            try:
                first = await until_first(stream, timeout, give_up_s, down, target.name)
            except StopAsyncIteration:
                last_error = RuntimeError("empty answer")
                continue
            except FailOver as err:
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
                    board.mark_down(target.name)
                continue
            except Exception as err:  # the replica died or was unreachable: try again
                logger.warning("tier %s attempt %d failed before output: %r", target.name, i, err)
                last_error = err
                await asyncio.sleep(policy.backoff_s(i))
                continue
            finally:
                if down is not None:
                    board.forget(target.name, down)
            if isinstance(first, EngineError):
                await stream.aclose()
                if first.type == OVERLOADED and failover:
                    full = first
                    continue
                status = first.status if 400 <= first.status < 600 else 502
                extra = {"Retry-After": str(RETRY_AFTER_S)} if status in (429, 503) else {}
                raise APIError(status, first.message, code=first.type, headers={**headers, **extra})
            if i > 0:
                board.health[target.name] = True
            return target, first, stream
        if full is not None:  # the fallback was down or full too: the tier's own answer
            raise APIError(
                503,
                full.message,
                code=full.type,
                headers={**headers, "Retry-After": str(RETRY_AFTER_S)},
            )
        if unavailable is not None:  # its own status: 429/502/503/504, Retry-After as given
            extra = {"Retry-After": unavailable.retry_after_s} if unavailable.retry_after_s else {}
            raise APIError(
                unavailable.status,
                unavailable.message,
                code=unavailable.code,
                headers={**headers, **extra},
            )
        logger.warning("tier %s failed after %d attempts: %r", tier.name, len(tries), last_error)
        board.mark_down(tier.name)
        raise APIError(
            503,
            f"tier {tier.name!r} is unavailable; retry shortly",
            code="tier_unavailable",
            headers={**headers, "Retry-After": str(RETRY_AFTER_S)},
        )
