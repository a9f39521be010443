"""The Responses API on the local cluster, through the official openai client: whole and
streamed answers, follow-up turns that keep their tier, the store's tenancy, delete."""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI

from tests.integration.conftest import TENANT_KEYS
from tests.integration.local.conftest import Cluster

TIERS = {"small": "tiny-small", "large": "tiny-large"}


def test_create_whole_and_retrieve(cluster: Cluster) -> None:
    client = cluster.client()
    raw = client.responses.with_raw_response.create(
        model="auto", input="Name three colours.", max_output_tokens=8, temperature=0
    )
    tier = raw.headers["x-tierline-tier"]
    r = raw.parse()
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.model == TIERS[tier]
    assert r.status in ("completed", "incomplete")
    assert r.output and r.output[0].type == "message"
    assert r.usage is not None and 1 <= r.usage.output_tokens <= 8
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert client.responses.retrieve(r.id).output_text == r.output_text


def test_create_streaming(cluster: Cluster) -> None:
    kinds: list[str] = []
    final = None
    with cluster.client().responses.create(
        model="tiny-small",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Say hi."}]}],
        instructions="Be brief.",
        max_output_tokens=6,
        temperature=0,
        stream=True,
    ) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type in ("response.completed", "response.incomplete"):
                final = event.response
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert "response.output_text.delta" in kinds
    assert kinds[-4:-1] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert final is not None and final.usage is not None and 1 <= final.usage.output_tokens <= 6
    stored = cluster.client().responses.retrieve(final.id)
    assert stored.output_text == final.output_text


@pytest.mark.parametrize("stream", [False, True])
def test_three_turns_stay_on_one_tier(cluster: Cluster, stream: bool) -> None:
    client = cluster.client()
    raw = client.responses.with_raw_response.create(
        model="auto", input="Tell me about rivers.", max_output_tokens=6, temperature=0
    )
    tier = raw.headers["x-tierline-tier"]
    prev = raw.parse()
    for turn in ("And lakes?", "And seas?"):
        raw = client.responses.with_raw_response.create(
            model="auto",
            input=turn,
            previous_response_id=prev.id,
            max_output_tokens=6,
            temperature=0,
            stream=stream,
        )
        assert raw.headers["x-tierline-tier"] == tier
        assert raw.headers["x-tierline-route-reason"] == "affinity:kept"
        if stream:
            final = None
            for event in raw.parse():
                if event.type in ("response.completed", "response.incomplete"):
                    final = event.response
            assert final is not None
            prev = final
        else:
            prev = raw.parse()
        assert prev.previous_response_id is not None
        # the whole conversation went to the engine: its prompt grows every turn
        assert prev.usage is not None
    assert prev.usage is not None and prev.usage.input_tokens > 20


def test_a_conversation_that_outgrows_small_moves_to_large(cluster: Cluster) -> None:
    client = cluster.client()
    first = client.responses.create(model="small", input="Hello.", max_output_tokens=2)
    raw = client.responses.with_raw_response.create(
        model="auto",
        input="word " * 600,  # past tiny-small's 512-token context
        previous_response_id=first.id,
        max_output_tokens=2,
    )
    assert raw.headers["x-tierline-tier"] == "large"
    assert raw.headers["x-tierline-route-reason"].endswith("+affinity-left:context")


def test_another_tenant_gets_404_and_delete_works(cluster: Cluster) -> None:
    mine = cluster.client()
    r = mine.responses.create(model="tiny-small", input="mine", max_output_tokens=2)
    other = OpenAI(
        base_url=f"{cluster.url}/v1", api_key=TENANT_KEYS["narrow"], max_retries=0, timeout=60
    )
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.create(model="auto", input="x", previous_response_id=r.id)
    mine.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        mine.responses.retrieve(r.id)


def test_bad_input_is_400(cluster: Cluster) -> None:
    with pytest.raises(openai.BadRequestError):
        cluster.client().responses.create(
            model="auto",
            input=[{"role": "robot", "content": "x"}],  # type: ignore[list-item]
        )
