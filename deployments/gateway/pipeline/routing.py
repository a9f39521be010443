"""The gateway side of the learned policy: embedding, calibration state, tier load, metrics.

`LearnedRouter` holds what the pure core (`router.learned`) needs between requests: the
scorer (an `Embedder` and a `Head`), the calibration state (passed into the core and
replaced by what it returns), each tier's queue and recent time to first token, and the
Prometheus metrics. The gateway builds one at replica start (`start()` loads the embedder);
nothing here does I/O at import or construction.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tierline.cluster.embedding import Embedder
from tierline.cluster.spec import ClusterSpec, LearnedParams
from tierline.deployments.gateway.engines.engine_client import EngineClient, EngineItem, Method
from tierline.deployments.gateway.observe.metrics import RouterMetrics
from tierline.rag.work import off_loop
from tierline.router.embedders import open_embedder
from tierline.router.embedding import check_probe
from tierline.router.head import Head, prompt_words
from tierline.router.learned import CalibrationState, LearnedPolicy, decide_learned, recalibrate
from tierline.router.profile import load_ttft_priors
from tierline.router.scorer import (
    CALIBRATED_ARTIFACT,
    SHIPPED_ARTIFACT,
    head_loss_bound,
    output_weights,
    share_for_quality,
    tier_quality,
)
from tierline.router.types import Decision, RequestFeatures, TierQuality, TierState

PREFERENCE_HEADER = "x-tierline-preference"
DEFAULT_STRONG_SHARE = 0.3
TTFT_SMOOTHING = 0.2


def artifact_path(params: LearnedParams, bounded: bool = False) -> Path:
    """The head to load: the spec's, else the shipped one (with a quality-loss bound, the
    shipped head that keeps held-out rows to calibrate it on)."""
    if params.artifact:
        return Path(params.artifact).expanduser()
    return CALIBRATED_ARTIFACT if bounded else SHIPPED_ARTIFACT


def learned_policy(spec: ClusterSpec, head: Head) -> LearnedPolicy:
    p = spec.router.learned
    if p.strong_share is not None:
        share = p.strong_share
    elif p.quality_target is not None:
        share = share_for_quality(head, p.quality_target)
    else:
        share = DEFAULT_STRONG_SHARE
    bound = None
    if spec.router.max_quality_loss is not None:  # thresholds from the head's held-out rows
        names = [t.name for t in spec.tiers]
        bound = head_loss_bound(
            head, names, p.tier_outputs, spec.router.max_quality_loss, spec.router.confidence
        )
    return LearnedPolicy(
        strong_share=share,
        prior_quantiles=tuple(float(q) for q in head.calibration_quantiles),
        default_preference=p.default_preference,
        share_factors={
            "cost": p.cost_share_factor,
            "balanced": 1.0,
            "quality": p.quality_share_factor,
            "latency": 1.0,
        },
        window=p.window_requests,
        min_window=min(p.min_window_requests, p.window_requests),
        spill=p.spill_when_overloaded,
        cold_start=spec.router.cold_start,
        bound=bound,
    )


@dataclass
class _TierLoad:
    queued: int = 0
    ttft_s: float | None = None


class LearnedRouter:
    """Scorer + calibration state + tier load for the gateway's learned policy."""

    def __init__(
        self,
        spec: ClusterSpec,
        embedder: Embedder,
        head: Head,
        metrics: RouterMetrics | None = None,
    ) -> None:
        self.spec = spec
        self.embedder = embedder
        self.head = head
        self.policy = learned_policy(spec, head)
        names = [t.name for t in spec.tiers]
        self.weights = output_weights(names, head.outputs, spec.router.learned.tier_outputs)
        self.state = CalibrationState()
        self.load = {n: _TierLoad() for n in names}
        self.metrics = metrics or RouterMetrics()
        if self.policy.bound is None:  # under a bound, the share is what the bound keeps
            self.metrics.target(self.policy.strong_share)
        else:
            self.metrics.bound(self.policy.bound.max_quality_loss)

    @classmethod
    def start(
        cls, spec: ClusterSpec, threads: int | None = 1, metrics: RouterMetrics | None = None
    ) -> LearnedRouter:
        """Replica start-up: load the scorer and the embedder it names (about a second;
        the static MiniLM table is distilled first, about 20 s, if it is not cached)."""
        bounded = spec.router.max_quality_loss is not None
        head = Head.load(artifact_path(spec.router.learned, bounded))
        embedder = open_embedder(head.embedder, threads)
        if "probe" in head.meta:
            check_probe(embedder, head.meta["probe"])
        router = cls(spec, embedder, head, metrics)
        if spec.router.learned.profile:
            router.seed_ttft(load_ttft_priors(Path(spec.router.learned.profile).expanduser()))
        return router

    def seed_ttft(self, priors: Mapping[str, float]) -> None:
        """Measured time to first token (a `tierline profile`) for tiers not yet timed."""
        for name, seconds in priors.items():
            if name in self.load and self.load[name].ttft_s is None:
                self.load[name].ttft_s = seconds

    # -- signals ---------------------------------------------------------------------------
    def quality(self, text: str) -> TierQuality:
        """Predicted quality per tier for one prompt (blocking: embedding on the CPU), with
        its traffic class when a per-class quality-loss bound is in force."""
        emb = self.embedder.embed([text])[0]
        probs = self.head.predict(self.head.features(emb, prompt_words(text)))[0]
        bound = self.policy.bound
        traffic_class = self.head.traffic_class(emb) if bound and bound.classes else None
        return TierQuality(tier_quality(probs, self.weights), traffic_class)

    async def quality_async(self, text: str) -> TierQuality:
        """`quality` off the event loop."""
        return await off_loop(self.quality, text)

    def tier_states(self, states: Sequence[TierState]) -> list[TierState]:
        out = []
        for s in states:
            tier = self.spec.tier(s.name)
            load = self.load[s.name]
            limit = tier.max_ongoing_requests * (s.replicas or tier.num_replicas)
            if tier.external is not None:  # the provider's share of this gateway
                limit = tier.external.max_concurrency
            if (
                s.overloaded
            ):  # at the gateway's admission limit (deployments.gateway.pipeline.admission)
                out.append(replace(s, ttft_s=load.ttft_s))
                continue
            out.append(replace(s, queued=load.queued, queue_limit=limit, ttft_s=load.ttft_s))
        return out

    # -- deciding --------------------------------------------------------------------------
    def decide(
        self,
        features: RequestFeatures,
        states: Sequence[TierState],
        preference: str | None,
        quality: Mapping[str, float] | None = None,
    ) -> Decision:
        """One auto decision; advances the calibration state (the only mutation) when
        there was a choice between tiers."""
        t0 = time.perf_counter()
        if quality is None:
            quality = self.quality(features.text)
        tiers = self.tier_states(states)
        names = {t.name for t in tiers}
        feats = replace(
            features,
            quality={k: v for k, v in quality.items() if k in names},
            preference=preference,
            traffic_class=getattr(quality, "traffic_class", None),
        )
        decision = decide_learned(feats, tiers, self.policy, self.state)
        # A request with one candidate (its capabilities or its tenant left one tier) was
        # no choice: it would teach the calibration that nothing was sent up.
        if len(tiers) > 1:
            self.state = recalibrate(self.state, decision, tiers[0].name, self.policy)
        threshold = decision.threshold
        if threshold is not None and not np.isfinite(threshold):
            threshold = None
        self.metrics.decision(
            decision.tier,
            decision.reason,
            decision.score,
            time.perf_counter() - t0,
            self.state.realised_share,
            threshold,
        )
        return decision

    # -- load, latency and cost tracking ------------------------------------------------------
    def wrap(self, engines: Mapping[str, EngineClient]) -> dict[str, EngineClient]:
        return {name: _TrackedEngine(name, client, self) for name, client in engines.items()}

    def first_token(self, tier: str, seconds: float) -> None:
        load = self.load[tier]
        load.ttft_s = (
            seconds
            if load.ttft_s is None
            else (1 - TTFT_SMOOTHING) * load.ttft_s + TTFT_SMOOTHING * seconds
        )


class _TrackedEngine:
    """An `EngineClient` that records queueing, time to first token and token usage."""

    def __init__(self, tier: str, inner: EngineClient, router: LearnedRouter) -> None:
        self.tier = tier
        self.inner = inner
        self.router = router

    async def healthy(self, timeout_s: float) -> bool:
        return await self.inner.healthy(timeout_s)

    async def generate(
        self, method: Method, body: dict[str, Any]
    ) -> AsyncGenerator[EngineItem, None]:
        load = self.router.load[self.tier]
        load.queued += 1
        waiting = True
        t0 = time.perf_counter()
        stream = self.inner.generate(method, body)
        try:
            async for item in stream:
                if waiting:
                    waiting = False
                    load.queued -= 1
                    self.router.first_token(self.tier, time.perf_counter() - t0)
                yield item
        finally:
            if waiting:
                load.queued -= 1
            await stream.aclose()
