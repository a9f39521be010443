"""`tierline status`'s pure parts on a saved real scrape and on small synthetic ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console
from tierline.cli.status import Sample, Scrape, parse_samples, render, summary

SCRAPE = Path(__file__).resolve().parents[1] / "data" / "metrics" / "local-cpu-scrape.prom"
TIERS = ["small", "large"]


def real(at_s: float = 100.0) -> Scrape:
    return Scrape(at_s, tuple(parse_samples(SCRAPE.read_text())))


def test_summary_of_a_real_local_scrape() -> None:
    # That run: one auto and one pinned request on small, one auto on large, one bad key.
    s = summary(
        real(),
        None,
        TIERS,
        ready={"small": True, "large": True},
        served_names={"small": "tiny-small", "large": "tiny-large"},
    )
    small, large = s.tiers
    assert (small.tier, large.tier) == ("small", "large")
    assert (small.requests, large.requests) == (2, 1)
    assert small.route_share == pytest.approx(2 / 3)
    assert large.route_share == pytest.approx(1 / 3)
    assert (small.replicas_healthy, small.replicas_total) == (1, 1)
    assert (large.replicas_healthy, large.replicas_total) == (1, 1)
    assert small.running == 0 and small.queued == 0
    assert small.tokens_per_s is None  # a rate needs two scrapes
    assert s.requests == 4 and s.rejections == 1
    assert s.saving_usd == pytest.approx(s.all_top_tier_cost_usd - s.cost_usd)
    assert s.realised_strong_share == pytest.approx(0.5)
    assert s.gpus == []  # a CPU machine
    json.dumps(s.as_json())  # serialisable for --json


def _synthetic(at_s: float, small_tokens: float, gpus: bool = False) -> Scrape:
    samples = [
        Sample("ray_tierline_gateway_requests_total", {"tier": "small", "tenant": "a"}, 30),
        Sample("ray_tierline_gateway_requests_total", {"tier": "small", "tenant": "b"}, 30),
        Sample("ray_tierline_gateway_requests_total", {"tier": "large", "tenant": "a"}, 20),
        Sample("ray_tierline_gateway_requests_total", {"tier": "none", "tenant": "none"}, 5),
        Sample(
            "ray_tierline_gateway_completion_tokens_total",
            {"tier": "small", "tenant": "a"},
            small_tokens,
        ),
        Sample("ray_tierline_tier_queued_requests", {"tier": "large", "replica": "g1"}, 3),
        Sample("ray_tierline_tier_queued_requests", {"tier": "large", "replica": "g2"}, 4),
        Sample(
            "ray_serve_deployment_replica_healthy", {"deployment": "tier-large", "replica": "x"}, 1
        ),
        Sample(
            "ray_serve_deployment_replica_healthy", {"deployment": "tier-large", "replica": "y"}, 0
        ),
        Sample(
            "ray_serve_deployment_replica_healthy", {"deployment": "tier-small", "replica": "z"}, 1
        ),
        Sample("ray_serve_deployment_replica_healthy", {"deployment": "gateway"}, 1),
    ]
    if gpus:
        gpu = {"instance": "n1:8080", "GpuIndex": "0", "GpuDeviceName": "NVIDIA H100"}
        samples += [
            Sample("ray_node_gram_used", gpu, 40 * 1024),  # MiB
            Sample("ray_node_gram_available", gpu, 40 * 1024),
            Sample("ray_node_gpus_utilization", gpu, 75.0),  # percent
        ]
    return Scrape(at_s, tuple(samples))


def test_rates_shares_replicas_and_queues() -> None:
    prev, cur = _synthetic(10.0, 100), _synthetic(14.0, 300)
    s = summary(cur, prev, TIERS)
    small, large = s.tiers
    assert small.tokens_per_s == pytest.approx(50.0)
    assert large.tokens_per_s == 0.0
    assert small.route_share == pytest.approx(0.75) and large.route_share == pytest.approx(0.25)
    assert (large.replicas_healthy, large.replicas_total) == (1, 2)
    assert (small.replicas_healthy, small.replicas_total) == (1, 1)
    assert large.queued == 7  # summed over gateway replicas
    assert small.ready is None and small.running is None  # no gateway answers given


def test_gpu_rows_from_rays_node_gauges() -> None:
    s = summary(_synthetic(1.0, 0, gpus=True), None, TIERS)
    (g,) = s.gpus
    assert g.memory_used_bytes == 40 * 2**30
    assert g.memory_total_bytes == 80 * 2**30
    assert g.utilization_ratio == pytest.approx(0.75)
    assert g.name == "NVIDIA H100"


def test_render_shows_every_tier_and_the_saving() -> None:
    s = summary(real(), None, TIERS, ready={"small": True, "large": False})
    console = Console(record=True, width=140)
    console.print(render(s))
    text = console.export_text()
    for needed in ("small", "large", "1/1", "67%", "33%", "saved $0.000058", "no"):
        assert needed in text, needed
    s = summary(_synthetic(1.0, 0, gpus=True), None, TIERS)
    console = Console(record=True, width=140)
    console.print(render(s))
    assert "40.0/80.0 GiB" in console.export_text()


def test_the_bound_in_force_the_live_cheap_share_and_the_downgrades() -> None:
    def sample(name: str, value: float, **labels: str) -> Sample:
        return Sample(name, labels, value)

    requests = "ray_tierline_gateway_requests_total"
    samples = (
        sample(requests, 6, tier="small", reason="auto:learned:balanced", status="200"),
        sample(requests, 2, tier="small", reason="downgraded:load", status="200"),
        sample(requests, 2, tier="large", reason="auto:learned:balanced+spill", status="200"),
        sample(requests, 50, tier="large", reason="pinned", status="200"),  # not auto
        sample("ray_tierline_router_max_quality_loss", 0.1, replica="a"),
        sample("ray_tierline_router_downgraded_total", 2, tier="small", reason="load"),
        sample("ray_tierline_router_downgraded_total", 1, tier="small", reason="budget"),
        sample("ray_tierline_router_load_loss_mean", 0.02, replica="a"),
        sample("ray_tierline_router_load_loss_mean", 0.04, replica="b"),
        sample("ray_tierline_router_load_loss_budget", 0.1, replica="a"),
    )
    s = summary(Scrape(1.0, samples), None, TIERS)
    assert s.max_quality_loss == pytest.approx(0.1)
    assert s.cheap_share == pytest.approx(0.8)
    assert s.downgraded == {"load": 2, "budget": 1}
    assert s.load_loss_mean == pytest.approx(0.04)  # the worst replica
    console = Console(record=True, width=160)
    console.print(render(s))
    text = console.export_text()
    for needed in ("loss bound 0.10", "cheap share 80%", "budget 1 load 2", "0.040 (budget 0.10)"):
        assert needed in text, needed
    bare = summary(Scrape(1.0, ()), None, TIERS)
    assert (bare.max_quality_loss, bare.cheap_share, bare.downgraded) == (None, None, {})
