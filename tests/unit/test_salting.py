"""`salting.salted`: the body an engine tier gets, copied only when its `cache_salt`
changes (review mend: it copied every request's body, even with one tenant and no salt)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from tierline.cluster.specfile import load_spec_text
from tierline.deployments.gateway import GatewayCore, create_app
from tierline.deployments.gateway.pipeline.salting import salted, tenant_salt
from tierline.deployments.gateway.pipeline.schemas import ChatCompletionBody
from tierline.deployments.gateway.pipeline.tokens import EstimatingCounter

from tests.unit.fakes import FakeEngine
from tests.unit.test_gateway import SPEC, chat


def body(client_salt: str | None = None) -> ChatCompletionBody:
    data: dict[str, Any] = {"model": "small", "messages": [{"role": "user", "content": "hi"}]}
    if client_salt is not None:
        data["cache_salt"] = client_salt
    return ChatCompletionBody.model_validate(data)


def test_one_tenant_without_a_client_salt_is_not_copied() -> None:
    b = body()
    assert salted(b, "default", on=True, one_tenant=True) is b
    assert salted(b, "default", on=False) is b  # off, nothing to drop: as before


def test_what_needs_a_salt_still_gets_it() -> None:
    b = body()
    out = salted(b, "team-a", on=True)
    assert out is not b and (out.model_extra or {})["cache_salt"] == tenant_salt("team-a")
    own = body("x")
    # one tenant, but the client's own salt: mixed with the tenant's, never used as is
    mixed = salted(own, "default", on=True, one_tenant=True)
    assert (mixed.model_extra or {})["cache_salt"] == tenant_salt("default", "x")
    assert "cache_salt" not in (salted(own, "t", on=False).model_extra or {})


@given(
    client_salt=st.none() | st.text(max_size=16),
    tenant=st.text(max_size=8),
    on=st.booleans(),
    one_tenant=st.booleans(),
)
def test_a_body_is_copied_exactly_when_its_salt_changes(
    client_salt: str | None, tenant: str, on: bool, one_tenant: bool
) -> None:
    b = body(client_salt)
    before = b.model_dump()
    out = salted(b, tenant, on, one_tenant)
    assert b.model_dump() == before  # the caller's body is never changed
    salt = (out.model_extra or {}).get("cache_salt")
    if not on or (one_tenant and client_salt is None):  # off, or no salt needed
        assert salt is None
    else:
        assert salt == tenant_salt(tenant, client_salt)
    assert (out is b) == (salt == client_salt)  # a copy only where the salt changed


def test_a_gateway_without_authentication_sends_no_salt() -> None:
    """Authentication off: every request is the anonymous tenant's, the only one."""
    spec = load_spec_text(SPEC + "  auth: {enabled: false}\n")
    engines = {t.name: FakeEngine(t.model_name) for t in spec.tiers}
    core = GatewayCore(spec, engines, {t.name: EstimatingCounter() for t in spec.tiers})
    client = TestClient(create_app(core, None), raise_server_exceptions=False)
    assert client.post("/v1/chat/completions", json=chat(model="small")).status_code == 200
    assert "cache_salt" not in engines["small"].calls[-1][1]
    r = client.post("/v1/chat/completions", json=chat(model="small", cache_salt="x"))
    assert r.status_code == 200
    assert engines["small"].calls[-1][1]["cache_salt"] == tenant_salt("default", "x")
