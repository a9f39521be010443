"""The one embedding-model class (`cluster.embedding.SentenceEmbedder`): the router's full
MiniLM and RAG's in-process model are the same object, configured differently (real
all-MiniLM-L6-v2 from its PyPI package; no Ray)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from tierline.cluster.embedding import MINILM_DIM, MINILM_NAME, Embedder, SentenceEmbedder
from tierline.rag.embed import LocalEmbedder
from tierline.router.embedders import open_embedder
from tierline.router.embedding import ROUTER_MAX_SEQ_TOKENS


@pytest.fixture(scope="module")
def rag_model() -> SentenceEmbedder:
    return SentenceEmbedder(MINILM_NAME).start()


def test_unstarted_model_says_so() -> None:
    with pytest.raises(RuntimeError, match="start"):
        SentenceEmbedder().embed(["hello"])


def test_vectors_are_unit_rows_and_empty_input_is_empty(rag_model: SentenceEmbedder) -> None:
    vecs = rag_model.embed(["the cat sat", "quarterly revenue grew"])
    assert vecs.shape == (2, MINILM_DIM) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert rag_model.embed([]).shape == (0, MINILM_DIM)
    assert rag_model.count_tokens(["the cat sat"]) == 5  # [CLS] the cat sat [SEP]


def test_router_and_rag_get_the_same_vectors_for_short_texts(
    rag_model: SentenceEmbedder,
) -> None:
    router = open_embedder(MINILM_NAME, threads=1)
    assert isinstance(router, SentenceEmbedder)
    texts = ["What is 17 times 23?", "Summarise the refund policy for me."]
    assert np.allclose(router.embed(texts), rag_model.embed(texts), atol=1e-5)


def test_clipping_a_long_prompt_keeps_its_embedding() -> None:
    router = open_embedder(MINILM_NAME)
    assert isinstance(router, SentenceEmbedder)
    long = " ".join(f"word{i} alpha beta" for i in range(2000))
    assert len(router.clip(long)) < len(long)  # the tokenizer sees a prefix only
    unclipped = SentenceEmbedder(max_seq_tokens=ROUTER_MAX_SEQ_TOKENS).start()
    unclipped.clip = lambda text: text  # type: ignore[method-assign]
    assert np.allclose(router.embed([long]), unclipped.embed([long]), atol=1e-5)


def test_an_in_process_model_serves_as_an_embedding_service(rag_model: Embedder) -> None:
    got = asyncio.run(LocalEmbedder(rag_model).embed(["a", "b", "c"]))
    assert got.vectors.shape == (3, MINILM_DIM) and got.tokens is None
