"""Filesystem storage: `{root}/{StudyUID}/{SeriesUID}/{SOPInstanceUID}.dcm`, Part 10 files as received.

Staging happens in `{root}/.incoming`, on the same filesystem as the final place, so the commit is one
`os.replace`: a reader sees the old file or the new one, never a partial one. The file is fsync'd before the
rename (unless disabled) so an acknowledged instance survives a power cut, not only a process crash.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from app.storage.base import Commit, LocalStaging, StagedFile, StorageError, check_key

STAGING = ".incoming"


class _FileCommit:
    def __init__(self, backup: Path | None, final: Path) -> None:
        self._backup = backup
        self._final = final

    @property
    def keeps_predecessor(self) -> bool:
        return self._backup is not None

    def finalize(self) -> None:
        if self._backup is not None:
            self._backup.unlink(missing_ok=True)

    def rollback(self) -> None:
        if self._backup is not None:
            os.replace(self._backup, self._final)
        else:
            self._final.unlink(missing_ok=True)


class FileSystemStorage:
    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root.resolve()
        self.fsync = fsync
        self.staging = LocalStaging(self.root / STAGING)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def stage(self) -> StagedFile:
        return self.staging.stage()

    def discard(self, staged: StagedFile) -> None:
        self.staging.discard(staged)

    def commit(self, staged: StagedFile, key: str) -> Commit:
        final = self._path(key)
        # A replace keeps the predecessor aside until finalize or rollback; one link call tells whether there is one.
        aside = self.staging.new_path(".old")
        backup: Path | None = None
        placed = False
        try:
            if staged.handle is None:  # written whole and closed (write_whole)
                if self.fsync:
                    _fsync(staged.path, os.O_RDONLY)
            else:
                staged.handle.flush()
                if self.fsync:
                    os.fsync(staged.handle.fileno())
                staged.handle.close()
            # The sweep's grace period counts from the commit, not from the last write of a long upload.
            os.utime(staged.path)
            try:
                os.link(final, aside)
                backup = aside
            except FileNotFoundError:
                pass
            self._place(staged.path, final)
            placed = True
            if self.fsync:
                _fsync(final.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError as exc:
            if placed:  # the new file is in place but not durable: put back what was there
                _FileCommit(backup, final).rollback()
            elif backup is not None:
                backup.unlink(missing_ok=True)
            self.discard(staged)
            raise StorageError(exc.errno, f"cannot store {key}: {exc.strerror}") from exc
        return _FileCommit(backup, final)

    @staticmethod
    def _place(source: Path, final: Path) -> None:
        # The folder usually exists: the rename is tried first, and a missing folder made on demand. A delete of
        # the series' last instance removes its empty folder (see `delete`); if that happens between mkdir and
        # the rename, the rename meets no folder: make it again, once.
        for attempt in (1, 2, 3):
            try:
                os.replace(source, final)
                return
            except FileNotFoundError:
                if attempt == 3 or not source.exists():
                    raise
            final.parent.mkdir(parents=True, exist_ok=True)

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        # Empty series and study folders go too, so the tree mirrors what is held.
        for parent in (path.parent, path.parent.parent):
            try:
                parent.rmdir()
            except OSError:
                break

    def iter_keys(self) -> Iterator[tuple[str, float]]:
        for study in os.scandir(self.root):
            if not study.is_dir() or study.name == STAGING:
                continue
            for series in os.scandir(study.path):
                if not series.is_dir():
                    continue
                for entry in os.scandir(series.path):
                    if entry.is_file() and entry.name.endswith(".dcm"):
                        yield f"{study.name}/{series.name}/{entry.name}", entry.stat().st_mtime

    def ping(self) -> None:
        """Raise unless the tree can be written (readiness probe): an unmounted volume or a read-only one fails."""
        folder = self.staging.folder
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise StorageError(5, f"storage root {self.root} is not a writable folder")

    def clear_staging(self) -> int:
        # A `.old` left here is the predecessor of a replace that crashed before finalize; the new file is
        # in place and its sender was either acknowledged or will retry, so the old copy goes too (once it is
        # abandoned: another replica sharing the root may be mid-replace).
        return self.staging.clear()


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
