"""Prefix-cache affinity routing (`replica_routing: prefix`) on two real replicas.

Where a request went is read from the engines' own metrics: vLLM's prefix cache counters
(tokens looked up, tokens found), which Ray exports per Serve replica (`ReplicaId`).
configs/prefix.yaml is the cluster: one tier, two replicas, prefix caching on.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from tierline.cluster.engine_metrics import PrefixCache, delta, prefix_cache_by_replica, total

from tests.integration.conftest import ROOT
from tests.integration.scaling.conftest import ScalingCluster, running

MODEL = "tiny-chat"


@pytest.fixture(scope="module")
def prefix_cluster() -> Iterator[ScalingCluster]:
    with running(ROOT / "configs" / "prefix.yaml") as c:
        yield c


def _system_prompt(seed: int, words: int = 250) -> str:
    rng = random.Random(seed)
    vocab = [
        "cluster",
        "tier",
        "engine",
        "replica",
        "token",
        "cache",
        "prefix",
        "router",
        "gateway",
        "model",
    ]
    return "You are a careful assistant. " + " ".join(rng.choice(vocab) for _ in range(words))


def _counters(cluster: ScalingCluster) -> dict[str, PrefixCache]:
    return prefix_cache_by_replica(cluster.engine_metrics(), MODEL)


def _quiet(cluster: ScalingCluster) -> dict[str, PrefixCache]:
    """Counters once Ray's export has caught up with earlier requests (the gateway's
    warm-up ones included): unchanged over 15 s of scrapes."""
    last, since = _counters(cluster), time.monotonic()
    deadline = since + 120
    while time.monotonic() - since < 15 and time.monotonic() < deadline:
        time.sleep(3)
        now = _counters(cluster)
        if now != last:
            last, since = now, time.monotonic()
    return last


def _settled(
    cluster: ScalingCluster, before: dict[str, PrefixCache], prompt_tokens: int
) -> dict[str, PrefixCache]:
    """Per-replica counter changes since `before`, once Ray has exported them all: the
    engines look up every prompt token once, so the total reaches `prompt_tokens`."""
    deadline = time.monotonic() + 120
    while True:
        d = delta(_counters(cluster), before)
        if total(d).queries >= prompt_tokens or time.monotonic() > deadline:
            return d
        time.sleep(2)


def _conversation(cluster: ScalingCluster, system: str, turns: int) -> int:
    """A multi-turn chat, one turn after another; returns the prompt tokens sent."""
    client = cluster.client()
    messages: list[Any] = [{"role": "system", "content": system}]
    sent = 0
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Question {turn}: what happens next?"})
        out = client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=12, temperature=0
        )
        assert out.usage is not None
        sent += out.usage.prompt_tokens
        messages.append({"role": "assistant", "content": out.choices[0].message.content or ""})
    return sent


def test_a_conversation_stays_on_one_replica_and_hits_its_cache(
    prefix_cluster: ScalingCluster,
) -> None:
    used: list[str] = []
    for seed in (1, 2):
        before = _quiet(prefix_cluster)
        sent = _conversation(prefix_cluster, _system_prompt(seed), turns=5)
        d = _settled(prefix_cluster, before, sent)
        busy = {r: c for r, c in d.items() if c.queries > 0}
        assert total(d).queries >= sent, (d, sent)
        assert len(busy) == 1, f"conversation {seed} was spread over replicas: {d}"
        ((replica, cache),) = busy.items()
        # Every turn after the first re-sends the shared prefix to the same engine.
        assert cache.hits > 0.5 * cache.queries, cache
        used.append(replica)
    # Two replicas serve (the second conversation has no prefix anywhere yet and goes
    # to the replica holding the least cached text).
    assert len(set(used)) == 2, used


def test_load_is_balanced_when_queues_diverge(prefix_cluster: ScalingCluster) -> None:
    system = _system_prompt(1)
    client = prefix_cluster.client()

    def one(i: int) -> int:
        out = client.chat.completions.create(
            model=MODEL,
            messages=[
                {"role": "system", "content": system},
                {"role": "user", "content": f"Burst request {i}."},
            ],
            max_tokens=128,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        assert out.usage is not None
        return out.usage.prompt_tokens

    before = _quiet(prefix_cluster)
    with ThreadPoolExecutor(24) as pool:
        sent = sum(pool.map(one, range(24)))
    d = _settled(prefix_cluster, before, sent)
    # All 24 share one prefix, but past `prefix_imbalanced_threshold` queued requests
    # the router sends requests to the other replica too.
    assert sum(1 for c in d.values() if c.queries > 0) == 2, d
