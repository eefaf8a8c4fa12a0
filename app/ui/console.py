"""The console's own routes: the page at `/ui`, its static files, and `GET /ui/whoami`.

The page and its scripts are public, like any sign-in page: they hold no data. Everything the console shows
comes from the API it calls with the user's credential in the `Authorization` header (an API key pasted once and
kept in sessionStorage, or an OIDC access token from an authorization-code flow with PKCE, RFC 7636), never from
a cookie, so no other site can make a signed-in browser act (no CSRF). What the page needs to know before
anyone signs in (is authentication on, which issuer and client to sign in with) is written into it as JSON.

`/ui/whoami` answers the credential's name and scopes, so the console shows only the actions they allow; the
API refuses the others anyway. Every asset is served from the package (Content-Security-Policy `'self'`, plus the
OIDC issuer for the token exchange), so the console works offline.
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from app.api.auth import SCOPES, authorize, bearer_token
from app.api.urls import DICOMWEB_PREFIX
from app.config import Settings
from app.ui.viewer import viewer_installed
from app.ui.viewer_install import VIEWER_PREFIX

CONSOLE_PREFIX = "/ui"
STATIC = Path(__file__).parent / "static"
CONFIG_MARK = "{{console-config}}"


def app_version() -> str:
    try:
        return version("dicomweb-archive")
    except PackageNotFoundError:
        return "unknown"


def include_console(app: FastAPI, settings: Settings) -> None:
    """Add `/` and `/ui` (redirects), `/ui/` (the page), `/ui/static/...` and `/ui/whoami` to `app`."""
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    issuer_origin = _origin(settings.oidc_issuer) if settings.auth_enabled else ""
    # The token exchange is a fetch to the issuer; nothing else leaves the archive's origin.
    policy = (
        "default-src 'self'; img-src 'self' blob: data:; "
        f"connect-src 'self'{' ' + issuer_origin if issuer_origin else ''}; "
        "frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
    )

    # Synchronous (Starlette's thread pool): whether a viewer is installed is a look at the file system.
    def console(request: Request) -> HTMLResponse:
        config = json.dumps(_page_config(settings), separators=(",", ":")).replace("<", "\\u003c")
        return HTMLResponse(
            page.replace(CONFIG_MARK, config),
            headers={"Content-Security-Policy": policy, "Cache-Control": "no-cache"},
        )

    async def home(request: Request) -> RedirectResponse:
        return RedirectResponse(CONSOLE_PREFIX + "/", status_code=307)

    # The archive's root is where an operator lands first: the console.
    app.router.routes.append(Route("/", home, methods=["GET"], include_in_schema=False))
    app.router.routes.append(Route(CONSOLE_PREFIX, home, methods=["GET"], include_in_schema=False))
    app.router.routes.append(Route(CONSOLE_PREFIX + "/", console, methods=["GET"], include_in_schema=False))
    app.router.routes.append(Mount(CONSOLE_PREFIX + "/static", StaticFiles(directory=STATIC), name="console"))

    @app.get(
        CONSOLE_PREFIX + "/whoami",
        tags=["Console"],
        summary="The credential's name and scopes (all scopes when authentication is off)",
        dependencies=[Depends(authorize("read"))],
    )
    async def whoami(request: Request) -> dict[str, Any]:
        authenticator = request.app.state.authenticator
        if authenticator is None:
            return {"name": None, "scopes": list(SCOPES), "version": app_version()}
        token = bearer_token(request)
        assert token is not None  # authorize() let the request through
        principal = await authenticator.authenticate(token)
        return {
            "name": principal.name,
            "scopes": [scope for scope in SCOPES if scope in principal.scopes],
            "version": app_version(),
        }


def _page_config(settings: Settings) -> dict[str, Any]:
    oidc = None
    if settings.auth_enabled and settings.oidc_issuer and settings.ui_oidc_client_id:
        oidc = {
            "issuer": settings.oidc_issuer.rstrip("/"),
            "clientId": settings.ui_oidc_client_id,
            "scope": settings.ui_oidc_scope,
        }
    return {
        "authentication": settings.auth_enabled,
        "apiKeys": settings.auth_enabled and bool(settings.auth_api_keys.get_secret_value()),
        "oidc": oidc,
        "dicomweb": DICOMWEB_PREFIX,
        "viewer": VIEWER_PREFIX if viewer_installed(settings.viewer_path) else None,
        "aeTitle": settings.ae_title,
        "duplicatePolicy": settings.duplicate_policy.value,
    }


def _origin(url: str | None) -> str:
    if not url:
        return ""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""
