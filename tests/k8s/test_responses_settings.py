"""The chart sets the Responses store: `spec.gateway.responses` in the values reaches the
gateway's spec in the rendered Serve config, and the gateway opens that store."""

from __future__ import annotations

from pathlib import Path

from tierline.cluster.specfile import parse_spec
from tierline.deployments.responses import SqliteResponseStore, open_store

from tests.k8s.manifests import CI_VALUES, helm_template, serve_config_of


def test_values_set_the_store_uri() -> None:
    objects = helm_template(
        [CI_VALUES[0]],
        sets=[
            "spec.gateway.responses.store_uri=sqlite:////var/lib/tierline/responses.db",
            "spec.gateway.responses.ttl_s=3600",
        ],
    )
    (app,) = serve_config_of(objects)["applications"]
    spec = parse_spec(app["args"]["spec"], "serveConfigV2")
    assert spec.gateway.responses.ttl_s == 3600
    store = open_store(spec.gateway.responses)
    assert isinstance(store, SqliteResponseStore)
    assert store.path == Path("/var/lib/tierline/responses.db")
