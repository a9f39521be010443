"""`make eval`'s BENCHMARKS.md section: made from the result file, replaced in place."""

from __future__ import annotations

from bench.eval_report import END, START, replace_section, section

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
    assert "| entities / held_out | on | 20 | 0.65 | 0.50 | 1.00 | large 19, small 1 |" in text
    assert "| entities / held_out | off | 20 | 0.00 | - | - | small 20 |" in text
    assert "0.85 (20 made-up facts" in text
    assert "| streamed | required | 20 | 0.35 | 1.00 |" in text


def test_a_second_run_replaces_the_section_and_keeps_the_rest() -> None:
    doc = "# Benchmarks\n\nintro\n"
    once = replace_section(doc, section(RESULT))
    assert once.startswith(doc) and once.count(START) == 1
    again = replace_section(once + "\n## Later\n", section({**RESULT, "when": "next"}))
    assert again.count(START) == 1 and "next" in again and "2026-12-06 16:09" not in again
    assert again.endswith("\n## Later\n") and again.startswith(doc)
