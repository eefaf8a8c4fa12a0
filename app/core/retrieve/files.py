"""The archive's files as a retrieve reads them: opened to be streamed, parsed whole, or parsed up to the pixels.

Why apart from the service: reading a stored file is one job whatever comes next (streamed as stored, frames or
bulk data cut out, rendered, transcoded), with its own cost rules and its own failures. A small file is read
whole in the hop that opens it (most instances are small); a parsed instance is kept a short while
(`DatasetCache`) when frames or renders will come back for it; a header is parsed without the pixel data when
only a small value is wanted; and the frames of an instance too large to keep parsed are read from where they
lie in its file (`StoredPixels`), so that a viewer paging through a 1 GB multi-frame instance reads a frame, not
the instance, for each one. A frame of it to decode or render is made a one-frame instance of its own, which
pydicom's decoders and render.py read as they read any instance. A file that cannot be opened, read or parsed
is `RetrieveFailed`.

Every call blocks: the service runs them in worker threads.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Sequence
from typing import BinaryIO, Literal, cast

import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate

from app.core.dicom.transfer_syntax import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    is_encapsulated,
)
from app.core.ingest.header import read_header
from app.core.ingest.raw_header import element_at
from app.core.records import StoredInstance
from app.core.retrieve.bulk import frame_data
from app.core.retrieve.cache import DatasetCache
from app.core.retrieve.outcomes import RetrieveFailed
from app.core.retrieve.streaming import CHUNK_SIZE
from app.storage.base import Storage

_PIXEL_DATA = 0x7FE00010
_UNDEFINED = 0xFFFFFFFF
_NUMBER_OF_FRAMES = 0x00280008
_PER_FRAME_FUNCTIONAL_GROUPS = 0x52009230
_EXTENDED_OFFSET_TABLE = (0x7FE00001, 0x7FE00002)  # and its Lengths


class StoredPixels:
    """An instance's header, and its (7FE0,0010) Pixel Data value in its file, through a memory map of the file:
    only the pages a frame lies on are read, a native frame cut at its place, an encapsulated one found by its
    item headers and offset tables (PS3.5 A.4)."""

    def __init__(self, dataset: Dataset, mapped: mmap.mmap, start: int, length: int) -> None:
        self.dataset = dataset
        self._map = mapped
        self._start = start
        self._length = length

    def frames(self, ref: StoredInstance, numbers: Sequence[int], decode: bool) -> list[bytes]:
        """Frames `numbers` as `frame_data` cuts them (app/core/retrieve/bulk.py): as stored, from the file;
        decoded, each from the frame alone (`frame_alone`)."""
        if decode:
            return [frame_data(self.frame_alone(ref, number), ref, [1], True)[0] for number in numbers]
        if self._length == _UNDEFINED:
            self._map.seek(self._start)
            return frame_data(self.dataset, ref, numbers, False, _WholeReads(self._map))
        # Every view of the map is let go before the call returns, so that `close` can unmap it.
        with memoryview(self._map) as whole, whole[self._start : self._start + self._length] as value:
            return frame_data(self.dataset, ref, numbers, False, value)

    def frame_alone(self, ref: StoredInstance, number: int) -> Dataset:
        """Frame `number` as a one-frame instance: the header's attributes, the frame's own Per-Frame Functional
        Groups item (PS3.3 C.7.6.16), and the frame as stored for its Pixel Data. What decoding or rendering
        that frame reads, without the other frames; `number` is known to be one of the instance's frames."""
        [data] = self.frames(ref, [number], decode=False)
        pixel_data = encapsulate([data]) if self._length == _UNDEFINED else data
        # Read into items in the header, once for every frame of a request: a copy would read the whole
        # sequence (an item per frame) again for each.
        per_frame = self.dataset.get("PerFrameFunctionalGroupsSequence")
        # A mapping of its own holding the header's elements; changed values are new elements (pydicom sets an
        # attribute's value in its element in place, which the header shares).
        alone = Dataset(dict(self.dataset.items()))
        alone.file_meta = self.dataset.file_meta
        if "NumberOfFrames" in alone:
            alone.add_new(_NUMBER_OF_FRAMES, "IS", 1)
        if per_frame is not None:
            alone.add_new(_PER_FRAME_FUNCTIONAL_GROUPS, "SQ", list(per_frame[number - 1 : number]))
        # Offsets into the whole value no longer apply to one frame (PS3.5 A.4, Table A.4-1).
        for tag in _EXTENDED_OFFSET_TABLE:
            alone.pop(tag, None)
        # OB when encapsulated or 8 bits or fewer, else OW (PS3.5 A.1, A.4).
        wide = self._length != _UNDEFINED and int(self.dataset.get("BitsAllocated", 8) or 8) > 8
        alone.add_new(_PIXEL_DATA, "OW" if wide else "OB", pixel_data)
        return alone

    def close(self) -> None:
        # A frame still being cut in a worker thread (its caller gone) holds a view: the map goes after it.
        with contextlib.suppress(BufferError):
            self._map.close()


class _WholeReads:
    """The mapped file as pydicom's `get_frame` reads an encapsulated value: a read the file cannot fill is an
    error (a file cut short after ingest's checks), rather than a fragment sent short."""

    def __init__(self, mapped: mmap.mmap) -> None:
        self._map = mapped

    def read(self, size: int = -1) -> bytes:
        data = self._map.read(size)
        if 0 <= size != len(data):
            raise ValueError(f"the file ends inside the pixel data, {size - len(data)} bytes short")
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._map.seek(offset, cast(Literal[0, 1, 2], whence))
        return self._map.tell()

    def tell(self) -> int:
        return self._map.tell()


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
        """The header and where the pixel data lies, for a local file in a little-endian syntax that is not
        deflated; None when the instance is to be read whole instead (no pixel data, another shape, a remote
        storage)."""
        syntax = ref.transfer_syntax_uid
        if syntax in (EXPLICIT_VR_BIG_ENDIAN, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN):
            return None
        try:
            handle = self.storage.open(ref.storage_key)
        except (OSError, ValueError) as exc:
            raise RetrieveFailed(f"cannot open the file of {ref.sop_instance_uid}: {exc}") from exc
        # Not a local file (a remote storage's stream has no descriptor to map), not a header this reader takes,
        # no pixel data: None, and the instance is read whole, which also gives the clear error for a damaged one.
        with handle:
            try:
                mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):
                return None
            try:
                header = read_header(handle)
                at = header.pixel_data_offset
                if at is None or str(header.dataset.file_meta.TransferSyntaxUID) != syntax:
                    raise ValueError("no pixel data in the syntax the metadata names")
                tag, start, length = element_at(
                    mapped, at, implicit_vr=syntax == IMPLICIT_VR_LITTLE_ENDIAN, little_endian=True
                )
                if tag != _PIXEL_DATA or (length == _UNDEFINED) != is_encapsulated(syntax):
                    raise ValueError("not the Pixel Data element the transfer syntax implies")
            except (OSError, ValueError):
                mapped.close()
                return None
        return StoredPixels(header.dataset, mapped, start, length)

    def clear(self) -> None:
        """Forget the parsed instances kept."""
        self._datasets.clear()
