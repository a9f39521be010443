"""MiniLM distilled into a static table: pooling, the on-disk cache, the probe check, and
the real table against the shipped head (no Ray)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tierline.router import static_embedding as se
from tierline.router.embedders import open_embedder
from tierline.router.embedding import (
    PROBE_TEXT,
    HashingEmbedder,
    check_probe,
    probe,
)
from tierline.router.head import Head
from tierline.router.scorer import SHIPPED_ARTIFACT


def test_pool_is_the_normalised_mean_of_the_first_pieces() -> None:
    table = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]], dtype=np.float32)
    out = se.pool(table, [[0, 1], [2], [], [0, 0, 1, 1, 1]], max_tokens=2)
    np.testing.assert_allclose(out[0], [2**-0.5, 2**-0.5], rtol=1e-6)
    np.testing.assert_allclose(out[1], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(out[2], [0.0, 0.0])  # no pieces: zeros, not NaN
    np.testing.assert_allclose(out[3], [1.0, 0.0], rtol=1e-6)  # only the first two pieces


def test_clip_keeps_short_text_and_cuts_long_text_past_the_pooled_pieces() -> None:
    emb = se.StaticMiniLMEmbedder(max_tokens=4)
    assert emb.clip("short") == "short"
    long = "word " * 1000
    clipped = emb.clip(long)
    assert long.startswith(clipped) and 4 * 8 < len(clipped) < len(long)


def test_embed_before_start_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="start"):
        se.StaticMiniLMEmbedder().embed(["hi"])


def test_table_is_distilled_once_and_then_read_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights v1")
    calls: list[Path] = []

    def fake_distill(model_dir: Path) -> np.ndarray:
        calls.append(model_dir)
        return np.full((5, se.MINILM_DIM), float(len(calls)), dtype=np.float32)

    monkeypatch.setattr(se, "distill", fake_distill)
    cache = tmp_path / "cache"
    first = se.load_or_distill(model, se.table_path(model, cache))
    second = se.load_or_distill(model, se.table_path(model, cache))
    assert len(calls) == 1
    np.testing.assert_array_equal(first, second)
    assert [p.name for p in cache.iterdir()] == [se.table_path(model, cache).name]

    # Other weights are another key: distilled again, the old table left alone.
    (model / "model.safetensors").write_bytes(b"weights v2")
    third = se.load_or_distill(model, se.table_path(model, cache))
    assert len(calls) == 2 and float(third[0, 0]) == 2.0
    assert len(list(cache.iterdir())) == 2

    # A table of the wrong shape in the cache is replaced, not used.
    np.save(se.table_path(model, cache), np.zeros((3, 7), dtype=np.float32))
    assert se.load_or_distill(model, se.table_path(model, cache)).shape == (5, se.MINILM_DIM)
    assert len(calls) == 3


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(se.CACHE_ENV, str(tmp_path))
    assert se.cache_dir() == tmp_path
    monkeypatch.delenv(se.CACHE_ENV)
    assert se.cache_dir() == Path.home() / ".cache" / "tierline"


def test_probe_check_refuses_other_embeddings() -> None:
    emb = HashingEmbedder()
    expected = probe(emb)
    check_probe(emb, expected)  # the same embeddings pass
    shifted = [v + 0.01 for v in expected]
    with pytest.raises(ValueError, match="retrain"):
        check_probe(emb, shifted)
    with pytest.raises(ValueError, match="retrain"):
        check_probe(emb, expected[:10])


def test_unknown_embedder_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown embedder"):
        open_embedder("word2vec")


@pytest.fixture(scope="module")
def real() -> se.StaticMiniLMEmbedder:
    """The real table (built by `make models`, distilled here if missing)."""
    return se.StaticMiniLMEmbedder().start()


def test_shipped_head_names_this_embedder_and_its_probe_matches(
    real: se.StaticMiniLMEmbedder,
) -> None:
    head = Head.load(SHIPPED_ARTIFACT)
    assert head.embedder == se.STATIC_NAME
    check_probe(real, head.meta["probe"])


def test_cached_rows_are_minilm_outputs(real: se.StaticMiniLMEmbedder) -> None:
    ids = real.tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"][:6]
    fresh = se.distill(se.minilm_path(), ids)
    assert real._table is not None
    np.testing.assert_allclose(real._table[ids], fresh, atol=1e-4)


def test_related_prompts_are_closer_than_unrelated_ones(real: se.StaticMiniLMEmbedder) -> None:
    a, b, c = real.embed(
        [
            "Solve for x: 3x + 7 = 22.",
            "Find the value of y if 5y - 4 = 31.",
            "Translate 'good night' into French.",
        ]
    )
    assert float(a @ b) > float(a @ c)
    np.testing.assert_allclose(np.linalg.norm([a, b, c], axis=1), 1.0, rtol=1e-5)


def test_cached_embeddings_miss_when_the_embedder_changes(tmp_path: Path) -> None:
    from tierline.router.embedding import cached_embeddings

    class Tagged(HashingEmbedder):
        def __init__(self, tag: str, scale: float) -> None:
            super().__init__(dim=8)
            self.cache_tag, self.scale = tag, scale

        def embed(self, texts):  # type: ignore[no-untyped-def]
            return super().embed(texts) * self.scale

    texts = ["one prompt", "another prompt"]
    first = cached_embeddings(Tagged("v1", 1.0), texts, tmp_path)
    again = cached_embeddings(Tagged("v1", -1.0), texts, tmp_path)  # same tag: the cache
    np.testing.assert_array_equal(first, again)
    other = cached_embeddings(Tagged("v2", -1.0), texts, tmp_path)  # new tag: re-embedded
    np.testing.assert_array_equal(other, -first)


def test_real_embedder_tags_its_cache_with_the_table(real: se.StaticMiniLMEmbedder) -> None:
    assert real.cache_tag == se.table_path(se.minilm_path()).stem
    assert f"-v{se.DISTILL_VERSION}-" in real.cache_tag
