"""Autoscaling and replica routing without Ray: the spec, the engine config, cold tiers in
both routing policies (over generated inputs), Serve status parsing, and the gateway's
replica watching with an honest fake watcher."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tierline.cluster.specfile import SpecError, load_spec_text
from tierline.deployments.engine.deployment import PREFIX_ROUTER, llm_config_kwargs
from tierline.deployments.gateway import GatewayCore
from tierline.deployments.gateway.engines.replicas import (
    ReplicaCount,
    deployment_states,
    replica_counts,
)
from tierline.deployments.gateway.pipeline.schemas import ChatCompletionBody
from tierline.deployments.gateway.pipeline.tokens import EstimatingCounter
from tierline.router.learned import CalibrationState, LearnedPolicy, decide_learned
from tierline.router.rules import RulesPolicy, decide
from tierline.router.types import RequestFeatures, RoutingError, TierState

from tests.unit.fakes import FakeEngine

SPEC = """
tiers:
  - name: cheap
    model_source: org/cheap
    max_context_tokens: 256
    autoscaling: {min_replicas: 0, max_replicas: 2, target_ongoing_requests: 2,
                  upscale_delay_s: 1, downscale_delay_s: 20}
  - name: main
    model_source: org/main
    max_context_tokens: 1024
    replica_routing: prefix
    prefix_imbalanced_threshold: 3
    autoscaling: {min_replicas: 1, max_replicas: 3}
router:
  default_tier: cheap
  cold_start: COLD
  cold_start_timeout_s: 45
"""


def spec_text(cold: str = "skip") -> str:
    return SPEC.replace("COLD", cold)


# -- spec and engine config ----------------------------------------------------------------
def test_autoscaling_and_prefix_routing_reach_serve_options() -> None:
    spec = load_spec_text(spec_text())
    cheap = llm_config_kwargs(spec.tier("cheap"))["deployment_config"]
    assert cheap["autoscaling_config"] == {
        "min_replicas": 0,
        "initial_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 2,
        "upscale_delay_s": 1,
        "downscale_delay_s": 20,
        "policy": {"policy_function": "tierline.deployments.engine.autoscale:relay_aware_policy"},
    }
    assert "num_replicas" not in cheap and "request_router_config" not in cheap
    main = llm_config_kwargs(spec.tier("main"))["deployment_config"]
    assert main["request_router_config"] == {
        "request_router_class": PREFIX_ROUTER,
        "request_router_kwargs": {"imbalanced_threshold": 3},
    }
    assert spec.tier("cheap").scales_to_zero and not spec.tier("main").scales_to_zero
    assert spec.router.cold_start == "skip" and spec.router.cold_start_timeout_s == 45


def test_prefix_router_class_is_importable_where_ray_is() -> None:
    module, _, name = PREFIX_ROUTER.partition(":")
    ray_llm = pytest.importorskip(module)
    assert isinstance(getattr(ray_llm, name), type)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (spec_text().replace("min_replicas: 1, max", "min_replicas: 0, max"), "only cheaper"),
        (spec_text().replace("replica_routing: prefix", "replica_routing: rr"), "replica_routing"),
        (spec_text("later"), "cold_start"),
        (spec_text().replace("cold_start_timeout_s: 45", "cold_start_timeout_s: 0"), "timeout"),
    ],
)
def test_bad_scaling_specs_are_rejected(text: str, needle: str) -> None:
    with pytest.raises(SpecError) as err:
        load_spec_text(text)
    assert needle in str(err.value) + " ".join(map(str, err.value.issues))


def test_a_single_tier_may_scale_to_zero() -> None:
    one = """
tiers:
  - name: only
    model_source: org/only
    max_context_tokens: 256
    autoscaling: {min_replicas: 0, max_replicas: 1}
"""
    assert load_spec_text(one).tiers[0].scales_to_zero


# -- cold tiers in the routing policies, over generated inputs -----------------------------
Case = tuple[RequestFeatures, list[TierState]]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    n = draw(st.integers(1, 4))
    ctx = sorted(draw(st.lists(st.integers(16, 2048), min_size=n, max_size=n)))
    tiers = [
        TierState(
            f"t{i}",
            c,
            healthy=draw(st.booleans()) or i == 0,
            replicas=draw(st.sampled_from([None, 0, 1, 2])),
            queued=draw(st.integers(0, 6)),
            queue_limit=draw(st.one_of(st.none(), st.integers(0, 4))),
        )
        for i, c in enumerate(ctx)
    ]
    names = [t.name for t in tiers]
    features = RequestFeatures(
        text=draw(st.sampled_from(["hi", "please prove this", "x " * 50])),
        prompt_tokens={name: draw(st.integers(1, 2000)) for name in names},
        completion_tokens=draw(st.integers(1, 256)),
        pinned_tier=draw(st.one_of(st.none(), st.none(), st.sampled_from(names))),
        quality={name: draw(st.floats(0.0, 1.0)) for name in names},
    )
    return features, tiers


def _fits(f: RequestFeatures, t: TierState) -> bool:
    return f.context_needed(t.name) <= t.max_context_tokens and t.healthy


def _rules(cold: str) -> RulesPolicy:
    return RulesPolicy(long_prompt_tokens=64, hard_keywords=("prove",), cold_start=cold)


def _learned(cold: str) -> LearnedPolicy:
    quantiles = tuple(-0.2 + 0.6 * i / 20 for i in range(21))
    return LearnedPolicy(strong_share=0.4, prior_quantiles=quantiles, cold_start=cold)


def _both(features: RequestFeatures, tiers: list[TierState], cold: str) -> list[object]:
    out: list[object] = []
    for call in (
        lambda: decide(features, tiers, _rules(cold)),
        lambda: decide_learned(features, tiers, _learned(cold), CalibrationState()),
    ):
        try:
            out.append(call())
        except RoutingError as err:
            out.append(err.status)
    return out


@settings(max_examples=500, deadline=None)
@given(cases())
def test_auto_skips_cold_tiers_while_a_warm_one_fits(case: Case) -> None:
    features, tiers = case
    warm = [t for t in tiers if _fits(features, t) and not t.cold]
    for decision in _both(features, tiers, "skip"):
        if isinstance(decision, int):  # an error: no tier fits (the pinned one, if any)
            asked = [t for t in tiers if features.pinned_tier in (None, t.name)]
            assert not any(_fits(features, t) for t in asked)
            continue
        chosen = next(t for t in tiers if t.name == decision.tier)  # type: ignore[attr-defined]
        assert _fits(features, chosen)
        if features.pinned_tier is not None:
            assert chosen.name == features.pinned_tier  # pinned waits for the cold start
        elif warm:
            assert not chosen.cold, (decision, tiers)
        else:
            assert chosen.cold and "coldstart" in decision.reason  # type: ignore[attr-defined]


@settings(max_examples=300, deadline=None)
@given(cases())
def test_wait_policy_routes_as_if_every_tier_were_warm(case: Case) -> None:
    features, tiers = case
    warm = [replace(t, replicas=None) for t in tiers]
    for waited, as_warm in zip(
        _both(features, tiers, "wait"), _both(features, warm, "wait"), strict=True
    ):
        if isinstance(as_warm, int):
            assert waited == as_warm
        else:
            assert waited.tier == as_warm.tier  # type: ignore[attr-defined]


def test_skip_reason_names_the_cold_tier() -> None:
    tiers = [TierState("cheap", 256, replicas=0), TierState("main", 1024, replicas=1)]
    f = RequestFeatures("hi", {"cheap": 3, "main": 3}, 4, quality={"cheap": 0.9, "main": 0.9})
    d = decide(f, tiers, _rules("skip"))
    assert (d.tier, d.reason, d.escalations) == ("main", "auto:default+cold", ("cheap:cold",))
    d = decide(f, tiers, _rules("wait"))
    assert (d.tier, d.reason) == ("cheap", "auto:default+coldstart")
    d = decide_learned(f, tiers, _learned("skip"), CalibrationState())
    assert d.tier == "main" and d.reason.endswith("+cold")


# -- Serve status parsing --------------------------------------------------------------------
def test_replica_counts_from_serve_status() -> None:
    status = {
        "tier-cheap": {"status": "DOWNSCALING", "replica_states": {"RUNNING": 1, "STOPPING": 1}},
        "tier-main": {"status": "UPSCALING", "replica_states": {"RUNNING": 1, "STARTING": 2}},
        "tier-gone": {"status": "UNHEALTHY", "replica_states": {}},
        "gateway": {"status": "HEALTHY", "replica_states": {"RUNNING": 1}},
    }
    tiers = {"cheap": "tier-cheap", "main": "tier-main", "gone": "tier-gone", "new": "tier-new"}
    assert replica_counts(status, tiers) == {
        "cheap": ReplicaCount(running=1, starting=0, healthy=True),
        "main": ReplicaCount(running=1, starting=2, healthy=True),
        "gone": ReplicaCount(running=0, starting=0, healthy=False),
    }


def test_deployment_states_from_the_controllers_details() -> None:
    """The controller's plain details dict (ServeInstanceDetails' shape), enum members or
    their values, reduced to what replica_counts reads."""
    from ray.serve._private.common import DeploymentStatus, ReplicaState

    def replicas(*states: object) -> list[dict[str, object]]:
        return [{"replica_id": str(i), "state": s, "node_id": "n"} for i, s in enumerate(states)]

    details = {
        "controller_info": {},
        "applications": {
            "tierline": {
                "status": "RUNNING",
                "deployments": {
                    "tier-main": {
                        "status": DeploymentStatus.UPSCALING,
                        "replicas": replicas(
                            ReplicaState.RUNNING, ReplicaState.STARTING, ReplicaState.STARTING
                        ),
                        "deployment_config": {"request_router_config": {}},
                    },
                    "tier-cheap": {"status": "HEALTHY", "replicas": []},
                    "gateway": {"status": "HEALTHY", "replicas": replicas("RUNNING")},
                },
            },
            "other-app": {"deployments": {"tier-main": {"status": "UNHEALTHY", "replicas": []}}},
        },
    }
    states = deployment_states(details, "tierline")
    assert states == {
        "tier-main": {"status": "UPSCALING", "replica_states": {"RUNNING": 1, "STARTING": 2}},
        "tier-cheap": {"status": "HEALTHY", "replica_states": {}},
        "gateway": {"status": "HEALTHY", "replica_states": {"RUNNING": 1}},
    }
    assert replica_counts(states, {"main": "tier-main", "cheap": "tier-cheap"}) == {
        "main": ReplicaCount(running=1, starting=2, healthy=True),
        "cheap": ReplicaCount(running=0, starting=0, healthy=True),
    }
    assert deployment_states(details, "missing") == {}
    assert deployment_states({}, "tierline") == {}


# -- the gateway follows replica counts ------------------------------------------------------
class FakeWatcher:
    """A `ReplicaWatcher` whose counts the test sets."""

    def __init__(self, counts: dict[str, ReplicaCount]) -> None:
        self.now = counts

    async def counts(self) -> Mapping[str, ReplicaCount]:
        return dict(self.now)


class CountingEngine(FakeEngine):
    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.probes = 0

    async def healthy(self, timeout_s: float) -> bool:
        self.probes += 1
        return True


def _core(cold: str = "skip") -> tuple[GatewayCore, FakeWatcher, dict[str, CountingEngine]]:
    spec = load_spec_text(spec_text(cold))
    engines = {t.name: CountingEngine(t.model_name) for t in spec.tiers}
    watcher = FakeWatcher(
        {
            "cheap": ReplicaCount(running=1, starting=0, healthy=True),
            "main": ReplicaCount(running=1, starting=0, healthy=True),
        }
    )
    counters = {t.name: EstimatingCounter() for t in spec.tiers}
    return GatewayCore(spec, engines, counters, replicas=watcher), watcher, engines


async def _briefly(*coros: object, s: float = 0.05) -> None:
    tasks = [asyncio.ensure_future(c) for c in coros]  # type: ignore[call-overload]
    await asyncio.sleep(s)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _body(model: str = "auto") -> ChatCompletionBody:
    return ChatCompletionBody.model_validate(
        {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    )


def test_gateway_skips_a_tier_scaled_to_zero_and_never_probes_it() -> None:
    core, watcher, engines = _core()

    async def run() -> None:
        # Warm-up: the first probe passes, then the tier's health comes from Serve.
        await _briefly(core.watch_health(period_s=0.01), core.watch_replicas(period_s=0.01))
        assert core.warmed == {"cheap"}
        assert core.route(_body())[0].name == "cheap"
        watcher.now["cheap"] = ReplicaCount(running=0, starting=0, healthy=True)
        probes = engines["cheap"].probes
        await _briefly(core.watch_health(period_s=0.01), core.watch_replicas(period_s=0.01))
        assert core.replicas["cheap"] == 0
        tier, decision = core.route(_body())
        assert (tier.name, decision.reason) == ("main", "auto:default+cold")
        assert core.route(_body("cheap"))[0].name == "cheap"  # pinned waits
        assert (await core.ready())["cheap"] is True
        assert engines["cheap"].probes == probes  # neither health nor readiness woke it
        assert engines["main"].probes > probes
        watcher.now["cheap"] = ReplicaCount(running=0, starting=0, healthy=False)
        await _briefly(core.watch_replicas(period_s=0.01))
        assert core.health["cheap"] is False

    asyncio.run(run())


def test_cold_start_wait_policy_sends_auto_into_the_cold_tier() -> None:
    core, watcher, _ = _core("wait")
    watcher.now["cheap"] = ReplicaCount(running=0, starting=0, healthy=True)

    async def run() -> None:
        await _briefly(core.watch_replicas(period_s=0.01))
        tier, decision = core.route(_body())
        assert (tier.name, decision.reason) == ("cheap", "auto:default+coldstart")

    asyncio.run(run())


def test_a_tier_whose_replicas_all_died_is_marked_down_at_once() -> None:
    core, watcher, _ = _core()
    watcher.now["main"] = ReplicaCount(running=0, starting=1, healthy=True)

    async def run() -> None:
        # Still starting (never ran): not an outage.
        await _briefly(core.watch_replicas(period_s=0.01))
        assert core.health["main"] is True
        watcher.now["main"] = ReplicaCount(running=1, starting=0, healthy=True)
        await _briefly(core.watch_replicas(period_s=0.01))
        assert core.health["main"] is True
        # Its only replica died; Serve starts another. A request waiting for the tier's
        # first output is told to fail over now.
        waiter = asyncio.get_running_loop().create_future()
        core._down_waiters["main"].add(waiter)
        task = asyncio.ensure_future(core.watch_replicas(period_s=0.01))
        await asyncio.sleep(0.03)
        watcher.now["main"] = ReplicaCount(running=0, starting=1, healthy=True)
        await asyncio.wait_for(waiter, timeout=1.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert core.health["main"] is False
        # A tier that scales to zero reaching zero is cold, not down.
        watcher.now["cheap"] = ReplicaCount(running=0, starting=0, healthy=True)
        await _briefly(core.watch_replicas(period_s=0.01))
        assert core.health["cheap"] is True and core.replicas["cheap"] == 0

    asyncio.run(run())
