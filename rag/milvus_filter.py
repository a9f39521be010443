"""Our metadata filters (`rag.filters`) as Milvus boolean expressions, for server-side search.

A filter is validated by `parse_filter` first (same language, same caps, same 400s), then
translated: `document_id` is the scalar field, every other key a member of the JSON field
`metadata` (`metadata["lang"]`).

Milvus compares a missing JSON key as NULL: `metadata["k"] != 1` and `not (...)` are then
not true. Our filters are two-valued (a missing key is unequal to everything), so each
leaf is guarded, `(exists metadata["k"] and metadata["k"] == 1)`, which is false (not NULL)
for a missing key, and `$ne`, `$nin`, `$not` negate guarded leaves. `$in` lists become
`or` chains of equalities (Milvus Lite has no `in` on JSON members); on `document_id` they
stay `in [...]`.

Left as Milvus decides, where it differs from the in-process filter: a range comparison
on a JSON boolean treats it as 0/1 (`true` passes `$gt: 0`; in-process, booleans compare
to nothing), and a comparison between different JSON types (a string `"2002"` against
`$gte: 2001`) is false in both but, under `$not`, Milvus leaves the row out. String
values with control characters are refused (400): Milvus's expression parser takes no
`\\u` escapes.
"""

from __future__ import annotations

import json
import math
from typing import Any

from tierline.rag.filters import parse_filter
from tierline.rag.records import RagError

_OPS = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_INT64 = 1 << 63
TRUE = "true"
FALSE = "false"


def _bad(message: str) -> RagError:
    return RagError(400, f"bad filter: {message}", code="invalid_filter", param="filter")


def literal(value: Any) -> str:
    """A scalar as a Milvus expression literal."""
    if isinstance(value, bool):
        return TRUE if value else FALSE
    if isinstance(value, int):
        if not -_INT64 <= value < _INT64:
            raise _bad(f"{value} does not fit a 64-bit integer")
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _bad(f"{value} is not a finite number")
        return repr(value)
    if isinstance(value, str):
        if any(ord(ch) < 0x20 for ch in value):
            raise _bad("string values may not hold control characters on a Milvus server")
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise _bad(f"{value!r} is not a scalar")


def _ref(key: str) -> str:
    return "document_id" if key == "document_id" else f"metadata[{json.dumps(key)}]"


def _eq(key: str, value: Any) -> str:
    if key == "document_id":  # a string field: anything else equals none of it
        return f"document_id == {literal(value)}" if isinstance(value, str) else FALSE
    ref = _ref(key)
    return f"(exists {ref} and {ref} == {literal(value)})"


def _cmp(key: str, op: str, bound: Any) -> str:
    if key == "document_id":
        if not isinstance(bound, str):
            return FALSE
        return f"document_id {_OPS[op]} {literal(bound)}"
    ref = _ref(key)
    return f"(exists {ref} and {ref} {_OPS[op]} {literal(bound)})"


def _member(key: str, values: list[Any]) -> str:
    if key == "document_id":
        names = sorted({v for v in values if isinstance(v, str)})
        return f"document_id in [{', '.join(literal(v) for v in names)}]" if names else FALSE
    unique = list(dict.fromkeys((type(v), v) for v in values))
    if not unique:
        return FALSE
    return _join([_eq(key, v) for _, v in unique], "or")


def _join(parts: list[str], op: str) -> str:
    return parts[0] if len(parts) == 1 else "(" + f" {op} ".join(parts) + ")"


def _negate(expr: str) -> str:
    if expr == TRUE:
        return FALSE
    if expr == FALSE:
        return TRUE
    return f"not ({expr})"


def _field(key: str, cond: Any) -> str:
    if not isinstance(cond, dict):
        return _eq(key, cond)
    parts: list[str] = []
    for op, arg in cond.items():
        if op == "$eq":
            parts.append(_eq(key, arg))
        elif op == "$ne":
            parts.append(_negate(_eq(key, arg)))
        elif op in _OPS:
            parts.append(_cmp(key, op, arg))
        elif op == "$in":
            parts.append(_member(key, arg))
        else:  # $nin: parse_filter admits nothing else
            parts.append(_negate(_member(key, arg)))
    return _join(parts, "and")


def _translate(spec: dict[str, Any]) -> str:
    parts: list[str] = []
    for key, cond in spec.items():
        if key in ("$and", "$or"):
            parts.append(_join([_translate(c) for c in cond], key[1:]))
        elif key == "$not":
            parts.append(_negate(_translate(cond)))
        else:
            parts.append(_field(key, cond))
    return _join(parts, "and") if parts else TRUE


def to_expression(spec: Any) -> str | None:
    """The Milvus expression for a filter, None for no filter; RagError (400) if malformed."""
    if parse_filter(spec) is None:
        return None
    return _translate(spec)
