"""Every example in configs/ is valid: specs through `tierline validate` (the CLI, as a user
runs it), the inventories in configs/inventory/ through the inventory loader."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tierline.cli.main import app
from tierline.cluster.inventory import load_inventory
from typer.testing import CliRunner

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SPECS = sorted(CONFIGS.glob("*.yaml"))
INVENTORIES = sorted((CONFIGS / "inventory").glob("*.yaml"))


def test_there_are_examples_of_each_kind() -> None:
    names = {p.name for p in SPECS}
    assert {"local.yaml", "autoscaling.yaml", "prefix.yaml"} <= names
    assert INVENTORIES
    # Specs have tiers, inventories nodes: none of one kind sits among the other.
    assert all("tiers" in yaml.safe_load(p.read_text()) for p in SPECS)
    assert all("nodes" in yaml.safe_load(p.read_text()) for p in INVENTORIES)


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_tierline_validate_accepts_every_example_spec(path: Path) -> None:
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert f"{path}: ok" in result.output


def test_tierline_validate_fails_on_a_broken_copy(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    text = (CONFIGS / "autoscaling.yaml").read_text()
    broken.write_text(text.replace("min_replicas: 1", "min_replicas: 0"))
    result = CliRunner().invoke(app, ["validate", str(CONFIGS / "local.yaml"), str(broken)])
    assert result.exit_code == 1
    assert "only cheaper tiers may scale to zero" in result.output


@pytest.mark.parametrize("path", INVENTORIES, ids=lambda p: p.name)
def test_example_inventories_load(path: Path) -> None:
    assert load_inventory(path).nodes
