"""What is cut out of a parsed data set: frames by number (PS3.18 10.4.1.1.4) and bulk data values by their path
(PS3.18 §8.7.2 BulkDataURI)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

import numpy as np
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from app.core.records import StoredInstance
from app.core.retrieve import transcode as tc
from app.core.retrieve.outcomes import InvalidRequest, NotAcceptable, NotFound, RetrieveFailed

PIXEL_DATA_TAGS: Final = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
BULK_PATH = re.compile(r"[0-9A-Fa-f]{8}(?:/[0-9]{1,6}/[0-9A-Fa-f]{8})*")
SWAP_WIDTH: Final = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def bulk_path(path: str) -> list[int]:
    """`00540016/0/00181072` -> [tag, item index, tag]: a stored relative BulkDataURI (app/core/ingest/header.py)."""
    if BULK_PATH.fullmatch(path) is None:
        raise InvalidRequest(f"{path[:100]!r} is not a bulk data path (tag, then item/tag pairs)")
    return [int(step, 16) if i % 2 == 0 else int(step) for i, step in enumerate(path.split("/"))]


def walk_path(ds: Dataset, steps: list[int], ref: StoredInstance) -> bytes:
    current: Dataset = ds
    for position in range(0, len(steps) - 1, 2):
        elem = current.get(Tag(steps[position]))
        index = steps[position + 1]
        if elem is None or elem.VR != "SQ" or elem.value is None or index >= len(elem.value):
            raise NotFound(f"instance {ref.sop_instance_uid} has no bulk data at the given path")
        current = elem.value[index]
    elem = current.get(Tag(steps[-1]))
    if elem is None or elem.value is None or not isinstance(elem.value, bytes | bytearray):
        raise NotFound(f"instance {ref.sop_instance_uid} has no bulk data at the given path")
    value = bytes(elem.value)
    width = SWAP_WIDTH.get(str(elem.VR))
    if width and not ds.original_encoding[1] and len(value) % width == 0:
        # Read from a Big Endian file (PS3.5 §A.3): bulk data goes out little-endian (PS3.18 §8.7.3.3.1).
        value = np.frombuffer(value, dtype=f">u{width}").astype(f"<u{width}").tobytes()
    return value


def check_frame(ds: Dataset, ref: StoredInstance, number: int, *, pixels_apart: bool = False) -> int:
    """The instance's frame count, once `number` is known to be one of its frames (else InvalidRequest).
    `pixels_apart`: `ds` is a header whose pixel data was found in the file (app/core/retrieve/files.py)."""
    if not pixels_apart and not any(t in ds for t in PIXEL_DATA_TAGS):
        raise InvalidRequest(f"instance {ref.sop_instance_uid} has no pixel data")
    try:
        count = tc.frame_count(ds)
    except tc.TranscodeError as exc:
        raise RetrieveFailed(str(exc)) from exc
    if not 1 <= number <= count:
        raise InvalidRequest(f"frame {number} is outside 1..{count} (PS3.18 10.4.1.1.4)")
    return count


def frame_data(
    ds: Dataset,
    ref: StoredInstance,
    numbers: Sequence[int],
    decode: bool,
    pixels: tc.PixelValue | None = None,
) -> list[bytes]:
    """The bytes of frames `numbers`, as stored or decoded, cut out of the parsed instance, or out of `pixels`,
    its Pixel Data value in the file when `ds` was read without it (only as stored)."""
    if pixels is None and "PixelData" not in ds:
        raise InvalidRequest(
            f"instance {ref.sop_instance_uid} has no (7FE0,0010) Pixel Data to cut frames from"
        )
    try:
        if decode:
            if pixels is not None:
                raise tc.TranscodeError("frames read from the file are sent as stored, not decoded")
            return tc.decoded_frame_bytes(ds, numbers)
        return tc.frame_bytes(ds, numbers, pixels)
    except tc.FrameNumberError as exc:
        raise InvalidRequest(f"{exc} (PS3.18 10.4.1.1.4)") from exc
    except tc.TranscodeError as exc:
        raise NotAcceptable(f"frames of {ref.sop_instance_uid}: {exc}") from exc
