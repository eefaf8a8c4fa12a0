"""Protocol-neutral results of the archive services.

The services speak these; the doors translate them: `app/api/errors.py` to HTTP and DICOM JSON, and the DIMSE
handlers to status codes. The reason codes are DICOM's own (PS3.18 Table 10.5.3-1 mirrors PS3.4 B.2.3 and
PS3.7 C), kept here as plain integers because both doors report them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum


class DuplicatePolicy(StrEnum):
    """What a store of an already-held SOP Instance UID does.

    `replace` keeps one copy, the newest, and answers success with warning 0xB000-class semantics in the
    response (PS3.18 Table 10.5.3-2 has no dedicated code, so the instance is listed with a WarningReason);
    `reject` answers failure 0x0111 (Duplicate SOP Instance, PS3.7 C.4.1.1.1 / PS3.18 Table 10.5.3-1);
    `keep` answers success and keeps the copy already held.
    """

    REPLACE = "replace"
    REJECT = "reject"
    KEEP = "keep"


class FailureReason(IntEnum):
    """Failure reasons for a stored instance (PS3.18 Table 10.5.3-1, PS3.4 B.2.3)."""

    PROCESSING_FAILURE = 0x0110
    DUPLICATE_SOP_INSTANCE = 0x0111
    NO_SUCH_SOP_CLASS = 0x0118
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    NOT_AUTHORIZED = 0x0124  # Refused: Not authorized (PS3.7 C.5.x; an ingest rule on the calling AE)
    OUT_OF_RESOURCES = 0xA700
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000


class WarningReason(IntEnum):
    """Warning reasons for a stored instance (PS3.18 Table 10.5.3-2, PS3.4 B.2.3)."""

    COERCION_OF_DATA_ELEMENTS = 0xB000
    ELEMENTS_DISCARDED = 0xB006
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xB007


class StoreStatus(StrEnum):
    STORED = "stored"
    REPLACED = "replaced"  # an instance with the same SOP Instance UID was held and has been replaced
    KEPT = "kept"  # an identical SOP Instance UID was held and kept (duplicate policy `keep`)
    FAILED = "failed"


@dataclass
class StoreOutcome:
    """What happened to one instance offered for storage."""

    status: StoreStatus
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    failure: FailureReason | None = None
    warnings: list[WarningReason] = field(default_factory=list)
    reason: str = ""  # human-readable, for the log line and the error comment
    notes: list[str] = field(default_factory=list)  # what pydicom warned about the sender's values, for the log

    @property
    def ok(self) -> bool:
        return self.status is not StoreStatus.FAILED
