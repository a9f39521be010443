"""Issue 27: a request refused for what it carried (400, 413, 422) is charged its body's
estimated tokens, past the tenant's budget if need be, so no request's work is free; a
refusal that comes before that work (401, 404, 429) is not. Real ledger, real app."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.types import Receive, Scope, Send
from tierline.deployments.gateway.pipeline.auth import KeyStore, hash_key
from tierline.deployments.gateway.pipeline.middleware import GatewayMiddleware, refusal_tokens
from tierline.deployments.gateway.quota.service import LocalQuota, ledger_for

from tests.unit.test_gateway import SPEC, chat, make

QUOTA = """\
  tenants:
    - {name: acme, tokens_per_min: 100000}
    - {name: free}
"""
KEYS = {"k-acme": "acme", "k-free": "free"}


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def gateway(spec_text: str = SPEC + QUOTA) -> tuple[Any, Any]:
    from tierline.cluster.specfile import load_spec_text

    ledger = ledger_for(load_spec_text(spec_text).gateway)
    keys = KeyStore({hash_key(k): t for k, t in KEYS.items()})
    client, _ = make(keys=keys, spec_text=spec_text, quota=LocalQuota(ledger, Clock()))
    return client, ledger


def post(client: Any, key: str, body: bytes, path: str = "/v1/chat/completions") -> Any:
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    return client.post(path, content=body, headers=headers)


def test_a_body_refused_for_its_content_is_charged_its_tokens() -> None:
    client, ledger = gateway()
    body = json.dumps({**chat(), "messages": "x" * 8000}).encode()  # not a list: 400
    r = post(client, "k-acme", body)
    assert r.status_code == 400, r.text
    assert ledger.tokens_used("acme", 0.0) == refusal_tokens(len(body)) == (len(body) + 3) // 4
    bad_json = b'{"model": "auto", "messages": [' + b"[" * 3000
    assert post(client, "k-acme", bad_json).status_code == 400
    assert ledger.tokens_used("acme", 0.0) == refusal_tokens(len(body)) + refusal_tokens(
        len(bad_json)
    )


def test_a_body_over_the_size_limit_is_charged_what_was_read() -> None:
    client, ledger = gateway()
    body = json.dumps(chat("y" * 20000)).encode()  # over gateway.max_body_bytes (16384)
    # Content-Length says it: refused before a byte is read, not charged
    assert post(client, "k-acme", body).status_code == 413
    assert ledger.tokens_used("acme", 0.0) == 0
    # sent chunked: read up to the limit, then refused, and charged what was read
    headers = {"authorization": "Bearer k-acme", "content-type": "application/json"}
    parts = (body[i : i + 4096] for i in range(0, len(body), 4096))
    r = client.post("/v1/chat/completions", content=parts, headers=headers)
    assert r.status_code == 413, r.text
    used = ledger.tokens_used("acme", 0.0)
    assert refusal_tokens(16384) < used <= refusal_tokens(len(body))


def test_refusals_before_the_body_is_judged_are_not_charged() -> None:
    client, ledger = gateway()
    assert post(client, "k-wrong", b"{}").status_code == 401
    assert post(client, "k-acme", b"{}", "/v1/nothing-here").status_code == 404
    assert ledger.tokens_used("acme", 0.0) == 0
    ok = post(client, "k-acme", json.dumps(chat()).encode())
    assert ok.status_code == 200, ok.text
    served = ledger.tokens_used("acme", 0.0)
    assert served == ok.json()["usage"]["total_tokens"]  # served, and only that


def test_the_charge_goes_past_the_budget_and_then_the_tenant_is_refused() -> None:
    client, ledger = gateway(SPEC + "  tenants:\n    - {name: acme, tokens_per_min: 500}\n")
    body = json.dumps({**chat(), "messages": "x" * 4000}).encode()
    assert post(client, "k-acme", body).status_code == 400
    assert ledger.tokens_used("acme", 0.0) == refusal_tokens(len(body)) > 500
    r = post(client, "k-acme", json.dumps(chat()).encode())
    assert r.status_code == 429, r.text


def test_a_tenant_without_a_quota_is_not_charged() -> None:
    client, ledger = gateway()
    assert post(client, "k-free", b'{"model": 3}').status_code == 400
    assert ledger.tokens_used("free", 0.0) == 0


async def _refuse(scope: Scope, receive: Receive, send: Send) -> None:
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 400, "headers": []})
    await send({"type": "http.response.body", "body": b"no"})


@pytest.mark.anyio
async def test_a_quota_service_that_fails_loses_the_charge_not_the_answer() -> None:
    async def broken(tenant: str, tokens: int) -> None:
        raise ConnectionError("quota service gone")

    mw = GatewayMiddleware(_refuse, max_body_bytes=1 << 20, keys=None, on_refused=broken)
    sent: list[dict[str, Any]] = []
    chunks = [{"type": "http.request", "body": b"a" * 10, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/x", "headers": []}
    await mw(scope, receive, send)
    assert sent[0]["status"] == 400 and sent[1]["body"] == b"no"
