"""`tierline up --sample DIR` without a cluster: the banner's example requests and how it
shows their answers, and a failed
ingestion that is shown on its step while the cluster keeps serving. (The ingestion itself
runs live: tests/integration/local/test_sample_corpus.py.)"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from tierline.cli import examples, run
from tierline.cli.progress import StepBoard
from tierline.cli.sample import Sample, SampleError


def test_the_grounded_curl_sends_the_collection() -> None:
    routed, grounded = examples.examples("docs")
    cmd = examples.curl("http://h:1", grounded.body, key_file=Path("k"))
    args = shlex.split(cmd.replace("$(cat k)", "KEY"))
    body = json.loads(args[args.index("-d") + 1])
    assert body["rag"] == {"collection": "docs"}
    assert body["messages"] == [{"role": "user", "content": examples.GROUNDED_QUESTION}]
    assert "Authorization: Bearer KEY" in args
    assert "rag" not in routed.body and routed.body["model"] == "auto"
    assert [e.title for e in examples.examples(None)] == ["a routed answer"]


# A grounded answer in the shape the gateway returns (citations at the top level).
GROUNDED_REPLY = {
    "model": "smollm2-large",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": " tierline keeps RAG chunks in\n Milvus Lite.",
            },
            "finish_reason": "stop",
        }
    ],
    "citations": [
        {"document_id": "rag", "chunk_id": "rag#a:1/9", "score": 0.9},
        {"document_id": "configuration", "chunk_id": "configuration#b:4/50", "score": 0.8},
        {"document_id": "rag", "chunk_id": "rag#a:2/9", "score": 0.7},
    ],
}


def test_an_answer_shows_text_tier_and_each_cited_document_once() -> None:
    headers = {"X-Tierline-Tier": "large", "x-tierline-route-reason": "auto:learned:balanced"}
    answer = examples.answer_of(GROUNDED_REPLY, headers)
    assert answer.text == "tierline keeps RAG chunks in Milvus Lite."
    assert answer.cited == ("rag", "configuration")
    assert (answer.tier, answer.reason) == ("large", "auto:learned:balanced")
    shown = examples.describe(answer)
    assert "Milvus Lite" in shown and "tier large" in shown and "cites rag, configuration" in shown
    bare = examples.answer_of({"choices": [{"message": {"content": None}}]}, {})
    assert bare.text == "" and bare.cited == () and bare.tier == "?"


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
