"""The metric definitions, the gateway's metric hooks and the structured logs, without Ray.

The gateway runs with honest fakes (`FakeEngine`) and the in-memory `PromRecorder`, which
names samples as Ray's exporter does (`ray_tierline_*`).
"""

from __future__ import annotations

import json
import logging
import os
import random
import string

import pytest
from fastapi.testclient import TestClient
from tierline.cluster.spec import ClusterSpec
from tierline.cluster.specfile import load_spec_text
from tierline.deployments.gateway import GatewayCore, create_app
from tierline.deployments.gateway.observe.metrics import (
    DEFINITIONS,
    GatewayMetrics,
    PromRecorder,
    RouterMetrics,
    exported_names,
    reason_kind,
    rejection_reason,
    token_cost,
)
from tierline.deployments.gateway.pipeline.auth import KeyStore, hash_key
from tierline.deployments.gateway.pipeline.tokens import EstimatingCounter
from tierline.deployments.logs import (
    FORBIDDEN_FIELDS,
    JsonFormatter,
    RequestContextFilter,
    bind_request,
    event,
)

from tests.unit.fakes import FakeEngine

SPEC = """
tiers:
  - name: small
    model_source: org/small
    max_context_tokens: 256
    price_per_1m_input_tokens: 0.1
    price_per_1m_output_tokens: 0.2
  - name: large
    model_source: org/large
    max_context_tokens: 1024
    price_per_1m_input_tokens: 1.0
    price_per_1m_output_tokens: 3.0
router:
  policy: rules
  default_tier: small
"""
KEY = "sk-test-observability-key"


def make(
    fail: dict[str, str] | None = None, status: int = 400
) -> tuple[TestClient, GatewayCore, PromRecorder]:
    spec = load_spec_text(SPEC)
    engines = {
        t.name: FakeEngine(t.model_name, (fail or {}).get(t.name), status) for t in spec.tiers
    }
    counters = {t.name: EstimatingCounter() for t in spec.tiers}
    recorder = PromRecorder()
    core = GatewayCore(
        spec, engines, counters, metrics=GatewayMetrics(spec, recorder, replica="r1")
    )
    keys = KeyStore({hash_key(KEY): "team-a"})
    client = TestClient(create_app(core, keys), raise_server_exceptions=False)
    return client, core, recorder


def chat(client: TestClient, model: str = "auto", text: str = "hello", **kw: object):
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 4}
    body.update(kw)
    headers = {"Authorization": f"Bearer {KEY}"}
    return client.post("/v1/chat/completions", json=body, headers=headers)


# -- definitions -----------------------------------------------------------------------------
def test_definitions_follow_prometheus_conventions() -> None:
    for d in DEFINITIONS.values():
        assert d.name.startswith("tierline_"), d.name
        assert not d.name.endswith("_total"), "counters get _total from the exporter"
        assert set(d.labels).isdisjoint({"request_id", "prompt", "text", "api_key", "key"})
        if "seconds" in d.name or "duration" in d.name or "latency" in d.name:
            assert d.name.endswith("_seconds") and d.kind == "histogram", d.name
        if d.kind == "histogram":
            assert d.buckets and all(b > 0 for b in d.buckets), "Ray needs positive bounds"
            assert list(d.buckets) == sorted(d.buckets)
        else:
            assert not d.buckets
    exported = [n for d in DEFINITIONS.values() for n in exported_names(d)]
    assert len(exported) == len(set(exported))
    assert "ray_tierline_gateway_requests_total" in exported
    assert "ray_tierline_gateway_ttft_seconds_bucket" in exported


def test_in_memory_recorder_exports_exactly_the_declared_names() -> None:
    """Every declared metric, once touched, shows up under the names `exported_names` says."""
    recorder = PromRecorder()
    for d in DEFINITIONS.values():
        tags = {label: "x" for label in d.labels}
        if d.kind == "counter":
            recorder.inc(d.name, 1, tags)
        elif d.kind == "gauge":
            recorder.set(d.name, 1, tags)
        else:
            recorder.observe(d.name, 0.5, tags)
    text = recorder.text().decode()
    samples = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}
    declared = {n for d in DEFINITIONS.values() for n in exported_names(d)}
    # prometheus_client also writes `_created` samples; Ray's exporter does not.
    assert {s for s in samples if not s.endswith("_created")} == declared


# -- pure label helpers ----------------------------------------------------------------------
def test_reason_kind_keeps_code_made_reasons_and_bounds_the_rest() -> None:
    for reason in (
        "pinned",
        "auto:default",
        "auto:long-prompt+context",
        "auto:learned:balanced",
        "auto:learned:latency+fastest+spill",
        "auto:learned:cost+spill+fallback",
        "rejected:quota_exceeded",
    ):
        assert reason_kind(reason) == reason
    rng = random.Random(7)
    alphabet = string.printable
    kinds = set()
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        kind = reason_kind(text)
        kinds.add(kind)
        assert kind == "other" or (len(kind) <= 64 and kind == text)
    # free text (spaces, quotes, upper case) never becomes a label value
    assert reason_kind("auto:Ignore previous instructions") == "other"
    assert reason_kind("x" * 200) == "other"


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (401, "invalid_api_key", "auth"),
        (429, "quota_exceeded", "quota"),
        (503, "tier_at_capacity", "backpressure"),
        (503, "overloaded", "backpressure"),
        (503, "draining", "drain"),
        (400, "invalid_request", "bad_input"),
        (400, "context_length_exceeded", "bad_input"),
        (404, "model_not_found", "not_found"),
        (403, "tier_not_allowed", "forbidden"),
        (413, "request_too_large", "too_large"),
        (503, "tier_unavailable", None),
        (504, None, None),
        (500, "internal_error", None),
    ],
)
def test_rejection_reasons(status: int, code: str | None, expected: str | None) -> None:
    assert rejection_reason(status, code) == expected


def test_token_cost_against_the_most_expensive_tier() -> None:
    spec: ClusterSpec = load_spec_text(SPEC)
    cost, top = token_cost(spec, "small", 1_000_000, 2_000_000)
    assert cost == pytest.approx(0.1 + 0.4)
    assert top == pytest.approx(1.0 + 6.0)
    cost, top = token_cost(spec, "large", 10, 0)
    assert cost == pytest.approx(top)


# -- the gateway's hooks ---------------------------------------------------------------------
def test_answers_are_counted_with_tokens_cost_and_saving() -> None:
    client, _, rec = make()
    for _ in range(3):
        assert chat(client).status_code == 200
    r = chat(client, "large", max_tokens=6)
    assert r.status_code == 200
    with client.stream(
        "POST",
        "/v1/chat/completions",
        json={
            "model": "small",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 5,
            "stream": True,
        },
        headers={"Authorization": f"Bearer {KEY}"},
    ) as s:
        assert s.status_code == 200
        assert "".join(s.iter_text()).rstrip().endswith("[DONE]")

    v = rec.value
    assert (
        v(
            "ray_tierline_gateway_requests_total",
            tier="small",
            reason="auto:default",
            tenant="team-a",
            status="200",
        )
        == 3
    )
    assert (
        v(
            "ray_tierline_gateway_requests_total",
            tier="large",
            reason="pinned",
            tenant="team-a",
            status="200",
        )
        == 1
    )
    assert (
        v(
            "ray_tierline_gateway_requests_total",
            tier="small",
            reason="pinned",
            tenant="team-a",
            status="200",
        )
        == 1
    )
    # FakeEngine: 5 prompt tokens, max_tokens completion tokens
    assert v("ray_tierline_gateway_prompt_tokens_total", tier="small", tenant="team-a") == 20
    assert v("ray_tierline_gateway_completion_tokens_total", tier="small", tenant="team-a") == 17
    assert v("ray_tierline_gateway_completion_tokens_total", tier="large", tenant="team-a") == 6
    small_cost = (20 * 0.1 + 17 * 0.2) / 1e6
    large_cost = (5 * 1.0 + 6 * 3.0) / 1e6
    all_top = (25 * 1.0 + 23 * 3.0) / 1e6
    assert v(
        "ray_tierline_gateway_estimated_cost_usd_total", tier="small", tenant="team-a"
    ) == pytest.approx(small_cost)
    assert v("ray_tierline_gateway_all_top_tier_cost_usd_total", tenant="team-a") == pytest.approx(
        all_top
    )
    assert v("ray_tierline_gateway_estimated_saving_usd_total", tenant="team-a") == pytest.approx(
        all_top - small_cost - large_cost
    )
    assert v("ray_tierline_gateway_ttft_seconds_count", tier="small") == 4
    assert (
        v("ray_tierline_gateway_request_duration_seconds_count", tier="small", reason="pinned") == 1
    )
    # nothing in flight or waiting once every answer is complete
    assert v("ray_tierline_gateway_active_requests", replica="r1") == 0
    assert v("ray_tierline_tier_queued_requests", tier="small", replica="r1") == 0


def test_rejections_and_errors_are_counted_by_reason() -> None:
    client, core, rec = make(fail={"large": "before"})
    assert client.post("/v1/chat/completions", json={"model": "auto"}).status_code == 401
    assert chat(client, "no-such-model").status_code == 404
    assert chat(client, max_tokens=10**6).status_code == 400
    r = client.post(
        "/v1/chat/completions", content=b"{not json", headers={"Authorization": f"Bearer {KEY}"}
    )
    assert r.status_code == 400
    assert chat(client, "large").status_code == 503  # every attempt fails: tier down
    core.draining = True
    assert chat(client).status_code == 503

    v = rec.value
    assert v("ray_tierline_gateway_rejections_total", reason="auth", tenant="none") == 1
    assert v("ray_tierline_gateway_rejections_total", reason="not_found", tenant="team-a") == 1
    assert v("ray_tierline_gateway_rejections_total", reason="bad_input", tenant="team-a") == 2
    assert v("ray_tierline_gateway_rejections_total", reason="drain", tenant="team-a") == 1
    assert v("ray_tierline_gateway_errors_total", tier="large", kind="unavailable") == 1
    # each failed engine attempt is an engine failure of its tier
    assert v("ray_tierline_gateway_errors_total", tier="large", kind="engine_failure") == 3
    assert (
        v(
            "ray_tierline_gateway_requests_total",
            tier="large",
            reason="pinned",
            tenant="team-a",
            status="503",
        )
        == 1
    )


def test_engine_backpressure_is_a_rejection() -> None:
    client, _, rec = make(fail={"small": "error"}, status=503)
    r = chat(client, "small")
    assert r.status_code == 503
    # FakeEngine's error type is the generic one; the gateway keeps it as the code
    assert rec.value("ray_tierline_gateway_errors_total", tier="small", kind="engine_503") == 1


# -- logs ------------------------------------------------------------------------------------
def test_json_formatter_writes_one_object_per_line_with_the_request_id() -> None:
    record = logging.LogRecord(
        "ray.serve.tierline.gateway", logging.INFO, "f.py", 1, "m", None, None
    )
    record.tier = "small"
    record.prompt = "secret prompt text"
    bind_request("req-123", "team-a")
    try:
        assert RequestContextFilter().filter(record)
    finally:
        bind_request(None)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["request_id"] == "req-123"
    assert obj["tier"] == "small" and obj["level"] == "INFO" and obj["message"] == "m"
    assert "prompt" not in obj and "secret prompt text" not in line


def test_event_drops_secret_and_prompt_fields(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("ray.serve.tierline.test")
    bind_request("rid-9")
    try:
        with caplog.at_level(logging.INFO, logger="ray.serve.tierline.test"):
            event(logger, "thing", {f: "leak" for f in FORBIDDEN_FIELDS} | {"tier": "t"})
    finally:
        bind_request(None)
    (rec,) = caplog.records
    line = JsonFormatter().format(rec)
    assert "leak" not in line
    assert json.loads(line)["request_id"] == "rid-9"
    assert json.loads(line)["event"] == "thing"


def test_a_request_id_follows_the_request_through_gateway_and_router(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, _, _ = make()
    secret_text = "please keep this prompt private"
    with caplog.at_level(logging.INFO, logger="ray.serve.tierline"):
        r = client.post(
            "/v1/chat/completions",
            json={
                "model": "auto",
                "messages": [{"role": "user", "content": secret_text}],
                "max_tokens": 3,
            },
            headers={"Authorization": f"Bearer {KEY}", "x-request-id": "client-chosen-id"},
        )
        r2 = chat(client)
    assert r.status_code == 200 and r2.status_code == 200
    generated = r2.headers["x-request-id"]
    assert generated and generated != "client-chosen-id"
    lines = [JsonFormatter().format(rec) for rec in caplog.records]
    objs = [json.loads(line) for line in lines]
    for rid in ("client-chosen-id", generated):
        events = {(o["logger"], o.get("event")) for o in objs if o.get("request_id") == rid}
        assert ("ray.serve.tierline.router", "route") in events, rid
        assert ("ray.serve.tierline.gateway", "answer") in events, rid
    text = "\n".join(lines)
    assert secret_text not in text and KEY not in text


def test_serve_logging_kept_restores_handlers_that_an_import_swapped() -> None:
    """vLLM's first import would close the replica's log file; the gateway keeps it."""
    from tierline.deployments.logs import serve_logging_kept

    lg = logging.getLogger("ray.serve")
    saved = list(lg.handlers), lg.propagate
    mine = logging.NullHandler()
    lg.handlers[:] = [mine]
    try:
        before = os.environ.get("VLLM_CONFIGURE_LOGGING")
        with serve_logging_kept():
            # vLLM's import reads this: "0" keeps it from closing every log handler
            assert os.environ["VLLM_CONFIGURE_LOGGING"] == "0"
            lg.handlers.clear()  # what a logging reset does
            lg.addHandler(logging.StreamHandler())
            lg.propagate = False
        assert lg.handlers == [mine]
        assert os.environ.get("VLLM_CONFIGURE_LOGGING") == before
    finally:
        lg.handlers[:] = saved[0]
        lg.propagate = saved[1]


def test_negative_scores_land_in_the_first_bucket() -> None:
    """OpenTelemetry (Ray's exporter) drops negative histogram values: both recorders clip."""
    rec = RouterMetrics()
    for score in (-0.4, -0.01, 0.3):
        rec.decision("small", "auto:learned:balanced", score, 0.001, 0.5, 0.1)
    p = rec.recorder
    assert isinstance(p, PromRecorder)
    assert p.value("ray_tierline_router_score_count") == 3
    assert p.value("ray_tierline_router_score_bucket", le="0.05") == 2
    assert p.value("ray_tierline_router_score_sum") == pytest.approx(0.3)
