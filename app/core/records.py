"""Records passed between the services and the repositories.

They carry what the repositories index and return, already extracted and normalised, so a repository never
parses DICOM and both implementations store exactly the same facts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

JSONDict = dict[str, Any]


@dataclass
class LevelRecord:
    """One level's share of an instance: what QIDO/C-FIND return and what they match on."""

    attributes: JSONDict = field(default_factory=dict)  # DICOM JSON (PS3.18 F.2) of the level's attributes
    values: dict[str, str | int] = field(default_factory=dict)  # column/field name -> normalised value
    multi: dict[str, list[str]] = field(default_factory=dict)  # attribute key -> every normalised value


@dataclass
class InstanceRecord:
    """Everything the archive keeps about one instance, built by the ingest service from its header."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    patient_key: str  # PatientID and IssuerOfPatientID: the identity of a patient (PS3.3 C.7.1.1)
    patient: LevelRecord
    study: LevelRecord
    series: LevelRecord
    instance: LevelRecord
    dataset_json: str  # the whole header as DICOM JSON text, bulk data as relative BulkDataURIs
    storage_key: str = ""
    size: int = 0


@dataclass(frozen=True)
class StoredInstance:
    """Where an instance held by the archive is, and what retrieve needs to know before opening it."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    storage_key: str
    size: int


class StoredDataset(NamedTuple):
    """One instance's stored header (DICOM JSON text, relative BulkDataURIs) with the UIDs that locate it.

    WADO-RS metadata (PS3.18 10.4.1.1.2) answers are assembled from these without parsing the JSON: the UIDs
    are what turns each relative BulkDataURI into an absolute one.
    """

    series_instance_uid: str
    sop_instance_uid: str
    dataset_json: str
