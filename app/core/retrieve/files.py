"""The archive's files as a retrieve reads them: opened to be streamed, parsed whole, or parsed up to the pixels.

Why apart from the service: reading a stored file is one job whatever comes next (streamed as stored, frames or
bulk data cut out, rendered, transcoded), with its own cost rules and its own failures. A small file is read
whole in the hop that opens it (most instances are small); a parsed instance is kept a short while
(`DatasetCache`) when frames or renders will come back for it; a header is parsed without the pixel data when
only a small value is wanted; and the frames of an instance too large to keep parsed are read from where they
lie in its file (`StoredPixels`), so that a viewer paging through a 1 GB multi-frame instance reads a frame, not
the instance, for each one. A file that cannot be opened, read or parsed is `RetrieveFailed`.

Every call blocks: the service runs them in worker threads.
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence
from typing import BinaryIO

import pydicom
from pydicom.dataset import Dataset

from app.core.dicom.transfer_syntax import EXPLICIT_VR_BIG_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, is_encapsulated
from app.core.ingest.header import read_header
from app.core.ingest.raw_header import element_at
from app.core.records import StoredInstance
from app.core.retrieve.bulk import frame_data
from app.core.retrieve.cache import DatasetCache
from app.core.retrieve.negotiation import FrameEncoding
from app.core.retrieve.outcomes import RetrieveFailed
from app.core.retrieve.streaming import CHUNK_SIZE
from app.storage.base import Storage

_PIXEL_DATA = 0x7FE00010
_UNDEFINED = 0xFFFFFFFF


class StoredPixels:
    """An instance's header, and its (7FE0,0010) Pixel Data value in the file, read only where a frame lies: a
    native value through a memory map, an encapsulated one by its item headers and offset tables (PS3.5 A.4)."""

    def __init__(self, dataset: Dataset, handle: BinaryIO, start: int, length: int) -> None:
        self.dataset = dataset
        self._handle = handle
        self._start = start
        self._length = length
        self._map = None if length == _UNDEFINED else mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)

    def frames(self, ref: StoredInstance, numbers: Sequence[int], encoding: FrameEncoding) -> list[bytes]:
        """Frames `numbers` as `frame_data` cuts them (app/core/retrieve/bulk.py), from the file."""
        if self._map is None:
            self._handle.seek(self._start)
            return frame_data(self.dataset, ref, numbers, encoding, self._handle)
        # Every view of the map is let go before the call returns, so that `close` can unmap it.
        with memoryview(self._map) as whole, whole[self._start : self._start + self._length] as value:
            return frame_data(self.dataset, ref, numbers, encoding, value)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
        self._handle.close()


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

    def parsed_whole(self, ref: StoredInstance) -> bool:
        """Whether frames are cut from the instance parsed whole (and kept): no larger than the cache keeps."""
        return self._datasets.holds(ref.size)

    def open_pixels(self, ref: StoredInstance) -> StoredPixels | None:
        """The header and where the pixel data lies, for a local file in a little-endian syntax; None when the
        instance is to be read whole instead (no pixel data, another shape, a remote storage)."""
        syntax = ref.transfer_syntax_uid
        try:
            handle = self.storage.open(ref.storage_key)
        except (OSError, ValueError) as exc:
            raise RetrieveFailed(f"cannot open the file of {ref.sop_instance_uid}: {exc}") from exc
        try:
            header = read_header(handle)
            meta = header.dataset.file_meta
            implicit_vr, little_endian = syntax == IMPLICIT_VR_LITTLE_ENDIAN, syntax != EXPLICIT_VR_BIG_ENDIAN
            if header.pixel_data_offset is None or not little_endian or str(meta.TransferSyntaxUID) != syntax:
                handle.close()
                return None
            tag, start, length = element_at(
                handle, header.pixel_data_offset, implicit_vr=implicit_vr, little_endian=True
            )
            native = not is_encapsulated(syntax)
            if tag != _PIXEL_DATA or (length == _UNDEFINED) == native:
                handle.close()
                return None
            return StoredPixels(header.dataset, handle, start, length)
        except (OSError, ValueError):
            # Not a local file (a remote storage's stream has no descriptor to map), or not a header this reader
            # takes: the instance is read whole, which also gives the clear error for a damaged one.
            handle.close()
            return None
        except BaseException:
            handle.close()
            raise

    def clear(self) -> None:
        """Forget the parsed instances kept."""
        self._datasets.clear()
