"""configs/local.yaml's real models answer through the gateway: a planted fact comes back
grounded, with its document cited; a routed question gets a real answer; a required tool
call completes as compact JSON and is parsed into `tool_calls`."""

from __future__ import annotations

import json

import httpx

from tests.integration.conftest import AUTH
from tests.integration.local.conftest import Cluster

FACT = "Quillmoor Robotics was founded by Ottilie Brask in 1987. Its office is in Tromso."


def test_a_planted_fact_is_answered_and_cited(real_cluster: Cluster) -> None:
    with httpx.Client(base_url=real_cluster.url, headers=AUTH, timeout=300) as http:
        http.post("/v1/rag/collections", json={"name": "planted"}).raise_for_status()
        docs = [
            {"id": "quillmoor", "text": FACT, "metadata": {}},
            {
                "id": "other",
                "text": "Dovetta Foods sells bread in Porto since 2003.",
                "metadata": {},
            },
        ]
        r = http.post("/v1/rag/collections/planted/documents", json={"documents": docs})
        r.raise_for_status()
    client = real_cluster.client()
    raw = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": "Who founded Quillmoor Robotics?"}],
        max_tokens=40,
        temperature=0,
        extra_body={"rag": {"collection": "planted"}},
    )
    body = json.loads(raw.text)
    answer = body["choices"][0]["message"]["content"]
    assert "Brask" in answer, answer
    assert "quillmoor" in [c["document_id"] for c in body["citations"]]


def test_a_routed_question_gets_a_real_answer(real_cluster: Cluster) -> None:
    raw = real_cluster.client().chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        temperature=0,
    )
    assert raw.headers["x-tierline-tier"] in ("small", "large")
    assert "Paris" in (raw.parse().choices[0].message.content or "")


def test_a_required_tool_call_completes(real_cluster: Cluster) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    out = real_cluster.client().chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "What's the weather in Oslo?"}],
        tools=tools,
        tool_choice="required",
        max_tokens=64,
        temperature=0,
    )
    choice = out.choices[0]
    assert choice.finish_reason != "length"
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    assert set(json.loads(call.function.arguments)) == {"city"}
