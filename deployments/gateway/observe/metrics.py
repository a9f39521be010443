"""tierline's own metrics: one table of definitions, two recorders, small hook objects.

Every metric is declared once in `DEFINITIONS` as plain data (`MetricDef`). A `Recorder`
turns the hooks' calls into samples:

- `RayRecorder` (production) records through `ray.util.metrics`. Every Ray process ships
  its samples to the metrics agent of its node, which aggregates them across workers and
  serves them on the node's metrics export port (8080 on the Helm chart's pods, the port
  `tierline.cli.local` picks locally). So with several gateway replicas one scrape of each node
  sees every replica's counts, never one random replica's. Ray names what it exports
  `ray_<name>` (as it does for `ray_serve_*` and the engines' `ray_vllm_*`): the gateway's
  request counter is scraped as `ray_tierline_gateway_requests_total`. `exported_names`
  gives the names as scraped.
- `PromRecorder` keeps the same metrics in a prometheus_client registry of its own: the
  honest in-memory recorder of unit tests and of code that runs outside Ray.

The hook objects (`GatewayMetrics`, `RouterMetrics`, `RagMetrics`) hold no state beyond
their recorder; the pure helpers (`reason_kind`, `rejection_reason`, `token_cost`) decide
the label values, so label cardinality stays bounded (no free text, no request ids).

The definitions live in `deployments.gateway.observe.metric_defs` (the `DEFINITIONS` table,
`MetricDef`, bucket bounds, `exported_names`; re-exported here); this module holds the recorders,
the pure label helpers, the hook objects and `MeteredEngine`. A new metric is one line in
`metric_defs.DEFINITIONS` plus the hook method that records it here. Import any of these names from
`tierline.deployments.gateway.observe.metrics`.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncGenerator, Mapping
from typing import Any, Protocol

from tierline.cluster.spec import ClusterSpec
from tierline.deployments.gateway.engines.engine_client import (
    EngineClient,
    EngineError,
    EngineItem,
    Method,
    usage_of,
)
from tierline.deployments.gateway.observe.metric_defs import (
    DECISION_BUCKETS_S,
    DEFINITIONS,
    HITS_BUCKETS,
    LATENCY_BUCKETS_S,
    RAY_PREFIX,
    SCORE_BUCKETS,
    Kind,
    MetricDef,
    exported_names,
)
from tierline.deployments.logs import current_tenant

__all__ = [
    "DECISION_BUCKETS_S",
    "DEFINITIONS",
    "HITS_BUCKETS",
    "LATENCY_BUCKETS_S",
    "RAY_PREFIX",
    "SCORE_BUCKETS",
    "GatewayMetrics",
    "Kind",
    "MeteredEngine",
    "MetricDef",
    "PromRecorder",
    "RagMetrics",
    "RayRecorder",
    "Recorder",
    "RouterMetrics",
    "error_kind",
    "exported_names",
    "metered",
    "reason_kind",
    "rejection_reason",
    "token_cost",
]


# -- recorders -------------------------------------------------------------------------------
class Recorder(Protocol):
    def inc(self, name: str, value: float, tags: Mapping[str, str]) -> None: ...

    def set(self, name: str, value: float, tags: Mapping[str, str]) -> None: ...

    def observe(self, name: str, value: float, tags: Mapping[str, str]) -> None: ...


class RayRecorder:
    """Records through `ray.util.metrics` (inside Ray workers: Serve replicas).

    Ray's metrics agent drops a gauge value that was not set again within two export
    intervals (about 20 s by default): `keep_gauges` sets the last values again every
    few seconds, so a gauge that rarely changes (a share, a queue at 0) stays visible."""

    def __init__(self, definitions: Mapping[str, MetricDef] = DEFINITIONS) -> None:
        from ray.util import metrics as rm

        self._gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._metrics: dict[str, Any] = {}
        for d in definitions.values():
            if d.kind == "counter":
                self._metrics[d.name] = rm.Counter(d.name, d.help, d.labels)
            elif d.kind == "gauge":
                self._metrics[d.name] = rm.Gauge(d.name, d.help, d.labels)
            else:
                self._metrics[d.name] = rm.Histogram(d.name, d.help, list(d.buckets), d.labels)

    def inc(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        if value > 0:  # Ray refuses increments of 0
            self._metrics[name].inc(float(value), dict(tags))

    def set(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        self._gauges[(name, tuple(sorted(tags.items())))] = float(value)
        self._metrics[name].set(float(value), dict(tags))

    def observe(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        # OpenTelemetry histograms drop negative values: count them in the first bucket.
        self._metrics[name].observe(max(0.0, float(value)), dict(tags))

    def refresh(self) -> None:
        """Set every gauge to its last value again."""
        for (name, tags), value in list(self._gauges.items()):
            self._metrics[name].set(value, dict(tags))

    async def keep_gauges(self, period_s: float = 5.0) -> None:
        """Run for the replica's life (a task the gateway starts): `refresh` every period."""
        while True:
            self.refresh()
            await asyncio.sleep(period_s)


class PromRecorder:
    """The same metrics in a prometheus_client registry of its own (no module globals)."""

    def __init__(self, definitions: Mapping[str, MetricDef] = DEFINITIONS) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self._metrics: dict[str, Any] = {}
        for d in definitions.values():
            name = RAY_PREFIX + d.name  # named as Ray exports them, so scrapes look alike
            if d.kind == "counter":
                m: Any = Counter(name, d.help, d.labels, registry=self.registry)
            elif d.kind == "gauge":
                m = Gauge(name, d.help, d.labels, registry=self.registry)
            else:
                m = Histogram(name, d.help, d.labels, buckets=d.buckets, registry=self.registry)
            self._metrics[d.name] = m

    def _labelled(self, name: str, tags: Mapping[str, str]) -> Any:
        m = self._metrics[name]
        return m.labels(**tags) if tags else m

    def inc(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        if value > 0:
            self._labelled(name, tags).inc(value)

    def set(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        self._labelled(name, tags).set(value)

    def observe(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        self._labelled(name, tags).observe(max(0.0, value))  # as RayRecorder

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def value(self, sample: str, **labels: str) -> float:
        """One sample's value (0 when absent), e.g. `value("ray_..._total", tier="small")`."""
        got = self.registry.get_sample_value(sample, labels)
        return float(got) if got is not None else 0.0


# -- label values (pure) ---------------------------------------------------------------------
_REASON = re.compile(
    r"^(none|pinned|rejected(:[a-z0-9_]+)?|auto:[a-z-]+(:[a-z]+)?|downgraded:(load|budget))"
    r"(\+[a-z-]+)*$"
)
_REJECTIONS = {
    401: "auth",
    403: "forbidden",
    404: "not_found",
    413: "too_large",
    429: "quota",
}


def reason_kind(reason: str) -> str:
    """The route reason as a label: the code-made reasons as they are, anything else
    `other` (the reasons are built from a fixed vocabulary, so this stays bounded). What
    follows a `;` (a downgrade's `expected_loss=...`) is a value, not part of the label."""
    reason = reason.split(";", 1)[0]
    return reason if len(reason) <= 64 and _REASON.match(reason) else "other"


def rejection_reason(status: int, code: str | None) -> str | None:
    """Why a request was refused before serving, or None when the failure is ours
    (an engine error, a timeout, a tier down): those count as errors, not rejections."""
    if code == "draining":
        return "drain"
    if code in ("overloaded", "tier_at_capacity"):
        return "backpressure"
    if code == "loop_share_exceeded":
        return "loop_share"
    if status in _REJECTIONS:
        return _REJECTIONS[status]
    if 400 <= status < 500:
        return "bad_input"
    return None


def error_kind(status: int, code: str | None) -> str:
    if status == 504:
        return "timeout"
    if code == "tier_unavailable":
        return "unavailable"
    if code == "stream_error":
        return "stream_broken"
    return "engine_error" if status < 500 or status in (502, 503) else "internal"


def token_cost(spec: ClusterSpec, tier: str, prompt: int, completion: int) -> tuple[float, float]:
    """(cost at the tier's prices, cost at the most expensive tier's prices), in USD."""
    t = spec.tier(tier)
    top = max(
        spec.tiers,
        key=lambda x: x.price_per_1m_input_tokens + x.price_per_1m_output_tokens,
    )
    cost = (prompt * t.price_per_1m_input_tokens + completion * t.price_per_1m_output_tokens) / 1e6
    top_cost = (
        prompt * top.price_per_1m_input_tokens + completion * top.price_per_1m_output_tokens
    ) / 1e6
    return cost, top_cost


# -- hooks -----------------------------------------------------------------------------------
class GatewayMetrics:
    """The gateway's hooks: one call per event, label values decided here."""

    def __init__(self, spec: ClusterSpec, recorder: Recorder, replica: str = "") -> None:
        self.spec = spec
        self.recorder = recorder
        self.replica = replica
        self.rag = RagMetrics(recorder)
        self.waiting = {t.name: 0 for t in spec.tiers}  # engine calls without output yet

    def answered(
        self, tier: str, reason: str, tenant: str, status: int, seconds: float | None
    ) -> None:
        kind = reason_kind(reason)
        r = self.recorder
        tags = {"tier": tier, "reason": kind, "tenant": tenant, "status": str(status)}
        r.inc("tierline_gateway_requests", 1, tags)
        if seconds is not None:
            r.observe(
                "tierline_gateway_request_duration_seconds", seconds, {"tier": tier, "reason": kind}
            )

    def failed(self, status: int, code: str | None, tier: str, reason: str, tenant: str) -> None:
        """A request that ended in an error answer: a rejection or an error, and a request."""
        why = rejection_reason(status, code)
        if why is not None:
            self.rejected(why, tenant)
        else:
            self.recorder.inc(
                "tierline_gateway_errors", 1, {"tier": tier, "kind": error_kind(status, code)}
            )
        self.answered(tier, reason, tenant, status, None)

    def rejected(self, why: str, tenant: str) -> None:
        self.recorder.inc("tierline_gateway_rejections", 1, {"reason": why, "tenant": tenant})

    def engine_error(self, tier: str, kind: str) -> None:
        self.recorder.inc("tierline_gateway_errors", 1, {"tier": tier, "kind": kind})

    def first_output(self, tier: str, seconds: float) -> None:
        self.recorder.observe("tierline_gateway_ttft_seconds", seconds, {"tier": tier})

    def usage(self, tier: str, tenant: str, prompt: int, completion: int) -> None:
        r = self.recorder
        r.inc("tierline_gateway_prompt_tokens", prompt, {"tier": tier, "tenant": tenant})
        r.inc("tierline_gateway_completion_tokens", completion, {"tier": tier, "tenant": tenant})
        cost, top_cost = token_cost(self.spec, tier, prompt, completion)
        r.inc("tierline_gateway_estimated_cost_usd", cost, {"tier": tier, "tenant": tenant})
        r.inc("tierline_gateway_all_top_tier_cost_usd", top_cost, {"tenant": tenant})
        r.inc("tierline_gateway_estimated_saving_usd", top_cost - cost, {"tenant": tenant})

    def embedded(self, tier: str, tenant: str, tokens: int, cost_usd: float) -> None:
        """An embeddings request's tokens and cost (its tier label: `embeddings`)."""
        r = self.recorder
        r.inc("tierline_gateway_prompt_tokens", tokens, {"tier": tier, "tenant": tenant})
        r.inc("tierline_gateway_estimated_cost_usd", cost_usd, {"tier": tier, "tenant": tenant})

    def store_failed(self, tenant: str) -> None:
        """A Responses answer that was given but could not be stored."""
        self.recorder.inc("tierline_responses_store_failures", 1, {"tenant": tenant})

    def active(self, n: int) -> None:
        self.recorder.set("tierline_gateway_active_requests", n, {"replica": self.replica})

    def downgraded(self, tier: str, kind: str) -> None:
        """An auto request sent down to `tier` instead of refused (`load`, `budget`)."""
        self.recorder.inc("tierline_router_downgraded", 1, {"tier": tier, "reason": kind})

    def load_loss(self, mean: float, budget: float) -> None:
        """The load-loss ledger's mean predicted loss, and the budget it is held to."""
        rep = {"replica": self.replica}
        self.recorder.set("tierline_router_load_loss_mean", mean, rep)
        self.recorder.set("tierline_router_load_loss_budget", budget, rep)

    def waiting_change(self, tier: str, delta: int) -> None:
        n = self.waiting[tier] = max(0, self.waiting.get(tier, 0) + delta)
        self.recorder.set(
            "tierline_tier_queued_requests", n, {"tier": tier, "replica": self.replica}
        )


class RouterMetrics:
    """The learned router's hooks. Default: an in-memory `PromRecorder` (see `text`)."""

    def __init__(self, recorder: Recorder | None = None, replica: str = "") -> None:
        self.recorder: Recorder = recorder if recorder is not None else PromRecorder()
        self.replica = replica

    def target(self, share: float) -> None:
        self.recorder.set("tierline_router_target_strong_share", share, {"replica": self.replica})

    def bound(self, max_quality_loss: float) -> None:
        """The quality-loss bound in force (set once, at start)."""
        rep = {"replica": self.replica}
        self.recorder.set("tierline_router_max_quality_loss", max_quality_loss, rep)

    def decision(
        self,
        tier: str,
        reason: str,
        score: float,
        seconds: float,
        realised_share: float,
        threshold: float | None,
    ) -> None:
        r = self.recorder
        rep = {"replica": self.replica}
        r.observe("tierline_router_decision_seconds", seconds, {})
        r.inc("tierline_router_requests", 1, {"tier": tier, "reason": reason_kind(reason)})
        r.observe("tierline_router_score", score, {})
        r.set("tierline_router_realised_strong_share", realised_share, rep)
        if threshold is not None:
            r.set("tierline_router_threshold", threshold, rep)

    def text(self) -> bytes:
        """The metrics page of an in-memory recorder (empty for Ray's)."""
        return self.recorder.text() if isinstance(self.recorder, PromRecorder) else b""


class RagMetrics:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def retrieval(self, seconds: float, hits: int | None) -> None:
        outcome = "error" if hits is None else ("ok" if hits > 0 else "empty")
        r = self.recorder
        r.inc("tierline_rag_retrievals", 1, {"outcome": outcome})
        r.observe("tierline_rag_retrieval_seconds", seconds, {"outcome": outcome})
        if hits is not None:
            r.observe("tierline_rag_hits", hits, {})


# -- an engine client that measures --------------------------------------------------------
class MeteredEngine:
    """An `EngineClient` that records time to first output, tokens, cost and engine
    errors for its tier. The tenant comes from the request context (`deployments.logs`)."""

    def __init__(self, tier: str, inner: EngineClient, metrics: GatewayMetrics) -> None:
        self.tier = tier
        self.inner = inner
        self.metrics = metrics

    async def healthy(self, timeout_s: float) -> bool:
        return await self.inner.healthy(timeout_s)

    async def generate(
        self, method: Method, body: dict[str, Any]
    ) -> AsyncGenerator[EngineItem, None]:
        tenant = current_tenant()
        t0 = time.perf_counter()
        first = True
        self.metrics.waiting_change(self.tier, +1)
        stream = self.inner.generate(method, body)
        try:
            async for item in stream:
                if first:
                    first = False
                    self.metrics.waiting_change(self.tier, -1)
                    if isinstance(item, EngineError):
                        self.metrics.engine_error(self.tier, f"engine_{item.status}")
                    else:
                        self.metrics.first_output(self.tier, time.perf_counter() - t0)
                usage = usage_of(item)
                if usage is not None:
                    self.metrics.usage(
                        self.tier,
                        tenant,
                        int(usage.get("prompt_tokens") or 0),
                        int(usage.get("completion_tokens") or 0),
                    )
                yield item
        except Exception:  # cancellation and GeneratorExit are not failures
            self.metrics.engine_error(self.tier, "engine_failure")
            raise
        finally:
            if first:
                self.metrics.waiting_change(self.tier, -1)
            await stream.aclose()


def metered(
    engines: Mapping[str, EngineClient], metrics: GatewayMetrics
) -> dict[str, EngineClient]:
    return {name: MeteredEngine(name, client, metrics) for name, client in engines.items()}
