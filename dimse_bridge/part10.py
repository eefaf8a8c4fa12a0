"""The File Meta Information of a received instance, written at byte level.

A C-STORE carries the data set alone; the archive stores Part 10 files (PS3.10 7), so the handler writes a
preamble, File Meta Information and then the peer's bytes, unchanged. This runs once per instance on the
association thread, where pydicom's per-element validation cost more than the rest of the handler together
(0.75 ms against ~30 us here, measured with CT_small.dcm). Its output is checked against pydicom's in
tests/dimse/test_store.py. Whether the data set matches its request is judged by ingest, which parses it.
"""

from __future__ import annotations

import struct
from typing import Final

from app.core.ingest.raw_header import LONG_VRS

PREAMBLE: Final = b"\x00" * 128 + b"DICM"  # PS3.10 7.1: 128-byte preamble and the DICM prefix



def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    """One File Meta element, Explicit VR Little Endian (PS3.10 7.1: group 0002 always is)."""
    if vr in LONG_VRS:
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

