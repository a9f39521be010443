from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from tierline.cluster.spec import AuthSpec
from tierline.deployments.gateway.pipeline.auth import (
    add_key,
    ensure_local_key,
    hash_key,
    load_key_store,
)
from tierline.deployments.gateway.pipeline.middleware import PUBLIC_PATHS

from tests.unit.test_gateway import make


def test_keys_are_hashed_at_rest_and_map_to_tenants(tmp_path: Path) -> None:
    f = tmp_path / "keys.json"
    a, b = add_key(f, "team-a"), add_key(f, "team-b")
    text = f.read_text()
    assert a not in text and b not in text and hash_key(a) in text
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    store = load_key_store(AuthSpec(keys_file=str(f)), environ={"TIERLINE_API_KEY": "env-k"})
    assert store.authenticate(f"Bearer {a}").tenant == "team-a"  # type: ignore[union-attr]
    assert store.authenticate(f"bearer {b}").tenant == "team-b"  # type: ignore[union-attr]
    assert store.authenticate("Bearer env-k").tenant == "default"  # type: ignore[union-attr]
    for bad in (None, "", "Bearer", "Bearer nope", f"Basic {a}", a):
        assert store.authenticate(bad) is None


def test_bad_keys_file_is_a_clear_error(tmp_path: Path) -> None:
    f = tmp_path / "keys.json"
    f.write_text(json.dumps({"keys": [{"tenant": "x"}]}))
    with pytest.raises(ValueError, match=r"keys\[0\] needs 'tenant' and 'sha256'"):
        load_key_store(AuthSpec(keys_file=str(f)), environ={})


def test_local_key_is_made_once_with_mode_600(tmp_path: Path) -> None:
    key, created = ensure_local_key(tmp_path, tmp_path / "keys.json")
    again, created_again = ensure_local_key(tmp_path, tmp_path / "keys.json")
    assert created and not created_again and key == again
    assert stat.S_IMODE((tmp_path / "api-key").stat().st_mode) == 0o600


def test_every_route_but_the_allowlist_refuses_unauthenticated(tmp_path: Path) -> None:
    key = add_key(tmp_path / "k.json", "team")
    store = load_key_store(AuthSpec(keys_file=str(tmp_path / "k.json")), environ={})
    client, _ = make(keys=store)
    routes = [r for r in client.app.routes if isinstance(r, APIRoute)]  # type: ignore[attr-defined]
    assert len(routes) >= 6
    # also the routes FastAPI adds itself (docs, schema)
    paths = {(m, r.path) for r in routes for m in r.methods} | {
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("GET", "/redoc"),
    }
    for method, path in sorted(paths):
        url = path.replace("{model:path}", "tiny")
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = client.request(method, url, headers=headers, json={})
            if path in PUBLIC_PATHS:
                assert r.status_code < 400, (method, path)
            else:
                assert r.status_code == 401, (method, path, r.status_code)
                assert r.json()["error"]["type"] == "authentication_error"
                assert r.headers["www-authenticate"] == "Bearer"
    ok = client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert ok.status_code == 200
