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
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from tierline.cluster.spec import ClusterSpec
from tierline.deployments.engine_client import (
    EngineClient,
    EngineError,
    EngineItem,
    Method,
    usage_of,
)
from tierline.deployments.logs import current_tenant

__all__ = [
    "DEFINITIONS",
    "RAY_PREFIX",
    "GatewayMetrics",
    "MeteredEngine",
    "MetricDef",
    "PromRecorder",
    "RagMetrics",
    "RayRecorder",
    "Recorder",
    "RouterMetrics",
    "exported_names",
    "reason_kind",
    "rejection_reason",
    "token_cost",
]

Kind = Literal["counter", "gauge", "histogram"]
RAY_PREFIX = "ray_"

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DECISION_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5)
# Ray's histograms take positive bounds only and OpenTelemetry drops negative values, so
# scores are clipped at 0: negative ones (the cheapest tier predicted better) land in the
# first bucket, and the histogram's sum counts them as 0.
SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))
HITS_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


@dataclass(frozen=True)
class MetricDef:
    """One metric: its name without Ray's prefix and, for counters, without `_total`."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


def _c(name: str, help: str, *labels: str) -> MetricDef:
    return MetricDef(name, "counter", help, labels)


def _g(name: str, help: str, *labels: str) -> MetricDef:
    return MetricDef(name, "gauge", help, labels)


def _h(name: str, help: str, buckets: tuple[float, ...], *labels: str) -> MetricDef:
    return MetricDef(name, "histogram", help, labels, buckets)


DEFINITIONS: dict[str, MetricDef] = {
    d.name: d
    for d in (
        # -- gateway -------------------------------------------------------------------------
        _c(
            "tierline_gateway_requests",
            "Generation requests answered, by tier, route reason, tenant and HTTP status",
            "tier",
            "reason",
            "tenant",
            "status",
        ),
        _c(
            "tierline_gateway_rejections",
            "Requests refused before reaching an engine (auth, quota, backpressure, drain, "
            "bad_input, not_found, forbidden, too_large)",
            "reason",
            "tenant",
        ),
        _c(
            "tierline_gateway_errors",
            "Failures on the serving side (engine errors, timeouts, unavailable tiers, "
            "broken streams)",
            "tier",
            "kind",
        ),
        _h(
            "tierline_gateway_request_duration_seconds",
            "Gateway time from routing to the last byte of the answer",
            LATENCY_BUCKETS_S,
            "tier",
            "reason",
        ),
        _h(
            "tierline_gateway_ttft_seconds",
            "Time from the engine call to the first output (whole answer when not streaming)",
            LATENCY_BUCKETS_S,
            "tier",
        ),
        _c("tierline_gateway_prompt_tokens", "Prompt tokens served", "tier", "tenant"),
        _c("tierline_gateway_completion_tokens", "Completion tokens served", "tier", "tenant"),
        _c(
            "tierline_gateway_estimated_cost_usd",
            "Estimated cost of the served tokens at the tier's prices",
            "tier",
            "tenant",
        ),
        _c(
            "tierline_gateway_all_top_tier_cost_usd",
            "Estimated cost had the same tokens gone to the most expensive tier",
            "tenant",
        ),
        _c(
            "tierline_gateway_estimated_saving_usd",
            "Estimated saving against sending everything to the most expensive tier",
            "tenant",
        ),
        _g(
            "tierline_gateway_active_requests",
            "Requests in flight in one gateway replica",
            "replica",
        ),
        _g(
            "tierline_tier_queued_requests",
            "Requests a gateway replica has sent to a tier that have not produced output yet",
            "tier",
            "replica",
        ),
        _c(
            "tierline_responses_store_failures",
            "Responses answered but not stored (the store write failed; the answer says "
            "store: false)",
            "tenant",
        ),
        # -- router --------------------------------------------------------------------------
        _c("tierline_router_requests", "Routing decisions by tier and reason", "tier", "reason"),
        _g(
            "tierline_router_realised_strong_share",
            "Share of auto requests sent above the cheapest tier (calibration window)",
            "replica",
        ),
        _g("tierline_router_target_strong_share", "Configured target share", "replica"),
        _g("tierline_router_threshold", "Calibrated score threshold (last decision)", "replica"),
        _h(
            "tierline_router_score",
            "Routing score: predicted quality gain of leaving the cheapest tier",
            SCORE_BUCKETS,
        ),
        _h(
            "tierline_router_decision_seconds",
            "Embedding plus decision time",
            DECISION_BUCKETS_S,
        ),
        # -- RAG -----------------------------------------------------------------------------
        _h(
            "tierline_rag_retrieval_seconds",
            "Retrieval time of a grounded chat (embedding + hybrid search)",
            LATENCY_BUCKETS_S,
            "outcome",
        ),
        _h("tierline_rag_hits", "Chunks retrieved per grounded chat", HITS_BUCKETS),
        _c("tierline_rag_retrievals", "Retrievals by outcome (ok, empty, error)", "outcome"),
    )
}


def exported_names(d: MetricDef, prefix: str = RAY_PREFIX) -> list[str]:
    """The sample names a scrape shows for `d` (Ray's exporter adds `prefix`)."""
    base = prefix + d.name
    if d.kind == "counter":
        return [base + "_total"]
    if d.kind == "histogram":
        return [base + "_bucket", base + "_sum", base + "_count"]
    return [base]


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
_REASON = re.compile(r"^(none|pinned|rejected(:[a-z0-9_]+)?|auto:[a-z-]+(:[a-z]+)?)(\+[a-z-]+)*$")
_REJECTIONS = {
    401: "auth",
    403: "forbidden",
    404: "not_found",
    413: "too_large",
    429: "quota",
}


def reason_kind(reason: str) -> str:
    """The route reason as a label: the code-made reasons as they are, anything else
    `other` (the reasons are built from a fixed vocabulary, so this stays bounded)."""
    return reason if len(reason) <= 64 and _REASON.match(reason) else "other"


def rejection_reason(status: int, code: str | None) -> str | None:
    """Why a request was refused before serving, or None when the failure is ours
    (an engine error, a timeout, a tier down): those count as errors, not rejections."""
    if code == "draining":
        return "drain"
    if code in ("overloaded", "tier_at_capacity"):
        return "backpressure"
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
