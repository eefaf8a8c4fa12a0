"""Absolute URLs for RetrieveURL (0008,1190) and BulkDataURI.

Clients such as dicomweb-client send `Host` without the port, and viewers sit behind reverse proxies, so the
service root comes from the configured public base URL first, then X-Forwarded-Proto/Host (only from a peer in
TRUSTED_PROXIES, app/api/proxies.py: from anyone else they would let a client forge the links handed out), then
the request.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import Request

from app.api.proxies import is_trusted, peer_of
from app.config import Settings

DICOMWEB_PREFIX = "/dicom-web"


def service_root(request: Request, settings: Settings) -> str:
    """The DICOMweb service root, e.g. `http://archive.example/dicom-web`, without a trailing slash."""
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/") + DICOMWEB_PREFIX
    headers: Mapping[str, str] = (
        request.headers if is_trusted(peer_of(request.scope), settings.trusted_proxies) else {}
    )
    proto = headers.get("x-forwarded-proto", request.url.scheme).split(",")[0].strip()
    host = headers.get("x-forwarded-host", "").split(",")[0].strip()
    if not host:
        server = request.scope.get("server")
        host = f"{server[0]}:{server[1]}" if server else (request.url.netloc or "localhost")
    prefix = headers.get("x-forwarded-prefix", "").rstrip("/")
    return f"{proto}://{host}{prefix}{DICOMWEB_PREFIX}"


def study_url(root: str, study: str) -> str:
    return f"{root}/studies/{study}"


def series_url(root: str, study: str, series: str) -> str:
    return f"{study_url(root, study)}/series/{series}"


def instance_url(root: str, study: str, series: str, instance: str) -> str:
    return f"{series_url(root, study, series)}/instances/{instance}"
