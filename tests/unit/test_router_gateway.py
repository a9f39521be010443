"""The gateway with the learned policy: preference header, reasons, spill and metrics.

The scorer is the shipped head over `HashingEmbedder` (an honest fake of the MiniLM
`Embedder` Protocol), the engines are the usual fakes: no Ray, no model load.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from tierline.cluster.specfile import load_spec_text
from tierline.deployments.gateway import GatewayCore, create_app
from tierline.deployments.gateway.pipeline.routing import LearnedRouter
from tierline.deployments.gateway.pipeline.tokens import EstimatingCounter
from tierline.router.embedding import HashingEmbedder
from tierline.router.head import Head
from tierline.router.scorer import SHIPPED_ARTIFACT

from tests.unit.fakes import FakeEngine

SPEC = """
tiers:
  - name: small
    model_source: org/small
    max_context_tokens: 128
    max_ongoing_requests: 2
    price_per_1m_input_tokens: 0.1
    price_per_1m_output_tokens: 0.2
  - name: large
    model_source: org/large
    max_context_tokens: 1024
    price_per_1m_input_tokens: 1.0
    price_per_1m_output_tokens: 3.0
router:
  policy: learned
  learned:
    strong_share: {share}
"""


def make(share: float = 0.5) -> tuple[TestClient, GatewayCore, LearnedRouter]:
    spec = load_spec_text(SPEC.format(share=share))
    engines = {t.name: FakeEngine(t.model_name) for t in spec.tiers}
    counters = {t.name: EstimatingCounter() for t in spec.tiers}
    router = LearnedRouter(spec, HashingEmbedder(), Head.load(SHIPPED_ARTIFACT))
    core = GatewayCore(spec, engines, counters, learned=router)
    return TestClient(create_app(core, None), raise_server_exceptions=False), core, router


def chat(client: TestClient, text: str, preference: str | None = None):
    headers = {"x-tierline-preference": preference} if preference else {}
    body = {"model": "auto", "messages": [{"role": "user", "content": text}], "max_tokens": 4}
    return client.post("/v1/chat/completions", json=body, headers=headers)


@pytest.mark.parametrize("preference", [None, "cost", "balanced", "quality", "latency"])
def test_reason_names_the_preference(preference: str | None) -> None:
    client, _, _ = make()
    r = chat(client, "What is the capital of France?", preference)
    assert r.status_code == 200, r.text
    assert r.headers["x-tierline-route-reason"].startswith(
        f"auto:learned:{preference or 'balanced'}"
    )
    assert r.headers["x-tierline-tier"] in ("small", "large")


def test_unknown_preference_is_a_400() -> None:
    client, _, _ = make()
    r = chat(client, "hi", "cheapest")
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "x-tierline-preference"


def test_share_zero_keeps_auto_on_the_small_tier_and_spills_when_queued() -> None:
    client, _, router = make(share=0.0)
    assert chat(client, "Prove Fermat's little theorem.").headers["x-tierline-tier"] == "small"
    router.load["small"].queued = 5  # over max_ongoing_requests x replicas = 2
    r = chat(client, "Prove Fermat's little theorem.")
    assert (r.headers["x-tierline-tier"], r.headers["x-tierline-route-reason"]) == (
        "large",
        "auto:learned:balanced+spill",
    )


def test_share_one_sends_auto_up_and_pinned_is_untouched() -> None:
    client, _, _ = make(share=1.0)
    assert chat(client, "hello").headers["x-tierline-tier"] == "large"
    body = {"model": "small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    r = client.post("/v1/chat/completions", json=body)
    assert r.headers["x-tierline-route-reason"] == "pinned"


def test_metrics_count_requests_share_and_cost() -> None:
    client, core, router = make(share=0.5)
    for i in range(12):
        assert chat(client, f"question number {i} about topic {i * 7}").status_code == 200
    text = router.metrics.text().decode()
    for name in (
        "ray_tierline_router_requests_total",
        "ray_tierline_router_realised_strong_share",
        "ray_tierline_router_score_bucket",
    ):
        assert name in text
    # Tokens and cost are the gateway's metrics now (deployments.gateway.observe.metrics).
    gateway = core.metrics.recorder.text().decode()  # type: ignore[attr-defined]
    for name in (
        "ray_tierline_gateway_estimated_cost_usd_total",
        "ray_tierline_gateway_estimated_saving_usd_total",
    ):
        assert name in gateway
    assert router.state.seen == 12
    assert 0.0 <= router.state.realised_share <= 1.0
    assert all(load.queued == 0 for load in router.load.values())


def test_learned_policy_without_a_router_is_refused() -> None:
    spec = load_spec_text(SPEC.format(share=0.5))
    engines = {t.name: FakeEngine(t.model_name) for t in spec.tiers}
    counters = {t.name: EstimatingCounter() for t in spec.tiers}
    with pytest.raises(ValueError, match="LearnedRouter"):
        GatewayCore(spec, engines, counters)


def test_spec_errors_name_the_yaml_path() -> None:
    from tierline.cluster.specfile import SpecError

    bad = SPEC.format(share=1.5) + "    tier_outputs: {medium: weak}\n"
    with pytest.raises(SpecError) as err:
        load_spec_text(bad)
    text = str(err.value) + " ".join(str(i) for i in err.value.issues)
    assert "router.learned.strong_share" in text
