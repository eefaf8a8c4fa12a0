"""Header parsing for ingest, in worker processes so it uses every core.

Parsing a header and building its record is pure CPU (about 1.3 ms for a CT header, 3 ms through pydicom) and
holds the GIL, which the same process needs for HTTP, DIMSE and SQLite. A small process pool takes it elsewhere,
together with writing an instance received in memory to its staged file (`stage_and_parse`); results cross the
process boundary as plain data (a staged file's name, a record or a failure), never as pydicom objects. With
`workers=0`, or when the caller needs the pydicom Dataset itself (ingest rules and hooks), parsing runs in a
thread instead.

pydicom warns about a sender's bad values (an IS of "1A") through its logger and `warnings`. In a worker process
neither reaches the server's log (nor knows the request), so while ingest parses an instance, wherever that
runs, those messages are collected and come back with the result as its `notes`; ingest logs them in the server
process, where the request or association id is known.
"""

from __future__ import annotations

import asyncio
import ctypes
import io
import logging
import mmap
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, TextIO, TypeVar

from pydicom.dataset import Dataset

from app.core.dicom.transfer_syntax import is_encapsulated
from app.core.dicom.uids import InvalidUIDError
from app.core.ingest.header import (
    DataSetMismatch,
    HeaderError,
    dataset_json,
    first_text,
    read_header,
    record_from_json,
)
from app.core.ingest.outcomes import FailureReason
from app.core.ingest.raw_header import check_pixel_data, read_json
from app.core.ingest.worker_pool import WorkerPool
from app.core.records import InstanceRecord, JSONDict
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
    notes: tuple[str, ...] = ()  # what pydicom warned about while reading (HeaderParser collects them)


@dataclass
class Parsed:
    record: InstanceRecord
    dataset: Dataset | None = None  # only when asked for (rules and hooks read it)
    notes: tuple[str, ...] = ()  # what pydicom warned about while reading


def parse_instance(
    source: bytes | str | BinaryIO, keep_dataset: bool = False, *, held: bool = False
) -> Parsed | ParseFailure:
    """Read the header of a Part 10 instance given as bytes, a file path or an open file, and build its record.

    The common shape is read straight into DICOM JSON (app/core/ingest/raw_header.py), a file through a memory map so
    that only the header's pages are touched; any other shape, a stream with no file behind it, or a caller that
    wants the pydicom Dataset takes pydicom's path. Whichever reader read the header, the pixel data and what
    follows it are then checked against it (`check_pixel_data`), and the identifying UIDs against PS3.5 9.1.

    `held`: a file the archive already holds (re-index) is indexed as it is, with only the checks that keep
    paths and keys safe: an instance stored before a stricter check existed must not lose its metadata (and
    then, to the sweep, its file).
    """
    if isinstance(source, str):
        with open(source, "rb") as stream:
            return parse_instance(stream, keep_dataset, held=held)
    if isinstance(source, bytes):
        return _parse(source, io.BytesIO(source), keep_dataset, held)
    with _memory_map(source) as view:
        return _parse(view, source, keep_dataset, held)


def _parse(
    view: bytes | mmap.mmap | None, stream: BinaryIO, keep_dataset: bool, held: bool = False
) -> Parsed | ParseFailure:
    """`view` is the instance's bytes when they can be had without reading the file (None: `stream` only)."""
    fast = None if keep_dataset or view is None else read_json(view)
    ds: Dataset | None = None
    if fast is not None:
        body, syntax, pixels_at = fast.body, fast.transfer_syntax_uid, fast.pixel_data_offset
        implicit_vr, little_endian = False, True  # the only encoding the byte reader takes
    else:
        try:
            header = read_header(stream)
            ds = header.dataset
            body = dataset_json(ds, pixel_data_present=header.pixel_data_present)
            syntax = str(ds.file_meta.TransferSyntaxUID)
            pixels_at = header.pixel_data_offset
            # The encoding as read: pydicom also reads a syntax it does not know.
            implicit_vr, little_endian = (bool(flag) for flag in ds.original_encoding)
        except HeaderError as exc:
            return ParseFailure(FailureReason.CANNOT_UNDERSTAND, str(exc))
        except Exception as exc:
            # pydicom converts values lazily, so a damaged element (unknown VR, bad length) only raises here:
            # like a damaged header, it is "cannot understand", never an unhandled error (tests/system/test_hostile.py).
            return ParseFailure(
                FailureReason.CANNOT_UNDERSTAND, f"cannot parse the DICOM header: {type(exc).__name__}: {exc}"
            )
    try:
        record = record_from_json(body, syntax, conformant=not held)
        if pixels_at is not None and not held:
            check_pixel_data(
                stream if view is None else view,
                pixels_at,
                implicit_vr=implicit_vr,
                little_endian=little_endian,
                native=_is_native(syntax),
                body=body,
            )
    except (InvalidUIDError, DataSetMismatch) as exc:
        # Malformed identifying UIDs, or a header its own pixel data contradicts: the data set does not satisfy
        # its IOD (PS3.4 B.2.3 A9xx).
        return _failure(FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, str(exc), body)
    except HeaderError as exc:
        return _failure(FailureReason.CANNOT_UNDERSTAND, str(exc), body)
    except RecursionError:
        return _failure(FailureReason.CANNOT_UNDERSTAND, "sequences nested too deeply to index", body)
    return Parsed(record, ds if keep_dataset else None)


def _failure(reason: FailureReason, message: str, body: JSONDict) -> ParseFailure:
    """A failure with whatever identity the header gives, so the answer can name the instance."""
    return ParseFailure(reason, message, first_text(body, "00080016"), first_text(body, "00080018"))


def _is_native(syntax: str) -> bool:
    """A known transfer syntax whose pixel data is not encapsulated (PS3.5 A.4), so its length is exact."""
    try:
        return not is_encapsulated(syntax)
    except ValueError:  # unknown: its pixel data's length proves nothing
        return False


@contextmanager
def _memory_map(stream: BinaryIO) -> Iterator[mmap.mmap | None]:
    """The file behind `stream` mapped read-only, or None (an empty file; a stream with no file behind it)."""
    try:
        view = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        view = None
    if view is None:
        yield None
        return
    with view:
        yield view


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


# --------------------------------------------------------------------------- what pydicom says about the values

MAX_NOTES = 10  # distinct messages kept per instance: a header of 10,000 bad values is still one log line
_NOTES: ContextVar[list[str] | None] = ContextVar("pydicom_notes", default=None)
_hooks_lock = threading.Lock()
_previous_showwarning: Callable[..., None] | None = None


class _Collect(logging.Filter):
    """On pydicom's logger: a record made while an instance is being parsed in this context becomes one of its
    notes instead of a log line here (in a worker process, "here" is a stderr without the request id)."""

    def filter(self, record: logging.LogRecord) -> bool:
        notes = _NOTES.get()
        if notes is None:
            return True
        _note(notes, record.getMessage())
        return False


_COLLECT = _Collect()


def _showwarning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """`warnings.showwarning` while ingest parses: the message becomes a note (pydicom's `warn_and_log` also
    logged it, which `_Collect` took); other contexts keep what was there before."""
    notes = _NOTES.get()
    if notes is not None:
        _note(notes, str(message))
    elif _previous_showwarning is not None:
        _previous_showwarning(message, category, filename, lineno, file, line)


def _note(notes: list[str], message: str) -> None:
    if message not in notes and len(notes) < MAX_NOTES:
        notes.append(message)


def _route_pydicom_messages() -> None:
    """Put the collectors in place in this process, once (again if someone replaced `warnings.showwarning`)."""
    global _previous_showwarning
    with _hooks_lock:
        logger = logging.getLogger("pydicom")
        if _COLLECT not in logger.filters:
            logger.addFilter(_COLLECT)
        if warnings.showwarning is not _showwarning:
            _previous_showwarning = warnings.showwarning
            warnings.showwarning = _showwarning


@contextmanager
def _noting() -> Iterator[list[str]]:
    """Collect pydicom's messages of the parse run in this context (thread-safe: each context has its own)."""
    _route_pydicom_messages()
    notes: list[str] = []
    token = _NOTES.set(notes)
    try:
        yield notes
    finally:
        _NOTES.reset(token)


def _parse_noting(source: bytes | str, keep_dataset: bool = False) -> Parsed | ParseFailure:
    """`parse_instance`, with pydicom's messages as the result's notes (run where the parse runs)."""
    with _noting() as notes:
        result = parse_instance(source, keep_dataset)
    return replace(result, notes=tuple(notes))


def _stage_and_parse_noting(
    data: bytes, path: Path, keep_dataset: bool = False
) -> tuple[StagedFile, Parsed | ParseFailure]:
    """`stage_and_parse`, with pydicom's messages as the result's notes."""
    with _noting() as notes:
        staged, result = stage_and_parse(data, path, keep_dataset)
    return staged, replace(result, notes=tuple(notes))


class HeaderParser:
    """Runs ingest's parsing jobs (`parse_instance`, `stage_and_parse`) in `workers` processes (0: in a thread),
    reached from the event loop without threads in between (app/core/ingest/worker_pool.py)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: WorkerPool | None = None

    def _workers(self) -> WorkerPool:
        if self._pool is None:
            # The workers are children of this process, so that they can end with it (`_end_with_parent`).
            self._pool = WorkerPool(self.workers, _end_with_parent)
        return self._pool

    async def start(self) -> None:
        """Start the workers at once rather than on the first instance: a spawned worker takes about 0.3 s to
        import its modules, which the first STOW-RS or C-STORE after start-up would otherwise wait for (bench/:
        the first batch of 50 instances took 470 ms instead of 160). Returns once every worker has answered, or
        after START_TIMEOUT_SECONDS. Workers that cannot start are logged and dropped, and serving goes on: the
        first instance tries fresh ones, and is parsed in a thread if that breaks too."""
        if self.workers <= 0:
            return
        pool = self._workers()
        try:
            await asyncio.wait_for(pool.start(), START_TIMEOUT_SECONDS)
        except Exception as exc:  # a worker died at start, a spawn refused (OSError), a stuck import (TimeoutError)
            log.error("the header parser processes did not start: %s", exc or type(exc).__name__)
            self._forget(pool)

    async def parse(self, source: bytes | str, *, keep_dataset: bool = False) -> Parsed | ParseFailure:
        return await self._run(_parse_noting, source, keep_dataset=keep_dataset)

    async def stage_and_parse(
        self, data: bytes, path: Path, *, keep_dataset: bool = False
    ) -> tuple[StagedFile, Parsed | ParseFailure]:
        return await self._run(_stage_and_parse_noting, data, path, keep_dataset=keep_dataset)

    async def _run(self, job: Callable[..., T], *args: object, keep_dataset: bool) -> T:
        """`job(*args, keep_dataset)` in a worker process, or in a thread when there is none or the caller
        needs the pydicom Dataset (which stays in this process). Staging failures (OSError) come back raised."""
        if self.workers <= 0 or keep_dataset:
            return await asyncio.to_thread(job, *args, keep_dataset)
        pool = self._workers()
        try:
            return await pool.run(job, *args)
        except BrokenProcessPool:
            # A worker died (killed, out of memory): this instance is handled here, and fresh workers serve the
            # next. (A file it was staging is written again at the same name.)
            log.error("a header parser process died; starting new ones")
            self._forget(pool)
            return await asyncio.to_thread(job, *args)

    def _forget(self, pool: WorkerPool) -> None:
        """Drop broken workers, unless another caller already replaced them (their jobs must not be failed)."""
        if self._pool is pool:
            self.close(wait=False)

    def close(self, *, wait: bool = True) -> None:
        """Stop the workers; with `wait`, join them, so a server that stops leaves no process behind."""
        if self._pool is not None:
            self._pool.close(wait=wait)
            self._pool = None


def _end_with_parent() -> None:
    """In a worker: end when the archive ends, even when it is killed (SIGKILL, the OOM killer).

    A worker whose socket's other end is held by a process it started from (its spawn parent keeps no copy,
    but a forked sibling might) would not see the archive go. Linux's PR_SET_PDEATHSIG delivers SIGTERM when
    its parent ends; elsewhere workers still end with a clean stop, which joins them.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent ended before the request was in place
        os._exit(0)

