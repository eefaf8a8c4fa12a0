"""A header read straight into DICOM JSON, for the common Part 10 instance: the ingest fast path.

pydicom's reader builds a RawDataElement per element, then ingest turns each into DICOM JSON; for a CT header
of 250 elements that reading was a third of the CPU an instance cost to store. Most instances arrive in one
shape: a Part 10 file (PS3.10 7.1) in Explicit VR Little Endian or an encapsulated syntax (which is explicit
little endian up to the pixel data, PS3.5 A.4), with defined-length elements and sequences of explicit items.
For those, `read_json` walks the bytes once and writes the same JSON `app.core.header.dataset_json` writes
(tests/core/dicom/test_dicom_json.py compares the two on every test file). Anything else - implicit VR, big endian,
deflate, an unknown or UN VR, an undefined-length value that is not a sequence, a value that needs pydicom's
conversion, a truncated stream - makes it return None, and ingest takes pydicom's path, which also gives the
clear error for a damaged file.

Neither reader parses the pixel data or what follows it. `check_pixel_data` walks those bytes (element and item
headers only, whichever reader read the header) so that an instance is refused when an element there runs past
the end of the file, or when its header claims more frames or pixels than its pixel data can hold: a later
WADO-RS frame request or render would otherwise trust those numbers.
"""

from __future__ import annotations

import mmap
import struct
from typing import BinaryIO, NamedTuple

from pydicom.uid import UID

from app.core.dicom.dicom_json import (
    BINARY_VRS,
    BULK_DATA_THRESHOLD,
    DEFAULT_ENCODING,
    SPECIFIC_CHARACTER_SET,
    binary_json,
    bulk_data_json,
    encoding_for,
    pixel_data_json,
    raw_value_json,
)
from app.core.ingest.header import DataSetMismatch, HeaderError
from app.core.records import JSONDict

_PREAMBLE = 128
# PS3.5 7.1.2: these VRs have a 2-byte reserved field and a 4-byte length.
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UR", b"UT", b"UV", b"UN"})
_KNOWN_VRS = LONG_VRS | frozenset(
    {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH", b"SL",
     b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
)
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD  # PS3.5 7.5
_PIXEL_DATA = 0x7FE00010
_HEAD = struct.Struct("<HH2s")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_ITEM_HEAD = struct.Struct("<HHI")


class RawHeader(NamedTuple):
    transfer_syntax_uid: str
    body: JSONDict  # the data set's DICOM JSON, pixel data as a BulkDataURI (without the file meta group)
    pixel_data_offset: int | None  # where the (7FE0,0010) Pixel Data element starts, when there is one


# PS3.10 7.1: a Part 10 file opens with a 128-byte preamble and "DICM"; pydicom refuses anything else too.
NOT_PART10 = "not a DICOM Part 10 instance: no 'DICM' after a 128-byte preamble (PS3.10 7.1)"


def is_part10(data: bytes | mmap.mmap) -> bool:
    """Whether `data` opens as a Part 10 file does (the one test made before anything else is spent on it)."""
    return data[_PREAMBLE : _PREAMBLE + 4] == b"DICM"


class _Unhandled(Exception):
    """The bytes are not in the shape this reader handles (pydicom's path takes over)."""


def read_json(data: bytes | mmap.mmap) -> RawHeader | None:
    """The header of a Part 10 instance as DICOM JSON, or None when pydicom's path must read it."""
    try:
        if not is_part10(data):
            return None
        meta, offset = _meta(data, _PREAMBLE + 4)
        # pydicom trusts (0002,0000) File Meta Information Group Length to end the group; a file where it
        # disagrees with the elements is left to pydicom, so both paths always read the same data set.
        group_length = meta.get(0x00020000, b"")
        if len(group_length) != 4 or _PREAMBLE + 4 + 12 + _U32.unpack(group_length)[0] != offset:
            return None
        syntax = UID(meta.get(0x00020010, b"").decode("ascii").rstrip("\0 "))
        # Explicit VR little endian up to the pixel data: that syntax and every encapsulated one (PS3.5 A.4).
        if not syntax.is_transfer_syntax or syntax.is_implicit_VR or not syntax.is_little_endian:
            return None
        if syntax.is_deflated:
            return None
        body, pixels_at = _Reader(data).top(offset)
        if pixels_at is not None:
            [bits] = body.get("00280100", {}).get("Value", [8])  # several values: pydicom's path refuses it
            body["7FE00010"] = pixel_data_json(syntax.is_compressed, int(bits or 8))
    except (_Unhandled, struct.error, UnicodeDecodeError, IndexError, ValueError, TypeError, RecursionError):
        return None
    return RawHeader(str(syntax), body, pixels_at)


def _meta(data: bytes | mmap.mmap, offset: int) -> tuple[dict[int, bytes], int]:
    """The File Meta Information group (always explicit VR little endian, PS3.10 7.1)."""
    meta: dict[int, bytes] = {}
    while offset + 8 <= len(data):
        group, element, vr = _HEAD.unpack_from(data, offset)
        if group != 0x0002:
            return meta, offset
        if vr not in _KNOWN_VRS or vr in (b"UN", b"SQ"):
            raise _Unhandled
        start, length = _value_at(data, offset, vr)
        if length == _UNDEFINED or start + length > len(data):
            raise _Unhandled
        meta[(group << 16) | element] = data[start : start + length]
        offset = start + length
    raise _Unhandled  # nothing after the meta group


def _value_at(data: bytes | mmap.mmap, offset: int, vr: bytes) -> tuple[int, int]:
    """Where the value of the explicit-VR element at `offset` starts, and its length (PS3.5 7.1.2)."""
    if vr in LONG_VRS:
        return offset + 12, _U32.unpack_from(data, offset + 8)[0]
    return offset + 8, _U16.unpack_from(data, offset + 6)[0]


# An element as (VR, value start, value length, a sequence's items - each its own elements): plain tuples, since
# a header has hundreds and this is the hot path.
_Element = tuple[str, int, int, list["_Elements"]]
_Elements = dict[int, _Element]
_NO_ITEMS: list[_Elements] = []  # shared by every element that is not a sequence


class _Reader:
    def __init__(self, data: bytes | mmap.mmap) -> None:
        self.data = data

    def top(self, offset: int) -> tuple[JSONDict, int | None]:
        """The data set after the file meta, up to the pixel data; where the pixel data starts, if it does."""
        elements, end, at_pixels = self._elements(offset, len(self.data), top=True)
        return self._json(elements, (), DEFAULT_ENCODING), end if at_pixels else None

    def _elements(
        self, offset: int, end: int, *, top: bool = False, delimited: bool = False
    ) -> tuple[_Elements, int, bool]:
        """The elements from `offset` to `end` (a `delimited` item: to its Item Delimitation Item), where the
        walk ended, and whether it stopped at the pixel data."""
        data = self.data
        elements: _Elements = {}
        while offset < end:
            if offset + 8 > end:
                raise _Unhandled
            group, element, vr_bytes = _HEAD.unpack_from(data, offset)
            tag = (group << 16) | element
            if delimited and tag == _ITEM_END:
                return elements, offset + 8, False
            if top and group == 0x7FE0:
                if tag == _PIXEL_DATA and offset + 12 <= len(data):  # pydicom reads its whole element header
                    return elements, offset, True
                raise _Unhandled  # Float / Double Float Pixel Data: pydicom's path decides
            if group == 0xFFFE or vr_bytes not in _KNOWN_VRS or vr_bytes == b"UN":
                raise _Unhandled
            start, length = _value_at(data, offset, vr_bytes)
            if vr_bytes == b"SQ":
                items, offset = self._items(start, length, end)
                elements[tag] = ("SQ", start, 0, items)
                continue
            if length == _UNDEFINED or start + length > end:
                raise _Unhandled
            elements[tag] = (vr_bytes.decode("ascii"), start, length, _NO_ITEMS)
            offset = start + length
        if delimited:
            raise _Unhandled  # no Item Delimitation Item before the end
        return elements, offset, False

    def _items(self, start: int, length: int, limit: int) -> tuple[list[_Elements], int]:
        """The items of a sequence value (PS3.5 7.5), and where the sequence ends."""
        data = self.data
        items: list[_Elements] = []
        end = limit if length == _UNDEFINED else start + length
        if end > limit:
            raise _Unhandled
        offset = start
        while offset < end:
            if offset + 8 > end:
                raise _Unhandled
            group, element, item_length = _ITEM_HEAD.unpack_from(data, offset)
            tag = (group << 16) | element
            if tag == _SEQUENCE_END and length == _UNDEFINED:
                return items, offset + 8
            if tag != _ITEM:
                raise _Unhandled
            if item_length == _UNDEFINED:
                item, offset, _ = self._elements(offset + 8, end, delimited=True)
            else:
                item_end = offset + 8 + item_length
                if item_end > end:
                    raise _Unhandled
                item, offset, _ = self._elements(offset + 8, item_end)
            items.append(item)
        if length == _UNDEFINED:
            raise _Unhandled  # no Sequence Delimitation Item
        return items, end

    def _json(self, elements: _Elements, path: tuple[str, ...], inherited: str | None) -> JSONDict:
        data = self.data
        # An item without its own Specific Character Set uses its parent's (PS3.3 C.12.1.1.2).
        encoding = inherited
        if SPECIFIC_CHARACTER_SET in elements:
            _, start, length, _ = elements[SPECIFIC_CHARACTER_SET]
            encoding = encoding_for(data[start : start + length])
        out: JSONDict = {}
        for tag in sorted(elements):
            vr, start, length, items = elements[tag]
            key = f"{tag:08X}"
            if vr == "SQ":
                values = [self._json(item, (*path, key, str(n)), encoding) for n, item in enumerate(items)]
                out[key] = {"vr": "SQ", "Value": values} if values else {"vr": "SQ"}
            elif vr in BINARY_VRS:  # UN never gets here: its elements take pydicom's path
                # A large value is only referred to: it is not copied out of the file (or the bytes).
                out[key] = (
                    bulk_data_json(vr, path, key)
                    if length > BULK_DATA_THRESHOLD
                    else binary_json(vr, data[start : start + length], path, key)
                )
            elif not length:
                out[key] = {"vr": vr}
            elif (converted := raw_value_json(vr, data[start : start + length], encoding)) is not None:
                out[key] = converted
            else:
                raise _Unhandled  # a value pydicom converts (a character set of its own, a bad number...)
        return out


# --------------------------------------------------------------------------- the pixel data and what follows

_Source = bytes | mmap.mmap | BinaryIO
_BITS_A_BYTE = 8


def check_pixel_data(
    source: _Source, offset: int, *, implicit_vr: bool, little_endian: bool, native: bool, body: JSONDict
) -> None:
    """Check the Pixel Data element at `offset` and every element after it against the file and the header.

    `body` is the header's DICOM JSON (either reader's); `native` says the transfer syntax is a known
    uncompressed one. Raises HeaderError (0xC000) when an element or item runs past the end of the file or an
    encapsulated value holds something other than items (PS3.5 7.5, A.4), and DataSetMismatch (0xA900) when
    the header claims more than the pixel data holds.
    """
    walk = _Walk(source, implicit_vr=implicit_vr, little_endian=little_endian)
    try:
        tag, _, start, length = walk.head(offset)
        if tag != _PIXEL_DATA:
            raise HeaderError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) found where the Pixel Data was expected")
        if length == _UNDEFINED:
            # Encapsulated (PS3.5 A.4): the Basic Offset Table item, then the fragments.
            end, items = walk.items(start)
            held = sum(items[1:])
        else:
            end, held = walk.value_end(start, length, "Pixel Data"), length
        walk.elements(end, walk.size)  # Data Set Trailing Padding, signatures...
    except RecursionError:
        raise HeaderError("sequences after the pixel data are nested too deeply to read") from None
    _check_frames(body, held, native=native)


def _check_frames(body: JSONDict, held: int, *, native: bool) -> None:
    """The header's frames and pixels against the `held` bytes of pixel data (fragment bytes if encapsulated)."""
    frames = _first_int(body, "00280008") or 1  # Number of Frames; absent, zero or unreadable: one frame
    # Every frame holds something: an encapsulated one at least a byte of its own (PS3.5 A.4 lets a frame span
    # fragments, and some writers put several frames in one fragment, so fragments are not counted), a native one
    # at least one pixel of one bit (PS3.5 8.1.1). A claim beyond that is impossible, whatever the other
    # attributes say, and bounds by the file's size whatever a reader later does once per frame.
    if frames > 1 and frames > (held * _BITS_A_BYTE if native else held):
        raise DataSetMismatch(f"NumberOfFrames {frames} is more than {held} bytes of pixel data can hold")
    if not native:
        return
    factors = [_first_int(body, tag) for tag in ("00280010", "00280011", "00280002", "00280100")]
    if any(factor is None for factor in factors):
        return  # Rows, Columns, SamplesPerPixel or BitsAllocated missing: nothing to compare with
    rows, columns, samples, bits = (factor or 0 for factor in factors)
    pixels = rows * columns * samples * frames
    # PS3.5 8.1.1: BitsAllocated 1 packs eight pixels a byte; otherwise each sample takes BitsAllocated / 8.
    needed = -(-pixels // _BITS_A_BYTE) if bits == 1 else pixels * (bits // _BITS_A_BYTE)
    if _first_text(body, "00280004") == "YBR_FULL_422":
        needed = needed // 3 * 2  # PS3.3 C.7.6.3.1.2: two chrominance samples for every two pixels
    if held < needed:
        raise DataSetMismatch(
            f"Pixel Data holds {held} bytes but Rows {rows} x Columns {columns} x SamplesPerPixel {samples} x "
            f"BitsAllocated {bits} x NumberOfFrames {frames} need {needed} (PS3.5 8.1.1)"
        )


def _first_int(body: JSONDict, key: str) -> int | None:
    values = body.get(key, {}).get("Value") or [None]
    return values[0] if isinstance(values[0], int) and values[0] >= 0 else None


def _first_text(body: JSONDict, key: str) -> str | None:
    values = body.get(key, {}).get("Value") or [None]
    return values[0] if isinstance(values[0], str) else None


def element_at(source: _Source, offset: int, *, implicit_vr: bool, little_endian: bool) -> tuple[int, int, int]:
    """(tag, value start, value length) of the element whose header starts at `offset` (PS3.5 7.1): where a
    reader finds a value it does not read, such as the pixel data of a large instance (app/core/retrieve/files.py).
    HeaderError when the file ends inside the header."""
    tag, _, start, length = _Walk(source, implicit_vr=implicit_vr, little_endian=little_endian).head(offset)
    return tag, start, length


class _Walk:
    """Element and item headers from an offset to the end of the file, in one encoding; values are skipped."""

    def __init__(self, source: _Source, *, implicit_vr: bool, little_endian: bool) -> None:
        self.source = source
        self.implicit_vr = implicit_vr
        self.order = "<" if little_endian else ">"
        self.size = len(source) if isinstance(source, bytes | mmap.mmap) else source.seek(0, 2)

    def read(self, offset: int, count: int) -> bytes:
        if isinstance(self.source, bytes | mmap.mmap):
            data = self.source[offset : offset + count]
        else:
            self.source.seek(offset)
            data = self.source.read(count)
        if len(data) < count:
            raise HeaderError(f"the file ends inside the element or item header at byte {offset}")
        return data

    def value_end(self, start: int, length: int, what: str) -> int:
        if start + length > self.size:
            raise HeaderError(
                f"{what} at byte {start} claims {length} bytes, past the end of the file ({self.size} bytes)"
            )
        return start + length

    def head(self, offset: int) -> tuple[int, bytes, int, int]:
        """(tag, VR or b"", value start, value length) of the element or item at `offset` (PS3.5 7.1)."""
        raw = self.read(offset, 8)
        group, element = struct.unpack_from(f"{self.order}HH", raw)
        tag = (group << 16) | element
        vr = raw[4:6]
        # Items and delimiters have no VR (PS3.5 7.5); an element whose VR is not two capitals is read as
        # implicit VR, as pydicom reads it (writers that switch encoding mid-file exist: SC_rgb_jpeg.dcm).
        if self.implicit_vr or group == 0xFFFE or not b"AA" <= vr <= b"ZZ":
            return tag, b"", offset + 8, struct.unpack_from(f"{self.order}I", raw, 4)[0]
        if vr in LONG_VRS:
            return tag, vr, offset + 12, struct.unpack(f"{self.order}I", self.read(offset + 8, 4))[0]
        return tag, vr, offset + 8, struct.unpack_from(f"{self.order}H", raw, 6)[0]

    def elements(self, offset: int, end: int, *, delimited: bool = False) -> int:
        """Skip the elements from `offset` (an undefined-length item's: to its Item Delimitation Item, or to the end
        of the file: a value left open there is taken as ended, as pydicom takes it)."""
        while offset < end:
            tag, vr, start, length = self.head(offset)
            if delimited and tag == _ITEM_END:
                return start
            if length != _UNDEFINED:
                offset = self.value_end(start, length, f"({tag >> 16:04X},{tag & 0xFFFF:04X})")
            elif vr == b"UN":  # an undefined-length UN holds implicit VR little endian items (PS3.5 6.2.2)
                offset, _ = _Walk(self.source, implicit_vr=True, little_endian=True).items(start)
            else:
                offset, _ = self.items(start)
        return offset

    def items(self, offset: int) -> tuple[int, list[int]]:
        """Skip the items of an undefined-length value up to its Sequence Delimitation Item (PS3.5 7.5) or the end
        of the file; where it ends, and each item's length (0 for an undefined-length one)."""
        lengths: list[int] = []
        while offset < self.size:
            tag, _, start, length = self.head(offset)
            if tag == _SEQUENCE_END:
                return start, lengths
            if tag != _ITEM:
                raise HeaderError(
                    f"({tag >> 16:04X},{tag & 0xFFFF:04X}) at byte {offset} where an item was expected (PS3.5 7.5)"
                )
            if length == _UNDEFINED:
                offset = self.elements(start, self.size, delimited=True)
                lengths.append(0)
            else:
                offset = self.value_end(start, length, "an item")
                lengths.append(length)
        return offset, lengths
