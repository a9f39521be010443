"""`/v1/responses` through the gateway app with fake engines, called by the official
`openai` client (its httpx client is the app's TestClient)."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI
from tierline.cluster.spec import AuthSpec
from tierline.cluster.specfile import load_spec_text
from tierline.deployments.gateway import GatewayCore, create_app
from tierline.deployments.gateway.pipeline.auth import add_key, load_key_store
from tierline.deployments.gateway.pipeline.tokens import EstimatingCounter
from tierline.deployments.gateway.responses import AFFINITY_KEPT, SqliteResponseStore

from tests.unit.fakes import FakeEngine
from tests.unit.test_gateway import SPEC, assert_openai_error

TOOLS = "    served_model_name: small-model\n    tool_call_parser: hermes\n"


@pytest.fixture
def app(tmp_path: Path) -> tuple[TestClient, dict[str, str], dict[str, FakeEngine]]:
    keys_file = tmp_path / "keys.json"
    keys = {t: add_key(keys_file, t) for t in ("alice", "bob")}
    store = load_key_store(AuthSpec(keys_file=str(keys_file)), environ={})
    # small calls tools (router.capabilities: a tier without a parser refuses tools)
    spec = load_spec_text(SPEC.replace("    served_model_name: small-model\n", TOOLS, 1))
    engines = {t.name: FakeEngine(t.model_name) for t in spec.tiers}
    core = GatewayCore(spec, engines, {t.name: EstimatingCounter() for t in spec.tiers})
    responses = SqliteResponseStore(tmp_path / "responses.db")
    client = TestClient(create_app(core, store, responses=responses), raise_server_exceptions=False)
    return client, keys, engines


def sdk(
    app: tuple[TestClient, dict[str, str], dict[str, FakeEngine]], who: str = "alice"
) -> OpenAI:
    client, keys, _ = app
    return OpenAI(
        base_url="http://testserver/v1", api_key=keys[who], http_client=client, max_retries=0
    )


def test_create_retrieve_delete(app) -> None:  # type: ignore[no-untyped-def]
    client = sdk(app)
    r = client.responses.create(model="auto", input="hello", max_output_tokens=3)
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output_text == "w0 w1 w2"
    assert r.usage is not None and r.usage.output_tokens == 3 and r.usage.total_tokens == 8
    got = client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(r.id)


def test_follow_ups_rebuild_the_conversation_and_keep_the_tier(app) -> None:  # type: ignore[no-untyped-def]
    client, engines = sdk(app), app[2]
    first = client.responses.with_raw_response.create(
        model="large", input="one", instructions="be brief", max_output_tokens=2
    )
    assert first.headers["x-tierline-tier"] == "large"
    prev = first.parse()
    for turn in ("two", "three"):
        raw = client.responses.with_raw_response.create(
            model="auto", input=turn, previous_response_id=prev.id, max_output_tokens=2
        )
        assert raw.headers["x-tierline-tier"] == "large"
        assert raw.headers["x-tierline-route-reason"] == AFFINITY_KEPT
        prev = raw.parse()
        assert prev.previous_response_id is not None
    messages = engines["large"].calls[-1][1]["messages"]
    # instructions are not carried over (as OpenAI's API): only the history and the turn
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in messages[::2]] == ["one", "two", "three"]
    assert messages[1]["content"] == "w0 w1"


def test_a_conversation_that_outgrows_its_tier_moves_and_says_why(app) -> None:  # type: ignore[no-untyped-def]
    client = sdk(app)
    first = client.responses.create(model="auto", input="hi", max_output_tokens=2)
    raw = client.responses.with_raw_response.create(
        model="auto", input="x " * 300, previous_response_id=first.id, max_output_tokens=2
    )
    assert raw.headers["x-tierline-tier"] == "large"
    assert raw.headers["x-tierline-route-reason"].endswith("+affinity-left:context")


def test_streaming_events_and_the_stored_result(app) -> None:  # type: ignore[no-untyped-def]
    client = sdk(app)
    kinds = []
    final = None
    with client.responses.create(model="auto", input="hi", max_output_tokens=3, stream=True) as s:
        for event in s:
            kinds.append(event.type)
            if event.type in ("response.completed", "response.incomplete"):
                final = event.response
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds.count("response.output_text.delta") == 3
    assert kinds[-1] == "response.completed"  # the fake stream sends no finish_reason
    assert final is not None and final.usage is not None and final.usage.output_tokens == 3
    stored = client.responses.retrieve(final.id)
    assert stored.output_text == "w0w1w2"
    follow = client.responses.create(
        model="auto", input="more", previous_response_id=final.id, max_output_tokens=1
    )
    assert follow.output_text == "w0"


def test_another_tenant_gets_404_like_missing(app) -> None:  # type: ignore[no-untyped-def]
    r = sdk(app).responses.create(model="auto", input="secret", max_output_tokens=1)
    bob = sdk(app, "bob")
    for call in (
        lambda: bob.responses.retrieve(r.id),
        lambda: bob.responses.delete(r.id),
        lambda: bob.responses.create(model="auto", input="x", previous_response_id=r.id),
    ):
        with pytest.raises(openai.NotFoundError) as err:
            call()
        assert "not found" in err.value.message
    missing = app[0].get(
        "/v1/responses/resp_nope", headers={"Authorization": f"Bearer {app[1]['bob']}"}
    )
    theirs = app[0].get(
        f"/v1/responses/{r.id}", headers={"Authorization": f"Bearer {app[1]['bob']}"}
    )
    assert missing.json()["error"]["code"] == theirs.json()["error"]["code"]
    assert sdk(app).responses.retrieve(r.id).id == r.id


def test_store_false_is_not_kept(app) -> None:  # type: ignore[no-untyped-def]
    client = sdk(app)
    r = client.responses.create(model="auto", input="x", store=False, max_output_tokens=1)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


def test_tools_reach_the_engine_in_chat_shape(app) -> None:  # type: ignore[no-untyped-def]
    client, engines = sdk(app), app[2]
    client.responses.create(
        model="small",
        input=[
            {"role": "user", "content": "weather?"},
            {"type": "function_call", "call_id": "c1", "name": "get", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        ],
        tools=[
            {"type": "function", "name": "get", "parameters": {"type": "object"}, "strict": False}
        ],
        tool_choice="auto",
        max_output_tokens=1,
    )
    body = engines["small"].calls[-1][1]
    assert body["tools"][0]["function"]["name"] == "get"
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "tool"]


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"model": "auto"},
        {"model": "auto", "input": []},
        {"model": "auto", "input": [{"role": "user"}]},
        {"model": "auto", "input": "x", "tools": [{"type": "file_search"}]},
        {"model": "auto", "input": "x", "background": True},
        {"model": "auto", "input": "x", "max_output_tokens": 100000},
        {"model": "nope", "input": "x"},
        {"model": "auto", "input": "x", "previous_response_id": "resp_missing"},
    ],
)
def test_bad_input_is_an_openai_error(app, payload) -> None:  # type: ignore[no-untyped-def]
    client, keys, _ = app
    r = client.post(
        "/v1/responses", json=payload, headers={"Authorization": f"Bearer {keys['alice']}"}
    )
    assert 400 <= r.status_code < 500
    assert_openai_error(r, r.status_code)


def test_a_streamed_follow_up_through_the_raw_response(app) -> None:  # type: ignore[no-untyped-def]
    client = sdk(app)
    first = client.responses.create(model="large", input="one", max_output_tokens=2)
    raw = client.responses.with_raw_response.create(
        model="auto", input="two", previous_response_id=first.id, max_output_tokens=2, stream=True
    )
    assert raw.headers["x-tierline-route-reason"] == AFFINITY_KEPT
    final = [e for e in raw.parse() if e.type == "response.completed"][-1].response
    assert final.previous_response_id == first.id
    assert client.responses.retrieve(final.id).output_text == final.output_text


def test_limits_answer_4xx_not_5xx(tmp_path: Path) -> None:
    spec_text = SPEC + "  responses:\n    max_stored_bytes: 300\n"
    spec = load_spec_text(spec_text)
    engines = {t.name: FakeEngine(t.model_name) for t in spec.tiers}
    core = GatewayCore(spec, engines, {t.name: EstimatingCounter() for t in spec.tiers})
    client = TestClient(create_app(core), raise_server_exceptions=False)
    big = {"model": "large", "input": "x" * 400, "max_output_tokens": 1}
    assert_openai_error(client.post("/v1/responses", json=big), 413)
    assert client.post("/v1/responses", json={**big, "store": False}).status_code == 200
    many = [{"role": "user", "content": "x"}] * 9  # gateway.max_messages is 8
    r = client.post("/v1/responses", json={"model": "large", "input": many, "store": False})
    assert assert_openai_error(r, 400)["code"] == "too_many_messages"
