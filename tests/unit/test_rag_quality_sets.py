"""The generated labelled retrieval sets: shipped as generated, split by document, and
every question's answer is in the document it names."""

from __future__ import annotations

import json
import random
import re
from typing import Any

import pytest

from bench import rag_quality_sets as sets


def shipped(name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    folder = sets.OUT / name
    return tuple(  # type: ignore[return-value]
        [json.loads(line) for line in (folder / f).read_text().splitlines()]
        for f in ("corpus.jsonl", "questions.jsonl")
    )


def generated() -> dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    rng = random.Random(sets.SEED)  # the order of `sets.main`
    return {"handbook": sets.handbook(rng), "catalog": sets.catalog(rng), "codes": sets.codes(rng)}


def test_the_shipped_sets_are_what_the_generator_makes() -> None:
    for name, made in generated().items():
        assert shipped(name) == made, f"rerun python -m bench.rag_quality_sets ({name})"


@pytest.mark.parametrize("name", ["handbook", "catalog", "codes"])
def test_splits_are_by_document_and_answers_sit_in_their_document(name: str) -> None:
    corpus, questions = shipped(name)
    text = {d["id"]: d["text"] for d in corpus}
    assert len(text) == len(corpus)
    split_of: dict[str, str] = {}
    for q in questions:
        assert q["document_id"] in text
        assert q["split"] in ("tune", "held_out")
        assert split_of.setdefault(q["document_id"], q["split"]) == q["split"]
        if "answer" in q:
            assert q["answer"] in text[q["document_id"]]
            # A look-up names something only its own document holds as a whole word
            # (`gateway.min_pool` and `gateway.min_pool_tokens` are two keys).
            if q["kind"] in ("by_ref", "error_code", "config_key"):
                whole = re.compile(rf"(?<![\w.]){re.escape(q['answer'])}(?!\w)")
                holders = [d for d, t in text.items() if whole.search(t)]
                assert holders == [q["document_id"]]
    held = sum(s == "held_out" for s in split_of.values()) / len(split_of)
    assert 0.25 < held < 0.55


def test_held_out_look_ups_are_worded_from_their_own_templates() -> None:
    _, questions = shipped("codes")
    tune_starts = {q["question"].split()[0] for q in questions if q["split"] == "tune"}
    held_starts = {q["question"].split()[0] for q in questions if q["split"] == "held_out"}
    assert tune_starts.isdisjoint(held_starts)
