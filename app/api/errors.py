"""Errors at the HTTP door: one place that turns a refusal into a status code and a DICOM JSON body.

The body is a DICOM JSON data set (PS3.18 F.2) carrying Error Comment (0000,0902) with the reason, so a
DICOMweb client can show it, and the same reason goes into a `Warning: 299` header (PS3.18 8.3.4) and the log.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.dicom.uids import InvalidUIDError, check_uid, is_valid_uid
from app.core.logs import REQUEST_ID
from app.core.ports import RepositoryUnavailable
from app.core.retrieve.outcomes import (
    InvalidRequest,
    NotAcceptable,
    NotFound,
    RangeNotSatisfiable,
    RendersBusy,
    RetrieveFailed,
)

DICOM_JSON = "application/dicom+json"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
WARN_AGENT = "dicomweb-archive"  # who adds the Warning headers (RFC 7234 5.5)

log = logging.getLogger(__name__)


class DicomWebError(Exception):
    """Raised by routers and their helpers; answered with `status` and `reason`."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


def check_uids(study: str, series: str | None = None, instance: str | None = None) -> None:
    """Every path UID is checked before any I/O (PS3.5 §9.1); a bad one is a bad request (400)."""
    try:
        check_uid(study, "StudyInstanceUID")
        if series is not None:
            check_uid(series, "SeriesInstanceUID")
        if instance is not None:
            check_uid(instance, "SOPInstanceUID")
    except InvalidUIDError as exc:
        raise DicomWebError(400, str(exc)) from exc


@contextmanager
def domain_errors() -> Iterator[None]:
    """Retrieve outcomes -> HTTP statuses (PS3.18 §8.6.1.2 / §10.4.3)."""
    try:
        yield
    except NotFound as exc:
        raise DicomWebError(404, str(exc)) from exc
    except NotAcceptable as exc:
        raise DicomWebError(406, str(exc)) from exc
    except RangeNotSatisfiable as exc:
        raise DicomWebError(416, str(exc)) from exc
    except InvalidRequest as exc:
        raise DicomWebError(400, str(exc)) from exc
    except RetrieveFailed as exc:
        log.error("retrieve failed: %s", exc)
        raise DicomWebError(500, str(exc)) from exc
    except RendersBusy as exc:
        raise DicomWebError(503, str(exc), {"Retry-After": RETRY_AFTER_SECONDS}) from exc


# How long a client should wait before trying again when the metadata store is down or every rendering turn
# is taken (RFC 9110 10.2.3).
RETRY_AFTER_SECONDS = "5"


async def repository_unavailable_handler(request: Request, exc: Exception) -> JSONResponse:
    """Any door that meets a metadata store outage answers 503 with Retry-After, never a 500."""
    assert isinstance(exc, RepositoryUnavailable)
    log.warning("%s %s -> 503: metadata store unavailable: %s", request.method, request.url.path, exc)
    return error_response(503, f"metadata store unavailable: {exc}", {"Retry-After": RETRY_AFTER_SECONDS})


def warning(text: str) -> str:
    """A `Warning: 299` header value (RFC 7234 5.5, as PS3.18 8.3.4 uses it) carrying `text` safely."""
    # Control characters (CR, LF, NUL...) cannot go into a header: the server would drop the answer. Header
    # values are Latin-1 on the wire: anything else (a query value echoed in the text) is escaped.
    safe = _CONTROL.sub(" ", text.replace('"', "'"))[:1000].encode("ascii", "backslashreplace").decode()
    return f'299 {WARN_AGENT}: "{safe}"'


def error_response(status: int, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    safe = _CONTROL.sub(" ", reason)[:500]
    if status >= 500:
        # The server's fault: the id lets an operator find the log line (and its traceback) the user reports.
        safe = f"{safe} (request id {REQUEST_ID.get()})"
    return JSONResponse(
        _body(safe),
        status_code=status,
        media_type=DICOM_JSON,
        headers={"Warning": warning(safe), **(headers or {})},
    )


def _body(reason: str) -> dict[str, object]:
    # Error Comment is LO in the command set, but ST here so a long reason is not cut at 64 characters.
    return {"00000902": {"vr": "ST", "Value": [reason]}}


async def dicomweb_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DicomWebError)
    log.info("%s %s -> %d: %s", request.method, request.url.path, exc.status, exc.reason)
    return error_response(exc.status, exc.reason, exc.headers)


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404 and (bad := malformed_path_uid(request.url.path)) is not None:
        # A path no route matches because a UID in it holds "/" (e.g. "..%2F..%2Fetc"): the client sent a bad
        # UID (PS3.5 9.1), which is a 400 like any other invalid UID, not "no such resource".
        return error_response(400, f"{bad[:80]!r} in the path is not a valid UID (PS3.5 9.1)")
    return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))


_UID_SEGMENT_AFTER = frozenset({"studies", "series", "instances"})


def malformed_path_uid(path: str) -> str | None:
    """The first segment in a UID position (after studies/series/instances) that is not a UID, if any."""
    segments = path.split("/")
    for before, segment in itertools.pairwise(segments):
        if before in _UID_SEGMENT_AFTER and segment and not is_valid_uid(segment):
            return segment
    return None


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()]
    return error_response(400, "; ".join(parts) or "invalid request")


class InternalErrorMiddleware:
    """An exception no handler took becomes a 500 in DICOM JSON, like every other error, and one log line
    with the traceback and the request id.

    Starlette's own last resort answers plain text from outside the middleware that sets the request id, so
    its log line carries none. This one sits inside that middleware. An answer already started cannot be
    changed: the exception goes on up, and the server cuts the connection.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watching_send)
        except Exception as exc:
            if started:
                raise
            log.exception("%s %s -> 500: %s: %s", scope["method"], scope["path"], type(exc).__name__, exc)
            response = error_response(500, f"internal error: {type(exc).__name__}")
            await response(scope, receive, send)
