"""k8s/: plain manifests for teams without Helm, generated from the chart.

The base is the chart rendered for configs/h100-single-node.yaml; each overlay is the
chart rendered for its spec, written as JSON patches over the base. A test regenerates
everything and compares it with the files in k8s/, so the two cannot drift. Regenerate
after changing the chart or a config:

    make generate
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml
from tierline.cluster.helm_values import helm_values
from tierline.cluster.specfile import load_spec

from tools.helm import ROOT, Obj, helm_template

K8S = ROOT / "k8s"
NAMESPACE = "tierline"
BASE_CONFIG = "configs/h100-single-node.yaml"
# overlay name -> the spec it runs
OVERLAYS = {
    "single-gpu-node": "configs/h100-single-node.yaml",
    "multi-node": "configs/multi-node.yaml",
}
HEADER = (
    "# Generated from helm/tierline by `make generate`;\n"
    "# do not edit (tests/k8s/test_kustomize.py checks it is current).\n"
)


def _without_helm_labels(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _without_helm_labels(v) for k, v in node.items()}
        labels = out.get("labels")
        if isinstance(labels, dict) and "helm.sh/chart" in labels:
            labels.pop("helm.sh/chart")
            labels["app.kubernetes.io/managed-by"] = "kustomize"
        return out
    if isinstance(node, list):
        return [_without_helm_labels(v) for v in node]
    return node


def chart_objects(config: str) -> list[Obj]:
    """The chart rendered for a spec (the values `tierline render helm-values` writes,
    with the spec's defaults left out so that a new spec field with a default does not
    change these files), Helm's own labels replaced by kustomize's."""
    spec = load_spec(ROOT / config)
    values = {**helm_values(spec), "spec": spec.model_dump(mode="json", exclude_defaults=True)}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        return [_without_helm_labels(o) for o in helm_template([path])]


def with_namespace(objects: list[Obj], namespace: str = NAMESPACE) -> list[Obj]:
    return [{**o, "metadata": {**o["metadata"], "namespace": namespace}} for o in objects]


def object_key(obj: Obj) -> tuple[str, str, str]:
    return (obj["apiVersion"], obj["kind"], obj["metadata"]["name"])


def _pointer(parts: list[str]) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def json_patch(old: Any, new: Any, path: list[str] | None = None) -> list[dict[str, Any]]:
    """RFC 6902 operations turning `old` into `new` (lists of another length are
    replaced whole)."""
    path = path or []
    if isinstance(old, dict) and isinstance(new, dict):
        ops: list[dict[str, Any]] = []
        for key in old:
            if key not in new:
                ops.append({"op": "remove", "path": _pointer([*path, key])})
        for key, value in new.items():
            if key not in old:
                ops.append({"op": "add", "path": _pointer([*path, key]), "value": value})
            else:
                ops += json_patch(old[key], value, [*path, key])
        return ops
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            op
            for i, (a, b) in enumerate(zip(old, new, strict=True))
            for op in json_patch(a, b, [*path, str(i)])
        ]
    if old == new and type(old) is type(new):
        return []
    return [{"op": "replace", "path": _pointer(path), "value": new}]


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=100)


def _file_name(obj: Obj) -> str:
    return f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"


def kustomization(**fields: Any) -> str:
    doc = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", **fields}
    return HEADER + dump(doc)


def generate() -> dict[str, str]:
    """Every generated file under k8s/: relative path -> text."""
    files: dict[str, str] = {}
    base = chart_objects(BASE_CONFIG)
    for obj in base:
        files[f"base/{_file_name(obj)}"] = HEADER + dump(obj)
    files["base/kustomization.yaml"] = kustomization(
        resources=[_file_name(o) for o in base],
    )
    base_by_key = {object_key(o): o for o in base}
    for name, config in OVERLAYS.items():
        objects = chart_objects(config)
        keys = {object_key(o) for o in objects}
        if set(base_by_key) - keys:
            raise ValueError(f"overlay {name}: objects of the base it does not have")
        resources: list[str] = ["../../base"]
        patches = []
        for obj in objects:
            old = base_by_key.get(object_key(obj))
            if old is None:
                files[f"overlays/{name}/{_file_name(obj)}"] = HEADER + dump(obj)
                resources.append(_file_name(obj))
                continue
            ops = json_patch(old, obj)
            if not ops:
                continue
            patch_file = _file_name(obj).removesuffix(".yaml") + ".patch.yaml"
            files[f"overlays/{name}/{patch_file}"] = HEADER + dump(ops)
            api_group, _, version = obj["apiVersion"].rpartition("/")
            target = {"version": version, "kind": obj["kind"], "name": obj["metadata"]["name"]}
            if api_group:
                target = {"group": api_group, **target}
            patches.append({"path": patch_file, "target": target})
        fields: dict[str, Any] = {"namespace": NAMESPACE, "resources": resources}
        if patches:
            fields["patches"] = patches
        files[f"overlays/{name}/kustomization.yaml"] = kustomization(**fields)
    return files


def generated_on_disk() -> dict[str, str]:
    return {
        str(p.relative_to(K8S)): p.read_text()
        for folder in ("base", "overlays")
        for p in sorted((K8S / folder).rglob("*.yaml"))
    }
