"""The storage contract, run over every implementation: the filesystem tree and S3 (moto's S3 server on
127.0.0.1, or a real MinIO/AWS bucket with S3_TEST_URL); then the whole archive over S3 through its HTTP door.

S3_TEST_URL is `http://KEY:SECRET@host:port` (a MinIO) or `https://KEY:SECRET@s3.amazonaws.com`; each test uses
a bucket of its own, created and emptied here, so the account needs CreateBucket/DeleteBucket.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import httpx
import pydicom
import pytest

from app.config import Settings
from app.core.records import StoredInstance
from app.core.retrieve.files import StoredFiles
from app.storage import filesystem
from app.storage.base import Storage, StorageError, instance_key, write_whole
from app.storage.filesystem import FileSystemStorage
from app.storage.s3 import READ_BUFFER, S3Storage
from tests import dicom_files
from tests.servers import free_port, running_archive
from tests.tools import stop

KINDS = ("filesystem", "s3")
KEY = "1.2.3/4.5.6/7.8.9.dcm"


# --------------------------------------------------------------------------- an S3 endpoint


class S3Endpoint:
    def __init__(self, url: str, access_key: str, secret_key: str, region: str = "us-east-1") -> None:
        self.url, self.access_key, self.secret_key, self.region = url, access_key, secret_key, region
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=url, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
            region_name=region,
        )

    def new_bucket(self) -> str:
        name = f"dicomweb-test-{uuid.uuid4().hex[:16]}"
        self.client.create_bucket(Bucket=name)
        return name

    def drop_bucket(self, name: str) -> None:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=name):
            for item in page.get("Contents", ()):
                self.client.delete_object(Bucket=name, Key=item["Key"])
        self.client.delete_bucket(Bucket=name)

    def storage(self, bucket: str, staging: Path, prefix: str = "") -> S3Storage:
        return S3Storage(bucket, prefix=prefix, staging=staging, endpoint_url=self.url, region=self.region,
                         access_key_id=self.access_key, secret_access_key=self.secret_key)


def _moto_server() -> str:
    beside = Path(sys.executable).with_name("moto_server")
    found = str(beside) if beside.exists() else shutil.which("moto_server")
    if found is None:
        pytest.fail("moto_server not found: install the test extra (pip install -e '.[test]', which has "
                    "moto[server]) or set S3_TEST_URL", pytrace=False)
    return found


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    configured = os.environ.get("S3_TEST_URL")
    if configured:
        parts = urlsplit(configured)
        url = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        yield S3Endpoint(url, parts.username or "", parts.password or "")
        return
    port = free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([_moto_server(), "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    pytest.fail("moto_server did not start:\n" + log_path.read_text(errors="replace"),
                                pytrace=False)
                time.sleep(0.05)
        yield S3Endpoint(f"http://127.0.0.1:{port}", "testing", "testing")
    finally:
        stop(process)


@pytest.fixture(params=KINDS)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """Each implementation of the Storage protocol, empty, in turn."""
    if request.param == "filesystem":
        yield FileSystemStorage(tmp_path / "storage", fsync=False)
        return
    endpoint: S3Endpoint = request.getfixturevalue("s3_endpoint")
    bucket = endpoint.new_bucket()
    try:
        yield endpoint.storage(bucket, tmp_path / "staging", prefix="archive/")
    finally:
        endpoint.drop_bucket(bucket)


def put(storage: Storage, key: str, data: bytes) -> None:
    staged = storage.stage()
    staged.write(data)
    storage.commit(staged, key).finalize()


def read(storage: Storage, key: str) -> bytes:
    with storage.open(key) as handle:
        return handle.read()


# --------------------------------------------------------------------------- the contract


def test_a_committed_file_reads_back_byte_for_byte(storage: Storage) -> None:
    data = dicom_files.path("CT_small.dcm").read_bytes()
    put(storage, KEY, data)
    assert storage.exists(KEY)
    assert storage.size(KEY) == len(data)
    assert read(storage, KEY) == data
    assert [key for key, _ in storage.iter_keys()] == [KEY]


def test_a_staged_file_is_invisible_until_committed_and_gone_when_discarded(storage: Storage) -> None:
    staged = storage.stage()
    staged.write(b"half an instance")
    assert not storage.exists(KEY)
    assert list(storage.iter_keys()) == []
    storage.discard(staged)
    assert not staged.path.exists()
    assert storage.clear_staging() == 0


def test_a_replace_keeps_the_old_file_until_finalized_and_rollback_restores_it(storage: Storage) -> None:
    put(storage, KEY, b"old" * 100)
    staged = storage.stage()
    staged.write(b"new" * 200)
    commit = storage.commit(staged, KEY)
    assert read(storage, KEY) == b"new" * 200
    commit.rollback()
    assert read(storage, KEY) == b"old" * 100
    assert [key for key, _ in storage.iter_keys()] == [KEY]

    staged = storage.stage()
    staged.write(b"newer")
    storage.commit(staged, KEY).finalize()
    assert read(storage, KEY) == b"newer"
    assert storage.clear_staging() == 0  # nothing kept aside once finalized


def test_a_file_staged_whole_commits_replaces_and_discards_like_a_streamed_one(storage: Storage) -> None:
    # Ingest stages an instance received in memory in one call, often in a parser process (app/core/ingest/parsing.py).
    put(storage, KEY, b"old" * 100)
    staged = write_whole(storage.staging.new_path(), b"whole" * 50)
    assert staged.handle is None and staged.size == 250 and staged.path.read_bytes() == b"whole" * 50
    commit = storage.commit(staged, KEY)
    assert read(storage, KEY) == b"whole" * 50
    commit.rollback()
    assert read(storage, KEY) == b"old" * 100

    storage.commit(write_whole(storage.staging.new_path(), b"newer"), KEY).finalize()
    assert read(storage, KEY) == b"newer"
    discarded = write_whole(storage.staging.new_path(), b"refused")
    storage.discard(discarded)
    assert not discarded.path.exists()
    assert storage.clear_staging() == 0


def test_rolling_back_a_first_commit_leaves_nothing(storage: Storage) -> None:
    staged = storage.stage()
    staged.write(b"x" * 10)
    storage.commit(staged, KEY).rollback()
    assert not storage.exists(KEY)
    assert list(storage.iter_keys()) == []


def test_clear_staging_removes_what_a_crash_left(storage: Storage) -> None:
    put(storage, KEY, b"old")
    storage.stage().write(b"abandoned")  # staged, never committed or discarded
    staged = storage.stage()
    staged.write(b"new")
    storage.commit(staged, KEY)  # neither finalized nor rolled back: the old copy is still aside
    assert storage.clear_staging() == 2
    assert read(storage, KEY) == b"new"


def test_delete_removes_the_file_and_is_quiet_about_a_missing_one(storage: Storage) -> None:
    put(storage, KEY, b"data")
    other = "1.2.3/4.5.6/7.8.10.dcm"
    put(storage, other, b"more")
    storage.delete(KEY)
    assert not storage.exists(KEY)
    assert [key for key, _ in storage.iter_keys()] == [other]
    storage.delete(KEY)


def test_a_missing_file_is_an_os_error(storage: Storage) -> None:
    with pytest.raises(FileNotFoundError):
        storage.open(KEY)
    with pytest.raises(OSError):
        storage.size(KEY)
    assert not storage.exists(KEY)


@pytest.mark.parametrize("key", ["../../etc/passwd", "1.2/3.4/5.6", "a/b/c.dcm", "1.2/3.4/../5.6.dcm"])
def test_a_key_that_is_not_an_instance_key_is_refused(storage: Storage, key: str) -> None:
    with pytest.raises(ValueError):
        storage.open(key)
    staged = storage.stage()
    with pytest.raises(ValueError):
        storage.commit(staged, key)
    storage.discard(staged)


def test_an_open_file_seeks_and_parses_with_pydicom(storage: Storage) -> None:
    ds = dicom_files.renewed("MR_small.dcm")
    data = dicom_files.part10(ds)
    key = instance_key(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    put(storage, key, data)
    with storage.open(key) as handle:
        assert pydicom.dcmread(handle).PixelData == ds.PixelData
    with storage.open(key) as handle:
        handle.seek(128)
        assert handle.read(4) == b"DICM"
        handle.seek(-10, io.SEEK_END)
        assert handle.read() == data[-10:]
        handle.seek(0)
        assert handle.read(132)[128:] == b"DICM"


def test_a_large_file_streams_in_chunks_beyond_the_read_buffer(storage: Storage) -> None:
    data = os.urandom(3 * READ_BUFFER + 12345)
    put(storage, KEY, data)
    chunks = []
    with storage.open(KEY) as handle:
        while chunk := handle.read(256 * 1024):
            chunks.append(chunk)
        handle.seek(READ_BUFFER * 2 + 7)
        assert handle.read(100) == data[READ_BUFFER * 2 + 7 : READ_BUFFER * 2 + 107]
    assert b"".join(chunks) == data


@pytest.mark.parametrize("name", ["emri_small.dcm", "color3d_jpeg_baseline.dcm"])
def test_frames_are_read_where_they_lie_only_in_a_local_file(storage: Storage, name: str) -> None:
    """Reading a frame of an instance too large to keep parsed from its place in the file needs a map of the file
    (tests/core/retrieve/test_service.py compares the frames): a remote storage's instance is parsed whole, as
    every seek past its read buffer would cost a ranged GET."""
    data = dicom_files.path(name).read_bytes()
    put(storage, KEY, data)
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    ref = StoredInstance(
        "1.2.3", "4.5.6", "7.8.9", str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID), KEY, len(data)
    )

    pixels = StoredFiles(storage, cache_bytes=0).open_pixels(ref)

    assert (pixels is not None) == isinstance(storage, FileSystemStorage)
    if pixels is not None:
        pixels.close()


def test_iter_keys_lists_only_instance_files_with_their_times(storage: Storage) -> None:
    before = time.time() - 5
    keys = [f"1.2.3/4.5.{n}/7.8.{n}.dcm" for n in range(3)]
    for key in keys:
        put(storage, key, key.encode())
    listed = dict(storage.iter_keys())
    assert sorted(listed) == keys
    assert all(before <= mtime <= time.time() + 5 for mtime in listed.values())


# --------------------------------------------------------------------------- S3 specifics


def test_s3_objects_use_the_filesystem_layout_under_the_prefix(s3_endpoint: S3Endpoint, tmp_path: Path) -> None:
    bucket = s3_endpoint.new_bucket()
    try:
        storage = s3_endpoint.storage(bucket, tmp_path, prefix="site-a/")
        put(storage, KEY, b"payload")
        names = [item["Key"] for item in s3_endpoint.client.list_objects_v2(Bucket=bucket)["Contents"]]
        assert names == [f"site-a/{KEY}"]
    finally:
        s3_endpoint.drop_bucket(bucket)


def test_an_unreachable_s3_endpoint_is_a_storage_error(tmp_path: Path) -> None:
    storage = S3Storage("nowhere", staging=tmp_path, endpoint_url=f"http://127.0.0.1:{free_port()}",
                        region="us-east-1", access_key_id="x", secret_access_key="y")
    storage.client.meta.config.retries = {"max_attempts": 1}
    with pytest.raises(StorageError):
        storage.ping()
    with pytest.raises(StorageError):
        storage.exists(KEY)


# --------------------------------------------------------------------------- the archive over S3


def test_the_archive_stores_retrieves_deletes_and_reindexes_over_s3(s3_endpoint: S3Endpoint, tmp_path: Path) -> None:
    bucket = s3_endpoint.new_bucket()
    settings = Settings(  # type: ignore[call-arg]
        data_dir=tmp_path / "data", dimse_enabled=False, _env_file=None, storage_backend="s3", s3_bucket=bucket,
        s3_prefix="pacs/", s3_endpoint_url=s3_endpoint.url, s3_region=s3_endpoint.region,
        s3_access_key_id=s3_endpoint.access_key, s3_secret_access_key=s3_endpoint.secret_key,
    )
    datasets = [dicom_files.renewed(name) for name in ("CT_small.dcm", "JPEG2000.dcm")]
    sent = {ds.SOPInstanceUID: dicom_files.part10(ds) for ds in datasets}
    try:
        with running_archive(settings) as server:
            response = httpx.post(
                f"{server.dicomweb}/studies", content=dicom_files.multipart(list(sent.values())),
                headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=dicom-boundary'},
            )
            assert response.status_code == 200, response.text
            assert httpx.get(f"{server.base_url}/ready").json()["storage"] == "ok"
            for ds in datasets:
                url = (f"{server.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                       f"/instances/{ds.SOPInstanceUID}")
                got = httpx.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; '
                                                        'transfer-syntax=*'})
                assert got.status_code == 200
                assert sent[ds.SOPInstanceUID] in got.content  # the bytes as stored
                frame = httpx.get(f"{url}/frames/1", headers={"Accept": "multipart/related; "
                                                              "type=application/octet-stream; transfer-syntax=*"})
                assert frame.status_code == 200
            names = {item["Key"] for item in s3_endpoint.client.list_objects_v2(Bucket=bucket)["Contents"]}
            assert names == {f"pacs/{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
                             for ds in datasets}

            gone = datasets[0]
            assert httpx.delete(f"{server.dicomweb}/studies/{gone.StudyInstanceUID}").status_code == 204
            listing = s3_endpoint.client.list_objects_v2(Bucket=bucket).get("Contents", [])
            assert len(listing) == 1

        # A fresh index over the same bucket: re-index rebuilds it from the objects.
        fresh = settings.model_copy(update={"data_dir": tmp_path / "fresh"})
        with running_archive(fresh) as server:
            report = httpx.post(f"{server.base_url}/api/admin/reindex", timeout=60).json()
            assert report == {"indexed": 1, "failed": []}
            studies = httpx.get(f"{server.dicomweb}/studies").json()
            assert [s["0020000D"]["Value"][0] for s in studies] == [datasets[1].StudyInstanceUID]
    finally:
        s3_endpoint.drop_bucket(bucket)


def test_a_replace_whose_folder_cannot_be_made_durable_puts_the_old_file_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The rename is done but the folder's fsync fails (an I/O error): the commit fails, and what a reader finds is
    # the copy that was there before, not a new file whose metadata write will never happen.
    storage = FileSystemStorage(tmp_path / "archive")
    put(storage, KEY, b"old" * 100)

    def failing_fsync(path: Path, flags: int) -> None:
        if path.is_dir():
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(filesystem, "_fsync", failing_fsync)
    with pytest.raises(StorageError):
        storage.commit(write_whole(storage.staging.new_path(), b"new" * 100), KEY)
    assert read(storage, KEY) == b"old" * 100
    assert storage.clear_staging() == 0  # nothing left aside or staged


def test_the_archive_waits_at_start_up_for_a_bucket_that_is_made_after_it(
    s3_endpoint: S3Endpoint, tmp_path: Path
) -> None:
    """As under `docker compose --profile s3 up`, where minio-init makes the bucket after the archive starts."""
    bucket = f"dicomweb-late-{uuid.uuid4().hex[:12]}"
    settings = Settings(  # type: ignore[call-arg]
        data_dir=tmp_path / "data", dimse_enabled=False, _env_file=None, storage_backend="s3", s3_bucket=bucket,
        s3_endpoint_url=s3_endpoint.url, s3_region=s3_endpoint.region,
        s3_access_key_id=s3_endpoint.access_key, s3_secret_access_key=s3_endpoint.secret_key,
    )
    maker = threading.Timer(2.0, s3_endpoint.client.create_bucket, kwargs={"Bucket": bucket})
    maker.start()
    try:
        with running_archive(settings) as server:
            assert s3_endpoint.client.head_bucket(Bucket=bucket)
            ds = dicom_files.renewed("CT_small.dcm")
            response = httpx.post(
                f"{server.dicomweb}/studies", content=dicom_files.multipart([dicom_files.part10(ds)]),
                headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=dicom-boundary'},
            )
            assert response.status_code == 200, response.text
    finally:
        maker.join()
        s3_endpoint.drop_bucket(bucket)
