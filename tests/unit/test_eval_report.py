"""`make eval`'s BENCHMARKS.md section: made from the result file, replaced in place."""

from __future__ import annotations

import pytest

from bench.eval_report import END, START, replace_section, section, wilson

RESULT = {
    "when": "2026-12-06 16:09 UTC",
    "spec": "configs/local.yaml",
    "ready_s": 120.5,
    "took_s": 300.0,
    "grounded": {
        "entities/held_out/rag_on": {
            "n": 20,
            "accuracy": 0.65,
            "tiers": {"large": 19, "small": 1},
            "citation_precision": 0.5,
            "planted_doc_cited": 1.0,
        },
        "entities/held_out/rag_off": {"n": 20, "accuracy": 0.0, "tiers": {"small": 20}},
    },
    "follow_up": {"n": 20, "rate": 0.85},
    "tools": {"streamed/tool_choice_required": {"n": 20, "rate": 0.35, "tool_called": 1.0}},
}


def test_the_section_holds_every_figure() -> None:
    text = section(RESULT)
    assert text.startswith(START) and text.rstrip().endswith(END)
    row = "| entities / held_out | on | 20 | 0.65 (0.43-0.82) | 0.50 | 1.00 | large 19, small 1 |"
    assert row in text
    assert "| entities / held_out | off | 20 | 0.00 (0.00-0.16) | - | - | small 20 |" in text
    assert "0.85 (0.64-0.95) (20 made-up facts" in text
    assert "| streamed | required | 20 | 0.35 (0.18-0.57) | 1.00 |" in text


def test_the_interval_is_wilson_s() -> None:
    # no successes in 10: the upper end is z^2 / (n + z^2)
    assert wilson(0.0, 10) == (0.0, pytest.approx(1.96**2 / (10 + 1.96**2)))
    low, high = wilson(1.0, 10)
    assert high == 1.0 and low == pytest.approx(10 / (10 + 1.96**2))
    low, high = wilson(0.75, 20)  # 15 of 20
    assert (round(low, 2), round(high, 2)) == (0.53, 0.89)
    assert wilson(0.5, 0) == (0.0, 1.0)


def test_a_second_run_replaces_the_section_and_keeps_the_rest() -> None:
    doc = "# Benchmarks\n\nintro\n"
    once = replace_section(doc, section(RESULT))
    assert once.startswith(doc) and once.count(START) == 1
    again = replace_section(once + "\n## Later\n", section({**RESULT, "when": "next"}))
    assert again.count(START) == 1 and "next" in again and "2026-12-06 16:09" not in again
    assert again.endswith("\n## Later\n") and again.startswith(doc)
