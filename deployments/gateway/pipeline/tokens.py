"""Counting prompt tokens per tier, so routing checks context fit before an engine sees it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)


class TokenCounter(Protocol):
    def chat(self, messages: Sequence[dict[str, Any]]) -> int: ...

    def text(self, prompt: str) -> int: ...


class EstimatingCounter:
    """An upper-leaning estimate (4 bytes a token, 8 tokens of template a message).

    Used only when a tier's tokenizer cannot be loaded; the engine still checks exactly.
    """

    def chat(self, messages: Sequence[dict[str, Any]]) -> int:
        return sum(self.text(_message_text(m)) + 8 for m in messages) + 4

    def text(self, prompt: str) -> int:
        return (len(prompt.encode()) + 3) // 4


class HFCounter:
    """Exact counts with the tier's own tokenizer and chat template."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self._fallback = EstimatingCounter()

    def chat(self, messages: Sequence[dict[str, Any]]) -> int:
        try:
            ids = self._tok.apply_chat_template(
                list(messages), add_generation_prompt=True, tokenize=True, return_dict=False
            )
        except Exception:  # a template that rejects these roles: the engine will say why
            return self._fallback.chat(messages)
        return len(ids)

    def text(self, prompt: str) -> int:
        return len(self._tok.encode(prompt, add_special_tokens=True))


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def load_counter(model_source: str, chat_template: str | None = None) -> TokenCounter:
    """The tier's tokenizer if it can be loaded here, else an estimate (logged once).
    `chat_template`: the tier's own template file (the spec's), in place of the model's."""
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_source)
        if chat_template is not None:
            tokenizer.chat_template = Path(chat_template).expanduser().read_text()
        return HFCounter(tokenizer)
    except Exception as err:
        logger.warning(
            "tokenizer of %s not loadable (%s); estimating prompt tokens", model_source, err
        )
        return EstimatingCounter()
