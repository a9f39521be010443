"""vLLM engine metrics as Ray exports them, parsed per replica.

Ray Serve LLM's engines (`log_engine_metrics: true`) record vLLM's metrics through Ray's
metrics API, tagged with the Serve replica (`ReplicaId`); every Ray node serves them in
Prometheus text at its metrics export port. `prefix_cache_by_replica` reads the prefix
cache counters (vLLM 0.29: `vllm:prefix_cache_queries` and `vllm:prefix_cache_hits`,
in tokens) out of one scrape. Pure: text in, numbers out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class PrefixCache:
    queries: float
    """Prompt tokens looked up in the prefix cache."""
    hits: float
    """Of those, tokens found there (their KV blocks were reused)."""

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.queries if self.queries else None

    def __sub__(self, other: PrefixCache) -> PrefixCache:
        return PrefixCache(self.queries - other.queries, self.hits - other.hits)


def _kind(name: str) -> str | None:
    flat = name.replace(":", "_")
    if "external" in flat or "connector" in flat:
        return None
    for kind in ("queries", "hits"):
        if flat.endswith(f"prefix_cache_{kind}") or flat.endswith(f"prefix_cache_{kind}_total"):
            return kind
    return None


def prefix_cache_by_replica(scrape: str, model: str | None = None) -> dict[str, PrefixCache]:
    """Replica id -> its prefix cache counters, from one Prometheus text scrape.

    `model` keeps only the engines serving that model name (vLLM's `model_name` label)."""
    totals: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(scrape):
        for sample in family.samples:
            kind = _kind(sample.name)
            if kind is None or sample.name.endswith("_created"):
                continue
            labels: Mapping[str, str] = sample.labels
            if model is not None and labels.get("model_name", model) != model:
                continue
            replica = labels.get("ReplicaId") or ""
            slot = totals.setdefault(replica, {"queries": 0.0, "hits": 0.0})
            slot[kind] += float(sample.value)
    return {r: PrefixCache(v["queries"], v["hits"]) for r, v in totals.items() if r}


def total(caches: Mapping[str, PrefixCache]) -> PrefixCache:
    return PrefixCache(
        sum(c.queries for c in caches.values()), sum(c.hits for c in caches.values())
    )


def delta(
    after: Mapping[str, PrefixCache], before: Mapping[str, PrefixCache]
) -> dict[str, PrefixCache]:
    """Per-replica change between two scrapes (replicas new since `before` start at 0)."""
    zero = PrefixCache(0.0, 0.0)
    return {r: c - before.get(r, zero) for r, c in after.items()}
