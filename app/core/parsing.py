"""Header parsing for ingest, in worker processes so it uses every core.

Parsing a header and building its record is pure CPU (about 1.3 ms for a CT header, 3 ms through pydicom) and
holds the GIL, which the same process needs for HTTP, DIMSE and SQLite. A small process pool takes it elsewhere,
together with writing an instance received in memory to its staged file (`stage_and_parse`); results cross the
process boundary as plain data (a staged file's name, a record or a failure), never as pydicom objects. With
`workers=0`, or when the caller needs the pydicom Dataset itself (ingest rules and hooks), parsing runs in a
thread instead.
"""

from __future__ import annotations

import asyncio
import ctypes
import io
import logging
import mmap
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

from pydicom.dataset import Dataset

from app.core.header import HeaderError, dataset_json, first_text, read_header, record_from_json
from app.core.outcomes import FailureReason
from app.core.raw_header import RawHeader, read_json
from app.core.records import InstanceRecord
from app.core.uids import InvalidUIDError
from app.storage.base import StagedFile, write_whole

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
T = TypeVar("T")
START_TIMEOUT_SECONDS = 30.0  # a worker not ready by then (a hung import) is given up at start-up, not waited for


@dataclass(frozen=True)
class ParseFailure:
    """Why an instance could not be indexed, with whatever identity could be read."""

    reason: FailureReason
    message: str
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None


@dataclass
class Parsed:
    record: InstanceRecord
    dataset: Dataset | None = None  # only when asked for (rules and hooks read it)


def parse_instance(source: bytes | str | BinaryIO, keep_dataset: bool = False) -> Parsed | ParseFailure:
    """Read the header of a Part 10 instance given as bytes, a file path or an open file, and build its record.

    The common shape is read straight into DICOM JSON (app/core/raw_header.py), a file through a memory map so
    that only the header's pages are touched; any other shape, a stream with no file behind it, or a caller that
    wants the pydicom Dataset takes pydicom's path.
    """
    fast = None if keep_dataset else read_json(source) if isinstance(source, bytes) else _read_mapped(source)
    ds: Dataset | None = None
    if fast is not None:
        body, syntax = fast.body, fast.transfer_syntax_uid
    else:
        try:
            header = read_header(io.BytesIO(source) if isinstance(source, bytes) else source)
            ds = header.dataset
            body = dataset_json(ds, pixel_data_present=header.pixel_data_present)
            syntax = str(ds.file_meta.TransferSyntaxUID)
        except HeaderError as exc:
            return ParseFailure(FailureReason.CANNOT_UNDERSTAND, str(exc))
        except Exception as exc:
            # pydicom converts values lazily, so a damaged element (unknown VR, bad length) only raises here:
            # like a damaged header, it is "cannot understand", never an unhandled error (tests/test_hostile.py).
            return ParseFailure(
                FailureReason.CANNOT_UNDERSTAND, f"cannot parse the DICOM header: {type(exc).__name__}: {exc}"
            )
    try:
        record = record_from_json(body, syntax)
    except InvalidUIDError as exc:
        # Missing or malformed identifying UIDs: the data set does not satisfy its IOD (PS3.4 B.2.3 A9xx).
        return ParseFailure(
            FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            str(exc),
            first_text(body, "00080016"),
            first_text(body, "00080018"),
        )
    return Parsed(record, ds if keep_dataset else None)


def stage_and_parse(
    data: bytes, path: Path, keep_dataset: bool = False
) -> tuple[StagedFile, Parsed | ParseFailure]:
    """Stage an instance received in memory at `path` and read its header: the first step of ingest in one call,
    so that it costs one hop to a parser process and none of the server's own time."""
    staged = write_whole(path, data)
    try:
        return staged, parse_instance(data, keep_dataset)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _read_mapped(source: str | BinaryIO) -> RawHeader | None:
    try:
        if isinstance(source, str):
            with open(source, "rb") as stream:
                return _read_mapped(stream)
        with mmap.mmap(source.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return read_json(view)
    except (OSError, ValueError):  # an empty file; a stream with no file behind it (io.UnsupportedOperation)
        return None


class HeaderParser:
    """Runs ingest's parsing jobs (`parse_instance`, `stage_and_parse`) in a pool of `workers` processes (0: in a
    thread)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: Executor | None = None

    def _executor(self) -> Executor:
        if self._pool is None:
            # spawn: workers start from a clean interpreter, not a fork of a process holding threads and locks,
            # and are children of this process, so that they can end with it (`_end_with_parent`).
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_end_with_parent)
        return self._pool

    async def start(self) -> None:
        """Start the workers at once rather than on the first instance: a spawned worker takes about 0.3 s to
        import its modules, which the first STOW-RS or C-STORE after start-up would otherwise wait for (bench/:
        the first batch of 50 instances took 470 ms instead of 160). Returns once the pool has answered one task
        per worker (at least one worker is ready, the others started) or after START_TIMEOUT_SECONDS. A pool
        that cannot start is logged and dropped, and serving goes on: the first instance tries a fresh pool, and
        is parsed in a thread if that breaks too."""
        if self.workers <= 0:
            return
        pool = self._executor()
        try:
            await asyncio.wait_for(
                asyncio.gather(*(asyncio.wrap_future(pool.submit(_ready)) for _ in range(self.workers))),
                START_TIMEOUT_SECONDS,
            )
        except Exception as exc:  # BrokenProcessPool, a spawn refused (OSError), a stuck import (TimeoutError)
            log.error("the header parser processes did not start: %s", exc or type(exc).__name__)
            self._forget(pool)

    async def parse(self, source: bytes | str, *, keep_dataset: bool = False) -> Parsed | ParseFailure:
        return await self._run(parse_instance, source, keep_dataset=keep_dataset)

    async def stage_and_parse(
        self, data: bytes, path: Path, *, keep_dataset: bool = False
    ) -> tuple[StagedFile, Parsed | ParseFailure]:
        return await self._run(stage_and_parse, data, path, keep_dataset=keep_dataset)

    async def _run(self, job: Callable[..., T], *args: object, keep_dataset: bool) -> T:
        """`job(*args, keep_dataset)` in a worker process, or in a thread when there is none or the caller
        needs the pydicom Dataset (which stays in this process). Staging failures (OSError) come back raised."""
        if self.workers <= 0 or keep_dataset:
            return await asyncio.to_thread(job, *args, keep_dataset)
        loop = asyncio.get_running_loop()
        pool = self._executor()
        try:
            return await loop.run_in_executor(pool, job, *args)
        except BrokenProcessPool:
            # A worker died (killed, out of memory): this instance is handled here, and a fresh pool serves the
            # next. (A file it was staging is written again at the same name.)
            log.error("a header parser process died; restarting the pool")
            self._forget(pool)
            return await asyncio.to_thread(job, *args)

    def _forget(self, pool: Executor) -> None:
        """Drop a broken pool, unless another caller already replaced it (its jobs must not be cancelled)."""
        if self._pool is pool:
            self.close(wait=False)

    def close(self, *, wait: bool = True) -> None:
        """Stop the workers; with `wait`, join them, so a server that stops leaves no process behind."""
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
            self._pool = None


def _ready() -> None:
    """A task with nothing to do, so that a worker is started and has imported what parsing needs."""


def _end_with_parent() -> None:
    """In a worker: end when the archive ends, even when it is killed (SIGKILL, the OOM killer).

    A worker waits on a queue it holds both ends of, so it never sees the archive go and would idle forever.
    Linux's PR_SET_PDEATHSIG delivers SIGTERM when its parent ends; elsewhere workers still end with a clean
    stop, which joins them. (multiprocessing's resource tracker then ends too: nothing holds its pipe.)
    """
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent ended before the request was in place
        os._exit(0)

