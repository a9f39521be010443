"""Hostile inputs (issue 27): each request's work is bounded and charged before it is done.

One test per class of request that used to cost more than it was charged, or that one
tenant could use to slow every other: tools and images reserved by the quota, engine
fields allow-listed and capped, grammars capped, deeply nested JSON refused with 400.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tierline.cluster.spec import RequestLimitsSpec
from tierline.cluster.specfile import load_spec_text
from tierline.deployments.errors import APIError
from tierline.deployments.gateway import GatewayCore, create_app
from tierline.deployments.gateway.pipeline.bounds import (
    ENGINE_FIELDS,
    check_engine_fields,
    json_depth,
    too_deep,
)
from tierline.deployments.gateway.pipeline.plan import count_prompts, scope
from tierline.deployments.gateway.pipeline.schemas import ChatCompletionBody
from tierline.deployments.gateway.pipeline.tokens import EstimatingCounter
from tierline.deployments.gateway.quota.service import LocalQuota, ledger_for

from tests.unit.fakes import GatedEngine
from tests.unit.test_gateway import SPEC, assert_openai_error, chat, make

QUOTA_SPEC = """
tiers:
  - name: small
    model_source: org/small
    max_context_tokens: 32768
    capabilities: {tools: true, vision: true, structured_output: true}
gateway:
  max_body_bytes: 4194304
  default_quota:
    tokens_per_min: 2000
"""


def tools(approx_bytes: int) -> list[dict[str, Any]]:
    """Function tools whose JSON is about `approx_bytes` long."""
    out, size, i = [], 0, 0
    while size < approx_bytes:
        tool = {
            "type": "function",
            "function": {
                "name": f"fn_{i}",
                "description": "looks up a record " * 10,
                "parameters": {
                    "type": "object",
                    "properties": {f"field_{j}": {"type": "string"} for j in range(8)},
                },
            },
        }
        out.append(tool)
        size += len(json.dumps(tool))
        i += 1
    return out


# -- tools, tool_choice, response_format and images are reserved -------------------------------
def test_tools_are_counted_in_the_prompt_each_tier_reserves() -> None:
    counter = EstimatingCounter()
    plain = ChatCompletionBody.model_validate(chat())
    tooled = ChatCompletionBody.model_validate(
        chat(tools=tools(8000), tool_choice="auto", response_format={"type": "json_object"})
    )
    (bare, _), (with_tools, total) = (
        count_prompts(b, {"small": counter}, ["small"]) for b in (plain, tooled)
    )
    extra = tooled.model_extra or {}
    fields = {k: extra[k] for k in ("tools", "tool_choice", "response_format")}
    rendered = json.dumps(fields, separators=(",", ":"))
    assert with_tools["small"] - bare["small"] >= len(rendered) // 4 - 50
    assert total == with_tools  # counted for context fit and for the quota


def test_image_parts_reserve_their_tokens() -> None:
    spec = load_spec_text(QUOTA_SPEC)
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    body = ChatCompletionBody.model_validate(
        chat(content=[{"type": "text", "text": "what is it"}, image, image])
    )
    where = scope(spec, spec.gateway.default_quota, body, "t")
    plan = where.plan(count_prompts(body, {"small": EstimatingCounter()}, ["small"])[0], "")
    plain = where.plan(plan.prompt_tokens, "")
    per_image = spec.gateway.limits.image_reserve_tokens
    assert plan.reservation("small") == plan.prompt_tokens["small"] + 2 * per_image + 4
    assert plain.needed("small") == plan.prompt_tokens["small"] + 4  # context fit: tokenizer's


async def _parallel_tool_requests(n: int, tool_bytes: int) -> list[int]:
    spec = load_spec_text(QUOTA_SPEC)
    gate = asyncio.Event()
    quota = LocalQuota(ledger_for(spec.gateway), lambda: 0.0)
    core = GatewayCore(
        spec, {"small": GatedEngine("small", gate)}, {"small": EstimatingCounter()}, quota
    )
    app = create_app(core)
    body = chat(max_tokens=1, tools=tools(tool_bytes))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        pending = [asyncio.create_task(c.post("/v1/chat/completions", json=body)) for _ in range(n)]
        await asyncio.sleep(0.5)  # every request is admitted or refused by now
        gate.set()
        return [r.status_code for r in await asyncio.gather(*pending)]


def test_parallel_requests_with_large_tools_cannot_pass_the_token_quota() -> None:
    """Before: 30 requests with max_tokens 1 and 3 kB of tools each were all admitted under
    tokens_per_min 2000 (each reserved its messages alone, ~15 tokens)."""
    codes = asyncio.run(_parallel_tool_requests(30, 3000))
    admitted = codes.count(200)
    assert set(codes) <= {200, 429}
    reservation = 3000 // 4  # each request's tools, at the estimator's 4 bytes a token
    assert 1 <= admitted <= 2000 // reservation, codes


def test_a_request_whose_tools_alone_pass_the_quota_is_told_so() -> None:
    spec = load_spec_text(QUOTA_SPEC)
    client, _ = make(spec_text=QUOTA_SPEC, quota=LocalQuota(ledger_for(spec.gateway), lambda: 0.0))
    r = client.post("/v1/chat/completions", json=chat(max_tokens=1, tools=tools(12_000)))
    assert "tokens_per_min" in assert_openai_error(r, 429)["message"]
    assert client.post("/v1/chat/completions", json=chat(max_tokens=1)).status_code == 200


# -- engine fields: allow-listed and capped -----------------------------------------------------
CAPPED = [
    ({"stop": [f"s{i}" for i in range(5)]}, "stop", "max_stop_sequences"),
    ({"stop": "x" * 257}, "stop", "max_stop_chars"),
    ({"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias", "max_logit_bias"),
    ({"bad_words": [f"w{i}" for i in range(65)]}, "bad_words", "max_bad_words"),
    ({"stop_token_ids": list(range(1025))}, "stop_token_ids", "max_token_ids"),
    ({"allowed_token_ids": list(range(1025))}, "allowed_token_ids", "max_token_ids"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "max_top_logprobs"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}] * 129}, "tools", "max_tools"),
]


@pytest.mark.parametrize(("extra", "param", "setting"), CAPPED)
def test_engine_fields_over_their_caps_get_400_naming_the_setting(
    extra: dict[str, Any], param: str, setting: str
) -> None:
    client, engines = make()
    err = assert_openai_error(client.post("/v1/chat/completions", json=chat(**extra)), 400)
    assert err["param"] == param and f"gateway.limits.{setting}" in err["message"]
    assert not any(e.calls for e in engines.values())


@pytest.mark.parametrize(
    "extra",
    [
        {"stop": {"a": 1}},
        {"logit_bias": ["1"]},
        {"logit_bias": {"x": 1}},
        {"logit_bias": {"1": 500}},
        {"bad_words": [1, 2]},
        {"stop_token_ids": [-1]},
        {"top_logprobs": -1},
        {"chat_template_kwargs": {"x": {"nested": True}}},
    ],
)
def test_engine_fields_of_the_wrong_shape_get_400(extra: dict[str, Any]) -> None:
    client, _ = make()
    err = assert_openai_error(client.post("/v1/chat/completions", json=chat(**extra)), 400)
    assert err["param"] == next(iter(extra))


def _schema(approx_bytes: int) -> dict[str, Any]:
    props: dict[str, Any] = {}
    i = 0
    while len(json.dumps(props)) < approx_bytes:
        props[f"property_{i}"] = {"type": "string", "enum": [f"v{i}_{j}" for j in range(20)]}
        i += 1
    return {"type": "object", "properties": props, "required": list(props)}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "big", "schema": _schema(148_000)},
                }
            },
            "response_format",
        ),
        ({"guided_json": _schema(40_000)}, "guided_json"),
        ({"structured_outputs": {"json": _schema(40_000)}}, "structured_outputs"),
        ({"guided_regex": "a" * 40_000}, "guided_regex"),
        ({"tools": tools(40_000), "tool_choice": "required"}, "tools"),
    ],
)
def test_a_grammar_over_the_size_cap_is_refused_before_the_engine(
    extra: dict[str, Any], param: str
) -> None:
    """Before: a 148 kB JSON schema went to the engine, where xgrammar took 14 s on it."""
    text = SPEC.replace("max_body_bytes: 16384", "max_body_bytes: 1048576").replace(
        "    max_context_tokens: 1024\n",
        "    max_context_tokens: 1024\n    capabilities: {tools: true, structured_output: true}\n",
    )
    client, engines = make(spec_text=text)
    r = client.post("/v1/chat/completions", json=chat(model="large", **extra))
    err = assert_openai_error(r, 400)
    assert err["param"] == param and "gateway.limits.max_grammar_bytes" in err["message"]
    assert not engines["large"].calls


def test_a_large_tool_list_is_no_grammar_unless_a_call_is_forced() -> None:
    limits = RequestLimitsSpec()
    many = tools(40_000)
    check_engine_fields(limits, {"tools": many, "tool_choice": "auto"})  # no grammar: passes
    named = {"type": "function", "function": {"name": "fn_0"}}
    check_engine_fields(limits, {"tools": many, "tool_choice": named})  # one small tool
    with pytest.raises(APIError):
        check_engine_fields(limits, {"tools": many, "tool_choice": "required"})


def test_engine_tiers_get_only_allow_listed_fields() -> None:
    client, engines = make()
    body = chat(
        model="small",
        top_k=5,
        stop=["\n"],
        priority=-100,
        chat_template="{{ 'pwned' }}",
        cache_salt="another-tenant",
        logits_processors=["evil.module:Proc"],
        kv_transfer_params={"x": 1},
        prompt_logprobs=20,
    )
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    sent = engines["small"].calls[0][1]
    assert sent["top_k"] == 5 and sent["stop"] == ["\n"]
    assert set(sent) <= ENGINE_FIELDS
    for dropped in ("priority", "chat_template", "logits_processors"):
        assert dropped not in sent
    assert sent["cache_salt"] != "another-tenant"  # the tenant's own (test_isolation)


_scalars = st.one_of(st.text(max_size=4), st.integers(), st.booleans(), st.none())


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    stop=st.one_of(st.none(), st.text(max_size=300), st.lists(st.text(max_size=8), max_size=8)),
    bias=st.one_of(
        st.none(),
        st.dictionaries(st.integers(0, 10**6).map(str), st.integers(-100, 100), max_size=320),
    ),
    top=st.one_of(st.none(), st.integers(0, 40)),
)
def test_fuzz_the_caps_refuse_exactly_what_is_over_them(
    stop: Any, bias: dict[str, int] | None, top: int | None
) -> None:
    limits = RequestLimitsSpec()
    data = {"stop": stop, "logit_bias": bias, "top_logprobs": top}
    stops = [stop] if isinstance(stop, str) else stop or []
    over = (
        len(stops) > limits.max_stop_sequences
        or any(len(s) > limits.max_stop_chars for s in stops)
        or len(bias or {}) > limits.max_logit_bias
        or (top or 0) > limits.max_top_logprobs
    )
    try:
        check_engine_fields(limits, data)
    except APIError as err:
        assert over and err.status == 400 and err.code == "request_limit_exceeded"
    else:
        assert not over


# -- deeply nested JSON ------------------------------------------------------------------------
DEEP = "[" * 5000 + "]" * 5000


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/chat/completions",
            '{"model":"auto","messages":[{"role":"user","content":"hi"}],"x":' + DEEP + "}",
        ),
        ("/v1/completions", '{"model":"auto","prompt":' + DEEP + "}"),
        ("/v1/responses", '{"model":"auto","input":"hi","metadata":' + DEEP + "}"),
        ("/v1/responses", '{"model":"auto","input":"hi","tools":[{"parameters":' + DEEP + "}]}"),
    ],
)
def test_deeply_nested_json_is_a_400_not_a_500(path: str, body: str) -> None:
    text = SPEC.replace("max_body_bytes: 16384", "max_body_bytes: 65536")
    client, engines = make(spec_text=text)
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    err = assert_openai_error(r, 400)
    assert err["code"] == "json_too_deep" and "gateway.limits.max_json_depth" in err["message"]
    assert not any(e.calls for e in engines.values())


def test_deep_json_in_a_document_upload_is_a_400() -> None:
    from tests.unit.test_bounded_work import gateway

    async def run() -> httpx.Response:
        client, _ = gateway()
        async with client:
            await client.post("/v1/rag/collections", json={"name": "kb"})
            return await client.post(
                "/v1/rag/collections/kb/documents",
                content='{"documents":' + DEEP + "}",
                headers={"content-type": "application/json"},
            )

    assert assert_openai_error(asyncio.run(run()), 400)["code"] == "json_too_deep"


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


_json = st.recursive(
    st.one_of(
        _scalars,
        st.text(alphabet='[]{}"\\ab', max_size=6),  # brackets and quotes inside strings
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(alphabet='[]{}"\\k', max_size=4), inner, max_size=4),
    ),
    max_leaves=40,
)


@settings(max_examples=500, deadline=None)
@given(value=_json)
def test_json_depth_agrees_with_the_parsed_value(value: Any) -> None:
    raw = json.dumps(value).encode()
    assert json_depth(raw) == _depth(value)
    deep = _depth(value)
    assert (too_deep(raw, deep) is None) and (deep == 0 or too_deep(raw, deep - 1) is not None)


@settings(max_examples=300, deadline=None)
@given(value=_json)
def test_cutting_strings_by_split_agrees_with_the_regex(value: Any) -> None:
    from tierline.deployments.gateway.pipeline.bounds import _STRING, outside_strings

    for raw in (json.dumps(value).encode(), json.dumps(value, ensure_ascii=False).encode()):
        assert outside_strings(raw) == _STRING.sub(b"", raw)


def test_json_depth_of_a_megabyte_needs_no_recursion() -> None:
    # Brackets inside strings do not count; a million levels are counted without
    # recursing (json.loads would raise RecursionError long before).
    raw = json.dumps([{"role": "user", "content": "[{" * 100} for _ in range(20_000)]).encode()
    assert json_depth(raw) == 2
    assert json_depth(b"[" * 1_000_000 + b"]" * 1_000_000) == 1_000_000


def test_an_ordinary_body_is_not_refused() -> None:
    client, _ = make()
    nested: Any = "x"
    for _ in range(20):
        nested = {"a": [nested]}
    r = client.post("/v1/chat/completions", json=chat(metadata=nested))
    assert r.status_code == 200, r.text
