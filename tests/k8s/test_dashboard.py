"""The Grafana dashboard: every panel's PromQL names only metrics that are really exported.

Known names come from three sources, none of them written by hand here:
- tierline's own definitions (`deployments.gateway.observe.metrics.DEFINITIONS`, as Ray
  exports them);
- a saved scrape of a real local cluster's metrics port (`tests/data/metrics/`): Serve's
  `ray_serve_*`, the engines' `ray_vllm_*` and Ray's node metrics;
- Ray's node reporter source for the GPU gauges, which a CPU machine never exports.
The integration test `tests/integration/local/test_observability.py` checks the same
dashboard against a live scrape.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from tierline.deployments.gateway.observe.metrics import DEFINITIONS, exported_names

from tests.k8s.manifests import helm_template, one

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "helm" / "tierline" / "dashboards"
SCRAPE = ROOT / "tests" / "data" / "metrics" / "local-cpu-scrape.prom"

_FUNCTIONS_AND_KEYWORDS = frozenset(
    {
        "sum",
        "avg",
        "min",
        "max",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "group",
        "rate",
        "irate",
        "increase",
        "delta",
        "idelta",
        "deriv",
        "predict_linear",
        "histogram_quantile",
        "abs",
        "ceil",
        "floor",
        "round",
        "clamp",
        "clamp_min",
        "clamp_max",
        "exp",
        "ln",
        "log2",
        "log10",
        "sqrt",
        "scalar",
        "vector",
        "time",
        "timestamp",
        "label_replace",
        "label_join",
        "sort",
        "sort_desc",
        "absent",
        "absent_over_time",
        "avg_over_time",
        "min_over_time",
        "max_over_time",
        "sum_over_time",
        "count_over_time",
        "quantile_over_time",
        "last_over_time",
        "changes",
        "resets",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
    }
)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads: identifiers that are not functions,
    keywords, label names (inside `{}` or `by (...)`), ranges or strings."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges, $__rate_interval
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        name, call = m.group(1), m.group(2)
        if call or name in _FUNCTIONS_AND_KEYWORDS:
            continue
        names.add(name)
    return names


def _ray_node_gauges() -> set[str]:
    import ray

    source = Path(ray.__file__).parent / "dashboard/modules/reporter/reporter_agent.py"
    return {"ray_" + n for n in re.findall(r'Gauge\(\s*"(\w+)"', source.read_text())}


def known_metric_names() -> set[str]:
    from tierline.cli.status import parse_samples

    names = {n for d in DEFINITIONS.values() for n in exported_names(d)}
    names |= {s.name for s in parse_samples(SCRAPE.read_text())}
    return names | _ray_node_gauges()


def dashboards() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def exprs(dashboard: dict) -> list[tuple[str, str]]:
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    return out


def unknown_names(dashboard: dict, known: set[str]) -> list[str]:
    return sorted(
        f"{title}: {name}"
        for title, expr in exprs(dashboard)
        for name in promql_metric_names(expr)
        if name not in known
    )


def test_the_extractor_reads_names_and_skips_labels_functions_and_ranges() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, tier) (rate(ray_x_bucket{tier!="none",'
        'a=~"b.*"}[$__rate_interval]))) / on(tier) group_left sum(ray_y_total offset 5m)'
        " * 1024 + scalar(ray_z)"
    )
    assert promql_metric_names(expr) == {"ray_x_bucket", "ray_y_total", "ray_z"}
    assert promql_metric_names("sum(ray_a + ray_b) by (instance)") == {"ray_a", "ray_b"}


def test_the_chart_ships_tierlines_dashboard() -> None:
    assert [p.name for p in dashboards()] == ["tierline.json"]


@pytest.mark.parametrize("path", dashboards(), ids=lambda p: p.name)
def test_every_panel_names_an_exported_metric(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    known = known_metric_names()
    queries = exprs(dashboard)
    assert len(queries) >= 20
    assert unknown_names(dashboard, known) == []
    used = {n for _, e in queries for n in promql_metric_names(e)}
    # the dashboard covers what the issue asks for
    for needed in (
        "ray_tierline_gateway_requests_total",
        "ray_tierline_gateway_rejections_total",
        "ray_tierline_gateway_errors_total",
        "ray_tierline_gateway_ttft_seconds_bucket",
        "ray_tierline_gateway_request_duration_seconds_bucket",
        "ray_tierline_gateway_estimated_saving_usd_total",
        "ray_tierline_router_realised_strong_share",
        "ray_tierline_router_score_bucket",
        "ray_tierline_rag_retrieval_seconds_bucket",
        "ray_tierline_tier_queued_requests",
        "ray_vllm_generation_tokens_total",
        "ray_vllm_kv_cache_usage_perc",
        "ray_node_gram_used",
        "ray_node_gpus_utilization",
    ):
        assert needed in used, needed


def test_a_panel_with_a_metric_nobody_exports_fails() -> None:
    known = known_metric_names()
    bad = {
        "panels": [
            {
                "title": "typo",
                "targets": [{"expr": "sum(rate(ray_tierline_gateway_requestz_total[5m]))"}],
            },
            {"title": "unprefixed", "targets": [{"expr": "tierline_gateway_requests_total"}]},
            {"title": "fine", "targets": [{"expr": "sum(ray_vllm_num_requests_running)"}]},
        ]
    }
    assert unknown_names(bad, known) == [
        "typo: ray_tierline_gateway_requestz_total",
        "unprefixed: tierline_gateway_requests_total",
    ]


def test_panels_are_well_formed() -> None:
    for path in dashboards():
        d = json.loads(path.read_text())
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids))
        assert d["uid"] and d["title"]
        for p in d["panels"]:
            g = p["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
            if p["type"] != "row":
                assert p["targets"], p["title"]
                assert p["datasource"]["uid"] == "${datasource}"


def test_helm_renders_the_dashboard_into_its_configmap() -> None:
    cm = one(helm_template(), "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(cm["data"]["tierline.json"])
    assert shipped == json.loads((DASHBOARDS / "tierline.json").read_text())
