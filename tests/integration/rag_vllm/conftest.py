"""A local cluster whose embeddings deployment runs MiniLM on a vLLM engine (the pooling
runner) instead of sentence-transformers (`rag.embedding_engine: vllm`), and whose store is
a Milvus server on loopback searched by two RAG replicas (`rag.replicas: 2`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.conftest import milvus_lite_server
from tests.integration.rag.conftest import RagCluster, rag_spec, running

ENGINE_KWARGS = {"enforce_eager": True, "dtype": "float32", "max_model_len": 256}


@pytest.fixture(scope="package")
def vllm_rag_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RagCluster]:
    spec = rag_spec(tmp_path_factory.mktemp("rag-vllm-data"))
    with milvus_lite_server(tmp_path_factory.mktemp("milvus-server") / "data") as uri:
        rag = spec.rag.model_copy(
            update={
                "embedding_engine": "vllm",
                "embedding_engine_kwargs": ENGINE_KWARGS,
                "embedding_env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"},
                "uri": uri,
                "replicas": 2,
            }
        )
        with running(spec.model_copy(update={"rag": rag})) as cluster:
            yield cluster
