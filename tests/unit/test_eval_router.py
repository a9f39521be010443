"""`make eval`'s router on live outcomes: its labelled sets and the pure summary."""

from __future__ import annotations

import re

import numpy as np
import pytest

from bench.eval_report import section
from bench.eval_router import arithmetic, knowledge, notable, routing_sets, summarize
from bench.eval_sets import contains

OPS = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}


def test_each_sum_is_labelled_with_its_value_and_no_operand_is_the_answer() -> None:
    items = arithmetic()
    assert len(items) == 30 and len({i.question for i in items}) == 30
    for item in items:
        m = re.fullmatch(r"What is (\d+) (plus|minus|times) (\d+)\?", item.question)
        assert m is not None
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        assert item.answer == str(OPS[op](a, b))
        assert not contains(item.question, item.answer)  # restating it is not answering


def test_no_question_holds_its_own_answer() -> None:
    for item in knowledge():
        assert not contains(item.question, item.answer), item


def test_the_splits_are_disjoint_and_cover_each_set() -> None:
    for name, parts in routing_sets().items():
        dev = {i.question for i in parts["dev"]}
        held = {i.question for i in parts["held_out"]}
        assert dev and held and not dev & held
        whole = knowledge() if name == "knowledge" else arithmetic()
        assert dev | held == {i.question for i in whole}
        assert len(held) >= 2 * len(dev) - 1


def _rows(weak: list[bool], strong: list[bool], auto_tier: list[str]) -> list[dict]:
    return [
        {
            "question": f"question number {i} " + "word " * i,
            "right": {"small": w, "large": s},
            "auto_tier": t,
            "auto_right": s if t == "large" else w,
        }
        for i, (w, s, t) in enumerate(zip(weak, strong, auto_tier, strict=True))
    ]


def test_a_router_that_ranks_the_gains_first_scores_as_the_oracle() -> None:
    weak = [True, False, True, False, False, True, False, True]
    strong = [True, True, True, True, False, True, True, True]
    rows = _rows(weak, strong, ["large", "large", "small", "large"] + ["small"] * 4)
    gain = np.asarray(strong, dtype=float) - np.asarray(weak, dtype=float)
    out = summarize(rows, ["small", "large"], gain)
    assert out["accuracy"] == {"small": 0.5, "large": 0.875}
    assert out["gap"] == 0.375 and out["disagree"] == 3
    assert out["auto"]["above_cheapest_share"] == 0.375
    assert out["auto"]["accuracy"] == pytest.approx(np.mean([1, 1, 1, 1, 0, 1, 0, 1]), abs=1e-3)
    curve = out["curve"]
    assert curve["router"] == curve["oracle"]
    assert curve["router"]["cpt80"] == 0.375  # the three gains, sent up first
    # ranking the gains last is worse than random
    worst = summarize(rows, ["small", "large"], -gain)["curve"]["router"]
    assert worst["apgr"] < curve["random"]["apgr"] < curve["router"]["apgr"]


def test_tiers_that_answer_alike_have_no_curve_and_say_why() -> None:
    same = [True, False, True, True]
    out = summarize(_rows(same, same, ["small"] * 4), ["small", "large"], np.zeros(4))
    assert out["curve"] is None and out["gap"] == 0.0
    assert "no quality gap" in out["why_no_curve"]
    # one question the large tier gets and the small one does not is a gap
    out = summarize(
        _rows(same, [True, True, True, True], ["small"] * 4), ["small", "large"], np.zeros(4)
    )
    assert out["curve"] is not None


def test_the_report_shows_each_routing_row_and_why_a_curve_is_missing() -> None:
    weak = [True, False, True, False]
    strong = [True, True, True, True]
    gap = summarize(_rows(weak, strong, ["large"] * 4), ["small", "large"], np.arange(4.0))
    flat = summarize(_rows(weak, weak, ["small"] * 4), ["small", "large"], np.zeros(4))
    result = {
        "when": "now",
        "spec": "configs/local.yaml",
        "grounded": {},
        "follow_up": {"n": 1, "rate": 1.0},
        "tools": {},
        "routing": {"tiers": ["small", "large"], "knowledge/held_out": gap, "arithmetic/dev": flat},
    }
    text = section(result)
    assert "| knowledge / held_out | 4 | 0.50 | 1.00 | 1.00 (1.00) | 0.50 |" in text
    assert "| arithmetic / dev | 4 | 0.50 | 0.50 | 0.50 (0.00) | 0.00 | - | - |" in text
    assert "- No curve for arithmetic / dev: small and large are right on the same share" in text


def test_auto_answering_otherwise_than_its_tier_is_counted_and_listed_first() -> None:
    rows = _rows([True, False, True], [True, False, True], ["small", "large", "large"])
    rows[2]["auto_right"] = False  # the large tier, asked by name, was right
    for r in rows:
        r["auto_text"], r["texts"], r["answer"] = "", {}, "x"
    out = summarize(rows, ["small", "large"], np.zeros(3))
    assert out["auto_differs"] == 1
    listed = notable(rows)
    assert [r["question"] for r in listed] == [rows[2]["question"], rows[1]["question"]]
