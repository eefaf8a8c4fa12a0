"""The storage interface: where instance files live, and how they get there without ever being half-visible.

A file is first staged (written under a temporary name on the storage's own volume), then committed: moved
into place atomically. A commit over an existing file keeps the old one aside until the caller finalises, so a
replace whose metadata write fails can be rolled back. The methods block (file or network I/O); the services
call them from worker threads, together with parsing, so one instance costs one thread hop.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

# Storage keys are built only from validated UIDs; this pattern is checked again wherever a key turns into a
# path, so a key from the database or the network cannot reach outside the storage root.
KEY_PATTERN = re.compile(r"[0-9.]{1,64}/[0-9.]{1,64}/[0-9.]{1,64}\.dcm")


class StorageError(OSError):
    """The storage could not do what was asked (disk full, permission, unreachable)."""


def instance_key(study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
    """`{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm`, from UIDs already checked."""
    key = f"{study_uid}/{series_uid}/{sop_instance_uid}.dcm"
    check_key(key)
    return key


def check_key(key: str) -> str:
    if KEY_PATTERN.fullmatch(key) is None or ".." in key.split("/"):
        raise ValueError(f"not a storage key: {key[:200]!r}")
    return key


@dataclass
class StagedFile:
    """A file being written under a temporary name; `path` is local even for remote storages.

    `handle` is None once the file is complete and closed: written whole by `write_whole` (possibly in a parser
    process, see app/core/ingest/parsing.py) or copied by `copy_whole`.
    """

    path: Path
    handle: BinaryIO | None
    size: int = 0

    def write(self, data: bytes | memoryview) -> None:
        assert self.handle is not None, "a staged file written whole takes no more bytes"
        self.handle.write(data)
        self.size += len(data)


def write_whole(path: Path, data: bytes) -> StagedFile:
    """Stage `data` complete at `path` (a name from `LocalStaging.new_path`): written and closed in one go.

    The name is chosen by the caller, so that whoever hands the work to another process can remove the file when
    that process dies or the work is abandoned; writing again over a partial file is safe. The fsync, if any, is
    the commit's: it runs in the server's threads, where the waits of many instances overlap.
    """
    try:
        with open(path, "wb") as handle:
            handle.write(data)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return StagedFile(path=path, handle=None, size=len(data))


def copy_whole(source: Path, path: Path) -> StagedFile:
    """Stage a copy of the file `source` at `path` (a name from `LocalStaging.new_path`), by the kernel (no copy of
    it in memory, whatever its size), for a file already on disk such as one being imported."""
    try:
        shutil.copyfile(source, path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return StagedFile(path=path, handle=None, size=path.stat().st_size)


class LocalStaging:
    """Staged files in a local folder, for every storage: the bytes of an instance are written here while it
    arrives and is parsed, then committed to the storage's own place (a rename, or an upload)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def new_path(self) -> Path:
        """A fresh name in the staging folder."""
        return self.folder / f"{uuid.uuid4().hex}.part"

    def stage(self) -> StagedFile:
        path = self.new_path()
        try:
            handle = open(path, "xb")  # noqa: SIM115 - closed by commit or discard
        except OSError as exc:
            raise StorageError(exc.errno, f"cannot stage a file: {exc.strerror}") from exc
        return StagedFile(path=path, handle=handle)

    def discard(self, staged: StagedFile) -> None:
        if staged.handle is not None:
            with contextlib.suppress(OSError):
                staged.handle.close()
        staged.path.unlink(missing_ok=True)

    def clear(self) -> int:
        """Remove what a crash left staged; returns how many files."""
        removed = 0
        for entry in os.scandir(self.folder):
            Path(entry.path).unlink(missing_ok=True)
            removed += 1
        return removed


class Commit(Protocol):
    """A committed file whose replaced predecessor, if any, is still kept aside."""

    @property
    def keeps_predecessor(self) -> bool:
        """Whether a replaced file is kept aside, so that `finalize` has something to do."""
        ...

    def finalize(self) -> None:
        """Forget the predecessor: the metadata now names the new file."""

    def rollback(self) -> None:
        """Put things back as they were before the commit."""


class Storage(Protocol):
    staging: LocalStaging

    def stage(self) -> StagedFile: ...

    def discard(self, staged: StagedFile) -> None: ...

    def commit(self, staged: StagedFile, key: str) -> Commit: ...

    def open(self, key: str) -> BinaryIO: ...

    def size(self, key: str) -> int: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def iter_keys(self) -> Iterator[tuple[str, float]]:
        """Every stored key with its modification time (for the orphan sweep)."""
        ...

    def clear_staging(self) -> int:
        """Remove what a crash left staged; returns how many files. Only safe before serving."""
        ...


def ping(storage: Storage) -> None:
    """Raise unless the storage answers: its own `ping` when it has one (S3: HEAD bucket), else a lookup that
    must not raise. Used by the readiness probe and by start-up, which waits for it."""
    own = getattr(storage, "ping", None)
    if callable(own):
        own()
    else:
        storage.exists("0/0/0.dcm")
