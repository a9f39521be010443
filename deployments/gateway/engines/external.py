"""External tiers: an OpenAI-compatible endpoint outside the cluster, behind `EngineClient`.

The gateway talks to an external tier exactly as to an engine (the same Protocol, the
same items), so routing, quotas, metrics, failover and cost accounting treat it as any
other tier. What differs is how it fails, and each failure is mapped to an answer that
comes fast and says what happened, never a hang:

| upstream                         | the client raises / yields           | gateway answer        |
| -------------------------------- | ------------------------------------ | --------------------- |
| connection refused, connect t/o  | `EngineUnavailable(502, down=True)`  | fallback tier, or 502 |
| no bytes within `timeout_s`      | `EngineUnavailable(504)`             | fallback tier, or 504 |
| 429                              | `EngineUnavailable(429, its R-A)`    | fallback tier, or 429 |
| 5xx                              | `EngineUnavailable(502)`             | fallback tier, or 502 |
| 401/403 (the gateway's key)      | `EngineUnavailable(502)`             | fallback tier, or 502 |
| other 4xx (the request)          | `EngineError(status)`                | that status           |
| `max_concurrency` in flight      | `EngineUnavailable(503)`             | fallback tier, or 503 |
| stream breaks after first output | the exception                        | SSE error + `[DONE]`  |

(R-A: Retry-After, passed through.)

What is sent: only the allow-listed request fields (`FORWARDED_FIELDS`, plus the tier's
`external.forward_fields`), since the request runs on the operator's key: `store`,
`service_tier`, `metadata`, `user` and any other field a client adds are dropped, and a
stream always asks for its usage (`stream_options` is the gateway's own).

What is said: error messages name the tier, never its `base_url` or key; an upstream's
own message is passed on with URLs and the key cut out, except for 401/403, which
concern the operator's key and are answered without it. The log has the details.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import AsyncGenerator, Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx
from tierline.cluster.spec import ExternalSpec, TierSpec
from tierline.deployments.gateway.engines.engine_client import (
    EngineError,
    EngineItem,
    EngineUnavailable,
    Method,
)
from tierline.deployments.gateway.pipeline.tokens import (
    EstimatingCounter,
    TokenCounter,
    load_counter,
)
from tierline.deployments.sse import read_events

PATHS: dict[Method, str] = {"chat": "/chat/completions", "completions": "/completions"}

FORWARDED_FIELDS = frozenset(
    {
        "model",
        "messages",
        "prompt",
        "suffix",
        "echo",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "stream",
        "temperature",
        "top_p",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "seed",
        "response_format",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
    }
)
"""Request fields an external tier gets by default: those that shape the answer. The
tier's `external.forward_fields` adds more."""

logger = logging.getLogger("ray.serve.tierline.gateway")
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
_ACCOUNT = re.compile(r"\b(?:org|proj|user)[-_][A-Za-z0-9]{6,}\b")


def forwarded_body(body: Mapping[str, Any], extra: Iterable[str] = ()) -> dict[str, Any]:
    """The body an external tier gets: the allow-listed fields only (`FORWARDED_FIELDS`
    and `extra`), and for a stream `stream_options` asking for usage, nothing else."""
    allowed = FORWARDED_FIELDS.union(extra)
    out = {k: v for k, v in body.items() if k in allowed and k != "stream_options"}
    if out.get("stream"):
        out["stream_options"] = {"include_usage": True}
    return out


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """`text` without URLs, any of `secrets` (the upstream's base URL, its host, its key),
    or the upstream account's organisation and project ids (`org-...`, `proj_...`), which
    providers put in their rate-limit and quota messages."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return _ACCOUNT.sub("[account]", _URL.sub("[url]", text))


class ExternalKeyError(ValueError):
    """The external tier's API key is configured but cannot be read."""


def read_api_key(ext: ExternalSpec, environ: Mapping[str, str] | None = None) -> str | None:
    """The tier's API key from its env var or file, read once at replica start.

    Errors name the variable or file, so a missing Secret is found from the log line."""
    env = os.environ if environ is None else environ
    if ext.api_key_env is not None:
        value = env.get(ext.api_key_env, "").strip()
        if not value:
            raise ExternalKeyError(f"environment variable {ext.api_key_env} is unset or empty")
        return value
    if ext.api_key_file is not None:
        path = Path(ext.api_key_file).expanduser()
        try:
            value = path.read_text().strip()
        except OSError as err:
            raise ExternalKeyError(f"api_key_file {path}: {err.strerror}") from None
        if not value:
            raise ExternalKeyError(f"api_key_file {path} is empty")
        return value
    return None


def error_message(body: bytes, status: int) -> str:
    """The message of an upstream error body (OpenAI-style or not)."""
    try:
        data = json.loads(body)
    except ValueError:
        text = body.decode(errors="replace").strip()
        return text[:300] or f"HTTP {status}"
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if data.get("message"):
            return str(data["message"])
    return f"HTTP {status}"


class ExternalEngineClient:
    """An external tier reached over HTTP; implements `EngineClient`.

    `transport` is for tests (httpx's MockTransport); production uses httpx's own. The
    HTTP client is made on first use, not at construction."""

    def __init__(
        self,
        tier: TierSpec,
        api_key: str | None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if tier.external is None:
            raise ValueError(f"tier {tier.name!r} is not external")
        self.tier = tier
        self.ext = tier.external
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        host = httpx.URL(self.ext.base_url).host or None
        self._secrets = (api_key, self.ext.base_url, self.ext.base_url.rstrip("/"), host)
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self.in_flight = 0

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            e = self.ext
            self._client = httpx.AsyncClient(
                base_url=e.base_url.rstrip("/"),
                headers=self._headers,
                timeout=httpx.Timeout(
                    e.timeout_s, connect=e.connect_timeout_s, pool=e.connect_timeout_s
                ),
                limits=httpx.Limits(max_connections=e.max_concurrency),
                transport=self._transport,
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _what(self) -> str:
        return f"external tier {self.tier.name!r}"

    async def generate(
        self, method: Method, body: dict[str, Any]
    ) -> AsyncGenerator[EngineItem, None]:
        if self.in_flight >= self.ext.max_concurrency:
            raise EngineUnavailable(
                503,
                f"{self._what()} has {self.in_flight} requests in flight, its limit",
                code="tier_at_capacity",
                retry_after_s="1",
            )
        self.in_flight += 1
        try:
            payload = forwarded_body(body, self.ext.forward_fields)
            async for item in self._generate(method, {**payload, "model": self.ext.model}):
                yield item
        finally:
            self.in_flight -= 1

    async def _generate(
        self, method: Method, payload: dict[str, Any]
    ) -> AsyncGenerator[EngineItem, None]:
        started = False
        try:
            async with self._http().stream("POST", PATHS[method], json=payload) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    failure = self._failure(resp)
                    if isinstance(failure, EngineError):
                        yield failure
                        return
                    raise failure
                if not payload.get("stream"):
                    data = json.loads(await resp.aread())
                    started = True
                    yield data
                    return
                async for event in read_events(resp.aiter_lines()):
                    started = True
                    yield event
        except (httpx.ConnectError, httpx.ConnectTimeout) as err:
            logger.warning("%s (%s) is unreachable: %r", self._what(), self.ext.base_url, err)
            raise EngineUnavailable(
                502,
                f"{self._what()} is unreachable ({type(err).__name__})",
                code="upstream_unreachable",
                retry_after_s="1",
                down=True,
            ) from None
        except httpx.TimeoutException:
            if started:
                raise  # mid-stream: the gateway ends the stream with an SSE error
            raise EngineUnavailable(
                504,
                f"{self._what()} sent nothing for {self.ext.timeout_s:g}s",
                code="upstream_timeout",
            ) from None
        except (httpx.HTTPError, ValueError) as err:
            if started:
                raise
            logger.warning("%s (%s) failed: %r", self._what(), self.ext.base_url, err)
            raise EngineUnavailable(
                502, f"{self._what()} failed ({type(err).__name__})", code="upstream_error"
            ) from None

    def _failure(self, resp: httpx.Response) -> EngineError | EngineUnavailable:
        status = resp.status_code
        upstream = scrub(error_message(resp.content, status), self._secrets)
        message = f"{self._what()}: {upstream}"
        if status == 429:
            retry = resp.headers.get("retry-after") or "1"
            return EngineUnavailable(
                429, message, code="upstream_rate_limited", retry_after_s=retry
            )
        if status in (401, 403):  # the gateway's key, not the client's request
            logger.warning(
                "%s refused the gateway's key: HTTP %d %s", self._what(), status, upstream
            )
            return EngineUnavailable(
                502,
                f"{self._what()} refused the gateway's credentials (HTTP {status})",
                code="upstream_auth_failed",
            )
        if status >= 500:
            return EngineUnavailable(502, message, code="upstream_error")
        return EngineError(status, message)

    async def healthy(self, timeout_s: float) -> bool:
        """`health_check: models`: the upstream lists the model at GET base_url/models.
        `none`: healthy (the gateway marks it down when requests cannot connect)."""
        if self.ext.health_check == "none":
            return True
        try:
            resp = await self._http().get("/models", timeout=timeout_s)
            if resp.status_code != 200:
                return False
            ids = {m.get("id") for m in resp.json().get("data", []) if isinstance(m, dict)}
        except (httpx.HTTPError, ValueError, AttributeError):
            return False
        return self.ext.model in ids


def external_counter(tier: TierSpec) -> TokenCounter:
    """Prompt tokens of an external tier: its `tokenizer` if given, else an estimate."""
    tokenizer = tier.external.tokenizer if tier.external is not None else None
    return load_counter(tokenizer) if tokenizer else EstimatingCounter()


def external_client(tier: TierSpec) -> ExternalEngineClient:
    """Replica start-up: the client with its key read now (errors name the variable)."""
    assert tier.external is not None
    return ExternalEngineClient(tier, read_api_key(tier.external))
