"""The Responses request body, and its translation to a chat-completions body.

Input items (messages with text or image parts, `function_call` and
`function_call_output` for tool round-trips) become chat messages; the flat Responses
function tool (`{"type": "function", "name", "parameters"}`) becomes chat's nested one.
Everything is validated here (400 with the field's path), before any engine work.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from tierline.deployments.errors import APIError
from tierline.deployments.gateway.pipeline.schemas import ChatCompletionBody

__all__ = [
    "FunctionTool",
    "InputItem",
    "ResponsesBody",
    "chat_body",
    "chat_messages",
    "chat_tool_choice",
    "input_items",
]


class InputPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["input_text", "output_text", "text", "refusal", "input_image"]
    text: StrictStr | None = None
    refusal: StrictStr | None = None
    image_url: StrictStr | None = None


class MessageItem(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: StrictStr | list[InputPart]


class FunctionCallItem(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function_call"]
    call_id: StrictStr = Field(min_length=1)
    name: StrictStr = Field(min_length=1)
    arguments: StrictStr


class FunctionCallOutputItem(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function_call_output"]
    call_id: StrictStr = Field(min_length=1)
    output: StrictStr | list[InputPart]


class ReasoningItem(BaseModel):
    """A previous answer's reasoning, sent back by the client: dropped (`input_items`).
    It is never sent to the engine, so it is neither charged nor stored; the model's own
    reasoning output is stored with its answer (charged as completion tokens)."""

    model_config = ConfigDict(extra="allow")
    type: Literal["reasoning"]


InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="ignore")  # newer SDK fields (e.g. defer_loading)
    type: Literal["function"]
    name: StrictStr = Field(min_length=1, max_length=64)
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class FunctionChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    name: StrictStr = Field(min_length=1)


class ResponsesBody(BaseModel):
    """`POST /v1/responses`. Only what tierline acts on is typed; other fields are kept
    (`extra="allow"`) and ignored, except those that ask for what is not served."""

    model_config = ConfigDict(extra="allow")
    model: StrictStr = Field(description="A tier name, a served model name, or 'auto'.")
    input: StrictStr | list[InputItem] = Field(description="Text, or a list of input items.")
    instructions: StrictStr | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    seed: StrictInt | None = Field(
        None, description="tierline's addition: the engine's sampling seed, as in chat."
    )
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["auto", "none", "required"] | FunctionChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    stream: StrictBool = False
    store: StrictBool = True
    previous_response_id: StrictStr | None = Field(None, min_length=1, max_length=128)
    metadata: dict[str, StrictStr] | None = None
    background: StrictBool | None = None
    user: StrictStr | None = None


_UNSUPPORTED = ("conversation", "prompt")


def check_supported(body: ResponsesBody) -> None:
    """400 for what the Responses API has and tierline does not serve."""
    if body.background:
        raise APIError(400, "background responses are not supported", param="background")
    for name in _UNSUPPORTED:
        if (body.model_extra or {}).get(name) is not None:
            raise APIError(400, f"{name} is not supported; use previous_response_id", param=name)
    if isinstance(body.tool_choice, FunctionChoice):
        names = {t.name for t in body.tools or ()}
        if body.tool_choice.name not in names:
            raise APIError(
                400,
                f"tool_choice names function {body.tool_choice.name!r}, which is not in tools",
                code="invalid_tool_choice",
                param="tool_choice",
            )


def input_items(body: ResponsesBody) -> list[dict[str, Any]]:
    """The request's input as a list of item dicts (text input: one user message), less
    the client's reasoning items: the engine never sees them, so they are not kept."""
    if isinstance(body.input, str):
        return [{"type": "message", "role": "user", "content": body.input}]
    return [
        item.model_dump(exclude_none=True)
        for item in body.input
        if not isinstance(item, ReasoningItem)
    ]


def _part(part: dict[str, Any], where: str) -> dict[str, Any]:
    kind = part.get("type")
    if kind == "input_image":
        url = part.get("image_url")
        if not url:
            raise APIError(400, f"{where}: input_image needs image_url", param="input")
        return {"type": "image_url", "image_url": {"url": url}}
    text = part.get("text") if kind != "refusal" else part.get("refusal")
    return {"type": "text", "text": text or ""}


def _content(content: Any, where: str) -> str | list[dict[str, Any]]:
    """Chat content of an item's content: a string when it is all text."""
    if isinstance(content, str):
        return content
    parts = [_part(p, f"{where}.content[{i}]") for i, p in enumerate(content)]
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def chat_messages(instructions: str | None, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages for `instructions` and a conversation's items, in order. Consecutive
    function calls join the assistant message before them (one turn, several calls)."""
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    for i, item in enumerate(items):
        kind = item.get("type", "message")
        where = f"input[{i}]"
        if kind == "message":
            messages.append({"role": item["role"], "content": _content(item["content"], where)})
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = _content(item["output"], where)
            text = output if isinstance(output, str) else str(output)
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": text})
        # reasoning items: not sent back to the engine
    if not messages:
        raise APIError(400, "input has no message to answer", param="input")
    return messages


def chat_tools(tools: list[FunctionTool] | None) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    return [
        {"type": "function", "function": t.model_dump(exclude={"type"}, exclude_none=True)}
        for t in tools
    ]


def chat_tool_choice(choice: str | FunctionChoice | None) -> Any:
    if isinstance(choice, FunctionChoice):
        return {"type": "function", "function": {"name": choice.name}}
    return choice


def chat_body(
    body: ResponsesBody, messages: list[dict[str, Any]], *, stream: bool
) -> ChatCompletionBody:
    """The chat-completions body the gateway answers for this Responses request. A
    stream always asks for its usage line (the Response carries usage)."""
    data: dict[str, Any] = {
        "model": body.model,
        "messages": messages,
        "stream": stream,
    }
    if stream:
        data["stream_options"] = {"include_usage": True}
    if body.max_output_tokens is not None:
        data["max_tokens"] = body.max_output_tokens
    for name in ("temperature", "top_p", "seed", "parallel_tool_calls", "user"):
        value = getattr(body, name)
        if value is not None:
            data[name] = value
    tools = chat_tools(body.tools)
    if tools is not None:
        data["tools"] = tools
    if body.tool_choice is not None:
        data["tool_choice"] = chat_tool_choice(body.tool_choice)
    return ChatCompletionBody.model_validate(data)
