"""Metric definitions: every tierline metric declared once, as plain data (`MetricDef`).

Add a metric by adding one `_c`/`_g`/`_h` line to `DEFINITIONS` (in its section) and a
hook method that records it (`deployments.gateway.observe.metrics`); both recorders build from this
table. Import these names from `tierline.deployments.gateway.observe.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "DECISION_BUCKETS_S",
    "DEFINITIONS",
    "HITS_BUCKETS",
    "LATENCY_BUCKETS_S",
    "RAY_PREFIX",
    "SCORE_BUCKETS",
    "Kind",
    "MetricDef",
    "exported_names",
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
            "bad_input, not_found, forbidden, too_large, loop_share)",
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
        _g(
            "tierline_router_max_quality_loss",
            "The quality-loss bound in force (router.max_quality_loss)",
            "replica",
        ),
        _c(
            "tierline_router_downgraded",
            "Auto requests sent a tier down instead of refused, by the tier taken and why "
            "(load, budget)",
            "tier",
            "reason",
        ),
        _g(
            "tierline_router_load_loss_mean",
            "Mean predicted quality loss of the latest load-downgraded requests",
            "replica",
        ),
        _g(
            "tierline_router_load_loss_budget",
            "The load-loss budget that mean is held to (router.load_downgrade)",
            "replica",
        ),
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
