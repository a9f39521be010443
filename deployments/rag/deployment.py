"""The RAG deployments: embeddings (batched MiniLM on CPU, or a vLLM engine) and the store.

Both are thin: `EmbeddingServer` batches concurrent requests into one model call,
`RagServer` runs `rag.service.RagCore` over the durable store: one replica when the store
is a Milvus Lite file (one owner, an in-process index), `rag.replicas` of them when it is
a Milvus server (Milvus searches; the replicas hold no index). Errors cross the handle as
plain dicts, so callers get the same `RagError` (status, message, code) the core raised.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from ray import serve
from ray.serve.deployment import Application
from ray.serve.handle import DeploymentHandle
from tierline.cluster.embedding import SentenceEmbedder
from tierline.cluster.spec import ClusterSpec, RagSpec
from tierline.deployments.gateway.embeddings import HandleEmbedder
from tierline.deployments.heap import settle
from tierline.deployments.rag.env import chunk_store, rag_actor_options
from tierline.rag.embed import Embedded, TokenizerOffsets
from tierline.rag.records import RagError
from tierline.rag.service import RagCore, RagSettings
from tierline.rag.store import is_remote
from tierline.rag.work import Tally, metering, off_loop, report

logger = logging.getLogger("tierline.rag")

EMBEDDINGS_DEPLOYMENT = "embeddings"
RAG_DEPLOYMENT = "rag"
OPS = (
    "create_collection",
    "delete_collection",
    "list_collections",
    "ingest",
    "delete_document",
    "search",
    "search_counted",
)


def settings_of(spec: RagSpec) -> RagSettings:
    return RagSettings(
        dim=spec.embedding_dim,
        chunk_tokens=spec.chunk_tokens,
        chunk_overlap_tokens=spec.chunk_overlap_tokens,
        max_document_bytes=spec.max_document_bytes,
        max_documents_per_request=spec.max_documents_per_request,
        max_collections_per_tenant=spec.max_collections_per_tenant,
        max_top_k=spec.max_top_k,
        max_query_chars=spec.max_query_chars,
        rrf_k=spec.rrf_k,
        fusion=spec.fusion,
        bm25_weight=spec.bm25_weight,
        bm25_weight_rare=spec.bm25_weight_rare,
        rare_term_max_chunks=spec.rare_term_max_chunks,
        bm25_margin=spec.bm25_margin,
        bm25_share_confident=spec.bm25_share_confident,
        bm25_share_unsure=spec.bm25_share_unsure,
        hnsw_m=spec.hnsw_m,
        hnsw_ef_construction=spec.hnsw_ef_construction,
        hnsw_ef_search=spec.hnsw_ef_search,
        exact_search_max_vectors=spec.exact_search_max_vectors,
        legacy_tenant=spec.legacy_tenant,
    )


def with_absolute_uri(spec: RagSpec, base: Path) -> RagSpec:
    """A relative Milvus Lite path resolved where the graph is built, not in a replica."""
    if is_remote(spec.uri) or Path(spec.uri).expanduser().is_absolute():
        return spec
    return spec.model_copy(update={"uri": str((base / spec.uri).resolve())})


def _warm_up(
    warm: asyncio.Future[Any] | None, start: Callable[[], Awaitable[Any]]
) -> asyncio.Future[Any]:
    """Serve's first health check starts loading in the background (the replica's start
    hook); a failed load fails the next check, so Serve replaces the replica."""
    if warm is None:
        return asyncio.ensure_future(start())
    if warm.done() and not warm.cancelled() and warm.exception() is not None:
        raise RuntimeError(f"start-up failed: {warm.exception()!r}")
    return warm


class EmbeddingModel(Protocol):
    """What an embeddings replica runs: sentence-transformers, or a vLLM engine."""

    @property
    def dim(self) -> int: ...

    async def start(self) -> None: ...

    async def encode_counted(self, texts: Sequence[str]) -> tuple[np.ndarray, list[int]]: ...


class ThreadedSentenceTransformer:
    """`EmbeddingModel` over a sentence-transformers model, off the event loop."""

    def __init__(self, model: SentenceEmbedder) -> None:
        self.model = model

    @property
    def dim(self) -> int:
        return self.model.dim

    async def start(self) -> None:
        await asyncio.to_thread(self.model.start)

    async def encode_counted(self, texts: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        m = self.model
        return await asyncio.to_thread(
            lambda: (m.embed(texts), [m.count_tokens([t]) for t in texts])
        )


def embedding_model(spec: RagSpec) -> EmbeddingModel:
    if spec.embedding_engine == "vllm":
        from tierline.rag.vllm_embed import VllmEmbeddingModel

        return VllmEmbeddingModel(spec.embedding_model, spec.embedding_engine_kwargs)
    return ThreadedSentenceTransformer(
        SentenceEmbedder(spec.embedding_model, spec.embedding_device)
    )


class EmbeddingServer:
    """Embeds texts; concurrent calls are batched into one model call."""

    def __init__(self, rag_spec: dict[str, Any]) -> None:
        self._spec = RagSpec.model_validate(rag_spec)
        self._model: EmbeddingModel | None = None
        self._lock = asyncio.Lock()
        self._warm: asyncio.Future[Any] | None = None

    async def _started(self) -> EmbeddingModel:
        async with self._lock:
            if self._model is None:
                s = self._spec
                model = embedding_model(s)
                await model.start()
                if model.dim != s.embedding_dim:
                    raise RuntimeError(
                        f"{s.embedding_model} makes {model.dim}-dim vectors; the spec's "
                        f"rag.embedding_dim is {s.embedding_dim}"
                    )
                self._embed_batch.set_max_batch_size(s.embedding_max_batch)  # type: ignore[attr-defined]
                self._embed_batch.set_batch_wait_timeout_s(s.embedding_batch_wait_ms / 1000)  # type: ignore[attr-defined]
                self._model = model
        return self._model

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def _embed_batch(self, requests: list[list[str]]) -> list[tuple[np.ndarray, int]]:
        model = await self._started()
        vectors, tokens = await model.encode_counted([t for texts in requests for t in texts])
        out, at = [], 0
        for texts in requests:
            n = len(texts)
            out.append((vectors[at : at + n], sum(tokens[at : at + n])))
            at += n
        return out

    async def embed(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """Unit vectors for `texts` and the number of model tokens they took."""
        await self._started()
        return await self._embed_batch(texts)

    async def dim(self) -> int:
        return (await self._started()).dim

    async def check_health(self) -> None:
        self._warm = _warm_up(self._warm, self._started)


def _error(err: RagError) -> dict[str, Any]:
    return {
        "error": {
            "status": err.status,
            "message": err.message,
            "code": err.code,
            "param": err.param,
        }
    }


class RagServer:
    """A RAG replica: runs `RagCore` over the store and answers `call(op, ...)`."""

    def __init__(self, rag_spec: dict[str, Any], embeddings: DeploymentHandle) -> None:
        self._spec = RagSpec.model_validate(rag_spec)
        self._embeddings = embeddings
        self._core: RagCore | None = None
        self._lock = asyncio.Lock()
        self._warm: asyncio.Future[Any] | None = None

    async def _started(self) -> RagCore:
        async with self._lock:
            if self._core is None:
                s = self._spec
                tokenize = TokenizerOffsets(s.embedding_model)
                await asyncio.to_thread(tokenize.start)
                store = chunk_store(s, os.environ)
                core = RagCore(settings_of(s), store, HandleEmbedder(self._embeddings), tokenize)
                await core.start()
                owned = await asyncio.to_thread(core.list_collections, "", True)
                logger.info("RAG store %s open: %d collections", s.uri, len(owned))
                self._core = core
                settle()  # the store, tokenizer and index live as long as the replica
        return self._core

    async def call(self, op: str, *args: Any) -> dict[str, Any]:
        if op not in OPS:
            return _error(RagError(400, f"unknown RAG operation {op!r}"))
        core = await self._started()
        tally = Tally()  # the call's thread work, charged by the gateway to its tenant
        try:
            with metering(tally):
                if op == "list_collections":
                    ok = await off_loop(core.list_collections, *args)
                else:
                    ok = await getattr(core, op)(*args)
        except RagError as err:
            return {**_error(err), "cpu_s": tally.cpu_s}
        return {"ok": ok, "cpu_s": tally.cpu_s}

    async def pid(self) -> int:
        import os

        return os.getpid()

    async def check_health(self) -> None:
        self._warm = _warm_up(self._warm, self._started)


class ServeRagClient:
    """The gateway's `RagClient` over the RAG and embeddings deployment handles."""

    def __init__(self, rag: DeploymentHandle, embeddings: DeploymentHandle, model: str) -> None:
        self._rag = rag
        self._embedder = HandleEmbedder(embeddings)
        self.model = model

    async def _call(self, op: str, *args: Any) -> Any:
        out = await self._rag.call.remote(op, *args)
        # the RAG replica's thread work, to this request (done in another process)
        report(out.get("cpu_s", 0.0), local=False)
        if "error" in out:
            e = out["error"]
            raise RagError(e["status"], e["message"], e["code"], e["param"])
        return out["ok"]

    async def embed(self, texts: list[str]) -> Embedded:
        return await self._embedder.embed(texts)

    async def create_collection(self, tenant: str, name: str) -> dict[str, Any]:
        return await self._call("create_collection", tenant, name)

    async def delete_collection(self, tenant: str, name: str) -> dict[str, Any]:
        return await self._call("delete_collection", tenant, name)

    async def list_collections(
        self, tenant: str, all_tenants: bool = False
    ) -> list[dict[str, Any]]:
        return await self._call("list_collections", tenant, all_tenants)

    async def ingest(
        self, tenant: str, name: str, documents: list[dict[str, Any]]
    ) -> dict[str, Any]:
        return await self._call("ingest", tenant, name, documents)

    async def delete_document(self, tenant: str, name: str, document_id: str) -> dict[str, Any]:
        return await self._call("delete_document", tenant, name, document_id)

    async def search(
        self, tenant: str, name: str, query: Any, top_k: Any, filter: Any
    ) -> list[dict[str, Any]]:
        return await self._call("search", tenant, name, query, top_k, filter)

    async def search_counted(
        self, tenant: str, name: str, query: Any, top_k: Any, filter: Any
    ) -> tuple[list[dict[str, Any]], int | None]:
        hits, tokens = await self._call("search_counted", tenant, name, query, top_k, filter)
        return hits, tokens


def embedding_actor_options(spec: RagSpec) -> dict[str, Any]:
    options: dict[str, Any] = {"num_cpus": spec.embedding_cpus}
    if spec.embedding_gpus:
        options["num_gpus"] = spec.embedding_gpus
    if spec.embedding_env_vars:
        options["runtime_env"] = {"env_vars": dict(spec.embedding_env_vars)}
    return options


def build_embeddings_app(spec: ClusterSpec) -> Application:
    """The embeddings deployment (rag.embedding_*): RAG's embedder, and /v1/embeddings'
    whenever the spec serves embeddings (`ClusterSpec.serves_embeddings`)."""
    rag_spec = spec.rag
    return serve.deployment(
        name=EMBEDDINGS_DEPLOYMENT,
        num_replicas=rag_spec.embedding_replicas,
        max_ongoing_requests=256,
        ray_actor_options=embedding_actor_options(rag_spec),
    )(EmbeddingServer).bind(rag_spec.model_dump(mode="json"))


def build_rag_apps(
    spec: ClusterSpec, base: Path | None = None, environ: Mapping[str, str] | None = None
) -> tuple[Application, Application]:
    """The RAG and embeddings applications to bind into the gateway (spec.rag.enabled).

    The RAG replica goes where `TIERLINE_RAG_STORE_RESOURCE` says (`rag_env`)."""
    rag_spec = with_absolute_uri(spec.rag, base or Path.cwd())
    data = rag_spec.model_dump(mode="json")
    embeddings = build_embeddings_app(spec)
    rag = serve.deployment(
        name=RAG_DEPLOYMENT,
        # A Milvus Lite file allows one owner; a server any number (RagSpec checks this)
        num_replicas=rag_spec.replicas,
        max_ongoing_requests=256,
        ray_actor_options=rag_actor_options(os.environ if environ is None else environ),
        health_check_period_s=10,
    )(RagServer).bind(data, embeddings)
    return rag, embeddings
