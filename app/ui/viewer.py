"""The OHIF Viewer at `/viewer`: the files `python -m app viewer install` put in VIEWER_DIR, served as they are.

OHIF is a single-page app: its router owns the paths under `/viewer` (`/viewer/viewer?StudyInstanceUIDs=..`), so
a path that names no file and has no file extension is answered with index.html, while a missing asset
(`/viewer/x.js`) stays a 404 rather than HTML a script would choke on. A path is resolved inside the folder and
refused when it would leave it (`..`, encoded or not). index.html and app-config.js are never cached (an install
replaces them); the hashed bundles may be. Without an installed viewer, every path answers a page saying how to
install one.

The files are public, like any web app's code; the studies the viewer shows come from the DICOMweb API, which
asks for credentials when authentication is on (the console passes its token to OHIF, see app/ui/static/).
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route

from app.ui.viewer_install import VIEWER_PREFIX

INDEX = "index.html"
NEVER_CACHED = frozenset({INDEX, "app-config.js"})
# Types the viewer depends on, whatever the host's mime.types says (a .wasm served as octets is not compiled
# by streaming instantiation; a module script needs a JavaScript type).
TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".css": "text/css",
    ".html": "text/html",
    ".svg": "image/svg+xml",
    ".woff2": "font/woff2",
}
NOT_INSTALLED = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Viewer not installed</title>
<link rel="stylesheet" href="/ui/static/console.css"></head>
<body class="notice"><main>
<h1>The OHIF Viewer is not installed</h1>
<p>Install it once, from the npm registry, into this archive's viewer folder:</p>
<pre>python -m app viewer install</pre>
<p><code>--version V</code> picks another <code>@ohif/app</code> release. The archive serves it here at
<code>/viewer</code> as soon as the command ends; no restart is needed.</p>
<p><a href="/ui">Back to the console</a></p>
</main></body></html>
"""


def viewer_installed(folder: Path) -> bool:
    return (folder / INDEX).is_file()


def viewer_routes(folder: Path) -> list[Route]:
    """The routes serving `folder` at /viewer (the folder may be filled or replaced while the archive runs)."""

    # Synchronous: Starlette runs it in its thread pool, where looking at the file system blocks no one.
    def serve(request: Request) -> Response:
        root = folder.resolve()
        if not viewer_installed(root):
            return HTMLResponse(NOT_INSTALLED, status_code=404, headers={"Cache-Control": "no-cache"})
        relative = request.path_params.get("path", "")
        target = _inside(root, relative)
        if target is None:
            return Response("not found", status_code=404, media_type="text/plain")
        if not target.is_file():
            if "." in relative.rsplit("/", 1)[-1]:
                return Response("not found", status_code=404, media_type="text/plain")
            target = root / INDEX
        headers = {"Cache-Control": "no-cache"} if target.name in NEVER_CACHED else {}
        return FileResponse(target, media_type=_media_type(target), headers=headers)

    return [
        Route(VIEWER_PREFIX, serve, methods=["GET", "HEAD"], include_in_schema=False),
        Route(VIEWER_PREFIX + "/{path:path}", serve, methods=["GET", "HEAD"], include_in_schema=False),
    ]


def _inside(root: Path, relative: str) -> Path | None:
    """`root/relative` when it resolves inside `root` (symlinks followed), else None."""
    if "\x00" in relative:
        return None
    target = (root / relative.lstrip("/")).resolve()
    return target if target == root or root in target.parents else None


def _media_type(path: Path) -> str:
    return TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
