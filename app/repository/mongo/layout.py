"""How the MongoDB store lays out its documents: the names every role module reads and writes by.

It keeps the SQLite repository's model so the two answer identically (one contract suite runs against both):
collections `patients`, `studies`, `series` and `instances`, with the field names of the SQLite columns (from
app/core/dicom/attributes.py), each level's DICOM JSON as an `attributes` sub-document, and each instance's whole
header as the DICOM JSON text `dataset`.

Why `attributes` is a sub-document and `dataset` a string: the level attributes are a small, fixed set from
the attribute table, so as a sub-document they can be projected one by one (QIDO `includefield`) and read in a
shell, at no risk (their values are strings and numbers BSON holds; no UV/SV that could overflow int64). The
dataset is the stored header, served whole by WADO-RS metadata: kept as the exact text it was given, it needs no
conversion either way and cannot fail to encode whatever the header holds.

Multi-valued keys (every value of a multi-valued attribute, keys inside sequences, the words of person names)
are arrays under a `multi` sub-document, one per attribute key, indexed as multikey indexes. MongoDB field names
cannot contain dots, so the key of a sequence path is encoded with "_" for "." (`multi_key`):
`{"multi": {"00100010": ["DOE", "JOHN"], "00101002_00100020": ["X"]}}`. As in SQLite, a study document also
holds its patient's multi-valued keys, since in the Study Root model they are matched at study level.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.core.records import StoredInstance

Document = dict[str, Any]

INSTANCE_FIELDS = (
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "sop_class_uid",
    "transfer_syntax_uid",
    "storage_key",
    "size",
)
INSTANCE_PROJECTION: dict[str, int] = {"_id": 0, **dict.fromkeys(INSTANCE_FIELDS, 1)}

SERIES_INSTANCES = "number_of_series_related_instances"
STUDY_SERIES = "number_of_study_related_series"
STUDY_INSTANCES = "number_of_study_related_instances"
PATIENT_STUDIES = "number_of_patient_related_studies"
PATIENT_SERIES = "number_of_patient_related_series"
PATIENT_INSTANCES = "number_of_patient_related_instances"
MODALITIES = "modalities_in_study"
SOP_CLASSES = "sop_classes_in_study"


def stored(doc: Mapping[str, Any]) -> StoredInstance:
    return StoredInstance(*(doc[name] for name in INSTANCE_FIELDS))


def multi_key(key: str) -> str:
    """An attribute key as a field name of the `multi` sub-document: field names cannot hold dots."""
    return key.replace(".", "_")


def multi_path(key: str) -> str:
    """The array of an attribute key's values."""
    return "multi." + multi_key(key)
