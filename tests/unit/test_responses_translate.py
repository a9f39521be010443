"""Responses <-> chat translation: request bodies, whole answers, and the event stream."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from pydantic import ValidationError
from tierline.deployments.errors import APIError
from tierline.deployments.gateway.responses.body import (
    ResponsesBody,
    chat_body,
    chat_messages,
    check_supported,
    input_items,
)
from tierline.deployments.gateway.responses.output import (
    ResponseShell,
    StreamTranslator,
    responses_usage,
    whole_output,
)

SHELL = ResponseShell(id="resp_1", created_at=0, model="tiny")


def body(**kw: Any) -> ResponsesBody:
    return ResponsesBody.model_validate({"model": "auto", "input": "hi", **kw})


def test_text_input_is_one_user_message_after_the_instructions() -> None:
    b = body(instructions="be brief")
    assert chat_messages(b.instructions, input_items(b)) == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]


def test_message_items_with_parts_and_a_tool_round_trip() -> None:
    b = body(
        input=[
            {"role": "developer", "content": "rules"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "g", "arguments": '{"x":1}'},
            {"type": "function_call_output", "call_id": "c1", "output": "1"},
            {"type": "function_call_output", "call_id": "c2", "output": "2"},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "see"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AA"},
                ],
            },
        ]
    )
    messages = chat_messages(None, input_items(b))
    assert [m["role"] for m in messages] == [
        "developer",
        "user",
        "assistant",
        "tool",
        "tool",
        "user",
    ]
    assert messages[1]["content"] == "a"
    calls = messages[2]["tool_calls"]
    assert [c["id"] for c in calls] == ["c1", "c2"]
    assert calls[1]["function"] == {"name": "g", "arguments": '{"x":1}'}
    assert messages[3] == {"role": "tool", "tool_call_id": "c1", "content": "1"}
    assert messages[5]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,AA"},
    }


def test_a_previous_answer_joins_its_function_calls() -> None:
    items = [
        {"type": "message", "role": "user", "content": "q"},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "let me see", "annotations": []}],
        },
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
    ]
    messages = chat_messages(None, items)
    assert len(messages) == 2
    assert messages[1]["content"] == "let me see"
    assert messages[1]["tool_calls"][0]["id"] == "c"


def test_tools_and_tool_choice_become_chats_nested_shape() -> None:
    tool = {"type": "function", "name": "get", "parameters": {"type": "object"}, "strict": True}
    b = body(tools=[tool], tool_choice={"type": "function", "name": "get"}, max_output_tokens=7)
    check_supported(b)
    chat = chat_body(b, chat_messages(None, input_items(b)), stream=True)
    data = chat.model_dump(exclude_none=True)
    assert data["tools"] == [
        {
            "type": "function",
            "function": {"name": "get", "parameters": {"type": "object"}, "strict": True},
        }
    ]
    assert data["tool_choice"] == {"type": "function", "function": {"name": "get"}}
    assert data["max_tokens"] == 7
    assert data["stream_options"] == {"include_usage": True}
    assert "seed" not in data
    one = [{"role": "user", "content": "x"}]
    seeded = chat_body(body(seed=7, temperature=1.0), one, stream=False).model_dump()
    assert (seeded["seed"], seeded["temperature"]) == (7, 1.0)
    for choice in ("auto", "required", "none"):
        assert (
            chat_body(
                body(tool_choice=choice), [{"role": "user", "content": "x"}], stream=False
            ).model_dump()["tool_choice"]
            == choice
        )  # type: ignore[index]


@pytest.mark.parametrize(
    "bad",
    [
        {"input": 3},
        {"input": [{"role": "robot", "content": "x"}]},
        {"input": [{"type": "function_call", "call_id": "", "name": "f", "arguments": "{}"}]},
        {"input": [{"type": "item_reference", "id": "x"}]},
        {"tools": [{"type": "web_search"}]},
        {"tool_choice": "sometimes"},
        {"max_output_tokens": 0},
        {"temperature": 3},
        {"seed": "7"},
        {"store": "yes"},
        {"model": None},
    ],
)
def test_bad_bodies_fail_validation(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        body(**bad)


@pytest.mark.parametrize(
    "kw",
    [
        {"background": True},
        {"conversation": "conv_1"},
        {"tool_choice": {"type": "function", "name": "nope"}},
    ],
)
def test_unsupported_asks_are_400(kw: dict[str, Any]) -> None:
    with pytest.raises(APIError) as err:
        check_supported(body(**kw))
    assert err.value.status == 400


def test_empty_conversation_is_400() -> None:
    with pytest.raises(APIError):
        chat_messages(None, [{"type": "reasoning"}])


def test_whole_answer_text_tool_calls_usage_and_status() -> None:
    completion = {
        "model": "tiny",
        "choices": [
            {
                "finish_reason": "tool_calls",
                "message": {
                    "content": "ok",
                    "tool_calls": [
                        {"id": "call_9", "function": {"name": "f", "arguments": '{"a": 1}'}}
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }
    output, status, incomplete, usage = whole_output(completion)
    assert status == "completed" and incomplete is None
    assert output[0]["type"] == "message" and output[0]["content"][0]["text"] == "ok"
    assert output[1]["type"] == "function_call"
    assert (output[1]["call_id"], output[1]["name"]) == ("call_9", "f")
    assert usage is not None
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (5, 3, 8)


def test_a_length_stop_is_incomplete_for_max_output_tokens() -> None:
    output, status, incomplete, _ = whole_output(
        {"choices": [{"finish_reason": "length", "message": {"content": "a b"}}]}
    )
    assert (status, incomplete) == ("incomplete", "max_output_tokens")
    assert output[0]["status"] == "incomplete"


def test_usage_maps_cached_tokens() -> None:
    u = responses_usage(
        {"prompt_tokens": 9, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 4}}
    )
    assert u is not None
    assert u["input_tokens_details"]["cached_tokens"] == 4 and u["total_tokens"] == 10


def _chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, **kw: Any
) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"id": "x", "object": "chat.completion.chunk", "choices": choices, **kw}


def _run(chunks: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], StreamTranslator]:
    t = StreamTranslator(SHELL)
    events = t.start()
    for c in chunks:
        events += t.feed(c)
    events += t.finish(1)
    return events, t


def test_text_stream_event_sequence() -> None:
    words = ["Hel", "lo", " there"]
    chunks = [_chunk({"role": "assistant", "content": ""})]
    chunks += [_chunk({"content": w}) for w in words]
    chunks += [_chunk({}, "stop"), _chunk(None, usage={"prompt_tokens": 2, "completion_tokens": 3})]
    events, t = _run(chunks)
    kinds = [e["type"] for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 3,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-4]["text"] == "Hello there"
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["usage"]["output_tokens"] == 3
    assert final["output"][0]["content"][0]["text"] == "Hello there"
    assert t.response == final
    assert events[0]["response"]["status"] == "in_progress"


def test_tool_call_stream_event_sequence() -> None:
    chunks = [
        _chunk(
            {
                "tool_calls": [
                    {"index": 0, "id": "call_1", "function": {"name": "f", "arguments": ""}}
                ]
            }
        ),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]}),
        _chunk(
            {
                "tool_calls": [
                    {"index": 1, "id": "call_2", "function": {"name": "g", "arguments": "{}"}}
                ]
            }
        ),
        _chunk({}, "tool_calls"),
    ]
    events, _ = _run(chunks)
    kinds = [e["type"] for e in events]
    assert kinds.count("response.output_item.added") == 2
    assert kinds.count("response.function_call_arguments.delta") == 3
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [d["arguments"] for d in done] == ['{"a": 1}', "{}"]
    final = events[-1]["response"]
    assert [o["call_id"] for o in final["output"]] == ["call_1", "call_2"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


def test_empty_and_cut_streams_still_end_with_one_item() -> None:
    events, _ = _run([_chunk({}, "length")])
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert len(events[-1]["response"]["output"]) == 1


def test_random_streams_keep_the_event_invariants() -> None:
    rng = random.Random(7)
    for _ in range(300):
        chunks = []
        for _ in range(rng.randint(0, 12)):
            if rng.random() < 0.6:
                chunks.append(_chunk({"content": rng.choice(["a", "b c", "", "é"])}))
            else:
                i = rng.randint(0, 2)
                chunks.append(
                    _chunk(
                        {
                            "tool_calls": [
                                {
                                    "index": i,
                                    "id": f"c{i}",
                                    "function": {"name": "f", "arguments": "x"},
                                }
                            ]
                        }
                    )
                )
        chunks.append(_chunk({}, rng.choice(["stop", "length", "tool_calls"])))
        events, t = _run(chunks)
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        json.dumps(events)  # serialisable
        added = [e["output_index"] for e in events if e["type"] == "response.output_item.added"]
        done = [e["output_index"] for e in events if e["type"] == "response.output_item.done"]
        assert sorted(added) == sorted(done) == list(range(len(t.output)))
        text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        msgs = [o for o in t.output if o["type"] == "message"]
        assert sum(len(m["content"][0]["text"]) for m in msgs) == len(text)
