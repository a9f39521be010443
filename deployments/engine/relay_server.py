"""The engine replica's own HTTP door: vLLM's OpenAI app on a port of the replica's node.

The gateway decides once per request (tier, replica, quota, RAG context) and then sends
the request straight here; the answer's bytes come back as vLLM's API layer writes them,
without Ray Serve's handle path, pickling or per-chunk Python objects anywhere else.

The app is the engine's own (`VLLMEngine.build_asgi_app`, the app Ray Serve LLM's
direct-streaming mode serves), wrapped in one small middleware: a request for a LoRA
adapter names it in `ADAPTER_HEADER`, and the adapter is loaded through the replica's
Serve multiplexing loader (LRU per replica) before vLLM sees the request; a streamed
request whose `PACE_HEADER` names an interval has its chunks written at most once per
interval (`deployments.engine.pacing`: fewer writes here and fewer reads and writes in the
gateway).

Where the gateway finds it: the replica writes `{"url": ...}` under
`relay_key(app, deployment, replica)` in Ray's GCS key-value store (namespace
`RELAY_NAMESPACE`) once the server listens; the gateway lists that prefix and keeps the
entries of replicas Serve reports (`deployments.relay_directory`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tierline.deployments.engine.pacing import PacedSend, parse_interval
from tierline.deployments.heap import HeapSettle

__all__ = [
    "ADAPTER_HEADER",
    "PACE_HEADER",
    "RELAY_NAMESPACE",
    "TOKEN_HEADER",
    "TOKEN_KEY",
    "RelayHandle",
    "RelayMiddleware",
    "relay_key",
    "relay_prefix",
    "start_relay_server",
]

logger = logging.getLogger("ray.serve.tierline.engine")

RELAY_NAMESPACE = "tierline"
ADAPTER_HEADER = "x-tierline-adapter"
TOKEN_HEADER = "x-tierline-relay-token"
PACE_HEADER = "x-tierline-stream-interval-ms"
"""The gateway's `gateway.stream_interval_ms` for a streamed request
(`deployments.engine.pacing`)."""
PACE_HEADER_B = PACE_HEADER.encode()
ADAPTER_HEADER_B = ADAPTER_HEADER.encode()
TOKEN_HEADER_B = TOKEN_HEADER.encode()
TOKEN_KEY = "relay/token"
"""The cluster's relay token: the first engine replica writes a random one; all read it."""

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
AdapterLoader = Callable[[str], Awaitable[None]]


def relay_prefix(app: str, deployment: str) -> str:
    return f"relay/{app}/{deployment}/"


def relay_key(app: str, deployment: str, replica: str) -> str:
    return relay_prefix(app, deployment) + replica


async def _refuse(send: Send, status: int, message: str, kind: str) -> None:
    body = json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RelayMiddleware:
    """The engine app's gate: a request must carry the cluster's relay token
    (`TOKEN_HEADER`; the port is reachable inside the cluster's network only, and the
    token keeps it the gateway's), and the adapter a request names (`ADAPTER_HEADER`) is
    loaded before the engine's app runs (404 when it cannot be)."""

    def __init__(self, app: ASGIApp, token: str, load: AdapterLoader) -> None:
        self.app = app
        self.token = token.encode()
        self.load = load
        self.active = 0
        """Relayed requests in progress (a stopping replica waits for them)."""
        self.heap = HeapSettle()  # vLLM's API layer allocates its long-lived parts lazily

    async def drained(self, timeout_s: float) -> int:
        """Wait up to `timeout_s` for the relayed requests in progress to end; returns how
        many were still running."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.active > 0 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        return self.active

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = adapter = pace = None
        request_id = ""
        for k, v in scope.get("headers", ()):
            if k == TOKEN_HEADER_B:
                token = v
            elif k == PACE_HEADER_B:
                pace = v
            elif k == ADAPTER_HEADER_B:
                adapter = v.decode()
            elif k == b"x-request-id":
                request_id = v.decode(errors="replace")
        if token is None or not hmac.compare_digest(token, self.token):
            await _refuse(send, 403, "not the gateway", "permission_error")
            return
        self.heap.request()
        if adapter:
            try:
                await self.load(adapter)
            except Exception as err:
                await _refuse(
                    send, 404, f"adapter {adapter!r} could not be loaded: {err}", "not_found_error"
                )
                return
        interval_s = parse_interval(pace)
        if not interval_s:
            await self._logged(scope, receive, send, request_id)
            return
        paced = PacedSend(send, interval_s)
        try:
            await self._logged(scope, receive, paced, request_id)
        finally:
            await paced.close()

    async def _logged(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        """Run the engine's app and write one access record with the request id (the
        replica's log, as Serve writes for handle calls): OK, ERROR (5xx or raised), or
        CANCELLED (the caller left before the answer ended)."""
        t0 = time.perf_counter()
        status = 0
        ended = False

        async def watched(message: dict[str, Any]) -> None:
            nonlocal status, ended
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                ended = True
            await send(message)

        outcome = "ERROR"
        self.active += 1
        try:
            await self.app(scope, receive, watched)
            outcome = "OK" if ended and status < 500 else ("ERROR" if ended else "CANCELLED")
        except BaseException:
            outcome = "CANCELLED" if not ended and status < 500 else "ERROR"
            raise
        finally:
            self.active -= 1
            ms = (time.perf_counter() - t0) * 1000
            logger.info(
                "RELAY %s %s %s %.1fms",
                scope.get("path", ""),
                status,
                outcome,
                ms,
                extra={"request_id": request_id, "event": "relay", "status": status},
            )


@dataclass
class RelayHandle:
    url: str
    server: Any
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self.task), 5.0)
        except (TimeoutError, asyncio.CancelledError):
            self.task.cancel()


def listening_socket(host: str) -> socket.socket:
    """A TCP socket bound to a free port of `host` and listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def start_relay_server(app: ASGIApp, host: str) -> RelayHandle:
    """Serve `app` with uvicorn on a free port of `host`, on this event loop (the engine's:
    the engine client's output handler runs here too). Returns once it listens."""
    import uvicorn

    sock = listening_socket(host)
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan="off",  # the engine is already running; vLLM's lifespan must not stop it
        log_config=None,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=300,
        http="httptools",
    )
    server = uvicorn.Server(config)
    # The replica's signals stay Ray's: uvicorn would take SIGINT/SIGTERM on the main thread.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()  # raises what stopped it
            raise RuntimeError("the engine's relay server stopped before it started")
        await asyncio.sleep(0.01)
    host_part = f"[{host}]" if ":" in host else host
    url = f"http://{host_part}:{port}"
    logger.info("engine relay listening on %s", url)
    return RelayHandle(url, server, task)
