"""An in-memory BM25 index over chunk texts (Okapi BM25, k1=1.2, b=0.75).

Postings live in dicts (cheap to update) and are turned into numpy arrays per term on
first use after a change, so a query over 100k chunks scores common terms vectorised.
The index is a cache of the durable store, rebuilt from it at start-up.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable

import numpy as np

WORD = re.compile(r"\w+", re.UNICODE)


def terms(text: str) -> list[str]:
    return WORD.findall(text.lower())


class BM25Index:
    def __init__(self, k1: float = 1.2, b: float = 0.75) -> None:
        self.k1 = k1
        self.b = b
        self._postings: dict[str, dict[int, int]] = {}
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._slots: dict[str, int] = {}
        self._ids: list[str | None] = []
        self._terms: dict[int, list[str]] = {}
        self._lengths = np.zeros(1024, dtype=np.float32)
        self._total = 0

    def __len__(self) -> int:
        return len(self._slots)

    def add(self, items: Iterable[tuple[str, str]]) -> None:
        for item_id, text in items:
            self.remove([item_id])
            counts = Counter(terms(text))
            slot = len(self._ids)
            self._ids.append(item_id)
            self._slots[item_id] = slot
            if slot >= len(self._lengths):
                self._lengths = np.concatenate([self._lengths, np.zeros_like(self._lengths)])
            length = sum(counts.values())
            self._lengths[slot] = length
            self._total += length
            self._terms[slot] = list(counts)
            for term, n in counts.items():
                self._postings.setdefault(term, {})[slot] = n
                self._arrays.pop(term, None)

    def remove(self, ids: Iterable[str]) -> None:
        for item_id in ids:
            slot = self._slots.pop(item_id, None)
            if slot is None:
                continue
            self._ids[slot] = None
            self._total -= int(self._lengths[slot])
            for term in self._terms.pop(slot, []):
                posting = self._postings[term]
                posting.pop(slot, None)
                self._arrays.pop(term, None)
                if not posting:
                    del self._postings[term]

    def rarest(self, query: str) -> int | None:
        """The fewest chunks any term of `query` occurs in (None: no term is indexed)."""
        counts = [len(p) for t in set(terms(query)) if (p := self._postings.get(t))]
        return min(counts) if counts else None

    def _posting_arrays(self, term: str) -> tuple[np.ndarray, np.ndarray] | None:
        arrays = self._arrays.get(term)
        if arrays is None:
            posting = self._postings.get(term)
            if not posting:
                return None
            slots = np.fromiter(posting.keys(), dtype=np.int64, count=len(posting))
            tfs = np.fromiter(posting.values(), dtype=np.float32, count=len(posting))
            arrays = self._arrays[term] = (slots, tfs)
        return arrays

    def search(
        self, query: str, k: int, allow: Callable[[str], bool] | None = None
    ) -> list[tuple[str, float]]:
        n = len(self._slots)
        if n == 0 or k < 1:
            return []
        avg = self._total / n or 1.0
        size = len(self._ids)
        scores = np.zeros(size, dtype=np.float64)
        # Sorted: a set's order changes with each process's hash seed, and so would the
        # floating-point sums (and near-ties) after a restart.
        for term in sorted(set(terms(query))):
            arrays = self._posting_arrays(term)
            if arrays is None:
                continue
            slots, tfs = arrays
            df = len(slots)
            idf = math.log(1.0 + (n - df + 0.5) / (df + 0.5))
            norm = tfs + self.k1 * (1 - self.b + self.b * self._lengths[slots] / avg)
            scores += np.bincount(slots, weights=idf * tfs * (self.k1 + 1) / norm, minlength=size)
        hits = np.flatnonzero(scores > 0)
        if allow is None and len(hits) > k:
            # Everything scoring at least the k-th best: ties at the cut stay together.
            kth = np.partition(scores[hits], len(hits) - k)[len(hits) - k]
            hits = hits[scores[hits] >= kth]
        order = hits[np.argsort(-scores[hits], kind="stable")]
        out: list[tuple[str, float]] = []
        for slot in order.tolist():
            item_id = self._ids[slot]
            if item_id is None or (allow is not None and not allow(item_id)):
                continue
            score = float(scores[slot])
            if len(out) >= k and score < out[-1][1]:
                break
            out.append((item_id, score))
        # Ties by id, not by slot: slots follow insertion order, which a rebuild changes.
        out.sort(key=lambda hit: (-hit[1], hit[0]))
        return out[:k]
