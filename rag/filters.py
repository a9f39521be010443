"""Metadata filters: a small JSON language checked up front and applied as a predicate.

    {"lang": "en"}                               equality
    {"year": {"$gte": 2020, "$lt": 2024}}        $eq $ne $gt $gte $lt $lte $in $nin
    {"$and": [...]} / {"$or": [...]} / {"$not": {...}}

Keys name metadata fields; `document_id` names the chunk's document.

A filter is bounded before it is compiled: at most `MAX_LIST_VALUES` values in one
`$in`/`$nin` list, `MAX_FILTER_TERMS` terms in all (conditions, list values and logical
operators), and `MAX_DEPTH` levels of nesting; a larger one gets 400 naming the cap.

An in-process search evaluates a filter once, as set operations over the collection's
metadata columns (`matching_ids`, `FilterScan`): `$in` lists and `$or`s of equalities on
one key are one set lookup per chunk, and the metadata values looked at are capped by
`MAX_FILTER_WORK` and the time by `FILTER_DEADLINE_S` (400 past either). The search then
checks candidates by set membership. `parse_filter` (a predicate) stays for validation
and the Milvus translation.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from tierline.rag.records import RagError

Predicate = Callable[[str, Mapping[str, Any]], bool]
KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
SCALAR = (str, int, float, bool)
_CMP: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
}
MAX_DEPTH = 8
MAX_LIST_VALUES = 1024
MAX_FILTER_TERMS = 4096


def _bad(message: str) -> RagError:
    return RagError(400, f"bad filter: {message}", code="invalid_filter", param="filter")


def _value(doc_id: str, meta: Mapping[str, Any], key: str) -> Any:
    return doc_id if key == "document_id" else meta.get(key)


def _comparable(a: Any, b: Any) -> bool:
    numeric = (int, float)
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool)
    return (isinstance(a, numeric) and isinstance(b, numeric)) or (
        isinstance(a, str) and isinstance(b, str)
    )


def _eq(key: str, want: Any, equal: bool) -> Predicate:
    return lambda d, m: (_value(d, m, key) == want) == equal


def _cmp(key: str, bound: Any, op: Callable[[Any, Any], bool]) -> Predicate:
    def pred(d: str, m: Mapping[str, Any]) -> bool:
        v = _value(d, m, key)
        return _comparable(v, bound) and bool(op(v, bound))

    return pred


def _member(key: str, values: frozenset[Any], inside: bool) -> Predicate:
    def pred(d: str, m: Mapping[str, Any]) -> bool:
        try:
            found = _value(d, m, key) in values
        except TypeError:  # a list or object in the metadata: equal to no scalar
            found = False
        return found == inside

    return pred


def _size(spec: Any, depth: int = 0) -> int:
    """Terms in a filter, counted without compiling it; 400 once a cap is passed."""
    if depth > 2 * MAX_DEPTH + 6:  # a guard only: `_compile` counts nesting exactly
        raise _bad(f"nested deeper than {MAX_DEPTH}")
    if isinstance(spec, list):
        if len(spec) > MAX_LIST_VALUES:
            raise _bad(
                f"a list of {len(spec)} items; at most {MAX_LIST_VALUES} "
                "(the filter list-width cap)"
            )
        items: Any = spec
    elif isinstance(spec, dict):
        items = spec.values()
    else:
        return 1
    total = 1
    for item in items:
        total += _size(item, depth + 1)
        if total > MAX_FILTER_TERMS:
            raise _bad(f"more than {MAX_FILTER_TERMS} terms (the filter size cap)")
    return total


def _all(preds: list[Predicate]) -> Predicate:
    return lambda d, m: all(p(d, m) for p in preds)


def _any(preds: list[Predicate]) -> Predicate:
    return lambda d, m: any(p(d, m) for p in preds)


def _negate(pred: Predicate) -> Predicate:
    return lambda d, m: not pred(d, m)


def _field(key: str, cond: Any) -> Predicate:
    if not KEY.match(key):
        raise _bad(f"{key!r} is not a field name")
    if isinstance(cond, SCALAR):
        return _eq(key, cond, True)
    if not isinstance(cond, dict) or not cond:
        raise _bad(f"condition on {key!r} must be a scalar or an operator object")
    preds: list[Predicate] = []
    for op, arg in cond.items():
        if op in ("$eq", "$ne"):
            if not isinstance(arg, SCALAR):
                raise _bad(f"{op} on {key!r} needs a scalar")
            preds.append(_eq(key, arg, op == "$eq"))
        elif op in _CMP:
            if not isinstance(arg, (int, float, str)) or isinstance(arg, bool):
                raise _bad(f"{op} on {key!r} needs a number or a string")
            preds.append(_cmp(key, arg, _CMP[op]))
        elif op in ("$in", "$nin"):
            if not isinstance(arg, list) or not all(isinstance(x, SCALAR) for x in arg):
                raise _bad(f"{op} on {key!r} needs a list of scalars")
            preds.append(_member(key, frozenset(arg), op == "$in"))
        else:
            raise _bad(f"unknown operator {op!r} on {key!r}")
    return _all(preds)


def _compile(spec: Any, depth: int) -> Predicate:
    if depth > MAX_DEPTH:
        raise _bad(f"nested deeper than {MAX_DEPTH}")
    if not isinstance(spec, dict):
        raise _bad("a filter is a JSON object")
    preds: list[Predicate] = []
    for key, cond in spec.items():
        if key in ("$and", "$or"):
            if not isinstance(cond, list) or not cond:
                raise _bad(f"{key} needs a non-empty list of filters")
            subs = [_compile(c, depth + 1) for c in cond]
            preds.append(_all(subs) if key == "$and" else _any(subs))
        elif key == "$not":
            preds.append(_negate(_compile(cond, depth + 1)))
        elif key.startswith("$"):
            raise _bad(f"unknown operator {key!r}")
        else:
            preds.append(_field(key, cond))
    return _all(preds)


def parse_filter(spec: Any) -> Predicate | None:
    """A predicate over (document_id, metadata), or None for no filter; RagError if malformed."""
    if spec is None or spec == {}:
        return None
    _size(spec)
    return _compile(spec, 0)


# -- evaluation as set operations ------------------------------------------------------------------
MAX_FILTER_WORK = 1_000_000
"""Metadata values one search's filter may look at (leaf scans x chunks); more: 400."""
FILTER_DEADLINE_S = 0.5
"""Wall-clock bound on one filter's evaluation; past it: 400."""

ValueTest = Callable[[Any], bool]


def _member_test(values: frozenset[Any], inside: bool) -> ValueTest:
    def test(v: Any) -> bool:
        try:
            found = v in values
        except TypeError:  # a list or object in the metadata: equal to no scalar
            found = False
        return found == inside

    return test


def _cmp_test(bound: Any, op: Callable[[Any, Any], bool]) -> ValueTest:
    return lambda v: _comparable(v, bound) and bool(op(v, bound))


def _equalities(spec: Any) -> tuple[str, list[Any]] | None:
    """`(key, values)` when `spec` only asks for a key to equal one of some values."""
    if not isinstance(spec, dict) or len(spec) != 1:
        return None
    ((key, cond),) = spec.items()
    if key.startswith("$"):
        return None
    if isinstance(cond, SCALAR):
        return key, [cond]
    if isinstance(cond, dict) and len(cond) == 1:
        ((op, arg),) = cond.items()
        if op == "$eq":
            return key, [arg]
        if op == "$in":
            return key, list(arg)
    return None


class FilterScan:
    """One filter over one collection's chunks, as set operations: each leaf scans one
    metadata column once (equalities on one key under `$or` share one set lookup), `$and`
    intersects, `$or` unites, `$not` complements. The metadata values looked at are
    counted against `max_work` and the time against `deadline_s`; either past gets 400,
    so a filter costs a search at most a bounded, known amount."""

    def __init__(
        self,
        chunks: Mapping[str, tuple[str, Mapping[str, Any]]],
        max_work: int = MAX_FILTER_WORK,
        deadline_s: float = FILTER_DEADLINE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ids = list(chunks)
        self.rows = [chunks[i] for i in self.ids]
        self.max_work = max_work
        self.work = 0
        self.clock = clock
        self.deadline = clock() + deadline_s
        self._columns: dict[str, list[Any]] = {}

    def _column(self, key: str) -> list[Any]:
        col = self._columns.get(key)
        if col is None:
            self._charge()
            col = [_value(d, m, key) for d, m in self.rows]
            self._columns[key] = col
        return col

    def _charge(self) -> None:
        self.work += len(self.ids)
        if self.work > self.max_work:
            raise _bad(
                f"too costly for this collection: it would look at more than {self.max_work} "
                f"metadata values over {len(self.ids)} chunks (the filter work cap); use "
                "fewer conditions"
            )
        if self.clock() > self.deadline:
            raise _bad("its evaluation passed the filter deadline; use fewer conditions")

    def _leaf(self, key: str, test: ValueTest) -> set[str]:
        col = self._column(key)
        self._charge()
        return {i for i, v in zip(self.ids, col, strict=True) if test(v)}

    def _field(self, key: str, cond: Any) -> set[str]:
        if isinstance(cond, SCALAR):
            return self._leaf(key, _member_test(frozenset([cond]), True))
        out: set[str] | None = None
        for op, arg in cond.items():
            if op in ("$eq", "$ne"):
                got = self._leaf(key, _member_test(frozenset([arg]), op == "$eq"))
            elif op in _CMP:
                got = self._leaf(key, _cmp_test(arg, _CMP[op]))
            else:  # $in / $nin
                got = self._leaf(key, _member_test(frozenset(arg), op == "$in"))
            out = got if out is None else out & got
        return out if out is not None else set(self.ids)

    def _any(self, specs: list[Any]) -> set[str]:
        out: set[str] = set()
        merged: dict[str, list[Any]] = {}
        for s in specs:
            eq = _equalities(s)
            if eq is not None:
                merged.setdefault(eq[0], []).extend(eq[1])
            else:
                out |= self.run(s)
        for key, values in merged.items():
            out |= self._leaf(key, _member_test(frozenset(values), True))
        return out

    def run(self, spec: Any) -> set[str]:
        """The ids of the chunks `spec` (validated by `parse_filter`) admits."""
        out: set[str] | None = None
        for key, cond in spec.items():
            if key == "$and":
                got: set[str] = set(self.ids)
                for c in cond:
                    got &= self.run(c)
            elif key == "$or":
                got = self._any(cond)
            elif key == "$not":
                got = set(self.ids) - self.run(cond)
            else:
                got = self._field(key, cond)
            out = got if out is None else out & got
        return out if out is not None else set(self.ids)


def matching_ids(
    spec: Any,
    chunks: Mapping[str, tuple[str, Mapping[str, Any]]],
    max_work: int = MAX_FILTER_WORK,
    deadline_s: float = FILTER_DEADLINE_S,
) -> set[str] | None:
    """The chunk ids (`chunks`: id -> (document id, metadata)) that `spec` admits, or None
    for no filter; RagError (400) if malformed or past the work cap or deadline."""
    if parse_filter(spec) is None:
        return None
    return FilterScan(chunks, max_work, deadline_s).run(spec)
