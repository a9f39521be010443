"""RAG over HTTP: collections, documents, search, and grounded chat (`/v1/embeddings`:
`deployments.embeddings`).

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
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from pathlib import PurePath
from typing import Any, Protocol

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr
from tierline.cluster.spec import RagSpec
from tierline.deployments.errors import APIError
from tierline.deployments.logs import event
from tierline.deployments.metrics import RagMetrics
from tierline.deployments.middleware import BodyLimit, RouteLimit, is_operator, tenant_of
from tierline.deployments.quota import Charge, no_charge
from tierline.deployments.schemas import ChatCompletionBody
from tierline.deployments.tokens import EstimatingCounter
from tierline.rag.embed import Embedder
from tierline.rag.parsing import ParseLimits, UploadParser
from tierline.rag.prompt import citations as citation_list
from tierline.rag.prompt import grounded_messages, query_text
from tierline.rag.records import RagError
from tierline.rag.service import RagCore

_logger = logging.getLogger("ray.serve.tierline.rag")


class RagClient(Protocol):
    model: str

    async def embed(self, texts: list[str]) -> tuple[list[list[float]], int]: ...

    async def create_collection(self, tenant: str, name: str) -> dict[str, Any]: ...

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


class InProcessRagClient:
    """`RagClient` over a `RagCore` in this process (unit tests, single-process tools)."""

    def __init__(self, core: RagCore, embedder: Embedder, model: str = "embedder") -> None:
        self.core = core
        self.embedder = embedder
        self.model = model

    async def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        vectors = await self.embedder.embed(texts)
        return np.asarray(vectors).tolist(), sum(len(t.split()) for t in texts)

    async def create_collection(self, tenant: str, name: str) -> dict[str, Any]:
        return await self.core.create_collection(tenant, name)

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


async def _documents_from_request(request: Request, parser: UploadParser) -> list[dict[str, Any]]:
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form()
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
    if not isinstance(body, dict) or set(body) != {"documents"}:
        raise APIError(400, 'the body must be {"documents": [{"id", "text", "metadata"}]}')
    return body["documents"]


def rag_router(
    client: RagClient, spec: RagSpec | None = None, charge: Charge = no_charge
) -> APIRouter:
    """`charge`: the tenant's quota (`GatewayCore.charge`), called before each route's
    work with the tokens it will embed (estimated); it raises 429 when over."""
    router = APIRouter()
    parser = UploadParser(parse_limits(spec or RagSpec()))  # starts nothing yet

    # The tenant is the caller's key's (set by the gateway middleware), never the request's.
    @router.post("/v1/rag/collections")
    async def create_collection(body: CollectionBody, request: Request) -> Response:
        await charge(tenant_of(request.state), 0)
        out = await _guard(client.create_collection(tenant_of(request.state), body.name))
        return JSONResponse(out, status_code=201 if out.get("created") else 200)

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
        try:
            docs = await _documents_from_request(request, parser)
        except RagError as err:
            raise api_error(err) from None
        await charge(tenant_of(request.state), _estimated_tokens(docs))
        return await _guard(client.ingest(tenant_of(request.state), name, docs))

    @router.delete("/v1/rag/collections/{name}/documents/{document_id}")
    async def delete(name: str, document_id: str, request: Request) -> dict[str, Any]:
        return await _guard(client.delete_document(tenant_of(request.state), name, document_id))

    @router.post("/v1/rag/collections/{name}/search")
    async def search(name: str, body: SearchBody, request: Request) -> dict[str, Any]:
        tenant = tenant_of(request.state)
        await charge(tenant, EstimatingCounter().text(body.query))
        hits = await _guard(client.search(tenant, name, body.query, body.top_k, body.filter))
        return {"results": hits}

    return router


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
) -> tuple[ChatCompletionBody, list[dict[str, Any]] | None]:
    """The body with retrieved context in its messages (and no `rag` field), and citations.

    Bodies without a `rag` field come back as they are, with citations None. With `fits`
    (can some tier the caller may use take these messages?), the lowest-ranked chunks are
    left out until the grounded prompt fits: retrieval never turns an answerable question
    into a context-length 400, and the citations are the chunks the model was given."""
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
    query = query_text(messages)
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
    grounded = grounded_messages(messages, hits)
    if fits is not None:
        found = len(hits)
        while hits and not await fits(grounded):
            hits = hits[:-1]
            grounded = grounded_messages(messages, hits)
        if len(hits) < found:
            event(_logger, "retrieve_trimmed", {"found": found, "kept": len(hits)})
    data = body.model_dump(exclude_unset=True)
    data.pop("rag", None)
    data["messages"] = grounded
    return type(body).model_validate(data), citation_list(hits)


def _inject(event: str, cites: list[dict[str, Any]]) -> str:
    """Add `citations` to the first `data: {...}` event of an SSE text block."""
    lines = event.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("data: {"):
            try:
                obj = json.loads(line[6:])
            except json.JSONDecodeError:
                return event
            obj["citations"] = cites
            lines[i] = "data: " + json.dumps(obj)
            return "\n".join(lines)
    return event


async def _cited_stream(
    body: AsyncIterable[Any], cites: list[dict[str, Any]]
) -> AsyncIterator[str | bytes]:
    first = True
    try:
        async for item in body:
            if first:
                text = item.decode() if isinstance(item, bytes) else str(item)
                injected = _inject(text, cites)
                first = injected == text
                yield injected
            else:
                yield item
    finally:
        # A client that leaves ends the inner stream now (its slot and quota ticket with
        # it), not whenever garbage collection gets to it.
        close = getattr(body, "aclose", None)
        if close is not None:
            await close()


def with_citations(response: Response, cites: list[dict[str, Any]] | None) -> Response:
    """The answer with top-level `citations`: in the JSON body, or in the first stream event."""
    if cites is None:
        return response
    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
    if isinstance(response, StreamingResponse):
        return StreamingResponse(
            _cited_stream(response.body_iterator, cites),
            status_code=response.status_code,
            media_type=response.media_type,
            headers=headers,
            background=response.background,
        )
    try:
        data = json.loads(bytes(response.body))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response
    if isinstance(data, dict) and "error" not in data:
        data["citations"] = cites
    return JSONResponse(data, status_code=response.status_code, headers=headers)
