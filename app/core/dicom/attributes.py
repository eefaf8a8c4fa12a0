"""The table of attributes the archive indexes, by query/retrieve level.

One table serves every door: ingest reads it to know what to extract and index from a header, QIDO-RS and
C-FIND read it to know what may be matched and what is returned at each level, and both repositories read it
to name their columns or fields. The contents follow PS3.18 Table 10.6.1-5 (required matching keys) and
Tables 10.6.3-3/-4/-5 (returned attributes), and PS3.4 C.6.1.1/C.6.2.1 (Patient Root and Study Root keys).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from functools import cache

from pydicom.datadict import dictionary_VR, tag_for_keyword


class Level(StrEnum):
    """Query/Retrieve levels (PS3.4 C.3), using the QueryRetrieveLevel (0008,0052) values."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


class Kind(StrEnum):
    """How an attribute is indexed."""

    COLUMN = "column"  # single-valued, one indexed column or field
    MULTI = "multi"  # multi-valued or inside a sequence: every value indexed, matched if any value matches
    AGGREGATE = (
        "aggregate"  # computed from lower levels (counts, ModalitiesInStudy): returned, some matchable
    )
    RETURN = "return"  # returned but not matchable


@dataclass(frozen=True)
class Attribute:
    """One attribute the archive knows at a level. `path` is a dotted tag path for sequence items."""

    keyword: str
    path: tuple[int, ...]
    vr: str
    level: Level
    kind: Kind
    field: str  # column (SQLite) and field (MongoDB) name

    @property
    def tag(self) -> int:
        return self.path[-1]

    @property
    def key(self) -> str:
        """The dotted hex form used in QIDO parameters and as the key in the multi-valued index."""
        return ".".join(f"{t:08X}" for t in self.path)

    @property
    def matchable(self) -> bool:
        return self.kind is not Kind.RETURN


def _attr(keyword: str, level: Level, kind: Kind = Kind.COLUMN, field: str | None = None) -> Attribute:
    parts = keyword.split(".")
    path = tuple(_tag(p) for p in parts)
    return Attribute(
        keyword=keyword,
        path=path,
        vr=str(dictionary_VR(path[-1])),
        level=level,
        kind=kind,
        field=field or _snake(parts[-1] if len(parts) == 1 else keyword.replace(".", "_")),
    )


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return int(tag)


def _snake(name: str) -> str:
    """SOPInstanceUID -> sop_instance_uid: a break before a capital after a lower-case letter or digit, and
    before the last capital of an acronym that starts a word."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower().replace(".", "_")


P, ST, SE, IM = Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE
C, M, A, R = Kind.COLUMN, Kind.MULTI, Kind.AGGREGATE, Kind.RETURN

ATTRIBUTES: tuple[Attribute, ...] = (
    # Patient (PS3.4 C.6.1.1.2); in Study Root these are returned and matched at study level.
    _attr("PatientName", P),
    _attr("PatientID", P),
    _attr("IssuerOfPatientID", P),
    _attr("PatientBirthDate", P),
    _attr("PatientSex", P),
    _attr("OtherPatientIDsSequence.PatientID", P, M, "other_patient_ids"),
    _attr("NumberOfPatientRelatedStudies", P, A),
    _attr("NumberOfPatientRelatedSeries", P, A),
    _attr("NumberOfPatientRelatedInstances", P, A),
    # Study (PS3.18 Table 10.6.3-3, PS3.4 C.6.2.1.2)
    _attr("StudyInstanceUID", ST),
    _attr("StudyDate", ST),
    _attr("StudyTime", ST),
    _attr("AccessionNumber", ST),
    _attr("IssuerOfAccessionNumberSequence", ST, R),
    _attr("ReferringPhysicianName", ST),
    _attr("StudyID", ST),
    _attr("StudyDescription", ST),
    _attr("PatientAge", ST, R),
    _attr("PatientSize", ST, R),
    _attr("PatientWeight", ST, R),
    _attr("TimezoneOffsetFromUTC", ST, R),
    _attr("ReferencedStudySequence.ReferencedSOPInstanceUID", ST, M, "referenced_study_uids"),
    _attr("ModalitiesInStudy", ST, A),
    _attr("SOPClassesInStudy", ST, A),
    _attr("NumberOfStudyRelatedSeries", ST, A),
    _attr("NumberOfStudyRelatedInstances", ST, A),
    # Series (PS3.18 Table 10.6.3-4)
    _attr("SeriesInstanceUID", SE),
    _attr("Modality", SE),
    _attr("SeriesNumber", SE),
    _attr("SeriesDescription", SE),
    _attr("SeriesDate", SE),
    _attr("SeriesTime", SE),
    _attr("BodyPartExamined", SE),
    _attr("Laterality", SE),
    _attr("InstitutionName", SE),
    _attr("PerformedProcedureStepStartDate", SE),
    _attr("PerformedProcedureStepStartTime", SE),
    # Returned whole at series level (PS3.18 Table 10.6.3-4 "if known"); its two IDs below are matched.
    _attr("RequestAttributesSequence", SE, R),
    _attr("RequestAttributesSequence.ScheduledProcedureStepID", SE, M, "request_sps_ids"),
    _attr("RequestAttributesSequence.RequestedProcedureID", SE, M, "request_rp_ids"),
    _attr("NumberOfSeriesRelatedInstances", SE, A),
    # Instance (PS3.18 Table 10.6.3-5)
    _attr("SOPInstanceUID", IM),
    _attr("SOPClassUID", IM),
    _attr("InstanceNumber", IM),
    _attr("Rows", IM),
    _attr("Columns", IM),
    _attr("BitsAllocated", IM),
    _attr("NumberOfFrames", IM),
    _attr("ContentDate", IM),
    _attr("ContentTime", IM),
    _attr("AvailableTransferSyntaxUID", IM, R),
)

# Where each level lives in both stores (the SQLite table and the MongoDB collection share the name), and the
# field holding a level's own key, which the levels below also carry to link to it.
LEVEL_TABLE: dict[Level, str] = {P: "patients", ST: "studies", SE: "series", IM: "instances"}
LEVEL_KEY: dict[Level, str] = {
    P: "patient_key",
    ST: "study_instance_uid",
    SE: "series_instance_uid",
    IM: "sop_instance_uid",
}

BY_KEY: dict[str, Attribute] = {a.key: a for a in ATTRIBUTES}
BY_KEYWORD: dict[str, Attribute] = {a.keyword: a for a in ATTRIBUTES}
LEVEL_ORDER = (P, ST, SE, IM)


def at_level(level: Level) -> tuple[Attribute, ...]:
    return tuple(a for a in ATTRIBUTES if a.level is level)


@cache  # the table is fixed: every store asks these of every level
def aggregates_at(level: Level) -> tuple[str, ...]:
    """Fields of a level computed from the levels below (counts, ModalitiesInStudy, SOPClassesInStudy)."""
    return tuple(a.field for a in ATTRIBUTES if a.level is level and a.kind is Kind.AGGREGATE)


@cache
def stored_at(level: Level) -> tuple[Attribute, ...]:
    """Attributes read from an instance header into a level's record (aggregates are computed instead)."""
    return tuple(a for a in ATTRIBUTES if a.level is level and a.kind is not Kind.AGGREGATE)
