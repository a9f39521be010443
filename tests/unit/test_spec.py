from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tierline.cli.main import app
from tierline.cluster.spec import ClusterSpec
from tierline.cluster.specfile import SpecError, load_spec, load_spec_text, parse_spec
from typer.testing import CliRunner

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))

MINIMAL = """
tiers:
  - name: small
    model_source: org/small
    max_context_tokens: 1024
  - name: large
    model_source: org/large
    max_context_tokens: 4096
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(SpecError) as exc:
        load_spec_text(text, "t.yaml")
    return [str(i) for i in exc.value.issues]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path) -> None:
    spec = load_spec(path)
    assert spec.tiers


def test_shipped_gpu_configs_describe_real_hardware() -> None:
    names = {p.name for p in CONFIGS}
    assert {"local.yaml", "h100-single-node.yaml", "multi-node.yaml"} <= names
    multi = load_spec(Path(CONFIGS[0]).parent / "multi-node.yaml")
    big = max(multi.tiers, key=lambda t: t.params_b or 0)
    assert (big.params_b or 0) >= 65 and big.tensor_parallel_size > 1
    assert all(t.accelerator_type for t in multi.tiers)


def test_local_paths_resolve_against_the_spec_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    p = tmp_path / "conf" / "s.yaml"
    p.write_text(MINIMAL.replace("org/small", "../models/x"))
    spec = load_spec(p)
    assert spec.tiers[0].model_source == str((tmp_path / "models" / "x").resolve())
    assert spec.tiers[1].model_source == "org/large"  # a hub id stays as it is


def test_defaults() -> None:
    spec = load_spec_text(MINIMAL)
    assert spec.tiers[0].model_name == "small"
    assert spec.tiers[0].num_replicas == 1
    assert spec.gateway.port == 8000
    assert spec.router.policy == "rules"


def test_unknown_key_is_an_error_with_its_path() -> None:
    errs = errors_of(MINIMAL + "    replicaz: 2\n")
    assert any(e.startswith("tiers[1].replicaz (line 9)") for e in errs), errs


def test_every_error_is_reported_with_path_and_line() -> None:
    text = """
tiers:
  - name: Small_Tier
    model_source: org/small
    max_context_tokens: 8
    tensor_parallel_size: 0
gateway:
  port: 70000
"""
    errs = errors_of(text)
    paths = {e.split(" ")[0].rstrip(":") for e in errs}
    assert {
        "tiers[0].name",
        "tiers[0].max_context_tokens",
        "tiers[0].tensor_parallel_size",
        "gateway.port",
    } <= paths
    assert any("(line 8)" in e for e in errs if e.startswith("gateway.port"))


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ("    replicas: 2\n    autoscaling: {min_replicas: 1, max_replicas: 3}\n", "not both"),
        ("    autoscaling: {min_replicas: 4, max_replicas: 3}\n", "above max_replicas"),
        ("    engine_kwargs: {max_model_len: 10}\n", "engine_kwargs may not set max_model_len"),
        ("    tensor_parallel_size: 2\n", "needs an accelerator_type"),
        ("    served_model_name: small\n", "already used by tier 'small'"),
        ("    served_model_name: auto\n", "reserved"),
    ],
)
def test_cross_field_rules(patch: str, needle: str) -> None:
    errs = errors_of(MINIMAL + patch)
    assert any(needle in e for e in errs), errs


def test_router_tiers_must_exist() -> None:
    errs = errors_of(MINIMAL + "router:\n  default_tier: medium\n")
    assert any("router.default_tier 'medium' is not a tier" in e for e in errs), errs


def test_not_yaml_and_not_a_mapping() -> None:
    assert "not valid YAML" in errors_of("tiers: [")[0]
    assert "must be a YAML mapping" in errors_of("- a\n- b\n")[0]


def test_spec_round_trips_through_plain_data() -> None:
    spec = load_spec(CONFIGS[0])
    again = parse_spec(yaml.safe_load(yaml.safe_dump(spec.model_dump(mode="json"))))
    assert again == spec
    assert ClusterSpec.model_json_schema()["additionalProperties"] is False


def test_cli_validate_exit_codes(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(MINIMAL)
    bad.write_text(MINIMAL + "    replicas: -1\n")
    runner = CliRunner()
    ok = runner.invoke(app, ["validate", str(good)])
    assert ok.exit_code == 0 and "ok (2 tiers" in ok.output
    res = runner.invoke(app, ["validate", str(good), str(bad)])
    assert res.exit_code == 1
    assert "tiers[1].replicas (line 9)" in res.output
    missing = runner.invoke(app, ["validate", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 1 and "cannot read spec" in missing.output
