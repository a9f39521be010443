"""Quotas, tenant tiers, failover, fallback, backpressure and drain at the gateway."""

from __future__ import annotations

import asyncio
import itertools

from tierline.cluster.specfile import load_spec_text
from tierline.deployments.gateway import GatewayCore
from tierline.deployments.gateway.pipeline.schemas import ChatCompletionBody
from tierline.deployments.gateway.pipeline.tokens import EstimatingCounter
from tierline.deployments.gateway.quota.service import LocalQuota, ledger_for

from tests.unit.fakes import FakeEngine
from tests.unit.test_gateway import SPEC, assert_openai_error, chat, make

TENANTS = (
    SPEC
    + """  tenants:
    - name: default
      requests_per_min: 3
      tiers: [small]
"""
)


def quota_for(text: str, clock: list[float]) -> LocalQuota:
    return LocalQuota(ledger_for(load_spec_text(text).gateway), lambda: clock[0])


def test_quota_429_with_retry_after_then_recovers() -> None:
    clock = [0.0]
    client, _ = make(spec_text=TENANTS, quota=quota_for(TENANTS, clock))
    codes = [client.post("/v1/chat/completions", json=chat()).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    r = client.post("/v1/chat/completions", json=chat())
    err = assert_openai_error(r, 429)
    assert err["code"] == "quota_exceeded" and int(r.headers["retry-after"]) >= 1
    clock[0] = 61.0
    assert client.post("/v1/chat/completions", json=chat()).status_code == 200


def test_tenant_limited_to_tiers() -> None:
    client, _ = make(spec_text=TENANTS)
    r = client.post("/v1/chat/completions", json=chat(model="large"))
    assert assert_openai_error(r, 403)["code"] == "tier_not_allowed"
    hard = client.post("/v1/chat/completions", json=chat("please prove this"))
    assert hard.headers["x-tierline-tier"] == "small"  # auto stays inside the allowed tiers


def test_concurrency_quota_counts_open_streams() -> None:
    text = SPEC + "  default_quota:\n    max_concurrent: 1\n"
    client, _ = make(spec_text=text, quota=quota_for(text, [0.0]))
    with client.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as first:
        assert first.status_code == 200
        assert client.post("/v1/chat/completions", json=chat()).status_code == 429
        list(first.iter_lines())
    assert client.post("/v1/chat/completions", json=chat()).status_code == 200


class FlakyEngine(FakeEngine):
    """Dies before its first token `failures` times, then answers."""

    def __init__(self, model: str, failures: int) -> None:
        super().__init__(model)
        self.failures = itertools.count()
        self.limit = failures

    async def generate(self, method, body):  # type: ignore[no-untyped-def,override]
        if next(self.failures) < self.limit:
            self.calls.append((method, body))
            raise ConnectionError("replica died")
        async for item in super().generate(method, body):
            yield item


def core_with(engines: dict[str, FakeEngine], text: str = SPEC) -> GatewayCore:
    spec = load_spec_text(text)
    return GatewayCore(spec, engines, {t.name: EstimatingCounter() for t in spec.tiers})


def run(core: GatewayCore, body: dict[str, object]):  # type: ignore[no-untyped-def]
    return asyncio.run(core.generate("chat", ChatCompletionBody.model_validate(body)))


def test_failures_before_output_are_retried() -> None:
    small = FlakyEngine("small-model", failures=2)  # spec retries: 2 -> third try succeeds
    core = core_with({"small": small, "large": FakeEngine("large")})
    resp = run(core, chat())
    assert resp.status_code == 200 and len(small.calls) == 3
    assert core.active == 0


def test_then_the_fallback_tier_takes_it() -> None:
    text = SPEC.replace(
        "    served_model_name: small-model\n",
        "    served_model_name: small-model\n    fallback_tier: large\n",
    )
    small, large = FlakyEngine("small-model", failures=99), FakeEngine("large")
    core = core_with({"small": small, "large": large}, text)
    resp = run(core, chat())
    assert resp.status_code == 200
    assert resp.headers["x-tierline-tier"] == "large"
    assert resp.headers["x-tierline-route-reason"] == "auto:default+fallback"
    assert len(small.calls) == 3 and len(large.calls) == 1


def test_exhausted_retries_503_and_auto_skips_the_dead_tier() -> None:
    small = FlakyEngine("small-model", failures=3)
    core = core_with({"small": small, "large": FakeEngine("large")})
    err = None
    try:
        run(core, chat())
    except Exception as e:  # APIError
        err = e
    assert getattr(err, "status", None) == 503 and core.health["small"] is False
    resp = run(core, chat())
    assert resp.headers["x-tierline-tier"] == "large"
    assert "unhealthy" in resp.headers["x-tierline-route-reason"]
    try:
        run(core, chat(model="small"))
    except Exception as e:
        assert getattr(e, "status", None) == 503


def test_engine_backpressure_is_503_with_retry_after() -> None:
    client, engines = make({"small": "error"})
    engines["small"].status = 503
    r = client.post("/v1/chat/completions", json=chat())
    assert_openai_error(r, 503)
    assert r.headers["retry-after"] == "1"


def test_drain_refuses_new_and_waits_for_in_flight() -> None:
    async def scenario() -> tuple[int, int, int]:
        slow = FakeEngine("small-model")
        core = core_with({"small": slow, "large": FakeEngine("large")})
        body = ChatCompletionBody.model_validate(chat(stream=True))
        resp = await core.generate("chat", body)  # a stream in flight
        drain = asyncio.create_task(core.drain(5.0))
        await asyncio.sleep(0.1)
        try:
            await core.generate("chat", ChatCompletionBody.model_validate(chat()))
            refused = 0
        except Exception as e:
            refused = getattr(e, "status", 0)
        async for _ in resp.events:  # the in-flight stream completes
            pass
        left = await drain
        return refused, left, core.active

    refused, left, active = asyncio.run(scenario())
    assert (refused, left, active) == (503, 0, 0)


def test_health_watch_marks_down_only_after_repeated_failures_of_a_live_tier() -> None:
    class Scripted(FakeEngine):
        """Answers health checks from a script, noting the tier's health before each."""

        def __init__(self, answers: list[bool]) -> None:
            super().__init__("small-model")
            self.answers = answers
            self.core: GatewayCore | None = None
            self.health_before: list[bool] = []
            self.done = asyncio.Event()

        async def healthy(self, timeout_s: float) -> bool:
            assert self.core is not None
            self.health_before.append(self.core.health["small"])
            if len(self.answers) == 1:
                self.done.set()
            return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    async def watch(answers: list[bool]) -> list[bool]:
        small = Scripted(list(answers))
        core = core_with({"small": small, "large": FakeEngine("large")})
        small.core = core
        task = asyncio.create_task(core.watch_health(period_s=0, failures_to_down=3))
        await asyncio.wait_for(small.done.wait(), 5)
        task.cancel()
        return small.health_before[1:]  # health after each answer

    # still warming up (never answered yet): not marked down however long it takes
    assert all(asyncio.run(watch([False] * 6)))
    # up, two failures (not enough), up, then three failures in a row: down; then up again
    after = asyncio.run(watch([True, False, False, True, False, False, False, True, True]))
    assert after == [True, True, True, True, True, True, False, True]
