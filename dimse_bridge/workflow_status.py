"""Workflow outcomes -> DIMSE statuses: UPS (PS3.4 CC.2), MPPS (PS3.4 F.7.2) and the Modality Worklist (K.4.1.1.4).

The workflow services (app/core/workflow/) refuse with a `FailureReason` and remark with a `WorkflowWarning`,
protocol-neutral; the HTTP door maps them in app/api/workflow_errors.py and this module maps them for the
DIMSE door, the one place where these numbers are written. The same reason is not the same code in every
service: a missing instance is C307 for a UPS but 0112 for an MPPS, and "may no longer be updated" is C300
for a UPS but 0110 Processing failure with Error ID A710 for an MPPS (PS3.4 F.7.2.2.2 / Table F.7.2-3).

Codes are named after pynetdicom's tables (pynetdicom.status UNIFIED_PROCEDURE_STEP_SERVICE_CLASS_STATUS,
PROCEDURE_STEP_STATUS, MODALITY_WORKLIST_SERVICE_CLASS_STATUS, GENERAL_STATUS) and checked against them by the
tests; every table here is explicit, so a reason added to the core later cannot reach the wire unmapped (it
becomes a processing failure, logged by the handler).
"""

from __future__ import annotations

from typing import Final

from pydicom.dataset import Dataset

from app.core.workflow.outcomes import FailureReason, WorkflowFailure, WorkflowWarning
from dimse_bridge.bridge import BridgeError
from dimse_bridge.status import SUCCESS, status_dataset

ERROR_COMMENT_MAX: Final = 64  # Error Comment (0000,0902) is LO

# PS3.7 Annex C, general statuses of the DIMSE-N services (pynetdicom GENERAL_STATUS).
INVALID_ATTRIBUTE_VALUE: Final = 0x0106  # Failure: Invalid attribute value (C.4.2)
PROCESSING_FAILURE: Final = 0x0110  # Failure: Processing failure (C.4.1)
DUPLICATE_SOP_INSTANCE: Final = 0x0111  # Failure: Duplicate SOP Instance (C.4.3)
NO_SUCH_SOP_INSTANCE: Final = 0x0112  # Failure: No such SOP Instance (C.4.4)
MISSING_ATTRIBUTE: Final = 0x0120  # Failure: Missing attribute (C.4.13)
UNRECOGNIZED_OPERATION: Final = 0x0211  # Failure: Unrecognized operation (C.4.21)
NO_SUCH_ACTION: Final = 0x0123  # Failure: No such action (C.4.16)

# PS3.4 Table CC.2.1-3, CC.2.2-2, CC.2.3-2, CC.2.5-2, CC.2.6-2: the UPS statuses.
UPS_MAY_NO_LONGER_BE_UPDATED: Final = 0xC300  # Failed: The UPS may no longer be updated
UPS_WRONG_TRANSACTION_UID: Final = 0xC301  # Failed: The correct Transaction UID was not provided
UPS_ALREADY_IN_PROGRESS: Final = 0xC302  # Failed: The UPS is already IN PROGRESS
UPS_ONLY_SCHEDULED_VIA_CREATE: Final = 0xC303  # Failed: may only become SCHEDULED via N-CREATE
UPS_FINAL_STATE_REQUIREMENTS: Final = 0xC304  # Failed: final state requirements not met
UPS_NO_SUCH_WORKITEM: Final = 0xC307  # Failed: SOP Instance UID does not exist or is not a UPS managed here
UPS_RECEIVING_AE_UNKNOWN: Final = 0xC308  # Failed: Receiving AE-TITLE is Unknown to this SCP
UPS_NOT_SCHEDULED_ON_CREATE: Final = 0xC309  # Failed: The provided value of UPS State was not SCHEDULED
UPS_NOT_IN_PROGRESS: Final = 0xC310  # Failed: The UPS is not yet in the IN PROGRESS state
UPS_ALREADY_COMPLETED: Final = 0xC311  # Failed: The UPS is already COMPLETED
UPS_PERFORMER_UNREACHABLE: Final = 0xC312  # Failed: The performer cannot be contacted
UPS_ACTION_NOT_APPROPRIATE: Final = 0xC314  # Failed: Specified action not appropriate for specified instance
UPS_CREATED_WITH_MODIFICATIONS: Final = 0xB300  # Warning: The UPS was created with modifications
UPS_ALREADY_CANCELED: Final = 0xB304  # Warning: The UPS is already in the requested state of CANCELED
UPS_ALREADY_COMPLETED_WARNING: Final = 0xB306  # Warning: already in the requested state of COMPLETED

# C-FIND (UPS Pull/Watch/Query, PS3.4 CC.2.8.4; Modality Worklist, PS3.4 Table K.4-2).
OUT_OF_RESOURCES: Final = 0xA700  # Refused: Out of resources
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS: Final = 0xA900  # Failed: Identifier does not match SOP Class
UNABLE_TO_PROCESS: Final = 0xC000  # Failed: Unable to process (0xC000-0xCFFF)
PENDING: Final = 0xFF00  # Pending: matches are continuing, optional keys supported
PENDING_OPTIONAL_KEYS_NOT_SUPPORTED: Final = 0xFF01  # Pending: some optional keys were not supported

# PS3.4 Table F.7.2-3 (N-SET of a final MPPS): Processing failure with this Error ID (0000,0903).
MPPS_MAY_NO_LONGER_BE_UPDATED_ERROR_ID: Final = (
    0xA710  # Performed Procedure Step Object may no longer be updated
)

_UPS_FAILURE: Final[dict[FailureReason, int]] = {
    FailureReason.NO_SUCH_WORKITEM: UPS_NO_SUCH_WORKITEM,
    FailureReason.NO_SUCH_INSTANCE: UPS_NO_SUCH_WORKITEM,
    FailureReason.DUPLICATE: DUPLICATE_SOP_INSTANCE,
    FailureReason.MISSING_ATTRIBUTE: MISSING_ATTRIBUTE,
    FailureReason.INVALID_ATTRIBUTE_VALUE: INVALID_ATTRIBUTE_VALUE,
    FailureReason.NOT_SCHEDULED_ON_CREATE: UPS_NOT_SCHEDULED_ON_CREATE,
    FailureReason.MAY_NO_LONGER_BE_UPDATED: UPS_MAY_NO_LONGER_BE_UPDATED,
    FailureReason.WRONG_TRANSACTION_UID: UPS_WRONG_TRANSACTION_UID,
    FailureReason.ALREADY_IN_PROGRESS: UPS_ALREADY_IN_PROGRESS,
    FailureReason.MAY_ONLY_BECOME_SCHEDULED_VIA_CREATE: UPS_ONLY_SCHEDULED_VIA_CREATE,
    FailureReason.FINAL_STATE_REQUIREMENTS: UPS_FINAL_STATE_REQUIREMENTS,
    FailureReason.NOT_IN_PROGRESS: UPS_NOT_IN_PROGRESS,
    FailureReason.ALREADY_COMPLETED: UPS_ALREADY_COMPLETED,
    FailureReason.PERFORMER_UNREACHABLE: UPS_PERFORMER_UNREACHABLE,
    FailureReason.UNKNOWN_RECEIVING_AE: UPS_RECEIVING_AE_UNKNOWN,
    FailureReason.UNAVAILABLE: PROCESSING_FAILURE,
}

_UPS_WARNING: Final[dict[WorkflowWarning, int]] = {
    WorkflowWarning.ALREADY_CANCELED: UPS_ALREADY_CANCELED,
    WorkflowWarning.ALREADY_COMPLETED: UPS_ALREADY_COMPLETED_WARNING,
    WorkflowWarning.CREATED_WITH_MODIFICATIONS: UPS_CREATED_WITH_MODIFICATIONS,
}

# PS3.4 Table F.7.2-2 (N-CREATE) and F.7.2-3 (N-SET): (Status, Error ID or None).
_MPPS_FAILURE: Final[dict[FailureReason, tuple[int, int | None]]] = {
    FailureReason.DUPLICATE: (DUPLICATE_SOP_INSTANCE, None),
    FailureReason.NO_SUCH_INSTANCE: (NO_SUCH_SOP_INSTANCE, None),
    FailureReason.NO_SUCH_WORKITEM: (NO_SUCH_SOP_INSTANCE, None),
    FailureReason.INVALID_ATTRIBUTE_VALUE: (INVALID_ATTRIBUTE_VALUE, None),
    FailureReason.MISSING_ATTRIBUTE: (MISSING_ATTRIBUTE, None),
    FailureReason.MAY_NO_LONGER_BE_UPDATED: (PROCESSING_FAILURE, MPPS_MAY_NO_LONGER_BE_UPDATED_ERROR_ID),
    FailureReason.UNAVAILABLE: (PROCESSING_FAILURE, None),
}


def ups_failure(reason: FailureReason) -> int:
    """The UPS status of a refusal (PS3.4 CC.2); a reason not in the table is a processing failure."""
    return _UPS_FAILURE.get(reason, PROCESSING_FAILURE)


def ups_warning(warning: WorkflowWarning | None) -> int:
    """The UPS status of a success, with its remark when there is one (PS3.4 CC.2)."""
    return SUCCESS if warning is None else _UPS_WARNING.get(warning, SUCCESS)


def mpps_failure(reason: FailureReason) -> tuple[int, int | None]:
    """(Status, Error ID) of an MPPS refusal (PS3.4 F.7.2)."""
    return _MPPS_FAILURE.get(reason, (PROCESSING_FAILURE, None))


def response(code: int, comment: str = "", error_id: int | None = None) -> Dataset:
    """A DIMSE-N response status with Error Comment (0000,0902) and, when given, Error ID (0000,0903)."""
    ds = status_dataset(code, comment)
    if error_id is not None:
        ds.ErrorID = error_id
    return ds


def ups_refusal(exc: Exception) -> Dataset:
    """The response to a UPS DIMSE-N request that raised `exc`: its reason's status, or a processing failure
    (the archive out of reach, the store failing), with the message as Error Comment."""
    if isinstance(exc, WorkflowFailure):
        return response(ups_failure(exc.reason), comment(exc))
    return response(PROCESSING_FAILURE, _unexpected(exc))


def mpps_refusal(exc: Exception) -> Dataset:
    """The response to an MPPS request that raised `exc` (PS3.4 F.7.2), Error ID included where one is defined."""
    if isinstance(exc, WorkflowFailure):
        code, error_id = mpps_failure(exc.reason)
        return response(code, comment(exc), error_id)
    return response(PROCESSING_FAILURE, _unexpected(exc))


def comment(failure: WorkflowFailure) -> str:
    """The Error Comment of a refusal: its message when that fits the 64 characters of LO (PS3.5 6.2), else the
    reason's own short wording (the handler's log line has the whole message, UIDs and all)."""
    message = str(failure)
    return message if len(message) <= ERROR_COMMENT_MAX else failure.reason.value


def _unexpected(exc: Exception) -> str:
    if isinstance(exc, BridgeError):
        return str(exc)
    return f"the archive failed: {type(exc).__name__}: {exc}"
