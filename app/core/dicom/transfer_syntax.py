"""Facts about transfer syntaxes, kept as one table so negotiation code never hard-codes them.

Every retrieval path (WADO-RS, WADO-URI, C-GET, C-MOVE) has to answer the same questions about a transfer
syntax: which media type carries one of its frames, which syntax a bare media type means, whether it loses
information, whether its pixel data is encapsulated. Keeping the answers here, as data, means the answers are
the same everywhere and each row can be checked against the standard it cites.

Sources:
- PS3.5 Annex A and PS3.6 Table A-1: the transfer syntax UIDs and whether they are lossless.
- PS3.18 §8.7.3 Table 8.7.3-2: application/dicom defaults to Explicit VR Little Endian.
- PS3.18 §8.7.3.3.1 Table 8.7.3-4: uncompressed bulk data is application/octet-stream in Explicit VR LE.
- PS3.18 §8.7.3.3.2 Table 8.7.3-5: the media type of compressed bulk data (one frame per part) and, for each
  media type, its default (D) and optional (O) transfer syntaxes.
- PS3.18 §8.7.3.5: the grammar listing every image-pixel and video-pixel media type.

This module is protocol-neutral: it imports neither FastAPI nor pynetdicom.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from pydicom.uid import UID

# Well-known UIDs, spelled out so this table does not depend on which names a pydicom version exports.
IMPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2.1"
ENCAPSULATED_UNCOMPRESSED_EXPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2.1.98"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN: Final = "1.2.840.10008.1.2.2"
JPEG_BASELINE_8BIT: Final = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED_12BIT: Final = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS: Final = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1: Final = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS: Final = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR_LOSSLESS: Final = "1.2.840.10008.1.2.4.81"
JPEG_2000_LOSSLESS: Final = "1.2.840.10008.1.2.4.90"
JPEG_2000: Final = "1.2.840.10008.1.2.4.91"
JPEG_2000_MC_LOSSLESS: Final = "1.2.840.10008.1.2.4.92"
JPEG_2000_MC: Final = "1.2.840.10008.1.2.4.93"
HTJ2K_LOSSLESS: Final = "1.2.840.10008.1.2.4.201"
HTJ2K_LOSSLESS_RPCL: Final = "1.2.840.10008.1.2.4.202"
HTJ2K: Final = "1.2.840.10008.1.2.4.203"
JPEG_XL_LOSSLESS: Final = "1.2.840.10008.1.2.4.110"
JPEG_XL_JPEG_RECOMPRESSION: Final = "1.2.840.10008.1.2.4.111"
JPEG_XL: Final = "1.2.840.10008.1.2.4.112"
RLE_LOSSLESS: Final = "1.2.840.10008.1.2.5"

OCTET_STREAM: Final = "application/octet-stream"
DICOM: Final = "application/dicom"


@dataclass(frozen=True)
class TransferSyntaxInfo:
    """One row of the table.

    `media_type` is the media type of one frame (or, for video, of the whole stream) retrieved as bulk data,
    per PS3.18 Table 8.7.3-4 (uncompressed) and Table 8.7.3-5 (compressed). `lossless` is True only when the
    syntax guarantees the decoded pixels equal the encoded ones (PS3.5 Annex A); a syntax that *may* be lossy
    (e.g. JPEG 2000 1.2.840.10008.1.2.4.91) counts as lossy. `encapsulated` follows PS3.5 §A.4: pixel data in
    fragments rather than native.
    """

    uid: str
    media_type: str
    lossless: bool
    encapsulated: bool


def _row(uid: str, media_type: str, *, lossless: bool, encapsulated: bool) -> tuple[str, TransferSyntaxInfo]:
    return uid, TransferSyntaxInfo(uid, media_type, lossless, encapsulated)


# The table. Native syntaxes carry frames as application/octet-stream (PS3.18 Table 8.7.3-4); the encapsulated
# ones use the media type Table 8.7.3-5 gives them.
TRANSFER_SYNTAXES: Final = MappingProxyType(
    dict(
        [
            # Native (PS3.5 §A.1-A.3, A.5). PS3.18 §8.7.3 forbids Implicit VR LE and Big Endian on the web,
            # but DIMSE (C-GET/C-MOVE) still negotiates them, so they stay in the table.
            _row(IMPLICIT_VR_LITTLE_ENDIAN, OCTET_STREAM, lossless=True, encapsulated=False),
            _row(EXPLICIT_VR_LITTLE_ENDIAN, OCTET_STREAM, lossless=True, encapsulated=False),
            _row(DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, OCTET_STREAM, lossless=True, encapsulated=False),
            _row(EXPLICIT_VR_BIG_ENDIAN, OCTET_STREAM, lossless=True, encapsulated=False),
            # Encapsulated but not compressed (PS3.5 §A.4.11): each fragment is a raw frame.
            _row(
                ENCAPSULATED_UNCOMPRESSED_EXPLICIT_VR_LITTLE_ENDIAN,
                OCTET_STREAM,
                lossless=True,
                encapsulated=True,
            ),
            # JPEG (PS3.5 §A.4.1) -> image/jpeg
            _row(JPEG_BASELINE_8BIT, "image/jpeg", lossless=False, encapsulated=True),
            _row(JPEG_EXTENDED_12BIT, "image/jpeg", lossless=False, encapsulated=True),
            _row(JPEG_LOSSLESS, "image/jpeg", lossless=True, encapsulated=True),
            _row(JPEG_LOSSLESS_SV1, "image/jpeg", lossless=True, encapsulated=True),
            # JPEG-LS (PS3.5 §A.4.3) -> image/jls
            _row(JPEG_LS_LOSSLESS, "image/jls", lossless=True, encapsulated=True),
            _row(JPEG_LS_NEAR_LOSSLESS, "image/jls", lossless=False, encapsulated=True),
            # JPEG 2000 (PS3.5 §A.4.4, A.4.5) -> image/jp2, Part 2 multi-component -> image/jpx
            _row(JPEG_2000_LOSSLESS, "image/jp2", lossless=True, encapsulated=True),
            _row(JPEG_2000, "image/jp2", lossless=False, encapsulated=True),
            _row(JPEG_2000_MC_LOSSLESS, "image/jpx", lossless=True, encapsulated=True),
            _row(JPEG_2000_MC, "image/jpx", lossless=False, encapsulated=True),
            # HTJ2K (PS3.5 §A.4.12) -> image/jphc (PS3.18 §8.7.3.5 grammar)
            _row(HTJ2K_LOSSLESS, "image/jphc", lossless=True, encapsulated=True),
            _row(HTJ2K_LOSSLESS_RPCL, "image/jphc", lossless=True, encapsulated=True),
            _row(HTJ2K, "image/jphc", lossless=False, encapsulated=True),
            # JPEG XL (PS3.5 §A.4.15) -> image/jxl. JPEG recompression keeps the bits of a *lossy* JPEG, so the
            # pixels it carries were already lossy: not counted as lossless.
            _row(JPEG_XL_LOSSLESS, "image/jxl", lossless=True, encapsulated=True),
            _row(JPEG_XL_JPEG_RECOMPRESSION, "image/jxl", lossless=False, encapsulated=True),
            _row(JPEG_XL, "image/jxl", lossless=False, encapsulated=True),
            # RLE (PS3.5 §A.4.2) -> image/dicom-rle
            _row(RLE_LOSSLESS, "image/dicom-rle", lossless=True, encapsulated=True),
            # Video (PS3.5 §A.4.6-A.4.10, §A.4.13). The whole stream is one part, not one frame. The
            # "fragmentable" variants (.1 suffix) carry the same bit stream split across fragments.
            _row("1.2.840.10008.1.2.4.100", "video/mpeg", lossless=False, encapsulated=True),
            _row("1.2.840.10008.1.2.4.100.1", "video/mpeg", lossless=False, encapsulated=True),
            _row("1.2.840.10008.1.2.4.101", "video/mpeg", lossless=False, encapsulated=True),
            _row("1.2.840.10008.1.2.4.101.1", "video/mpeg", lossless=False, encapsulated=True),
            _row("1.2.840.10008.1.2.4.102", "video/mp4", lossless=False, encapsulated=True),
            _row("1.2.840.10008.1.2.4.102.1", "video/mp4", lossless=False, encapsulated=True),
            _row("1.2.840.10008.1.2.4.103", "video/mp4", lossless=False, encapsulated=True),
            _row("1.2.840.10008.1.2.4.103.1", "video/mp4", lossless=False, encapsulated=True),
            _row("1.2.840.10008.1.2.4.104", "video/mp4", lossless=False, encapsulated=True),
            _row("1.2.840.10008.1.2.4.104.1", "video/mp4", lossless=False, encapsulated=True),
            _row("1.2.840.10008.1.2.4.105", "video/mp4", lossless=False, encapsulated=True),
            _row("1.2.840.10008.1.2.4.105.1", "video/mp4", lossless=False, encapsulated=True),
            _row("1.2.840.10008.1.2.4.106", "video/mp4", lossless=False, encapsulated=True),
            _row("1.2.840.10008.1.2.4.106.1", "video/mp4", lossless=False, encapsulated=True),
            # HEVC: PS3.18 §8.7.3.5 lists video/H265 among the video-pixel media types.
            _row("1.2.840.10008.1.2.4.107", "video/H265", lossless=False, encapsulated=True),
            _row("1.2.840.10008.1.2.4.108", "video/H265", lossless=False, encapsulated=True),
        ]
    )
)

# Transfer syntax UID -> media type of one frame as bulk data (PS3.18 Table 8.7.3-4 and Table 8.7.3-5).
MEDIA_TYPE_FOR_FRAMES: Final[MappingProxyType[str, str]] = MappingProxyType(
    {uid: info.media_type for uid, info in TRANSFER_SYNTAXES.items()}
)

# Media type -> the transfer syntax meant when a request names the media type without a transfer-syntax
# parameter: the row marked D (default) for that media type.
# - application/dicom: PS3.18 Table 8.7.3-2 (Explicit VR LE).
# - application/octet-stream: PS3.18 Table 8.7.3-4 (Explicit VR LE).
# - image/*: PS3.18 Table 8.7.3-5. Note the default for image/jpeg is JPEG Lossless SV1 (1.2.840.10008.1.2.4.70),
#   not JPEG Baseline: the table marks 4.70 "D" and 4.50/4.51/4.57 "O" (checked in the 2019e, 2020e and 2024d
#   editions). Negotiation code that already holds a frame in any image/jpeg syntax can still serve it as is when
#   the client named no transfer syntax; see TRANSFER_SYNTAXES_FOR_MEDIA_TYPE.
# - image/jphc, image/jxl, video/*: the lossless (or first-listed) syntax of each family. These rows were added to
#   Table 8.7.3-5 after the editions whose text was checked for this module; they follow the pattern of the other
#   rows (lossless variant as default) and should be re-checked against the current edition.
DEFAULT_TRANSFER_SYNTAX_FOR_MEDIA_TYPE: Final[MappingProxyType[str, str]] = MappingProxyType(
    {
        DICOM: EXPLICIT_VR_LITTLE_ENDIAN,
        OCTET_STREAM: EXPLICIT_VR_LITTLE_ENDIAN,
        "image/jpeg": JPEG_LOSSLESS_SV1,
        "image/dicom-rle": RLE_LOSSLESS,
        "image/jls": JPEG_LS_LOSSLESS,
        "image/jp2": JPEG_2000_LOSSLESS,
        "image/jpx": JPEG_2000_MC_LOSSLESS,
        "image/jphc": HTJ2K_LOSSLESS,
        "image/jxl": JPEG_XL_LOSSLESS,
        "video/mpeg": "1.2.840.10008.1.2.4.100",
        "video/mp4": "1.2.840.10008.1.2.4.102",
        "video/H265": "1.2.840.10008.1.2.4.107",
    }
)


def _syntaxes_by_media_type() -> dict[str, tuple[str, ...]]:
    grouped: dict[str, list[str]] = {}
    for uid, info in TRANSFER_SYNTAXES.items():
        # Encapsulated Uncompressed is not a bulk-data syntax of application/octet-stream in Table 8.7.3-4
        # (its frames are served as Explicit VR LE octets), so it is left out of the acceptable list.
        if uid == ENCAPSULATED_UNCOMPRESSED_EXPLICIT_VR_LITTLE_ENDIAN:
            continue
        grouped.setdefault(info.media_type, []).append(uid)
    # application/octet-stream is always Explicit VR LE on the web (PS3.18 §8.7.3.3.1: uncompressed bulk data is
    # little-endian octets), whatever native syntax the instance was stored in.
    grouped[OCTET_STREAM] = [EXPLICIT_VR_LITTLE_ENDIAN]
    return {media_type: tuple(uids) for media_type, uids in grouped.items()}


# Media type -> every transfer syntax that media type may carry as bulk data (the D and O rows).
TRANSFER_SYNTAXES_FOR_MEDIA_TYPE: Final[MappingProxyType[str, tuple[str, ...]]] = MappingProxyType(
    _syntaxes_by_media_type()
)

# PS3.18 §8.7.3: "The Implicit VR Little Endian and Explicit VR Big Endian Transfer Syntaxes shall not be used
# with Web Services." DIMSE may still use them.
NOT_FOR_WEB_SERVICES: Final = frozenset({IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN})


def is_lossless(uid: str) -> bool:
    """True when `uid` guarantees lossless pixel data; unknown or possibly-lossy syntaxes are False.

    pydicom 3.0 has no `UID.is_lossless`, so the answer comes from the table (PS3.5 Annex A).
    """
    info = TRANSFER_SYNTAXES.get(str(uid))
    return info is not None and info.lossless


def is_encapsulated(uid: str) -> bool:
    """True when pixel data in `uid` is encapsulated in fragments (PS3.5 §A.4).

    Uses pydicom's `UID.is_encapsulated` for any syntax pydicom knows, and the table for those it does not
    (e.g. JPEG XL, unknown to pydicom 3.0). A UID that is neither raises ValueError: guessing would let a caller
    slice compressed bytes as if they were native, or the reverse.
    """
    info = TRANSFER_SYNTAXES.get(str(uid))
    if info is not None:
        return info.encapsulated
    parsed = UID(str(uid))
    if parsed.is_transfer_syntax:
        return bool(parsed.is_encapsulated)
    raise ValueError(f"{uid!s} is not a known transfer syntax")
