"""Request bodies the gateway validates before anything reaches a router or an engine.

Only the fields tierline acts on are typed; every other OpenAI or vLLM parameter passes
through untouched (`extra="allow"`) and the engine validates it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: StrictStr
    text: StrictStr | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[ContentPart] | None = None
    name: StrictStr | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text or "" for p in self.content)


NonNegInt = Annotated[int, Field(ge=0)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: StrictBool | None = None


class _Generation(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: StrictStr = Field(description="A tier name, a served model name, or 'auto'.")
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    n: Annotated[int, Field(ge=1)] = 1
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None


class ChatCompletionBody(_Generation):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None

    def completion_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def text(self) -> str:
        return "\n".join(m.text() for m in self.messages)


class CompletionBody(_Generation):
    prompt: StrictStr | list[StrictStr] | list[NonNegInt] = Field(
        description="Text, a batch of texts, or token ids."
    )

    def completion_budget(self) -> int | None:
        return self.max_tokens

    def text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        return "\n".join(p for p in self.prompt if isinstance(p, str))


def wants_usage(body: _Generation) -> bool:
    """Whether a streaming client asked for the usage line (`stream_options.include_usage`)."""
    return body.stream_options is not None and body.stream_options.include_usage is True


def dump_for_engine(
    body: _Generation,
    model: str,
    force_usage: bool,
    allowed: frozenset[str] | None = None,
) -> dict[str, Any]:
    """The body as the engine gets it: the served model name in place of what was asked.

    With `force_usage` a stream always asks the engine for its usage line, whatever the
    client sent (`include_usage: false` included): the gateway charges the tenant's quota
    from it, and strips it from the client's stream when the client did not ask for it
    (`streams.sse_events`). A client that asked for no usage gets no per-chunk usage
    (`continuous_usage_stats`) either. `allowed`: the only fields sent (an engine tier's
    `bounds.ENGINE_FIELDS`); None sends them all (an external tier filters its own)."""
    data = body.model_dump(exclude_unset=True, exclude_none=True)
    if allowed is not None:
        data = {k: v for k, v in data.items() if k in allowed}
    data["model"] = model
    if body.stream and force_usage:
        opts = dict(data.get("stream_options") or {}) if wants_usage(body) else {}
        opts["include_usage"] = True
        data["stream_options"] = opts
    return data
