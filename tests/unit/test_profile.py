"""`router.profile`: parsing labelled rows, grading answers, aggregating per tier."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from tierline.router.profile import (
    PROFILE_VERSION,
    Answer,
    Prompt,
    TierPricing,
    build_profile,
    is_correct,
    label_weights,
    load_ttft_priors,
    parse_prompts,
)

ROOT = Path(__file__).resolve().parents[2]


def test_parses_the_routing_data_files() -> None:
    path = ROOT / "data" / "routing" / "gsm8k.train.jsonl"
    rows = parse_prompts(path.read_text().splitlines()[:50], str(path))
    assert len(rows) == 50
    assert all(r.prompt and r.weak_score in (0.0, 1.0) for r in rows)
    assert all(r.reference is None for r in rows)
    assert len({r.id for r in rows}) == 50


def test_parses_every_row_of_the_mmlu_file_split_on_newlines_only() -> None:
    path = ROOT / "data" / "routing" / "mmlu.train.jsonl"
    rows = parse_prompts(path.read_text().split("\n"), str(path))
    assert len(rows) == 11214  # one prompt holds U+2028, which splitlines() would split on


def test_parse_reads_references_and_names_bad_rows() -> None:
    rows = parse_prompts(
        ['{"prompt": "2+2?", "reference": 4}', "", '{"prompt": "pick", "answer": "B"}'], "x.jsonl"
    )
    assert [(r.id, r.reference, r.weak_score) for r in rows] == [
        ("x-1", "4", None),
        ("x-3", "B", None),
    ]
    with pytest.raises(ValueError, match=r"x.jsonl:2: a row needs"):
        parse_prompts(['{"prompt": "a"}', '{"weak_score": 1}'], "x.jsonl")
    with pytest.raises(ValueError, match=r"x.jsonl:1: not JSON"):
        parse_prompts(["{"], "x.jsonl")


@pytest.mark.parametrize(
    ("answer", "reference", "ok"),
    [
        ("The total is 1,250 meters.", "1250", True),
        ("First 3 then 5, so 8", "8", True),
        ("8 or maybe 9", "8", False),  # the last number counts
        ("no number here", "8", False),
        ("12.0", "12", True),
        ("The answer is (B) because", "B", True),
        ("A: no. The answer is B", "B", False),  # first standalone capital letter
        ("Paris, of course", "paris", True),
        ("the  city of\nParis", "City of Paris", True),
        ("London", "Paris", False),
    ],
)
def test_grading_rules(answer: str, reference: str, ok: bool) -> None:
    assert is_correct(answer, reference) is ok


def test_label_weights_interpolate_between_weak_and_strong() -> None:
    assert label_weights(["s", "m", "l"]) == {"s": 0.0, "m": 0.5, "l": 1.0}
    assert label_weights(["only"]) == {"only": 1.0}


def test_profile_aggregates_by_hand() -> None:
    prompts = [
        Prompt("p1", "2+2?", 1.0, 1.0, "4"),
        Prompt("p2", "capital?", 0.0, 1.0, None),
    ]
    answers = [
        Answer("small", "p1", True, 0.1, 0.5, 10, 4, "it is 4"),
        Answer("small", "p2", True, 0.3, 1.3, 20, 8, "hmm"),
        Answer("large", "p1", True, 0.2, 1.2, 12, 5, "5"),
        Answer("large", "p2", False, error="APIError: 503"),
    ]
    pricing = {"small": TierPricing(0.1, 0.2), "large": TierPricing(1.0, 3.0)}
    prof = build_profile(["small", "large"], answers, prompts, pricing, {"max_tokens": 8})
    assert prof["version"] == PROFILE_VERSION and prof["prompts"] == 2
    s, big = prof["tiers"]["small"], prof["tiers"]["large"]
    assert (s["requests"], s["errors"], big["errors"]) == (2, 0, 1)
    assert s["ttft_p50_s"] == pytest.approx(0.2) and s["latency_p50_s"] == pytest.approx(0.9)
    assert (s["prompt_tokens"], s["completion_tokens"]) == (30, 12)
    assert s["cost_usd"] == pytest.approx((30 * 0.1 + 12 * 0.2) / 1e6)
    assert s["cost_per_1k_requests_usd"] == pytest.approx(1000 * s["cost_usd"] / 2)
    # rates: 4 tokens over 0.4 s, 8 over 1.0 s -> median of 10 and 8
    assert s["output_tokens_per_s"] == pytest.approx(9.0)
    assert (s["graded"], s["correct"], s["accuracy"]) == (1, 1, 1.0)
    assert (big["graded"], big["correct"], big["accuracy"]) == (1, 0, 0.0)
    # label scores: small reads weak_score (1, 0), large strong_score (1, 1)
    assert (s["label_score"], s["label_output"]) == (0.5, "weak_score")
    assert (big["label_score"], big["label_output"]) == (1.0, "strong_score")
    assert big["cost_usd"] == pytest.approx((12 * 1.0 + 5 * 3.0) / 1e6)


def test_profile_invariants_over_random_runs() -> None:
    rng = random.Random(7)
    for _ in range(200):
        tiers = ["a", "b", "c"][: rng.randint(1, 3)]
        prompts = [
            Prompt(f"p{i}", "q", rng.random(), rng.random(), rng.choice([None, "1", "B"]))
            for i in range(rng.randint(1, 8))
        ]
        answers = []
        for p in prompts:
            for t in tiers:
                ok = rng.random() > 0.2
                ttft = rng.uniform(0.01, 1.0)
                answers.append(
                    Answer(t, p.id, ok, ttft, ttft + rng.uniform(0, 2), 5, rng.randint(0, 9), "1 B")
                    if ok
                    else Answer(t, p.id, False, error="x")
                )
        pricing = {t: TierPricing(rng.random(), rng.random()) for t in tiers}
        prof = build_profile(tiers, answers, prompts, pricing, {})
        for t, p in prof["tiers"].items():
            assert p["requests"] == len(prompts)
            assert 0 <= p["errors"] <= p["requests"]
            assert p["graded"] == sum(1 for q in prompts if q.reference is not None)
            assert 0 <= p["correct"] <= p["graded"]
            if p["ttft_p50_s"] is not None:
                assert p["ttft_p50_s"] <= p["ttft_p90_s"]
                assert p["ttft_p50_s"] <= p["latency_p90_s"]
            if p["label_score"] is not None:
                assert 0.0 <= p["label_score"] <= 1.0
            assert p["cost_usd"] >= 0
            assert t in tiers


def test_ttft_priors_round_trip(tmp_path: Path) -> None:
    prof = build_profile(
        ["small", "large"],
        [Answer("small", "p", True, 0.25, 1.0, 1, 1), Answer("large", "p", False, error="x")],
        [Prompt("p", "q", None, None, None)],
        {"small": TierPricing(0, 0), "large": TierPricing(0, 0)},
        {},
    )
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(prof))
    assert load_ttft_priors(path) == {"small": 0.25}  # a tier with no answer has no prior
    path.write_text(json.dumps({"tiers": {}}))
    with pytest.raises(ValueError, match="not a tierline profile"):
        load_ttft_priors(path)
