"""Two LoRA adapters served by one tiny engine through Ray Serve LLM multiplexing."""

from __future__ import annotations

import openai
import pytest

from tests.integration.tiers.conftest import TiersCluster

PROMPT = "The quick brown fox"


def complete(cluster: TiersCluster, model: str) -> tuple[str, str]:
    raw = cluster.client().completions.with_raw_response.create(
        model=model, prompt=PROMPT, max_tokens=16, temperature=0
    )
    out = raw.parse()
    assert out.usage is not None and out.usage.completion_tokens > 0
    return out.choices[0].text, raw.headers["x-tierline-tier"]


def test_adapters_change_the_output_and_differ_from_each_other(cluster: TiersCluster) -> None:
    base, tier = complete(cluster, "tiny-small")
    a, tier_a = complete(cluster, "small:tiny-a")
    b, tier_b = complete(cluster, "tiny-b-bot")
    assert tier == tier_a == tier_b == "small"
    assert len({base, a, b}) == 3, (base, a, b)
    # Deterministic at temperature 0, and every name of an adapter reaches the same one.
    assert complete(cluster, "tiny-small:tiny-a")[0] == a
    assert complete(cluster, "small:tiny-b")[0] == b
    assert complete(cluster, "tiny-small")[0] == base


def test_adapter_chat_streams(cluster: TiersCluster) -> None:
    stream = cluster.client().chat.completions.create(
        model="small:tiny-a",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert any(c.choices and c.choices[0].delta.content for c in chunks)


def test_models_lists_the_adapters(cluster: TiersCluster) -> None:
    client = cluster.client()
    ids = {m.id for m in client.models.list().data}
    assert {"auto", "tiny-small", "tiny-small:tiny-a", "tiny-b-bot"} <= ids
    card = client.models.retrieve("small:tiny-a")
    assert card.id == "tiny-small:tiny-a"


def test_unknown_adapter_is_a_404(cluster: TiersCluster) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        cluster.client().completions.create(model="small:nope", prompt="x", max_tokens=2)
    body = err.value.response.json()["error"]
    assert body["code"] == "model_not_found" and "small:nope" in body["message"]
