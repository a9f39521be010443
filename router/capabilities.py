"""What each tier can serve, and which tiers can serve a request: a hard rule before routing.

Plain data in, plain data out. `needs_of` reads a request body (chat completions,
completions or Responses, as a dict) into `Needs`; `tier_capabilities` says what a tier
can do from its spec and, where there is one, its model's config.json (read by the caller:
`read_model_config`); `capable` keeps the tiers that can serve the request, and says why
each other tier cannot. The gateway calls it before any scorer sees the request, so
`auto` never picks a tier that would fail the request, and a request no tier can serve is
refused with a 400 that says why (`refusal`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tierline.cluster.spec import TierSpec

__all__ = [
    "IMAGE_PART_TYPES",
    "Capabilities",
    "Needs",
    "Verdict",
    "capable",
    "needs_of",
    "read_model_config",
    "refusal",
    "tier_capabilities",
    "unmet",
]

IMAGE_PART_TYPES = frozenset({"image_url", "input_image", "image"})
"""Content part types that carry an image (chat completions, Responses, Anthropic-style)."""
STRUCTURED_FORMATS = frozenset({"json_schema", "json_object"})
# vLLM's own request fields that constrain the output to a grammar.
STRUCTURED_FIELDS = ("structured_outputs", "guided_json", "guided_regex", "guided_choice")


@dataclass(frozen=True)
class Capabilities:
    """What one tier can serve."""

    tools: bool
    """Tool calling: `tools` with tool_choice auto, required or a named function."""
    vision: bool
    """Image content parts."""
    structured_output: bool
    """`response_format` json_object / json_schema (and vLLM's structured outputs)."""
    max_context_tokens: int
    """Longest prompt plus completion."""
    reasoning: bool = False
    """A reasoning parser splits the model's reasoning from its answer."""
    adapters: tuple[str, ...] = ()
    """LoRA adapters served over the tier's model (their model names)."""

    def card(self) -> dict[str, Any]:
        """The `capabilities` object of the tier's /v1/models card."""
        return {
            "tools": self.tools,
            "vision": self.vision,
            "structured_output": self.structured_output,
            "reasoning": self.reasoning,
            "max_context_tokens": self.max_context_tokens,
            "adapters": list(self.adapters),
        }


@dataclass(frozen=True)
class Needs:
    """What a request needs of the tier that serves it."""

    tools: bool = False
    vision: bool = False
    structured_output: bool = False
    context_tokens: Mapping[str, int] = field(default_factory=dict)
    """Context the request needs on each tier (prompt in its tokenizer + completion
    budget), where counted; a tier not listed is not checked for length."""

    @property
    def any(self) -> bool:
        return self.tools or self.vision or self.structured_output or bool(self.context_tokens)


@dataclass(frozen=True)
class Verdict:
    """Which tiers can serve a request, in the order given, and why the others cannot."""

    tiers: tuple[str, ...]
    refused: Mapping[str, tuple[str, ...]]
    """Tier name -> what it lacks (`tools`, `vision`, `structured_output`, `context`)."""


def _truthy(value: Any) -> bool:
    return value is not None and value is not False and value != [] and value != {}


def _parts(content: Any) -> Iterable[Mapping[str, Any]]:
    if isinstance(content, list):
        yield from (p for p in content if isinstance(p, Mapping))


def _has_image(items: Any) -> bool:
    """Whether chat messages or Responses input items carry an image part."""
    if not isinstance(items, list):
        return False
    for item in items:
        if not isinstance(item, Mapping):
            continue
        if item.get("type") in IMAGE_PART_TYPES:  # a bare Responses input part
            return True
        if any(p.get("type") in IMAGE_PART_TYPES for p in _parts(item.get("content"))):
            return True
    return False


def _wants_tools(body: Mapping[str, Any]) -> bool:
    tools = body.get("tools")
    if not (isinstance(tools, list) and tools):
        return False
    return body.get("tool_choice") != "none"


def _wants_structure(body: Mapping[str, Any]) -> bool:
    fmt = body.get("response_format")  # chat completions
    if isinstance(fmt, Mapping) and fmt.get("type") in STRUCTURED_FORMATS:
        return True
    text = body.get("text")  # Responses: text.format
    if isinstance(text, Mapping):
        fmt = text.get("format")
        if isinstance(fmt, Mapping) and fmt.get("type") in STRUCTURED_FORMATS:
            return True
    return any(_truthy(body.get(k)) for k in STRUCTURED_FIELDS)


def needs_of(body: Mapping[str, Any], context_tokens: Mapping[str, int] | None = None) -> Needs:
    """The needs of a request body (chat completions, completions or Responses).

    Tools count when `tools` is a non-empty list and tool_choice is not "none"; images,
    when a message (or Responses input item) has an image content part; structure, when
    `response_format` (or Responses `text.format`) asks for json_schema/json_object or a
    vLLM structured-output field is set. Malformed fields count as absent: validating
    them is the schema's and the engine's job."""
    return Needs(
        tools=_wants_tools(body),
        vision=_has_image(body.get("messages")) or _has_image(body.get("input")),
        structured_output=_wants_structure(body),
        context_tokens=dict(context_tokens or {}),
    )


def unmet(needs: Needs, caps: Capabilities, tier: str | None = None) -> tuple[str, ...]:
    """What `caps` lacks for `needs`, in a fixed order; empty when the tier can serve it.
    `tier` names the tier for the context check (`needs.context_tokens`)."""
    missing = []
    if needs.tools and not caps.tools:
        missing.append("tools")
    if needs.vision and not caps.vision:
        missing.append("vision")
    if needs.structured_output and not caps.structured_output:
        missing.append("structured_output")
    if tier is not None and needs.context_tokens.get(tier, 0) > caps.max_context_tokens:
        missing.append("context")
    return tuple(missing)


def capable(needs: Needs, tiers: Mapping[str, Capabilities]) -> Verdict:
    """The tiers (in `tiers`' order) that can serve a request with `needs`."""
    ok: list[str] = []
    refused: dict[str, tuple[str, ...]] = {}
    for name, caps in tiers.items():
        missing = unmet(needs, caps, name)
        if missing:
            refused[name] = missing
        else:
            ok.append(name)
    return Verdict(tuple(ok), refused)


_WHAT = {
    "tools": "tool calling",
    "vision": "image input",
    "structured_output": "structured output",
    "context": "a context this long",
}


def refusal(verdict: Verdict, pinned: str | None = None) -> tuple[str, str]:
    """(code, message) of the 400 for a request that the tiers in `verdict` cannot serve:
    `tier_not_capable` for a request naming its tier, `no_capable_tier` for auto."""
    why = "; ".join(
        f"tier {name!r} has no {' or '.join(_WHAT[m] for m in missing)}"
        for name, missing in verdict.refused.items()
    )
    if pinned is not None:
        return "tier_not_capable", f"this request cannot be served: {why}"
    return "no_capable_tier", f"no tier this request may use can serve it: {why}"


def read_model_config(model_source: str | None) -> dict[str, Any] | None:
    """A local checkpoint's config.json, or None (a hub id, a remote URI, no such file,
    or not JSON). Blocking file I/O: call it at start-up, not per request."""
    if not model_source:
        return None
    path = Path(model_source).expanduser() / "config.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _has_vision(config: Mapping[str, Any] | None) -> bool:
    if config is None:
        return False
    return any(_truthy(config.get(k)) for k in ("vision_config", "image_token_index"))


def tier_capabilities(
    tier: TierSpec,
    model_config: Mapping[str, Any] | None = None,
) -> Capabilities:
    """What `tier` can serve: its declared `capabilities`, the rest inferred. Tools: a
    tool_call_parser (external tiers: yes, the provider parses). Vision: a vision_config in
    the model config (external tiers: no, unless declared). Structured output: yes (vLLM's
    structured outputs; providers' response_format)."""
    declared = tier.capabilities
    tools = tier.is_external or tier.tool_call_parser is not None
    vision = False if tier.is_external else _has_vision(model_config)
    return Capabilities(
        tools=tools if declared.tools is None else declared.tools,
        vision=vision if declared.vision is None else declared.vision,
        structured_output=True
        if declared.structured_output is None
        else declared.structured_output,
        max_context_tokens=tier.max_context_tokens,
        reasoning=tier.reasoning_parser is not None,
        adapters=tuple(tier.adapter_names(a)[0] for a in tier.adapters),
    )
