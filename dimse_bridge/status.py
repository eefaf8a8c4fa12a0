"""Domain outcomes -> DIMSE status codes: the only place the DIMSE door turns archive results into numbers.

The archive services answer with protocol-neutral `StoreOutcome`s (app/core/ingest/outcomes.py); the HTTP door maps
them to PS3.18 responses in app/api/errors.py, and this module maps them to the Status (0000,0900) of a DIMSE
response. Codes are named constants, taken from pynetdicom where it names them and from the standard's
tables otherwise, each with the section that defines it.
"""

from __future__ import annotations

from typing import Final

from pydicom.dataset import Dataset
from pynetdicom.status import Status

from app.core.ingest.outcomes import FailureReason, StoreOutcome, WarningReason

# PS3.7 C.1.1 (Success) and C.4.2 (Pending), via pynetdicom's named constants.
SUCCESS: Final = int(Status.SUCCESS)  # 0x0000
PENDING: Final = int(Status.PENDING)  # 0xFF00
CANCEL: Final = int(Status.CANCEL)  # 0xFE00

# PS3.4 Table B.2-1, C-STORE response status values (Storage Service Class).
OUT_OF_RESOURCES: Final = 0xA700  # Refused: Out of Resources
DATA_SET_DOES_NOT_MATCH_SOP_CLASS: Final = 0xA900  # Error: Data Set does not match SOP Class
CANNOT_UNDERSTAND: Final = 0xC000  # Error: Cannot understand
WARNING_COERCION_OF_DATA_ELEMENTS: Final = 0xB000  # Warning: Coercion of Data Elements
WARNING_ELEMENTS_DISCARDED: Final = 0xB006  # Warning: Elements Discarded
WARNING_DATA_SET_DOES_NOT_MATCH_SOP_CLASS: Final = 0xB007  # Warning: Data Set does not match SOP Class

# PS3.7 9.1.1.1.9 (C-STORE Status) admits, besides the service-class codes above, these general ones (PS3.7 C).
SOP_CLASS_NOT_SUPPORTED: Final = 0x0122  # Refused: SOP Class not supported
NOT_AUTHORIZED: Final = 0x0124  # Refused: Not authorized
# Duplicate SOP Instance (PS3.7 C.5.x, an N-service code) is what archives (dcm4chee, DCMTK's names) answer for a
# C-STORE refused as a duplicate; a C-STORE has no own code for it, and SCUs print it meaningfully.
DUPLICATE_SOP_INSTANCE: Final = 0x0111
# A failure inside the archive (e.g. the metadata write failed). Processing failure 0x0110 is not a C-STORE
# status, so it is sent in the implementation-specific Cxxx "Error: Cannot understand" range of PS3.4 Table B.2-1,
# with the same low bits, and the reason in Error Comment.
PROCESSING_FAILURE: Final = 0xC110

# PS3.4 Tables C.4-1 (C-FIND), C.4-2 (C-MOVE) and C.4-3 (C-GET), Query/Retrieve (dimse_bridge/qr.py).
PENDING_OPTIONAL_KEYS_NOT_SUPPORTED: Final = 0xFF01  # Pending: optional keys not supported for matching
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS: Final = 0xA900  # Failed: Identifier does not match SOP Class
UNABLE_TO_PROCESS: Final = 0xC000  # Failed: Unable to process (0xC000-0xCFFF)
OUT_OF_RESOURCES_MATCHES: Final = 0xA701  # Refused: Out of resources - unable to calculate number of matches
OUT_OF_RESOURCES_SUBOPERATIONS: Final = 0xA702  # Refused: Out of resources - unable to perform sub-operations

# Domain failure reason -> C-STORE status. FailureReason values are DICOM's own codes, but the table is explicit
# so a new reason added to the core cannot leak onto the wire unmapped.
_STORE_FAILURE: Final[dict[FailureReason, int]] = {
    FailureReason.PROCESSING_FAILURE: PROCESSING_FAILURE,
    FailureReason.DUPLICATE_SOP_INSTANCE: DUPLICATE_SOP_INSTANCE,
    FailureReason.NO_SUCH_SOP_CLASS: SOP_CLASS_NOT_SUPPORTED,
    FailureReason.SOP_CLASS_NOT_SUPPORTED: SOP_CLASS_NOT_SUPPORTED,
    FailureReason.NOT_AUTHORIZED: NOT_AUTHORIZED,
    FailureReason.OUT_OF_RESOURCES: OUT_OF_RESOURCES,
    FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS: DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    FailureReason.CANNOT_UNDERSTAND: CANNOT_UNDERSTAND,
}

_STORE_WARNING: Final[dict[WarningReason, int]] = {
    WarningReason.COERCION_OF_DATA_ELEMENTS: WARNING_COERCION_OF_DATA_ELEMENTS,
    WarningReason.ELEMENTS_DISCARDED: WARNING_ELEMENTS_DISCARDED,
    WarningReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS: WARNING_DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
}

# Error Comment (0000,0902) is LO: at most 64 characters (PS3.5 6.2, PS3.7 Annex C).
_ERROR_COMMENT_MAX: Final = 64


def store_status_code(outcome: StoreOutcome) -> int:
    """The C-STORE status for an ingest outcome (PS3.4 B.2.3).

    Stored, replaced (duplicate policy `replace`) and kept (policy `keep`) are all success: the SCU's instance is
    held. A warning is reported only when the archive changed or judged the data set.
    """
    if outcome.ok:
        for warning in outcome.warnings:
            return _STORE_WARNING.get(warning, WARNING_COERCION_OF_DATA_ELEMENTS)
        return SUCCESS
    if outcome.failure is None:
        return PROCESSING_FAILURE
    return _STORE_FAILURE.get(outcome.failure, PROCESSING_FAILURE)


def status_dataset(code: int, comment: str = "") -> Dataset:
    """A response status with an optional Error Comment (0000,0902), which DCMTK tools print for the operator.

    The comment is sent only with failures and warnings: PS3.7 C.1 says a success carries none.
    """
    ds = Dataset()
    ds.Status = code
    if comment and code != SUCCESS:
        ds.ErrorComment = _printable(comment)[:_ERROR_COMMENT_MAX]
    return ds


def store_response(outcome: StoreOutcome) -> Dataset | int:
    """The C-STORE-RSP status: a bare code for a plain success (nothing to comment), else with Error Comment."""
    code = store_status_code(outcome)
    if code == SUCCESS:
        return SUCCESS
    return status_dataset(code, outcome.reason)


def _printable(text: str) -> str:
    # LO: no backslash, no control characters, default repertoire (PS3.5 6.2, 6.1.2.3).
    cleaned = "".join(ch if " " <= ch <= "~" and ch != "\\" else " " for ch in text)
    return " ".join(cleaned.split())
