"""Structured logs: one JSON object per line, each carrying the request id.

The request id is the one the client sees in `x-request-id`. Under Ray Serve it is Serve's
own request id: the proxy takes the client's `x-request-id` or makes one, returns it on
the response, and Serve carries it through every handle call (gateway → RAG →
engine replica), where Ray Serve LLM also makes it vLLM's request id. Serve's
`LoggingConfig(encoding="JSON")` (`tierline.cluster.render.SERVE_LOGGING`, applied to the whole app)
writes each replica's records as JSON with a `request_id` field.

Outside Serve (unit tests, plain processes) the gateway's middleware binds the id in a
context variable; `RequestContextFilter` puts it on every record and `JsonFormatter`
writes the same shape of line. Records never carry API keys or prompt text: `event`
drops fields whose names say they hold them.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

__all__ = [
    "FORBIDDEN_FIELDS",
    "JsonFormatter",
    "RequestContextFilter",
    "bind_request",
    "current_request_id",
    "current_tenant",
    "event",
    "serve_logging_kept",
]


FORBIDDEN_FIELDS = frozenset(
    {"api_key", "authorization", "key", "prompt", "messages", "content", "text", "query"}
)

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tierline_request_id", default=None
)
_tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tierline_tenant", default="default")

# Attributes every LogRecord has; the rest are a record's structured fields.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
}


def bind_request(request_id: str | None, tenant: str | None = None) -> None:
    """Bind the current request's id (and tenant) for the rest of this task's work."""
    _request_id.set(request_id)
    if tenant is not None:
        _tenant.set(tenant)


def current_request_id() -> str | None:
    """This request's id: Serve's request context first, then the bound one."""
    try:
        from ray.serve.context import _get_serve_request_context

        rid = _get_serve_request_context().request_id
        if rid:
            return str(rid)
    except Exception:  # not in a Serve replica
        pass
    return _request_id.get()


def current_tenant() -> str:
    return _tenant.get()


class RequestContextFilter(logging.Filter):
    """Adds `request_id` to every record that passes (when a request is bound)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            rid = _request_id.get()
            if rid is not None:
                record.request_id = rid
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key in _STANDARD or key.startswith("_") or key in FORBIDDEN_FIELDS:
                continue
            out[key] = value if isinstance(value, str | int | float | bool | None) else str(value)
        if record.exc_info:
            out["exc_text"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


@contextmanager
def serve_logging_kept() -> Iterator[None]:
    """Keep a Serve replica's log handlers working across the first import of vLLM.

    On import vLLM configures its logger with `logging.config.dictConfig`, which closes
    every handler of the process: the replica's JSON log file (Serve's MemoryHandler)
    stops writing, and only stderr is left. `VLLM_CONFIGURE_LOGGING=0` skips that for
    the import; the handlers are also put back if the block swapped them."""
    lg = logging.getLogger("ray.serve")
    handlers, propagate, level = list(lg.handlers), lg.propagate, lg.level
    before = os.environ.get("VLLM_CONFIGURE_LOGGING")
    os.environ["VLLM_CONFIGURE_LOGGING"] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("VLLM_CONFIGURE_LOGGING", None)
        else:
            os.environ["VLLM_CONFIGURE_LOGGING"] = before
        if handlers and lg.handlers != handlers:
            lg.handlers[:] = handlers
            lg.propagate, lg.level = propagate, level


def event(logger: logging.Logger, name: str, fields: Mapping[str, Any] | None = None) -> None:
    """Log a structured event `name` with `fields` (minus any that could hold secrets or
    prompt text) and the current request id."""
    extra: dict[str, Any] = {"event": name}
    for key, value in (fields or {}).items():
        if key not in FORBIDDEN_FIELDS and key not in _STANDARD:
            extra[key] = value
    rid = current_request_id()
    if rid is not None:
        extra["request_id"] = rid
    logger.info(name, extra=extra)
