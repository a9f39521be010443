"""Rendering the chart with helm and checking what comes out, offline.

Core kinds are checked with kubernetes-validate (the Kubernetes OpenAPI schemas, strict:
unknown fields are errors), RayService/RayCluster against the KubeRay CRD schemas in
k8s/crds/ (made strict the same way), and every pod template against Pod Security
"restricted". The checks return lists of problems, so tests can also show that they
catch a broken object.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator, Sequence
from typing import Any

import yaml
from tierline.cluster.spec import ClusterSpec

from tools.helm import (
    CHART,
    CI_VALUES,
    CRDS,
    HELM,
    HELM3,
    KUBECTL,
    KUBERNETES_VERSION,
    RELEASE,
    ROOT,
    HelmError,
    Obj,
    helm,
    helm_template,
    parse_docs,
    run,
    tool,
)

__all__ = [
    "CHART",
    "CHART_RESPONSES_URI",
    "CI_VALUES",
    "CRDS",
    "HELM",
    "HELM3",
    "KUBECTL",
    "KUBERNETES_VERSION",
    "RELEASE",
    "ROOT",
    "HelmError",
    "Obj",
    "as_deployed",
    "crd_schemas",
    "deep_copy",
    "helm",
    "helm_template",
    "one",
    "parse_docs",
    "pod_templates",
    "podmonitor_problems",
    "release_restricted_problems",
    "restricted_problems",
    "run",
    "serve_config_of",
    "tool",
    "validate_object",
]


def one(objects: list[Obj], kind: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def serve_config_of(objects: list[Obj]) -> dict[str, Any]:
    return yaml.safe_load(one(objects, "RayService")["spec"]["serveConfigV2"])


# -- schemas ---------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """Reject unknown fields, as `kubectl apply --validate=strict` does: every object
    schema with properties and no rule of its own for extra keys gets
    additionalProperties false."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def crd_schemas() -> dict[tuple[str, str], Obj]:
    """(apiVersion, kind) -> strict JSON schema, from the KubeRay CRDs."""
    out = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = _strict(version["schema"]["openAPIV3Schema"])
            out[(f"{group}/{version['name']}", kind)] = schema
    return out


def validate_object(obj: Obj) -> list[str]:
    """Schema problems of one rendered object (empty: valid)."""
    import jsonschema
    import kubernetes_validate

    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    name = f"{key[1]}/{obj.get('metadata', {}).get('name')}"
    if key in crd_schemas():
        validator = jsonschema.Draft7Validator(crd_schemas()[key])
        return [
            f"{name}: {'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(obj)
        ]
    if key[0].startswith("monitoring.coreos.com/"):
        return podmonitor_problems(obj)
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{name}: {'.'.join(map(str, e.path))}: {e.message}"]
    return []


def podmonitor_problems(obj: Obj) -> list[str]:
    """No Prometheus-operator CRD schema offline: check the fields that matter."""
    problems = []
    if obj["apiVersion"] != "monitoring.coreos.com/v1" or obj["kind"] != "PodMonitor":
        problems.append(f"unexpected monitoring kind {obj['apiVersion']} {obj['kind']}")
    spec = obj.get("spec", {})
    if not spec.get("selector", {}).get("matchLabels"):
        problems.append("PodMonitor has no selector.matchLabels")
    endpoints = spec.get("podMetricsEndpoints") or []
    if not endpoints or any(not e.get("port") for e in endpoints):
        problems.append("PodMonitor endpoints need a named port")
    allowed = {"selector", "podMetricsEndpoints", "namespaceSelector", "jobLabel"}
    problems += [f"PodMonitor: unknown field spec.{k}" for k in set(spec) - allowed]
    return problems


# -- pods --------------------------------------------------------------------------------


def pod_templates(obj: Obj) -> Iterator[tuple[str, Obj]]:
    """(where, pod template) of every pod an object makes, KubeRay's included."""
    spec = obj.get("spec", {})
    if obj["kind"] == "RayService":
        cluster = spec["rayClusterConfig"]
        yield "head", cluster["headGroupSpec"]["template"]
        for g in cluster.get("workerGroupSpecs", []):
            yield f"worker group {g['groupName']}", g["template"]
    elif obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        yield obj["kind"], spec["template"]
    elif obj["kind"] == "Pod":
        yield "pod", obj


ALLOWED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_problems(template: Obj, extra_containers: Sequence[Obj] = ()) -> list[str]:
    """Where a pod template breaks Pod Security "restricted" (empty: it meets it)."""
    pod = template.get("spec", {})
    psc = pod.get("securityContext") or {}
    out = []
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(host):
            out.append(f"{host} is set")
    for vol in pod.get("volumes", []):
        kinds = set(vol) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            out.append(f"volume {vol['name']}: type {sorted(kinds)} is not allowed")
    containers = [
        *pod.get("initContainers", []),
        *pod.get("containers", []),
        *extra_containers,
    ]
    if not containers:
        out.append("no containers")
    for c in containers:
        sc = c.get("securityContext") or {}
        name = c.get("name", "?")
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation is not false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{name}: capabilities.drop does not include ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: adds capabilities {caps['add']}")
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True:
            out.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            out.append(f"{name}: runAsUser is 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile.type is {seccomp!r}")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            out.append(f"{name}: uses a hostPort")
    return out


def release_restricted_problems(objects: list[Obj]) -> list[str]:
    out = []
    for obj in objects:
        extra: list[Obj] = []
        if obj["kind"] == "RayService":
            cluster = obj["spec"]["rayClusterConfig"]
            if cluster.get("enableInTreeAutoscaling"):
                # KubeRay adds the autoscaler container to the head pod with this context.
                sc = (cluster.get("autoscalerOptions") or {}).get("securityContext")
                extra = [{"name": "autoscaler", "securityContext": sc}]
        for where, template in pod_templates(obj):
            add = extra if where == "head" else []
            out += [f"{obj['kind']} {where}: {p}" for p in restricted_problems(template, add)]
    return out


CHART_RESPONSES_URI = "postgresql://tierline@tierline-postgresql:5432/tierline"
"""The chart's default Responses store (values `responses.postgresql.uri`)."""


def as_deployed(spec: ClusterSpec) -> ClusterSpec:
    """The spec the chart deploys for a values spec: the same, with the shared Responses
    store (`CHART_RESPONSES_URI`) where the spec leaves `store_uri` unset."""
    if "store_uri" in spec.gateway.responses.model_fields_set:
        return spec
    responses = spec.gateway.responses.model_copy(update={"store_uri": CHART_RESPONSES_URI})
    gateway = spec.gateway.model_copy(update={"responses": responses})
    return spec.model_copy(update={"gateway": gateway})


def deep_copy(obj: Obj) -> Obj:
    return copy.deepcopy(obj)
