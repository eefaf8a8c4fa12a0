"""`python -m app viewer install` against an npm registry served on 127.0.0.1, and `/viewer` serving what it put
in place: integrity checked before unpacking, nothing written outside the viewer folder, the previous install
kept when a new one fails, the single-page app's routes, types and caching, and no path escaping the folder.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import Settings
from tests.servers import ArchiveServer, running_archive

VERSION = "9.9.9"
INDEX = (
    '<!doctype html><html><head><script>window.PUBLIC_URL="/"</script><link rel="manifest" href="/manifest.json">'
    '<script src="/app-config.js"></script><script defer src="/app.bundle.js"></script></head>'
    '<body><div id="root"></div></body></html>'
)
DIST = {
    "index.html": INDEX,
    "app.bundle.js": '(() => {\n__webpack_require__.p = "/";\n})();\n',
    "app.bundle.css": "@font-face{src:url(/font.woff2)}",
    "manifest.json": '{"icons": [{"src": "/assets/icon.png"}]}',
    "app-config.js": "window.config = {dataSources: [{configuration: {qidoRoot: 'https://cdn.example'}}]};",
    "viewer.wasm": "\0asm",
    "assets/icon.png": "png",
}


@dataclass
class Registry:
    """A registry serving `@ohif/app` versions: {version: (tarball bytes, integrity)}."""

    url: str
    versions: dict[str, tuple[bytes, str]] = field(default_factory=dict)

    def publish(self, version: str, tarball: bytes, integrity: str | None = None) -> None:
        digest = base64.b64encode(hashlib.sha512(tarball).digest()).decode()
        self.versions[version] = (tarball, integrity or f"sha512-{digest}")


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    served = Registry("")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body, kind = b"{}", "application/json"
            status = 404
            for version, (tarball, integrity) in served.versions.items():
                if self.path == f"/@ohif/app/{version}":
                    url = f"{served.url}/@ohif/app/-/app-{version}.tgz"
                    body = json.dumps({"version": version, "dist": {"tarball": url, "integrity": integrity}}).encode()
                    status = 200
                elif self.path == f"/@ohif/app/-/app-{version}.tgz":
                    body, kind, status = tarball, "application/octet-stream", 200
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    served.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()


def tarball(files: dict[str, str], *, links: dict[str, str] | None = None) -> bytes:
    """An npm package tarball: `package/dist/<name>` for each entry (names may be anything, `..` too)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, text in {"package/package.json": "{}", **{f"package/dist/{k}": v for k, v in files.items()}}.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(f"package/dist/{name}")
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return out.getvalue()


def install(folder: Path, registry: Registry, version: str = VERSION) -> subprocess.CompletedProcess[str]:
    """The real door: the CLI in its own process, VIEWER_DIR pointing at `folder`."""
    return subprocess.run(
        [sys.executable, "-m", "app", "viewer", "install", "--version", version, "--registry", registry.url],
        env={**os.environ, "VIEWER_DIR": str(folder)},
        capture_output=True, text=True, timeout=120, check=False, cwd=Path(__file__).resolve().parents[2],
    )


def test_the_viewer_is_installed_from_the_registry_and_pointed_at_this_archive(
    registry: Registry, tmp_path: Path
) -> None:
    registry.publish(VERSION, tarball(DIST))
    folder = tmp_path / "viewer"
    result = install(folder, registry)
    assert result.returncode == 0, result.stderr
    assert f"OHIF Viewer {VERSION} installed" in result.stdout
    # Only package/dist/ is unpacked.
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == sorted(
        [*DIST, "ohif-version.txt"]
    )
    # Served under /viewer/: what a build with PUBLIC_URL=/viewer/ would have.
    index = (folder / "index.html").read_text()
    assert 'src="/viewer/app-config.js"' in index and 'PUBLIC_URL="/viewer/"' in index
    assert 'href="/viewer/manifest.json"' in index
    assert '__webpack_require__.p = "/viewer/";' in (folder / "app.bundle.js").read_text()
    assert "url(/viewer/font.woff2)" in (folder / "app.bundle.css").read_text()
    assert '"/viewer/assets/icon.png"' in (folder / "manifest.json").read_text()
    # Its data source is this archive's own DICOMweb root, same origin.
    config = (folder / "app-config.js").read_text()
    assert "cdn.example" not in config
    assert "window.location.origin + \"/dicom-web\"" in config
    assert '"routerBasename": "/viewer"' in config
    for option in ('"supportsWildcard": true', '"thumbnailRendering": "wadors"', '"enableStudyLazyLoad": true',
                   '"omitQuotationForMultipartRequest": true', '"dicomUploadEnabled": true'):
        assert option in config


def test_a_tarball_that_does_not_match_its_integrity_is_not_unpacked_and_the_old_viewer_stays(
    registry: Registry, tmp_path: Path
) -> None:
    registry.publish(VERSION, tarball(DIST))
    folder = tmp_path / "viewer"
    assert install(folder, registry).returncode == 0
    tampered = tarball({**DIST, "index.html": "<script>steal()</script>"})
    registry.publish("6.6.6", tampered, integrity=registry.versions[VERSION][1])
    result = install(folder, registry, "6.6.6")
    assert result.returncode == 1
    assert "does not match its registry integrity" in result.stderr
    assert (folder / "ohif-version.txt").read_text().strip() == VERSION
    assert "steal" not in (folder / "index.html").read_text()


@pytest.mark.parametrize(
    ("files", "links", "reason"),
    [
        ({**DIST, "../../escaped.js": "x"}, None, "climbs out of the viewer folder"),
        (DIST, {"passwd": "/etc/passwd"}, "not a regular file"),
        ({"readme.txt": "no index"}, None, "not an OHIF build"),
    ],
    ids=["dot-dot", "symlink", "no-index"],
)
def test_a_package_that_would_write_outside_its_folder_or_is_no_viewer_is_refused(
    registry: Registry, tmp_path: Path, files: dict[str, str], links: dict[str, str] | None, reason: str
) -> None:
    registry.publish("6.6.7", tarball(files, links=links))
    folder = tmp_path / "deep" / "viewer"
    result = install(folder, registry, "6.6.7")
    assert result.returncode == 1
    assert reason in result.stderr
    assert not folder.exists()
    assert not list(tmp_path.rglob("escaped.js"))


def test_an_unknown_version_is_one_line_and_a_failure(registry: Registry, tmp_path: Path) -> None:
    result = install(tmp_path / "viewer", registry, "0.0.0-none")
    assert result.returncode == 1
    assert "@ohif/app@0.0.0-none is not in the npm registry" in result.stderr


# --------------------------------------------------------------------------- serving /viewer


@pytest.fixture(scope="module")
def viewer_archive(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchiveServer]:
    folder = tmp_path_factory.mktemp("served") / "viewer"
    registry.publish(VERSION, tarball(DIST))
    assert install(folder, registry).returncode == 0
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), viewer_dir=folder, dimse_enabled=False, _env_file=None)  # type: ignore[call-arg]
    with running_archive(settings) as server:
        yield server


def test_the_viewer_routes_fall_back_to_its_page_and_serve_files_with_their_types(
    viewer_archive: ArchiveServer,
) -> None:
    base = f"{viewer_archive.base_url}/viewer"
    for path in ("", "/", "/viewer", "/viewer?StudyInstanceUIDs=1.2.3", "/segmentation/deep/route"):
        page = httpx.get(base + path)
        assert page.status_code == 200, path
        assert page.headers["content-type"].startswith("text/html")
        assert 'PUBLIC_URL="/viewer/"' in page.text
        assert page.headers["cache-control"] == "no-cache"
    types = {"/app.bundle.js": "text/javascript", "/app.bundle.css": "text/css", "/viewer.wasm": "application/wasm",
             "/manifest.json": "application/json", "/assets/icon.png": "image/png"}
    for path, kind in types.items():
        answer = httpx.get(base + path)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith(kind), path
    assert httpx.get(base + "/app-config.js").headers["cache-control"] == "no-cache"
    # A missing asset is a 404, not the page (a script would choke on HTML).
    assert httpx.get(base + "/missing.bundle.js").status_code == 404


@pytest.mark.parametrize(
    "path", ["/%2e%2e/ui/static/console.css", "/%2e%2e/%2e%2e/pyproject.toml", "/assets/..%2f..%2f..%2fetc%2fpasswd",
             "/..%2f" * 8 + "etc/passwd"]
)
def test_no_path_leaves_the_viewer_folder(viewer_archive: ArchiveServer, path: str) -> None:
    with httpx.Client() as client:
        answer = client.send(client.build_request("GET", f"{viewer_archive.base_url}/viewer{path}"))
    assert "root:" not in answer.text and "[project]" not in answer.text
    assert answer.status_code == 404 or 'PUBLIC_URL="/viewer/"' in answer.text


def test_without_an_installed_viewer_the_page_says_how_to_install_one(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, viewer_dir=tmp_path / "none", dimse_enabled=False, _env_file=None)  # type: ignore[call-arg]
    with running_archive(settings) as server:
        answer = httpx.get(f"{server.base_url}/viewer/viewer?StudyInstanceUIDs=1.2.3")
        console = httpx.get(f"{server.base_url}/ui/")
    assert answer.status_code == 404
    assert "python -m app viewer install" in answer.text
    assert '"viewer":null' in console.text  # so the console offers no viewer link
