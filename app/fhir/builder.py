"""FHIR R4 resources for a study held by the archive: ImagingStudy, its Patient and our DICOMweb Endpoint.

Built with `fhir.resources.R4B` (R4B is R4 for these three resources: the same elements and cardinalities), so
every resource is validated before it leaves. Conventions (FHIR R4 ImagingStudy, "DICOM and FHIR"):
* ImagingStudy.identifier: system `urn:dicom:uid`, value `urn:oid:<StudyInstanceUID>` (the conditional update
  key), plus the Accession Number typed ACSN when there is one;
* series.uid / instance.uid are bare UIDs; instance.sopClass is `urn:oid:<SOP Class UID>` in `urn:ietf:rfc:3986`;
  modalities are codes of the DICOM vocabulary `http://dicom.nema.org/resources/ontology/DCM`;
* Patient.identifier: the Patient ID in a system made of its Issuer of Patient ID (`urn:dicom:issuer:<issuer>`),
  or, with no issuer, of this archive's AE title (`urn:dicom:ae:<AE>:patient-id`), as Patient IDs are only
  unique within their issuer;
* Endpoint: connectionType `dicom-wado-rs`, address = the DICOMweb base URL, identified by that URL.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fhir.resources.R4B.endpoint import Endpoint
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.patient import Patient

DICOM_UID_SYSTEM = "urn:dicom:uid"
DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
RFC3986 = "urn:ietf:rfc:3986"
ENDPOINT_CONNECTION_TYPES = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"

JSONDict = dict[str, Any]


def study_identifier(study_uid: str) -> tuple[str, str]:
    return DICOM_UID_SYSTEM, f"urn:oid:{study_uid}"


def _value(dataset: JSONDict, tag: str) -> Any:
    element = dataset.get(tag)
    if not element:
        return None
    values = element.get("Value")
    if not values:
        return None
    return values[0]


def _text(dataset: JSONDict, tag: str) -> str | None:
    value = _value(dataset, tag)
    if value is None:
        return None
    if isinstance(value, dict):  # PN: {"Alphabetic": "DOE^JOHN"}
        value = value.get("Alphabetic")
    text = str(value).strip() if value is not None else ""
    return text or None


def _int(dataset: JSONDict, tag: str) -> int | None:
    value = _value(dataset, tag)
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _date(da: str | None) -> str | None:
    if not da or len(da) != 8 or not da.isdigit():
        return None
    return f"{da[:4]}-{da[4:6]}-{da[6:]}"


def _started(da: str | None, tm: str | None, offset: str | None) -> str | None:
    """ImagingStudy.started from StudyDate/StudyTime. A FHIR dateTime with a time needs a zone: DICOM gives
    one only in Timezone Offset From UTC (0008,0201); without it the date alone is given, never a wrong instant."""
    date = _date(da)
    if date is None:
        return None
    digits = (tm or "").split(".")[0]
    if offset and len(offset) == 5 and offset[0] in "+-" and offset[1:].isdigit() and len(digits) >= 4:
        hh, mm, ss = digits[:2], digits[2:4], (digits[4:6] or "00")
        if digits[:6].isdigit() and int(hh) < 24 and int(mm) < 60 and int(ss) < 60:
            return f"{date}T{hh}:{mm}:{ss}{offset[:3]}:{offset[3:]}"
    return date


@dataclass
class SeriesSummary:
    uid: str
    number: int | None = None
    modality: str | None = None
    description: str | None = None
    body_part: str | None = None
    instances: list[tuple[str, str, int | None]] = field(default_factory=list)  # uid, sop class, number


@dataclass
class StudySummary:
    """What the three resources need of a study, read from the stored instance headers (DICOM JSON)."""

    study_uid: str
    patient_id: str | None = None
    issuer_of_patient_id: str | None = None
    patient_name: str | None = None
    birth_date: str | None = None
    sex: str | None = None
    study_date: str | None = None
    study_time: str | None = None
    timezone_offset: str | None = None
    description: str | None = None
    accession_number: str | None = None
    series: dict[str, SeriesSummary] = field(default_factory=dict)

    @classmethod
    def from_datasets(cls, study_uid: str, datasets: Iterable[tuple[str, str, str]]) -> StudySummary:
        """`datasets`: (series UID, SOP Instance UID, DICOM JSON text) per instance, in series order."""
        summary = cls(study_uid)
        for series_uid, sop_uid, text in datasets:
            ds: JSONDict = json.loads(text)
            if summary.patient_id is None:
                summary.patient_id = _text(ds, "00100020")
                summary.issuer_of_patient_id = _text(ds, "00100021")
                summary.patient_name = _text(ds, "00100010")
                summary.birth_date = _text(ds, "00100030")
                summary.sex = _text(ds, "00100040")
                summary.study_date = _text(ds, "00080020")
                summary.study_time = _text(ds, "00080030")
                summary.timezone_offset = _text(ds, "00080201")
                summary.description = _text(ds, "00081030")
                summary.accession_number = _text(ds, "00080050")
            series = summary.series.get(series_uid)
            if series is None:
                series = summary.series[series_uid] = SeriesSummary(
                    uid=series_uid,
                    number=_int(ds, "00200011"),
                    modality=_text(ds, "00080060"),
                    description=_text(ds, "0008103E"),
                    body_part=_text(ds, "00180015"),
                )
            series.instances.append((sop_uid, _text(ds, "00080016") or "", _int(ds, "00200013")))
        return summary

    @property
    def number_of_instances(self) -> int:
        return sum(len(s.instances) for s in self.series.values())


def patient_identifier(summary: StudySummary, ae_title: str) -> tuple[str, str]:
    issuer = summary.issuer_of_patient_id
    system = f"urn:dicom:issuer:{issuer}" if issuer else f"urn:dicom:ae:{ae_title.strip()}:patient-id"
    return system, summary.patient_id or f"unknown-{summary.study_uid}"


def build_patient(summary: StudySummary, ae_title: str) -> Patient:
    system, value = patient_identifier(summary, ae_title)
    data: JSONDict = {"resourceType": "Patient", "identifier": [{"system": system, "value": value}]}
    if summary.patient_name:
        family, _, rest = summary.patient_name.partition("^")
        given = [g for g in rest.split("^")[:2] if g]
        name: JSONDict = {"text": summary.patient_name.replace("^", " ").strip()}
        if family:
            name["family"] = family
        if given:
            name["given"] = given
        data["name"] = [name]
    if (birth := _date(summary.birth_date)) is not None:
        data["birthDate"] = birth
    gender = {"M": "male", "F": "female", "O": "other"}.get((summary.sex or "").upper())
    if gender:
        data["gender"] = gender
    return Patient.model_validate(data)


def build_endpoint(address: str) -> Endpoint:
    return Endpoint.model_validate(
        {
            "resourceType": "Endpoint",
            "identifier": [{"system": RFC3986, "value": address}],
            "status": "active",
            "name": "DICOMweb (WADO-RS, QIDO-RS, STOW-RS)",
            "connectionType": {"system": ENDPOINT_CONNECTION_TYPES, "code": "dicom-wado-rs"},
            "payloadType": [{"text": "DICOM"}],
            "payloadMimeType": ["application/dicom"],
            "address": address,
        }
    )


def build_imaging_study(summary: StudySummary, patient_ref: str, endpoint_ref: str | None) -> ImagingStudy:
    system, value = study_identifier(summary.study_uid)
    identifiers: list[JSONDict] = [{"system": system, "value": value}]
    if summary.accession_number:
        identifiers.append(
            {"type": {"coding": [{"system": V2_0203, "code": "ACSN"}]}, "value": summary.accession_number}
        )
    endpoints = [{"reference": endpoint_ref}] if endpoint_ref else []
    modalities = sorted({s.modality for s in summary.series.values() if s.modality})
    series: list[JSONDict] = []
    for s in summary.series.values():
        item: JSONDict = {
            "uid": s.uid,
            # ImagingStudy.series.modality is 1..1: OT (other) when the header names none.
            "modality": {"system": DCM_SYSTEM, "code": s.modality or "OT"},
            "numberOfInstances": len(s.instances),
            "instance": [
                {
                    "uid": uid,
                    "sopClass": {"system": RFC3986, "code": f"urn:oid:{sop_class}"},
                    **({"number": number} if number is not None and number >= 0 else {}),
                }
                for uid, sop_class, number in s.instances
            ],
        }
        if s.number is not None and s.number >= 0:
            item["number"] = s.number
        if s.description:
            item["description"] = s.description
        if endpoints:
            item["endpoint"] = endpoints
        series.append(item)
    data: JSONDict = {
        "resourceType": "ImagingStudy",
        "identifier": identifiers,
        "status": "available",
        "subject": {"reference": patient_ref},
        "numberOfSeries": len(summary.series),
        "numberOfInstances": summary.number_of_instances,
        "modality": [{"system": DCM_SYSTEM, "code": m} for m in modalities],
        "series": series,
    }
    started = _started(summary.study_date, summary.study_time, summary.timezone_offset)
    if started is not None:
        data["started"] = started
    if summary.description:
        data["description"] = summary.description
    if endpoints:
        data["endpoint"] = endpoints
    return ImagingStudy.model_validate(data)
