"""`python -m app viewer install`: put the OHIF Viewer where the archive serves it, at `/viewer`.

OHIF publishes its built single-page app in the npm package `@ohif/app` (`package/dist/`). We take it from the
npm registry rather than shipping 50 MB of JavaScript in the wheel, and trust it only as far as the registry
vouches for it: the tarball's sha512 must equal the version's `dist.integrity` (Subresource Integrity form,
`sha512-<base64>`) before a single member is unpacked. Only regular files and folders under `package/dist/`
are taken; a member whose path climbs out (`..`, absolute) or is a link is refused, so a crafted tarball cannot
write outside the viewer folder. The new tree is built beside the old one and swapped in by renames, so a
failed install leaves the running viewer as it was.

OHIF's build bakes its public path `/` into index.html, manifest.json, its stylesheets, webpack's runtime
(`__webpack_require__.p = "/"`) and its service worker; we serve it under `/viewer/`, so those few literals are
rewritten to what a build with `PUBLIC_URL=/viewer/` would have produced. `app-config.js` is replaced by ours: one DICOMweb data
source at this archive's own root, computed in the browser from `window.location.origin`, so the viewer talks
to the origin that served it (no CORS, and right behind a reverse proxy too).
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import httpx

from app.api.urls import DICOMWEB_PREFIX

DEFAULT_VERSION = "3.13.2"  # known to render every kind of test file from this archive (shared INTEROP notes)
DEFAULT_REGISTRY = "https://registry.npmjs.org"
PACKAGE = "@ohif/app"
DIST = PurePosixPath("package/dist")
VIEWER_PREFIX = "/viewer"
VERSION_FILE = "ohif-version.txt"
TIMEOUT = httpx.Timeout(60.0, connect=15.0)
CHUNK = 1 << 20


class InstallError(RuntimeError):
    """The viewer could not be installed; the message says why and the previous install is untouched."""


@dataclass(frozen=True)
class Installed:
    version: str
    folder: Path
    files: int


def install_viewer(
    target: Path, version: str = DEFAULT_VERSION, registry: str = DEFAULT_REGISTRY
) -> Installed:
    """Fetch `@ohif/app@version` from `registry`, check it, and make `target` the viewer folder."""
    registry = registry.rstrip("/")
    with httpx.Client(timeout=TIMEOUT, follow_redirects=True) as client:
        tarball, integrity = _locate(client, registry, version)
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".viewer-", dir=target.parent) as work:
            archive = Path(work) / "package.tgz"
            _download(client, tarball, integrity, archive)
            staged = Path(work) / "viewer"
            files = _unpack(archive, staged)
            _serve_under_prefix(staged)
            (staged / "app-config.js").write_text(app_config(), encoding="utf-8")
            (staged / VERSION_FILE).write_text(version + "\n", encoding="utf-8")
            _swap(staged, target)
    return Installed(version, target, files)


def installed_version(folder: Path) -> str | None:
    try:
        return (folder / VERSION_FILE).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def _locate(client: httpx.Client, registry: str, version: str) -> tuple[str, str]:
    """The version's tarball URL and its sha512 integrity, from the registry's version document."""
    url = f"{registry}/{PACKAGE}/{version}"
    try:
        answer = client.get(url, headers={"Accept": "application/json"})
    except httpx.HTTPError as exc:
        raise InstallError(f"cannot reach the npm registry at {registry}: {exc}") from exc
    if answer.status_code == 404:
        raise InstallError(f"{PACKAGE}@{version} is not in the npm registry at {registry}")
    if answer.status_code != 200:
        raise InstallError(f"the npm registry answered {answer.status_code} for {url}")
    try:
        dist = answer.json()["dist"]
        tarball, integrity = str(dist["tarball"]), str(dist["integrity"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InstallError(f"the registry's document for {PACKAGE}@{version} names no tarball") from exc
    if not integrity.startswith("sha512-"):
        raise InstallError(f"{PACKAGE}@{version} has no sha512 integrity ({integrity[:20]!r}); refusing it")
    return tarball, integrity


def _download(client: httpx.Client, url: str, integrity: str, path: Path) -> None:
    digest = hashlib.sha512()
    try:
        with client.stream("GET", url) as answer, path.open("wb") as out:
            if answer.status_code != 200:
                raise InstallError(f"the npm registry answered {answer.status_code} for {url}")
            for chunk in answer.iter_bytes(CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except httpx.HTTPError as exc:
        raise InstallError(f"cannot download {url}: {exc}") from exc
    expected = base64.b64decode(integrity.removeprefix("sha512-"))
    if digest.digest() != expected:
        raise InstallError(f"{url} does not match its registry integrity {integrity}: not unpacked")


def _unpack(archive: Path, folder: Path) -> int:
    """Extract the regular files under package/dist/ into `folder`; refuse the whole archive if any member
    under it would land outside `folder` or is not a plain file or folder."""
    count = 0
    root = folder.resolve()
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            path = PurePosixPath(member.name)
            if path.parts[:2] != DIST.parts:
                continue
            relative = PurePosixPath(*path.parts[2:])
            if path.is_absolute() or ".." in path.parts:
                raise InstallError(f"refusing {member.name!r}: its path climbs out of the viewer folder")
            destination = (root / relative).resolve()
            if destination != root and root not in destination.parents:
                raise InstallError(f"refusing {member.name!r}: its path climbs out of the viewer folder")
            if member.isdir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            if not member.isfile():
                raise InstallError(f"refusing {member.name!r}: not a regular file")
            source = tar.extractfile(member)
            if source is None:
                raise InstallError(f"refusing {member.name!r}: unreadable")
            destination.parent.mkdir(parents=True, exist_ok=True)
            with source, destination.open("wb") as out:
                shutil.copyfileobj(source, out, CHUNK)
            count += 1
    if not (folder / "index.html").is_file():
        raise InstallError("the package holds no package/dist/index.html: not an OHIF build")
    return count


def _serve_under_prefix(folder: Path) -> None:
    """Rewrite the public path `/` that OHIF's build baked in to `/viewer/`: in index.html's links, its
    PUBLIC_URL, the web app manifest, the stylesheets' fonts, webpack's runtime and the service worker's
    precache list."""
    prefix = VIEWER_PREFIX + "/"
    rewrites: list[tuple[str, list[tuple[str, str]]]] = [
        ("index.html", [('href="/', f'href="{prefix}'), ('src="/', f'src="{prefix}'),
                        ('PUBLIC_URL="/"', f'PUBLIC_URL="{prefix}"')]),
        ("manifest.json", [('"/', f'"{prefix}')]),
        ("*.css", [("url(/", f"url({prefix}")]),
        ("*.js", [('__webpack_require__.p = "/";', f'__webpack_require__.p = "{prefix}";')]),
        ("sw.js", [('"url":"/', f'"url":"{prefix}')]),
    ]
    for pattern, pairs in rewrites:
        for path in folder.glob(pattern):
            text = path.read_bytes()
            changed = text
            for old, new in pairs:
                changed = changed.replace(old.encode(), new.encode())
            if changed != text:
                path.write_bytes(changed)


def app_config() -> str:
    """OHIF's configuration: this archive as its one DICOMweb data source, with the options our server
    supports (PS3.18 QIDO-RS includefield and fuzzy matching, wildcards, rendered thumbnails, STOW-RS upload)."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "archive",
        "configuration": {
            "friendlyName": "DICOMweb archive",
            "name": "archive",
            "qidoSupportsIncludeField": True,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": True,
            "supportsWildcard": True,
            "supportsReject": False,
            "staticWado": False,
            "singlepart": "bulkdata,video",
            "bulkDataURI": {"enabled": True},
            "omitQuotationForMultipartRequest": True,
            "dicomUploadEnabled": True,
        },
    }
    config = {
        "routerBasename": VIEWER_PREFIX,
        "extensions": [],
        "modes": [],
        # No first-visit tour: OHIF 3.10+ reads its tours from the customization `ohif.tours` (OHIF's migration
        # guide 3.9 -> 3.10, "Tours"), and an empty list there starts none. An operator sent from the console to
        # look at a study should see the study, not a walkthrough over it.
        "customizationService": {"ohif.tours": {"$set": []}},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "archive",
        "dataSources": [source],
    }
    return (
        "// Written by `python -m app viewer install` (app/ui/viewer_install.py): the archive that serves this\n"
        "// viewer is its DICOMweb data source, at the same origin.\n"
        f"window.config = {json.dumps(config, indent=2)};\n"
        "(function () {\n"
        f"  var root = window.location.origin + {json.dumps(DICOMWEB_PREFIX)};\n"
        "  var archive = window.config.dataSources[0].configuration;\n"
        "  archive.qidoRoot = root;\n"
        "  archive.wadoRoot = root;\n"
        "  archive.wadoUriRoot = window.location.origin + '/wado';\n"
        "})();\n"
    )


def _swap(staged: Path, target: Path) -> None:
    """Make `staged` the viewer folder: the old one is renamed aside first and removed only afterwards."""
    old = target.with_name(target.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    staged.rename(target)
    if old.exists():
        shutil.rmtree(old)
