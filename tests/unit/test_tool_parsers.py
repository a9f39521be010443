"""Each real tier's `tool_call_parser` reads what its model writes: vLLM's own parser, as
the engine loads it by the name in configs/local.yaml, on saved output of the model
(tests/data/tool_calls/<model>.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tierline.cluster.specfile import load_spec

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "tool_calls"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def _tool_tiers() -> list[Any]:
    spec = load_spec(ROOT / "configs" / "local.yaml")
    return [t for t in spec.tiers if t.tool_call_parser is not None]


def _parser(name: str, model_dir: str) -> Any:
    from transformers import AutoTokenizer
    from vllm.tool_parsers import ToolParserManager

    return ToolParserManager.get_tool_parser(name)(AutoTokenizer.from_pretrained(model_dir))


def _request() -> Any:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    return ChatCompletionRequest(
        model="m", messages=[{"role": "user", "content": "weather?"}], tools=TOOLS
    )


@pytest.mark.parametrize("tier", _tool_tiers(), ids=lambda t: t.name)
def test_the_tiers_parser_reads_its_models_saved_output(tier: Any) -> None:
    model_dir = Path(tier.model_source)
    saved = DATA / f"{model_dir.name}.json"
    assert saved.is_file(), f"no saved tool-call output for {model_dir.name} in {DATA}"
    if not (model_dir / "tokenizer.json").is_file():
        pytest.skip(f"{model_dir} is not built (make models)")
    parser = _parser(tier.tool_call_parser, str(model_dir))
    samples = json.loads(saved.read_text())["samples"]
    assert any(s["calls"] for s in samples) and any(not s["calls"] for s in samples)
    for s in samples:
        got = parser.extract_tool_calls(s["output"], _request())
        calls = [
            {"name": c.function.name, "arguments": json.loads(c.function.arguments)}
            for c in got.tool_calls
        ]
        assert calls == s["calls"], s["output"]
        assert got.tools_called == bool(s["calls"])
        assert got.content == s["content"]


def test_a_list_inside_the_tags_is_not_a_call() -> None:
    """SmolLM2's fine-tuning format puts a JSON list in <tool_call>; hermes reads one
    object per tag, which is why the template asks for the object form."""
    tier = _tool_tiers()[0]
    if not (Path(tier.model_source) / "tokenizer.json").is_file():
        pytest.skip(f"{tier.model_source} is not built (make models)")
    parser = _parser(tier.tool_call_parser, tier.model_source)
    out = '<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</tool_call>'
    got = parser.extract_tool_calls(out, _request())
    assert not got.tools_called and got.content == out
