"""Rendered resources: one frame turned into an 8-bit consumer image (JPEG, PNG, GIF).

PS3.18 §8.3.5 and §10.4.1.1.3 (WADO-RS Retrieve Rendered) and the WADO-URI equivalents (§9.1.2.1) ask the
origin server to apply the grayscale pipeline of PS3.4 Annex N / PS3.3 C.11 - Modality LUT, VOI LUT or
window, polarity - and the requested viewport, and return an image a browser can show. Thumbnails (PS3.18
§10.4.1.1.4 thumbnail resources) reuse the same path.

Decoding uses pydicom 3's pixel decoders; the grayscale maths is written here with numpy (no per-pixel Python)
so that window functions follow PS3.3 C.11.2.1.2 exactly rather than depending on a library's conventions.
Rows x Columns, and the size of the output the viewport asks for, are checked *before* any decoding, so
neither a hostile header nor a hostile viewport (`viewport=100000,100000`) can make the server allocate
gigabytes.

This module is protocol-neutral: it imports neither FastAPI nor pynetdicom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Final, cast

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, convert_color_space
from pydicom.uid import UID

from app.core.retrieve.transcode import TranscodeError, frame_count, source_transfer_syntax

MAX_RENDER_PIXELS: Final = 64 * 1024 * 1024
"""Largest Rows x Columns rendered. Checked before decoding: a decompression-bomb bound."""

RENDER_MEDIA_TYPES: Final = frozenset({"image/jpeg", "image/png", "image/gif"})
"""Rendered media types for single-frame output (PS3.18 §8.7.4 Table 8.7.4-1, the image rows)."""

WINDOW_FUNCTIONS: Final = frozenset({"LINEAR", "LINEAR_EXACT", "SIGMOID"})
"""VOI LUT Function defined terms (PS3.3 C.11.2.1.3)."""

DEFAULT_JPEG_QUALITY: Final = 90  # PS3.18 §8.3.5.1.4 leaves the default quality to the origin server

_PILLOW_FORMAT: Final = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}


class RenderError(ValueError):
    """The instance cannot be rendered: no pixel data, unsupported photometric interpretation, frame out of
    range, too large, or undecodable."""


class RenderRequestError(RenderError):
    """The instance could be rendered, but not as asked: the viewport or crop does not fit this frame."""


@dataclass(frozen=True)
class RenderOptions:
    """Rendering parameters, already parsed from the request (PS3.18 §8.3.5.1).

    media_type: one of RENDER_MEDIA_TYPES.
    quality: 1..100, used for image/jpeg only (PS3.18 §8.3.5.1.4); None means DEFAULT_JPEG_QUALITY.
    window: (center, width, function) overriding the instance's VOI (PS3.18 §8.3.5.1.3); function is one of
        WINDOW_FUNCTIONS (PS3.3 C.11.2.1.3).
    viewport: (vw, vh): the output is scaled to fit in vw x vh keeping the aspect ratio (PS3.18 §8.3.5.1.2).
    crop: (sx, sy, sw, sh): the source region to render, in pixels of the frame, applied before the viewport
        scaling (the optional part of the PS3.18 §8.3.5.1.2 viewport parameter). Only positive sw, sh are
        supported; the region is clipped to the frame.
    frame: 1-based frame number.

    Invalid values raise ValueError at construction, so a request is refused before any work is done.
    """

    media_type: str = "image/jpeg"
    quality: int | None = None
    window: tuple[float, float, str] | None = None
    viewport: tuple[int, int] | None = None
    crop: tuple[int, int, int, int] | None = None
    frame: int = 1

    def __post_init__(self) -> None:
        if self.media_type not in RENDER_MEDIA_TYPES:
            raise ValueError(
                f"media type {self.media_type!r} is not renderable; use one of {sorted(RENDER_MEDIA_TYPES)}"
            )
        if self.quality is not None and not 1 <= self.quality <= 100:
            raise ValueError(f"quality {self.quality} is outside 1..100 (PS3.18 8.3.5.1.4)")
        if self.window is not None:
            center, width, function = self.window
            if function not in WINDOW_FUNCTIONS:
                raise ValueError(f"window function {function!r} is not one of {sorted(WINDOW_FUNCTIONS)}")
            if not (math.isfinite(center) and math.isfinite(width)):
                raise ValueError("window center and width must be finite numbers")
            # PS3.3 C.11.2.1.2.1: LINEAR needs width >= 1; C.11.2.1.3: LINEAR_EXACT and SIGMOID need width > 0.
            if (function == "LINEAR" and width < 1) or width <= 0:
                raise ValueError(f"window width {width} is not valid for {function} (PS3.3 C.11.2.1.2)")
        if self.viewport is not None and (self.viewport[0] < 1 or self.viewport[1] < 1):
            raise ValueError(f"viewport {self.viewport} must be at least 1x1")
        if self.crop is not None and (
            self.crop[0] < 0 or self.crop[1] < 0 or self.crop[2] < 1 or self.crop[3] < 1
        ):
            raise ValueError(f"crop region {self.crop} needs sx, sy >= 0 and sw, sh >= 1")
        if self.frame < 1:
            raise ValueError(f"frame number {self.frame} is not 1 or more")


def render(ds: Dataset, options: RenderOptions, *, max_side: int) -> bytes:
    """Render frame `options.frame` of `ds` as an 8-bit image in `options.media_type`.

    A side of the output may be as long as the frame's own side or `max_side`, whichever is more
    (RenderRequestError beyond it, before anything is decoded): the viewport (PS3.18 §8.3.5.1.2) scales the
    frame, and a scale without a bound would let one request make an image of any size.

    Grayscale (PS3.4 Annex N.2): Modality LUT (Rescale Slope/Intercept or Modality LUT Sequence, PS3.3
    C.11.1), then VOI: the requested window, else the instance's first Window Center/Width (with its VOI LUT
    Function), else its first VOI LUT Sequence item (PS3.3 C.11.2), else the frame's min..max. Enhanced
    multi-frame instances take these from the frame's functional groups (PS3.3 C.7.6.16.2.9, C.7.6.16.2.10).
    MONOCHROME1 is inverted so that the output reads like MONOCHROME2 (PS3.3 C.7.6.3.1.2).
    Colour: RGB stays RGB, YBR_* is converted to RGB, PALETTE COLOR goes through its palette (PS3.3
    C.7.6.3.1.5). The viewport/crop is applied last.
    """
    frame_index = _check_renderable(ds, options.frame)
    region = _region(ds, options.crop)
    size = _output_size(ds, region, options.viewport, max_side)
    pixels, photometric = _decode(ds, frame_index)
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        image = _grayscale(ds, pixels, frame_index, options.window)
        if photometric == "MONOCHROME1":
            image = 255 - image
    elif photometric == "PALETTE COLOR":
        image = _palette(ds, pixels)
    elif photometric == "RGB" or photometric.startswith("YBR_"):
        image = _colour(ds, pixels, photometric)
    else:
        raise RenderError(f"Photometric Interpretation {photometric!r} cannot be rendered")
    return _encode(_apply_viewport(image, region, size), options)


def thumbnail(ds: Dataset, size: int = 128, media_type: str = "image/jpeg") -> bytes:
    """The first frame rendered with the instance's own VOI, fitted within size x size (never enlarged)."""
    if size < 1:
        raise ValueError(f"thumbnail size {size} is not 1 or more")
    rows, columns = _dimensions(ds)
    viewport = (size, size) if rows > size or columns > size else None
    return render(ds, RenderOptions(media_type=media_type, viewport=viewport, frame=1), max_side=size)


# --- decoding ------------------------------------------------------------------------------------------------


def _dimensions(ds: Dataset) -> tuple[int, int]:
    try:
        return int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError) as exc:
        raise RenderError("the instance has no usable Rows and Columns") from exc


def _check_renderable(ds: Dataset, frame: int) -> int:
    """Refuse before decoding anything; return the 0-based frame index."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise RenderError("the instance has no pixel data")
    rows, columns = _dimensions(ds)
    if rows < 1 or columns < 1:
        raise RenderError(f"the instance claims a {rows}x{columns} image")
    if rows * columns > MAX_RENDER_PIXELS:
        raise RenderError(
            f"{rows}x{columns} pixels exceeds the rendering limit of {MAX_RENDER_PIXELS} pixels"
        )
    try:
        count = frame_count(ds)
    except TranscodeError as exc:
        raise RenderError(str(exc)) from exc
    if not 1 <= frame <= count:
        raise RenderError(f"frame {frame} is outside 1..{count}")
    return frame - 1


def _decode(ds: Dataset, frame_index: int) -> tuple[npt.NDArray[Any], str]:
    try:
        source = source_transfer_syntax(ds)
    except TranscodeError as exc:
        raise RenderError(str(exc)) from exc
    try:
        decoder = get_decoder(UID(source))
    except NotImplementedError as exc:
        raise RenderError(f"no decoder exists for transfer syntax {source}") from exc
    if not decoder.is_available:
        raise RenderError(f"the decoder for transfer syntax {source} is not installed")
    try:
        # as_rgb: YBR_FULL(_422) JPEG and YBR_ICT/RCT JPEG 2000 come back as RGB (PS3.5 §8.2.1, §8.2.4).
        options: dict[str, Any] = {"as_rgb": True}
        arr, meta = decoder.as_array(ds, index=frame_index, **options)
    except Exception as exc:  # codec plugins raise many exception types; all mean "cannot decode"
        raise RenderError(f"cannot decode frame {frame_index + 1}: {exc}") from exc
    photometric = str(meta.get("photometric_interpretation", ds.get("PhotometricInterpretation", "")))
    return arr, photometric.strip().upper()


# --- grayscale pipeline (PS3.4 Annex N.2) --------------------------------------------------------------------

_TOP_LEVEL_LUT_KEYWORDS: Final = (
    "PixelRepresentation",
    "BitsStored",
    "BitsAllocated",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
)


_FUNCTIONAL_GROUP_LUT_KEYWORDS: Final = {
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept", "RescaleType"),  # C.7.6.16.2.9
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction"),  # C.7.6.16.2.10
}


def _frame_lut_attributes(ds: Dataset, frame_index: int) -> Dataset:
    """The Modality and VOI attributes that apply to one frame.

    Top-level attributes first, then the Shared and the frame's Per-Frame Functional Groups (PS3.3 C.7.6.16):
    Pixel Value Transformation (C.7.6.16.2.9) and Frame VOI LUT (C.7.6.16.2.10), the per-frame values winning.
    The result is a scratch Dataset that shares (never modifies) the source's elements.
    """
    view = Dataset()
    if hasattr(ds, "file_meta"):
        view.file_meta = ds.file_meta  # pydicom reads OW LUT Data in the byte order this names
    for keyword in _TOP_LEVEL_LUT_KEYWORDS:
        if keyword in ds:
            view[keyword] = ds[keyword]
    groups: list[Dataset] = []
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and frame_index < len(per_frame):
        groups.append(per_frame[frame_index])
    for group in groups:
        for macro, keywords in _FUNCTIONAL_GROUP_LUT_KEYWORDS.items():
            items = group.get(macro)
            if items:
                for keyword in keywords:
                    if keyword in items[0]:
                        view[keyword] = items[0][keyword]
    return view


def _grayscale(
    ds: Dataset,
    pixels: npt.NDArray[Any],
    frame_index: int,
    window: tuple[float, float, str] | None,
) -> npt.NDArray[np.uint8]:
    if pixels.ndim != 2:
        raise RenderError(f"a monochrome frame should be 2-D, decoded shape is {pixels.shape}")
    attributes = _frame_lut_attributes(ds, frame_index)
    try:
        modality = apply_modality_lut(pixels, attributes)  # PS3.3 C.11.1
    except Exception as exc:  # a malformed Modality LUT Sequence
        raise RenderError(f"cannot apply the Modality LUT: {exc}") from exc
    # float32 halves the memory of float64 and keeps far more precision than an 8-bit output needs.
    values = np.asarray(modality, dtype=np.float32)

    if window is not None:
        return _window(values, *window)
    file_window = _first_window(attributes)
    if file_window is not None:
        return _window(values, *file_window)
    voi_lut = attributes.get("VOILUTSequence")
    if voi_lut:
        return _voi_lut(values, voi_lut[0], little_endian=_little_endian(ds))
    return _min_max(values)


def _first_value(value: Any) -> float | None:
    """First value of a possibly multi-valued DS element (PS3.3 C.11.2.1.2: the first pair is the default)."""
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue | list | tuple):
        if not value:
            return None
        value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _first_window(attributes: Dataset) -> tuple[float, float, str] | None:
    center = _first_value(attributes.get("WindowCenter"))
    width = _first_value(attributes.get("WindowWidth"))
    if center is None or width is None:
        return None
    function = str(attributes.get("VOILUTFunction") or "LINEAR").strip().upper()
    if function not in WINDOW_FUNCTIONS:
        function = "LINEAR"  # PS3.3 C.11.2.1.3: absent or unknown means LINEAR
    if (function == "LINEAR" and width < 1) or width <= 0:
        return None  # an invalid stored window is ignored rather than rendering garbage
    return center, width, function


def _window(
    values: npt.NDArray[np.float32], center: float, width: float, function: str
) -> npt.NDArray[np.uint8]:
    """PS3.3 C.11.2.1.2 (LINEAR) and C.11.2.1.3 (LINEAR_EXACT, SIGMOID), output range 0..255."""
    if function == "LINEAR":
        if width == 1:
            # C.11.2.1.2.1 with w = 1: everything at or below c - 0.5 is black, above it white.
            scaled = (values > center - 0.5).astype(np.float32)
        else:
            scaled = np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    elif function == "LINEAR_EXACT":
        scaled = np.clip((values - center) / width + 0.5, 0.0, 1.0)
    elif function == "SIGMOID":
        # 1 / (1 + exp(-4 (x - c) / w)) written with tanh, which cannot overflow for far-out values.
        scaled = 0.5 * (1.0 + np.tanh(2.0 * (values - center) / width))
    else:
        raise RenderError(f"unknown VOI LUT function {function!r}")
    return _to_uint8(scaled * 255.0)


def _little_endian(ds: Dataset) -> bool:
    """Byte order of OW values as pydicom holds them: that of the syntax the dataset was read in."""
    try:
        return bool(source_transfer_syntax(ds).is_little_endian)
    except (TranscodeError, ValueError):
        return True


def _voi_lut(values: npt.NDArray[np.float32], item: Dataset, *, little_endian: bool) -> npt.NDArray[np.uint8]:
    """PS3.3 C.11.2.1.1: look up each value in the LUT; output scaled from 0..2^n-1 to 0..255."""
    try:
        entries, first_mapped, bits = (int(v) for v in item.LUTDescriptor)
        raw = item.LUTData
    except (AttributeError, TypeError, ValueError) as exc:
        raise RenderError(f"the VOI LUT Sequence item is malformed: {exc}") from exc
    entries = entries or 65536  # C.11.2.1.1: 0 means 2^16 entries
    if isinstance(raw, bytes | bytearray):
        # OW: 16 bits per entry (PS3.3 C.11.2.1.1), in the byte order of the dataset's encoding
        table = np.frombuffer(raw, dtype="<u2" if little_endian else ">u2").astype(np.float32)
    else:
        table = np.asarray(raw if isinstance(raw, list | tuple) else [raw], dtype=np.float32)
    if table.size == 0 or not 1 <= bits <= 16:
        raise RenderError("the VOI LUT Sequence item has no usable data")
    table = table[:entries]
    index = np.clip(np.rint(values) - first_mapped, 0, table.size - 1).astype(np.intp)
    return _to_uint8(table[index] * (255.0 / (2**bits - 1)))


def _min_max(values: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return _to_uint8((values - low) * (255.0 / (high - low)))


def _to_uint8(values: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    return cast(npt.NDArray[np.uint8], np.clip(np.rint(values), 0, 255).astype(np.uint8))


# --- colour --------------------------------------------------------------------------------------------------


def _palette(ds: Dataset, pixels: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """PS3.3 C.7.6.3.1.5/C.7.6.3.1.6: map indices through the palette; entries are 8 or 16 bits."""
    try:
        rgb = apply_color_lut(pixels, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    except Exception as exc:  # missing or malformed palette
        raise RenderError(f"cannot apply the palette colour lookup table: {exc}") from exc
    return _scale_to_uint8(rgb, bits)


def _colour(ds: Dataset, pixels: npt.NDArray[Any], photometric: str) -> npt.NDArray[np.uint8]:
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise RenderError(f"a colour frame should be rows x columns x 3, decoded shape is {pixels.shape}")
    if photometric != "RGB":
        # Anything the decoder did not already convert (e.g. native YBR_PARTIAL_422), PS3.3 C.7.6.3.1.2.
        try:
            pixels = convert_color_space(pixels, photometric, "RGB")
        except Exception as exc:
            raise RenderError(f"cannot convert {photometric} to RGB: {exc}") from exc
    bits = int(ds.get("BitsStored") or pixels.dtype.itemsize * 8)
    return _scale_to_uint8(pixels, bits)


def _scale_to_uint8(arr: npt.NDArray[Any], bits: int) -> npt.NDArray[np.uint8]:
    """Keep the top 8 of `bits` significant bits.

    A shift rather than a multiplication by 255/(2^bits - 1): 16-bit palettes written as v*256 (0xFF00 for
    white) and as v*257 (0xFFFF) both come out as the intended 8-bit v.
    """
    if arr.dtype == np.uint8 and bits <= 8:
        return cast(npt.NDArray[np.uint8], arr)
    if arr.dtype.kind in "ui":
        shift = max(0, bits - 8)
        return cast(npt.NDArray[np.uint8], np.clip(np.right_shift(arr, shift), 0, 255).astype(np.uint8))
    top = float(2 ** max(1, min(bits, 32)) - 1)
    return _to_uint8(arr.astype(np.float32) * (255.0 / top))


# --- geometry and encoding -----------------------------------------------------------------------------------


def _region(ds: Dataset, crop: tuple[int, int, int, int] | None) -> tuple[int, int, int, int]:
    """The source region (x, y, width, height) of PS3.18 §8.3.5.1.2: the crop clipped to the frame, or the
    whole frame."""
    rows, columns = _dimensions(ds)
    if crop is None:
        return 0, 0, columns, rows
    sx, sy, sw, sh = crop
    width, height = min(sw, columns - sx), min(sh, rows - sy)
    if width < 1 or height < 1:
        raise RenderRequestError(f"crop region {crop} lies outside the {columns}x{rows} frame")
    return sx, sy, width, height


def _output_size(
    ds: Dataset, region: tuple[int, int, int, int], viewport: tuple[int, int] | None, max_side: int
) -> tuple[int, int]:
    """(width, height) of the output: the region scaled to fit the viewport, keeping its aspect (PS3.18
    §8.3.5.1.2); refused when a side exceeds both the frame's own side and `max_side`."""
    width, height = region[2], region[3]
    if viewport is not None:
        vw, vh = viewport
        scale = min(vw / width, vh / height)
        width, height = max(1, min(vw, round(width * scale))), max(1, min(vh, round(height * scale)))
    rows, columns = _dimensions(ds)
    widest, tallest = max(columns, max_side), max(rows, max_side)
    if width > widest or height > tallest:
        raise RenderRequestError(
            f"the viewport asks for a {width}x{height} image; at most {widest}x{tallest} is rendered from "
            f"this {columns}x{rows} frame (a side may exceed the frame's up to {max_side} pixels)"
        )
    return width, height


def _apply_viewport(
    image: npt.NDArray[np.uint8], region: tuple[int, int, int, int], size: tuple[int, int]
) -> Image.Image:
    """PS3.18 §8.3.5.1.2: take the source region, then scale it to the output size."""
    x, y, width, height = region
    picture = Image.fromarray(np.ascontiguousarray(image[y : y + height, x : x + width]))
    if size != picture.size:
        picture = picture.resize(size, Image.Resampling.LANCZOS)
    return picture


def _encode(picture: Image.Image, options: RenderOptions) -> bytes:
    buffer = BytesIO()
    media_type = options.media_type
    if media_type == "image/jpeg":
        picture.save(buffer, format="JPEG", quality=options.quality or DEFAULT_JPEG_QUALITY)
    elif media_type == "image/gif" and picture.mode == "RGB":
        # GIF holds at most 256 colours: an adaptive palette is the closest it gets to the RGB frame.
        picture.convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(buffer, format="GIF")
    else:
        picture.save(buffer, format=_PILLOW_FORMAT[media_type])
    return buffer.getvalue()
