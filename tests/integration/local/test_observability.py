"""Metrics, the dashboard, `tierline status` and JSON logs against the real local cluster.

Requests go through the official openai client; the metrics come from Ray's metrics
export port of the cluster's node (the documented scrape endpoint), and the logs from
Serve's replica log files of this cluster's Ray session.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

import httpx
import openai
import pytest
from tierline.cli import local
from tierline.cli.main import app
from tierline.cli.status import Scrape, parse_samples
from typer.testing import CliRunner

from tests.integration.conftest import API_KEY
from tests.integration.local.conftest import Cluster, serve_log_records
from tests.k8s.test_dashboard import DASHBOARDS, promql_metric_names

# Only exported once something happens that this CPU cluster never does: RAG is off in
# configs/local.yaml, and there are no GPUs.
NOT_HERE = ("ray_tierline_rag_", "ray_node_gpu", "ray_node_gram")


def scrape(url: str) -> Scrape:
    text = httpx.get(url, timeout=30).text
    return Scrape(time.monotonic(), tuple(parse_samples(text)))


def wait_for(url: str, check: Any, timeout_s: float = 90.0) -> Scrape:
    """Scrape until `check(scrape)` holds: Ray exports every few seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        s = scrape(url)
        if check(s) or time.monotonic() > deadline:
            return s
        time.sleep(2.0)


def quiet_scrape(url: str, timeout_s: float = 120.0) -> Scrape:
    """A scrape that earlier tests' traffic no longer moves: Ray exports counters up to one
    report interval late, so the counts of `EXPECTED` must hold still across one."""
    interval_s = int(os.environ.get("RAY_metrics_report_interval_ms", "10000")) / 1000  # noqa: SIM112
    deadline = time.monotonic() + timeout_s
    last = scrape(url)
    while True:
        time.sleep(interval_s + 1.0)
        now = scrape(url)
        if time.monotonic() > deadline or all(
            now.total(name, **labels) == last.total(name, **labels) for name, labels, _ in EXPECTED
        ):
            return now
        last = now


# What the `traffic` fixture's requests add: (sample, labels, count).
EXPECTED: list[tuple[str, dict[str, str], int]] = [
    ("ray_tierline_gateway_requests_total", {"tenant": "tests", "status": "200"}, 3),
    ("ray_tierline_gateway_requests_total", {"reason": "pinned", "status": "200"}, 1),
    ("ray_tierline_router_requests_total", {}, 2),  # the two auto requests
    ("ray_tierline_router_score_count", {}, 2),
    ("ray_tierline_gateway_rejections_total", {"reason": "bad_input"}, 2),
    ("ray_tierline_gateway_rejections_total", {"reason": "auth"}, 1),
    ("ray_tierline_gateway_errors_total", {"tier": "small", "kind": "engine_400"}, 1),
    ("ray_tierline_gateway_ttft_seconds_count", {}, 3),
    ("ray_tierline_gateway_completion_tokens_total", {"tier": "small"}, 6),
]


@pytest.fixture(scope="module")
def metrics_url(cluster: Cluster) -> str:
    return local.metrics_url()


@pytest.fixture(scope="module")
def traffic(cluster: Cluster, metrics_url: str) -> dict[str, Any]:
    """A few requests of every kind; returns their ids and the scrapes around them."""
    before = quiet_scrape(metrics_url)
    client = cluster.client()
    ids: dict[str, str] = {}
    rid = f"obs-{uuid.uuid4().hex[:12]}"
    raw = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=8,
        extra_headers={"x-request-id": rid},
    )
    assert raw.headers["x-request-id"] == rid
    ids["given"] = rid
    raw = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": "Prove that the square root of 2 is irrational."}],
        max_tokens=8,
    )
    ids["generated"] = raw.headers["x-request-id"]
    assert ids["generated"]
    stream = client.chat.completions.create(
        model="tiny-small",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [c.usage for c in stream if c.usage is not None]
    assert usage and usage[-1].completion_tokens > 0
    with pytest.raises(openai.BadRequestError):  # rejected by the gateway: bad input
        client.chat.completions.create(
            model="tiny-small", messages=[{"role": "user", "content": "x"}], max_tokens=10**6
        )
    with pytest.raises(openai.BadRequestError):  # refused by the engine: an engine error
        # within the gateway's caps (`gateway.limits`), but a token id out of the tiny
        # model's 512-token vocabulary, which only the engine knows
        client.chat.completions.create(
            model="tiny-small",
            messages=[{"role": "user", "content": "x"}],
            max_tokens=2,
            logit_bias={"99999": 5},
        )
    bad = openai.OpenAI(base_url=f"{cluster.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()

    def settled(s: Scrape) -> bool:
        # Ray exports each metric on its own schedule: wait until every count is in.
        return all(
            s.total(name, **labels) - before.total(name, **labels) >= n
            for name, labels, n in EXPECTED
        )

    after = wait_for(metrics_url, settled)
    return {"ids": ids, "before": before, "after": after}


def test_gateway_and_router_metrics_count_the_traffic(traffic: dict[str, Any]) -> None:
    before: Scrape = traffic["before"]
    after: Scrape = traffic["after"]

    def delta(name: str, **labels: str) -> float:
        return after.total(name, **labels) - before.total(name, **labels)

    for name, labels, n in EXPECTED:
        got = delta(name, **labels)
        if name.endswith(("ttft_seconds_count", "completion_tokens_total")):
            assert got >= n, (name, labels, got)
        else:
            assert got == n, (name, labels, got)
    assert delta("ray_tierline_gateway_estimated_cost_usd_total") > 0
    saving = delta("ray_tierline_gateway_estimated_saving_usd_total")
    all_top = delta("ray_tierline_gateway_all_top_tier_cost_usd_total")
    cost = delta("ray_tierline_gateway_estimated_cost_usd_total")
    assert saving == pytest.approx(all_top - cost, rel=1e-6)
    shares = after.select("ray_tierline_router_realised_strong_share")
    assert shares and all(0.0 <= s.value <= 1.0 for s in shares)
    # the engines' own vLLM metrics come out of the same port
    assert after.total("ray_vllm_generation_tokens_total") > 0
    assert after.select("ray_serve_deployment_replica_healthy", deployment="tier-small")


def _dashboard_metrics() -> dict[str, str]:
    """Metric name -> the first dashboard panel that plots it."""
    wanted: dict[str, str] = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                for name in promql_metric_names(target["expr"]):
                    if not name.startswith(NOT_HERE):
                        wanted.setdefault(name, f"{path.name} / {panel['title']}")
    return wanted


def test_every_dashboard_metric_is_in_the_live_scrape(cluster: Cluster, metrics_url: str) -> None:
    """Every metric a dashboard plots is exported while the cluster serves.

    vLLM sets its engine gauges (requests running and waiting, KV cache usage) only while
    the engine steps, and Ray's metrics agent drops a gauge that is not set again within
    two report intervals (ray-project/ray#64633), so an idle engine's gauges leave the
    scrape within about 30 s of its last request. The scrape is therefore read right after each
    tier has served a request, and again after fresh requests if a slow export missed it.
    """
    wanted = _dashboard_metrics()
    assert "ray_vllm_num_requests_running" in wanted  # the engine panels are checked

    def complete(s: Scrape) -> bool:
        return wanted.keys() <= {x.name for x in s.samples}

    client = cluster.client()
    for _ in range(4):
        for model in (t.model_name for t in cluster.spec.tiers):
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=4
            )
        live = wait_for(metrics_url, complete, timeout_s=25.0)
        if complete(live):
            break
    names = {x.name for x in live.samples}
    missing = [f"{where}: {name}" for name, where in wanted.items() if name not in names]
    assert missing == []


def test_tierline_status_reads_the_running_cluster(
    cluster: Cluster, metrics_url: str, traffic: dict[str, Any]
) -> None:
    args = ["status", "--url", cluster.url, "--metrics-url", metrics_url]
    args += ["--api-key", API_KEY, "--interval", "1", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    tiers = {t["tier"]: t for t in out["tiers"]}
    assert set(tiers) == {"small", "large"}
    for t in tiers.values():
        assert t["ready"] is True
        assert (t["replicas_healthy"], t["replicas_total"]) == (1, 1)
        assert t["running"] is not None and t["tokens_per_s"] is not None
    assert tiers["small"]["requests"] >= 2
    assert sum(t["route_share"] for t in tiers.values()) == pytest.approx(1.0)
    assert out["saving_usd"] >= 0 and out["all_top_tier_cost_usd"] > 0
    assert out["gpus"] == []
    table = CliRunner().invoke(app, args[:-1])  # the rich table
    assert table.exit_code == 0, table.output
    assert "small" in table.output and "large" in table.output


def test_request_ids_follow_requests_through_gateway_router_and_engine(
    traffic: dict[str, Any],
) -> None:
    records = serve_log_records()
    for rid in traffic["ids"].values():
        mine = [r for r in records if r.get("request_id") == rid]
        events = {r.get("event") for r in mine if "_gateway_" in r["_file"]}
        assert {"route", "answer"} <= events, (rid, events)
        route = next(r for r in mine if r.get("event") == "route")
        assert route["tier"] in ("small", "large") and route["reason"].startswith("auto:")
        engine = [r for r in mine if "_tier-" in r["_file"]]
        assert engine, f"{rid} is not in any engine replica's log"
    text = "\n".join(json.dumps(r) for r in records)
    assert API_KEY not in text
    assert "square root of 2" not in text  # prompt text is never logged
