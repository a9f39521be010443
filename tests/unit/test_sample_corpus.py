"""`tierline up --sample DIR` without a cluster: the banner's grounded curl, and a failed
ingestion that is shown on its step while the cluster keeps serving. (The ingestion itself
runs live: tests/integration/local/test_sample_corpus.py.)"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from tierline.cli import run
from tierline.cli.local import sample_curl
from tierline.cli.progress import StepBoard
from tierline.cli.sample import Sample, SampleError


def test_the_grounded_curl_sends_the_collection() -> None:
    cmd = sample_curl("http://h:1", key_file=Path("k"), question="Q?", collection="docs")
    args = shlex.split(cmd.replace("$(cat k)", "KEY"))
    body = json.loads(args[args.index("-d") + 1])
    assert body["rag"] == {"collection": "docs"}
    assert body["messages"] == [{"role": "user", "content": "Q?"}]
    assert "Authorization: Bearer KEY" in args


def test_a_failed_sample_is_shown_and_not_fatal(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def fail(*_: object) -> Sample:
        raise SampleError("/v1/rag/collections: 503 rag not ready")

    key = tmp_path / "api-key"
    key.write_text("sk-x\n")
    monkeypatch.setattr(run, "ensure_sample", fail)
    board = StepBoard()
    board.add("sample", "sample docs")
    assert run._ingest_sample(board, "http://h:1", key, tmp_path) is None
    step = board.step("sample")
    assert step is not None and step.state == "failed" and "503" in (step.detail or "")


def test_a_sample_already_ingested_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[str] = []

    def found(url: str, key: str, folder: Path) -> Sample:
        seen.append(key)
        return Sample("tierline_docs", 9, 120, False, 0.1)

    key = tmp_path / "api-key"
    key.write_text("sk-x\n")
    monkeypatch.setattr(run, "ensure_sample", found)
    board = StepBoard()
    board.add("sample", "sample docs")
    sample = run._ingest_sample(board, "http://h:1", key, tmp_path)
    assert sample is not None and seen == ["sk-x"]
    step = board.step("sample")
    assert step is not None and "already there" in (step.detail or "")
