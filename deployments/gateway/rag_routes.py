"""RAG over HTTP: collections, documents, search, and grounded chat (`/v1/embeddings`:
`deployments.gateway.embeddings`).

`rag_router(client)` is a FastAPI router the gateway includes when RAG is on; it talks
to a `RagClient` (the Serve handles in production, an in-process core in unit tests).
`ground_chat` and `with_citations` are the gateway's chat hook: retrieve, rewrite the
messages (so routing counts the final prompt), and attach `citations` to the answer.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import PurePath
from typing import Any, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException
from tierline.cluster.spec import RagSpec
from tierline.deployments.errors import APIError
from tierline.deployments.gateway.observe.metrics import RagMetrics
from tierline.deployments.gateway.pipeline.middleware import (
    BodyLimit,
    RouteLimit,
    is_operator,
    tenant_of,
)
from tierline.deployments.gateway.pipeline.schemas import ChatCompletionBody
from tierline.deployments.gateway.pipeline.tokens import EstimatingCounter
from tierline.deployments.gateway.quota.service import Charge, Hold, Settle, charge_hold, no_charge
from tierline.deployments.logs import event
from tierline.rag.embed import Embedded, EmbeddingService
from tierline.rag.parsing import ParseLimits, UploadParser
from tierline.rag.prompt import citations as citation_list
from tierline.rag.prompt import grounded_messages, query_text
from tierline.rag.records import RagError
from tierline.rag.service import RagCore

_logger = logging.getLogger("ray.serve.tierline.rag")


class RagClient(EmbeddingService, Protocol):
    """The gateway's RAG: an `EmbeddingService` (it serves `/v1/embeddings` without RAG's own
    embeddings route) and the collection operations."""

    model: str

    async def create_collection(self, tenant: str, name: str) -> dict[str, Any]: ...

    async def delete_collection(self, tenant: str, name: str) -> dict[str, Any]: ...

    async def list_collections(
        self, tenant: str, all_tenants: bool = False
    ) -> list[dict[str, Any]]: ...

    async def ingest(
        self, tenant: str, name: str, documents: list[dict[str, Any]]
    ) -> dict[str, Any]: ...

    async def delete_document(self, tenant: str, name: str, document_id: str) -> dict[str, Any]: ...

    async def search(
        self, tenant: str, name: str, query: Any, top_k: Any, filter: Any
    ) -> list[dict[str, Any]]: ...

    async def search_counted(
        self, tenant: str, name: str, query: Any, top_k: Any, filter: Any
    ) -> tuple[list[dict[str, Any]], int | None]:
        """`search`'s hits and the model tokens the query's embedding took (None: not
        counted)."""
        ...


class InProcessRagClient:
    """`RagClient` over a `RagCore` in this process (unit tests, single-process tools)."""

    def __init__(self, core: RagCore, embedder: EmbeddingService, model: str = "embedder") -> None:
        self.core = core
        self.embedder = embedder
        self.model = model

    async def embed(self, texts: list[str]) -> Embedded:
        got = await self.embedder.embed(texts)
        return Embedded(got.vectors, sum(len(t.split()) for t in texts))

    async def create_collection(self, tenant: str, name: str) -> dict[str, Any]:
        return await self.core.create_collection(tenant, name)

    async def delete_collection(self, tenant: str, name: str) -> dict[str, Any]:
        return await self.core.delete_collection(tenant, name)

    async def list_collections(
        self, tenant: str, all_tenants: bool = False
    ) -> list[dict[str, Any]]:
        return self.core.list_collections(tenant, all_tenants)

    async def ingest(
        self, tenant: str, name: str, documents: list[dict[str, Any]]
    ) -> dict[str, Any]:
        return await self.core.ingest(tenant, name, documents)

    async def delete_document(self, tenant: str, name: str, document_id: str) -> dict[str, Any]:
        return await self.core.delete_document(tenant, name, document_id)

    async def search(
        self, tenant: str, name: str, query: Any, top_k: Any, filter: Any
    ) -> list[dict[str, Any]]:
        return await self.core.search(tenant, name, query, top_k, filter)

    async def search_counted(
        self, tenant: str, name: str, query: Any, top_k: Any, filter: Any
    ) -> tuple[list[dict[str, Any]], int | None]:
        return await self.core.search_counted(tenant, name, query, top_k, filter)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CollectionBody(_Body):
    name: StrictStr = Field(description="Collection name: [a-z][a-z0-9_]*")


class SearchBody(_Body):
    query: StrictStr = Field(min_length=1, description="What to search for.")
    top_k: int = Field(5, description="How many chunks to return.")
    filter: dict[str, Any] | None = Field(None, description="Metadata filter.")


class GroundingOptions(_Body):
    collection: StrictStr
    top_k: int | None = Field(None, description="Chunks to retrieve; the spec's default if unset.")
    filter: dict[str, Any] | None = None


DOCUMENTS_PATH = re.compile(r"/v1/rag/collections/[^/]+/documents/?")


def upload_limits(spec: RagSpec) -> list[RouteLimit]:
    """The document-upload route's own body limit, sized for `rag.max_document_bytes`."""
    limit = BodyLimit(
        spec.upload_limit_bytes,
        "rag.max_upload_bytes"
        if spec.max_upload_bytes is not None
        else "2 x rag.max_document_bytes + 64 KiB",
        f"; one document may have up to {spec.max_document_bytes} bytes of text "
        "(rag.max_document_bytes)",
    )
    return [(DOCUMENTS_PATH, limit)]


def api_error(err: RagError) -> APIError:
    return APIError(err.status, err.message, code=err.code, param=err.param)


async def _guard(coro: Any) -> Any:
    try:
        return await coro
    except RagError as err:
        raise api_error(err) from None


def _upload_id(filename: str) -> str:
    stem = PurePath(filename).stem or "document"
    return re.sub(r"[^A-Za-z0-9._:@-]", "-", stem).lstrip(".-_:@")[:200] or "document"


def parse_limits(spec: RagSpec) -> ParseLimits:
    """Limits on parsing one uploaded file (in a worker process: `rag.parsing`)."""
    return ParseLimits(
        max_file_bytes=spec.file_limit_bytes,
        timeout_s=spec.parse_timeout_s,
        memory_bytes=spec.parse_memory_mib << 20,
        workers=spec.parse_workers,
    )


Admit = Callable[[int, int], Awaitable[None]]
"""(documents, estimated tokens) of an upload, before any is parsed: raises when refused."""


async def _no_admit(documents: int, tokens: int) -> None:
    """The `Admit` of callers that check nothing before parsing."""


def _file_tokens(f: Any, max_document_bytes: int) -> int:
    """A file's tokens before it is parsed: its text is at most its size (and at most
    `max_document_bytes`), at the estimator's 4 bytes a token."""
    size = getattr(f, "size", None)
    return (min(size if isinstance(size, int) else max_document_bytes, max_document_bytes) + 3) // 4


async def _form(request: Request, max_files: int) -> Any:
    """The multipart form, read with at most `max_files` files and their `id` fields
    (plus `metadata`): past those the reader stops and the upload gets a 400."""
    try:
        return await request.form(max_files=max_files, max_fields=max_files + 1)
    except StarletteHTTPException as err:  # Starlette's answer to a form over its limits
        detail = str(err.detail)
        if "Too many files" in detail or "Too many fields" in detail:
            raise APIError(
                400,
                f"more than {max_files} documents; at most {max_files} per request "
                "(rag.max_documents_per_request)",
                code="too_many_documents",
                param="documents",
            ) from None
        raise APIError(400, f"the multipart body was refused: {detail}") from None


async def _documents_from_request(
    request: Request,
    parser: UploadParser,
    admit: Admit = _no_admit,
    max_document_bytes: int = RagSpec().max_document_bytes,
    max_files: int = RagSpec().max_documents_per_request,
) -> list[dict[str, Any]]:
    """The upload's documents. `admit` gets their number and estimated tokens before any
    file is parsed (parsing takes a shared worker for up to `rag.parse_timeout_s` a file),
    so a request over its count or its tenant's quota costs no parse. A multipart body
    with more than `max_files` files is refused while it is read, at the first file over
    (not after every part of it has been taken apart)."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await _form(request, max_files)
        files = [f for f in form.getlist("file") if hasattr(f, "read")]
        if not files:
            raise APIError(400, "upload one or more files in form field 'file'", param="file")
        ids = [str(v) for v in form.getlist("id")]
        if ids and len(ids) != len(files):
            raise APIError(400, "give one 'id' per file, or none", param="id")
        try:
            metadata = json.loads(str(form.get("metadata") or "{}"))
        except json.JSONDecodeError:
            raise APIError(400, "metadata must be a JSON object", param="metadata") from None
        if not isinstance(metadata, dict):
            raise APIError(400, "metadata must be a JSON object", param="metadata")
        await admit(len(files), sum(_file_tokens(f, max_document_bytes) for f in files))
        docs = []
        for i, f in enumerate(files):
            name = getattr(f, "filename", None) or "upload"
            text = await parser.parse(await f.read(), name, getattr(f, "content_type", None))
            doc_id = ids[i] if ids else _upload_id(name)
            docs.append({"id": doc_id, "text": text, "metadata": {**metadata, "source": name}})
        return docs
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise APIError(400, "the request body is not valid JSON", code="invalid_request") from None
    except RecursionError:  # Python's parser recurses once per level
        raise APIError(400, "the request body nests too deeply", code="json_too_deep") from None
    if not isinstance(body, dict) or set(body) != {"documents"}:
        raise APIError(400, 'the body must be {"documents": [{"id", "text", "metadata"}]}')
    documents = body["documents"]
    if isinstance(documents, list):
        await admit(len(documents), _estimated_tokens(documents))
    return documents


def rag_router(
    client: RagClient,
    spec: RagSpec | None = None,
    charge: Charge = no_charge,
    hold: Hold | None = None,
) -> APIRouter:
    """`hold` (`quota.QuotaHold`): the tenant's quota, entered before each route's work
    with the tokens it will embed (estimated from bytes; 429 when over), holding one of
    the tenant's concurrent requests until the work is done, and settled to the tokens
    the embedding model counted (`embedded_tokens` of an ingest, of a search's query), as
    `/v1/embeddings` is; the answer's `usage` gives that count. Without one, `charge`
    (`GatewayCore.charge`) charges the estimate up front and holds nothing."""
    router = APIRouter()
    held = hold if hold is not None else charge_hold(charge)
    settings = spec or RagSpec()
    parser = UploadParser(parse_limits(settings))  # starts nothing yet

    # The tenant is the caller's key's (set by the gateway middleware), never the request's.
    @router.post("/v1/rag/collections")
    async def create_collection(body: CollectionBody, request: Request) -> Response:
        async with held(tenant_of(request.state), 0):
            out = await _guard(client.create_collection(tenant_of(request.state), body.name))
        return JSONResponse(out, status_code=201 if out.get("created") else 200)

    @router.delete("/v1/rag/collections/{name}")
    async def delete_collection(name: str, request: Request) -> dict[str, Any]:
        # the caller's own collection only: another tenant's answers 404, as a missing one
        return await _guard(client.delete_collection(tenant_of(request.state), name))

    @router.get("/v1/rag/collections")
    async def list_collections(request: Request, all_tenants: bool = False) -> dict[str, Any]:
        if all_tenants and not is_operator(request.state):
            raise APIError(
                403, "all_tenants needs an operator key", code="forbidden", param="all_tenants"
            )
        tenant = tenant_of(request.state)
        return {
            "object": "list",
            "data": await _guard(client.list_collections(tenant, all_tenants)),
        }

    @router.post("/v1/rag/collections/{name}/documents")
    async def ingest(name: str, request: Request) -> dict[str, Any]:
        tenant = tenant_of(request.state)

        reserved: list[tuple[int, Settle]] = []  # (estimate, settle) once admitted

        async with AsyncExitStack() as stack:  # the hold lasts through parse and ingest

            async def admit(documents: int, tokens: int) -> None:
                most = settings.max_documents_per_request
                if documents > most:
                    raise APIError(
                        400,
                        f"{documents} documents; at most {most} per request "
                        "(rag.max_documents_per_request)",
                        code="too_many_documents",
                        param="documents",
                    )
                reserved.append((tokens, await stack.enter_async_context(held(tenant, tokens))))

            try:
                docs = await _documents_from_request(
                    request,
                    parser,
                    admit,
                    settings.max_document_bytes,
                    settings.max_documents_per_request,
                )
            except RagError as err:
                raise api_error(err) from None
            result: dict[str, Any] = await _guard(client.ingest(tenant, name, docs))
            counted = result.pop("embedded_tokens", None)
            if reserved:
                estimate, settle = reserved[0]
                result["usage"] = _settled(settle, counted, estimate)
        return result

    @router.delete("/v1/rag/collections/{name}/documents/{document_id}")
    async def delete(name: str, document_id: str, request: Request) -> dict[str, Any]:
        return await _guard(client.delete_document(tenant_of(request.state), name, document_id))

    @router.post("/v1/rag/collections/{name}/search")
    async def search(name: str, body: SearchBody, request: Request) -> dict[str, Any]:
        tenant = tenant_of(request.state)
        estimate = EstimatingCounter().text(body.query)
        retrieval = retrieval_tokens(body.top_k, settings)
        async with held(tenant, estimate + retrieval) as settle:
            hits, counted = await _guard(
                client.search_counted(tenant, name, body.query, body.top_k, body.filter)
            )
            usage = _settled(settle, counted, estimate, retrieval)
        return {"results": hits, "usage": usage}

    return router


def retrieval_tokens(top_k: int, spec: RagSpec) -> int:
    """What a search is charged beside its query's embedding: `top_k` chunks of
    `rag.chunk_tokens`, the most it can return. The work of a search (scoring, a filter
    over every chunk) does not shrink with the tokens of its query, so a three-word query
    with a wide filter would otherwise cost seconds of shared CPU per 1,000 tokens charged."""
    return min(max(top_k, 1), spec.max_top_k) * spec.chunk_tokens


def _settled(
    settle: Settle, counted: int | None, estimate: int, retrieval: int = 0
) -> dict[str, int]:
    """Settle a held route to the embedding model's own count (`counted`; None: the
    embedder does not count, and the reserved `estimate` stands), plus a search's
    `retrieval` charge; its answer's usage."""
    tokens = estimate if counted is None else counted
    settle(tokens + retrieval)
    if not retrieval:
        return {"prompt_tokens": tokens, "total_tokens": tokens}
    return {
        "prompt_tokens": tokens,
        "retrieval_tokens": retrieval,
        "total_tokens": tokens + retrieval,
    }


def _estimated_tokens(documents: Any) -> int:
    """Tokens an ingest will embed, estimated from its documents' text (bytes / 4)."""
    counter = EstimatingCounter()
    texts = (
        [d.get("text") for d in documents if isinstance(d, dict)]
        if isinstance(documents, list)
        else []
    )
    return sum(counter.text(t) for t in texts if isinstance(t, str))


# Whether some tier the caller may use has room for these messages (and the answer).
Fits = Callable[[list[dict[str, Any]]], Awaitable[bool]]


async def ground_chat(
    client: RagClient | None,
    body: ChatCompletionBody,
    tenant: str,
    default_top_k: int = 4,
    metrics: RagMetrics | None = None,
    fits: Fits | None = None,
    max_query_chars: int | None = None,
) -> tuple[ChatCompletionBody, list[dict[str, Any]] | None]:
    """The body with retrieved context in its messages (and no `rag` field), and citations.

    Bodies without a `rag` field come back as they are, with citations None. With `fits`
    (can some tier the caller may use take these messages?), the lowest-ranked chunks are
    left out until the grounded prompt fits: retrieval never turns an answerable question
    into a context-length 400, and the citations are the chunks the model was given.
    The retrieval query is the last user message's first `max_query_chars` characters
    (`rag.max_query_chars`): the model is given all of it."""
    extra = body.model_extra or {}
    if "rag" not in extra:
        return body, None
    if client is None:
        raise APIError(400, "RAG is not enabled on this cluster (spec rag.enabled)", param="rag")
    try:
        opts = GroundingOptions.model_validate(extra["rag"])
    except ValueError as err:
        raise APIError(
            400, f"rag: {err}".splitlines()[0], code="invalid_request", param="rag"
        ) from None
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    query = query_text(messages)[:max_query_chars]
    if not query.strip():
        raise APIError(400, "rag needs a user message to retrieve for", param="messages")
    top_k = opts.top_k if opts.top_k is not None else default_top_k
    t0 = time.perf_counter()
    try:
        hits = await _guard(client.search(tenant, opts.collection, query, top_k, opts.filter))
    except APIError:
        if metrics is not None:
            metrics.retrieval(time.perf_counter() - t0, None)
        raise
    seconds = time.perf_counter() - t0
    if metrics is not None:
        metrics.retrieval(seconds, len(hits))
    fields = {"collection": opts.collection, "hits": len(hits), "duration_s": round(seconds, 4)}
    event(_logger, "retrieve", fields)
    if fits is not None:
        found = len(hits)
        hits = await _most_that_fit(messages, hits, fits)
        if len(hits) < found:
            event(_logger, "retrieve_trimmed", {"found": found, "kept": len(hits)})
    grounded = grounded_messages(messages, hits)
    data = body.model_dump(exclude_unset=True)
    data.pop("rag", None)
    data["messages"] = grounded
    return type(body).model_validate(data), citation_list(hits)


async def _most_that_fit(
    messages: list[dict[str, Any]], hits: list[dict[str, Any]], fits: Fits
) -> list[dict[str, Any]]:
    """The best-ranked hits whose grounded prompt fits, found by binary search over how
    many are kept (fitting only gets easier with fewer): every hit fits in one count; a
    conversation too long even without any is found in two, and anything else in about
    log2(len(hits)) more, where trimming one hit at a time counted the prompt per hit."""
    if not hits or await fits(grounded_messages(messages, hits)):
        return hits
    if not await fits(messages):
        return []  # too long without context: the request's own 400 says so
    lo, hi = 0, len(hits) - 1  # lo hits fit; hi is the most that may
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if await fits(grounded_messages(messages, hits[:mid])):
            lo = mid
        else:
            hi = mid - 1
    return hits[:lo]
