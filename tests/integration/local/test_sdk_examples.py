"""The OpenAI SDK's README examples, in their shape and with their model names, against the
live default cluster: the client configured only by the environment (`OpenAI()`), the
Responses call with `instructions`, the chat call with a `developer` message, a function
tool through Responses, and an embeddings call naming OpenAI's embedding model. The
default spec routes `gpt-5.5` like `auto` (`model_aliases` in configs/tiny.yaml, as in
local.yaml)."""

from __future__ import annotations

import pytest
from openai import OpenAI

from tests.integration.conftest import API_KEY
from tests.integration.local.conftest import Cluster


@pytest.fixture
def client(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> OpenAI:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", f"{cluster.url}/v1")
    return OpenAI()


def test_responses_example(client: OpenAI) -> None:
    response = client.responses.create(
        model="gpt-5.5",
        instructions="You answer in one short sentence.",
        input="Which Python builtin tells whether an object is of a given class?",
        max_output_tokens=16,
    )
    # the tiny random model rarely stops by itself: the answer is cut at max_output_tokens
    assert response.status in ("completed", "incomplete")
    if response.status == "incomplete":
        assert response.incomplete_details is not None
        assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text
    assert response.model.startswith("tiny-")


def test_chat_example_with_a_developer_message(client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gpt-5.5",
        messages=[
            {"role": "developer", "content": "Answer tersely."},
            {"role": "user", "content": "Which Python builtin checks an object's class?"},
        ],
        max_tokens=16,
    )
    assert completion.choices[0].message.content


def test_function_tool_example_through_responses(client: OpenAI) -> None:
    tools = [
        {
            "type": "function",
            "name": "lookup_forecast",
            "description": "The forecast for a city.",
            "parameters": {
                "type": "object",
                # an enum: a random model constrained to a free string may not close it
                "properties": {"city": {"type": "string", "enum": ["Lyon", "Nantes"]}},
                "required": ["city"],
                "additionalProperties": False,
            },
            "strict": True,
        }
    ]
    raw = client.responses.with_raw_response.create(
        model="gpt-5.5",
        input=[{"role": "user", "content": "Will it rain in Lyon tomorrow?"}],
        tools=tools,  # type: ignore[arg-type]
        tool_choice={"type": "function", "name": "lookup_forecast"},
        # The example's own call is above. For a tiny random model: sampled with a seed (a
        # tierline field, passed to the engine) and room to close the JSON it pads with
        # whitespace (test_tools_embeddings.py says why).
        max_output_tokens=800,
        temperature=1.0,
        extra_body={"seed": 7},
    )
    # tools under an alias of auto: only a tool-capable tier may take it
    assert raw.headers["x-tierline-tier"] == "large"
    calls = [item for item in raw.parse().output if item.type == "function_call"]
    assert calls and calls[0].name == "lookup_forecast"


def test_embeddings_example(client: OpenAI) -> None:
    result = client.embeddings.create(
        model="text-embedding-3-small", input="Quarterly revenue grew in every region."
    )
    assert len(result.data) == 1 and len(result.data[0].embedding) == 384
