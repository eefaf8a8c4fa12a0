"""Health, readiness, Prometheus metrics, and the middleware that gives each request an id, metrics and an
audit record.

* `GET /health`: liveness; the process answers (no I/O). Open even with authentication on.
* `GET /ready`: readiness; the metadata repository and the storage answer (503 with the reason if not).
  Open even with authentication on, for orchestrators and load balancers.
* `GET /metrics`: Prometheus text format (app/core/metrics.py); needs the `admin` scope when auth is on.

The middleware is plain ASGI (not BaseHTTPMiddleware, which costs a task and a memory stream per request):
it takes the client's `X-Request-ID` when it is a short token, or makes one, puts it in the logging context
and the response, and after the last byte counts the request by its route template and writes the audit
record. About 15 µs per request on this project's machines (the requests it serves take milliseconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.proxies import client_address
from app.core.audit import AuditLog
from app.core.logs import REQUEST_ID
from app.core.metrics import Metrics
from app.deps import Context
from app.storage.base import ping as storage_ping

router = APIRouter(tags=["Operations"])
probes = APIRouter(tags=["Operations"])

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

# The audit action of a route, from the module of its endpoint: one table for every door.
_ACTIONS = {
    "app.api.stow": "store",
    "app.api.stow_json": "store",
    "app.api.qido": "query",
    "app.api.changes": "query",
    "app.api.wado_instances": "retrieve",
    "app.api.wado_metadata": "retrieve",
    "app.api.wado_frames": "retrieve",
    "app.api.wado_rendered": "retrieve",
    "app.api.wado_uri": "retrieve",
    "app.api.delete": "delete",
    "app.api.admin": "admin",
}
_UID_PARAMS = (("study", "study"), ("series", "series"), ("instance", "instance"))


@probes.get("/health", summary="Liveness: the process answers")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@probes.get("/ready", summary="Readiness: metadata repository and storage reachable")
async def ready(context: Context) -> Response:
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(context.repository.ping(), timeout=5)
        checks["repository"] = "ok"
    except Exception as exc:
        checks["repository"] = f"unavailable: {type(exc).__name__}: {exc}"[:300]
    try:
        await asyncio.wait_for(asyncio.to_thread(storage_ping, context.storage), timeout=5)
        checks["storage"] = "ok"
    except Exception as exc:
        checks["storage"] = f"unavailable: {type(exc).__name__}: {exc}"[:300]
    ok = all(value == "ok" for value in checks.values())
    return JSONResponse({"status": "ready" if ok else "not ready", **checks}, status_code=200 if ok else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request, context: Context) -> Response:
    registry: Metrics = request.app.state.metrics
    with contextlib.suppress(Exception):  # a scrape during an outage still answers the counters
        registry.held.set(await context.repository.count_instances())
    return Response(registry.exposition(), media_type=CONTENT_TYPE_LATEST)


class ObservabilityMiddleware:
    def __init__(
        self, app: ASGIApp, *, metrics: Metrics, audit: AuditLog, trusted_proxies: list[str]
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.audit = audit
        self.trusted_proxies = tuple(trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_id(scope) or uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status = 500
        received = sent = 0
        id_header = (b"x-request-id", request_id.encode("ascii"))

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def tagging_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, tagging_send)
        finally:
            route = scope.get("route")
            template = _template(scope, route)
            # Any token is a method on the wire: unknown ones share a label, so the series stay bounded.
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            self.metrics.observe_request(
                method, template, status, time.perf_counter() - started, received, sent
            )
            if self.audit.enabled:
                self._audit(scope, route, method, status)
            REQUEST_ID.reset(token)

    def _audit(self, scope: Scope, route: Any, method: str, status: int) -> None:
        endpoint = getattr(route, "endpoint", None)
        action = _ACTIONS.get(getattr(endpoint, "__module__", ""))
        if action is None:
            return
        if action == "admin" and method == "DELETE":
            action = "delete"
        params = scope.get("path_params") or {}
        headers = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope.get("headers", ())
            if k in (b"x-forwarded-for",)
        }
        state = scope.get("state") or {}
        self.audit.record(
            action,
            outcome=status,
            user=state.get("principal"),
            client=client_address(scope, headers, self.trusted_proxies),
            method=method,
            path=scope.get("path"),
            query=scope.get("query_string", b"").decode("latin-1") or None,
            **{name: params.get(key) for key, name in _UID_PARAMS},
        )


def _template(scope: Scope, route: Any) -> str:
    """The matched route's full path template, e.g. `/dicom-web/studies/{study}/series`.

    Depending on the FastAPI version, an included router's route knows its path with or without the prefix
    given to `include_router`; the prefix is whatever precedes the route's own path, filled with the request's
    path parameters, in the concrete path.
    """
    path_format = getattr(route, "path_format", None)
    if path_format is None:
        return "unmatched"
    rendered = path_format
    for name, value in (scope.get("path_params") or {}).items():
        rendered = rendered.replace("{" + name + "}", str(value))
    path: str = scope.get("path", "")
    prefix = path[: len(path) - len(rendered)] if path.endswith(rendered) else ""
    return f"{prefix}{route.path}"


def _incoming_id(scope: Scope) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == b"x-request-id":
            text = value.decode("latin-1")
            return text if _REQUEST_ID.fullmatch(text) else None
    return None
