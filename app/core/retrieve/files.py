"""The archive's files as a retrieve reads them: opened to be streamed, parsed whole, or parsed up to the pixels.

Why apart from the service: reading a stored file is one job whatever comes next (streamed as stored, frames or
bulk data cut out, rendered, transcoded), with its own cost rules and its own failures. A small file is read
whole in the hop that opens it (most instances are small); a parsed instance is kept a short while
(`DatasetCache`) when frames or renders will come back for it; a header is parsed without the pixel data when
only a small value is wanted. A file that cannot be opened, read or parsed is `RetrieveFailed`.

Every call blocks: the service runs them in worker threads.
"""

from __future__ import annotations

from typing import BinaryIO

import pydicom
from pydicom.dataset import Dataset

from app.core.records import StoredInstance
from app.core.retrieve.cache import DatasetCache
from app.core.retrieve.outcomes import RetrieveFailed
from app.core.retrieve.streaming import CHUNK_SIZE
from app.storage.base import Storage


class StoredFiles:
    """The stored files of the instances, and a cache of the parsed ones."""

    def __init__(self, storage: Storage, cache_bytes: int) -> None:
        self.storage = storage
        self._datasets = DatasetCache(cache_bytes)

    def open_stored(self, ref: StoredInstance) -> tuple[bytes, BinaryIO | None]:
        """Open the file; a small one is read whole in the same thread hop (most instances are small)."""
        try:
            handle = self.storage.open(ref.storage_key)
        except (OSError, ValueError) as exc:
            raise RetrieveFailed(f"cannot open the file of {ref.sop_instance_uid}: {exc}") from exc
        try:
            head = handle.read(CHUNK_SIZE)
            if len(head) < CHUNK_SIZE:
                handle.close()
                return head, None
        except BaseException:
            handle.close()
            raise
        return head, handle

    def read(self, ref: StoredInstance, *, cache: bool) -> Dataset:
        """The whole instance parsed; `cache` keeps it a short while (or takes it from there)."""
        key = (ref.storage_key, ref.size)
        if cache:
            found = self._datasets.get(key)
            if found is not None:
                return found
        try:
            with self.storage.open(ref.storage_key) as handle:
                ds = pydicom.dcmread(handle)  # every value read now (no defer_size), so the file can close
        except (OSError, ValueError) as exc:
            raise RetrieveFailed(f"cannot read the file of {ref.sop_instance_uid}: {exc}") from exc
        except Exception as exc:  # pydicom raises many kinds on damaged files
            raise RetrieveFailed(f"cannot parse the file of {ref.sop_instance_uid}: {exc}") from exc
        if cache:
            self._datasets.put(key, ds)
        return ds

    def read_header(self, ref: StoredInstance) -> Dataset:
        """The instance parsed up to its pixel data, for values that are not pixels."""
        try:
            with self.storage.open(ref.storage_key) as handle:
                return pydicom.dcmread(handle, stop_before_pixels=True)
        except (OSError, ValueError) as exc:
            raise RetrieveFailed(f"cannot read the file of {ref.sop_instance_uid}: {exc}") from exc
        except Exception as exc:
            raise RetrieveFailed(f"cannot parse the file of {ref.sop_instance_uid}: {exc}") from exc

    def clear(self) -> None:
        """Forget the parsed instances kept."""
        self._datasets.clear()
