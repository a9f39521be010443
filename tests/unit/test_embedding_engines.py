"""Choosing what runs the embedding model (sentence-transformers or a vLLM engine): the
spec's checks, the replica's options, and vector normalisation (no Ray, no engine)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from pydantic import ValidationError
from tierline.cluster.spec import RagSpec
from tierline.deployments.rag.deployment import (
    ThreadedSentenceTransformer,
    embedding_actor_options,
    embedding_model,
)
from tierline.rag.vllm_embed import VllmEmbeddingModel, unit_rows


def test_default_is_sentence_transformers_on_cpu() -> None:
    spec = RagSpec()
    assert spec.embedding_engine == "sentence-transformers"
    assert isinstance(embedding_model(spec), ThreadedSentenceTransformer)
    assert embedding_actor_options(spec) == {"num_cpus": 1.0}


def test_vllm_engine_gets_its_kwargs_gpus_and_environment() -> None:
    spec = RagSpec(
        embedding_engine="vllm",
        embedding_model="BAAI/bge-small-en-v1.5",
        embedding_engine_kwargs={"max_model_len": 512, "gpu_memory_utilization": 0.2},
        embedding_gpus=0.25,
        embedding_env_vars={"VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    model = embedding_model(spec)
    assert isinstance(model, VllmEmbeddingModel)
    assert model.name == "BAAI/bge-small-en-v1.5"
    assert model.engine_kwargs == {"max_model_len": 512, "gpu_memory_utilization": 0.2}
    assert embedding_actor_options(spec) == {
        "num_cpus": 1.0,
        "num_gpus": 0.25,
        "runtime_env": {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}},
    }


@pytest.mark.parametrize("key", ["model", "runner"])
def test_engine_kwargs_may_not_set_what_tierline_sets(key: str) -> None:
    with pytest.raises(ValidationError, match=key):
        RagSpec(embedding_engine="vllm", embedding_engine_kwargs={key: "x"})


def test_engine_kwargs_without_the_vllm_engine_are_refused() -> None:
    with pytest.raises(ValidationError, match="embedding_engine: vllm"):
        RagSpec(embedding_engine_kwargs={"max_model_len": 256})


def test_unknown_engine_is_refused() -> None:
    with pytest.raises(ValidationError):
        RagSpec(embedding_engine="onnx")  # type: ignore[arg-type]


def test_unit_rows_normalises_and_keeps_zero_rows() -> None:
    out = unit_rows([[3.0, 4.0], np.array([0.0, 0.0]), [0.0, -2.0]])
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]])
    assert out.dtype == np.float32
    assert unit_rows([]).shape == (0, 0)


def test_vllm_model_before_start_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="start"):
        asyncio.run(VllmEmbeddingModel("all-MiniLM-L6-v2").encode_counted(["x"]))
