"""`make generate` (tools/generate.py) leaves nothing stale: every shipped file made from
code (k8s/ manifests, the chart's values schema, docs/configuration.md) is current."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools import generate


def test_no_generated_file_is_stale() -> None:
    assert generate.stale() == [], "run `make generate`"


def test_stale_and_write_on_a_fake_generator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made, left_over, edited = tmp_path / "made.txt", tmp_path / "old.txt", tmp_path / "e.txt"
    left_over.write_text("no longer generated")
    edited.write_text("edited by hand")
    fake = generate.Generator(
        "fake",
        fresh=lambda: {made: "one\n", edited: "two\n"},
        owned=lambda: [p for p in (made, left_over, edited) if p.exists()],
    )
    monkeypatch.setattr(generate, "ROOT", tmp_path)
    monkeypatch.setattr(generate, "GENERATORS", (fake,))
    assert generate.stale() == ["e.txt", "made.txt", "old.txt"]
    assert generate.main(["--check"]) == 1
    assert generate.write() == ["e.txt", "made.txt", "old.txt"]
    assert generate.stale() == [] and generate.main(["--check"]) == 0
    assert (made.read_text(), edited.read_text(), left_over.exists()) == ("one\n", "two\n", False)
