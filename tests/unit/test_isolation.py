"""Issue 27's cross-tenant channels: each tenant's own prefix cache (`cache_salt`) on the
handle and relay paths, and the media-URL allow-list. In-process against the real gateway
app with honest fakes; no Ray, no network beyond loopback."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from tierline.cluster.spec import RequestLimitsSpec
from tierline.cluster.specfile import load_spec_text
from tierline.deployments.errors import APIError
from tierline.deployments.gateway import GatewayCore, create_app
from tierline.deployments.gateway.pipeline.auth import KeyStore, hash_key
from tierline.deployments.gateway.pipeline.bounds import check_media_urls, host_allowed
from tierline.deployments.gateway.pipeline.middleware import ANONYMOUS_TENANT
from tierline.deployments.gateway.pipeline.salting import tenant_salt
from tierline.deployments.gateway.pipeline.tokens import EstimatingCounter

from tests.unit.fakes import FakeEngine
from tests.unit.test_gateway import SPEC, assert_openai_error, chat

KEYS = {"sk-a": "team-a", "sk-b": "team-b"}


def gateway(extra: str = "") -> tuple[TestClient, dict[str, FakeEngine]]:
    spec = load_spec_text(SPEC + extra)
    engines = {t.name: FakeEngine(t.model_name) for t in spec.tiers}
    core = GatewayCore(spec, engines, {t.name: EstimatingCounter() for t in spec.tiers})
    keys = KeyStore({hash_key(k): tenant for k, tenant in KEYS.items()})
    return TestClient(create_app(core, keys), raise_server_exceptions=False), engines


def sent_salt(client: TestClient, engines: dict[str, FakeEngine], key: str, **kw: Any) -> Any:
    r = client.post(
        "/v1/chat/completions",
        json=chat(model="small", **kw),
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 200, r.text
    return engines["small"].calls[-1][1].get("cache_salt")


# -- tenant-scoped prefix caching ---------------------------------------------------------------
def test_each_tenant_gets_its_own_cache_salt_by_default() -> None:
    client, engines = gateway()
    a, b = sent_salt(client, engines, "sk-a"), sent_salt(client, engines, "sk-b")
    assert a == tenant_salt("team-a") and b == tenant_salt("team-b") and a != b
    assert sent_salt(client, engines, "sk-a") == a  # a tenant's requests share their cache
    # a client's own salt splits its tenant's cache; it is never used as is
    own = sent_salt(client, engines, "sk-a", cache_salt="x")
    assert own == tenant_salt("team-a", "x") and own not in (a, "x")
    # and no client salt names another tenant's: B sending A's salt gets its own
    assert sent_salt(client, engines, "sk-b", cache_salt=a) not in (a, own)
    assert sent_salt(client, engines, "sk-b", cache_salt="x") != own


def test_streams_and_completions_are_salted_too() -> None:
    client, engines = gateway()
    auth = {"Authorization": "Bearer sk-b"}
    r = client.post("/v1/chat/completions", json=chat(model="small", stream=True), headers=auth)
    assert r.status_code == 200
    assert engines["small"].calls[-1][1]["cache_salt"] == tenant_salt("team-b")
    body = {"model": "small", "prompt": "hi", "max_tokens": 2}
    assert client.post("/v1/completions", json=body, headers=auth).status_code == 200
    assert engines["small"].calls[-1][1]["cache_salt"] == tenant_salt("team-b")


def test_salting_off_shares_one_cache_and_drops_the_clients_salt() -> None:
    client, engines = gateway("  tenant_cache_salt: false\n")
    assert sent_salt(client, engines, "sk-a") is None
    assert sent_salt(client, engines, "sk-a", cache_salt="team-b") is None


def test_a_bad_cache_salt_is_400() -> None:
    client, _ = gateway()
    for bad in (5, ["x"], "x" * 10_000):
        r = client.post(
            "/v1/chat/completions",
            json=chat(model="small", cache_salt=bad),
            headers={"Authorization": "Bearer sk-a"},
        )
        assert_openai_error(r, 400)


@given(st.text(max_size=20), st.text(max_size=20), st.text(max_size=20), st.text(max_size=20))
def test_salts_of_different_tenants_never_meet(t1: str, s1: str, t2: str, s2: str) -> None:
    if t1 != t2:
        assert tenant_salt(t1, s1) != tenant_salt(t2, s2)


async def test_the_relay_and_handle_paths_carry_the_salt() -> None:
    from tests.unit.test_relay import EngineApp, relays
    from tests.unit.test_relay import chat as relay_chat
    from tests.unit.test_relay import gateway as relay_gateway

    engine = EngineApp("r1")
    async with (
        relays(engine) as urls,
        relay_gateway({"small": urls}) as gw,
        httpx.AsyncClient(timeout=10) as http,
    ):
        r = await http.post(f"{gw.url}/v1/chat/completions", json=relay_chat(cache_salt="x"))
        assert r.status_code == 200, r.text
        assert engine.seen[-1]["cache_salt"] == tenant_salt(ANONYMOUS_TENANT, "x")
    async with relay_gateway({}) as gw, httpx.AsyncClient(timeout=10) as http:  # no relay
        r = await http.post(f"{gw.url}/v1/chat/completions", json=relay_chat())
        assert r.status_code == 200, r.text
        handle = gw.clients["small"].fallback.calls[-1][1]  # type: ignore[attr-defined]
        assert handle["cache_salt"] == tenant_salt(ANONYMOUS_TENANT)


def test_the_handle_paths_request_keeps_the_salt() -> None:
    """Ray Serve LLM's request models (what the handle path sends) keep `cache_salt`."""
    from tierline.deployments.gateway.engines.engine_client import _engine_request

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "cache_salt": "s1"}
    assert _engine_request("chat", body).cache_salt == "s1"
    prompt = {"model": "m", "prompt": "hi", "cache_salt": "s2"}
    assert _engine_request("completions", prompt).cache_salt == "s2"


# -- media URLs --------------------------------------------------------------------------------
def image(url: Any, kind: str = "image_url") -> dict[str, Any]:
    return {"type": kind, kind: {"url": url} if isinstance(url, str) else url}


def vision_chat(*parts: dict[str, Any]) -> dict[str, Any]:
    content = [{"type": "text", "text": "what is this?"}, *parts]
    return chat(model="small", messages=[{"role": "user", "content": content}])


def test_remote_image_urls_are_refused_by_default_and_data_urls_pass() -> None:
    client, engines = gateway()
    auth = {"Authorization": "Bearer sk-a"}
    for url in (
        "https://example.com/cat.png",
        "http://169.254.169.254/latest/meta-data/",
        "file:///etc/passwd",
        "https://example.com@10.0.0.1/x.png",
    ):
        r = client.post("/v1/chat/completions", json=vision_chat(image(url)), headers=auth)
        err = assert_openai_error(r, 400)
        assert "image_url_hosts" in err["message"] and err["param"] == "messages", url
    for kind in ("audio_url", "video_url"):
        r = client.post(
            "/v1/chat/completions", json=vision_chat(image("https://x.org/a", kind)), headers=auth
        )
        assert_openai_error(r, 400)
    assert engines["small"].calls == []
    inline = vision_chat(image("data:image/png;base64,AAAA"))
    r = client.post("/v1/chat/completions", json=inline, headers=auth)
    assert r.status_code != 400 or "image_url_hosts" not in r.text


def test_listed_hosts_pass_over_https_only() -> None:
    limits = RequestLimitsSpec(image_url_hosts=["images.example.com", "*.cdn.example.org"])
    ok = [
        "https://images.example.com/a.png",
        "https://a.cdn.example.org/b.png",
        "https://x.y.cdn.example.org:443/b.png",
        "data:image/png;base64,AAAA",
    ]
    check_media_urls(limits, [{"image_url": {"url": u}} for u in ok])
    check_media_urls(limits, [{"image_url": "https://images.example.com/a.png"}])
    for bad in (
        "http://images.example.com/a.png",
        "https://cdn.example.org/b.png",
        "https://images.example.com.evil.net/a.png",
        "https://evilimages.example.com/a.png",
        "https://images.example.com:8080/a.png",
        "https://images.example.com@evil.net/a.png",
        "https://[::1/a.png",
        "//images.example.com/a.png",
    ):
        with pytest.raises(APIError) as err:
            check_media_urls(limits, [{"image_url": {"url": bad}}])
        assert err.value.status == 400, bad
    with pytest.raises(APIError):
        check_media_urls(limits, [{"image_url": {"no": "url"}}])


@given(st.text(alphabet="abc.-*", max_size=12), st.text(alphabet="abc.-", max_size=12))
def test_host_matching_is_exact_or_a_true_subdomain(entry: str, host: str) -> None:
    if host_allowed(host, [entry]):
        if entry.startswith("*."):
            assert host.endswith(entry[1:]) and host != entry[2:]
        else:
            assert host == entry
