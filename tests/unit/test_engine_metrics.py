"""`cluster.engine_metrics`: vLLM prefix cache counters per Serve replica from one scrape.

The integration test (tests/integration/scaling/test_prefix_routing.py) reads Ray's real
export with the same parser; here the name variants and the arithmetic are pinned down."""

from __future__ import annotations

from pathlib import Path

import pytest
from tierline.cluster.engine_metrics import PrefixCache, delta, prefix_cache_by_replica, total

ROOT = Path(__file__).resolve().parents[2]
SCRAPE = """\
# HELP ray_vllm:prefix_cache_queries Prefix cache queries, in terms of number of queried tokens.
# TYPE ray_vllm:prefix_cache_queries_total counter
ray_vllm:prefix_cache_queries_total{ReplicaId="aaa",engine="0",model_name="tiny-chat"} 5591.0
ray_vllm:prefix_cache_queries_total{ReplicaId="bbb",engine="0",model_name="tiny-chat"} 10.0
ray_vllm:prefix_cache_queries_total{ReplicaId="ccc",engine="0",model_name="other"} 70.0
# HELP ray_vllm:prefix_cache_hits Prefix cache hits, in terms of number of cached tokens.
# TYPE ray_vllm:prefix_cache_hits_total counter
ray_vllm:prefix_cache_hits_total{ReplicaId="aaa",engine="0",model_name="tiny-chat"} 4096.0
ray_vllm:prefix_cache_hits_total{ReplicaId="bbb",engine="0",model_name="tiny-chat"} 0.0
ray_vllm:prefix_cache_hits_total{ReplicaId="ccc",engine="0",model_name="other"} 64.0
# HELP ray_vllm:external_prefix_cache_hits External prefix cache hits.
# TYPE ray_vllm:external_prefix_cache_hits_total counter
ray_vllm:external_prefix_cache_hits_total{ReplicaId="aaa",engine="0",model_name="tiny-chat"} 9.0
# HELP ray_serve_num_http_requests Requests.
# TYPE ray_serve_num_http_requests_total counter
ray_serve_num_http_requests_total{route="/"} 3.0
"""


def test_counters_per_replica_for_one_model() -> None:
    got = prefix_cache_by_replica(SCRAPE, "tiny-chat")
    assert got == {"aaa": PrefixCache(5591.0, 4096.0), "bbb": PrefixCache(10.0, 0.0)}
    assert got["aaa"].hit_rate == pytest.approx(4096 / 5591)
    assert got["bbb"].hit_rate == 0.0
    assert set(prefix_cache_by_replica(SCRAPE)) == {"aaa", "bbb", "ccc"}


def test_underscore_names_and_engines_add_up() -> None:
    text = "\n".join(
        [
            "# TYPE vllm_prefix_cache_queries counter",
            'vllm_prefix_cache_queries_total{ReplicaId="r",engine="0"} 10',
            'vllm_prefix_cache_queries_total{ReplicaId="r",engine="1"} 5',
            "# TYPE vllm_prefix_cache_hits counter",
            'vllm_prefix_cache_hits_total{ReplicaId="r",engine="0"} 6',
            'vllm_prefix_cache_hits_total{ReplicaId="",engine="0"} 100',
            "",
        ]
    )
    assert prefix_cache_by_replica(text) == {"r": PrefixCache(15.0, 6.0)}  # no replica: dropped


def test_delta_and_total() -> None:
    before = {"a": PrefixCache(10, 5)}
    after = {"a": PrefixCache(30, 20), "b": PrefixCache(4, 0)}
    d = delta(after, before)
    assert d == {"a": PrefixCache(20, 15), "b": PrefixCache(4, 0)}
    assert total(d) == PrefixCache(24, 15)
    assert PrefixCache(0, 0).hit_rate is None


def test_a_real_ray_scrape() -> None:
    """Saved from Ray 2.60's export during `bench/prefix_bench.py` (vLLM 0.29, CPU):
    colons become underscores, and only replicas that looked something up report hits."""
    text = (ROOT / "tests" / "data" / "ray-vllm-prefix-cache.prom").read_text()
    got = prefix_cache_by_replica(text, "tiny-chat")
    assert got == {
        "sqfxzvc3": PrefixCache(10.0, 0.0),
        "syeo1cyi": PrefixCache(44895.0, 35584.0),
    }
    assert prefix_cache_by_replica(text, "another-model") == {}
