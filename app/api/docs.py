"""The API's own documentation: `/openapi.json`, `/docs` (Swagger UI) and `/redoc`.

FastAPI serves them open to anyone. With authentication on, the document lists every route and parameter of
the archive, which an operator may not want to show an anonymous caller, so `API_DOCS` chooses: `auth` (the
default: `/openapi.json` needs the same bearer token as a GET of the API, scope `read`), `public` (open, as
FastAPI does) or `off`. With authentication off, `auth` and `public` are the same.

`/docs` and `/redoc` themselves are page shells that hold no data, open in every mode: a browser sends no
Authorization header when it follows a link, so a guarded shell could never be opened from the console. The
shell's script (docs_assets/archive/docs.js) fetches `/openapi.json` with the credential the console signed in
with in that tab (app/ui/static/js/auth.js: sessionStorage, same origin) and gives Swagger UI's "Try it out"
the same header; without one, the shell says how to sign in, and the API's description stays behind its token.

FastAPI's pages load Swagger UI and ReDoc from a CDN (and ReDoc's fonts from Google), so they are blank without
internet. Both are vendored instead (app/api/docs_assets/, pinned, with their licences) and served at
`/docs/assets/`, open like any page's scripts: they hold no data. The pages' Content-Security-Policy lets them
load nothing from another origin and run no inline script (ReDoc's sidebar asks a CDN for its logo: the browser
does not, and ReDoc leaves the logo out).
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Literal

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.staticfiles import StaticFiles

from app.api.auth import authorize

OPENAPI_URL = "/openapi.json"
ASSETS_URL = "/docs/assets"
ASSETS = Path(__file__).parent / "docs_assets"
CONSOLE_URL = "/ui/"
POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; frame-ancestors 'none'"
)
# (stylesheet, script) of each documentation UI, under ASSETS_URL.
VIEWERS = {
    "swagger": ("swagger-ui/swagger-ui.css", "swagger-ui/swagger-ui-bundle.js"),
    "redoc": (None, "redoc/redoc.standalone.js"),
}


def include_docs(app: FastAPI, mode: Literal["auth", "public", "off"], authentication: bool) -> None:
    """Add the documentation routes to `app` (built with FastAPI's own ones turned off)."""
    if mode == "off":
        return
    guard = [Depends(authorize("read"))] if mode == "auth" else []
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="docs-assets")

    @app.get(OPENAPI_URL, include_in_schema=False, dependencies=guard)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return _shell(request, f"{app.title} - Swagger UI", "swagger", authentication)

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return _shell(request, f"{app.title} - ReDoc", "redoc", authentication)


def _shell(request: Request, title: str, viewer: str, authentication: bool) -> HTMLResponse:
    """A documentation page with no data in it: the UI's files and our start-up script, told where things are.
    `console-config` is what the console's own modules read (app/ui/static/js/config.js), so the script can
    ask the console's auth module for the tab's credential."""
    root = request.scope.get("root_path", "")
    stylesheet, script = VIEWERS[viewer]
    assets = root + ASSETS_URL
    css = f'<link rel="stylesheet" href="{escape(f"{assets}/{stylesheet}")}">' if stylesheet else ""
    config = json.dumps({"authentication": authentication})
    page = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{escape(title)}</title>
<link rel="icon" href="{escape(assets)}/swagger-ui/favicon-32x32.png">
{css}
<script type="application/json" id="console-config">{config}</script>
</head>
<body>
<div id="docs" data-viewer="{viewer}" data-openapi="{escape(root + OPENAPI_URL)}"
  data-console="{escape(root + CONSOLE_URL)}"></div>
<script src="{escape(f"{assets}/{script}")}"></script>
<script type="module" src="{escape(assets)}/archive/docs.js"></script>
</body>
</html>
"""
    response = HTMLResponse(page)
    response.headers["Content-Security-Policy"] = POLICY
    return response
