"""configs/templates/smollm2-tools.jinja, rendered as vLLM renders it (the tokenizer's
apply_chat_template): the tools and call format while a question has no tool result; then
the result joined to the question's user turn, the tools and the call turn left out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "configs" / "templates" / "smollm2-tools.jinja"
MODEL = ROOT / "models" / "smollm2-135m-instruct"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "order_status",
            "description": "Look up when an order ships.",
            "parameters": {
                "type": "object",
                "properties": {"order_id": {"type": "string"}},
                "required": ["order_id"],
            },
        },
    }
]
ASKED = [
    {"role": "system", "content": "You answer questions about orders."},
    {"role": "user", "content": "When will my order 4711 ship?"},
]
CALLED = [
    *ASKED,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "order_status", "arguments": json.dumps({"order_id": "4711"})},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "Order 4711 ships on May 3."},
]


def _render(messages: list[dict[str, Any]]) -> str:
    if not (MODEL / "tokenizer.json").is_file():
        pytest.skip(f"{MODEL} is not built (make models)")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(MODEL))
    out = tok.apply_chat_template(
        messages,
        tools=TOOLS,
        chat_template=TEMPLATE.read_text(),
        tokenize=False,
        add_generation_prompt=True,
    )
    assert isinstance(out, str)
    return out


def test_a_question_without_a_result_lists_the_tools_and_the_call_format() -> None:
    text = _render(ASKED)
    assert text.startswith("<|im_start|>system\nYou answer questions about orders.\n")
    assert '<tools>{"name": "order_status"' in text and "<tool_call>{" in text
    assert text.endswith(
        "<|im_start|>user\nWhen will my order 4711 ship?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_a_tool_result_joins_the_question_and_the_call_is_left_out() -> None:
    text = _render(CALLED)
    assert "<tools>" not in text and "<tool_call>" not in text
    assert "<|im_start|>tool" not in text and text.count("<|im_start|>user") == 1
    assert text == (
        "<|im_start|>system\nYou answer questions about orders.<|im_end|>\n"
        "<|im_start|>user\nWhen will my order 4711 ship?\n\n"
        "Tool result: Order 4711 ships on May 3.\n"
        "Answer the question using the tool result.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_every_result_of_the_round_is_shown_and_a_new_question_lists_the_tools_again() -> None:
    second = {"role": "tool", "tool_call_id": "call_2", "content": "Order 4712 ships on June 9."}
    text = _render([*CALLED, second])
    assert "Tool result: Order 4711 ships on May 3.\nTool result: Order 4712" in text
    follow = [*CALLED, {"role": "assistant", "content": "It ships on May 3."}]
    text = _render([*follow, {"role": "user", "content": "And order 4712?"}])
    assert "<tools>" in text and "<|im_start|>tool\nOrder 4711 ships on May 3." in text
