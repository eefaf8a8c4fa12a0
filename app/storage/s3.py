"""S3-compatible object storage (AWS S3, MinIO, Ceph RGW...): the filesystem layout as object keys.

Objects are `{S3_PREFIX}{StudyUID}/{SeriesUID}/{SOPInstanceUID}.dcm`, Part 10 files exactly as received, so a
bucket and a storage folder are interchangeable (`aws s3 sync` one into the other, then `python -m app reindex`).

* Staging is local (`DATA_DIR/staging`): the ingest path writes and parses a staged file before anything is
  sent, so a refused instance costs no request. The commit uploads it with boto3's managed transfer, which
  streams from disk and switches to multipart uploads above 64 MiB. A PUT is atomic: readers see the old
  object or the new one, never part of one.
* A commit over an existing object first copies the old one aside (server-side, under `{prefix}.replaced/`),
  so a replace whose metadata write fails is rolled back; finalize deletes the copy. Leftover copies of a crash
  are removed by `clear_staging` at start-up, as the filesystem storage does with its `.old` files (only
  abandoned ones: a copy names the process that made it, and replicas share the bucket).
* `open` answers a seekable, buffered reader over one streaming GET: sequential reads (WADO-RS as stored, zip)
  are a single request however large the object; a seek outside the buffer (pydicom does a few while parsing)
  reopens the stream at that offset with a ranged GET.

Why boto3: it is the reference S3 SDK and works with every S3-compatible service; its client is thread-safe and
blocking, which is exactly the storage protocol's contract (the services call storage from worker threads, so an
asyncio SDK such as aioboto3 would buy nothing and need a second interface); its managed transfer gives streamed
multipart uploads for free; and moto, the test S3 server, is built on it. obstore is faster for bulk transfers
but younger, with an API still moving.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from app.storage.base import KEY_PATTERN, Commit, LocalStaging, StagedFile, StorageError, check_key

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

log = logging.getLogger(__name__)

REPLACED = ".replaced/"
READ_BUFFER = 1024 * 1024
TRANSFER = TransferConfig(
    multipart_threshold=64 * 1024 * 1024, multipart_chunksize=16 * 1024 * 1024, max_concurrency=4
)
_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})


def _missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code", "")) in _MISSING


def _failure(action: str, exc: Exception) -> StorageError:
    return StorageError(5, f"S3 {action}: {exc}")  # EIO: the storage, not the request, failed


class S3Storage:
    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        staging: Path,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.staging = LocalStaging(staging)
        session = boto3.session.Session()
        self.client: S3Client = session.client(
            "s3",
            endpoint_url=endpoint_url or None,
            region_name=region or None,
            aws_access_key_id=access_key_id or None,
            aws_secret_access_key=secret_access_key or None,
            config=Config(
                retries={"max_attempts": 5, "mode": "standard"},
                max_pool_connections=32,
                # MinIO and most self-hosted services want path-style addressing.
                s3={"addressing_style": "path" if endpoint_url else "auto"},
            ),
        )

    def _object(self, key: str) -> str:
        return self.prefix + check_key(key)

    # -- the protocol ------------------------------------------------------------------------------------------

    def stage(self) -> StagedFile:
        return self.staging.stage()

    def discard(self, staged: StagedFile) -> None:
        self.staging.discard(staged)

    def commit(self, staged: StagedFile, key: str) -> Commit:
        name = self._object(key)
        backup: str | None = None
        try:
            if staged.handle is not None:
                staged.handle.flush()
                staged.handle.close()
            if self._head(name) is not None:
                backup = f"{self.prefix}{REPLACED}{self.staging.new_name()}"
                self.client.copy({"Bucket": self.bucket, "Key": name}, self.bucket, backup, Config=TRANSFER)
            self.client.upload_file(str(staged.path), self.bucket, name, Config=TRANSFER)
        except (ClientError, BotoCoreError, OSError) as exc:
            if backup is not None:
                with contextlib.suppress(ClientError, BotoCoreError):
                    self.client.delete_object(Bucket=self.bucket, Key=backup)
            self.discard(staged)
            raise _failure(f"cannot store {key}", exc) from exc
        staged.path.unlink(missing_ok=True)
        return _ObjectCommit(self, name, backup)

    def open(self, key: str) -> BinaryIO:
        reader = _ObjectReader(self.client, self.bucket, self._object(key))
        reader.start()
        return io.BufferedReader(reader, buffer_size=READ_BUFFER)

    def size(self, key: str) -> int:
        head = self._head(self._object(key))
        if head is None:
            raise FileNotFoundError(2, "no such object", key)
        return int(head["ContentLength"])

    def exists(self, key: str) -> bool:
        return self._head(self._object(key)) is not None

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._object(key))
        except (ClientError, BotoCoreError) as exc:
            raise _failure(f"cannot delete {key}", exc) from exc

    def iter_keys(self) -> Iterator[tuple[str, float]]:
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix
            )
            for page in pages:
                for item in page.get("Contents", ()):
                    key = item["Key"][len(self.prefix) :]
                    if KEY_PATTERN.fullmatch(key):
                        yield key, item["LastModified"].timestamp()
        except (ClientError, BotoCoreError) as exc:
            raise _failure("cannot list the bucket", exc) from exc

    def clear_staging(self) -> int:
        removed = self.staging.clear()
        # Copies kept aside by a replace that crashed before finalize (see the filesystem storage); a copy of
        # another replica's replace in flight is left alone (LocalStaging.abandoned).
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + REPLACED
        )
        for page in pages:
            for item in page.get("Contents", ()):
                if self.staging.abandoned(item["Key"], item["LastModified"].timestamp()):
                    self.client.delete_object(Bucket=self.bucket, Key=item["Key"])
                    removed += 1
        return removed

    def ping(self) -> None:
        """Raise unless the bucket answers (readiness probe)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise _failure(f"bucket {self.bucket} unreachable", exc) from exc

    # -- helpers -------------------------------------------------------------------------------------------------

    def _head(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=name))
        except ClientError as exc:
            if _missing(exc):
                return None
            raise _failure(f"cannot look up {name}", exc) from exc
        except BotoCoreError as exc:
            raise _failure(f"cannot look up {name}", exc) from exc


class _ObjectCommit:
    def __init__(self, storage: S3Storage, name: str, backup: str | None) -> None:
        self._storage = storage
        self._name = name
        self._backup = backup

    @property
    def keeps_predecessor(self) -> bool:
        return self._backup is not None

    def finalize(self) -> None:
        if self._backup is not None:
            self._storage.client.delete_object(Bucket=self._storage.bucket, Key=self._backup)

    def rollback(self) -> None:
        client, bucket = self._storage.client, self._storage.bucket
        if self._backup is not None:
            client.copy({"Bucket": bucket, "Key": self._backup}, bucket, self._name, Config=TRANSFER)
            client.delete_object(Bucket=bucket, Key=self._backup)
        else:
            client.delete_object(Bucket=bucket, Key=self._name)


class _ObjectReader(io.RawIOBase):
    """A seekable raw stream over an object: one streaming GET, reopened at the new offset after a seek."""

    def __init__(self, client: S3Client, bucket: str, name: str) -> None:
        self._client = client
        self._bucket = bucket
        self._name = name
        self._position = 0
        self._size = 0
        self._body: Any = None  # botocore StreamingBody positioned at self._position, or None
        self.name = name

    def start(self) -> None:
        """The first GET (whole object): says whether it exists and how large it is."""
        self._open_at(0)

    def _open_at(self, offset: int) -> None:
        self._close_body()
        arguments: dict[str, Any] = {"Bucket": self._bucket, "Key": self._name}
        if offset:
            arguments["Range"] = f"bytes={offset}-"
        try:
            answer = self._client.get_object(**arguments)
        except ClientError as exc:
            if _missing(exc):
                raise FileNotFoundError(2, "no such object", self._name) from exc
            raise _failure(f"cannot read {self._name}", exc) from exc
        except BotoCoreError as exc:
            raise _failure(f"cannot read {self._name}", exc) from exc
        if offset == 0:
            self._size = int(answer["ContentLength"])
        self._body = answer["Body"]
        self._position = offset

    def _close_body(self) -> None:
        if self._body is not None:
            with contextlib.suppress(Exception):
                self._body.close()
            self._body = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        target = max(0, base + offset)
        if target != self._position:
            self._close_body()  # reopened lazily, at the new offset, by the next read
            self._position = target
        return target

    def readinto(self, buffer: Any) -> int:
        if self._position >= self._size:
            return 0
        if self._body is None:
            self._open_at(self._position)
        view = memoryview(buffer).cast("B")
        try:
            data = self._body.read(len(view))
        except (BotoCoreError, OSError) as exc:
            self._close_body()
            raise _failure(f"cannot read {self._name}", exc) from exc
        view[: len(data)] = data
        self._position += len(data)
        return len(data)

    def close(self) -> None:
        self._close_body()
        super().close()
