"""Per-request bounds on what a client may ask of an engine (`gateway.limits`).

Pure checks of plain data, run with the other cheap checks (`plan.scope`) before anything
is tokenised, routed or sent: a request over a bound gets 400 naming the setting.

- `json_depth`: the nesting of a raw JSON body, found without parsing it (Python's parser
  recurses, so a 5,000-deep array would raise deep inside it); the edge refuses a body
  deeper than `max_json_depth`.
- `check_engine_fields`: lists and sizes (`stop`, `logit_bias`, `bad_words`, token-id
  lists, `top_logprobs`, `tools`) and grammar size (`response_format`, vLLM's
  `structured_outputs` and `guided_*`, and the tools when `tool_choice` forces a call,
  since the engine compiles each into a grammar before its first token).
- `check_media_urls`: the URLs of image, audio and video parts. vLLM fetches them itself
  (from inside the cluster), so only inline `data:` URLs pass, and https URLs on hosts
  the operator listed in `image_url_hosts`; anything else gets 400 before any engine sees
  it.
- `ENGINE_FIELDS`: what an engine tier is sent. Like an external tier's allow-list
  (`external.FORWARDED_FIELDS`), any other field is dropped: vLLM's `priority`,
  `chat_template`, `logits_processors`, `kv_transfer_params`, `prompt_logprobs` and the
  like are the operator's, not a tenant's. `cache_salt` passes only as the gateway sets
  it (`salting`: the tenant's salt, or none).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from tierline.cluster.spec import RequestLimitsSpec
from tierline.deployments.errors import APIError

__all__ = [
    "ENGINE_FIELDS",
    "GRAMMAR_FIELDS",
    "check_engine_fields",
    "check_media_urls",
    "grammar_bytes",
    "json_depth",
    "too_deep",
]

ENGINE_FIELDS = frozenset(
    {
        # OpenAI's chat and completions fields
        "model",
        "messages",
        "prompt",
        "suffix",
        "echo",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "stream",
        "stream_options",
        "temperature",
        "top_p",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "seed",
        "response_format",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "reasoning_effort",
        # vLLM's sampling and output-constraint fields
        "top_k",
        "min_p",
        "repetition_penalty",
        "length_penalty",
        "min_tokens",
        "ignore_eos",
        "stop_token_ids",
        "include_stop_str_in_output",
        "skip_special_tokens",
        "spaces_between_special_tokens",
        "bad_words",
        "allowed_token_ids",
        "add_generation_prompt",
        "continue_final_message",
        "chat_template_kwargs",
        "structured_outputs",
        "guided_json",
        "guided_regex",
        "guided_choice",
        "guided_grammar",
        "guided_whitespace_pattern",
        # set by the gateway (`salting.salted`), never the client's own
        "cache_salt",
    }
)
"""Request fields an engine tier gets; the rest are dropped (`schemas.dump_for_engine`)."""

GRAMMAR_FIELDS = (
    "response_format",
    "structured_outputs",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
)
"""Fields the engine compiles into an output grammar."""

_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # as int8: +1 opens, -1 closes


def outside_strings(raw: bytes) -> bytes:
    """A JSON text with its strings cut out. Where no quote follows a backslash, every
    quote opens or closes a string, so the text between every other pair of quotes is all
    there is (a split, 7x faster than the regex on a megabyte of tool definitions); else
    the regex, which reads escapes."""
    if b'\\"' not in raw:
        return b"".join(raw.split(b'"')[::2])
    return _STRING.sub(b"", raw)


def json_depth(raw: bytes) -> int:
    """How deeply the arrays and objects of a JSON text nest (brackets inside strings do
    not count). Linear in C: strings cut out, then a running sum of brackets."""
    steps = outside_strings(raw).translate(_STEP, _NOT_BRACKETS)
    if not steps:
        return 0
    return int(np.frombuffer(steps, dtype=np.int8).cumsum(dtype=np.int64).max())


def too_deep(raw: bytes, max_depth: int) -> APIError | None:
    """The 400 for a JSON body nested deeper than `max_depth`; None when it is not."""
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return None
    depth = json_depth(raw)
    if depth <= max_depth:
        return None
    return APIError(
        400,
        f"the request body nests arrays and objects {depth} deep; at most {max_depth} "
        "(gateway.limits.max_json_depth)",
        code="json_too_deep",
    )


def _limit(message: str, param: str, setting: str) -> APIError:
    return APIError(
        400, f"{message} (gateway.limits.{setting})", code="request_limit_exceeded", param=param
    )


def _invalid(message: str, param: str) -> APIError:
    return APIError(400, message, code="invalid_request", param=param)


def _json_size(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode())
    try:
        return len(json.dumps(value, separators=(",", ":")).encode())
    except (TypeError, ValueError, RecursionError):
        raise _invalid("a field is not plain JSON", "body") from None


def _strings(data: Mapping[str, Any], name: str, most: int, setting: str, chars: int) -> None:
    value = data.get(name)
    if value is None:
        return
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise _invalid(f"{name} must be a string or a list of strings", name)
    if len(values) > most:
        raise _limit(f"{name} has {len(values)} strings; at most {most}", name, setting)
    longest = max((len(v) for v in values), default=0)
    if longest > chars:
        raise _limit(
            f"a {name} string has {longest} characters; at most {chars}", name, "max_stop_chars"
        )


def _token_ids(data: Mapping[str, Any], name: str, most: int) -> None:
    value = data.get(name)
    if value is None:
        return
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise _invalid(f"{name} must be a list of token ids", name)
    if len(value) > most:
        raise _limit(f"{name} has {len(value)} ids; at most {most}", name, "max_token_ids")


def _logit_bias(data: Mapping[str, Any], most: int) -> None:
    bias = data.get("logit_bias")
    if bias is None:
        return
    if not isinstance(bias, dict):
        raise _invalid("logit_bias must be an object of token id -> bias", "logit_bias")
    if len(bias) > most:
        raise _limit(
            f"logit_bias has {len(bias)} entries; at most {most}", "logit_bias", "max_logit_bias"
        )
    for key, value in bias.items():
        if not str(key).isdigit():
            raise _invalid(f"logit_bias key {str(key)[:32]!r} is not a token id", "logit_bias")
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not -100 <= value <= 100
        ):
            raise _invalid("logit_bias values are numbers from -100 to 100", "logit_bias")


def _logprobs(data: Mapping[str, Any], most: int) -> None:
    for name in ("top_logprobs", "logprobs"):
        value = data.get(name)
        if value is None or isinstance(value, bool):  # chat's `logprobs` is a switch
            continue
        if not isinstance(value, int) or value < 0:
            raise _invalid(f"{name} must be a non-negative integer", name)
        if value > most:
            raise _limit(f"{name} is {value}; at most {most}", name, "max_top_logprobs")


def _template_kwargs(data: Mapping[str, Any], chars: int) -> None:
    kwargs = data.get("chat_template_kwargs")
    if kwargs is None:
        return
    scalar = (bool, int, float, str)
    if not isinstance(kwargs, dict) or not all(
        isinstance(v, scalar) and (not isinstance(v, str) or len(v) <= chars)
        for v in kwargs.values()
    ):
        raise _invalid(
            f"chat_template_kwargs must be an object of scalars (strings up to {chars} "
            'characters), such as {"enable_thinking": false}',
            "chat_template_kwargs",
        )


def _forced_tools(data: Mapping[str, Any]) -> list[Any]:
    """The tools the engine turns into a grammar: all of them under `tool_choice:
    required`, the named one under a named choice, none otherwise."""
    tools = data.get("tools")
    if not isinstance(tools, list):
        return []
    choice = data.get("tool_choice")
    if choice == "required":
        return tools
    if isinstance(choice, dict):
        name = (
            (choice.get("function") or {}).get("name")
            if isinstance(choice.get("function"), dict)
            else None
        )
        return [
            t
            for t in tools
            if isinstance(t, dict)
            and isinstance(t.get("function"), dict)
            and t["function"].get("name") == name
        ]
    return []


def grammar_bytes(data: Mapping[str, Any]) -> tuple[int, str | None]:
    """The JSON size of the request's largest output constraint, and its field."""
    sizes = [(_json_size(data[f]), f) for f in GRAMMAR_FIELDS if data.get(f) is not None]
    forced = _forced_tools(data)
    if forced:
        sizes.append((_json_size(forced), "tools"))
    return max(sizes, default=(0, None))


def check_engine_fields(limits: RequestLimitsSpec, data: Mapping[str, Any]) -> None:
    """400 when a request's engine fields (`data`: its untyped fields) pass a bound."""
    chars = limits.max_stop_chars
    _strings(data, "stop", limits.max_stop_sequences, "max_stop_sequences", chars)
    _strings(data, "bad_words", limits.max_bad_words, "max_bad_words", chars)
    _token_ids(data, "stop_token_ids", limits.max_token_ids)
    _token_ids(data, "allowed_token_ids", limits.max_token_ids)
    _logit_bias(data, limits.max_logit_bias)
    _logprobs(data, limits.max_top_logprobs)
    _template_kwargs(data, chars)
    salt = data.get("cache_salt")
    if salt is not None and (not isinstance(salt, str) or len(salt) > chars):
        raise _invalid(f"cache_salt must be a string of at most {chars} characters", "cache_salt")
    tools = data.get("tools")  # not a list: the engine's 400 (capabilities read it first)
    if isinstance(tools, list) and len(tools) > limits.max_tools:
        raise _limit(f"{len(tools)} tools; at most {limits.max_tools}", "tools", "max_tools")
    size, field = grammar_bytes(data)
    if field is not None and size > limits.max_grammar_bytes:
        raise _limit(
            f"{field} is a {size}-byte output constraint; at most {limits.max_grammar_bytes} bytes",
            field,
            "max_grammar_bytes",
        )


MEDIA_URL_FIELDS = ("image_url", "audio_url", "video_url")
"""Content-part fields whose URL vLLM's media fetcher would open."""


def _part_url(value: Any) -> str | None:
    if isinstance(value, Mapping):
        value = value.get("url")
    return value if isinstance(value, str) else None


def host_allowed(host: str, allowed: Sequence[str]) -> bool:
    """Whether `host` is listed: exactly, or as a subdomain of a `*.` entry."""
    for entry in allowed:
        if entry.startswith("*."):
            if host.endswith(entry[1:]) and len(host) > len(entry) - 1:
                return True
        elif host == entry:
            return True
    return False


def check_media_urls(limits: RequestLimitsSpec, parts: Iterable[Mapping[str, Any]]) -> None:
    """400 for a media part (`parts`: the message content parts' fields) whose URL is not
    inline `data:` or https on a host in `image_url_hosts`."""
    allowed = limits.image_url_hosts
    for part in parts:
        for name in MEDIA_URL_FIELDS:
            if name not in part:
                continue
            url = _part_url(part[name])
            if url is None:
                raise _invalid(f"{name} must be a URL or an object with a url", "messages")
            if url[:5].lower() == "data:":
                continue
            try:
                where = urlsplit(url)
                scheme, host, port = where.scheme.lower(), where.hostname, where.port
            except ValueError:  # a bad port or bracketed host
                scheme, host, port = "", None, None
            if scheme == "https" and host and port in (None, 443) and host_allowed(host, allowed):
                continue
            shown = host[:64] if host else url[:16]
            raise APIError(
                400,
                f"{name} {shown!r}: remote media URLs are fetched only from hosts in "
                "gateway.limits.image_url_hosts (https); send the image inline as a data: "
                "URL instead",
                code="media_url_not_allowed",
                param="messages",
            )
