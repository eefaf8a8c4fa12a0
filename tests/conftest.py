"""Shared fixtures: the archive under test, the repositories under contract, and real test data."""

from __future__ import annotations

import copy
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydicom.data import get_testdata_file
from pydicom.datadict import tag_for_keyword
from pymongo import AsyncMongoClient

from app.config import Settings
from app.core.ingest.header import Header, build_record, read_header
from app.core.ports import Repository
from app.core.records import InstanceRecord
from app.repository.mongo.repository import MongoRepository
from app.repository.sqlite.repository import SQLiteRepository
from tests.servers import ArchiveServer, free_port, running_archive
from tests.tools import stop

REPOSITORY_KINDS = ("sqlite", "mongo")
SECANTUS_START_SECONDS = 30.0


@pytest.fixture(scope="module")
def archive_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchiveServer]:
    """The real app over HTTP on 127.0.0.1, embedded SQLite store, one per test module."""
    data_dir: Path = tmp_path_factory.mktemp("archive")
    with running_archive(Settings(data_dir=data_dir, dimse_enabled=False, _env_file=None)) as server:  # type: ignore[call-arg]
        yield server


@pytest.fixture(scope="module", params=REPOSITORY_KINDS)
def backend_archive_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ArchiveServer]:
    """The real app over HTTP on 127.0.0.1 once per metadata backend: embedded SQLite, then MongoDB (the
    session's server, a database of its own, dropped afterwards). `request.param` names the backend."""
    data_dir: Path = tmp_path_factory.mktemp(f"archive-{request.param}")
    with archive_on_backend(request, Settings(data_dir=data_dir, dimse_enabled=False, _env_file=None)) as server:  # type: ignore[call-arg]
        yield server


@contextmanager
def archive_on_backend(request: pytest.FixtureRequest, settings: Settings) -> Iterator[ArchiveServer]:
    """`running_archive` with `settings` on the metadata backend `request.param` names: embedded SQLite, or
    MongoDB (the session's server, a database of its own, dropped afterwards)."""
    url: str | None = None
    if request.param == "mongo":
        url = request.getfixturevalue("mongo_url")
        settings = settings.model_copy(update={"mongo_url": url, "mongo_database": f"test_{uuid.uuid4().hex[:16]}"})
    try:
        with running_archive(settings) as server:
            yield server
    finally:
        if url is not None:
            from pymongo import MongoClient

            with MongoClient(url, serverSelectionTimeoutMS=5000) as admin:
                admin.drop_database(settings.mongo_database)


# --------------------------------------------------------------------------- MongoDB for the contract suite


def _secantusd() -> str:
    """The SecantusDB server script: next to this interpreter (the venv running the tests), else on PATH."""
    beside = Path(sys.executable).with_name("secantusd-py")
    if beside.exists():
        return str(beside)
    found = shutil.which("secantusd-py")
    if found is None:
        pytest.fail(
            "secantusd-py not found next to the Python running the tests or on PATH: install the test extra "
            "(pip install -e '.[test]', which pins secantusdb) or set MONGO_TEST_URL to a real mongod",
            pytrace=False,
        )
    return found


@pytest.fixture(scope="session")
def mongo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A MongoDB wire-protocol server for the session: MONGO_TEST_URL if set, else SecantusDB in memory.

    SecantusDB runs as a separate process (it is GPL-2.0 and test-only) on a free loopback port. A missing or
    failing server fails the tests that need it, never skips them: a skipped Mongo half of the contract suite
    would look green while proving nothing.
    """
    configured = os.environ.get("MONGO_TEST_URL")
    if configured:
        yield configured
        return
    port = free_port()
    log_path = tmp_path_factory.mktemp("secantus") / "secantusd.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [_secantusd(), "--host", "127.0.0.1", "--port", str(port), "--storage-path", ":memory:"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_listening(process, port, log_path)
        yield f"mongodb://127.0.0.1:{port}"
    finally:
        stop(process)


def _wait_until_listening(process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + SECANTUS_START_SECONDS
    while True:
        if process.poll() is not None:
            pytest.fail(
                f"secantusd-py exited with {process.returncode} before listening on port {port}:\n"
                + log_path.read_text(errors="replace"),
                pytrace=False,
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail(
                    f"secantusd-py did not accept connections on port {port} within "
                    f"{SECANTUS_START_SECONDS:.0f} s:\n" + log_path.read_text(errors="replace"),
                    pytrace=False,
                )
            time.sleep(0.05)


@asynccontextmanager
async def opened_repository(
    kind: str, directory: Path, mongo_url: str | None = None
) -> AsyncIterator[Repository]:
    """A fresh, opened repository of `kind`: SQLite in `directory`, or Mongo in a database of its own that
    is dropped afterwards (so tests share one server and never see each other's data)."""
    if kind == "sqlite":
        sqlite = SQLiteRepository(directory / f"index-{uuid.uuid4().hex[:8]}.sqlite")
        await sqlite.open()
        try:
            yield sqlite
        finally:
            await sqlite.close()
        return
    if kind != "mongo" or mongo_url is None:
        raise ValueError(f"no repository {kind!r} (a Mongo repository needs a URL)")
    database = f"test_{uuid.uuid4().hex[:16]}"
    mongo = MongoRepository(mongo_url, database)
    try:
        await mongo.open()
        yield mongo
    finally:
        await mongo.close()
        admin: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, serverSelectionTimeoutMS=5000)
        try:
            await admin.drop_database(database)
        finally:
            await admin.close()


@pytest.fixture(params=REPOSITORY_KINDS)
async def repository(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Repository]:
    """Each implementation of the Repository protocol, opened on empty storage, in turn."""
    # Asked for lazily, so `-k sqlite` runs start no Mongo server.
    url = request.getfixturevalue("mongo_url") if request.param == "mongo" else None
    async with opened_repository(request.param, tmp_path, url) as opened:
        yield opened


# --------------------------------------------------------------------------- instance records from real files

_HEADERS: dict[str, tuple[Header, int]] = {}


def make_record(
    source: str = "CT_small.dcm",
    *,
    storage_key: str | None = None,
    size: int | None = None,
    **attributes_by_keyword: Any,
) -> InstanceRecord:
    """An InstanceRecord built as ingest's pydicom path builds it (DICOM JSON, then `record_from_json`) from a
    real file.

    `source` is a pydicom test file name or a path. Each keyword argument named after a DICOM keyword sets
    that attribute on the header before the record is built (None removes it), e.g.
    `make_record("MR_small.dcm", StudyInstanceUID="1.2.3", PatientName="DOE^JOHN", Modality="OT")`;
    SOPInstanceUID and SOPClassUID also update the File Meta, as a real file would have them.
    `storage_key` defaults to "study/series/sop.dcm" and `size` to the source file's size.
    """
    if source not in _HEADERS:
        found = source if Path(source).is_file() else get_testdata_file(source)
        if found is None:
            raise FileNotFoundError(f"no test file {source!r} (is pydicom-data installed?)")
        _HEADERS[source] = (read_header(str(found)), Path(str(found)).stat().st_size)
    header, file_size = _HEADERS[source]
    ds = copy.deepcopy(header.dataset)
    for keyword, value in attributes_by_keyword.items():
        if tag_for_keyword(keyword) is None:
            raise TypeError(f"make_record() got {keyword!r}, which is not a DICOM keyword")
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    if "SOPInstanceUID" in ds:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if "SOPClassUID" in ds:
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    record = build_record(ds, pixel_data_present=header.pixel_data_present)
    record.storage_key = storage_key or (
        f"{record.study_instance_uid}/{record.series_instance_uid}/{record.sop_instance_uid}.dcm"
    )
    record.size = file_size if size is None else size
    return record


@pytest.fixture(scope="session")
def instance_record() -> Callable[..., InstanceRecord]:
    """The `make_record` factory: `instance_record("MR_small.dcm", StudyInstanceUID=..., PatientID=...)`."""
    return make_record
