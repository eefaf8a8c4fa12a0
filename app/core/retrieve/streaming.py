"""An instance on its way out: stored bytes streamed in chunks, the data set a C-STORE carries, a zip of stored
instances made while it is sent, and how many-instance answers read ahead."""

from __future__ import annotations

import asyncio
import io
import logging
import time
import zipfile
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Final

from app.core.records import StoredInstance
from app.core.retrieve import transcode as tc
from app.storage.base import Storage

log = logging.getLogger(__name__)

CHUNK_SIZE: Final = 1024 * 1024
"""Files are read and sent 1 MiB at a time: big enough that thread hops cost little, small enough to stream."""

OPEN_BATCH: Final = 64
OPEN_BATCH_BYTES: Final = 4 * 1024 * 1024
"""A many-instance answer reads ahead this many instances (or about this many bytes) per worker-thread hop."""


@dataclass(frozen=True)
class EncodedInstance:
    """An instance's data set in one transfer syntax, without File Meta: what a DIMSE C-STORE carries."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    data: memoryview


@dataclass
class InstanceStream:
    """An instance ready to send: its transfer syntax and its Part 10 bytes, yielded in chunks.

    Iterate it once; `aclose()` releases the file when the consumer stops early (a client hanging up).
    """

    ref: StoredInstance
    transfer_syntax: str
    transcoded: bool
    size: int | None
    _head: bytes
    _file: BinaryIO | None = None
    _closed: bool = field(default=False, repr=False)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            if self._head:
                yield self._head
            while self._file is not None:
                chunk = await asyncio.to_thread(self._file.read, CHUNK_SIZE)
                if not chunk:
                    break
                yield chunk
        finally:
            await self.aclose()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self])

    @property
    def whole(self) -> bytes | None:
        """All of the instance's bytes when they are already in memory (a small file, a transcoded instance)."""
        return self._head if self._file is None else None

    def close_now(self) -> None:
        """Release the file from a synchronous context (cleanup after a cancelled read-ahead)."""
        if self._file is not None and not self._closed:
            self._closed = True
            self._file.close()

    async def aclose(self) -> None:
        if self._file is not None and not self._closed:
            self._closed = True
            try:
                await asyncio.to_thread(self._file.close)
            except asyncio.CancelledError:
                self._file.close()  # the client went away mid-answer: close here rather than leak it
                raise


def stored_data_set(part10: bytes, transfer_syntax: str) -> int | None:
    """Where the stored file's data set starts, when it can be sent as it is in `transfer_syntax`; None when
    its File Meta or its first element says otherwise (a writer's mistake that pydicom reads through)."""
    try:
        offset = tc.data_set_offset(part10)
    except tc.TranscodeError:
        return None
    return offset if tc.encoded_as_declared(part10, offset, transfer_syntax) else None


def in_batches(refs: Sequence[StoredInstance]) -> Iterator[list[StoredInstance]]:
    """`refs` cut into read-ahead batches of at most OPEN_BATCH instances and about OPEN_BATCH_BYTES."""
    batch: list[StoredInstance] = []
    size = 0
    for ref in refs:
        batch.append(ref)
        size += min(
            ref.size or CHUNK_SIZE, CHUNK_SIZE
        )  # a bigger file is only opened and its first chunk read
        if len(batch) >= OPEN_BATCH or size >= OPEN_BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


class ZipSink(io.RawIOBase):
    """An unseekable writable buffer: zipfile then writes data descriptors and never seeks back, which is
    what lets a zip be streamed as it is made."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.buffer += data
        return len(data)

    def take(self) -> bytes:
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


def zip_stored(storage: Storage, refs: Sequence[StoredInstance]) -> Iterator[bytes]:
    """The instances as stored, in a zip (PS3.18 Table 8.7.3-2 application/zip), made while it is sent.

    A plain (blocking) generator: the HTTP door runs each step in a worker thread, so reads never block the loop.
    Entries are stored, not deflated (DICOM pixel data is often compressed already, and speed matters more).
    """
    sink = ZipSink()
    stamp = time.localtime()[:6]
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for ref in refs:
            info = zipfile.ZipInfo(
                f"{ref.study_instance_uid}/{ref.series_instance_uid}/{ref.sop_instance_uid}.dcm", stamp
            )
            info.file_size = ref.size  # decides whether the entry needs Zip64 sizes
            try:
                handle = storage.open(ref.storage_key)
            except (OSError, ValueError) as exc:
                log.warning("instance %s left out of a zip: %s", ref.sop_instance_uid, exc)
                continue
            with handle, archive.open(info, "w") as entry:
                while chunk := handle.read(CHUNK_SIZE):
                    entry.write(chunk)
                    if len(sink.buffer) >= CHUNK_SIZE:
                        yield sink.take()
            if len(sink.buffer) >= CHUNK_SIZE:
                yield sink.take()
    yield sink.take()
