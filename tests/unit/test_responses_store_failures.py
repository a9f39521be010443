"""A Responses answer is never lost because its copy could not be stored (issue 27).

The store is an honest `ResponseStore` whose disk is full: every write raises ENOSPC, as
SQLite's or PostgreSQL's would. The answer, already generated and charged, still reaches
the client, marked `store: false` (and `x-tierline-store: failed` on a whole answer), and
the failure is counted. Client-sent `reasoning` items are dropped: never sent to the
engine, so neither charged nor stored.
"""

from __future__ import annotations

import asyncio
import errno
import json

from fastapi.testclient import TestClient
from tierline.cluster.specfile import load_spec_text
from tierline.deployments.gateway import GatewayCore, create_app
from tierline.deployments.gateway.observe.metrics import PromRecorder
from tierline.deployments.gateway.pipeline.tokens import EstimatingCounter
from tierline.deployments.gateway.responses import MemoryResponseStore, StoredResponse
from tierline.deployments.gateway.responses.routes import STORE_HEADER

from tests.unit.fakes import FakeEngine
from tests.unit.test_gateway import SPEC

FAILURES = "ray_tierline_responses_store_failures_total"


class FullDiskStore(MemoryResponseStore):
    """A store whose every write fails as on a full disk."""

    async def put(self, record: StoredResponse) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


def gateway(store: MemoryResponseStore) -> tuple[TestClient, GatewayCore, dict[str, FakeEngine]]:
    spec = load_spec_text(SPEC)
    engines = {t.name: FakeEngine(t.model_name) for t in spec.tiers}
    core = GatewayCore(spec, engines, {t.name: EstimatingCounter() for t in spec.tiers})
    app = create_app(core, responses=store)
    return TestClient(app, raise_server_exceptions=False), core, engines


def failures(core: GatewayCore) -> float:
    recorder = core.metrics.recorder
    assert isinstance(recorder, PromRecorder)
    return recorder.value(FAILURES, tenant="default")


def test_a_whole_answer_whose_store_write_fails_is_returned_and_flagged() -> None:
    client, core, engines = gateway(FullDiskStore())
    r = client.post("/v1/responses", json={"model": "auto", "input": "hi", "max_output_tokens": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["output"][0]["content"][0]["text"] == "w0 w1"
    assert body["store"] is False and r.headers[STORE_HEADER] == "failed"
    assert failures(core) == 1
    assert len(engines["small"].calls) == 1  # answered once, not retried
    assert client.get(f"/v1/responses/{body['id']}").status_code == 404


def test_a_streamed_answer_whose_store_write_fails_ends_flagged() -> None:
    client, core, _ = gateway(FullDiskStore())
    body = {"model": "auto", "input": "hi", "max_output_tokens": 2, "stream": True}
    r = client.post("/v1/responses", json=body)
    assert r.status_code == 200
    events = [json.loads(x[6:]) for x in r.text.splitlines() if x.startswith("data: ")]
    final = events[-1]
    assert final["type"] in ("response.completed", "response.incomplete")
    assert final["response"]["store"] is False
    assert failures(core) == 1


def test_a_stored_answer_is_unflagged_and_stored_before_its_last_event() -> None:
    store = MemoryResponseStore()
    client, core, _ = gateway(store)
    r = client.post("/v1/responses", json={"model": "auto", "input": "hi", "stream": True})
    final = [json.loads(x[6:]) for x in r.text.splitlines() if x.startswith("data: ")][-1]
    assert final["response"]["store"] is True and failures(core) == 0
    assert client.get(f"/v1/responses/{final['response']['id']}").status_code == 200


def test_client_reasoning_items_are_dropped_not_stored() -> None:
    store = MemoryResponseStore()
    client, _, engines = gateway(store)
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "x" * 9000}
    body = {
        "model": "auto",
        "input": [reasoning, {"role": "user", "content": "hi"}],
        "max_output_tokens": 1,
    }
    r = client.post("/v1/responses", json=body)
    assert r.status_code == 200, r.text
    stored = asyncio.run(store.get("default", r.json()["id"]))
    assert stored is not None
    assert [i.get("type", "message") for i in stored.items] == ["message", "message"]
    assert "x" * 100 not in json.dumps(engines["small"].calls[0][1])
