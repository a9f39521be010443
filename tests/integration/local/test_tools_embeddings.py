"""Tool calls, embeddings and capability-aware routing through the official openai client.

tiny.yaml gives the large tier a tool call parser (hermes) and a tool-aware chat
template; the small tier has none. The tiny models' weights are random, so tool calls
are asserted only where vLLM constrains the output to a valid call (`required`, a named
function; tiny.yaml asks for compact JSON there, or a random model fills its budget
with whitespace); what `auto` must show is where the request lands.
"""

from __future__ import annotations

import json

import openai
import pytest

from tests.integration.local.conftest import Cluster

MSG = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["unit"],
            "additionalProperties": False,
        },
    },
}


def test_required_tool_call_is_parsed_and_lands_on_the_tool_tier(cluster: Cluster) -> None:
    raw = cluster.client().chat.completions.with_raw_response.create(
        model="auto",
        messages=MSG,
        tools=[WEATHER],
        tool_choice="required",
        # `required` constrains to a JSON array of calls: after each call a random model
        # picks "," or "]" about evenly when sampling; greedy could repeat "," forever.
        max_tokens=800,
        temperature=1.0,
        seed=7,
    )
    assert raw.headers["x-tierline-tier"] == "large"
    assert raw.headers["x-tierline-route-reason"].endswith("+needs-tools")
    calls = raw.parse().choices[0].message.tool_calls
    assert calls, "no parsed tool_calls"
    assert {c.function.name for c in calls} == {"get_weather"}
    assert json.loads(calls[0].function.arguments)["unit"] in ("c", "f")


def test_named_tool_call_streams_its_arguments(cluster: Cluster) -> None:
    stream = cluster.client().chat.completions.create(
        model="auto",
        messages=MSG,
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        # Not greedy: vLLM 0.29 constrains a named call through the tool parser's structural
        # tag, whose JSON allows whitespace (`disable_any_whitespace` does not reach it), and
        # the tiny random model's greedy choice after `{` is whitespace, for ever: bare
        # `vllm serve` streams the same lone `{` and stops at max_tokens. Sampling closes it.
        max_tokens=800,
        temperature=1.0,
        seed=7,
        stream=True,
    )
    names, arguments = set(), ""
    for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                if call.function and call.function.name:
                    names.add(call.function.name)
                if call.function and call.function.arguments:
                    arguments += call.function.arguments
    assert names == {"get_weather"}
    assert json.loads(arguments)["unit"] in ("c", "f")


def test_tools_under_auto_stay_on_tool_capable_tiers(cluster: Cluster) -> None:
    c = cluster.client()
    for text in ("hi", "Prove that there are infinitely many primes."):
        raw = c.chat.completions.with_raw_response.create(
            model="auto",
            messages=[{"role": "user", "content": text}],
            tools=[WEATHER],
            max_tokens=4,
        )
        assert raw.headers["x-tierline-tier"] == "large"


def test_no_tier_can_serve_is_a_400_saying_why(cluster: Cluster) -> None:
    c = cluster.client()
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": [{"type": "text", "text": "what?"}, image]}],
            max_tokens=4,
        )
    assert info.value.code == "no_capable_tier"
    assert "image input" in info.value.message
    with pytest.raises(openai.BadRequestError) as pinned:
        c.chat.completions.create(model="small", messages=MSG, tools=[WEATHER], max_tokens=4)
    assert pinned.value.code == "tier_not_capable"


def test_embeddings_and_models_cards(cluster: Cluster) -> None:
    c = cluster.client()
    got = c.embeddings.create(model="text-embedding-3-small", input=["hello", "world"])
    assert [d.index for d in got.data] == [0, 1]
    assert all(len(d.embedding) == 384 for d in got.data)
    assert got.model == "all-MiniLM-L6-v2" and got.usage.prompt_tokens > 0
    cards = {m.id: m.model_dump() for m in c.models.list()}
    assert cards["all-MiniLM-L6-v2"]["type"] == "embedding"
    assert cards["tiny-large"]["capabilities"]["tools"] is True
    assert cards["tiny-small"]["capabilities"]["tools"] is False
    assert cards["tiny-small"]["capabilities"]["max_context_tokens"] == 512
    assert cards["tiny-large"]["pricing"]["output_per_1m_tokens"] == 3.0
