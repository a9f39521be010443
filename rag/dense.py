"""The in-process dense index: HNSW (hnswlib) over normalised embeddings, cosine by inner product.

Chunk ids map to integer labels; deletes mark labels deleted, and the index grows as
chunks arrive. It is a cache of the durable store, rebuilt from it at start-up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


class DenseIndex:
    def __init__(self, dim: int, m: int = 16, ef_construction: int = 200, ef: int = 128) -> None:
        self.dim = dim
        self.m = m
        self.ef_construction = ef_construction
        self.ef = ef
        self._index: object | None = None
        self._capacity = 0
        self._labels: dict[str, int] = {}
        self._ids: dict[int, str] = {}
        self._next = 0

    def __len__(self) -> int:
        return len(self._labels)

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

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        if not ids:
            return
        self.remove(ids)
        index = self._ensure(len(ids))
        labels = np.arange(self._next, self._next + len(ids), dtype=np.int64)
        self._next += len(ids)
        index.add_items(np.asarray(vectors, dtype=np.float32), labels)  # type: ignore[attr-defined]
        for item_id, label in zip(ids, labels.tolist(), strict=True):
            self._labels[item_id] = label
            self._ids[label] = item_id

    def remove(self, ids: Sequence[str]) -> None:
        for item_id in ids:
            label = self._labels.pop(item_id, None)
            if label is not None:
                del self._ids[label]
                self._index.mark_deleted(label)  # type: ignore[union-attr]

    def search(
        self, vector: np.ndarray, k: int, allow: Callable[[str], bool] | None = None
    ) -> list[tuple[str, float]]:
        if not self._labels or k < 1:
            return []
        k = min(k, len(self._labels))
        label_filter = None
        if allow is not None:
            ids = self._ids

            def label_filter(label: int) -> bool:
                item_id = ids.get(label)
                return item_id is not None and allow(item_id)

        ef = max(self.ef, k)
        self._index.set_ef(ef)  # type: ignore[union-attr]
        try:
            labels, dists = self._index.knn_query(  # type: ignore[union-attr]
                np.asarray(vector, dtype=np.float32).reshape(1, -1), k=k, filter=label_filter
            )
        except RuntimeError:  # fewer than k items pass the filter
            return self._exact(vector, k, allow)
        return [
            (self._ids[int(lab)], 1.0 - float(d))
            for lab, d in zip(labels[0], dists[0], strict=True)
            if int(lab) in self._ids
        ]

    def _exact(
        self, vector: np.ndarray, k: int, allow: Callable[[str], bool] | None
    ) -> list[tuple[str, float]]:
        ids = [i for i in self._labels if allow is None or allow(i)]
        if not ids:
            return []
        labels = np.array([self._labels[i] for i in ids], dtype=np.int64)
        mat = np.asarray(self._index.get_items(labels), dtype=np.float32)  # type: ignore[union-attr]
        scores = mat @ np.asarray(vector, dtype=np.float32)
        top = np.argsort(-scores)[:k]
        return [(ids[i], float(scores[i])) for i in top]
