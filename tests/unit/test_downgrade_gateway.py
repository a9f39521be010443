"""Down a tier instead of refusing, through the gateway: under load (the chosen tier's
slots full) and past a tenant's token budget (`on_budget: downgrade`). The scorer's
predictions are fixed per test (a `LearnedRouter` whose `quality` is a constant), the
quota is a real ledger behind `LocalQuota`, the engines are the usual fakes."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest
from tierline.cluster.spec import ClusterSpec
from tierline.cluster.specfile import load_spec_text
from tierline.deployments.errors import APIError
from tierline.deployments.gateway import REASON_HEADER, TIER_HEADER, GatewayCore
from tierline.deployments.gateway.pipeline.answer import WholeAnswer
from tierline.deployments.gateway.pipeline.routing import LearnedRouter
from tierline.deployments.gateway.pipeline.schemas import ChatCompletionBody
from tierline.deployments.gateway.pipeline.tokens import EstimatingCounter
from tierline.deployments.gateway.quota.service import LocalQuota, ledger_for
from tierline.router.embedding import HashingEmbedder
from tierline.router.head import Head
from tierline.router.scorer import CALIBRATED_ARTIFACT, SHIPPED_ARTIFACT

from tests.unit.fakes import FakeEngine

SPEC = """
tiers:
  - name: small
    model_source: org/small
    max_context_tokens: 1024
  - name: large
    model_source: org/large
    max_context_tokens: 1024
    max_ongoing_requests: 1
    max_queued_requests: 0
router:
  policy: {policy}
{router}
gateway:
{gateway}
"""


class FixedQuality(LearnedRouter):
    """The learned router with the scorer's per-tier predictions fixed."""

    def __init__(self, spec: ClusterSpec, quality: Mapping[str, float]) -> None:
        bounded = spec.router.max_quality_loss is not None
        head = Head.load(CALIBRATED_ARTIFACT if bounded else SHIPPED_ARTIFACT)
        super().__init__(spec, HashingEmbedder(), head)
        self.fixed = dict(quality)

    def quality(self, text: str) -> dict[str, float]:
        return dict(self.fixed)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(
    quality: Mapping[str, float] | None = None,
    router: str = "  learned: {strong_share: 1.0}",
    gateway: str = "  replicas: 1",
    policy: str = "learned",
) -> tuple[GatewayCore, Clock]:
    spec = load_spec_text(SPEC.format(policy=policy, router=router, gateway=gateway))
    engines = {t.name: FakeEngine(t.model_name) for t in spec.tiers}
    counters = {t.name: EstimatingCounter() for t in spec.tiers}
    learned = FixedQuality(spec, quality or {}) if policy == "learned" else None
    clock = Clock()
    quota = LocalQuota(ledger_for(spec.gateway), clock)
    return GatewayCore(spec, engines, counters, quota=quota, learned=learned), clock


def body(model: str = "auto", max_tokens: int = 10) -> ChatCompletionBody:
    return ChatCompletionBody.model_validate(
        {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}
    )


def answer(core: GatewayCore, tenant: str = "default", model: str = "auto") -> WholeAnswer:
    got = asyncio.run(core.generate("chat", body(model), tenant))
    assert isinstance(got, WholeAnswer)
    return got


# -- under load ---------------------------------------------------------------------------------
def test_a_full_strong_tier_sends_a_small_loss_down_with_the_reason() -> None:
    core, _ = make({"small": 0.80, "large": 0.85})
    assert answer(core).headers[TIER_HEADER] == "large"
    held = core.board.acquire("large")  # the strong tier's one slot is taken
    assert held is not None
    got = answer(core)
    assert got.headers[TIER_HEADER] == "small"
    assert got.headers[REASON_HEADER] == "downgraded:load;expected_loss=0.050"
    assert core.downgrades.ledger.count == 1
    assert core.slots.in_flight == {"small": 0, "large": 1}


def test_a_large_loss_is_refused_as_before() -> None:
    core, _ = make({"small": 0.2, "large": 0.9})  # 0.7 > the default budget 0.1
    core.board.acquire("large")
    with pytest.raises(APIError) as refused:
        answer(core)
    assert refused.value.status == 503 and refused.value.code == "tier_at_capacity"
    assert core.downgrades.ledger.count == 0


def test_the_budget_and_the_switch_come_from_the_spec() -> None:
    loose = "  learned: {strong_share: 1.0}\n  load_downgrade: {max_quality_loss: 0.8}"
    core, _ = make({"small": 0.2, "large": 0.9}, router=loose)
    core.board.acquire("large")
    assert answer(core).headers[REASON_HEADER] == "downgraded:load;expected_loss=0.700"

    off = "  learned: {strong_share: 1.0}\n  load_downgrade: {enabled: false}"
    core, _ = make({"small": 0.85, "large": 0.85}, router=off)
    core.board.acquire("large")
    with pytest.raises(APIError) as refused:
        answer(core)
    assert refused.value.status == 503


def test_a_pinned_request_is_never_sent_down_for_load() -> None:
    core, _ = make({"small": 0.85, "large": 0.85})
    core.board.acquire("large")
    with pytest.raises(APIError) as refused:
        answer(core, model="large")
    assert refused.value.status == 503


# -- past the budget ----------------------------------------------------------------------------
TENANT = """  tenants:
    - name: team
      tokens_per_min: 40
      on_budget: {on_budget}
"""


def test_a_downgrade_tenant_past_its_budget_is_served_on_the_cheapest_tier() -> None:
    core, clock = make({"small": 0.6, "large": 0.9}, gateway=TENANT.format(on_budget="downgrade"))
    first = answer(core, "team")  # reserves 13 + 10 of 40, is charged 5 + 10
    assert first.headers[TIER_HEADER] == "large"
    answer(core, "team")  # 30 of 40: the next one's 23 do not fit
    past = answer(core, "team")
    assert past.headers[TIER_HEADER] == "small"
    assert past.headers[REASON_HEADER] == "downgraded:budget;expected_loss=0.300"
    answer(core, "team")  # 30 of the 40 past the budget (as many as tokens_per_min)
    with pytest.raises(APIError) as ceiling:
        answer(core, "team")
    assert ceiling.value.status == 429
    assert core.slots.in_flight == {"small": 0, "large": 0}
    clock.now = 61.0  # the window has moved on: back on the routed tier
    assert answer(core, "team").headers[TIER_HEADER] == "large"


def test_a_refuse_tenant_and_a_pinned_request_get_429() -> None:
    core, _ = make({"small": 0.6, "large": 0.9}, gateway=TENANT.format(on_budget="refuse"))
    answer(core, "team")
    answer(core, "team")
    with pytest.raises(APIError) as refused:
        answer(core, "team")
    assert refused.value.status == 429

    core, _ = make({"small": 0.6, "large": 0.9}, gateway=TENANT.format(on_budget="downgrade"))
    answer(core, "team", model="large")
    answer(core, "team", model="large")
    with pytest.raises(APIError) as pinned:
        answer(core, "team", model="large")
    assert pinned.value.status == 429


def test_the_rules_policy_downgrades_for_budget_with_an_unknown_loss() -> None:
    rules = "  default_tier: large"
    gateway = TENANT.format(on_budget="downgrade")
    core, _ = make(policy="rules", router=rules, gateway=gateway)
    assert answer(core, "team").headers[TIER_HEADER] == "large"
    answer(core, "team")
    past = answer(core, "team")
    assert (past.headers[TIER_HEADER], past.headers[REASON_HEADER]) == (
        "small",
        "downgraded:budget",
    )


def test_on_budget_downgrade_needs_a_budget() -> None:
    with pytest.raises(ValueError, match="needs tokens_per_min"):
        load_spec_text(
            SPEC.format(
                policy="rules",
                router="",
                gateway="  tenants:\n    - {name: team, on_budget: downgrade}",
            )
        )


# -- the default is the product ------------------------------------------------------------------
def test_local_config_serve_config_and_helm_values_carry_load_downgrade_on() -> None:
    from pathlib import Path

    from tierline.cluster.helm_values import helm_values
    from tierline.cluster.render import serve_config
    from tierline.cluster.specfile import load_spec

    spec = load_spec(Path(__file__).resolve().parents[2] / "configs" / "local.yaml")
    assert spec.router.policy == "learned" and spec.router.load_downgrade.enabled
    assert spec.router.load_loss_budget() == 0.1  # no bound set: the default budget
    app = serve_config(spec)["applications"][0]
    rendered = app["args"]["spec"]["router"]["load_downgrade"]
    assert rendered == {"enabled": True, "max_quality_loss": None, "window_requests": 1000}
    local = spec.model_copy(update={"gateway": spec.gateway.model_copy(update={"host": "0.0.0.0"})})
    assert helm_values(local)["spec"]["router"]["load_downgrade"]["enabled"] is True


# -- what `tierline status` reads ----------------------------------------------------------------
def test_downgrades_are_counted_and_the_load_loss_is_a_gauge() -> None:
    from tierline.deployments.gateway.observe.metrics import PromRecorder, reason_kind

    core, _ = make({"small": 0.80, "large": 0.85})
    recorder = core.metrics.recorder
    assert isinstance(recorder, PromRecorder)
    assert recorder.value("ray_tierline_router_load_loss_budget", replica="") == 0.1
    core.board.acquire("large")
    answer(core)
    assert recorder.value("ray_tierline_router_downgraded_total", tier="small", reason="load") == 1
    assert recorder.value("ray_tierline_router_load_loss_mean", replica="") == pytest.approx(0.05)
    answered = recorder.value(
        "ray_tierline_gateway_requests_total",
        tier="small",
        reason="downgraded:load",
        tenant="default",
        status="200",
    )
    assert answered == 1
    assert reason_kind("downgraded:budget;expected_loss=0.300") == "downgraded:budget"
    assert reason_kind("downgraded:elsewhere") == "other"


def test_the_bound_in_force_is_a_gauge() -> None:
    from tierline.deployments.gateway.observe.metrics import PromRecorder

    spec = load_spec_text(
        SPEC.format(policy="learned", router="  max_quality_loss: 0.2", gateway="  replicas: 1")
    )
    router = FixedQuality(spec, {"small": 0.5, "large": 0.5})
    recorder = router.metrics.recorder
    assert isinstance(recorder, PromRecorder)
    assert recorder.value("ray_tierline_router_max_quality_loss", replica="") == 0.2


class UnsureEngine(FakeEngine):
    """Whole answers with a low mean log-probability: the cascade would escalate them."""

    async def generate(self, method, body):  # type: ignore[no-untyped-def]
        async for item in super().generate(method, body):
            if isinstance(item, dict):
                for choice in item["choices"]:
                    choice["logprobs"] = {"content": [{"token": "w", "logprob": -9.0}]}
            yield item


def test_a_request_sent_down_for_its_budget_is_not_cascaded_back_up() -> None:
    spec = load_spec_text(
        SPEC.format(
            policy="rules",
            router="  default_tier: large\n  cascade: {enabled: true}",
            gateway=TENANT.format(on_budget="downgrade"),
        )
    )
    engines = {t.name: UnsureEngine(t.model_name) for t in spec.tiers}
    counters = {t.name: EstimatingCounter() for t in spec.tiers}
    quota = LocalQuota(ledger_for(spec.gateway), Clock())
    core = GatewayCore(spec, engines, counters, quota=quota)
    answer(core, "team")
    answer(core, "team")
    past = answer(core, "team")
    assert past.headers[TIER_HEADER] == "small"
    assert past.headers[REASON_HEADER] == "downgraded:budget"
    assert len(engines["small"].calls) == 1 and len(engines["large"].calls) == 2
