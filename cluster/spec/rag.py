"""Retrieval: the document store, chunking, search; the embeddings endpoint."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator
from tierline.cluster.spec.base import (
    PositiveInt,
    Price,
    Strict,
)

MILVUS_SERVER_SCHEMES = ("http://", "https://", "tcp://", "grpc://")  # = rag.store.is_remote


class RagSpec(Strict):
    """Retrieval-augmented generation: an embeddings deployment and a RAG store deployment."""

    enabled: bool = Field(False, description="Deploy the embeddings and RAG deployments.")
    uri: str = Field(
        ".tierline/rag/milvus.db",
        min_length=1,
        description="Milvus Lite data path (relative to the working directory) or a Milvus "
        "server URI (http://host:19530).",
    )
    token: str | None = Field(None, description="Milvus server token (user:password).")
    replicas: PositiveInt = Field(
        1,
        description="Replicas of the RAG (store) deployment. Above 1 only when uri is a Milvus "
        "server: search then runs in Milvus and replicas hold no index. A local Milvus Lite "
        "file has one owner process and an in-process index, so it takes 1.",
    )
    legacy_tenant: str | None = Field(
        None,
        description="Tenant that takes over collections made before RAG had tenants (tierline's "
        "chunk schema, no tenant prefix): at start-up they are renamed into its namespace. "
        "Unset: they are left untouched and not served.",
    )
    embedding_model: str = Field(
        "all-MiniLM-L6-v2",
        min_length=1,
        description="Embedding model: the packaged all-MiniLM-L6-v2, a local directory, or a "
        "model id (run by embedding_engine).",
    )
    embedding_dim: PositiveInt = Field(384, description="Embedding width of embedding_model.")
    embedding_engine: Literal["sentence-transformers", "vllm"] = Field(
        "sentence-transformers",
        description="What runs embedding_model in each embeddings replica: sentence-transformers, "
        "or a vLLM engine with the pooling runner (GPU hosts; any pooling model vLLM serves).",
    )
    embedding_engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="vLLM engine arguments for embedding_engine vllm (max_model_len, dtype, "
        "enforce_eager, gpu_memory_utilization, ...); model and runner are set by tierline.",
    )
    embedding_device: str = Field(
        "cpu", description="torch device of a sentence-transformers embedding model."
    )
    embedding_replicas: PositiveInt = Field(1, description="Replicas of the embedding deployment.")
    embedding_cpus: float = Field(1.0, gt=0, description="Logical CPUs per embedding replica.")
    embedding_gpus: float = Field(0.0, ge=0, description="GPUs per embedding replica.")
    embedding_env_vars: dict[str, str] = Field(
        default_factory=dict,
        description="Environment of the embeddings replicas, e.g. VLLM_CPU_KVCACHE_SPACE for "
        "a vLLM engine on CPU.",
    )
    embedding_max_batch: PositiveInt = Field(64, description="Texts per batched model call.")
    embedding_batch_wait_ms: float = Field(
        5.0, ge=0, description="How long a batch waits for more concurrent requests."
    )
    chunk_tokens: int = Field(200, ge=16, le=512, description="Chunk size in model tokens.")
    chunk_overlap_tokens: int = Field(40, ge=0, description="Tokens shared by adjacent chunks.")
    max_document_bytes: PositiveInt = Field(5 << 20, description="Larger documents get 413.")
    max_upload_bytes: PositiveInt | None = Field(
        None,
        description="Body limit of the document-upload route (instead of gateway.max_body_bytes); "
        "default 2 x max_document_bytes + 64 KiB, room for JSON escaping and multipart framing.",
    )
    max_file_bytes: PositiveInt | None = Field(
        None,
        description="Largest uploaded file (multipart) the gateway parses; default 2 x "
        "max_document_bytes (a PDF is larger than its text). Larger files get 413.",
    )
    parse_timeout_s: float = Field(
        20.0,
        gt=0,
        le=600,
        description="Wall-clock limit on parsing one uploaded HTML or PDF file (in a worker "
        "process); a file that takes longer gets 422.",
    )
    parse_memory_mib: int = Field(
        1024,
        ge=128,
        description="Address-space limit of the worker process that parses one uploaded file; "
        "a file that needs more gets 413.",
    )
    parse_workers: PositiveInt = Field(
        2, description="Uploaded files parsed at once per gateway replica (one process each)."
    )
    max_documents_per_request: PositiveInt = Field(256, description="Documents per ingest call.")
    max_collections_per_tenant: PositiveInt = Field(
        100,
        description="Collections one tenant may hold; creating one more gets 403 "
        "(`collection_limit_reached`) until the tenant deletes one "
        "(DELETE /v1/rag/collections/{name}).",
    )
    default_top_k: PositiveInt = Field(4, description="Chunks a grounded chat retrieves.")
    max_top_k: PositiveInt = Field(50, description="Upper bound on top_k.")
    max_query_chars: int = Field(
        4096,
        ge=64,
        le=1_048_576,
        description="Longest retrieval query, in characters. A search whose query is longer "
        "gets 400; a grounded chat retrieves for the first this many characters of its last "
        "user message (the model still gets all of it). The embedding model reads only "
        "its first few hundred tokens anyway; the cap bounds the work BM25 and the "
        "embedder's tokenizer do per request.",
    )
    fusion: Literal["confidence", "weighted", "rrf"] = Field(
        "confidence",
        description="How dense and BM25 results are merged: confidence (the two rankings "
        "interleaved, BM25's share of the places read from BM25's own margin on the query: "
        "large when its best document stands far above the next, as for a name or code), "
        "weighted (normalised scores added, BM25's share raised for queries with a rare "
        "term; the default before) or rrf (reciprocal rank fusion). Figures: BENCHMARKS.md, "
        "RAG.",
    )
    bm25_margin: float = Field(
        0.5,
        gt=0,
        le=1,
        description="fusion: confidence. BM25 counts as confident when its best document's "
        "score is at least this fraction above the next document's: (s1 - s2) / s1.",
    )
    bm25_share_confident: float = Field(
        0.8,
        ge=0,
        le=1,
        description="fusion: confidence. BM25's share of the places when it is confident "
        "(0.8: 4 of the first 5); dense has the rest.",
    )
    bm25_share_unsure: float = Field(
        0.4,
        ge=0,
        le=1,
        description="fusion: confidence. BM25's share of the places otherwise (0.4: 2 of 5).",
    )
    bm25_weight: float = Field(0.4, ge=0, le=1, description="BM25's share in weighted fusion.")
    bm25_weight_rare: float = Field(
        0.8,
        ge=0,
        le=1,
        description="BM25's share when a query term occurs in at most rare_term_max_chunks "
        "chunks (names, codes, identifiers).",
    )
    rare_term_max_chunks: PositiveInt = Field(
        3, description="A query term in at most this many chunks counts as rare."
    )
    rrf_k: PositiveInt = Field(60, description="Reciprocal rank fusion constant (fusion: rrf).")
    hnsw_m: int = Field(16, ge=4, le=128, description="HNSW graph degree.")
    hnsw_ef_construction: int = Field(200, ge=16, description="HNSW build-time beam width.")
    hnsw_ef_search: int = Field(
        128,
        ge=8,
        description="HNSW query-time beam width (recall against exact search: BENCHMARKS.md).",
    )
    exact_search_max_vectors: int = Field(
        10_000,
        ge=0,
        description="Collections with at most this many distinct vectors are searched exactly "
        "(a numpy scan) instead of by HNSW.",
    )

    @model_validator(mode="after")
    def _overlap(self) -> RagSpec:
        if self.chunk_overlap_tokens >= self.chunk_tokens:
            raise ValueError("chunk_overlap_tokens must be below chunk_tokens")
        if self.max_upload_bytes is not None and self.max_upload_bytes < self.max_document_bytes:
            raise ValueError(
                f"max_upload_bytes ({self.max_upload_bytes}) is below max_document_bytes "
                f"({self.max_document_bytes}): a document of the allowed size could not be "
                "uploaded"
            )
        taken = sorted({"model", "runner"} & set(self.embedding_engine_kwargs))
        if taken:
            raise ValueError(
                f"embedding_engine_kwargs sets {', '.join(taken)}, which tierline sets itself "
                "(embedding_model, and the pooling runner)"
            )
        if self.embedding_engine_kwargs and self.embedding_engine != "vllm":
            raise ValueError(
                "embedding_engine_kwargs are vLLM engine arguments: set embedding_engine: vllm"
            )
        if self.replicas > 1 and not self.uri.startswith(MILVUS_SERVER_SCHEMES):
            raise ValueError(
                f"replicas is {self.replicas} but uri {self.uri!r} is a local Milvus Lite file: "
                "one process owns such a file and each replica would hold the whole index in "
                "memory. Use replicas: 1, or a Milvus server uri (http://host:19530), where "
                "search runs in Milvus and replicas share it"
            )
        return self

    @property
    def upload_limit_bytes(self) -> int:
        """Body limit of `POST /v1/rag/collections/{name}/documents`."""
        if self.max_upload_bytes is not None:
            return self.max_upload_bytes
        return 2 * self.max_document_bytes + (64 << 10)

    @property
    def file_limit_bytes(self) -> int:
        """Largest uploaded file the gateway parses."""
        return (
            self.max_file_bytes if self.max_file_bytes is not None else 2 * self.max_document_bytes
        )


class EmbeddingsSpec(Strict):
    """`POST /v1/embeddings`: served by the embeddings deployment, which runs the model set
    in `rag` (rag.embedding_model, its engine, replicas and resources) whether or not RAG
    itself is on."""

    enabled: bool = Field(
        False,
        description="Deploy the embeddings deployment and serve /v1/embeddings even when "
        "rag.enabled is off (with RAG on it is always served).",
    )
    served_model_name: str | None = Field(
        None,
        min_length=1,
        description="Model name in /v1/models and answers; default rag.embedding_model.",
    )
    price_per_1m_input_tokens: Price = 0.0
