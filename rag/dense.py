"""The in-process dense index: HNSW (hnswlib) over normalised embeddings, cosine by inner product.

Small indexes are searched exactly: while at most `exact_max` distinct vectors were ever
added, a numpy matrix of them is kept next to the graph and scanned (about a millisecond
at 10k x 384 here, and exact, so independent of insertion order); past that the matrix is
dropped and HNSW answers. HNSW is approximate and its graph depends on insertion order:
near-duplicate vectors (boilerplate chunks differing in a word) can leave a point
unreachable in one build and not in another.

Chunks with the same key (the chunk text, or a hash of the vector's bytes) share one HNSW label:
HNSW graphs lose recall badly when thousands of identical vectors crowd the neighbour
lists (boilerplate chunks do this), and which items they hide depends on the insertion
order, so a rebuild from the store (another order) ranked differently before this.
Ties are broken by chunk id, so results do not depend on insertion order. Deletes mark a
label deleted once no chunk uses it; the index grows as chunks arrive. It is a cache of
the durable store, rebuilt from it at start-up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Sequence

import numpy as np


class DenseIndex:
    def __init__(
        self,
        dim: int,
        m: int = 16,
        ef_construction: int = 200,
        ef: int = 128,
        exact_max: int = 10_000,
    ) -> None:
        self.dim = dim
        self.exact_max = exact_max
        self._matrix: np.ndarray | None = np.zeros((0, dim), dtype=np.float32)
        self._alive = np.zeros(0, dtype=bool)
        self.m = m
        self.ef_construction = ef_construction
        self.ef = ef
        self._index: object | None = None
        self._capacity = 0
        self._labels: dict[str, int] = {}  # chunk id -> label
        self._members: dict[int, set[str]] = {}  # live label -> chunk ids sharing it
        self._key_label: dict[Hashable, int] = {}
        self._label_key: dict[int, Hashable] = {}
        self._next = 0

    def __len__(self) -> int:
        return len(self._labels)

    @property
    def distinct(self) -> int:
        """Live HNSW labels (distinct keys)."""
        return len(self._members)

    def _ensure(self, extra: int) -> object:
        import hnswlib

        need = self._next + extra
        if self._index is None:
            self._capacity = max(1024, need * 2)
            index = hnswlib.Index(space="ip", dim=self.dim)
            index.init_index(
                max_elements=self._capacity, M=self.m, ef_construction=self.ef_construction
            )
            index.set_ef(self.ef)
            self._index = index
        elif need > self._capacity:
            self._capacity = max(need, self._capacity * 2)
            self._index.resize_index(self._capacity)  # type: ignore[attr-defined]
        return self._index

    def add(
        self, ids: Sequence[str], vectors: np.ndarray, keys: Sequence[Hashable] | None = None
    ) -> None:
        """Index `ids`; items with equal `keys` (default: equal vectors) share one label."""
        if not ids:
            return
        self.remove(ids)
        vecs = np.asarray(vectors, dtype=np.float32)
        if keys is None:
            keys = [hashlib.blake2b(v.tobytes(), digest_size=16).digest() for v in vecs]
        new_rows: list[int] = []
        new_labels: list[int] = []
        for row, (item_id, key) in enumerate(zip(ids, keys, strict=True)):
            label = self._key_label.get(key)
            if label is None:
                label = self._next + len(new_labels)
                self._key_label[key] = label
                self._label_key[label] = key
                self._members[label] = set()
                new_rows.append(row)
                new_labels.append(label)
            self._members[label].add(item_id)
            self._labels[item_id] = label
        if new_labels:
            index = self._ensure(len(new_labels))
            self._next += len(new_labels)
            self._grow_matrix(vecs[new_rows])
            index.add_items(vecs[new_rows], np.asarray(new_labels, dtype=np.int64))  # type: ignore[attr-defined]

    def _grow_matrix(self, rows: np.ndarray) -> None:
        if self._matrix is None:
            return
        if self._next > self.exact_max:  # from now on HNSW alone answers
            self._matrix, self._alive = None, np.zeros(0, dtype=bool)
            return
        self._matrix = np.concatenate([self._matrix, rows])
        self._alive = np.concatenate([self._alive, np.ones(len(rows), dtype=bool)])

    @property
    def exact(self) -> bool:
        """Whether searches scan every vector (small index) rather than the HNSW graph."""
        return self._matrix is not None

    def remove(self, ids: Sequence[str]) -> None:
        for item_id in ids:
            label = self._labels.pop(item_id, None)
            if label is None:
                continue
            members = self._members[label]
            members.discard(item_id)
            if not members:
                del self._members[label]
                del self._key_label[self._label_key.pop(label)]
                if self._matrix is not None:
                    self._alive[label] = False
                self._index.mark_deleted(label)  # type: ignore[union-attr]

    def _expand(
        self, scored: Sequence[tuple[int, float]], k: int, allow: Callable[[str], bool] | None
    ) -> list[tuple[str, float]]:
        out = [
            (item_id, score)
            for label, score in scored
            for item_id in self._members.get(label, ())
            if allow is None or allow(item_id)
        ]
        out.sort(key=lambda hit: (-hit[1], hit[0]))
        return out[:k]

    def search(
        self, vector: np.ndarray, k: int, allow: Callable[[str], bool] | None = None
    ) -> list[tuple[str, float]]:
        if not self._members or k < 1:
            return []
        if self._matrix is not None:
            return self._scan(vector, k, allow)
        n = min(k, len(self._members))
        label_filter = None
        if allow is not None:
            members = self._members

            def label_filter(label: int) -> bool:
                return any(allow(i) for i in members.get(label, ()))

        self._index.set_ef(max(self.ef, n))  # type: ignore[union-attr]
        try:
            labels, dists = self._index.knn_query(  # type: ignore[union-attr]
                np.asarray(vector, dtype=np.float32).reshape(1, -1), k=n, filter=label_filter
            )
        except RuntimeError:  # fewer than n labels pass the filter
            return self._exact(vector, k, allow)
        scored = [(int(lab), 1.0 - float(d)) for lab, d in zip(labels[0], dists[0], strict=True)]
        return self._expand(scored, k, allow)

    def _scan(
        self, vector: np.ndarray, k: int, allow: Callable[[str], bool] | None
    ) -> list[tuple[str, float]]:
        assert self._matrix is not None
        scores = self._matrix @ np.asarray(vector, dtype=np.float32)
        keep = self._alive.copy()
        if allow is not None:
            for label in np.flatnonzero(keep).tolist():
                keep[label] = any(allow(i) for i in self._members[label])
        labels = np.flatnonzero(keep)
        if len(labels) > k:  # every label scoring at least the k-th best (ties stay)
            kth = np.partition(scores[labels], len(labels) - k)[len(labels) - k]
            labels = labels[scores[labels] >= kth]
        scored = list(zip(labels.tolist(), scores[labels].tolist(), strict=True))
        return self._expand(scored, k, allow)

    def _exact(
        self, vector: np.ndarray, k: int, allow: Callable[[str], bool] | None
    ) -> list[tuple[str, float]]:
        labels = [
            lab
            for lab, members in self._members.items()
            if allow is None or any(allow(i) for i in members)
        ]
        if not labels:
            return []
        rows = self._index.get_items(np.asarray(labels, dtype=np.int64))  # type: ignore[union-attr]
        mat = np.asarray(rows, dtype=np.float32)
        scores = mat @ np.asarray(vector, dtype=np.float32)
        return self._expand(list(zip(labels, scores.tolist(), strict=True)), k, allow)
