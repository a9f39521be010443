"""The gateway's HTTP app: FastAPI routes over a `GatewayCore`, errors in OpenAI's shape.

`create_app` builds it; the Ray Serve deployment (`deployments.app`) wires real engines
into the core, unit tests wire fakes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from tierline.deployments.errors import APIError, error_response
from tierline.deployments.gateway.core import GatewayCore
from tierline.deployments.gateway.embeddings import (
    EmbeddingsCard,
    EmbeddingService,
    embeddings_router,
)
from tierline.deployments.gateway.pipeline.answer import encoded, with_citations
from tierline.deployments.gateway.pipeline.auth import KeyStore
from tierline.deployments.gateway.pipeline.edge import EDGE_PATHS, ParsedBodyRoute
from tierline.deployments.gateway.pipeline.loop_share import LoopShare
from tierline.deployments.gateway.pipeline.middleware import GatewayMiddleware, tenant_of
from tierline.deployments.gateway.pipeline.plan import (
    REASON_HEADER,
    RETRY_AFTER_S,
    TIER_HEADER,
)
from tierline.deployments.gateway.pipeline.routing import PREFERENCE_HEADER
from tierline.deployments.gateway.pipeline.schemas import (
    ChatCompletionBody,
    CompletionBody,
    _Generation,
)
from tierline.deployments.gateway.quota.service import QuotaHold
from tierline.deployments.gateway.rag_routes import (
    RagClient,
    ground_chat,
    rag_router,
    upload_limits,
)
from tierline.deployments.gateway.responses import MemoryResponseStore, ResponseStore
from tierline.deployments.gateway.responses.routes import responses_router
from tierline.deployments.heap import HeapSettle
from tierline.router.cascade import THRESHOLD_HEADER

__all__ = ["create_app"]

logger = logging.getLogger("ray.serve.tierline.gateway")


def _validation_message(err: RequestValidationError) -> tuple[str, str | None]:
    errors = err.errors()
    if not errors:
        return "invalid request body", None
    e = errors[0]
    loc = [str(p) for p in e.get("loc", ()) if p != "body"]
    if e.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    where = ".".join(loc)
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return (f"{where}: {e.get('msg')}{more}" if where else f"{e.get('msg')}{more}"), (
        loc[0] if loc else None
    )


def create_app(
    core: GatewayCore,
    keys: KeyStore | None = None,
    rag: RagClient | None = None,
    embedder: EmbeddingService | None = None,
    responses: ResponseStore | None = None,
    loop_share: LoopShare | None = None,
) -> FastAPI:
    """The gateway's HTTP app. `keys` None means authentication is off; `rag` None, no RAG.
    `/v1/embeddings` is served by `embedder`, or without one by the RAG client's.
    `responses` None: stored responses live in this process only (`MemoryResponseStore`).
    `loop_share` None: each tenant's share of the event loop (`gateway.loop_share`) is
    kept on the real clocks, when enabled."""
    store: ResponseStore = responses if responses is not None else MemoryResponseStore()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await store.start()
        watcher = asyncio.create_task(core.watch_health())
        replicas = asyncio.create_task(core.watch_replicas())
        try:
            yield
        finally:
            watcher.cancel()
            replicas.cancel()
            await store.close()

    def refused(err: APIError, tenant: str) -> None:
        tier, reason = err.headers.get(TIER_HEADER, "none"), err.headers.get(REASON_HEADER, "none")
        core.metrics.failed(err.status, err.code, tier, reason, tenant)
        core.answered(err.headers, tenant, err.status, None)

    def edge(raw: bytes, tenant: str, state: dict[str, Any]) -> APIError | None:
        err = core.refusal_at_edge(raw, tenant, state)
        if err is not None:
            err.headers.setdefault(TIER_HEADER, "none")
            err.headers.setdefault(REASON_HEADER, f"rejected:{err.code or err.status}")
            refused(err, tenant)
        return err

    app = FastAPI(title="tierline gateway", version="0.1.0", lifespan=lifespan)
    app.router.route_class = ParsedBodyRoute  # the edge's parse is the body's
    share = core.spec.gateway.loop_share
    if loop_share is None and share.enabled:
        # steps timed in the loop thread's CPU time: a step the OS preempted (a busy host)
        # is not charged for the wait
        loop_share = LoopShare(share, time.monotonic, time.thread_time)
    app.add_middleware(
        GatewayMiddleware,
        max_body_bytes=core.spec.gateway.max_body_bytes,
        keys=keys,
        on_reject=lambda err, tenant: core.metrics.failed(
            err.status, err.code, "none", "none", tenant
        ),
        route_limits=upload_limits(core.spec.rag) if rag is not None else (),
        edge=edge,
        edge_paths=EDGE_PATHS,
        loop_share=loop_share,
        heap=HeapSettle(),
        on_refused=core.tickets.debit,
    )

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> Response:
        refused(err, tenant_of(request.state))
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> Response:
        message, param = _validation_message(err)
        core.metrics.failed(400, "invalid_request", "none", "none", tenant_of(request.state))
        return error_response(APIError(400, message, code="invalid_request", param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> Response:
        core.metrics.failed(err.status_code, None, "none", "none", tenant_of(request.state))
        return error_response(APIError(err.status_code, str(err.detail)))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> Response:
        logger.exception("unhandled error")
        core.metrics.failed(500, "internal_error", "none", "none", tenant_of(request.state))
        return error_response(APIError(500, "internal error", code="internal_error"))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> Response:
        # Public, so it says only ready or not; a valid key (or auth off) also gets each
        # tier's state. External tiers are never probed here (`watch.readiness`).
        tiers = await core.ready()
        # An external tier's outage is not the gateway's: it is listed, it does not gate.
        ok = all(up for name, up in tiers.items() if not core.spec.tier(name).is_external)
        body: dict[str, Any] = {"status": "ready" if ok else "not ready"}
        detail = keys is None or keys.authenticate(request.headers.get("authorization")) is not None
        if detail:
            body["tiers"] = tiers
            if any(r is not None for r in core.replicas.values()):  # autoscaled: running now
                body["replicas"] = {n: r for n, r in core.replicas.items() if r is not None}
        return JSONResponse(
            body,
            status_code=200 if ok else 503,
            headers=None if ok else {"Retry-After": str(RETRY_AFTER_S)},
        )

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": core.model_cards()}

    @app.get("/v1/models/{model:path}")
    async def model(model: str) -> dict[str, Any]:
        for card in core.model_cards():
            if model in (card["id"], card["tier"], *card.get("aliases", ())):
                return card
        raise APIError(
            404, f"model {model!r} does not exist", code="model_not_found", param="model"
        )

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionBody, request: Request) -> Response:
        preference = request.headers.get(PREFERENCE_HEADER)
        threshold = request.headers.get(THRESHOLD_HEADER)
        tenant = tenant_of(request.state)
        citations: list[dict[str, Any]] | None = None

        async def ground(plain: _Generation) -> _Generation:
            # RAG hook: retrieved context goes into the messages before routing sees
            # them. `generate` calls it after the drain, cheap and quota checks.
            nonlocal citations
            assert isinstance(plain, ChatCompletionBody)

            def fits(messages: list[dict[str, Any]]) -> Awaitable[bool]:
                return core.fits_context(plain, tenant, messages)

            grounded, citations = await ground_chat(
                rag,
                plain,
                tenant,
                core.spec.rag.default_top_k,
                core.metrics.rag,
                fits,
                core.spec.rag.max_query_chars,
            )
            return grounded

        wants_rag = "rag" in (body.model_extra or {})
        answer = await core.generate(
            "chat", body, tenant, preference, threshold, ground if wants_rag else None
        )
        return encoded(with_citations(answer, citations))

    @app.post("/v1/completions")
    async def completions(body: CompletionBody, request: Request) -> Response:
        preference = request.headers.get(PREFERENCE_HEADER)
        threshold = request.headers.get(THRESHOLD_HEADER)
        answer = await core.generate(
            "completions", body, tenant_of(request.state), preference, threshold
        )
        return encoded(answer)

    app.include_router(responses_router(core, store))
    # RAG and /v1/embeddings: the tenant's quota held while the work runs (max_concurrent),
    # settled to the tokens the model really embedded
    hold = QuotaHold(core.quota, core.quota_for)
    if rag is not None:
        app.include_router(rag_router(rag, core.spec.rag, core.charge, hold))
    source = embedder if embedder is not None else rag
    if source is not None:
        card = core.embeddings or EmbeddingsCard(
            getattr(source, "model", core.spec.embedding_model_name), core.spec.rag.embedding_dim
        )
        app.include_router(embeddings_router(source, card, core.charge, core.embedded, hold))
    return app
