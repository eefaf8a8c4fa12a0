"""Reading an instance's header and turning it into an InstanceRecord.

Ingest reads only up to the pixel data (`stop_before_pixels`): the bytes themselves go to storage unchanged,
so a 1 GB instance costs a header's worth of memory. Large binary values before the pixel data become
BulkDataURI references (PS3.18 F.2.6), relative to the instance, so the stored metadata stays small and
WADO-RS metadata answers need no file read.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any, BinaryIO, NamedTuple

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag

from app.core.dicom.attributes import Attribute, Kind, Level, stored_at
from app.core.dicom.dicom_json import (
    BINARY_VRS,
    DEFAULT_ENCODING,
    SPECIFIC_CHARACTER_SET,
    binary_json,
    element_json,
    encoding_for,
    pixel_data_json,
    raw_value_json,
)
from app.core.dicom.uids import InvalidUIDError, check_uid
from app.core.dicom.values import name_words, normalize, study_datetime
from app.core.records import InstanceRecord, JSONDict, LevelRecord

log = logging.getLogger(__name__)

# (7FE0,0010) Pixel Data as the next tag in a little- or big-endian stream.
_PIXEL_DATA_TAG_BYTES = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")
_UNDEFINED_LENGTH = 0xFFFFFFFF  # PS3.5 7.1.1
# VRs whose empty value pydicom reads as None rather than "": not indexed nor returned when empty.
_NO_EMPTY_VALUE = frozenset({"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "AT", "IS", "DS"})


class HeaderError(ValueError):
    """The bytes are not a DICOM Part 10 instance this archive can index (0xC000); the message says why."""


class DataSetMismatch(ValueError):
    """The header contradicts the data set itself, e.g. it claims more pixels than the pixel data holds: the data
    set does not match its IOD (0xA900, PS3.4 B.2.3); the message says why."""


class Header(NamedTuple):
    dataset: Dataset  # File Meta and data set up to, not including, the pixel data
    pixel_data_offset: int | None  # where the (7FE0,0010) Pixel Data element starts in the stream, if it does

    @property
    def pixel_data_present(self) -> bool:
        return self.pixel_data_offset is not None


def read_header(source: str | BinaryIO) -> Header:
    """Parse the File Meta and data set up to (not including) the pixel data."""
    if isinstance(source, str):
        with open(source, "rb") as stream:
            return read_header(stream)
    try:
        ds = pydicom.dcmread(source, stop_before_pixels=True)
        # pydicom stops with the stream at the pixel data tag, so the next four bytes tell whether there is any.
        position = source.tell()
        following = source.read(4)
    except (InvalidDicomError, EOFError) as exc:
        raise HeaderError(f"not a DICOM Part 10 instance: {exc}") from exc
    except Exception as exc:  # pydicom raises many kinds on damaged input; all mean "cannot understand"
        raise HeaderError(f"cannot parse the DICOM header: {type(exc).__name__}: {exc}") from exc
    meta = getattr(ds, "file_meta", None)
    if not isinstance(meta, FileMetaDataset) or "TransferSyntaxUID" not in meta:
        raise HeaderError("no File Meta Information with a Transfer Syntax UID (PS3.10 7.1)")
    return Header(ds, position if following in _PIXEL_DATA_TAG_BYTES else None)


_IDENTITY = (
    ("0020000D", "StudyInstanceUID"),
    ("0020000E", "SeriesInstanceUID"),
    ("00080018", "SOPInstanceUID"),
    ("00080016", "SOPClassUID"),
)


def identify(body: JSONDict, *, conformant: bool = True) -> tuple[str, str, str, str]:
    """Study, Series, SOP Instance and SOP Class UIDs, each checked before it can become a path or a key: one
    value (VM 1 in PS3.6) and a UID (PS3.5 9.1; `conformant`: without leading zeros either). Raises
    InvalidUIDError saying which and why."""
    uids = []
    for key, name in _IDENTITY:
        count = len(body.get(key, {}).get("Value") or ())
        if count > 1:
            raise InvalidUIDError(f"{name} has {count} values where one is allowed (VM 1, PS3.6)")
        uids.append(check_uid(first_text(body, key), name, conformant=conformant))
    study, series, instance, sop_class = uids
    return study, series, instance, sop_class


def first_text(body: JSONDict, key: str) -> str | None:
    """The first value of a top-level attribute as text, or None."""
    values = body.get(key, {}).get("Value")
    if not values or values[0] is None:
        return None
    return str(values[0]).strip()


def build_record(ds: Dataset, *, pixel_data_present: bool) -> InstanceRecord:
    """The repository record of a header read by `read_header` (for tests and benchmarks that edit a data set
    first; ingest goes through app/core/ingest/parsing.py `parse_instance`)."""
    return record_from_json(
        dataset_json(ds, pixel_data_present=pixel_data_present), str(ds.file_meta.TransferSyntaxUID)
    )


def record_from_json(body: JSONDict, transfer_syntax: str, *, conformant: bool = True) -> InstanceRecord:
    """The repository record of a header as DICOM JSON (`dataset_json`, or app.core.ingest.raw_header's fast path).

    The indexed values are read from the JSON rather than from pydicom's elements, whose conversion cost more
    than the rest of ingest together. Raises InvalidUIDError when an identifying UID is missing or malformed.
    """
    study_uid, series_uid, sop_uid, sop_class_uid = identify(body, conformant=conformant)
    levels = {level: _level_record(body, level) for level in Level}
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
        dataset_json=json.dumps(body, separators=(",", ":"), ensure_ascii=False),
    )


def dataset_json(ds: Dataset, *, pixel_data_present: bool) -> JSONDict:
    """The whole header as DICOM JSON, with bulk data and the pixel data as relative BulkDataURIs."""
    body = _to_json(ds, ())
    if pixel_data_present and "PixelData" not in ds:
        # The header was read with stop_before_pixels: the pixel data is in the file, served as bulk data.
        body["7FE00010"] = pixel_data_json(
            ds.file_meta.TransferSyntaxUID.is_compressed, int(ds.get("BitsAllocated", 8) or 8)
        )
    return body


def _to_json(ds: Dataset, path: tuple[str, ...], inherited: str | None = DEFAULT_ENCODING) -> JSONDict:
    # An item without its own Specific Character Set uses its parent's (PS3.3 C.12.1.1.2).
    charset = ds._dict.get(Tag(SPECIFIC_CHARACTER_SET))
    encoding = inherited if charset is None else encoding_for(getattr(charset, "value", None))
    out: JSONDict = {}
    for tag in sorted(ds._dict):
        key = f"{tag:08X}"
        raw = ds._dict[tag]
        if isinstance(raw, RawDataElement) and raw.length != _UNDEFINED_LENGTH:
            held = len(raw.value or b"")
            if held < raw.length:
                # pydicom hands over what the file held of a value that runs past its end (PS3.5 7.1.1).
                raise HeaderError(
                    f"({tag >> 16:04X},{tag & 0xFFFF:04X}) claims {raw.length} bytes but the file ends {held} "
                    "bytes into its value"
                )
        # UN is left to pydicom, which knows the VR of many private tags sent as UN.
        if (
            isinstance(raw, RawDataElement)
            and raw.is_little_endian
            and raw.value is not None
            and raw.VR != "UN"
        ):
            vr = raw.VR or _implicit_vr(tag)
            if vr in BINARY_VRS:
                out[key] = binary_json(vr, raw.value, path, key)
                continue
            if (
                vr is not None
                and vr != "SQ"
                and (fast := raw_value_json(vr, raw.value, encoding)) is not None
            ):
                out[key] = fast
                continue
        elem = ds[tag]
        if elem.VR == "SQ":
            items = [_to_json(item, (*path, key, str(i)), encoding) for i, item in enumerate(elem.value)]
            out[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
        elif elem.VR in BINARY_VRS and elem.value is not None:
            out[key] = binary_json(elem.VR, elem.value, path, key)
        else:
            try:
                out[key] = element_json(elem)
            except (
                Exception
            ):  # a value that cannot be converted is kept as its VR only, not fatal to the store
                out[key] = {"vr": elem.VR}
    return out


def _implicit_vr(tag: int) -> str | None:
    """The VR of a public tag in an implicit-VR header; None (pydicom decides) for private or ambiguous ones."""
    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        return None
    return vr if " " not in vr else None


def _level_record(body: JSONDict, level: Level) -> LevelRecord:
    """A level's indexed values and returned attributes, read from the header's DICOM JSON."""
    record = LevelRecord()
    for attribute in stored_at(level):
        if attribute.kind is Kind.MULTI:
            values = [str(v) for v in _normalized(attribute, _values_along(body, attribute.path)) if v != ""]
            if values:
                record.multi[attribute.key] = values
            continue
        element = body.get(f"{attribute.tag:08X}")
        if element is None or (len(element) == 1 and element["vr"] in _NO_EMPTY_VALUE):
            continue
        record.attributes[attribute.key] = element
        if attribute.kind is Kind.COLUMN:
            values = [_indexable(v) for v in element.get("Value", ())]
            first = next(iter(_normalized(attribute, values[:1])), None)
            if first is not None and first != "":
                record.values[attribute.field] = first
            if attribute.vr == "PN" and values:
                # Every name component is indexed so fuzzy matching is a prefix match on an index.
                record.multi[attribute.key] = name_words(values[0] or "")
    return record


def _values_along(body: JSONDict, path: tuple[int, ...]) -> list[Any]:
    items: list[JSONDict] = [body]
    for tag in path[:-1]:
        key = f"{tag:08X}"
        items = [item for d in items for item in d.get(key, {}).get("Value", ()) if isinstance(item, dict)]
    key = f"{path[-1]:08X}"
    return [_indexable(v) for d in items for v in d.get(key, {}).get("Value", ())]


def _indexable(value: Any) -> Any:
    """A DICOM JSON value as the text or number that is indexed: a person name by its alphabetic group."""
    if isinstance(value, dict):
        return value.get("Alphabetic", "")
    return value


def _normalized(attribute: Attribute, values: Iterable[Any]) -> list[str | int]:
    return [n for v in values if (n := normalize(attribute.vr, v)) is not None]


def _str(value: object) -> str | None:
    return None if value is None else str(value)
