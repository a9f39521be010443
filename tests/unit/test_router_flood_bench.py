"""The down-routing flood benchmark's pure parts: the variant specs, reading the loss from
the route reason, and the summary (no cluster, no timings asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tierline.cluster.spec import ClusterSpec

from bench.router_flood_bench import (
    Outcome,
    absolute_paths,
    compare,
    flood_spec_data,
    loss_of,
    p99,
    summarize,
)

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"


@pytest.mark.parametrize("downgrade", [True, False])
def test_each_variant_is_a_valid_spec_that_differs_only_in_the_switch(downgrade: bool) -> None:
    data = yaml.safe_load(TINY.read_text())
    varied = flood_spec_data(data, downgrade, running=4, queued=4, budget=0.1)
    spec = ClusterSpec.model_validate(varied)
    assert spec.router.load_downgrade.enabled is downgrade
    assert spec.router.load_loss_budget() == 0.1
    assert spec.router.learned.strong_share == 1.0
    assert (spec.tiers[-1].max_ongoing_requests, spec.tiers[-1].max_queued_requests) == (4, 4)
    assert not spec.rag.enabled
    assert data["rag"]["enabled"] is True  # the source data is left as it was
    other = flood_spec_data(data, not downgrade, running=4, queued=4, budget=0.1)
    other["router"]["load_downgrade"]["enabled"] = downgrade
    assert other == varied


def test_loss_is_read_from_the_reason() -> None:
    assert loss_of("downgraded:load;expected_loss=0.031") == pytest.approx(0.031)
    assert loss_of("downgraded:budget") is None
    assert loss_of("auto:learned:balanced") is None
    assert loss_of("downgraded:load;expected_loss=x") is None


def test_summary_and_comparison() -> None:
    outcomes = [
        Outcome(200, 0.1, True, "large", "auto:learned:balanced"),
        Outcome(200, 0.3, True, "small", "downgraded:load;expected_loss=0.050"),
        Outcome(200, 0.2, True, "small", "downgraded:load;expected_loss=0.010"),
        Outcome(503, None, False, "large", "rejected:tier_at_capacity"),
        Outcome(200, None, False, "large", "auto:learned:balanced"),  # cut off mid-stream
    ]
    s = summarize(outcomes, wall_s=2.0)
    assert (s["completed"], s["refusals"], s["load_downgraded"]) == (3, 1, 2)
    assert s["goodput_per_s"] == 1.5
    assert s["p99_ttft_ms"] == 300.0
    assert s["completed_by_tier"] == {"large": 1, "small": 2}
    assert s["predicted_loss_spent"] == pytest.approx(0.06)
    assert s["predicted_loss_mean"] == pytest.approx(0.03)
    off = summarize(outcomes[:1] + outcomes[3:], wall_s=2.0)
    verdict = compare(s, off, budget=0.1)
    assert verdict == {
        "goodput_ratio": 3.0,
        "loss_budget": 0.1,
        "loss_budget_held": True,
        "target_met": True,
    }
    assert not compare(s, off, budget=0.01)["target_met"]
    assert p99([]) is None and p99([1.0]) == 1.0


def test_the_tiny_configs_paths_are_made_absolute() -> None:
    data = absolute_paths(yaml.safe_load(TINY.read_text()), TINY.parent)
    root = TINY.parents[1]
    assert [t["model_source"] for t in data["tiers"]] == [
        str(root / "models" / "tiny-small"),
        str(root / "models" / "tiny-large"),
    ]
    assert data["tiers"][1]["chat_template"] == str(TINY.parent / "templates" / "tiny-tools.jinja")
    assert "keys_file" not in data["gateway"]["auth"]
    ClusterSpec.model_validate(flood_spec_data(data, True, running=4, queued=4, budget=None))
