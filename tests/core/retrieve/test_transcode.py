"""Behaviour of app.core.retrieve.transcode and app.core.dicom.transfer_syntax on real DICOM files from pydicom's test data.

Every file comes from pydicom / pydicom-data; a missing file fails the test (it never skips), because a silently
skipped codec test is how a broken retrieval path would reach production.
"""

from __future__ import annotations

import copy
import io
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels.encoders.base import get_encoder
from pydicom.pixels.utils import pack_bits
from pydicom.sequence import Sequence
from pydicom.uid import UID, generate_uid

from app.core.dicom import transfer_syntax as ts
from app.core.retrieve.transcode import (
    FrameNumberError,
    TranscodeError,
    can_encode,
    data_set_offset,
    decoded_frame_bytes,
    encode_part10,
    frame_bytes,
    frame_count,
    transcode,
)

EXPLICIT = ts.EXPLICIT_VR_LITTLE_ENDIAN


def load(name: str) -> Dataset:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name!r} is missing: install pydicom-data"
    return dcmread(path)


def reread(ds: Dataset) -> Dataset:
    """Serialise with encode_part10 and parse again: what a client receiving the instance would see."""
    return dcmread(io.BytesIO(encode_part10(ds)))


# Sources whose stored pixel data is lossless, one per syntax/shape family (single/multi-frame, grey/colour,
# 1/8/16/32 bits, little/big endian, implicit, deflated).
LOSSLESS_SOURCES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_jp2klossless.dcm",
    "JPEG-LL.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
    "SC_rgb_rle.dcm",
    "SC_rgb_expb_2frame.dcm",
    "emri_small.dcm",
    "emri_small_RLE.dcm",
    "emri_small_jpeg_2k_lossless.dcm",
    "emri_small_jpeg_ls_lossless.dcm",
    "emri_small_big_endian.dcm",
    "image_dfl.dcm",
    "rtdose.dcm",
    "liver.dcm",
]


# --- transfer_syntax table -----------------------------------------------------------------------------------


def test_media_types_for_frames_follow_ps3_18_table_8_7_3_5() -> None:
    assert ts.MEDIA_TYPE_FOR_FRAMES[ts.JPEG_BASELINE_8BIT] == "image/jpeg"
    assert ts.MEDIA_TYPE_FOR_FRAMES[ts.JPEG_LOSSLESS_SV1] == "image/jpeg"
    assert ts.MEDIA_TYPE_FOR_FRAMES[ts.JPEG_LS_LOSSLESS] == "image/jls"
    assert ts.MEDIA_TYPE_FOR_FRAMES[ts.JPEG_2000_LOSSLESS] == "image/jp2"
    assert ts.MEDIA_TYPE_FOR_FRAMES[ts.JPEG_2000] == "image/jp2"
    assert ts.MEDIA_TYPE_FOR_FRAMES[ts.RLE_LOSSLESS] == "image/dicom-rle"
    assert ts.MEDIA_TYPE_FOR_FRAMES[ts.HTJ2K_LOSSLESS] == "image/jphc"
    assert ts.MEDIA_TYPE_FOR_FRAMES[ts.JPEG_XL_LOSSLESS] == "image/jxl"
    assert ts.MEDIA_TYPE_FOR_FRAMES[EXPLICIT] == "application/octet-stream"


def test_default_transfer_syntax_per_media_type_is_a_syntax_of_that_media_type() -> None:
    assert ts.DEFAULT_TRANSFER_SYNTAX_FOR_MEDIA_TYPE["application/dicom"] == EXPLICIT
    assert ts.DEFAULT_TRANSFER_SYNTAX_FOR_MEDIA_TYPE["application/octet-stream"] == EXPLICIT
    assert ts.DEFAULT_TRANSFER_SYNTAX_FOR_MEDIA_TYPE["image/jls"] == ts.JPEG_LS_LOSSLESS
    assert ts.DEFAULT_TRANSFER_SYNTAX_FOR_MEDIA_TYPE["image/jp2"] == ts.JPEG_2000_LOSSLESS
    assert ts.DEFAULT_TRANSFER_SYNTAX_FOR_MEDIA_TYPE["image/dicom-rle"] == ts.RLE_LOSSLESS
    for media_type, uid in ts.DEFAULT_TRANSFER_SYNTAX_FOR_MEDIA_TYPE.items():
        if media_type != "application/dicom":
            assert ts.MEDIA_TYPE_FOR_FRAMES[uid] == media_type
            assert uid in ts.TRANSFER_SYNTAXES_FOR_MEDIA_TYPE[media_type]


def test_lossless_and_encapsulated_classification() -> None:
    for uid in (EXPLICIT, ts.RLE_LOSSLESS, ts.JPEG_LOSSLESS_SV1, ts.JPEG_LS_LOSSLESS, ts.JPEG_2000_LOSSLESS):
        assert ts.is_lossless(uid), uid
    for uid in (
        ts.JPEG_BASELINE_8BIT,
        ts.JPEG_EXTENDED_12BIT,
        ts.JPEG_2000,
        ts.JPEG_LS_NEAR_LOSSLESS,
        "1.2.3.4",
    ):
        assert not ts.is_lossless(uid), uid
    assert ts.is_encapsulated(ts.RLE_LOSSLESS)
    assert ts.is_encapsulated(ts.JPEG_XL_LOSSLESS)  # unknown to pydicom 3.0, known to the table
    assert not ts.is_encapsulated(ts.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)
    assert not ts.is_encapsulated(ts.EXPLICIT_VR_BIG_ENDIAN)
    with pytest.raises(ValueError):
        ts.is_encapsulated("1.2.3.4")


# --- can_encode ----------------------------------------------------------------------------------------------


def test_can_encode_native_syntaxes_and_the_installed_lossless_codecs() -> None:
    for uid in (EXPLICIT, ts.IMPLICIT_VR_LITTLE_ENDIAN, ts.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN):
        assert can_encode(uid), uid
    # pylibjpeg-rle and pylibjpeg-openjpeg are project dependencies, so these must be available.
    assert can_encode(ts.RLE_LOSSLESS)
    assert can_encode(ts.JPEG_2000_LOSSLESS)


def test_can_encode_refuses_lossy_retired_and_unknown_syntaxes() -> None:
    for uid in (
        ts.JPEG_BASELINE_8BIT,
        ts.JPEG_2000,
        ts.JPEG_LS_NEAR_LOSSLESS,
        ts.HTJ2K_LOSSLESS,
        ts.EXPLICIT_VR_BIG_ENDIAN,
        ts.JPEG_LOSSLESS_SV1,
        "1.2.3.4",
    ):
        assert not can_encode(uid), uid


def test_jpeg_ls_target_is_offered_exactly_when_an_encoder_is_installed() -> None:
    installed = bool(get_encoder(UID(ts.JPEG_LS_LOSSLESS)).is_available)
    assert can_encode(ts.JPEG_LS_LOSSLESS) == installed
    ds = load("MR_small.dcm")
    if installed:
        back = reread(transcode(ds, ts.JPEG_LS_LOSSLESS))
        assert np.array_equal(back.pixel_array, ds.pixel_array)
    else:
        with pytest.raises(TranscodeError, match="no encoder"):
            transcode(ds, ts.JPEG_LS_LOSSLESS)


# --- transcode -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LOSSLESS_SOURCES)
def test_every_lossless_source_transcoded_to_explicit_vr_le_keeps_its_pixels(name: str) -> None:
    ds = load(name)
    original = ds.pixel_array
    out = transcode(ds, EXPLICIT)
    assert out.file_meta.TransferSyntaxUID == EXPLICIT
    back = reread(out)
    assert back.file_meta.TransferSyntaxUID == EXPLICIT
    assert np.array_equal(back.pixel_array, original)


@pytest.mark.parametrize(
    "target",
    [
        ts.RLE_LOSSLESS,
        ts.JPEG_2000_LOSSLESS,
        ts.IMPLICIT_VR_LITTLE_ENDIAN,
        ts.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    ],
)
@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small.dcm", "SC_rgb.dcm", "SC_rgb_2frame.dcm", "emri_small.dcm"]
)
def test_transcoding_to_an_encodable_syntax_and_back_is_lossless(target: str, name: str) -> None:
    assert can_encode(target), f"{target} should be encodable with the project's dependencies"
    ds = load(name)
    encoded = reread(transcode(ds, target))
    assert encoded.file_meta.TransferSyntaxUID == target
    assert np.array_equal(encoded.pixel_array, ds.pixel_array)
    restored = reread(transcode(encoded, EXPLICIT))
    assert np.array_equal(restored.pixel_array, ds.pixel_array)
    assert restored.SOPInstanceUID == ds.SOPInstanceUID


def test_rle_to_jpeg_2000_goes_through_decoding_and_stays_lossless() -> None:
    ds = load("emri_small_RLE.dcm")
    out = reread(transcode(ds, ts.JPEG_2000_LOSSLESS))
    assert out.file_meta.TransferSyntaxUID == ts.JPEG_2000_LOSSLESS
    assert out.NumberOfFrames == 10
    assert np.array_equal(out.pixel_array, ds.pixel_array)


@pytest.mark.parametrize(
    "name", ["examples_ybr_color.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm"]
)
def test_decoding_ybr_jpeg_to_native_sets_photometric_interpretation_to_rgb(name: str) -> None:
    ds = load(name)
    assert ds.PhotometricInterpretation.startswith("YBR_FULL")
    out = reread(transcode(ds, EXPLICIT))
    assert out.PhotometricInterpretation == "RGB"
    frames = frame_count(ds)
    assert len(out.PixelData) == frames * ds.Rows * ds.Columns * 3
    # pydicom's own pixel_array converts the JPEG's YCbCr to RGB: the native copy must hold exactly that.
    assert np.array_equal(out.pixel_array, ds.pixel_array)


def test_native_ybr_full_422_is_expanded_to_rgb_before_lossless_encoding() -> None:
    ds = load("SC_ybr_full_422_uncompressed.dcm")
    out = reread(transcode(ds, ts.RLE_LOSSLESS))
    assert out.PhotometricInterpretation == "RGB"
    assert np.array_equal(out.pixel_array, ds.pixel_array)


def test_transcode_never_mutates_the_callers_dataset() -> None:
    ds = load("SC_rgb_jpeg_dcmtk.dcm")
    before_pixels = ds.PixelData
    before = (ds.file_meta.TransferSyntaxUID, ds.PhotometricInterpretation, ds.SOPInstanceUID, len(ds))
    transcode(ds, EXPLICIT)
    transcode(ds, ts.RLE_LOSSLESS)
    assert ds.PixelData is before_pixels
    assert (
        ds.file_meta.TransferSyntaxUID,
        ds.PhotometricInterpretation,
        ds.SOPInstanceUID,
        len(ds),
    ) == before

    big = load("MR_small_bigendian.dcm")
    big_pixels = bytes(big.PixelData)
    transcode(big, EXPLICIT)
    assert big.PixelData == big_pixels
    assert big.file_meta.TransferSyntaxUID == ts.EXPLICIT_VR_BIG_ENDIAN


def test_same_syntax_returns_an_equal_independent_copy() -> None:
    ds = load("MR_small_RLE.dcm")
    out = transcode(ds, ts.RLE_LOSSLESS)
    assert out is not ds
    assert out.PixelData == ds.PixelData
    out.PatientName = "Changed^Only^Copy"
    assert ds.PatientName != out.PatientName


def test_dataset_without_pixel_data_only_changes_the_transfer_syntax() -> None:
    ds = load("CT_small.dcm")
    del ds.PixelData
    for target in (ts.IMPLICIT_VR_LITTLE_ENDIAN, ts.RLE_LOSSLESS, ts.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN):
        back = reread(transcode(ds, target))
        assert back.file_meta.TransferSyntaxUID == target
        assert "PixelData" not in back
        assert back.PatientName == ds.PatientName
        assert back.Rows == ds.Rows


def test_big_endian_ow_values_outside_pixel_data_are_byte_swapped() -> None:
    # A Big Endian dataset with an OW LUT, built and written here (no test file carries one).
    lut = [0, 1, 258, 4095, 65535, 513]
    item = Dataset()
    item.LUTDescriptor = [len(lut), 0, 16]
    item.add_new(0x00283006, "OW", np.asarray(lut, dtype=">u2").tobytes())
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.VOILUTSequence = Sequence([item])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(ts.EXPLICIT_VR_BIG_ENDIAN)
    big = reread(ds)
    assert big.file_meta.TransferSyntaxUID == ts.EXPLICIT_VR_BIG_ENDIAN

    little = reread(transcode(big, EXPLICIT))
    data = little.VOILUTSequence[0].LUTData
    assert np.frombuffer(data, dtype="<u2").tolist() == lut


def test_undecodable_pixel_data_raises_transcode_error_saying_why() -> None:
    ds = load("SC_rgb_jpeg_dcmtk.dcm")
    ds.PixelData = encapsulate([b"\xff\xd8 this is not a JPEG codestream \xff\xd9"])
    with pytest.raises(TranscodeError, match="cannot decode"):
        transcode(ds, EXPLICIT)


def test_unencodable_targets_raise_transcode_error_saying_why() -> None:
    ds = load("CT_small.dcm")
    with pytest.raises(TranscodeError, match="cannot encode"):
        transcode(ds, ts.JPEG_BASELINE_8BIT)
    # PS3.5 §8.2.2: RLE has no 1-bit form, so a 1-bit segmentation cannot be RLE encoded.
    with pytest.raises(TranscodeError, match="RLE"):
        transcode(load("liver.dcm"), ts.RLE_LOSSLESS)


def test_missing_transfer_syntax_raises_transcode_error() -> None:
    ds = load("CT_small.dcm")
    del ds.file_meta.TransferSyntaxUID
    with pytest.raises(TranscodeError, match="Transfer Syntax UID"):
        transcode(ds, EXPLICIT)


# --- encode_part10 -------------------------------------------------------------------------------------------


def test_encode_part10_writes_preamble_prefix_and_file_meta() -> None:
    ds = load("MR_small_RLE.dcm")
    data = encode_part10(ds)
    assert data[:128] == b"\x00" * 128
    assert data[128:132] == b"DICM"
    back = dcmread(io.BytesIO(data))
    assert back.file_meta.TransferSyntaxUID == ts.RLE_LOSSLESS
    assert back.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert np.array_equal(back.pixel_array, ds.pixel_array)


def test_encode_part10_of_a_deflated_transcode_is_smaller_and_readable() -> None:
    ds = load("CT_small.dcm")
    plain = encode_part10(transcode(ds, EXPLICIT))
    deflated = encode_part10(transcode(ds, ts.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN))
    assert len(deflated) < len(plain)
    assert np.array_equal(dcmread(io.BytesIO(deflated)).pixel_array, ds.pixel_array)


# --- frames --------------------------------------------------------------------------------------------------


def test_frame_count_is_number_of_frames_or_one() -> None:
    assert frame_count(load("CT_small.dcm")) == 1
    assert frame_count(load("emri_small.dcm")) == 10
    assert frame_count(load("examples_ybr_color.dcm")) == 30


def test_frame_bytes_of_a_native_multiframe_is_the_kth_slice_of_pixel_data() -> None:
    ds = load("emri_small.dcm")
    size = ds.Rows * ds.Columns * 2
    frames = frame_bytes(ds, list(range(1, 11)))
    for k, frame in enumerate(frames, start=1):
        assert frame == ds.PixelData[(k - 1) * size : k * size]
        assert np.array_equal(np.frombuffer(frame, dtype="<u2").reshape(64, 64), ds.pixel_array[k - 1])


def test_frame_bytes_of_a_native_big_endian_multiframe_are_little_endian() -> None:
    big = load("emri_small_big_endian.dcm")
    little = load("emri_small.dcm")
    assert frame_bytes(big, [3, 7]) == frame_bytes(little, [3, 7])
    assert decoded_frame_bytes(big, [3]) == frame_bytes(little, [3])


def test_frame_bytes_of_encapsulated_jpeg_2000_decode_to_the_kth_frame() -> None:
    from openjpeg.utils import decode  # pylibjpeg-openjpeg, decoding the bare codestream without pydicom

    ds = load("emri_small_jpeg_2k_lossless.dcm")
    for k, frame in zip([1, 4, 10], frame_bytes(ds, [1, 4, 10]), strict=True):
        assert frame[:2] == b"\xff\x4f"  # SOC marker: a bare J2K codestream, no item headers
        assert np.array_equal(decode(frame), ds.pixel_array[k - 1])


def test_frame_bytes_of_encapsulated_jpeg_ls_decode_to_the_kth_frame() -> None:
    from libjpeg.utils import decode  # pylibjpeg-libjpeg

    ds = load("emri_small_jpeg_ls_lossless.dcm")
    for k, frame in zip([2, 9], frame_bytes(ds, [2, 9]), strict=True):
        assert frame[:2] == b"\xff\xd8"
        assert np.array_equal(decode(frame), ds.pixel_array[k - 1])


def test_frame_bytes_of_encapsulated_baseline_jpeg_decode_with_pillow_to_the_kth_frame() -> None:
    ds = load("examples_ybr_color.dcm")
    for k, frame in zip([1, 15, 30], frame_bytes(ds, [1, 15, 30]), strict=True):
        decoded = np.asarray(Image.open(io.BytesIO(frame)).convert("RGB"), dtype=np.int16)
        expected = ds.pixel_array[k - 1].astype(np.int16)
        # Two JPEG decoders (Pillow's libjpeg vs pylibjpeg) may differ by rounding in the colour transform.
        assert np.abs(decoded - expected).mean() < 1.0


def test_frame_bytes_of_encapsulated_rle_match_the_fragments() -> None:
    ds = load("emri_small_RLE.dcm")
    stored = list(generate_frames(ds.PixelData, number_of_frames=10))
    assert frame_bytes(ds, [1, 5, 10]) == [stored[0], stored[4], stored[9]]


def test_frame_bytes_without_basic_offset_table_or_with_extended_offset_table() -> None:
    ds = load("emri_small_RLE.dcm")
    stored = list(generate_frames(ds.PixelData, number_of_frames=10))

    no_bot = copy.deepcopy(ds)
    no_bot.PixelData = encapsulate(stored, has_bot=False)
    assert frame_bytes(no_bot, [2, 10]) == [stored[1], stored[9]]

    # PS3.3 C.7.6.3.1.8: an Extended Offset Table (with an empty Basic Offset Table) locates the frames.
    extended = load("emri_small.dcm")
    extended.compress(ts.RLE_LOSSLESS, encapsulate_ext=True, generate_instance_uid=False)
    assert "ExtendedOffsetTable" in extended
    expected = list(generate_frames(extended.PixelData, number_of_frames=10))
    assert frame_bytes(extended, [1, 6, 10]) == [expected[0], expected[5], expected[9]]


def test_single_frame_encapsulated_frame_is_the_whole_codestream() -> None:
    ds = load("JPEG2000.dcm")
    (frame,) = frame_bytes(ds, [1])
    assert frame[:2] == b"\xff\x4f"
    assert frame.rstrip(b"\x00")[-2:] == b"\xff\xd9"


def test_frame_numbers_out_of_range_raise_frame_number_error() -> None:
    for name in ("emri_small.dcm", "emri_small_jpeg_2k_lossless.dcm", "CT_small.dcm"):
        ds = load(name)
        count = frame_count(ds)
        for bad in (0, -1, count + 1):
            with pytest.raises(FrameNumberError):
                frame_bytes(ds, [bad])
            with pytest.raises(FrameNumberError):
                decoded_frame_bytes(ds, [1, bad])
    with pytest.raises(FrameNumberError):
        frame_bytes(load("CT_small.dcm"), [])
    assert issubclass(FrameNumberError, ValueError)


def test_frame_bytes_of_1_bit_frames_on_byte_boundaries_are_slices() -> None:
    ds = load("liver.dcm")  # 3 frames of 512x512 1-bit: each frame is exactly 32768 bytes
    frames = frame_bytes(ds, [1, 2, 3])
    for k, frame in enumerate(frames, start=1):
        assert frame == ds.PixelData[(k - 1) * 32768 : k * 32768]
        bits = np.unpackbits(np.frombuffer(frame, dtype=np.uint8), bitorder="little")
        assert np.array_equal(bits.reshape(512, 512), ds.pixel_array[k - 1])


def _one_bit_dataset(frames: np.ndarray[Any, Any]) -> Dataset:
    count, rows, columns = frames.shape
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(EXPLICIT)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, count
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    ds.PixelData = pack_bits(frames)
    return ds


def test_frame_bytes_of_1_bit_frames_off_byte_boundaries_are_repacked_from_bit_zero() -> None:
    rng = np.random.default_rng(7)
    frames = rng.integers(0, 2, size=(3, 3, 3), dtype=np.uint8)  # 9 bits per frame
    ds = _one_bit_dataset(frames)
    for k, frame in enumerate(frame_bytes(ds, [1, 2, 3]), start=1):
        assert len(frame) == 2
        bits = np.unpackbits(np.frombuffer(frame, dtype=np.uint8), bitorder="little")[:9]
        assert np.array_equal(bits, frames[k - 1].ravel())


@settings(max_examples=40, deadline=None)
@given(
    count=st.integers(1, 5),
    rows=st.integers(1, 9),
    columns=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_any_1_bit_frame_round_trips_through_frame_bytes(
    count: int, rows: int, columns: int, seed: int
) -> None:
    frames = np.random.default_rng(seed).integers(0, 2, size=(count, rows, columns), dtype=np.uint8)
    ds = _one_bit_dataset(frames)
    pixels = rows * columns
    for k, frame in enumerate(frame_bytes(ds, list(range(1, count + 1))), start=1):
        assert len(frame) == (pixels + 7) // 8
        bits = np.unpackbits(np.frombuffer(frame, dtype=np.uint8), bitorder="little")[:pixels]
        assert np.array_equal(bits, frames[k - 1].ravel())


def test_decoded_frame_bytes_of_compressed_frames_equal_the_decoded_pixel_array() -> None:
    ds = load("emri_small_jpeg_2k_lossless.dcm")
    for k, frame in zip([1, 10], decoded_frame_bytes(ds, [1, 10]), strict=True):
        assert np.array_equal(np.frombuffer(frame, dtype="<u2").reshape(64, 64), ds.pixel_array[k - 1])

    colour = load("examples_ybr_color.dcm")
    (frame,) = decoded_frame_bytes(colour, [12])
    assert len(frame) == 240 * 320 * 3
    assert frame == colour.pixel_array[11].tobytes()  # RGB, as pydicom decodes it


def test_decoded_frame_bytes_of_native_little_endian_are_the_stored_frames() -> None:
    ds = load("emri_small.dcm")
    assert decoded_frame_bytes(ds, [4]) == frame_bytes(ds, [4])


def test_frame_bytes_without_pixel_data_raise_transcode_error() -> None:
    ds = load("CT_small.dcm")
    del ds.PixelData
    with pytest.raises(TranscodeError, match="Pixel Data"):
        frame_bytes(ds, [1])


def test_a_compressed_frame_claiming_a_huge_size_is_refused_before_decoding() -> None:
    ds = load("MR_small_RLE.dcm")
    ds.Rows, ds.Columns = 20000, 20000  # 800 MB of 16-bit pixels claimed by a few kilobytes
    with pytest.raises(TranscodeError, match="over"):
        decoded_frame_bytes(ds, [1])
    ds.NumberOfFrames = 4  # 3.2 GB for the whole instance
    with pytest.raises(TranscodeError, match="over"):
        transcode(ds, EXPLICIT)


# -- where a Part 10 file's data set starts --------------------------------------------------------------------

_META_ELEMENTS = st.lists(
    st.tuples(st.integers(0x0001, 0xFFFF), st.sampled_from([b"OB", b"UI", b"UL", b"SH", b"AE", b"UN"]),
              st.binary(max_size=64).map(lambda b: b if len(b) % 2 == 0 else b + b"\0")),
    max_size=8,
)


@given(elements=_META_ELEMENTS, with_length=st.booleans(), data_set=st.binary(max_size=64))
def test_the_data_set_starts_after_the_file_meta_group_with_or_without_its_group_length(
    elements: list[tuple[int, bytes, bytes]], with_length: bool, data_set: bytes
) -> None:
    long_vrs = {b"OB", b"UN"}
    body = b"".join(
        struct.pack("<HH2s2xI", 2, element, vr, len(value)) + value if vr in long_vrs
        else struct.pack("<HH2sH", 2, element, vr, len(value)) + value
        for element, vr, value in sorted(elements)
    )
    if with_length:
        body = struct.pack("<HH2sHI", 2, 0, b"UL", 4, len(body)) + body
    head = bytes(128) + b"DICM" + body
    first = struct.pack("<HH2sH", 0x0008, 0x0005, b"CS", 0) + data_set  # a first element of another group
    assert data_set_offset(head + first) == len(head)


def test_a_file_without_the_dicm_prefix_or_with_a_cut_file_meta_is_refused() -> None:
    whole = encode_part10(load("CT_small.dcm"))
    offset = data_set_offset(whole)
    assert whole[offset : offset + 2] == b"\x08\x00"
    with pytest.raises(TranscodeError, match="DICM"):
        data_set_offset(whole[128:])
    with pytest.raises(TranscodeError, match="past the end"):
        data_set_offset(whole[: offset - 3])


def test_a_file_meta_written_in_implicit_vr_is_refused_rather_than_misread() -> None:
    whole = encode_part10(load("CT_small.dcm"))
    # Transfer Syntax UID as some old writers put it: tag, a 4-byte length, the value; no VR.
    implicit = struct.pack("<HHI", 0x0002, 0x0010, 20) + b"1.2.840.10008.1.2.1\0"
    with pytest.raises(TranscodeError, match="Explicit VR"):
        data_set_offset(bytes(128) + b"DICM" + implicit + whole[data_set_offset(whole) :])
