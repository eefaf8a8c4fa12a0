"""A header read straight into DICOM JSON, for the common Part 10 instance: the ingest fast path.

pydicom's reader builds a RawDataElement per element, then ingest turns each into DICOM JSON; for a CT header
of 250 elements that reading was a third of the CPU an instance cost to store. Most instances arrive in one
shape: a Part 10 file (PS3.10 7.1) in Explicit VR Little Endian or an encapsulated syntax (which is explicit
little endian up to the pixel data, PS3.5 A.4), with defined-length elements and sequences of explicit items.
For those, `read_json` walks the bytes once and writes the same JSON `app.core.header.dataset_json` writes
(tests/test_dicom_json.py compares the two on every test file). Anything else - implicit VR, big endian,
deflate, an unknown or UN VR, an undefined-length value that is not a sequence, a value that needs pydicom's
conversion, a truncated stream - makes it return None, and ingest takes pydicom's path, which also gives the
clear error for a damaged file.
"""

from __future__ import annotations

import mmap
import struct
from typing import NamedTuple

from pydicom.uid import UID

from app.core.dicom_json import (
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
from app.core.records import JSONDict

_PREAMBLE = 128
# PS3.5 7.1.2: these VRs have a 2-byte reserved field and a 4-byte length.
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UR", b"UT", b"UV", b"UN"})
_KNOWN_VRS = _LONG_VRS | frozenset(
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


class _Unhandled(Exception):
    """The bytes are not in the shape this reader handles (pydicom's path takes over)."""


def read_json(data: bytes | mmap.mmap) -> RawHeader | None:
    """The header of a Part 10 instance as DICOM JSON, or None when pydicom's path must read it."""
    try:
        if data[_PREAMBLE : _PREAMBLE + 4] != b"DICM":
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
        body, stopped_at_pixels = _Reader(data).top(offset)
        if stopped_at_pixels:
            [bits] = body.get("00280100", {}).get("Value", [8])  # several values: pydicom's path refuses it
            body["7FE00010"] = pixel_data_json(syntax.is_compressed, int(bits or 8))
    except (_Unhandled, struct.error, UnicodeDecodeError, IndexError, ValueError, TypeError, RecursionError):
        return None
    return RawHeader(str(syntax), body)


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
    if vr in _LONG_VRS:
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

    def top(self, offset: int) -> tuple[JSONDict, bool]:
        """The data set after the file meta, up to the pixel data; whether the pixel data follows."""
        elements, _, at_pixels = self._elements(offset, len(self.data), top=True)
        return self._json(elements, (), DEFAULT_ENCODING), at_pixels

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
