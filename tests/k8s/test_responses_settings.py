"""The chart sets the Responses store: by default a PostgreSQL server every gateway pod
shares (its password from a Secret, its port let through by the NetworkPolicy); a
`spec.gateway.responses` store_uri in the values reaches the gateway's spec; a per-pod
SQLite file is refused unless asked for."""

from __future__ import annotations

from pathlib import Path

import pytest
from tierline.cluster.specfile import parse_spec
from tierline.deployments.gateway.responses import SqliteResponseStore, open_store
from tierline.deployments.gateway.responses.store_pg import PostgresResponseStore

from tests.k8s.manifests import (
    CHART_RESPONSES_URI,
    CI_VALUES,
    HelmError,
    Obj,
    helm_template,
    one,
    serve_config_of,
)


def _spec(objects: list[Obj]):  # type: ignore[no-untyped-def]
    (app,) = serve_config_of(objects)["applications"]
    return parse_spec(app["args"]["spec"], "serveConfigV2")


def _egress_ports(objects: list[Obj]) -> set[int]:
    allow = next(
        o
        for o in objects
        if o["kind"] == "NetworkPolicy" and o["metadata"]["name"].endswith("-allow")
    )
    return {p["port"] for rule in allow["spec"]["egress"] for p in rule.get("ports", [])}


def _env(objects: list[Obj]) -> list[dict]:
    service = one(objects, "RayService")
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    return head["containers"][0]["env"]


def test_the_default_store_is_a_shared_postgresql_server() -> None:
    """Before: every gateway pod had its own SQLite file, so a stored response was found
    only on the pod that stored it, and lost with the pod."""
    objects = helm_template(
        [CI_VALUES[0]],
        sets=["responses.postgresql.passwordSecret.name=tierline-pg"],
    )
    spec = _spec(objects)
    assert spec.gateway.responses.store_uri == CHART_RESPONSES_URI
    assert isinstance(open_store(spec.gateway.responses), PostgresResponseStore)
    assert 5432 in _egress_ports(objects)
    password = next(e for e in _env(objects) if e["name"] == "PGPASSWORD")
    assert password["valueFrom"]["secretKeyRef"] == {"name": "tierline-pg", "key": "password"}
    assert "password" not in CHART_RESPONSES_URI  # never in the spec


def test_a_store_uri_in_the_values_reaches_the_gateway_with_its_port_let_through() -> None:
    uri = "postgresql://app@pg.db.svc:6432/responses?sslmode=require"
    objects = helm_template([CI_VALUES[0]], sets=[f"spec.gateway.responses.store_uri={uri}"])
    assert _spec(objects).gateway.responses.store_uri == uri
    ports = _egress_ports(objects)
    assert 6432 in ports and 5432 not in ports
    assert not any(e["name"] == "PGPASSWORD" for e in _env(objects))  # no Secret named


def test_a_per_pod_sqlite_store_is_refused_unless_asked_for() -> None:
    sqlite = "spec.gateway.responses.store_uri=sqlite:////var/lib/tierline/responses.db"
    with pytest.raises(HelmError, match="one per gateway pod"):
        helm_template([CI_VALUES[0]], sets=[sqlite])
    objects = helm_template(
        [CI_VALUES[0]],
        sets=[sqlite, "spec.gateway.responses.ttl_s=3600", "responses.allowPodLocalStore=true"],
    )
    spec = _spec(objects)
    assert spec.gateway.responses.ttl_s == 3600
    store = open_store(spec.gateway.responses)
    assert isinstance(store, SqliteResponseStore)
    assert store.path == Path("/var/lib/tierline/responses.db")
    assert 5432 not in _egress_ports(objects)
