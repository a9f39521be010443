"""`router.max_quality_loss` reaches the gateway's learned policy: the shipped calibrated
head is loaded, its held-out rows set the thresholds, and a head without such rows is
refused at start with the reason."""

from __future__ import annotations

import numpy as np
import pytest
from tierline.cluster.spec import LearnedParams
from tierline.cluster.specfile import load_spec_text
from tierline.deployments.gateway.pipeline.routing import (
    LearnedRouter,
    artifact_path,
    learned_policy,
)
from tierline.router.classes import OUT_OF_DOMAIN
from tierline.router.head import Head
from tierline.router.scorer import (
    CALIBRATED_ARTIFACT,
    SHIPPED_ARTIFACT,
    head_bounds,
    head_class_bounds,
)
from tierline.router.types import RequestFeatures, TierQuality, TierState

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


class CentroidEmbedder:
    """Embeds a prompt naming a class as that class's centroid, anything else as a vector
    orthogonal to every centroid: the classes the live path must find are known here."""

    def __init__(self, head: Head) -> None:
        assert head.classes is not None
        self.classes = head.classes
        self.dim = int(head.classes.centroids.shape[1])

    def embed(self, texts: list[str]) -> np.ndarray:
        out = []
        for text in texts:
            names = list(self.classes.names)
            if text in names:
                out.append(self.classes.centroids[names.index(text)])
                continue
            v = np.random.default_rng(0).standard_normal(self.dim)
            c = self.classes.centroids
            v -= c.T @ np.linalg.lstsq(c.T, v, rcond=None)[0]  # off every centroid
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, dtype=np.float32)


def test_the_gateway_routes_each_prompt_with_its_traffic_class() -> None:
    """Before: the gateway's router never classified a prompt, so every request was routed
    with the pooled thresholds (GSM8K traffic broke alpha = 0.2 in 20 of 20 splits)."""
    spec = load_spec_text(SPEC.replace("{alpha}", "0.2"))
    head = Head.load(CALIBRATED_ARTIFACT)
    router = LearnedRouter(spec, CentroidEmbedder(head), head)
    states = [TierState(name=t.name, max_context_tokens=2048) for t in spec.tiers]
    seen = {}
    for text in ["gsm8k", "mmlu", "a prompt unlike any class"]:
        quality = router.quality(text)
        assert isinstance(quality, TierQuality)
        features = RequestFeatures(
            text=text, prompt_tokens={"small": 10, "large": 10}, completion_tokens=4
        )
        decision = router.decide(features, states, None, quality)
        seen[text] = decision.traffic_class
        assert f"class:{decision.traffic_class}" in decision.reason
    assert seen == {
        "gsm8k": "gsm8k",
        "mmlu": "mmlu",
        "a prompt unlike any class": OUT_OF_DOMAIN,
    }
    # without a bound no class is computed: the share policy has no use for it
    plain = load_spec_text(SPEC.replace("  max_quality_loss: {alpha}\n", ""))
    shared = LearnedRouter(plain, CentroidEmbedder(head), Head.load(SHIPPED_ARTIFACT))
    assert shared.quality("gsm8k").traffic_class is None
