"""`make run`'s first answers: the banner sends a routed chat and a grounded one to the
cluster that just started and shows what came back (the answer, the tier that served it,
the documents cited), each with the curl that asks it again."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROUTED_QUESTION = "What is the capital of France?"
GROUNDED_QUESTION = "Which vector store does tierline keep RAG chunks in?"
MAX_TOKENS = 48


@dataclass(frozen=True)
class Example:
    title: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Answer:
    text: str
    tier: str
    reason: str
    cited: tuple[str, ...]


def examples(collection: str | None) -> list[Example]:
    """The routed chat, and with a sample collection the grounded one."""
    out = [Example("a routed answer", _body(ROUTED_QUESTION))]
    if collection is not None:
        grounded = _body(GROUNDED_QUESTION) | {"rag": {"collection": collection}}
        out.append(Example("a grounded answer, with citations", grounded))
    return out


def _body(question: str) -> dict[str, Any]:
    return {
        "model": "auto",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
    }


def curl(url: str, body: dict[str, Any], key_file: Path | None = None) -> str:
    auth = f' -H "Authorization: Bearer $(cat {key_file})"' if key_file is not None else ""
    return (
        f"curl -s {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} "
        f"-d '{json.dumps(body)}'"
    )


def answer_of(payload: dict[str, Any], headers: dict[str, str]) -> Answer:
    """The parts of a chat completion the banner shows: text, tier, why, cited documents
    (each once, in citation order)."""
    choices = payload.get("choices") or [{}]
    text = ((choices[0].get("message") or {}).get("content") or "").strip()
    cited: list[str] = []
    for c in payload.get("citations") or []:
        doc = str(c.get("document_id", ""))
        if doc and doc not in cited:
            cited.append(doc)
    lower = {k.lower(): v for k, v in headers.items()}
    return Answer(
        text=" ".join(text.split()),
        tier=lower.get("x-tierline-tier", "?"),
        reason=lower.get("x-tierline-route-reason", "?"),
        cited=tuple(cited),
    )


def ask(url: str, api_key: str | None, body: dict[str, Any], timeout_s: float = 120) -> Answer:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    resp = httpx.post(
        f"{url.rstrip('/')}/v1/chat/completions", json=body, headers=headers, timeout=timeout_s
    )
    if resp.status_code >= 400:
        raise RuntimeError(f"{resp.status_code} {resp.text[:200]}")
    return answer_of(resp.json(), dict(resp.headers))


def describe(answer: Answer) -> str:
    where = f"(tier {answer.tier}, {answer.reason}"
    if answer.cited:
        where += "; cites " + ", ".join(answer.cited)
    return f"→ {answer.text!r} {where})"
