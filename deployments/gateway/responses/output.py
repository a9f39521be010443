"""A chat completion translated back into a Response: whole, or as Responses events.

`response_object` builds the Response (`object: "response"`) around output items;
`whole_output` reads a whole chat completion; `StreamTranslator` turns the chat stream's
chunks into the Responses event sequence (`response.created`, `...in_progress`, an
`output_item.added` / `content_part.added` / `output_text.delta`... / `...done` run per
message or function call, then `response.completed`). Pure: no I/O, no clock of its own.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ResponseShell",
    "StreamTranslator",
    "new_id",
    "response_object",
    "responses_usage",
    "whole_output",
]


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


@dataclass(frozen=True)
class ResponseShell:
    """What a Response says about its request, whatever the answer."""

    id: str
    created_at: int
    model: str
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: Any = "auto"
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    store: bool = True
    metadata: Mapping[str, str] = field(default_factory=dict)


def responses_usage(chat_usage: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Chat usage (prompt/completion tokens) as Responses usage (input/output tokens)."""
    if not chat_usage:
        return None
    inp = int(chat_usage.get("prompt_tokens") or 0)
    out = int(chat_usage.get("completion_tokens") or 0)
    details = chat_usage.get("prompt_tokens_details") or {}
    cached = int(details.get("cached_tokens") or 0) if isinstance(details, Mapping) else 0
    return {
        "input_tokens": inp,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": int(chat_usage.get("total_tokens") or inp + out),
    }


def response_object(
    shell: ResponseShell,
    output: list[dict[str, Any]],
    status: str,
    usage: dict[str, Any] | None = None,
    incomplete: str | None = None,
    error: dict[str, Any] | None = None,
    completed_at: int | None = None,
) -> dict[str, Any]:
    return {
        "id": shell.id,
        "object": "response",
        "created_at": shell.created_at,
        "completed_at": completed_at,
        "status": status,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": shell.instructions,
        "max_output_tokens": shell.max_output_tokens,
        "model": shell.model,
        "output": output,
        "parallel_tool_calls": shell.parallel_tool_calls,
        "previous_response_id": shell.previous_response_id,
        "store": shell.store,
        "temperature": shell.temperature,
        "top_p": shell.top_p,
        "text": {"format": {"type": "text"}},
        "tool_choice": shell.tool_choice,
        "tools": shell.tools,
        "truncation": "disabled",
        "usage": usage,
        "metadata": dict(shell.metadata),
    }


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def _call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def _status(finish_reason: str | None) -> tuple[str, str | None]:
    """The Response's status and incomplete reason for a chat finish_reason."""
    if finish_reason == "length":
        return "incomplete", "max_output_tokens"
    if finish_reason == "content_filter":
        return "incomplete", "content_filter"
    return "completed", None


def whole_output(
    completion: Mapping[str, Any],
) -> tuple[list[dict[str, Any]], str, str | None, dict[str, Any] | None]:
    """A whole chat completion's first choice as output items, with the Response's
    status, incomplete reason and usage."""
    choices = completion.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    status, incomplete = _status(choice.get("finish_reason"))
    item_status = "incomplete" if incomplete else "completed"
    output: list[dict[str, Any]] = []
    text = message.get("content")
    if text:
        output.append(_message_item(new_id("msg"), text, item_status))
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        output.append(
            _call_item(
                new_id("fc"),
                call.get("id") or new_id("call"),
                fn.get("name", ""),
                fn.get("arguments") or "",
                "completed",
            )
        )
    if not output:
        output.append(_message_item(new_id("msg"), "", item_status))
    return output, status, incomplete, responses_usage(completion.get("usage"))


@dataclass
class _Open:
    """An output item being streamed."""

    index: int
    item: dict[str, Any]
    text: list[str] = field(default_factory=list)


class StreamTranslator:
    """Chat-completion chunks in, Responses events out. `start()` first, `feed(chunk)` per
    chunk, `finish()` (or `fail(message)`) once; `response` is the final Response."""

    def __init__(self, shell: ResponseShell) -> None:
        self.shell = shell
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.message: _Open | None = None
        self.calls: dict[int, _Open] = {}  # chat tool_call index -> open function_call item
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.response: dict[str, Any] | None = None

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return event

    def start(self) -> list[dict[str, Any]]:
        shell = response_object(self.shell, [], "in_progress")
        return [
            self._event("response.created", response=shell),
            self._event("response.in_progress", response=shell),
        ]

    def feed(self, chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if chunk.get("usage"):
            self.usage = responses_usage(chunk["usage"])
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                events += self._text(text)
            for call in delta.get("tool_calls") or ():
                events += self._call(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def _open_message(self) -> list[dict[str, Any]]:
        item = _message_item(new_id("msg"), "", "in_progress")
        item["content"] = []
        self.message = _Open(len(self.output), item)
        self.output.append(item)
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [
            self._event("response.output_item.added", output_index=self.message.index, item=item),
            self._event(
                "response.content_part.added",
                item_id=item["id"],
                output_index=self.message.index,
                content_index=0,
                part=part,
            ),
        ]

    def _text(self, text: str) -> list[dict[str, Any]]:
        events = self._open_message() if self.message is None else []
        assert self.message is not None
        self.message.text.append(text)
        events.append(
            self._event(
                "response.output_text.delta",
                item_id=self.message.item["id"],
                output_index=self.message.index,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return events

    def _call(self, call: Mapping[str, Any]) -> list[dict[str, Any]]:
        events = []
        key = int(call.get("index", 0))
        fn = call.get("function") or {}
        opened = self.calls.get(key)
        if opened is None:
            item = _call_item(
                new_id("fc"),
                call.get("id") or new_id("call"),
                fn.get("name") or "",
                "",
                "in_progress",
            )
            opened = self.calls[key] = _Open(len(self.output), item)
            self.output.append(item)
            events.append(
                self._event("response.output_item.added", output_index=opened.index, item=item)
            )
        elif fn.get("name") and not opened.item["name"]:
            opened.item["name"] = fn["name"]
        args = fn.get("arguments")
        if args:
            opened.text.append(args)
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=opened.item["id"],
                    output_index=opened.index,
                    delta=args,
                )
            )
        return events

    def _close_items(self, item_status: str) -> list[dict[str, Any]]:
        events = []
        if self.message is not None:
            m = self.message
            text = "".join(m.text)
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            m.item.update(status=item_status, content=[part])
            ids = {"item_id": m.item["id"], "output_index": m.index, "content_index": 0}
            events += [
                self._event("response.output_text.done", **ids, text=text, logprobs=[]),
                self._event("response.content_part.done", **ids, part=part),
                self._event("response.output_item.done", output_index=m.index, item=m.item),
            ]
        for c in self.calls.values():
            c.item.update(arguments="".join(c.text), status="completed")
            events += [
                self._event(
                    "response.function_call_arguments.done",
                    item_id=c.item["id"],
                    output_index=c.index,
                    arguments=c.item["arguments"],
                    name=c.item["name"],
                ),
                self._event("response.output_item.done", output_index=c.index, item=c.item),
            ]
        events.sort(key=lambda e: (e.get("output_index", 0), e["sequence_number"]))
        for i, e in enumerate(events):  # numbered in the order they are sent
            e["sequence_number"] = self.seq - len(events) + i
        return events

    def finish(self, completed_at: int | None = None) -> list[dict[str, Any]]:
        status, incomplete = _status(self.finish_reason)
        events = []
        if self.message is None and not self.calls:
            events = self._open_message()  # an empty answer is still one message item
        events += self._close_items("incomplete" if incomplete else "completed")
        self.response = response_object(
            self.shell, self.output, status, self.usage, incomplete, completed_at=completed_at
        )
        kind = "response.incomplete" if incomplete else "response.completed"
        return [*events, self._event(kind, response=self.response)]

    def fail(self, message: str, code: str = "server_error") -> list[dict[str, Any]]:
        error = {"code": code, "message": message}
        self.response = response_object(self.shell, self.output, "failed", self.usage, error=error)
        return [self._event("response.failed", response=self.response)]
