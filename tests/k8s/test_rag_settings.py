"""The chart's RAG settings take effect (issue 16): what it renders is what the code reads.

The RAG replica must run on the pod holding Milvus Lite's volume, and a Milvus server's
token must reach the store client. The chart passes both as environment variables; here
the rendered manifests are fed to the Python side that reads them (`deployments.rag.env`,
`build_rag_apps`), so a renamed variable or resource on either side fails.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from tierline.cluster.specfile import parse_spec
from tierline.deployments.rag.deployment import build_rag_apps
from tierline.deployments.rag.env import (
    MILVUS_TOKEN_ENV,
    RAG_STORE_RESOURCE_ENV,
    chunk_store,
)

from tests.k8s.manifests import CI_VALUES, Obj, helm_template, one, serve_config_of

CI = CI_VALUES[0].parent
SECRET_VALUE = "root:from-the-secret"


def ray_resources(group: Obj) -> dict[str, float]:
    """The custom resources a Ray pod advertises: `ray start --resources=...` as KubeRay
    puts the rayStartParams value on the command line (shell-quoted JSON)."""
    raw = group["rayStartParams"].get("resources")
    if raw is None:
        return {}
    (text,) = shlex.split(raw)
    return {k: float(v) for k, v in json.loads(text).items()}


def pod_environ(group: Obj) -> dict[str, str]:
    """The Ray container's environment; a Secret's key gets a stand-in value."""
    (container,) = group["template"]["spec"]["containers"]
    env = {}
    for e in container["env"]:
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif "secretKeyRef" in e.get("valueFrom", {}):
            env[e["name"]] = SECRET_VALUE
    return env


def groups(objects: list[Obj]) -> tuple[Obj, list[Obj]]:
    cluster = one(objects, "RayService")["spec"]["rayClusterConfig"]
    return cluster["headGroupSpec"], cluster["workerGroupSpecs"]


def rag_options(objects: list[Obj], environ: dict[str, str]) -> dict[str, Any]:
    """The RAG deployment's actor options, built from the rendered Serve config's spec in a
    process with `environ` (the application is built on a Ray node of the cluster)."""
    (app,) = serve_config_of(objects)["applications"]
    spec = parse_spec(app["args"]["spec"], "serveConfigV2")
    rag, _ = build_rag_apps(spec, environ=environ)
    return rag._bound_deployment.ray_actor_options


def test_the_rag_replica_can_only_be_placed_on_the_pod_with_the_volume() -> None:
    objects = helm_template([CI / "milvus-lite-values.yaml"])
    head, workers = groups(objects)
    assert "milvus-lite" in {v["name"] for v in head["template"]["spec"]["volumes"]}
    # Every pod may run the application build; each one's environment gives the same ask.
    for group in [head, *workers]:
        asked = rag_options(objects, pod_environ(group)).get("resources")
        assert asked, f"{RAG_STORE_RESOURCE_ENV} is not read or not rendered"
        for name, amount in asked.items():
            assert ray_resources(head).get(name, 0) >= amount, (name, ray_resources(head))
            for worker in workers:
                assert name not in ray_resources(worker)
                volumes = {v["name"] for v in worker["template"]["spec"]["volumes"]}
                assert "milvus-lite" not in volumes


def test_an_external_milvus_gets_the_secrets_token_and_no_placement() -> None:
    objects = helm_template([CI / "external-milvus-values.yaml"])
    head, workers = groups(objects)
    (app,) = serve_config_of(objects)["applications"]
    spec = parse_spec(app["args"]["spec"], "serveConfigV2")
    assert spec.rag.token is None  # never in the spec (the RayService shows it)
    for group in [head, *workers]:
        environ = pod_environ(group)
        assert environ.get(MILVUS_TOKEN_ENV) == SECRET_VALUE
        store = chunk_store(spec.rag, environ)
        assert (store.uri, store.token) == (spec.rag.uri, SECRET_VALUE)
        assert "resources" not in rag_options(objects, environ)


def test_without_a_token_secret_the_store_has_no_token() -> None:
    objects = helm_template([CI / "external-milvus-values.yaml"], sets=["rag.tokenSecret.name="])
    head, _ = groups(objects)
    (app,) = serve_config_of(objects)["applications"]
    spec = parse_spec(app["args"]["spec"], "serveConfigV2")
    assert MILVUS_TOKEN_ENV not in pod_environ(head)
    assert chunk_store(spec.rag, pod_environ(head)).token is None
