"""The gateway's ASGI middleware: request ids, body-size limit and API-key authentication.

Plain ASGI rather than Starlette's BaseHTTPMiddleware, which buffers and re-wraps
streaming responses and adds latency to every token.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.auth import KeyStore
from deployments.errors import APIError, error_response

REQUEST_ID_HEADER = "x-request-id"
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
ANONYMOUS_TENANT = "default"


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, keys: KeyStore | None) -> None:
        self.app = app
        self.max_body = max_body_bytes
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        given = headers.get(REQUEST_ID_HEADER)
        rid = (given or uuid.uuid4().hex)[:128]
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            # Ray Serve's proxy sends its own request id and puts it on the response
            # itself; only a request that came without one gets ours.
            if message["type"] == "http.response.start" and not given:
                message["headers"] = [
                    *message.get("headers", []),
                    (REQUEST_ID_HEADER.encode(), rid.encode()),
                ]
            await send(message)

        rejection = self._reject(scope, headers, state)
        if rejection is not None:
            await error_response(rejection)(scope, receive, send_with_id)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise HTTPException(413, f"request body over the {self.max_body}-byte limit")
            return message

        await self.app(scope, limited_receive, send_with_id)

    def _reject(self, scope: Scope, headers: Headers, state: dict[str, Any]) -> APIError | None:
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return APIError(
                413,
                f"request body is {length} bytes; the limit is {self.max_body}",
                code="request_too_large",
            )
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
        return None


def tenant_of(state: Any) -> str:
    return str(getattr(state, "tenant", ANONYMOUS_TENANT))
