"""Routing label files: JSONL rows of `prompt`, `weak_score`, `strong_score` (see data/routing)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_DATA = Path(__file__).resolve().parents[1] / "data" / "routing"
DEFAULT_TRAIN_FILES = (REPO_DATA / "gsm8k.train.jsonl", REPO_DATA / "mmlu.train.jsonl")


@dataclass(frozen=True)
class LabelledSet:
    """Prompts with the quality each of two tiers reached on them."""

    prompts: tuple[str, ...]
    weak: np.ndarray
    strong: np.ndarray
    sources: tuple[str, ...]
    ids: tuple[str | int, ...] = ()
    """Each row's `id` (its line number where the file has none); empty when not read."""

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, idx: Sequence[int] | np.ndarray) -> LabelledSet:
        ix = np.asarray(idx, dtype=np.int64)
        return LabelledSet(
            tuple(self.prompts[i] for i in ix),
            self.weak[ix],
            self.strong[ix],
            tuple(self.sources[i] for i in ix),
            tuple(self.ids[i] for i in ix) if self.ids else (),
        )

    def normalised(self) -> tuple[np.ndarray, np.ndarray]:
        """Scores rescaled to [0, 1]: 0/1 labels stay, graded sets (e.g. 1-10) are min-max
        scaled over both tiers' scores together."""
        both = np.concatenate([self.weak, self.strong])
        lo, hi = float(both.min(initial=0.0)), float(both.max(initial=1.0))
        if lo >= 0.0 and hi <= 1.0:
            return self.weak, self.strong
        lo = float(both.min())
        span = hi - lo if hi > lo else 1.0
        return (self.weak - lo) / span, (self.strong - lo) / span


def parse_rows(lines: Iterable[str], origin: str) -> LabelledSet:
    prompts: list[str] = []
    weak: list[float] = []
    strong: list[float] = []
    sources: list[str] = []
    ids: list[str | int] = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            prompt, w, s = row["prompt"], float(row["weak_score"]), float(row["strong_score"])
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{origin}:{n}: not a routing row ({err!r})") from None
        if not isinstance(prompt, str):
            raise ValueError(f"{origin}:{n}: prompt must be a string")
        prompts.append(prompt)
        weak.append(w)
        strong.append(s)
        sources.append(str(row.get("source", origin)))
        ids.append(row["id"] if isinstance(row.get("id"), (str, int)) else n)
    return LabelledSet(
        tuple(prompts),
        np.asarray(weak, dtype=np.float64),
        np.asarray(strong, dtype=np.float64),
        tuple(sources),
        tuple(ids),
    )


def load_files(paths: Sequence[Path]) -> LabelledSet:
    sets = [parse_rows(p.read_text(encoding="utf-8").split("\n"), str(p)) for p in paths]
    return LabelledSet(
        tuple(p for s in sets for p in s.prompts),
        np.concatenate([s.weak for s in sets]) if sets else np.zeros(0),
        np.concatenate([s.strong for s in sets]) if sets else np.zeros(0),
        tuple(x for s in sets for x in s.sources),
        tuple(i for s in sets for i in s.ids),
    )
