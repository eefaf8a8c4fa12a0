"""The command line: `python -m app serve | import | migrate | sweep | reindex | stats | viewer install`.

`serve` runs uvicorn on the app (SIGTERM and Ctrl-C shut down cleanly through the lifespan); `import` bulk-loads
files and folders through the same ingest service as STOW-RS and C-STORE.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import socket
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from app.bootstrap import open_archive, serve_alone
from app.config import Settings
from app.core.ingest.outcomes import StoreStatus
from app.core.logs import configure_logging
from app.storage.base import copy_whole


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description="DICOMweb archive bridged to DIMSE")
    parser.add_argument("--data-dir", type=Path, help="data directory (overrides DATA_DIR)")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP (and DIMSE) server")
    serve.add_argument("--host", help="HTTP bind address (HTTP_HOST); the DICOM door keeps DIMSE_HOST")
    serve.add_argument("--port", type=_port, help="HTTP port (HTTP_PORT)")
    serve.add_argument("--dimse-host", help="DICOM (DIMSE) bind address (DIMSE_HOST)")
    serve.add_argument("--dimse-port", type=_port, help="DICOM port (DIMSE_PORT)")
    serve.add_argument("--data-dir", type=Path, dest="serve_data_dir", help="data directory (DATA_DIR)")
    load = commands.add_parser("import", help="store DICOM files and folders through the ingest service")
    load.add_argument("paths", nargs="+", type=Path)
    load.add_argument("--jobs", type=int, default=4, help="instances stored at once")
    commands.add_parser("migrate", help="apply pending metadata migrations and print the schema version")
    commands.add_parser("sweep", help="remove files without metadata and metadata without files")
    commands.add_parser("reindex", help="rebuild the metadata from the files in storage")
    commands.add_parser("stats", help="print counts of studies, series, instances and bytes as JSON")
    viewer = commands.add_parser("viewer", help="the OHIF Viewer served at /viewer")
    viewer_commands = viewer.add_subparsers(dest="viewer_command", required=True)
    viewer_install = viewer_commands.add_parser(
        "install", help="fetch @ohif/app from the npm registry, check its integrity, unpack it into VIEWER_DIR"
    )
    viewer_install.add_argument("--version", default=None, help="the @ohif/app version (default: pinned)")
    viewer_install.add_argument("--registry", default=None, help="npm registry URL (default: registry.npmjs.org)")
    args = parser.parse_args(argv)

    overrides: dict[str, object] = {}
    data_dir = getattr(args, "serve_data_dir", None) or args.data_dir
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if args.command == "serve":
        doors = (("host", "http_host"), ("port", "http_port"), ("dimse_host", "dimse_host"),
                 ("dimse_port", "dimse_port"))
        for flag, field in doors:
            if getattr(args, flag) is not None:
                overrides[field] = getattr(args, flag)
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        # One line per bad setting, naming it, instead of pydantic's multi-line report with URLs.
        for error in exc.errors():
            name = ".".join(str(part) for part in error["loc"]).upper() or "settings"
            print(f"invalid setting {name}: {error['msg']}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)

    if args.command == "serve":
        return _serve(settings)
    if args.command == "import":
        return asyncio.run(_import(settings, args.paths, args.jobs))
    if args.command == "migrate":
        return asyncio.run(_migrate(settings))
    if args.command == "reindex":
        return asyncio.run(_reindex(settings))
    if args.command == "stats":
        return asyncio.run(_stats(settings))
    if args.command == "viewer":
        return _viewer_install(settings, args.version, args.registry)
    return asyncio.run(_sweep(settings))


def _port(text: str) -> int:
    """A TCP port for argparse: 1-65535, or one clear line and exit status 2."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return port


def _dimse_port_taken(host: str, port: int) -> str | None:
    """Why the DICOM port cannot be listened on, or None.

    Checked before uvicorn starts: the DIMSE server opens in the app's lifespan, where a failure ends in
    uvicorn's traceback of the whole start-up instead of one line naming the port (as uvicorn gives for HTTP).
    SO_REUSEADDR as pynetdicom's server sets it, so a port in TIME_WAIT is not called busy.
    """
    try:
        # An empty host is every address, as pynetdicom binds it.
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot resolve {host}: {exc.strerror}"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            return f"cannot listen for DICOM on {host}:{port}: {reason}"
    return None


def _serve(settings: Settings) -> int:
    import uvicorn

    from app.main import create_app

    if settings.dimse_enabled and (reason := _dimse_port_taken(settings.dimse_host, settings.dimse_port)):
        print(f"error: {reason} (DIMSE_HOST/DIMSE_PORT, --dimse-host/--dimse-port)", file=sys.stderr)
        return 1
    if reason := serve_alone(settings):
        print(f"error: {reason}", file=sys.stderr)
        return 1

    # X-Forwarded-* are judged by the app against TRUSTED_PROXIES (app/api/proxies.py), not by uvicorn; logging
    # is ours (LOG_FORMAT). TLS: HTTP_TLS_CERT/KEY, or a proxy in front.
    uvicorn.run(
        create_app(settings, freeze_start_up=True),
        host=settings.http_host,
        port=settings.http_port,
        log_level=settings.log_level.lower(),
        log_config=None,
        proxy_headers=False,
        ssl_certfile=settings.http_tls_cert,
        ssl_keyfile=settings.http_tls_key,
    )
    return 0


@dataclass
class ImportSummary:
    stored: int = 0
    duplicates: int = 0
    failed: int = 0


def _files(paths: Sequence[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            for folder, _, names in os.walk(path):
                for name in sorted(names):
                    yield Path(folder) / name
        elif path.is_file():
            yield path


async def _import(settings: Settings, paths: Sequence[Path], jobs: int) -> int:
    from tqdm import tqdm

    if missing := [path for path in paths if not path.exists()]:
        for path in missing:
            print(f"error: {path}: no such file or directory", file=sys.stderr)
        return 2
    files = list(_files(paths))
    summary = ImportSummary()
    context = await open_archive(settings)
    gate = asyncio.Semaphore(max(1, jobs))
    try:
        with tqdm(total=len(files), unit="file", disable=not sys.stderr.isatty()) as progress:

            async def one(path: Path) -> None:
                async with gate:
                    try:
                        # Staged by a kernel copy, so a file of any size is never held in memory.
                        staged = await asyncio.to_thread(copy_whole, path, context.storage.staging.new_path())
                    except OSError as exc:
                        summary.failed += 1
                        progress.write(f"failed: {path}: cannot stage it: {exc}")
                        progress.update()
                        return
                    outcome = await context.ingest.store(staged, origin=f"import {path}")
                if outcome.status in (StoreStatus.REPLACED, StoreStatus.KEPT):
                    summary.duplicates += 1
                elif outcome.ok:
                    summary.stored += 1
                else:
                    summary.failed += 1
                    progress.write(f"failed: {path}: {outcome.reason}")
                progress.update()

            await asyncio.gather(*(one(p) for p in files))
    finally:
        await context.close()
    print(f"stored {summary.stored}, duplicates {summary.duplicates}, failed {summary.failed}")
    return 0 if summary.failed == 0 else 1


async def _migrate(settings: Settings) -> int:
    context = await open_archive(settings)
    try:
        print(f"schema version {await context.repository.schema_version()}")
    finally:
        await context.close()
    return 0


async def _sweep(settings: Settings) -> int:
    from app.core.lifecycle.sweep import sweep

    context = await open_archive(settings)
    try:
        report = await sweep(context.lifecycle)
    finally:
        await context.close()
    print(f"removed {report.orphan_files} files without metadata, {report.orphan_records} records without files")
    return 0


async def _reindex(settings: Settings) -> int:
    from app.core.lifecycle.maintenance import reindex

    context = await open_archive(settings)
    try:
        report = await reindex(context.repository, context.storage, context.ingest)
    finally:
        await context.close()
    for failure in report.failed:
        print(f"failed: {failure}", file=sys.stderr)
    print(f"indexed {report.indexed} files, failed {len(report.failed)}")
    return 0 if not report.failed else 1


async def _stats(settings: Settings) -> int:
    import json

    from app.core.lifecycle.maintenance import statistics

    context = await open_archive(settings)
    try:
        stats = await statistics(context.repository, context.storage)
    finally:
        await context.close()
    print(json.dumps(stats.as_dict()))
    return 0


def _viewer_install(settings: Settings, version: str | None, registry: str | None) -> int:
    from app.ui.viewer_install import DEFAULT_REGISTRY, DEFAULT_VERSION, InstallError, install_viewer

    try:
        installed = install_viewer(settings.viewer_path, version or DEFAULT_VERSION, registry or DEFAULT_REGISTRY)
    except (InstallError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"OHIF Viewer {installed.version} installed in {installed.folder} ({installed.files} files): /viewer")
    return 0
