"""`router.max_quality_loss` reaches the gateway's learned policy: the shipped calibrated
head is loaded, its held-out rows set the thresholds, and a head without such rows is
refused at start with the reason."""

from __future__ import annotations

import pytest
from tierline.cluster.spec import LearnedParams
from tierline.cluster.specfile import load_spec_text
from tierline.deployments.routing import artifact_path, learned_policy
from tierline.router.head import Head
from tierline.router.scorer import (
    CALIBRATED_ARTIFACT,
    SHIPPED_ARTIFACT,
    head_bounds,
    head_class_bounds,
)

SPEC = """
tiers:
  - {name: small, model_source: org/small, max_context_tokens: 2048}
  - {name: large, model_source: org/large, max_context_tokens: 2048}
router:
  policy: learned
  max_quality_loss: {alpha}
  confidence: 0.9
"""


def test_the_bound_sets_the_policys_thresholds_from_the_calibrated_head() -> None:
    spec = load_spec_text(SPEC.replace("{alpha}", "0.15"))
    assert artifact_path(spec.router.learned, bounded=True) == CALIBRATED_ARTIFACT
    assert artifact_path(spec.router.learned) == SHIPPED_ARTIFACT
    own = LearnedParams(artifact="/x/head.npz")
    assert str(artifact_path(own, bounded=True)) == "/x/head.npz"
    head = Head.load(CALIBRATED_ARTIFACT)
    policy = learned_policy(spec, head)
    assert policy.bound is not None
    assert policy.bound.max_quality_loss == 0.15
    expected = head_bounds(head, ["small", "large"], {}, 0.15, 0.9)
    assert policy.bound.thresholds == {p: b.threshold for p, b in expected.items()}
    # the shipped head has traffic classes: a threshold per class and pair as well
    per_class = head_class_bounds(head, ["small", "large"], {}, 0.15, 0.9)
    assert set(policy.bound.classes) == {"gsm8k", "mmlu"}
    assert policy.bound.classes == {
        c: {p: b.threshold for p, b in bs.items()} for c, bs in per_class.items()
    }
    # no bound: the share calibration, as before
    plain = load_spec_text(SPEC.replace("  max_quality_loss: {alpha}\n", ""))
    assert learned_policy(plain, Head.load(SHIPPED_ARTIFACT)).bound is None


def test_a_head_without_held_out_rows_cannot_carry_a_bound() -> None:
    spec = load_spec_text(SPEC.replace("{alpha}", "0.15"))
    with pytest.raises(ValueError, match="calibration"):
        learned_policy(spec, Head.load(SHIPPED_ARTIFACT))
