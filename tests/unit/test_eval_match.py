"""`make eval`'s answer check: whole words, and a date in any order English writes it."""

from __future__ import annotations

import pytest

from bench.eval_sets import contains


@pytest.mark.parametrize(
    "answer",
    [
        "Order 28915 ships on September 7.",
        "It ships on september 7th, 2023.",
        "Ship 28915 is currently at the 7th of September 2023.",
        "Expected 7 September.",
        "ships on the 7th September",
    ],
)
def test_a_date_is_found_in_each_order_it_is_written(answer: str) -> None:
    assert contains(answer, "September 7")


@pytest.mark.parametrize(
    "answer",
    [
        "It ships on September 27.",  # another day that starts with the same digit
        "the 17th of September",
        "7th of October, September 9",
        "September, 7 days later",
        "the 9th day of the 13th month",
    ],
)
def test_another_date_is_not_the_date(answer: str) -> None:
    assert not contains(answer, "September 7")


def test_other_facts_are_whole_words_in_any_case() -> None:
    assert contains("The code word for the blue door is Obsidian.", "obsidian")
    assert not contains("It was OBSIEMON.", "obsidian")
    assert contains("Zentrix Labs was founded in 2011.", "2011")
    assert not contains("founded in 20110", "2011")
    assert contains("Mara Voss leads it", "Mara Voss")
