"""Capability-aware routing: what a tier can serve, and the hard rule before the router.

The pure core (`router.capabilities`) and the gateway's use of it (`plan.scope`, the
route, `/v1/models`) are driven over generated requests and tier sets: whatever the
request, `auto` only ever lands on a tier that can serve it, and a request no allowed
tier can serve is a 400 that names what is missing. No Ray, no engines (fakes).
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tierline.cluster.specfile import load_spec_text, parse_spec
from tierline.deployments.engine.deployment import llm_config_kwargs
from tierline.deployments.errors import APIError
from tierline.deployments.gateway import GatewayCore, create_app
from tierline.deployments.gateway.observe.metrics import reason_kind
from tierline.deployments.gateway.pipeline.plan import (
    REASON_HEADER,
    TIER_HEADER,
    count_prompt_tokens,
    decide_route,
    request_needs,
    rules_policy,
    scope,
    spec_capabilities,
)
from tierline.deployments.gateway.pipeline.schemas import ChatCompletionBody
from tierline.deployments.gateway.pipeline.tokens import EstimatingCounter
from tierline.router import TierState
from tierline.router.capabilities import (
    Capabilities,
    Needs,
    capable,
    needs_of,
    read_model_config,
    refusal,
    tier_capabilities,
    unmet,
)

from tests.unit.fakes import FakeEngine

NEEDS = ("tools", "vision", "structured_output")

# -- the pure core ---------------------------------------------------------------------------
caps_st = st.builds(
    Capabilities,
    tools=st.booleans(),
    vision=st.booleans(),
    structured_output=st.booleans(),
    max_context_tokens=st.integers(16, 4096),
)
needs_st = st.builds(
    Needs,
    tools=st.booleans(),
    vision=st.booleans(),
    structured_output=st.booleans(),
)


@settings(deadline=None)
@given(
    needs=needs_st,
    tiers=st.dictionaries(st.sampled_from("abcdefgh"), caps_st, min_size=1, max_size=6),
    context=st.integers(0, 5000),
)
def test_capable_keeps_exactly_the_tiers_that_have_every_need(
    needs: Needs, tiers: dict[str, Capabilities], context: int
) -> None:
    needs = Needs(needs.tools, needs.vision, needs.structured_output, dict.fromkeys(tiers, context))
    verdict = capable(needs, tiers)
    assert list(verdict.tiers) == [n for n in tiers if n in verdict.tiers]  # order kept
    assert set(verdict.tiers) | set(verdict.refused) == set(tiers)
    assert not set(verdict.tiers) & set(verdict.refused)
    for name, caps in tiers.items():
        ok = (
            (not needs.tools or caps.tools)
            and (not needs.vision or caps.vision)
            and (not needs.structured_output or caps.structured_output)
            and context <= caps.max_context_tokens
        )
        assert (name in verdict.tiers) == ok
        if not ok:
            assert verdict.refused[name] == unmet(needs, caps, name)
    if not verdict.tiers:
        code, message = refusal(verdict)
        assert code == "no_capable_tier"
        assert all(repr(n) in message for n in tiers)


def body_st() -> st.SearchStrategy[dict[str, Any]]:
    """Chat completions bodies with and without tools, images and JSON schemas."""
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    part = st.sampled_from(
        [
            {"type": "text", "text": "hi"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        ]
    )
    content = st.one_of(st.text(min_size=1, max_size=30), st.lists(part, min_size=1, max_size=3))
    message = st.fixed_dictionaries({"role": st.just("user"), "content": content})
    optional = {
        "tools": st.one_of(st.just([]), st.just([tool]), st.just("not a list")),
        "tool_choice": st.sampled_from(
            ["auto", "required", "none", {"type": "function", "function": {"name": "f"}}]
        ),
        "response_format": st.sampled_from(
            [{"type": "text"}, {"type": "json_object"}, {"type": "json_schema"}, "junk"]
        ),
    }
    return st.fixed_dictionaries(
        {"model": st.just("auto"), "messages": st.lists(message, min_size=1, max_size=3)},
        optional=optional,
    )


def expected_needs(body: dict[str, Any]) -> tuple[bool, bool, bool]:
    tools = bool(body.get("tools")) and isinstance(body["tools"], list)
    tools = tools and body.get("tool_choice") != "none"
    vision = any(
        isinstance(m["content"], list) and any(p["type"] == "image_url" for p in m["content"])
        for m in body["messages"]
    )
    fmt = body.get("response_format")
    structured = isinstance(fmt, dict) and fmt["type"] in ("json_object", "json_schema")
    return tools, vision, structured


@settings(deadline=None)
@given(body_st())
def test_needs_of_reads_tools_images_and_schemas(body: dict[str, Any]) -> None:
    needs = needs_of(body)
    assert (needs.tools, needs.vision, needs.structured_output) == expected_needs(body)
    # The gateway's reading of the validated body agrees with the plain-dict one.
    got = request_needs(ChatCompletionBody.model_validate(body))
    assert (got.tools, got.vision, got.structured_output) == expected_needs(body)


def test_needs_of_reads_responses_bodies() -> None:
    image = {"type": "input_image", "image_url": "https://x/y.png"}
    body = {
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}, image]}],
        "tools": [{"type": "function", "name": "f", "parameters": {}}],
        "text": {"format": {"type": "json_schema", "name": "x", "schema": {}}},
    }
    assert needs_of(body) == Needs(tools=True, vision=True, structured_output=True)
    assert needs_of({"input": "just text"}) == Needs()


def test_inference_from_spec_and_model_config(tmp_path) -> None:
    spec = load_spec_text(
        """
tiers:
  - {name: a, model_source: /m/a, max_context_tokens: 64}
  - {name: b, model_source: /m/b, max_context_tokens: 128, tool_call_parser: hermes,
     reasoning_parser: deepseek_r1}
  - {name: c, model_source: /m/c, max_context_tokens: 64, tool_call_parser: hermes,
     capabilities: {tools: false, vision: true, structured_output: false}}
  - name: d
    max_context_tokens: 64
    external: {base_url: "https://api.example.com/v1", model: gpt}
"""
    )
    a, b, c, d = (tier_capabilities(t) for t in spec.tiers)
    assert (a.tools, a.vision, a.structured_output, a.reasoning) == (False, False, True, False)
    assert (b.tools, b.reasoning, b.max_context_tokens) == (True, True, 128)
    assert (c.tools, c.vision, c.structured_output) == (False, True, False)  # declared wins
    assert (d.tools, d.vision) == (True, False)
    vision_config = {"model_type": "llava", "vision_config": {"hidden_size": 8}}
    assert tier_capabilities(spec.tiers[0], vision_config).vision
    (tmp_path / "config.json").write_text('{"vision_config": {"x": 1}}')
    assert read_model_config(str(tmp_path)) == {"vision_config": {"x": 1}}
    assert read_model_config(str(tmp_path / "missing")) is None
    assert read_model_config("org/hub-id") is None


# -- the gateway's hard rule -------------------------------------------------------------------
TIERS = st.lists(
    st.fixed_dictionaries(
        {
            "tools": st.booleans(),
            "vision": st.booleans(),
            "structured_output": st.booleans(),
        }
    ),
    min_size=1,
    max_size=4,
)


def spec_of(declared: list[dict[str, bool]], tenant_tiers: list[int] | None = None) -> Any:
    tiers = [
        {
            "name": f"t{i}",
            "model_source": f"org/t{i}",
            "max_context_tokens": 4096,
            "capabilities": caps,
        }
        for i, caps in enumerate(declared)
    ]
    gateway: dict[str, Any] = {}
    if tenant_tiers is not None:
        gateway["default_quota"] = {"tiers": [f"t{i}" for i in tenant_tiers]}
    return parse_spec({"tiers": tiers, "gateway": gateway})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(declared=TIERS, body=body_st(), pin=st.integers(-1, 3), data=st.data())
def test_auto_only_lands_on_a_tier_that_can_serve(
    declared: list[dict[str, bool]], body: dict[str, Any], pin: int, data: st.DataObject
) -> None:
    n = len(declared)
    tenant = data.draw(
        st.one_of(st.none(), st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
    )
    spec = spec_of(declared, sorted(tenant) if tenant is not None else None)
    allowed = [f"t{i}" for i in range(n) if tenant is None or i in tenant]
    pinned = f"t{pin}" if 0 <= pin < n and f"t{pin}" in allowed else None
    if pinned is not None:
        body = {**body, "model": pinned}
    tools, vision, structured = expected_needs(body)

    def can(name: str) -> bool:
        caps = declared[int(name[1:])]
        return (
            (not tools or caps["tools"])
            and (not vision or caps["vision"])
            and (not structured or caps["structured_output"])
        )

    parsed = ChatCompletionBody.model_validate(body)
    counters = {t.name: EstimatingCounter() for t in spec.tiers}
    try:
        where = scope(spec, spec.gateway.default_quota, parsed, "default")
    except APIError as err:
        assert err.status == 400
        if pinned is not None:
            assert err.code == "tier_not_capable" and not can(pinned)
        else:
            assert err.code == "no_capable_tier" and not any(can(t) for t in allowed)
        assert err.param in ("tools", "messages", "response_format")
        return
    # Served: every candidate and every failover/cascade tier can serve the request.
    assert all(can(name) for name in where.names)
    assert where.allowed is None or all(can(name) for name in where.allowed)
    if where.allowed is None:
        assert all(can(t) for t in allowed)
    if pinned is not None:
        assert where.names == (pinned,)
    else:
        assert set(where.names) == {t for t in allowed if can(t)}
    plan = where.plan(count_prompt_tokens(parsed, counters, where.names), parsed.text())
    states = [TierState(t.name, t.max_context_tokens) for t in where.tiers]
    decision = decide_route(plan, states, rules_policy(spec))
    assert can(decision.tier)


# -- over HTTP -------------------------------------------------------------------------------
SPEC = """
tiers:
  - {name: small, model_source: org/small, max_context_tokens: 256,
     price_per_1m_input_tokens: 0.1, fallback_tier: large}
  - {name: large, model_source: org/large, max_context_tokens: 1024, tool_call_parser: hermes,
     price_per_1m_input_tokens: 1.0, price_per_1m_output_tokens: 3.0}
embeddings: {enabled: true, price_per_1m_input_tokens: 0.02}
"""
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


@pytest.fixture
def gateway() -> tuple[TestClient, GatewayCore]:
    spec = load_spec_text(SPEC)
    engines = {t.name: FakeEngine(t.model_name) for t in spec.tiers}
    core = GatewayCore(spec, engines, {t.name: EstimatingCounter() for t in spec.tiers})
    return TestClient(create_app(core), raise_server_exceptions=False), core


def test_tools_under_auto_go_to_the_tool_tier_and_say_why(gateway) -> None:
    client, _ = gateway
    msg = [{"role": "user", "content": "hi"}]
    r = client.post(
        "/v1/chat/completions",
        json={"model": "auto", "messages": msg, "tools": [TOOL], "max_tokens": 2},
    )
    assert r.status_code == 200, r.text
    assert r.headers[TIER_HEADER] == "large"
    assert r.headers[REASON_HEADER].endswith("+needs-tools")
    assert reason_kind(r.headers[REASON_HEADER]) != "other"  # a bounded metrics label
    plain = client.post("/v1/chat/completions", json={"model": "auto", "messages": msg})
    assert plain.headers[TIER_HEADER] == "small"  # no tools: the router's usual choice


def test_a_request_no_tier_can_serve_is_a_400_naming_why(gateway) -> None:
    client, _ = gateway
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    msg = [{"role": "user", "content": [{"type": "text", "text": "what is this"}, image]}]
    r = client.post("/v1/chat/completions", json={"model": "auto", "messages": msg})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "no_capable_tier" and err["param"] == "messages"
    assert "image input" in err["message"] and "'small'" in err["message"]
    assert r.headers[REASON_HEADER] == "rejected:no_capable_tier"
    pinned = client.post(
        "/v1/chat/completions",
        json={"model": "small", "messages": [{"role": "user", "content": "x"}], "tools": [TOOL]},
    )
    assert pinned.status_code == 400
    assert pinned.json()["error"]["code"] == "tier_not_capable"
    # tool_choice none asks for no tool call: any tier serves it.
    none = client.post(
        "/v1/chat/completions",
        json={
            "model": "small",
            "messages": [{"role": "user", "content": "x"}],
            "tools": [TOOL],
            "tool_choice": "none",
        },
    )
    assert none.status_code == 200, none.text


def test_models_list_capabilities_prices_and_the_embedding_model(gateway) -> None:
    client, _ = gateway
    cards = {c["id"]: c for c in client.get("/v1/models").json()["data"]}
    large = cards["large"]
    assert large["type"] == "chat"
    assert large["capabilities"] == {
        "tools": True,
        "vision": False,
        "structured_output": True,
        "reasoning": False,
        "max_context_tokens": 1024,
        "adapters": [],
    }
    assert large["pricing"] == {"input_per_1m_tokens": 1.0, "output_per_1m_tokens": 3.0}
    assert cards["small"]["capabilities"]["tools"] is False
    emb = cards["all-MiniLM-L6-v2"]
    assert emb["type"] == "embedding" and emb["dimensions"] == 384
    assert emb["pricing"] == {"input_per_1m_tokens": 0.02}
    assert client.get("/v1/models/all-MiniLM-L6-v2").json()["type"] == "embedding"


def test_capabilities_from_model_configs_reach_the_cards() -> None:
    spec = load_spec_text(SPEC)
    caps = spec_capabilities(spec, {"small": {"vision_config": {"x": 1}}})
    core = GatewayCore(
        spec,
        {t.name: FakeEngine(t.model_name) for t in spec.tiers},
        {t.name: EstimatingCounter() for t in spec.tiers},
        capabilities=caps,
    )
    card = next(c for c in core.model_cards() if c["id"] == "small")
    assert card["capabilities"]["vision"] is True


# -- the engine and the spec -----------------------------------------------------------------
def test_parsers_and_template_reach_vllm(tmp_path) -> None:
    (tmp_path / "t.jinja").write_text("{{ messages }}")
    (tmp_path / "spec.yaml").write_text(
        "tiers:\n  - {name: a, model_source: org/a, max_context_tokens: 64, "
        "tool_call_parser: hermes, reasoning_parser: qwen3, chat_template: ./t.jinja}\n"
    )
    from tierline.cluster.specfile import load_spec

    tier = load_spec(tmp_path / "spec.yaml").tiers[0]
    kwargs = llm_config_kwargs(tier)["engine_kwargs"]
    assert kwargs["enable_auto_tool_choice"] is True
    assert kwargs["tool_call_parser"] == "hermes"
    assert kwargs["reasoning_parser"] == "qwen3"
    assert kwargs["chat_template"] == str(tmp_path / "t.jinja")
    plain = load_spec_text("tiers: [{name: a, model_source: org/a, max_context_tokens: 64}]")
    assert "enable_auto_tool_choice" not in llm_config_kwargs(plain.tiers[0])["engine_kwargs"]


@pytest.mark.parametrize(
    "tier, error",
    [
        (
            "{name: a, model_source: o/a, max_context_tokens: 64, "
            "engine_kwargs: {tool_call_parser: hermes}}",
            "engine_kwargs may not set",
        ),
        (
            "{name: a, model_source: o/a, max_context_tokens: 64, chat_template: '{{ x }}'}",
            "not a file path",
        ),
        (
            "{name: a, max_context_tokens: 64, tool_call_parser: hermes, "
            "external: {base_url: 'https://x/v1', model: m}}",
            "external tier runs no engine",
        ),
        (
            "{name: a, model_source: o/a, max_context_tokens: 64, capabilities: {audio: true}}",
            "audio",
        ),
    ],
)
def test_spec_rejects_misplaced_parser_fields(tier: str, error: str) -> None:
    with pytest.raises(Exception, match=error):
        load_spec_text(f"tiers: [{tier}]")


def test_requests_with_one_capable_tier_leave_the_calibration_alone() -> None:
    from tierline.deployments.gateway.pipeline.routing import LearnedRouter
    from tierline.router.embedding import HashingEmbedder
    from tierline.router.head import Head
    from tierline.router.scorer import SHIPPED_ARTIFACT

    spec = load_spec_text(SPEC + "router: {policy: learned, learned: {strong_share: 0.5}}\n")
    router = LearnedRouter(spec, HashingEmbedder(), Head.load(SHIPPED_ARTIFACT))
    core = GatewayCore(
        spec,
        {t.name: FakeEngine(t.model_name) for t in spec.tiers},
        {t.name: EstimatingCounter() for t in spec.tiers},
        learned=router,
    )
    client = TestClient(create_app(core), raise_server_exceptions=False)
    msg = [{"role": "user", "content": "hi"}]
    for _ in range(3):
        r = client.post(
            "/v1/chat/completions", json={"model": "auto", "messages": msg, "tools": [TOOL]}
        )
        assert r.headers[TIER_HEADER] == "large"
        assert r.headers[REASON_HEADER].startswith("auto:learned:")
    assert router.state.seen == 0  # no choice was made: nothing to calibrate on
    client.post("/v1/chat/completions", json={"model": "auto", "messages": msg})
    assert router.state.seen == 1
