"""Logging set-up: plain text or one JSON object per line, each record carrying the request or association id.

The id lives in a context variable: the HTTP middleware (app/api/observability.py) sets it per request, and
asyncio tasks and `asyncio.to_thread` workers copy the context, so every record logged while serving a request
(ingest, repository, storage) carries its id without being passed around. `LOG_FORMAT=json` suits log
shippers (Loki, ELK); `text` is for a terminal.
"""

from __future__ import annotations

import json
import logging
import sys
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")
"""The id of the HTTP request (or DIMSE association) being served, "-" outside of one."""


def name_association() -> None:
    """Give the DIMSE association being requested in this context its id, once: the first of its handlers to log
    or audit anything names it (each association's request runs in a context of its own: a thread, or a task)."""
    if REQUEST_ID.get() == "-":
        REQUEST_ID.set(f"assoc-{uuid.uuid4().hex[:16]}")


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


class RequestIdFilter(logging.Filter):
    """Adds `record.request_id` from the context (attached to handlers, so every logger's records get it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message", "request_id", ...extra, "exception"}` on one line."""

    _STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", REQUEST_ID.get()),
        }
        for key, value in record.__dict__.items():
            if key not in self._STANDARD and key not in out:
                out[key] = value if isinstance(value, str | int | float | bool | type(None)) else repr(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Root logging to stderr in the chosen format; uvicorn's own loggers are routed through it too."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
