"""Behaviour of app.core.retrieve.render on real DICOM files from pydicom's test data.

Expected images are computed in the tests straight from the PS3.3 formulas (float64, written independently of
the implementation) and compared by pixel statistics after decoding the rendered JPEG/PNG/GIF with Pillow.
A missing test file fails the test; nothing is skipped.
"""

from __future__ import annotations

import copy
import io
import time
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.sequence import Sequence
from pydicom.uid import UID, generate_uid

from app.core.retrieve import render as rendering
from app.core.retrieve.render import (
    MAX_RENDER_PIXELS,
    RenderError,
    RenderOptions,
    RenderRequestError,
    thumbnail,
)

Array = np.ndarray[Any, Any]
MAX_SIDE = 4096  # MAX_RENDER_SIDE's default


def render(ds: Dataset, options: RenderOptions) -> bytes:
    """app.core.render.render with the default output bound, for the tests that are not about the bound."""
    return rendering.render(ds, options, max_side=MAX_SIDE)


def load(name: str) -> Dataset:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name!r} is missing: install pydicom-data"
    return dcmread(path)


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def pixels(data: bytes) -> Array:
    return np.asarray(decode(data)).astype(np.int16)


def linear_window(x: Array, center: float, width: float) -> Array:
    """PS3.3 C.11.2.1.2.1, written out piecewise, output 0..255 rounded."""
    x = x.astype(np.float64)
    low = center - 0.5 - (width - 1) / 2
    high = center - 0.5 + (width - 1) / 2
    inside = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255
    return np.rint(np.where(x <= low, 0.0, np.where(x > high, 255.0, inside))).astype(np.int16)


def ct_hounsfield() -> Array:
    ds = load("CT_small.dcm")
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def close(actual: Array, expected: Array, *, max_diff: int = 1, share_exact: float = 0.99) -> None:
    """Within `max_diff` everywhere and exactly equal for most pixels (float32 vs float64 rounding)."""
    diff = np.abs(actual.astype(np.int32) - expected.astype(np.int32))
    assert diff.max() <= max_diff, f"max difference {diff.max()}"
    assert (diff == 0).mean() >= share_exact, f"only {(diff == 0).mean():.4f} of pixels exact"


# --- grayscale pipeline --------------------------------------------------------------------------------------


def test_soft_tissue_window_jpeg_of_ct_matches_the_windowed_hounsfield_units() -> None:
    data = render(load("CT_small.dcm"), RenderOptions(window=(40, 400, "LINEAR")))
    image = decode(data)
    assert image.format == "JPEG"
    assert image.size == (128, 128)
    assert image.mode == "L"
    expected = linear_window(ct_hounsfield(), 40, 400)
    actual = pixels(data)
    assert np.abs(actual - expected).mean() < 3
    assert abs(actual.mean() - expected.mean()) < 2
    hist_actual = np.histogram(actual, bins=8, range=(0, 256))[0] / actual.size
    hist_expected = np.histogram(expected, bins=8, range=(0, 256))[0] / expected.size
    assert np.abs(hist_actual - hist_expected).sum() < 0.1


def test_png_is_lossless_against_the_8_bit_windowed_array() -> None:
    data = render(load("CT_small.dcm"), RenderOptions(media_type="image/png", window=(40, 400, "LINEAR")))
    assert decode(data).format == "PNG"
    close(pixels(data), linear_window(ct_hounsfield(), 40, 400))


def test_a_narrow_window_saturates_more_pixels_than_a_wide_one() -> None:
    ds = load("CT_small.dcm")
    narrow = pixels(render(ds, RenderOptions(media_type="image/png", window=(40, 80, "LINEAR"))))
    wide = pixels(render(ds, RenderOptions(media_type="image/png", window=(40, 2000, "LINEAR"))))

    def saturated(a: Array) -> int:
        return int(((a == 0) | (a == 255)).sum())

    assert saturated(narrow) > saturated(wide) + 1000


def test_linear_exact_and_sigmoid_windows_follow_ps3_3_c_11_2_1_3() -> None:
    ds = load("CT_small.dcm")
    hu = ct_hounsfield()
    exact = pixels(render(ds, RenderOptions(media_type="image/png", window=(40, 400, "LINEAR_EXACT"))))
    expected_exact = np.rint(np.clip((hu - 40) / 400 + 0.5, 0, 1) * 255)
    close(exact, expected_exact)
    sigmoid = pixels(render(ds, RenderOptions(media_type="image/png", window=(40, 400, "SIGMOID"))))
    expected_sigmoid = np.rint(255 / (1 + np.exp(-4 * (hu - 40) / 400)))
    close(sigmoid, expected_sigmoid)


def test_the_instances_own_window_is_used_when_none_is_requested() -> None:
    ds = load("MR_small.dcm")  # Window Center 600, Window Width 1600
    data = render(ds, RenderOptions(media_type="image/png"))
    close(pixels(data), linear_window(ds.pixel_array, 600, 1600))


def test_without_any_voi_the_frame_min_max_is_used() -> None:
    ds = load("CT_small.dcm")  # no Window Center/Width, no VOI LUT
    hu = ct_hounsfield()
    expected = np.rint((hu - hu.min()) * 255 / (hu.max() - hu.min()))
    actual = pixels(render(ds, RenderOptions(media_type="image/png")))
    close(actual, expected)
    assert actual.min() == 0 and actual.max() == 255


def test_a_voi_lut_sequence_is_applied() -> None:
    ds = load("vlut_04.dcm")  # VOI LUT Sequence, 16-bit output, no window
    bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
    expected = np.rint(apply_voi_lut(ds.pixel_array, ds).astype(np.float64) * 255 / (2**bits - 1))
    close(pixels(render(ds, RenderOptions(media_type="image/png"))), expected)


def test_a_modality_lut_sequence_is_applied_before_voi() -> None:
    ds = load("mlut_18.dcm")  # Modality LUT Sequence, no VOI: min/max of the LUT output
    values = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    expected = np.rint((values - values.min()) * 255 / (values.max() - values.min()))
    close(pixels(render(ds, RenderOptions(media_type="image/png"))), expected)


def test_monochrome1_renders_inverted() -> None:
    ds = load("CT_small.dcm")
    options = RenderOptions(media_type="image/png", window=(40, 400, "LINEAR"))
    normal = pixels(render(ds, options))
    flipped = copy.deepcopy(ds)
    flipped.PhotometricInterpretation = "MONOCHROME1"
    inverted = pixels(render(flipped, options))
    assert np.array_equal(inverted, 255 - normal)
    assert ds.PhotometricInterpretation == "MONOCHROME2"


def test_big_endian_and_little_endian_copies_render_identically() -> None:
    options = RenderOptions(media_type="image/png")
    assert render(load("MR_small_bigendian.dcm"), options) == render(load("MR_small.dcm"), options)


def test_compressed_and_native_copies_render_identically() -> None:
    options = RenderOptions(media_type="image/png", frame=7)
    native = render(load("emri_small.dcm"), options)
    assert render(load("emri_small_jpeg_2k_lossless.dcm"), options) == native
    assert render(load("emri_small_RLE.dcm"), options) == native


def test_the_requested_frame_of_a_multiframe_is_rendered() -> None:
    ds = load("emri_small.dcm")
    frame = ds.pixel_array[4].astype(np.float64)
    expected = np.rint((frame - frame.min()) * 255 / (frame.max() - frame.min()))
    close(pixels(render(ds, RenderOptions(media_type="image/png", frame=5))), expected)


def test_enhanced_multiframe_functional_groups_supply_per_frame_rescale_and_window() -> None:
    ds = load("emri_small.dcm")
    shared = Dataset()
    window = Dataset()
    window.WindowCenter, window.WindowWidth = 500, 1000
    shared.FrameVOILUTSequence = Sequence([window])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for index in range(10):
        group = Dataset()
        transform = Dataset()
        transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = (
            2 if index == 2 else 1,
            0,
            "US",
        )
        group.PixelValueTransformationSequence = Sequence([transform])
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)

    third = pixels(render(ds, RenderOptions(media_type="image/png", frame=3)))
    close(third, linear_window(ds.pixel_array[2].astype(np.float64) * 2, 500, 1000))
    fourth = pixels(render(ds, RenderOptions(media_type="image/png", frame=4)))
    close(fourth, linear_window(ds.pixel_array[3], 500, 1000))


def test_a_1_bit_segmentation_renders_black_and_white() -> None:
    ds = load("liver.dcm")
    actual = pixels(render(ds, RenderOptions(media_type="image/png", frame=2)))
    assert set(np.unique(actual).tolist()) <= {0, 255}
    assert np.array_equal(actual == 255, ds.pixel_array[1] == 1)


# --- colour --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "SC_rgb.dcm",
        "SC_rgb_rle.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "examples_ybr_color.dcm",
        "SC_rgb_jpeg_gdcm.dcm",
    ],
)
def test_colour_images_stay_colour(name: str) -> None:
    data = render(load(name), RenderOptions(media_type="image/png"))
    image = decode(data)
    assert image.mode == "RGB"
    rgb = np.asarray(image).astype(np.int16)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    assert (red != green).any() and (green != blue).any() and (red != blue).any()


def test_rgb_png_equals_the_stored_rgb_pixels() -> None:
    ds = load("SC_rgb.dcm")
    assert np.array_equal(
        np.asarray(decode(render(ds, RenderOptions(media_type="image/png")))), ds.pixel_array
    )


def test_ybr_jpeg_renders_as_the_rgb_pydicom_decodes() -> None:
    ds = load("SC_rgb_jpeg_dcmtk.dcm")  # YBR_FULL baseline JPEG
    data = render(ds, RenderOptions(media_type="image/png"))
    assert np.array_equal(np.asarray(decode(data)), ds.pixel_array)
    jpeg = pixels(render(ds, RenderOptions(quality=95)))
    assert np.abs(jpeg - ds.pixel_array.astype(np.int16)).mean() < 3


def test_palette_colour_goes_through_its_lookup_table() -> None:
    ds = load("examples_palette.dcm")  # 16-bit palette entries
    expected = apply_color_lut(ds.pixel_array, ds) >> 8
    actual = np.asarray(decode(render(ds, RenderOptions(media_type="image/png"))))
    assert actual.shape == (ds.Rows, ds.Columns, 3)
    assert np.array_equal(actual, expected)


# --- geometry ------------------------------------------------------------------------------------------------


def test_viewport_scales_a_square_image_to_fit() -> None:
    ds = load("CT_small.dcm")  # 128 x 128
    assert decode(render(ds, RenderOptions(viewport=(64, 64)))).size == (64, 64)
    assert decode(render(ds, RenderOptions(viewport=(64, 32)))).size == (32, 32)
    assert decode(render(ds, RenderOptions(viewport=(256, 512)))).size == (256, 256)


def test_viewport_keeps_the_aspect_of_a_non_square_image() -> None:
    ds = load("JPEG2000.dcm")  # 1024 rows x 256 columns
    assert decode(render(ds, RenderOptions(viewport=(128, 128)))).size == (32, 128)
    colour = load("examples_ybr_color.dcm")  # 240 rows x 320 columns
    assert decode(render(colour, RenderOptions(viewport=(160, 160)))).size == (160, 120)


def test_crop_takes_the_source_region_before_the_viewport() -> None:
    ds = load("CT_small.dcm")
    full = pixels(render(ds, RenderOptions(media_type="image/png", window=(40, 400, "LINEAR"))))
    region = pixels(
        render(ds, RenderOptions(media_type="image/png", window=(40, 400, "LINEAR"), crop=(10, 20, 64, 32)))
    )
    assert region.shape == (32, 64)
    assert np.array_equal(region, full[20:52, 10:74])
    scaled = decode(render(ds, RenderOptions(crop=(10, 20, 64, 32), viewport=(32, 32))))
    assert scaled.size == (32, 16)
    clipped = pixels(render(ds, RenderOptions(media_type="image/png", window=(40, 400, "LINEAR"), crop=(100, 90, 64, 64))))
    assert np.array_equal(clipped, full[90:, 100:])  # a region reaching past the frame is clipped to it
    with pytest.raises(RenderRequestError):
        render(ds, RenderOptions(crop=(500, 500, 10, 10)))


def test_a_viewport_may_enlarge_up_to_the_output_bound() -> None:
    ds = load("CT_small.dcm")  # 128 x 128
    options = RenderOptions(media_type="image/png", viewport=(512, 512))
    assert decode(rendering.render(ds, options, max_side=512)).size == (512, 512)


def test_a_viewport_beyond_the_output_bound_is_refused_before_decoding() -> None:
    ds = load("CT_small.dcm")  # 128 x 128
    ds.PixelData = b""  # nothing decodable: the refusal must come first
    with pytest.raises(RenderRequestError, match="65500x65500 image; at most 512x512"):
        rendering.render(ds, RenderOptions(viewport=(65500, 65500)), max_side=512)
    with pytest.raises(RenderRequestError, match="513x513"):
        rendering.render(ds, RenderOptions(viewport=(513, 513)), max_side=512)


def test_a_frame_larger_than_the_bound_renders_at_its_own_size_but_no_larger() -> None:
    ds = load("JPEG2000.dcm")  # 1024 rows x 256 columns
    assert decode(rendering.render(ds, RenderOptions(), max_side=64)).size == (256, 1024)
    assert decode(rendering.render(ds, RenderOptions(viewport=(600, 1024)), max_side=300)).size == (256, 1024)
    with pytest.raises(RenderRequestError, match="at most 300x1024"):
        rendering.render(ds, RenderOptions(viewport=(600, 2048)), max_side=300)


def test_thumbnail_fits_the_first_frame_within_the_size_and_never_enlarges() -> None:
    assert decode(thumbnail(load("CT_small.dcm"), size=64)).size == (64, 64)
    assert decode(thumbnail(load("examples_ybr_color.dcm"))).size == (128, 96)
    assert decode(thumbnail(load("rtdose.dcm"))).size == (10, 10)
    assert decode(thumbnail(load("CT_small.dcm"), media_type="image/png")).format == "PNG"


# --- output formats ------------------------------------------------------------------------------------------


def test_gif_output_of_a_grayscale_image_is_lossless() -> None:
    ds = load("CT_small.dcm")
    window = (40.0, 400.0, "LINEAR")
    gif = decode(render(ds, RenderOptions(media_type="image/gif", window=window)))
    png = pixels(render(ds, RenderOptions(media_type="image/png", window=window)))
    assert gif.format == "GIF"
    assert np.array_equal(np.asarray(gif.convert("L")).astype(np.int16), png)


def test_gif_output_of_a_colour_image_is_colour() -> None:
    image = decode(render(load("SC_rgb.dcm"), RenderOptions(media_type="image/gif")))
    assert image.format == "GIF"
    rgb = np.asarray(image.convert("RGB")).astype(np.int16)
    assert (rgb[..., 0] != rgb[..., 1]).any()


def test_jpeg_quality_trades_size_for_fidelity() -> None:
    ds = load("CT_small.dcm")
    low = render(ds, RenderOptions(quality=10))
    high = render(ds, RenderOptions(quality=95))
    assert len(low) < len(high)


# --- refusals ------------------------------------------------------------------------------------------------


def test_a_huge_claimed_image_is_refused_before_decoding() -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.1")
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = 65535, 65535
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = b"\x00\x00"
    assert MAX_RENDER_PIXELS < 65535 * 65535
    started = time.perf_counter()
    with pytest.raises(RenderError, match="limit"):
        render(ds, RenderOptions())
    with pytest.raises(RenderError, match="limit"):
        thumbnail(ds)
    assert time.perf_counter() - started < 0.5


def test_no_pixel_data_is_refused() -> None:
    ds = load("CT_small.dcm")
    del ds.PixelData
    with pytest.raises(RenderError, match="no pixel data"):
        render(ds, RenderOptions())


def test_frames_out_of_range_are_refused() -> None:
    with pytest.raises(RenderError, match="frame"):
        render(load("CT_small.dcm"), RenderOptions(frame=2))
    with pytest.raises(RenderError, match="frame"):
        render(load("emri_small.dcm"), RenderOptions(frame=11))


def test_an_unsupported_photometric_interpretation_is_refused() -> None:
    ds = load("SC_rgb.dcm")
    ds.PhotometricInterpretation = "HSV"  # retired (PS3.3 C.7.6.3.1.2)
    with pytest.raises(RenderError):
        render(ds, RenderOptions())


def test_undecodable_pixel_data_is_refused_as_render_error() -> None:
    from pydicom.encaps import encapsulate

    ds = load("SC_rgb_jpeg_dcmtk.dcm")
    ds.PixelData = encapsulate([b"\xff\xd8 not a JPEG \xff\xd9"])
    with pytest.raises(RenderError, match="decode"):
        render(ds, RenderOptions())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"media_type": "image/tiff"},
        {"quality": 0},
        {"quality": 101},
        {"window": (40.0, 0.5, "LINEAR")},
        {"window": (40.0, 0.0, "SIGMOID")},
        {"window": (40.0, 400.0, "CUBIC")},
        {"viewport": (0, 10)},
        {"crop": (0, 0, 0, 10)},
        {"frame": 0},
    ],
)
def test_invalid_render_options_are_refused_at_construction(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RenderOptions(**kwargs)


def test_render_does_not_mutate_the_dataset() -> None:
    ds = load("examples_ybr_color.dcm")
    before = (ds.PhotometricInterpretation, ds.PixelData, len(ds))
    render(ds, RenderOptions(frame=3))
    assert (ds.PhotometricInterpretation, ds.PixelData, len(ds)) == before
