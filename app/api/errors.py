"""Errors at the HTTP door: one place that turns a refusal into a status code and a DICOM JSON body.

The body is a DICOM JSON data set (PS3.18 F.2) carrying Error Comment (0000,0902) with the reason, so a
DICOMweb client can show it, and the same reason goes into a `Warning: 299` header (PS3.18 8.3.4) and the log.
"""

from __future__ import annotations

import logging

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

DICOM_JSON = "application/dicom+json"

log = logging.getLogger(__name__)


class DicomWebError(Exception):
    """Raised by routers and their helpers; answered with `status` and `reason`."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


def error_response(status: int, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    safe = reason.replace('"', "'").replace("\r", " ").replace("\n", " ")[:500]
    return JSONResponse(
        _body(safe),
        status_code=status,
        media_type=DICOM_JSON,
        headers={"Warning": f'299 dicomweb-archive: "{safe}"', **(headers or {})},
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
    return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()]
    return error_response(400, "; ".join(parts) or "invalid request")
