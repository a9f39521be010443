"""`/v1/responses`: create (whole or streamed), retrieve and delete stored responses.

A Responses request is answered by the gateway's own chat-completions path
(`GatewayCore.generate`), so admission, quotas, metering, failover and routing all
apply; this module only translates (`body`, `output`) and stores (`store`). A follow-up
turn (`previous_response_id`) is rebuilt from the stored conversation and routed with the
previous turn's tier as its affinity (`affinity`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from tierline.cluster.spec import ClusterSpec
from tierline.deployments.errors import APIError
from tierline.deployments.gateway.engines.engine_client import Method
from tierline.deployments.gateway.observe.metrics import GatewayMetrics
from tierline.deployments.gateway.pipeline.answer import Answer, StreamAnswer
from tierline.deployments.gateway.pipeline.edge import ParsedBodyRoute
from tierline.deployments.gateway.pipeline.middleware import tenant_of
from tierline.deployments.gateway.pipeline.plan import TIER_HEADER
from tierline.deployments.gateway.pipeline.routing import PREFERENCE_HEADER
from tierline.deployments.gateway.pipeline.schemas import ChatCompletionBody, _Generation
from tierline.deployments.gateway.responses.affinity import Affinity
from tierline.deployments.gateway.responses.body import (
    ResponsesBody,
    chat_body,
    chat_messages,
    check_supported,
    input_items,
)
from tierline.deployments.gateway.responses.output import (
    ResponseShell,
    StreamTranslator,
    new_id,
    response_object,
    whole_output,
)
from tierline.deployments.gateway.responses.store import ResponseStore, StoredResponse
from tierline.deployments.sse import data_objects


class Answerer(Protocol):
    """What the routes need of the gateway (`GatewayCore`): its spec, its metrics, and an
    answer to a chat request through the whole request path."""

    spec: ClusterSpec
    metrics: GatewayMetrics

    async def generate(
        self,
        method: Method,
        body: _Generation,
        tenant: str = ...,
        preference: str | None = ...,
        cascade_threshold: str | None = ...,
        ground: Any = ...,
        affinity: Affinity | None = ...,
    ) -> Answer: ...


__all__ = ["STORE_HEADER", "Answerer", "responses_router", "sse"]

logger = logging.getLogger("ray.serve.tierline.gateway")

STORE_HEADER = "x-tierline-store"
"""`failed` on a whole answer that could not be stored (its body says `store: false`)."""


def sse(event: Mapping[str, Any]) -> str:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"


def _not_found(response_id: str) -> APIError:
    return APIError(
        404,
        f"Response with id {response_id!r} not found.",
        code="response_not_found",
        param="response_id",
    )


def _shell(body: ResponsesBody, response_id: str, model: str) -> ResponseShell:
    return ResponseShell(
        id=response_id,
        created_at=int(time.time()),
        model=model,
        instructions=body.instructions,
        max_output_tokens=body.max_output_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        tools=[t.model_dump(exclude_none=True) for t in body.tools or ()],
        tool_choice=(
            body.tool_choice.model_dump()
            if body.tool_choice is not None and not isinstance(body.tool_choice, str)
            else body.tool_choice or "auto"
        ),
        parallel_tool_calls=body.parallel_tool_calls is not False,
        previous_response_id=body.previous_response_id,
        store=body.store,
        metadata=body.metadata or {},
    )


def _chunks(piece: str | bytes | memoryview) -> list[dict[str, Any]]:
    """The JSON objects of a piece of the gateway's chat SSE stream ([DONE] left out)."""
    text = piece if isinstance(piece, str) else bytes(piece).decode()
    return list(data_objects(text))


async def translated(
    chat_stream: AsyncIterable[Any],
    translator: StreamTranslator,
    on_done: Callable[[dict[str, Any]], Awaitable[None]],
) -> AsyncIterator[str]:
    """The gateway's chat stream as Responses events. `on_done` gets the final Response
    of a stream that ended (completed or incomplete), to store it, before its last event
    is sent: a client that has the completed event can continue the conversation, and
    `on_done` may still mark the Response (`store: false` when it could not be stored)."""
    try:
        for event in translator.start():
            yield sse(event)
        failed = False
        async for piece in chat_stream:
            for chunk in _chunks(piece):
                error = chunk.get("error")
                if isinstance(error, dict):
                    message = str(error.get("message") or "the engine stream failed")
                    for event in translator.fail(message, str(error.get("code") or "server_error")):
                        yield sse(event)
                    failed = True
                    break
                for event in translator.feed(chunk):
                    yield sse(event)
            if failed:
                break
        if not failed:
            final = translator.finish(int(time.time()))
            assert translator.response is not None
            await on_done(translator.response)
            for event in final:
                yield sse(event)
    finally:
        close = getattr(chat_stream, "aclose", None)
        if close is not None:
            with anyio.CancelScope(shield=True):  # the slot and quota go back (streams.py)
                await close()


def responses_router(core: Answerer, store: ResponseStore) -> APIRouter:
    router = APIRouter(route_class=ParsedBodyRoute)  # the edge's parse is the body's
    settings = core.spec.gateway.responses

    @router.post("/v1/responses")
    async def create(body: ResponsesBody, request: Request) -> Response:
        tenant = tenant_of(request.state)
        check_supported(body)
        history: list[dict[str, Any]] = []
        affinity: Affinity | None = None
        if body.previous_response_id is not None:
            previous = await store.get(tenant, body.previous_response_id)
            if previous is None:
                err = _not_found(body.previous_response_id)
                err.param = "previous_response_id"
                raise err
            history = previous.items
            if settings.affinity:
                affinity = Affinity(previous.tier, previous.replica)
        items = [*history, *input_items(body)]
        if body.store and len(json.dumps(items)) > settings.max_stored_bytes:
            raise APIError(
                413,
                f"the conversation is over {settings.max_stored_bytes} bytes, the most a stored "
                "response may hold (gateway.responses.max_stored_bytes); set store: false",
                code="conversation_too_large",
                param="input",
            )
        try:
            chat: ChatCompletionBody = chat_body(
                body, chat_messages(body.instructions, items), stream=body.stream
            )
        except ValidationError as err:
            raise APIError(400, f"input: {err.errors()[0].get('msg')}", param="input") from None
        answer = await core.generate(
            "chat", chat, tenant, request.headers.get(PREFERENCE_HEADER), affinity=affinity
        )
        headers = {k: v for k, v in answer.headers.items() if k.startswith("x-tierline-")}
        tier = headers.get(TIER_HEADER, "none")
        model = core.spec.tier(tier).model_name if tier != "none" else body.model
        shell = _shell(body, new_id("resp"), model)

        async def keep(response: dict[str, Any], output: list[dict[str, Any]]) -> bool:
            """Store the answer; False (logged, counted, and the answer marked `store:
            false`) when the store fails: an answer already generated and charged is
            given to the client whether or not its copy could be kept."""
            if not body.store:
                return True
            now = time.time()
            record = StoredResponse(
                id=response["id"],
                tenant=tenant,
                created_at=now,
                expires_at=now + settings.ttl_s,
                tier=tier,
                response=dict(response),
                items=[*items, *output],
            )
            try:
                await store.put(record)
            except Exception:
                logger.exception("could not store response %s", response["id"])
                core.metrics.store_failed(tenant)
                response["store"] = False
                return False
            return True

        if isinstance(answer, StreamAnswer):
            translator = StreamTranslator(shell)

            async def stored(response: dict[str, Any]) -> None:
                await keep(response, response["output"])

            return StreamingResponse(
                translated(answer.events, translator, stored),
                media_type="text/event-stream",
                headers=headers,
            )
        completion = answer.body
        output, status, incomplete, usage = whole_output(completion)
        response = response_object(
            shell, output, status, usage, incomplete, completed_at=int(time.time())
        )
        if not await keep(response, output):
            headers[STORE_HEADER] = "failed"
        return JSONResponse(response, headers=headers)

    @router.get("/v1/responses/{response_id}")
    async def retrieve(response_id: str, request: Request) -> dict[str, Any]:
        found = await store.get(tenant_of(request.state), response_id)
        if found is None:
            raise _not_found(response_id)
        return found.response

    @router.delete("/v1/responses/{response_id}")
    async def delete(response_id: str, request: Request) -> dict[str, Any]:
        if not await store.delete(tenant_of(request.state), response_id):
            raise _not_found(response_id)
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    return router
