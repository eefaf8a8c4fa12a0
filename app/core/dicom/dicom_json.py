"""DICOM JSON (PS3.18 F.2) of data elements, written for the ingest hot path.

pydicom's `DataElement.to_json_dict` is correct but spends ~40 µs an element on generic checks; a CT header of
300 elements made it the largest cost of storing an instance. This module produces the same JSON (a test
compares the two on every test file) with one branch per VR family.
"""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue

BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
SPECIFIC_CHARACTER_SET = 0x00080005
# Values of these VRs longer than this are served as bulk data rather than inline (PS3.18 8.6.1.2.1 leaves the
# threshold to the origin server), as BulkDataURIs relative to the instance.
BULK_DATA_THRESHOLD = 1024
BULK_DATA_PREFIX = "bulkdata/"
_NATIVE_NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD"})
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def element_json(elem: DataElement) -> dict[str, Any]:
    """One element, not a sequence, as DICOM JSON; binary values inline (the caller decides on bulk data)."""
    vr = elem.VR
    value = elem.value
    if vr in BINARY_VRS:
        if not value:
            return {"vr": vr}
        return {"vr": vr, "InlineBinary": base64.b64encode(bytes(value)).decode("ascii")}
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    if value is None or value == "" or not values:
        return {"vr": vr}
    if vr in _NATIVE_NUMBER_VRS:
        converted: list[Any] = [_json_number(v) for v in values]
    elif vr == "IS":
        converted = [None if v in ("", None) else int(v) for v in values]
    elif vr == "DS":
        converted = [None if v in ("", None) else _json_number(float(v)) for v in values]
    elif vr == "AT":
        converted = [f"{int(v):08X}" for v in values]
    elif vr == "PN":
        converted = [_person_name(v) for v in values]
    else:
        converted = [None if v is None else str(v) for v in values]
    return {"vr": vr, "Value": converted}


def binary_json(vr: str, value: bytes, path: tuple[str, ...], key: str) -> dict[str, Any]:
    """A binary value found at `path` (sequence keys and item numbers) + `key`: inline, or bulk data."""
    if len(value) > BULK_DATA_THRESHOLD:
        return bulk_data_json(vr, path, key)
    if not value:
        return {"vr": vr}
    return {"vr": vr, "InlineBinary": base64.b64encode(bytes(value)).decode("ascii")}


def bulk_data_json(vr: str, path: tuple[str, ...], key: str) -> dict[str, Any]:
    """A binary value above BULK_DATA_THRESHOLD, by reference: a reader that knows its length needs no copy."""
    return {"vr": vr, "BulkDataURI": BULK_DATA_PREFIX + "/".join((*path, key))}


def pixel_data_json(compressed: bool, bits_allocated: int) -> dict[str, Any]:
    """Pixel Data of a header read up to it: in the file, served as bulk data."""
    vr = "OB" if compressed or bits_allocated <= 8 else "OW"
    return {"vr": vr, "BulkDataURI": BULK_DATA_PREFIX + "7FE00010"}


def _json_number(v: Any) -> Any:
    # JSON has no NaN or infinity; PS3.18 F.2.3.1 leaves them unrepresentable, so they become null.
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _person_name(v: Any) -> dict[str, str] | None:
    text = str(v)
    if not text:
        return None
    return {group: part for group, part in zip(_PN_GROUPS, text.split("="), strict=False) if part}


# -- straight from the raw bytes ----------------------------------------------------------------------------
# pydicom parses a header into RawDataElements and turns each into a DataElement on first access; that turn
# (value objects, validation, tag comparisons) costs more than everything else ingest does. For the common
# cases, little endian with a single-byte or UTF-8 character set, the JSON is made from the raw bytes by the
# same rules pydicom applies (pydicom/values.py); anything else returns None and takes pydicom's path.

_STRUCT = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d", "UV": "Q", "SV": "q"}
_SPLIT_RSTRIP = frozenset({"AS", "CS", "DA", "DT", "TM", "UI"})  # multi_string: rstrip the whole, then split
_TEXT = frozenset({"SH", "LO", "UC"})  # decoded with the character set, split, each value rstripped
_SINGLE_TEXT = frozenset({"LT", "ST", "UT"})  # decoded with the character set, never split
_ENCODINGS = {"": "iso8859", "ISO_IR 6": "iso8859", "ISO_IR 100": "latin_1", "ISO_IR 192": "utf_8"}
DEFAULT_ENCODING = "iso8859"


def encoding_for(specific_character_set: object) -> str | None:
    """The Python codec for a Specific Character Set (0008,0005) the fast path handles, else None."""
    if specific_character_set is None:
        return DEFAULT_ENCODING
    if isinstance(specific_character_set, bytes):
        specific_character_set = specific_character_set.decode("ascii", "replace")
    text = str(specific_character_set).strip(" \x00")
    return _ENCODINGS.get(text)


def raw_value_json(vr: str, value: bytes, encoding: str | None) -> dict[str, Any] | None:
    """DICOM JSON of a raw little-endian value, or None when pydicom's conversion is needed."""
    if not value:
        return (
            {"vr": vr} if vr in _STRUCT or vr in _SPLIT_RSTRIP or vr in _TEXT or vr in _SINGLE_TEXT else None
        )
    values: list[Any]
    if vr in _STRUCT:
        code = _STRUCT[vr]
        size = struct.calcsize(code)
        if len(value) % size:
            return None
        values = [_json_number(v) for v in struct.unpack(f"<{len(value) // size}{code}", value)]
    elif vr == "AT":
        if len(value) % 4:
            return None
        pairs = struct.unpack(f"<{len(value) // 2}H", value)
        values = [f"{group:04X}{element:04X}" for group, element in zip(pairs[::2], pairs[1::2], strict=True)]
    elif vr in _SPLIT_RSTRIP:
        values = value.decode(DEFAULT_ENCODING).rstrip(" \x00").split("\\")
    elif vr == "AE":
        values = [s.strip() for s in value.decode(DEFAULT_ENCODING).split("\\")]
    elif vr == "UR":
        values = [value.decode(DEFAULT_ENCODING).rstrip()]
    elif encoding is None:
        return None
    elif vr in _TEXT:
        values = [v.rstrip("\x00 ") for v in value.decode(encoding).split("\\")]
    elif vr in _SINGLE_TEXT:
        values = [value.decode(encoding).rstrip("\x00 ")]
    elif vr == "PN":
        values = [_person_name(v) for v in value.rstrip(b"\x00 ").decode(encoding).split("\\")]
    elif vr in ("IS", "DS"):
        try:
            parts = value.decode(DEFAULT_ENCODING).strip(" \x00").split("\\")
            if vr == "IS":
                values = [None if p.strip() == "" else int(p) for p in parts]
            else:
                values = [None if p.strip() == "" else _json_number(float(p)) for p in parts]
        except ValueError:
            return None
    else:
        return None
    if vr not in _STRUCT and len(values) == 1 and values[0] in ("", None):
        return {"vr": vr}
    return {"vr": vr, "Value": values}
