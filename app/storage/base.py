"""The storage interface: where instance files live, and how they get there without ever being half-visible.

A file is first staged (written under a temporary name on the storage's own volume), then committed: moved
into place atomically. A commit over an existing file keeps the old one aside until the caller finalises, so a
replace whose metadata write fails can be rolled back. The methods block (file or network I/O); the services
call them from worker threads, together with parsing, so one instance costs one thread hop.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

# A staged file or kept-aside copy of another machine, or of a process here whose pid was taken over, is left
# alone at start-up until it is this old (its process may still be writing it).
ABANDONED_AFTER_SECONDS = 3600.0

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
    arrives and is parsed, then committed to the storage's own place (a rename, or an upload).

    Several archive processes may stage in one folder (replicas over one shared storage root), so each name
    says whose it is: `{unique}@{pid}@{host}{suffix}`. Start-up clears only what is abandoned (`abandoned`): its
    own process's leftovers, those of processes of this host that are gone, and anything else once it is
    ABANDONED_AFTER_SECONDS old, never a live replica's store in flight."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.host = socket.gethostname()
        # A random prefix per process and a counter: fresh names without a uuid4 (a getrandom system call, ~50 us
        # here) for each instance. A forked child draws its own prefix (`new_name` checks the pid).
        self._pid = 0
        self._prefix = ""
        self._numbers = itertools.count()
        folder.mkdir(parents=True, exist_ok=True)

    def new_name(self, suffix: str = "") -> str:
        """A fresh name that says which process made it (a staged file, a kept-aside copy)."""
        pid = os.getpid()
        if pid != self._pid:
            self._pid, self._prefix = pid, uuid.uuid4().hex[:16]
        return f"{self._prefix}{next(self._numbers):016x}@{pid}@{self.host}{suffix}"

    def new_path(self, suffix: str = ".part") -> Path:
        """A fresh name in the staging folder."""
        return self.folder / self.new_name(suffix)

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

    def abandoned(self, name: str, changed_at: float) -> bool:
        """Whether the staged file or copy `name` (last changed at `changed_at`) is no process's work in flight:
        this process's own (cleared before it serves), a gone process's of this host, or an old one."""
        parts = name.rsplit("/", 1)[-1].removesuffix(".part").removesuffix(".old").split("@")
        if len(parts) == 3 and parts[2] == self.host and parts[1].isdigit():
            pid = int(parts[1])
            if pid == os.getpid() or not _running(pid):
                return True
        return time.time() - changed_at > ABANDONED_AFTER_SECONDS

    def clear(self) -> int:
        """Remove what a crash left staged (see `abandoned`); returns how many files."""
        removed = 0
        for entry in os.scandir(self.folder):
            with contextlib.suppress(FileNotFoundError):
                info = entry.stat()
                # A kept-aside copy is a new link to an old file: its ctime, not its mtime, says when it was made.
                if self.abandoned(entry.name, max(info.st_mtime, info.st_ctime)):
                    Path(entry.path).unlink()
                    removed += 1
        return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


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
        """Remove what a crash left staged or kept aside (LocalStaging.abandoned: never another live process's
        work in flight); returns how many files. Called at start-up, before this process serves."""
        ...


def ping(storage: Storage) -> None:
    """Raise unless the storage answers: its own `ping` when it has one (S3: HEAD bucket), else a lookup that
    must not raise. Used by the readiness probe and by start-up, which waits for it."""
    own = getattr(storage, "ping", None)
    if callable(own):
        own()
    else:
        storage.exists("0/0/0.dcm")
