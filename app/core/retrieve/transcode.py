"""Pixel data re-encoding and frame extraction, shared by every retrieval protocol.

A client names the transfer syntax it can read (WADO-RS Accept, WADO-URI transferSyntax, the presentation
context of a C-GET or C-MOVE sub-operation); the archive stores whatever the modality sent. This module bridges
the two: it re-encodes a whole instance (`transcode`), serialises it as a Part 10 file (`encode_part10`), and
cuts single frames out of the pixel data either as stored (`frame_bytes`) or decoded (`decoded_frame_bytes`) for
the WADO-RS frames resource (PS3.18 §10.4.1.1.4).

Decoding and encoding are delegated to pydicom 3's pixel backends (`Dataset.decompress`/`compress`, which use
pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg, pylibjpeg-rle and Pillow as installed). What can be *written*
is deliberately narrow: the native syntaxes plus the lossless codecs whose encoder is installed and tested. No
lossy encoding is offered, so transcoding never silently degrades an image.

This module is protocol-neutral: it imports neither FastAPI nor pynetdicom.
"""

from __future__ import annotations

import copy
import functools
import struct
from collections.abc import Iterator, Sequence
from io import BytesIO
from typing import Any, Final, cast

import numpy as np
import numpy.typing as npt
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import get_frame
from pydicom.filebase import ReadableBuffer
from pydicom.filewriter import dcmwrite
from pydicom.pixels.decoders.base import Decoder, get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import UID
from pydicom.valuerep import VR

from app.core.dicom.transfer_syntax import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    JPEG_2000_LOSSLESS,
    JPEG_LS_LOSSLESS,
    RLE_LOSSLESS,
    is_encapsulated,
)
from app.core.ingest.raw_header import LONG_VRS


class TranscodeError(Exception):
    """The source pixel data cannot be decoded, or the target transfer syntax cannot be produced; says why."""


class FrameNumberError(ValueError):
    """A requested frame number is outside 1..NumberOfFrames (PS3.18 §10.4.1.1.4: frame numbers are 1-based)."""


# Native targets: pydicom's writer produces these from any native little-endian dataset (PS3.5 §A.1, A.2, A.5).
_NATIVE_TARGETS: Final = frozenset(
    {EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN}
)
# Lossless encapsulated targets, offered only when pydicom reports an installed encoder for them:
# RLE (pydicom's own encoder or pylibjpeg-rle), JPEG 2000 Lossless (pylibjpeg-openjpeg >= 2), JPEG-LS Lossless
# (pyjpegls). Lossy targets are never offered: a retrieval must not quietly lose information.
_ENCAPSULATED_TARGETS: Final = frozenset({RLE_LOSSLESS, JPEG_2000_LOSSLESS, JPEG_LS_LOSSLESS})

# PS3.3 C.7.6.3.1.2: these photometric interpretations have horizontally subsampled chroma in native form, which
# none of the lossless encoders above accept (PS3.5 §8.2.2-8.2.4 want full-resolution components).
_SUBSAMPLED_YBR: Final = frozenset({"YBR_FULL_422", "YBR_PARTIAL_422", "YBR_PARTIAL_420"})

# Element VRs whose values pydicom keeps as raw bytes in the dataset's byte order (PS3.5 §7.3); they must be
# byte-swapped by hand when converting Big Endian to Little Endian. Value: the width of one number in bytes.
_SWAPPED_VRS: Final[dict[str, int]] = {VR.OW: 2, VR.OF: 4, VR.OL: 4, VR.OD: 8, VR.OV: 8}

_PREAMBLE_LENGTH: Final = 128  # PS3.10 §7.1

_PIXEL_DATA_KEYWORDS: Final = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

PixelValue = bytes | memoryview | ReadableBuffer
"""A Pixel Data value: its bytes, a view of them, or a file positioned at its first byte."""


def can_encode(transfer_syntax_uid: str) -> bool:
    """True when `transcode` can produce `transfer_syntax_uid` on this installation.

    Native: Explicit VR LE, Implicit VR LE, Deflated Explicit VR LE. Encapsulated: RLE Lossless, JPEG 2000
    Lossless and JPEG-LS Lossless, each only if pydicom finds an installed encoder plugin for it. Explicit VR Big
    Endian is retired (PS3.5 §A.3) and is never produced.
    """
    uid = str(transfer_syntax_uid)
    if uid in _NATIVE_TARGETS:
        return True
    if uid in _ENCAPSULATED_TARGETS:
        return _encoder_available(uid)
    return False


@functools.cache
def _encoder_available(uid: str) -> bool:
    try:
        return bool(get_encoder(UID(uid)).is_available)
    except NotImplementedError:
        return False


def transcode(ds: Dataset, transfer_syntax_uid: str) -> Dataset:
    """Return a copy of `ds` whose pixel data (if any) is encoded in `transfer_syntax_uid`.

    The copy's file_meta.TransferSyntaxUID names the new syntax. SOP Instance UID is kept: a lossless
    re-encoding, or the decoding of stored lossy data, yields the same instance (PS3.3 C.7.6.1.1.5 asks for a
    new UID only when lossy compression is *applied*, which this module never does). Encapsulated sources are
    decoded with YCbCr converted to RGB (PS3.5 §8.2.1: a decoded JPEG YBR_FULL_422 image is no longer
    subsampled), and the Photometric Interpretation updated to match.

    Raises TranscodeError when the target is not encodable here, when the source cannot be decoded, or when the
    pixel data does not suit the target codec (e.g. 1-bit segmentation data in RLE).
    """
    target = UID(str(transfer_syntax_uid))
    if not can_encode(target):
        raise TranscodeError(f"cannot encode to {_describe(target)}: no encoder for it is available here")
    source = source_transfer_syntax(ds)

    # Deep copy because pydicom's compress()/decompress() and element assignment work in place, and a shallow
    # Dataset copy shares its DataElement objects, so anything lighter would change the caller's dataset (which
    # may be cached and served to other requests at the same time). deepcopy shares immutable bytes values, so
    # the pixel data itself is not duplicated until it is replaced.
    out = copy.deepcopy(ds)
    if source == target:
        return out

    if "PixelData" in out and _is_encapsulated(source):
        _check_decoded_size(out, frame_count(out), MAX_DECODED_INSTANCE_BYTES)
        _decompress(out, source)
    elif source == EXPLICIT_VR_BIG_ENDIAN:
        _big_to_little_endian(out)
    # From here on `out` holds native little-endian pixel data (or none).
    _file_meta(out).TransferSyntaxUID = UID(EXPLICIT_VR_LITTLE_ENDIAN)

    if _is_encapsulated(target):
        if "PixelData" in out:
            _compress(out, target)
        elif any(keyword in out for keyword in _PIXEL_DATA_KEYWORDS):
            # PS3.5 §A.4: only (7FE0,0010) Pixel Data can be encapsulated; float pixel data is always native.
            raise TranscodeError(f"float pixel data cannot be encoded in {_describe(target)}")
    _file_meta(out).TransferSyntaxUID = target
    return out


def encode_part10(ds: Dataset) -> bytes:
    """Serialise `ds` as a DICOM Part 10 file: zeroed 128-byte preamble, "DICM", File Meta Information, data set.

    PS3.10 §7.1. The encoding follows ds.file_meta.TransferSyntaxUID; missing File Meta elements (SOP Class and
    Instance UIDs, implementation UID) are filled in by pydicom without touching `ds.file_meta`. pydicom does
    touch `ds` in place in two value-preserving ways: it sets the Pixel Data undefined-length flag to match the
    syntax (PS3.5 §A.4) and, when the encoding differs from the one read, resolves ambiguous VRs such as
    "US or SS" (PS3.5 §6.2). No element value changes.
    """
    source_transfer_syntax(ds)  # a clear TranscodeError rather than pydicom's guesswork when it is missing
    buffer = BytesIO()
    try:
        try:
            dcmwrite(buffer, ds, enforce_file_format=True)
        except TypeError:
            # A data set read in another VR encoding than its File Meta declares (a writer's mistake that
            # pydicom reads through) still holds raw elements without a VR: decode every element, so each is
            # written from its value in the declared encoding, and write again.
            for _ in ds.iterall():
                pass
            buffer = BytesIO()
            dcmwrite(buffer, ds, enforce_file_format=True)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise TranscodeError(f"cannot encode the instance as a Part 10 file: {exc}") from exc
    data = buffer.getvalue()
    # PS3.10 §7.1: the preamble is free for application use, and pydicom keeps whatever the stored file had
    # (e.g. a TIFF header, or an executable in a polyglot file - CVE-2019-11687). After transcoding such a
    # header is stale at best, so what this server sends always carries an all-zero preamble.
    return bytes(_PREAMBLE_LENGTH) + data[_PREAMBLE_LENGTH:]


def data_set_offset(part10: bytes | memoryview) -> int:
    """Where the data set of a Part 10 file starts: after the preamble, "DICM" and the File Meta group.

    The group is walked element by element rather than trusted through its Group Length (0002,0000), which
    some writers leave out; PS3.10 7.1 has it always in Explicit VR Little Endian. TranscodeError when the
    bytes are not a Part 10 file.
    """
    view = memoryview(part10)
    if len(view) < _PREAMBLE_LENGTH + 4 or bytes(view[_PREAMBLE_LENGTH : _PREAMBLE_LENGTH + 4]) != b"DICM":
        raise TranscodeError("not a DICOM Part 10 file (no DICM prefix)")
    offset = _PREAMBLE_LENGTH + 4
    while offset + 8 <= len(view):
        group, _element, vr = struct.unpack_from("<HH2s", view, offset)
        if group != 0x0002:
            return offset
        if not (vr.isalpha() and vr.isupper()):  # pydicom reads an Implicit VR File Meta; we do not guess
            raise TranscodeError("the File Meta Information is not in Explicit VR Little Endian (PS3.10 7.1)")
        if vr in LONG_VRS:  # PS3.5 7.1.2: 2 reserved bytes, then a 4-byte length
            if offset + 12 > len(view):
                break
            offset += 12 + struct.unpack_from("<I", view, offset + 8)[0]
        else:
            offset += 8 + struct.unpack_from("<H", view, offset + 6)[0]
    if offset == len(view):
        return offset  # File Meta and an empty data set
    raise TranscodeError("the File Meta Information runs past the end of the file")


def encoded_as_declared(part10: bytes | memoryview, offset: int, transfer_syntax: str) -> bool:
    """Whether the data set's first element is encoded as `transfer_syntax` says: an explicit VR where it
    declares one (PS3.5 7.1.2), none where it is implicit (7.1.3). Some writers declare one and write the other;
    pydicom reads such a file by what it finds, and only re-encoding can then honour the declared syntax.
    A deflated data set (or an empty one) cannot be looked into here and is taken at its word."""
    uid = UID(transfer_syntax)
    if len(part10) < offset + 6 or not uid.is_transfer_syntax or uid.is_deflated:
        return True
    vr = bytes(part10[offset + 4 : offset + 6])
    looks_explicit = vr.isalpha() and vr.isupper()
    return looks_explicit != bool(uid.is_implicit_VR)


def frame_count(ds: Dataset) -> int:
    """(0028,0008) Number of Frames, or 1 when it is absent or empty (PS3.3 C.7.6.6: single-frame images)."""
    value = ds.get("NumberOfFrames")
    if value is None or value == "":
        return 1
    try:
        count = int(value)
    except (TypeError, ValueError) as exc:
        raise TranscodeError(f"Number of Frames {value!r} is not a number") from exc
    return count if count > 0 else 1


def source_transfer_syntax(ds: Dataset) -> UID:
    """The transfer syntax `ds` is currently encoded in, from its File Meta Information (PS3.10 §7.1)."""
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if not uid:
        raise TranscodeError(
            "the dataset has no (0002,0010) Transfer Syntax UID in its file meta information"
        )
    return UID(str(uid))


def frame_bytes(ds: Dataset, frame_numbers: Sequence[int], pixels: PixelValue | None = None) -> list[bytes]:
    """The bytes of each requested frame (1-based, PS3.18 §10.4.1.1.4) as stored.

    Encapsulated syntaxes: the frame's fragments joined, i.e. the codestream without item delimiters (PS3.18
    §8.7.3.3.2), located through the Extended Offset Table, the Basic Offset Table, or by walking the fragments
    when neither is present (PS3.5 §A.4). Native syntaxes: the frame as little-endian octets (PS3.18
    §8.7.3.3.1); for little-endian storage that is exactly the stored slice. Frames of 1-bit data that do not
    start on a byte boundary (PS3.5 §8.1.1: bits are packed across frames) are re-packed to start at bit 0.

    `pixels` is the Pixel Data value of a `ds` read without it (app/core/retrieve/files.py): a view of a native
    value, or a file positioned at an encapsulated one, from which only the frames' bytes are read.
    """
    count = frame_count(ds)
    _check_frame_numbers(frame_numbers, count)
    if pixels is None:
        if "PixelData" not in ds:
            raise TranscodeError("the dataset has no (7FE0,0010) Pixel Data")
        pixels = cast(bytes, ds.PixelData)
    source = source_transfer_syntax(ds)
    if _is_encapsulated(source):
        if isinstance(pixels, memoryview):
            raise TranscodeError("encapsulated pixel data is read from its bytes or from its file")
        return _encapsulated_frames(ds, frame_numbers, count, pixels)
    if source == EXPLICIT_VR_BIG_ENDIAN:
        return [_decode_frame_le(ds, source, number, as_rgb=False) for number in frame_numbers]
    if not isinstance(pixels, bytes | memoryview):
        raise TranscodeError("native pixel data is cut from its bytes, not read from a file")
    return [_native_frame(ds, number, pixels) for number in frame_numbers]


# Decoded pixels are held in memory, and a small compressed file can claim any Rows x Columns: decoding is
# bounded by the header's own claims before a pixel is touched (as rendered output is, app/core/retrieve/render.py).
MAX_DECODED_FRAME_BYTES: Final = 256 * 1024 * 1024
MAX_DECODED_INSTANCE_BYTES: Final = 2 * 1024 * 1024 * 1024


def _check_decoded_size(ds: Dataset, frames: int, limit: int) -> None:
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    samples, bits = int(ds.get("SamplesPerPixel", 1) or 1), int(ds.get("BitsAllocated", 8) or 8)
    size = rows * columns * samples * max(bits, 8) // 8 * frames
    if size > limit:
        raise TranscodeError(
            f"decoding {rows}x{columns} x {frames} frame(s) would take {size} bytes, over {limit}"
        )


def decoded_frame_bytes(ds: Dataset, frame_numbers: Sequence[int]) -> list[bytes]:
    """Each requested frame decoded to native little-endian octets, for a client that cannot read the stored
    compressed syntax (PS3.18 §8.7.3.3.1, application/octet-stream).

    YCbCr colour is converted to RGB as part of decoding, so a decoded YBR_FULL_422 JPEG frame is
    Rows x Columns x 3 bytes of RGB; callers describing the frame must report Photometric Interpretation RGB.
    1-bit data is returned packed, as it would be stored natively.
    """
    count = frame_count(ds)
    _check_frame_numbers(frame_numbers, count)
    if "PixelData" not in ds:
        raise TranscodeError("the dataset has no (7FE0,0010) Pixel Data")
    source = source_transfer_syntax(ds)
    if not _is_encapsulated(source) and source != EXPLICIT_VR_BIG_ENDIAN:
        return [_native_frame(ds, number, cast(bytes, ds.PixelData)) for number in frame_numbers]
    _check_decoded_size(ds, 1, MAX_DECODED_FRAME_BYTES)
    return [_decode_frame_le(ds, source, number, as_rgb=True) for number in frame_numbers]


# --- helpers -------------------------------------------------------------------------------------------------


def _describe(uid: UID) -> str:
    name = uid.name
    return f"{name} ({uid})" if name and name != str(uid) else str(uid)


def _is_encapsulated(uid: UID) -> bool:
    try:
        return is_encapsulated(uid)
    except ValueError as exc:
        raise TranscodeError(str(exc)) from exc


def _file_meta(ds: Dataset) -> FileMetaDataset:
    if not hasattr(ds, "file_meta"):
        ds.file_meta = FileMetaDataset()
    meta: FileMetaDataset = ds.file_meta
    return meta


def _check_frame_numbers(frame_numbers: Sequence[int], count: int) -> None:
    if not frame_numbers:
        raise FrameNumberError("no frame numbers were requested")
    for number in frame_numbers:
        if isinstance(number, bool) or not isinstance(number, int | np.integer) or not 1 <= number <= count:
            raise FrameNumberError(f"frame number {number!r} is outside 1..{count}")


def _require_decoder(source: UID) -> Decoder:
    try:
        decoder = get_decoder(source)
    except NotImplementedError as exc:
        raise TranscodeError(f"cannot decode {_describe(source)}: no decoder exists for it") from exc
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        raise TranscodeError(f"cannot decode {_describe(source)}: decoder plugins missing ({missing})")
    return decoder


def _decompress(ds: Dataset, source: UID) -> None:
    _require_decoder(source)
    try:
        # as_rgb: PS3.5 §8.2.1 / §8.2.4 - decoded YBR_FULL_422, YBR_FULL, YBR_ICT and YBR_RCT become RGB, and
        # pydicom updates Photometric Interpretation and Planar Configuration to what it produced.
        ds.decompress(as_rgb=True, generate_instance_uid=False)
    except Exception as exc:  # codec plugins raise many exception types; all mean "cannot decode"
        raise TranscodeError(f"cannot decode {_describe(source)} pixel data: {exc}") from exc


def _compress(ds: Dataset, target: UID) -> None:
    try:
        if ds.get("PhotometricInterpretation") in _SUBSAMPLED_YBR:
            decoder = _require_decoder(UID(EXPLICIT_VR_LITTLE_ENDIAN))
            options: dict[str, Any] = {"as_rgb": True}
            arr, meta = decoder.as_array(ds, **options)
            ds.PhotometricInterpretation = meta["photometric_interpretation"]
            ds.PlanarConfiguration = 0
            ds.compress(target, arr, generate_instance_uid=False)
        else:
            # pydicom's J2K encoder keeps RGB as RGB (no multi-component transform), which PS3.5 §8.2.4 allows.
            ds.compress(target, generate_instance_uid=False)
    except TranscodeError:
        raise
    except Exception as exc:  # encoders reject unsuitable pixel data with ValueError/RuntimeError and others
        raise TranscodeError(f"cannot encode this pixel data as {_describe(target)}: {exc}") from exc


def _walk(ds: Dataset) -> Iterator[DataElement]:
    for elem in ds:  # iterating converts pydicom's lazily-read raw elements into DataElements
        yield elem
        if elem.VR == VR.SQ and elem.value:
            for item in elem.value:
                yield from _walk(item)


def _big_to_little_endian(ds: Dataset) -> None:
    """Convert a dataset read as Explicit VR Big Endian (PS3.5 §A.3) into little-endian values in place.

    pydicom decodes numeric VRs (US, SS, FL, ...) to Python values, which re-encode in any byte order; but it
    keeps OW/OF/OL/OD/OV values as raw bytes and its writer does not swap them, so they are swapped here. The
    pixel data is decoded by pydicom's native decoder (which knows the Big Endian quirks such as 8-bit data in
    OW) and re-laid out little-endian, keeping the stored bits untouched (correct_unused_bits=False).
    """
    for elem in _walk(ds):
        if elem.tag == 0x7FE00010:
            continue
        width = _SWAPPED_VRS.get(str(elem.VR))
        if width and isinstance(elem.value, bytes | bytearray) and len(elem.value) % width == 0:
            elem.value = np.frombuffer(elem.value, dtype=f">u{width}").astype(f"<u{width}").tobytes()
    if "PixelData" not in ds:
        return
    decoder = _require_decoder(UID(EXPLICIT_VR_BIG_ENDIAN))
    try:
        options: dict[str, Any] = {"as_rgb": False, "correct_unused_bits": False}
        arr, meta = decoder.as_array(ds, **options)
    except Exception as exc:  # a malformed native buffer (wrong length etc.)
        raise TranscodeError(f"cannot read the Big Endian pixel data: {exc}") from exc
    data = _array_to_le_bytes(arr, int(ds.BitsAllocated))
    if len(data) % 2:
        data += b"\x00"  # PS3.5 §7.1.1: values have even length
    ds.PixelData = data
    ds["PixelData"].VR = VR.OB if int(ds.BitsAllocated) <= 8 else VR.OW
    ds.PhotometricInterpretation = meta["photometric_interpretation"]
    if "planar_configuration" in meta:
        ds.PlanarConfiguration = meta["planar_configuration"]


def _array_to_le_bytes(arr: npt.NDArray[Any], bits_allocated: int) -> bytes:
    """Pixel values as PS3.5 §8.1.1 native little-endian octets of `bits_allocated` bits each."""
    if bits_allocated == 1:
        # PS3.5 §8.1.1: 1-bit pixels are packed, first pixel in the least significant bit.
        return np.packbits(np.asarray(arr, dtype=np.uint8).ravel() & 1, bitorder="little").tobytes()
    width = max(1, (bits_allocated + 7) // 8)
    kind = "f" if arr.dtype.kind == "f" else ("i" if arr.dtype.kind == "i" else "u")
    return np.ascontiguousarray(arr, dtype=np.dtype(f"<{kind}{width}")).tobytes()


def _native_frame_bits(ds: Dataset) -> int:
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1))
        bits_allocated = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError) as exc:
        raise TranscodeError(f"the Image Pixel module is incomplete: {exc}") from exc
    bits = rows * columns * samples * bits_allocated
    if ds.get("PhotometricInterpretation") in ("YBR_FULL_422", "YBR_PARTIAL_422"):
        # PS3.3 C.7.6.3.1.2: two chroma samples are shared by each pair of pixels, 2/3 of the full size.
        bits = bits // 3 * 2
    return bits


def _native_frame(ds: Dataset, number: int, data: bytes | memoryview) -> bytes:
    frame_bits = _native_frame_bits(ds)
    start_bit = (number - 1) * frame_bits
    end_bit = start_bit + frame_bits
    if (end_bit + 7) // 8 > len(data):
        raise TranscodeError(
            f"Pixel Data holds {len(data)} bytes, too few for frame {number} of {frame_bits} bits"
        )
    if start_bit % 8 == 0 and frame_bits % 8 == 0:
        return bytes(data[start_bit // 8 : end_bit // 8])
    # 1-bit data whose frame boundary falls inside a byte (PS3.5 §8.1.1): unpack the covering bytes, take the
    # frame's bits and re-pack them from bit 0, least significant bit first.
    covering = np.frombuffer(
        data, dtype=np.uint8, count=(end_bit + 7) // 8 - start_bit // 8, offset=start_bit // 8
    )
    bits = np.unpackbits(covering, bitorder="little")
    offset = start_bit % 8
    return np.packbits(bits[offset : offset + frame_bits], bitorder="little").tobytes()


def _encapsulated_frames(
    ds: Dataset, frame_numbers: Sequence[int], count: int, data: bytes | ReadableBuffer
) -> list[bytes]:
    extended: tuple[bytes, bytes] | None = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        # PS3.3 C.7.6.3.1.8: when present, the Extended Offset Table locates each frame.
        extended = (cast(bytes, ds.ExtendedOffsetTable), cast(bytes, ds.ExtendedOffsetTableLengths))
    frames: list[bytes] = []
    for number in frame_numbers:
        try:
            frames.append(get_frame(data, number - 1, extended_offsets=extended, number_of_frames=count))
        except (ValueError, KeyError, IndexError) as exc:
            raise TranscodeError(
                f"cannot locate frame {number} in the encapsulated pixel data: {exc}"
            ) from exc
    return frames


def _decode_frame_le(ds: Dataset, source: UID, number: int, *, as_rgb: bool) -> bytes:
    decoder = _require_decoder(source)
    options: dict[str, Any] = {"as_rgb": as_rgb}
    if not _is_encapsulated(source):
        options["correct_unused_bits"] = False  # keep the stored bits as they are
    try:
        arr, _ = decoder.as_array(ds, index=number - 1, **options)
    except Exception as exc:  # codec plugins raise many exception types; all mean "cannot decode"
        raise TranscodeError(f"cannot decode frame {number} of {_describe(source)}: {exc}") from exc
    return _array_to_le_bytes(arr, int(ds.BitsAllocated))
