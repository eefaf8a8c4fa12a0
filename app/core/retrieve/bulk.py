"""Bulk data values cut out of a parsed data set by their path (PS3.18 §8.7.2 BulkDataURI)."""

from __future__ import annotations

import re
from typing import Final

import numpy as np
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from app.core.records import StoredInstance
from app.core.retrieve.outcomes import InvalidRequest, NotFound

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
