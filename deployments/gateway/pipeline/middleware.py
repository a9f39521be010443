"""The gateway's ASGI middleware: request ids, body-size limit, API-key authentication, each
tenant's share of the event loop (`deployments.gateway.pipeline.loop_share`: a tenant past it is
refused before its body is read, and every admitted request's loop time is charged to its tenant)
and admission at the edge (`deployments.gateway.pipeline.edge`: a generation request that cannot be
admitted is refused here, before FastAPI parses it). A request refused for its content is charged
its body's tokens to the tenant's quota once answered (`refusal_tokens`).

Plain ASGI rather than Starlette's BaseHTTPMiddleware, which buffers and re-wraps
streaming responses and adds latency to every token.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from tierline.deployments.errors import APIError, error_response
from tierline.deployments.gateway.pipeline.auth import KeyStore
from tierline.deployments.gateway.pipeline.loop_share import LoopShare, metered
from tierline.deployments.gateway.quota.service import tickets_noted
from tierline.deployments.heap import HeapSettle
from tierline.deployments.logs import bind_request
from tierline.rag.work import metering

REQUEST_ID_HEADER = "x-request-id"
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
ANONYMOUS_TENANT = "default"
BODY_BYTES = "body_bytes"  # request state: the body bytes read so far

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BodyLimit:
    """A request-body limit and the spec setting it comes from (named in the 413)."""

    bytes: int
    setting: str
    hint: str = ""


CHARGED_REFUSALS = frozenset({400, 413, 422})
"""Refusals for what a request carried: its body was read and judged, so it is charged
(`refusal_tokens`); 401, 403, 404 and 429 come before that work and are not."""


def refusal_tokens(body_bytes: int) -> int:
    """What a request refused for its content is charged: its body's tokens as the gateway
    estimates a prompt's (4 bytes a token), at least 1."""
    return max(1, (body_bytes + 3) // 4)


RouteLimit = tuple[re.Pattern[str], BodyLimit]
Edge = Callable[[bytes, str, dict[str, Any]], "APIError | None"]
"""`(raw body, tenant, request state)` -> the refusal of a generation request, or None to
let it in (it may leave its parse of the body in the state)."""


def body_limit(path: str, default: BodyLimit, routes: Sequence[RouteLimit]) -> BodyLimit:
    """The limit for `path`: the first route pattern that matches, else the default."""
    for pattern, limit in routes:
        if pattern.fullmatch(path):
            return limit
    return default


def too_large(size: int | None, limit: BodyLimit) -> APIError:
    said = f"request body is {size} bytes" if size is not None else "request body is too large"
    return APIError(
        413,
        f"{said}; the limit is {limit.bytes} bytes ({limit.setting}){limit.hint}",
        code="request_too_large",
    )


class GatewayMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        keys: KeyStore | None,
        route_limits: Sequence[RouteLimit] = (),
        on_reject: Callable[[APIError, str], None] | None = None,
        edge: Edge | None = None,
        edge_paths: frozenset[str] = frozenset(),
        loop_share: LoopShare | None = None,
        heap: HeapSettle | None = None,
        on_refused: Callable[[str, int], Awaitable[None]] | None = None,
    ) -> None:
        self.app = app
        # charges a tenant `refusal_tokens` for a request refused for its content
        self.on_refused = on_refused
        self.heap = heap  # settles the replica's heap after its first requests
        self.loop_share = loop_share  # per-tenant fair share of the event loop
        self.edge = edge
        self.edge_paths = edge_paths
        # metrics: auth, size and loop-share refusals never reach the app; called with the
        # refusal and its tenant ("none" where the key was not accepted)
        self.on_reject = on_reject
        self.default_limit = BodyLimit(max_body_bytes, "gateway.max_body_bytes")
        self.route_limits = tuple(route_limits)
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.heap is not None:
            self.heap.request()
        headers = Headers(scope=scope)
        given = headers.get(REQUEST_ID_HEADER)
        rid = (given or uuid.uuid4().hex)[:128]
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = rid

        answering = False
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal answering, status
            # Ray Serve's proxy sends its own request id and puts it on the response
            # itself; only a request that came without one gets ours.
            if message["type"] == "http.response.start":
                answering = True
                status = message["status"]
                if not given:
                    message["headers"] = [
                        *message.get("headers", []),
                        (REQUEST_ID_HEADER.encode(), rid.encode()),
                    ]
            await send(message)

        rejection = self._reject(scope, headers, state)
        bind_request(rid, state.get("tenant", ANONYMOUS_TENANT))
        if rejection is not None:
            if self.on_reject is not None:
                self.on_reject(rejection, state.get("tenant", "none"))
            await error_response(rejection)(scope, receive, send_with_id)
            return
        tenant = state.get("tenant", ANONYMOUS_TENANT)
        with tickets_noted() as ticketed:
            await self._answer(scope, receive, send_with_id, state, tenant, lambda: answering)
        if not ticketed():  # one that took a quota ticket keeps what the ticket charged
            await self._charge_refusal(status, tenant, state)

    async def _answer(
        self,
        scope: Scope,
        receive: Receive,
        send_with_id: Send,
        state: dict[str, Any],
        tenant: str,
        answering: Callable[[], bool],
    ) -> None:
        if self.loop_share is None or scope["path"] in PUBLIC_PATHS:
            await self._serve(scope, receive, send_with_id, state)
            return
        share = self.loop_share
        over = share.admit(tenant)
        if over is not None and self.on_reject is not None:
            self.on_reject(over, tenant)
        # Refused before its body is read, so the refusal costs next to nothing; what it
        # does cost is charged too: a tenant that retries at once stays out.
        if over is not None:
            answer = error_response(over)(scope, receive, send_with_id)
            reservation = None
        else:
            answer = self._serve(scope, receive, send_with_id, state)
            reservation = share.reserve(tenant)  # its recent cost, charged up front
        spent = 0.0

        def step(step_s: float) -> None:
            nonlocal spent
            spent += share.charge(tenant, step_s)

        def work(cpu_s: float, local: bool) -> None:
            nonlocal spent
            spent += share.charge_work(tenant, cpu_s, local)

        # charged until the answer starts: the rest of a stream is the engine's bytes;
        # the work it hands to threads (and to the RAG replica) is charged as it is done
        try:
            with metering(work):
                await metered(answer, share.step_clock, step, until=answering)
        finally:
            if reservation is not None:
                share.finish(reservation, spent)

    async def _charge_refusal(self, status: int, tenant: str, state: dict[str, Any]) -> None:
        """Charge a request refused for its content (after its answer is sent: the client
        waits for nothing); a quota service that cannot be reached loses the charge, not
        the answer."""
        if self.on_refused is None or status not in CHARGED_REFUSALS:
            return
        try:
            await self.on_refused(tenant, refusal_tokens(state.get(BODY_BYTES, 0)))
        except Exception:
            logger.warning("refused request of tenant %r not charged", tenant, exc_info=True)

    async def _serve(
        self, scope: Scope, receive: Receive, send_with_id: Send, state: dict[str, Any]
    ) -> None:
        received = 0
        limit = body_limit(scope["path"], self.default_limit, self.route_limits)
        if self.edge is not None and scope["method"] == "POST" and scope["path"] in self.edge_paths:
            raw = await self._body(receive, limit, state)
            if raw is None:  # the client went away before sending its body
                return
            if isinstance(raw, APIError):
                await error_response(raw)(scope, receive, send_with_id)
                return
            refusal = self.edge(raw, state.get("tenant", ANONYMOUS_TENANT), state)
            if refusal is not None:
                await error_response(refusal)(scope, receive, send_with_id)
                return
            await self.app(scope, _replay(raw, receive), send_with_id)
            return

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                state[BODY_BYTES] = received
                if received > limit.bytes:
                    raise HTTPException(413, too_large(None, limit).message)
            return message

        await self.app(scope, limited_receive, send_with_id)

    async def _body(
        self, receive: Receive, limit: BodyLimit, state: dict[str, Any]
    ) -> bytes | APIError | None:
        """The whole request body, the 413 when it passes `limit`, or None when the client
        disconnected first (the bytes read so far in `state[BODY_BYTES]`)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: nothing to answer
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            state[BODY_BYTES] = size
            if size > limit.bytes:
                err = too_large(None, limit)
                if self.on_reject is not None:
                    self.on_reject(err, state.get("tenant", ANONYMOUS_TENANT))
                return err
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _reject(self, scope: Scope, headers: Headers, state: dict[str, Any]) -> APIError | None:
        length = headers.get("content-length")
        limit = body_limit(scope["path"], self.default_limit, self.route_limits)
        if length is not None and length.isdigit() and int(length) > limit.bytes:
            return too_large(int(length), limit)
        if self.keys is None or scope["path"] in PUBLIC_PATHS:
            state["tenant"] = ANONYMOUS_TENANT
            return None
        principal = self.keys.authenticate(headers.get("authorization"))
        if principal is None:
            given = "a missing" if not headers.get("authorization") else "an invalid"
            return APIError(
                401,
                f"{given} API key: send 'Authorization: Bearer <key>'",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        state["tenant"] = principal.tenant
        state["operator"] = bool(getattr(principal, "operator", False))
        return None


def _replay(raw: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the app the body already read, then the client's messages
    (a disconnect, which streaming answers listen for)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive()

    return replay


def tenant_of(state: Any) -> str:
    return str(getattr(state, "tenant", ANONYMOUS_TENANT))


def is_operator(state: Any) -> bool:
    """An operator key's request (the keys file's `role: operator`)."""
    return bool(getattr(state, "operator", False))
