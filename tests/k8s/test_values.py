"""values.yaml, values.schema.json and the spec agree; helm-values and render agree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from tierline.cli.main import app
from tierline.cluster.helm_values import (
    HelmValuesError,
    chart_schema_with_spec,
    helm_values,
    nodes_for,
    worker_groups,
)
from tierline.cluster.render import serve_config
from tierline.cluster.specfile import load_spec, parse_spec
from typer.testing import CliRunner

from tests.k8s.manifests import (
    CHART,
    CHART_RESPONSES_URI,
    CI_VALUES,
    as_deployed,
    helm_template,
    serve_config_of,
)

SCHEMA_PATH = CHART / "values.schema.json"


def chart_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def chart_values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def disagreements(values: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Keys of values.yaml the schema does not declare, and keys the schema declares
    that values.yaml gives no default for (the spec, generated, is left out; so are the
    fields of blocks that values.yaml leaves empty)."""
    if not isinstance(values, dict) or "properties" not in schema:
        return []
    if values == {} and path:
        return []  # an optional block, off by default (e.g. clusterUpgradeOptions: {})
    out = []
    declared = set(schema["properties"])
    if schema.get("additionalProperties") is False:
        out += [f"{path}{k}: in values.yaml, not in the schema" for k in set(values) - declared]
    out += [f"{path}{k}: in the schema, not in values.yaml" for k in declared - set(values)]
    for key in declared & set(values):
        if path == "" and key == "spec":
            continue
        out += disagreements(values[key], schema["properties"][key], f"{path}{key}.")
    return sorted(out)


def test_values_yaml_meets_its_schema() -> None:
    import jsonschema

    jsonschema.Draft7Validator.check_schema(chart_schema())
    errors = list(jsonschema.Draft7Validator(chart_schema()).iter_errors(chart_values()))
    assert errors == []


def test_values_yaml_and_schema_declare_the_same_keys() -> None:
    assert disagreements(chart_values(), chart_schema()) == []


def test_disagreements_are_found() -> None:
    values, schema = chart_values(), chart_schema()
    values["head"]["gpus"] = 1
    assert disagreements(values, schema) == ["head.gpus: in values.yaml, not in the schema"]
    values, schema = chart_values(), chart_schema()
    schema["properties"]["ingress"]["properties"]["path"] = {"type": "string"}
    assert disagreements(values, schema) == ["ingress.path: in the schema, not in values.yaml"]


def test_schema_spec_part_is_generated_from_the_models() -> None:
    assert chart_schema() == chart_schema_with_spec(chart_schema()), (
        "helm/tierline/values.schema.json is stale against cluster/spec/: run `make generate`"
    )


def test_example_spec_is_configs_h100(root: Path) -> None:
    text = (CHART / "files" / "example-spec.yaml").read_text()
    assert parse_spec(yaml.safe_load(text)) == load_spec(root / "configs/h100-single-node.yaml")


def test_every_ci_spec_is_a_valid_spec() -> None:
    for path in CI_VALUES:
        parse_spec(yaml.safe_load(path.read_text())["spec"], str(path))


GPU_CONFIGS = ["h100-single-node.yaml", "multi-node.yaml"]


@pytest.mark.parametrize("name", GPU_CONFIGS)
def test_chart_renders_exactly_what_render_serve_writes(
    root: Path, tmp_path: Path, name: str
) -> None:
    """One source of truth: `tierline render helm-values` into the chart gives the
    serveConfigV2 that `tierline render serve` writes for the same spec."""
    spec_path = root / "configs" / name
    out = tmp_path / "values.yaml"
    res = CliRunner().invoke(app, ["render", "helm-values", str(spec_path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert yaml.safe_load(out.read_text()) == helm_values(load_spec(spec_path))
    rendered = serve_config_of(helm_template([out]))
    # The same, but for the chart's shared Responses store (`as_deployed`).
    assert rendered == serve_config(as_deployed(load_spec(spec_path)))
    cli = yaml.safe_load(CliRunner().invoke(app, ["render", "serve", str(spec_path)]).output)
    cli_spec = cli["applications"][0]["args"]["spec"]
    cli_spec["gateway"]["responses"]["store_uri"] = CHART_RESPONSES_URI
    assert rendered == cli


def test_a_change_in_the_spec_shows_in_the_chart(root: Path, tmp_path: Path) -> None:
    spec = load_spec(root / "configs" / "multi-node.yaml")
    values = helm_values(spec)
    values["spec"]["tiers"][1]["replicas"] = 3
    out = tmp_path / "values.yaml"
    out.write_text(yaml.safe_dump(values))
    rendered = serve_config_of(helm_template([out]))
    assert rendered != serve_config(spec)
    assert parse_spec(rendered["applications"][0]["args"]["spec"]).tiers[1].replicas == 3


def test_helm_values_refuses_a_loopback_proxy(root: Path) -> None:
    with pytest.raises(HelmValuesError, match=r"gateway\.host"):
        helm_values(load_spec(root / "configs" / "local.yaml"))
    res = CliRunner().invoke(app, ["render", "helm-values", str(root / "configs/local.yaml")])
    assert res.exit_code == 1
    assert "0.0.0.0" in res.output


def test_worker_groups_of_the_multi_node_config(root: Path) -> None:
    (group,) = worker_groups(load_spec(root / "configs" / "multi-node.yaml"))
    # small 2..8 x TP1, large 2 x TP4, frontier TP8 x PP2: 26..32 GPUs on 8-GPU pods.
    assert group == {
        "name": "h100",
        "acceleratorType": "H100",
        "gpusPerPod": 8,
        "minReplicas": 4,
        "maxReplicas": 4,
    }
    (group,) = worker_groups(load_spec(root / "configs" / "h100-single-node.yaml"))
    assert (group["minReplicas"], group["maxReplicas"]) == (1, 1)


def test_tensor_parallelism_across_pods(root: Path) -> None:
    spec = load_spec(root / "configs" / "multi-node.yaml")
    # On 4-GPU pods the 405B tier's TP8 spans two whole pods per pipeline stage:
    # small 2..8 x 1 GPU, large 2 x TP4, frontier 2 stages x 2 pods.
    (group,) = worker_groups(spec, gpus_per_node=4)
    assert (group["gpusPerPod"], group["minReplicas"], group["maxReplicas"]) == (4, 7, 8)
    with pytest.raises(HelmValuesError, match="not a multiple of 3"):
        worker_groups(spec, gpus_per_node=3)


@given(
    chunks=st.lists(st.sampled_from([1, 2, 4, 8, 16, 32]), max_size=60),
    gpus=st.sampled_from([4, 8, 16]),
)
def test_nodes_for_packs_within_bounds(chunks: list[int], gpus: int) -> None:
    nodes = nodes_for(chunks, gpus)
    lower = -(-sum(chunks) // gpus)
    assert lower <= nodes <= max(len(chunks), lower)
    # Power-of-two chunks on power-of-two pods pack perfectly when sorted, also when a
    # chunk is larger than a pod (it takes whole pods).
    assert nodes == lower
