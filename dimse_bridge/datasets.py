"""Data sets across the DIMSE door for the workflow services: a pydicom Dataset in, DICOM JSON on; and back.

The workflow services hold and match DICOM JSON (PS3.18 F.2), whichever door a workitem or a performed step
came through. One pair of helpers converts at this door: `to_json` is ingest's own encoder
(app/core/ingest/header.py `dataset_json`, which decodes each value with the data set's Specific Character Set,
PS3.5 6.1.2.5, and keeps empty elements as present but empty, which is what a C-FIND return key is), and
`from_json` is pydicom's `Dataset.from_json`, answering in UTF-8 (ISO_IR 192) when a value is not ASCII, as
the Query/Retrieve C-FIND does (dimse_bridge/qr.py `find_answer`).

A binary value above ingest's bulk data threshold would become a BulkDataURI that points nowhere for a workitem;
such values do not belong in workflow data sets, and are answered as empty elements of their VR.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

from pydicom.dataset import Dataset

from app.core.ingest.header import dataset_json
from app.core.records import JSONDict

CHARSET_UTF8: Final = "ISO_IR 192"
SPECIFIC_CHARACTER_SET: Final = "00080005"


Reader = Callable[[], Any]
"""An event property that decodes a request's data set (`lambda: event.attribute_list`)."""


class UnreadableDataSet(ValueError):
    """A request's data set could not be decoded; the message says why (for the log and Error Comment)."""


def decoded(read: Reader, what: str) -> Dataset | None:
    """The data set an event property decodes (`lambda: event.attribute_list`), every element decoded now so
    a damaged one is a refusal here rather than a crash later; None when the request carried none."""
    try:
        ds = read()
        if ds is None:
            return None
        if not isinstance(ds, Dataset):
            raise TypeError(f"not a data set: {type(ds).__name__}")
        for _ in ds:
            pass
    except Exception as exc:
        raise UnreadableDataSet(f"the {what} cannot be decoded: {exc}") from exc
    return ds


def to_json(ds: Dataset | None) -> JSONDict:
    """The data set as DICOM JSON (empty when None); UnreadableDataSet when a value cannot be read."""
    if ds is None:
        return {}
    try:
        return dataset_json(ds, pixel_data_present=False)
    except Exception as exc:
        raise UnreadableDataSet(f"the data set cannot be read: {exc}") from exc


def from_json(body: JSONDict) -> Dataset:
    """DICOM JSON as a Dataset to send, with Specific Character Set ISO_IR 192 when a value is not ASCII."""
    cleaned = _without_bulk_data(body)
    cleaned.pop(SPECIFIC_CHARACTER_SET, None)
    ds = Dataset.from_json(cleaned)
    if not json.dumps(cleaned, ensure_ascii=False).isascii():
        ds.SpecificCharacterSet = CHARSET_UTF8
    return ds


def _without_bulk_data(body: JSONDict) -> JSONDict:
    out: JSONDict = {}
    for key, element in body.items():
        if not isinstance(element, dict):
            continue
        if "BulkDataURI" in element:
            out[key] = {"vr": element.get("vr", "UN")}
        elif element.get("vr") == "SQ" and isinstance(element.get("Value"), list):
            items = [_without_bulk_data(item) for item in element["Value"] if isinstance(item, dict)]
            out[key] = {"vr": "SQ", "Value": items}
        else:
            out[key] = element
    return out
