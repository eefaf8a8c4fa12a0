"""Byte-level pieces of a received instance: its File Meta Information, and a peek at its first UIDs.

A C-STORE carries the data set alone; the archive stores Part 10 files (PS3.10 7), so the handler writes a
preamble, File Meta Information and then the peer's bytes, unchanged. Both functions here work on bytes
without pydicom's Dataset machinery, because they run once per instance on the association thread, where
pydicom's per-element validation cost more than the rest of the handler together (0.75 ms for the meta, 0.3
ms for the peek, against ~30 us each here, measured with CT_small.dcm). Their output is checked against
pydicom's in tests/test_dimse_store.py.
"""

from __future__ import annotations

import struct
import zlib
from typing import Final

from pydicom.uid import UID

PREAMBLE: Final = b"\x00" * 128 + b"DICM"  # PS3.10 7.1: 128-byte preamble and the DICM prefix

SOP_CLASS_UID: Final = 0x00080016
SOP_INSTANCE_UID: Final = 0x00080018

# PS3.5 7.1.2: explicit VRs whose element header has 2 reserved bytes and a 4-byte length.
_LONG_VRS: Final = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"})
_UNDEFINED_LENGTH: Final = 0xFFFFFFFF
_DEFLATED: Final = "1.2.840.10008.1.2.1.99"
_PEEK_BYTES: Final = 65536


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    """One File Meta element, Explicit VR Little Endian (PS3.10 7.1: group 0002 always is)."""
    if vr in _LONG_VRS:
        return struct.pack("<HH2s2xI", group, element, vr, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _ui(uid: str) -> bytes:
    value = uid.encode("ascii")
    return value + b"\0" if len(value) % 2 else value  # PS3.5 6.2: UI padded with NUL to even length


def _text(text: str) -> bytes:
    value = text.encode("ascii", "replace")
    return value + b" " if len(value) % 2 else value  # AE, SH: padded with a space


def encode_file_meta(
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    implementation_class_uid: str,
    implementation_version_name: str = "",
    sending_ae_title: str = "",
    receiving_ae_title: str = "",
) -> bytes:
    """Preamble, prefix and File Meta Information group (PS3.10 Table 7.1-1), ready to prepend to a data set.

    Sending and Receiving Application Entity Title (0002,0017 / 0002,0018) record who sent the instance to
    whom over the network; they are left out when empty.
    """
    body = [
        _element(0x0002, 0x0001, b"OB", b"\x00\x01"),  # File Meta Information Version
        _element(0x0002, 0x0002, b"UI", _ui(sop_class_uid)),  # Media Storage SOP Class UID
        _element(0x0002, 0x0003, b"UI", _ui(sop_instance_uid)),  # Media Storage SOP Instance UID
        _element(0x0002, 0x0010, b"UI", _ui(transfer_syntax_uid)),  # Transfer Syntax UID
        _element(0x0002, 0x0012, b"UI", _ui(implementation_class_uid)),  # Implementation Class UID
    ]
    if implementation_version_name:
        body.append(_element(0x0002, 0x0013, b"SH", _text(implementation_version_name[:16])))
    if sending_ae_title:
        body.append(_element(0x0002, 0x0017, b"AE", _text(sending_ae_title[:16])))
    if receiving_ae_title:
        body.append(_element(0x0002, 0x0018, b"AE", _text(receiving_ae_title[:16])))
    encoded = b"".join(body)
    group_length = _element(0x0002, 0x0000, b"UL", struct.pack("<I", len(encoded)))
    return PREAMBLE + group_length + encoded


def leading_uids(data: memoryview | bytes, transfer_syntax: str) -> dict[int, str] | None:
    """SOP Class and SOP Instance UID of an encoded data set, read from its first elements only.

    Walks element headers up to (0008,0018) in the data set's transfer syntax (PS3.5 7.1). Returns None when
    the walk cannot be trusted (an undefined length, a truncated header, an unknown syntax): the caller then
    leaves judgement to the full parse in ingest.
    """
    try:
        syntax = UID(transfer_syntax)
        implicit, little = bool(syntax.is_implicit_VR), bool(syntax.is_little_endian)
    except ValueError:
        return None
    if transfer_syntax == _DEFLATED:
        try:
            data = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data, _PEEK_BYTES)  # PS3.5 A.5: raw deflate
        except zlib.error:
            return None
    order = "<" if little else ">"
    found: dict[int, str] = {}
    pos, end = 0, min(len(data), _PEEK_BYTES)
    while pos + 8 <= end:
        group, element = struct.unpack_from(order + "HH", data, pos)
        tag = group << 16 | element
        if tag > SOP_INSTANCE_UID:
            break
        if implicit:
            (length,) = struct.unpack_from(order + "I", data, pos + 4)
            header = 8
        elif bytes(data[pos + 4 : pos + 6]) in _LONG_VRS:
            if pos + 12 > end:
                return None
            (length,) = struct.unpack_from(order + "I", data, pos + 8)
            header = 12
        else:
            (length,) = struct.unpack_from(order + "H", data, pos + 6)
            header = 8
        if length == _UNDEFINED_LENGTH or pos + header + length > len(data):
            return None
        if tag in (SOP_CLASS_UID, SOP_INSTANCE_UID):
            found[tag] = (
                bytes(data[pos + header : pos + header + length]).decode("ascii", "replace").rstrip("\0 ")
            )
        pos += header + length
    return found
