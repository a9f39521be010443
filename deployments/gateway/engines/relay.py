"""The gateway's relay: one HTTP request to the chosen engine replica, its bytes passed on.

After the gateway has decided (tier, quota, RAG context, failover plan), `RelayEngineClient`
picks the tier's replica (`replica_choice`) and POSTs the request to that replica's own
vLLM app (`relay_server`) over a kept-alive connection. A streamed answer comes back as
the engine's SSE events, handed on as the `bytes` the engine wrote, as many whole events
at a time as have arrived: nothing is parsed but the usage event at the end (`streams`).
The request asks the replica to pace the stream (`PACE_HEADER`, `gateway.
stream_interval_ms`): its events come in at most one write per interval, so each read
here, and each write to the client, carries the tokens of that interval. It also asks
vLLM for as many tokens per event as the tier makes in that interval (`stream_interval`,
from the tier's pace as the reads show it: `pacing.TokenPace`), so vLLM's API layer
formats one event per interval rather than one per token.
A whole answer is read and parsed once.

- Failures before any output (connection refused, a 5xx status) raise, so `Failover`
  retries or fails over; the replica is left out for `BENCH_S` seconds.
- A 4xx from the engine is the engine's verdict on the input: an `EngineError`.
- A caller that stops reading (the client left, the deadline cut the stream) closes the
  connection, and vLLM aborts the request when it sees the disconnect.
- No replica known yet (the tier is starting, or scaled to zero): the request takes the
  Ray Serve handle path (`fallback`), which also wakes a tier scaled to zero.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncGenerator, Callable, Collection, Mapping
from typing import Any

from tierline.deployments.engine.pacing import IMMEDIATE, TokenPace, interval_header_value
from tierline.deployments.engine.relay_server import ADAPTER_HEADER, PACE_HEADER, TOKEN_HEADER
from tierline.deployments.gateway.engines.engine_client import (
    EngineClient,
    EngineError,
    EngineItem,
    Method,
)
from tierline.deployments.gateway.engines.replica_choice import (
    PrefixMemory,
    blocks,
    choose_replica,
    prefix_text,
)
from tierline.deployments.logs import current_request_id
from tierline.deployments.sse import events_end

__all__ = ["BENCH_S", "PATHS", "RelayDirectory", "RelayEngineClient", "engine_error_of"]

logger = logging.getLogger("ray.serve.tierline.gateway")

PATHS: dict[str, str] = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
BENCH_S = 5.0
"""How long a replica that failed a connection is left out."""
EVENT_MARK = b"data: "
DONE_MARK = b"data: [DONE]"


class RelayDirectory:
    """Each tier's live relays (replica id -> URL), kept current by the gateway's watch
    loop (`set`), and the replicas recently seen failing (`bench`)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._urls: dict[str, dict[str, str]] = {}
        self._benched: dict[str, float] = {}
        self.token: str | None = None
        self._clock = clock

    def set(self, tier: str, urls: Mapping[str, str]) -> None:
        self._urls[tier] = dict(urls)

    def urls(self, tier: str) -> dict[str, str]:
        known = self._urls.get(tier) or {}
        if not self._benched:
            return known
        now = self._clock()
        for replica, until in list(self._benched.items()):
            if until <= now:
                del self._benched[replica]
        return {r: u for r, u in known.items() if r not in self._benched}

    def bench(self, replica: str) -> None:
        self._benched[replica] = self._clock() + BENCH_S


def engine_error_of(status: int, raw: bytes) -> EngineError:
    """vLLM's error answer (`{"error": {...}}`, or the older flat shape) as an EngineError."""
    message, kind = raw.decode(errors="replace")[:2000] or f"engine status {status}", None
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error") if isinstance(data.get("error"), dict) else data
        if isinstance(err, dict):
            message = str(err.get("message") or message)
            kind = err.get("type")
    return EngineError(status, message, str(kind or "invalid_request_error"))


class RelayEngineClient:
    """An `EngineClient` that sends each request straight to an engine replica's relay."""

    def __init__(
        self,
        tier: str,
        fallback: EngineClient,
        directory: RelayDirectory,
        adapters: Collection[str] = (),
        prefix_affinity: bool = False,
        imbalance: int = 4,
        connect_timeout_s: float = 5.0,
        stream_interval_ms: float = 0.0,
    ) -> None:
        self.tier = tier
        self.fallback = fallback
        self.directory = directory
        self.adapters = frozenset(adapters)
        self.prefix_affinity = prefix_affinity
        self.imbalance = imbalance
        self.connect_timeout_s = connect_timeout_s
        self.stream_interval_ms = stream_interval_ms
        self.pace = TokenPace()
        self.in_flight: dict[str, int] = {}
        self.prefixes = PrefixMemory() if prefix_affinity else None
        self._session: Any = None  # aiohttp.ClientSession, made on first use (in the loop)

    def _client(self) -> Any:
        if self._session is None or self._session.closed:
            import aiohttp

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self.connect_timeout_s, connect=None
                ),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def healthy(self, timeout_s: float) -> bool:
        return await self.fallback.healthy(timeout_s)

    def pick(self, method: Method, body: Mapping[str, Any]) -> tuple[str, str] | None:
        """The replica and URL for a request, or None when no relay is known."""
        urls = self.directory.urls(self.tier)
        if not urls or self.directory.token is None:
            return None
        loads = {r: self.in_flight.get(r, 0) for r in urls}
        if self.prefixes is None:
            replica = choose_replica(loads)
        else:
            keys = blocks(prefix_text(method, body))
            matches = {r: self.prefixes.match(r, keys) for r in urls}
            sizes = {r: self.prefixes.size(r) for r in urls}
            replica = choose_replica(loads, matches, sizes, self.imbalance)
            self.prefixes.record(replica, keys)
        return replica, urls[replica]

    async def generate(
        self, method: Method, body: dict[str, Any]
    ) -> AsyncGenerator[EngineItem, None]:
        chosen = self.pick(method, body)
        if chosen is None:
            async for item in self.fallback.generate(method, body):
                yield item
            return
        replica, url = chosen
        headers = {"content-type": "application/json", TOKEN_HEADER: self.directory.token or ""}
        request_id = current_request_id()
        if request_id:  # vLLM's request id, and the engine replica's access record
            headers["x-request-id"] = request_id
        per_event = 1
        if self.stream_interval_ms and body.get("stream"):
            headers[PACE_HEADER] = interval_header_value(self.stream_interval_ms)
            if "stream_interval" not in body:
                per_event = self.pace.tokens_per_event(self.stream_interval_ms / 1000)
                if per_event > 1:
                    body = {**body, "stream_interval": per_event}
        model = body.get("model")
        if model in self.adapters:
            headers[ADAPTER_HEADER] = str(model)
        import aiohttp

        data = json.dumps(body, separators=(",", ":")).encode()
        self.in_flight[replica] = self.in_flight.get(replica, 0) + 1
        response: Any = None
        finished = False
        try:
            try:
                response = await self._client().post(
                    url + PATHS[method], data=data, headers=headers
                )
            except (TimeoutError, OSError, aiohttp.ClientError) as err:
                self.directory.bench(replica)
                raise ConnectionError(f"engine replica {replica} unreachable: {err}") from err
            status = response.status
            if status >= 500:
                said = (await response.read())[:300].decode(errors="replace")
                raise ConnectionError(f"engine replica {replica} answered {status}: {said}")
            if status >= 400:
                yield engine_error_of(status, await response.read())
                finished = True
                return
            if not body.get("stream"):
                whole = json.loads(await response.read())
                finished = True
                yield whole
                return
            # Whatever has arrived, cut after its last whole event: one write to the
            # client per read, so events that queue up while this process is busy go out
            # together (no waiting added), and every item holds whole events only.
            carry = b""
            reads, last = 0, 0.0
            async for data in response.content.iter_any():
                if carry:
                    data, carry = carry + data, b""
                cut = events_end(data)
                if cut == 0:
                    carry = data
                    continue
                if cut < len(data):
                    data, carry = data[:cut], data[cut:]
                if self.stream_interval_ms:  # the tier's token pace, from paced reads only
                    now = time.monotonic()
                    reads += 1
                    if reads > IMMEDIATE and DONE_MARK not in data:
                        self.pace.observe(now - last, data.count(EVENT_MARK), per_event)
                    last = now
                yield data
            if carry:
                yield carry
            finished = True
        finally:
            self.in_flight[replica] -= 1
            if response is not None:
                if finished:
                    response.release()  # the connection goes back to the pool
                else:
                    response.close()  # the engine sees the disconnect and aborts
