"""The cascade (issue 3, item 5): pure decisions, and the gateway hook with honest fakes."""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from tierline.cluster.specfile import load_spec_text
from tierline.deployments.gateway import GatewayCore, create_app
from tierline.deployments.gateway.engines.engine_client import EngineItem, Method
from tierline.deployments.gateway.pipeline.tokens import EstimatingCounter
from tierline.router.cascade import (
    CascadePolicy,
    CascadeStep,
    cascaded_answer,
    logprob_fields,
    mean_token_logprob,
    next_tier,
    reason_suffix,
    request_threshold,
    should_escalate,
    total_usage,
)
from tierline.router.types import TierState

from tests.unit.fakes import FakeEngine

# Shapes as vLLM 0.29 returns them (OpenAI's formats).
CHAT: dict[str, Any] = {
    "object": "chat.completion",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "a b"},
            "logprobs": {
                "content": [
                    {"token": "a", "logprob": -0.5, "bytes": [97], "top_logprobs": []},
                    {"token": " b", "logprob": -1.5, "bytes": [32, 98], "top_logprobs": []},
                ]
            },
        }
    ],
    "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
}
TEXT: dict[str, Any] = {
    "object": "text_completion",
    "choices": [
        {
            "index": 0,
            "text": "a b c",
            "logprobs": {
                "tokens": ["a", " b", " c"],
                "token_logprobs": [-1.0, -2.0, -3.0],
                "top_logprobs": None,
                "text_offset": [0, 1, 3],
            },
        }
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
}


def test_mean_logprob_of_chat_and_text_answers() -> None:
    assert mean_token_logprob(CHAT) == pytest.approx(-1.0)
    assert mean_token_logprob(TEXT) == pytest.approx(-2.0)
    two = {"choices": [*CHAT["choices"], *TEXT["choices"]]}  # n=2: pooled over tokens
    assert mean_token_logprob(two) == pytest.approx((-2.0 - 6.0) / 5)
    assert mean_token_logprob({"choices": [{"message": {}, "logprobs": None}]}) is None
    assert mean_token_logprob({"choices": []}) is None
    inf = {"choices": [{"logprobs": {"token_logprobs": [-1.0, -math.inf]}}]}
    assert mean_token_logprob(inf) == pytest.approx((-1.0 - 1e9) / 2)


@given(
    st.one_of(st.none(), st.floats(-50, 0)),
    st.integers(0, 5),
    st.floats(-20, 0),
    st.integers(1, 4),
)
def test_should_escalate_only_below_threshold_within_budget(lp, done, threshold, most) -> None:
    policy = CascadePolicy(threshold, most)
    want = lp is not None and lp < threshold and done < most
    assert should_escalate(lp, done, policy) is want


def tiers(**overrides: dict[str, Any]) -> list[TierState]:
    base = [TierState("s", 100), TierState("m", 1000), TierState("l", 4000)]
    return [TierState(**{**t.__dict__, **overrides.get(t.name, {})}) for t in base]


def test_next_tier_walks_up_past_tiers_that_cannot_take_it() -> None:
    need = {"s": 50, "m": 50, "l": 50}
    assert next_tier("s", tiers(), need) == "m"
    assert next_tier("m", tiers(), need) == "l"
    assert next_tier("l", tiers(), need) is None
    assert next_tier("s", tiers(m={"healthy": False}), need) == "l"
    assert next_tier("s", tiers(m={"replicas": 0}), need) == "l"
    assert next_tier("s", tiers(m={"queued": 5, "queue_limit": 2}), need) == "l"
    assert next_tier("s", tiers(), {**need, "m": 2000}) == "l"
    assert next_tier("s", tiers(m={"healthy": False}, l={"healthy": False}), need) is None
    assert next_tier("x", tiers(), need) is None


def test_the_answer_counts_every_call_and_drops_logprobs_unless_asked() -> None:
    steps = [
        CascadeStep("s", -3.0, {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}),
        CascadeStep("l", -0.2, {"prompt_tokens": 8, "completion_tokens": 4, "total_tokens": 12}),
    ]
    assert total_usage(steps) == {"prompt_tokens": 15, "completion_tokens": 6, "total_tokens": 21}
    out = cascaded_answer(CHAT, steps, CascadePolicy(-1.0), keep_logprobs=False)
    assert out["usage"] == {"prompt_tokens": 15, "completion_tokens": 6, "total_tokens": 21}
    assert out["choices"][0]["logprobs"] is None and CHAT["choices"][0]["logprobs"]
    assert [s["tier"] for s in out["cascade"]["steps"]] == ["s", "l"]
    assert out["cascade"]["steps"][0]["usage"]["total_tokens"] == 9
    kept = cascaded_answer(CHAT, steps[:1], CascadePolicy(-1.0), keep_logprobs=True)
    assert kept["choices"][0]["logprobs"] == CHAT["choices"][0]["logprobs"]
    assert reason_suffix(steps) == "+cascade:s>l" and reason_suffix(steps[:1]) == ""


def test_logprob_fields_ask_for_sampled_token_logprobs() -> None:
    assert logprob_fields("chat", {}) == ({"logprobs": True}, False)
    assert logprob_fields("chat", {"logprobs": True, "top_logprobs": 2}) == ({}, True)
    assert logprob_fields("completions", {}) == ({"logprobs": 0}, False)
    assert logprob_fields("completions", {"logprobs": 3}) == ({}, True)


class LogprobEngine(FakeEngine):
    """FakeEngine plus vLLM-shaped log-probabilities (each token `logprob`) when asked."""

    def __init__(self, model: str, logprob: float, fail: str | None = None) -> None:
        super().__init__(model, fail)
        self.logprob = logprob

    async def generate(
        self, method: Method, body: dict[str, Any]
    ) -> AsyncGenerator[EngineItem, None]:
        async for item in super().generate(method, body):
            if isinstance(item, dict) and body.get("logprobs") not in (None, False):
                n = item["usage"]["completion_tokens"]
                lps = [self.logprob] * n
                if method == "chat":
                    content = [{"token": "w", "logprob": v, "top_logprobs": []} for v in lps]
                    item["choices"][0]["logprobs"] = {"content": content}
                else:
                    item["choices"][0]["logprobs"] = {"tokens": ["w"] * n, "token_logprobs": lps}
            yield item


SPEC = """
tiers:
  - {{name: small, model_source: org/small, max_context_tokens: 512}}
  - {{name: large, model_source: org/large, max_context_tokens: 4096}}
router:
  cascade: {{enabled: {enabled}, logprob_threshold: {threshold}}}
"""


def make(
    threshold: float = -1.0, enabled: bool = True, large_fail: str | None = None
) -> tuple[TestClient, dict[str, LogprobEngine]]:
    spec = load_spec_text(SPEC.format(enabled=str(enabled).lower(), threshold=threshold))
    engines = {
        "small": LogprobEngine("small", -3.0),
        "large": LogprobEngine("large", -0.2, large_fail),
    }
    counters = {t.name: EstimatingCounter() for t in spec.tiers}
    core = GatewayCore(spec, engines, counters)
    return TestClient(create_app(core), raise_server_exceptions=False), engines


def chat(**kw: Any) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, **kw}


def test_an_unsure_cheap_answer_is_escalated_and_both_count() -> None:
    client, engines = make(threshold=-1.0)
    r = client.post("/v1/chat/completions", json=chat())
    assert r.status_code == 200, r.text
    assert r.headers["x-tierline-tier"] == "large"
    assert r.headers["x-tierline-route-reason"].endswith("+cascade:small>large")
    body = r.json()
    assert body["model"] == "large"
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 6, "total_tokens": 16}
    assert [s["tier"] for s in body["cascade"]["steps"]] == ["small", "large"]
    assert body["cascade"]["steps"][0]["mean_logprob"] == -3.0
    assert body["choices"][0]["logprobs"] is None  # the client did not ask for them
    assert engines["small"].calls[0][1]["logprobs"] is True
    assert len(engines["large"].calls) == 1


def test_a_sure_cheap_answer_is_kept() -> None:
    client, engines = make(threshold=-5.0)
    r = client.post("/v1/completions", json={"model": "auto", "prompt": "hi", "max_tokens": 3})
    assert r.status_code == 200, r.text
    assert r.headers["x-tierline-tier"] == "small"
    assert "cascade" not in r.headers["x-tierline-route-reason"]
    assert r.json()["usage"]["total_tokens"] == 8 and not engines["large"].calls
    assert engines["small"].calls[0][1]["logprobs"] == 0
    assert r.json()["cascade"]["steps"][0]["tier"] == "small"


def test_logprobs_the_client_asked_for_stay() -> None:
    client, _ = make(threshold=-5.0)
    r = client.post("/v1/chat/completions", json=chat(logprobs=True))
    assert r.json()["choices"][0]["logprobs"]["content"][0]["logprob"] == -3.0


@pytest.mark.parametrize(
    ("kw", "enabled"),
    [({"stream": True}, True), ({"model": "small"}, True), ({}, False)],
)
def test_no_cascade_for_streams_pinned_tiers_or_when_off(kw: dict, enabled: bool) -> None:
    client, engines = make(threshold=0.0, enabled=enabled)
    r = client.post("/v1/chat/completions", json=chat(**kw))
    assert r.status_code == 200
    assert "cascade" not in r.headers["x-tierline-route-reason"]
    assert not engines["large"].calls
    assert "logprobs" not in engines["small"].calls[0][1]


def test_a_failed_escalation_keeps_the_cheap_answer() -> None:
    client, engines = make(threshold=-1.0, large_fail="error")
    r = client.post("/v1/chat/completions", json=chat())
    assert r.status_code == 200, r.text
    assert r.headers["x-tierline-tier"] == "small"
    assert "cascade" not in r.headers["x-tierline-route-reason"]
    assert r.json()["usage"]["total_tokens"] == 8 and engines["large"].calls


def test_a_request_may_set_its_own_threshold() -> None:
    client, engines = make(threshold=-1e9)  # on, but escalates only when a request asks
    r = client.post("/v1/chat/completions", json=chat())
    assert r.headers["x-tierline-tier"] == "small" and not engines["large"].calls
    forced = {"x-tierline-cascade-threshold": "0"}
    r = client.post("/v1/chat/completions", json=chat(), headers=forced)
    assert r.headers["x-tierline-route-reason"].endswith("+cascade:small>large")
    for bad in ("0.5", "abc", "nan", ""):
        r = client.post(
            "/v1/chat/completions", json=chat(), headers={"x-tierline-cascade-threshold": bad}
        )
        assert r.status_code == 400 and "x-tierline-cascade-threshold" in r.text


def test_request_threshold_parsing() -> None:
    assert request_threshold(None, -1.5) == -1.5
    assert request_threshold("-0.25", -1.5) == -0.25
    assert request_threshold("-inf", -1.5) == -math.inf
    for bad in ("1", "x", "nan", "inf"):
        with pytest.raises(ValueError, match="at most 0"):
            request_threshold(bad, -1.5)


def test_a_bad_threshold_is_refused_before_anything_is_held() -> None:
    spec = load_spec_text(SPEC.format(enabled="true", threshold=-1.0))
    engines = {t.name: LogprobEngine(t.name, -3.0) for t in spec.tiers}
    core = GatewayCore(spec, engines, {t.name: EstimatingCounter() for t in spec.tiers})
    client = TestClient(create_app(core), raise_server_exceptions=False)
    for _ in range(3):
        r = client.post(
            "/v1/chat/completions", json=chat(), headers={"x-tierline-cascade-threshold": "1"}
        )
        assert r.status_code == 400 and r.headers["x-tierline-tier"] == "none"
    assert core.active == 0 and core.slots.in_flight == {"small": 0, "large": 0}
    assert not engines["small"].calls
