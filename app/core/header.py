"""Reading an instance's header and turning it into an InstanceRecord.

Ingest reads only up to the pixel data (`stop_before_pixels`): the bytes themselves go to storage unchanged,
so a 1 GB instance costs a header's worth of memory. Large binary values before the pixel data become
BulkDataURI references (PS3.18 F.2.6), relative to the instance, so the stored metadata stays small and
WADO-RS metadata answers need no file read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, BinaryIO

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from app.core.attributes import Attribute, Kind, Level, stored_at
from app.core.dicom_json import element_json
from app.core.records import InstanceRecord, JSONDict, LevelRecord
from app.core.uids import check_uid
from app.core.values import name_words, normalize, study_datetime

# Values of these VRs longer than this are served as bulk data rather than inline (PS3.18 8.6.1.2.1 leaves the
# threshold to the origin server).
BULK_DATA_THRESHOLD = 1024
BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
PIXEL_DATA_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)
BULK_DATA_PREFIX = "bulkdata/"


class HeaderError(ValueError):
    """The bytes are not a DICOM Part 10 instance this archive can index; the message says why."""


def read_header(source: str | BinaryIO) -> Dataset:
    """Parse the File Meta and data set up to (not including) the pixel data."""
    try:
        ds = pydicom.dcmread(source, stop_before_pixels=True)
    except (InvalidDicomError, EOFError) as exc:
        raise HeaderError(f"not a DICOM Part 10 instance: {exc}") from exc
    except Exception as exc:  # pydicom raises many kinds on damaged input; all mean "cannot understand"
        raise HeaderError(f"cannot parse the DICOM header: {type(exc).__name__}: {exc}") from exc
    meta = getattr(ds, "file_meta", None)
    if not isinstance(meta, FileMetaDataset) or "TransferSyntaxUID" not in meta:
        raise HeaderError("no File Meta Information with a Transfer Syntax UID (PS3.10 7.1)")
    return ds


def identify(ds: Dataset) -> tuple[str, str, str, str]:
    """Study, Series, SOP Instance and SOP Class UIDs, each checked (PS3.5 9.1) before it can become a path."""
    return (
        check_uid(_text(ds.get("StudyInstanceUID")), "StudyInstanceUID"),
        check_uid(_text(ds.get("SeriesInstanceUID")), "SeriesInstanceUID"),
        check_uid(_text(ds.get("SOPInstanceUID")), "SOPInstanceUID"),
        check_uid(_text(ds.get("SOPClassUID")), "SOPClassUID"),
    )


def build_record(ds: Dataset, *, pixel_data_present: bool = True) -> InstanceRecord:
    """The repository record of a header read by `read_header`."""
    study_uid, series_uid, sop_uid, sop_class_uid = identify(ds)
    transfer_syntax = str(ds.file_meta.TransferSyntaxUID)
    levels = {level: _level_record(ds, level) for level in Level}
    study = levels[Level.STUDY]
    stamp = study_datetime(_str(study.values.get("study_date")), _str(study.values.get("study_time")))
    if stamp:
        study.values["study_datetime"] = stamp
    # AvailableTransferSyntaxUID (0008,3002) is how QIDO-RS tells a client what it may ask for without
    # transcoding (PS3.18 Table 10.6.3-5).
    levels[Level.IMAGE].attributes["00083002"] = {"vr": "UI", "Value": [transfer_syntax]}
    patient = levels[Level.PATIENT]
    issuer = patient.values.get("issuer_of_patient_id", "")
    return InstanceRecord(
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        sop_instance_uid=sop_uid,
        sop_class_uid=sop_class_uid,
        transfer_syntax_uid=transfer_syntax,
        patient_key=f"{patient.values.get('patient_id', '')}\\{issuer}",
        patient=patient,
        study=study,
        series=levels[Level.SERIES],
        instance=levels[Level.IMAGE],
        dataset_json=dataset_json(ds, pixel_data_present=pixel_data_present),
    )


def dataset_json(ds: Dataset, *, pixel_data_present: bool = True) -> str:
    """The whole header as DICOM JSON text, with bulk data and the pixel data as relative BulkDataURIs."""
    body = _to_json(ds, ())
    if pixel_data_present and "PixelData" not in ds:
        # The header was read with stop_before_pixels: the pixel data is in the file, served as bulk data.
        encapsulated = ds.file_meta.TransferSyntaxUID.is_compressed
        bits = int(ds.get("BitsAllocated", 8) or 8)
        vr = "OB" if encapsulated or bits <= 8 else "OW"
        body["7FE00010"] = {"vr": vr, "BulkDataURI": BULK_DATA_PREFIX + "7FE00010"}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def _to_json(ds: Dataset, path: tuple[str, ...]) -> JSONDict:
    out: JSONDict = {}
    for elem in ds:
        key = f"{elem.tag:08X}"
        if elem.VR == "SQ":
            items = [_to_json(item, (*path, key, str(i))) for i, item in enumerate(elem.value)]
            out[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
        elif elem.VR in BULK_VRS and elem.value is not None and len(elem.value) > BULK_DATA_THRESHOLD:
            out[key] = {"vr": elem.VR, "BulkDataURI": BULK_DATA_PREFIX + "/".join((*path, key))}
        else:
            try:
                out[key] = element_json(elem)
            except (
                Exception
            ):  # a value that cannot be converted is kept as its VR only, not fatal to the store
                out[key] = {"vr": elem.VR}
    return out


def _level_record(ds: Dataset, level: Level) -> LevelRecord:
    record = LevelRecord()
    for attribute in stored_at(level):
        if attribute.kind is Kind.MULTI:
            values = [str(v) for v in _normalized(attribute, _values_along(ds, attribute.path)) if v != ""]
            if values:
                record.multi[attribute.key] = values
            continue
        elem = ds.get(Tag(attribute.tag))
        if elem is None or elem.value is None:
            continue
        try:
            record.attributes[attribute.key] = (
                {"vr": "SQ", "Value": [_to_json(item, ()) for item in elem.value]}
                if elem.VR == "SQ"
                else element_json(elem)
            )
        except Exception:
            continue
        if attribute.kind is Kind.COLUMN:
            first = next(iter(_normalized(attribute, _as_list(elem.value))), None)
            if first is not None and first != "":
                record.values[attribute.field] = first
            if attribute.vr == "PN" and elem.value:
                # Every name component is indexed so fuzzy matching is a prefix match on an index.
                record.multi[attribute.key] = name_words(str(_as_list(elem.value)[0]))
    return record


def _values_along(ds: Dataset, path: tuple[int, ...]) -> list[Any]:
    datasets: list[Dataset] = [ds]
    for tag in path[:-1]:
        datasets = [item for d in datasets if (e := d.get(Tag(tag))) is not None for item in (e.value or ())]
    values: list[Any] = []
    for d in datasets:
        elem = d.get(Tag(path[-1]))
        if elem is not None and elem.value is not None:
            values.extend(_as_list(elem.value))
    return values


def _normalized(attribute: Attribute, values: Iterable[Any]) -> list[str | int]:
    return [n for v in values if (n := normalize(attribute.vr, v)) is not None]


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, MultiValue | list | tuple) else [value]


def _text(value: object) -> str | None:
    if value is None:
        return None
    return str(value[0] if isinstance(value, MultiValue) else value).strip()


def _str(value: object) -> str | None:
    return None if value is None else str(value)
