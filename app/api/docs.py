"""The API's own documentation: `/openapi.json`, `/docs` (Swagger UI) and `/redoc`.

FastAPI serves them open to anyone. With authentication on, the document lists every route and parameter of
the archive, which an operator may not want to show an anonymous caller, so `API_DOCS` chooses: `auth` (the
default: the same bearer token as a GET of the API, scope `read`), `public` (open, as FastAPI does) or `off`.
With authentication off, `auth` and `public` are the same.

FastAPI's pages load Swagger UI and ReDoc from a CDN (and ReDoc's fonts from Google), so they are blank without
internet. Both are vendored instead (app/api/docs_assets/, pinned, with their licences) and served at
`/docs/assets/`, open like any page's scripts: they hold no data. The pages' Content-Security-Policy lets them
load nothing from another origin (ReDoc's sidebar asks a CDN for its logo: the browser does not, and ReDoc
leaves the logo out); their inline start-up scripts are FastAPI's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.staticfiles import StaticFiles

from app.api.auth import authorize

OPENAPI_URL = "/openapi.json"
ASSETS_URL = "/docs/assets"
ASSETS = Path(__file__).parent / "docs_assets"
POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; frame-ancestors 'none'"
)


def include_docs(app: FastAPI, mode: Literal["auth", "public", "off"]) -> None:
    """Add the documentation routes to `app` (built with FastAPI's own ones turned off)."""
    if mode == "off":
        return
    guard = [Depends(authorize("read"))] if mode == "auth" else []
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="docs-assets")

    @app.get(OPENAPI_URL, include_in_schema=False, dependencies=guard)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=guard)
    async def swagger_ui(request: Request) -> HTMLResponse:
        # No OAuth2 redirect page: Swagger UI's "Authorize" takes the bearer token as it is.
        root = request.scope.get("root_path", "")
        return _offline(get_swagger_ui_html(
            openapi_url=root + OPENAPI_URL,
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=None,
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/swagger-ui/favicon-32x32.png",
        ))

    @app.get("/redoc", include_in_schema=False, dependencies=guard)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _offline(get_redoc_html(
            openapi_url=root + OPENAPI_URL,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/swagger-ui/favicon-32x32.png",
            with_google_fonts=False,
        ))


def _offline(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = POLICY
    return page
