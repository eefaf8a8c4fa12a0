"""Workflow outcomes: why a UPS or MPPS request was refused, or what it was warned of, in the archive's terms.

The services raise `WorkflowFailure` with a reason and return a `WorkflowWarning` when the request succeeded
with a remark. Each door turns them into its own codes (app/api/workflow_errors.py for HTTP, PS3.18 11;
dimse_bridge/workflow_status.py for DIMSE, PS3.4 CC.2 and F.7.2), as ingest outcomes are.
"""

from __future__ import annotations

from enum import StrEnum

from app.core.dicom.uids import InvalidUIDError, check_uid


class FailureReason(StrEnum):
    NO_SUCH_WORKITEM = "no such workitem"  # C307 / 404
    NO_SUCH_INSTANCE = "no such instance"  # 0112 / 404 (MPPS)
    DUPLICATE = "duplicate instance"  # 0111 / 409
    MISSING_ATTRIBUTE = "missing attribute"  # 0120 / 400
    INVALID_ATTRIBUTE_VALUE = "invalid attribute value"  # 0106 / 400
    NOT_SCHEDULED_ON_CREATE = "state not SCHEDULED on create"  # C309 / 400
    MAY_NO_LONGER_BE_UPDATED = "may no longer be updated"  # C300 / 409 (MPPS: 0110 with Error ID A710)
    WRONG_TRANSACTION_UID = "wrong or missing Transaction UID"  # C301 / 409
    ALREADY_IN_PROGRESS = "already IN PROGRESS"  # C302 / 409
    MAY_ONLY_BECOME_SCHEDULED_VIA_CREATE = "may only become SCHEDULED on create"  # C303 / 400
    FINAL_STATE_REQUIREMENTS = "final state requirements not met"  # C304 / 409
    NOT_IN_PROGRESS = "not yet IN PROGRESS"  # C310 / 409
    ALREADY_COMPLETED = "already COMPLETED"  # C311 / 409
    PERFORMER_UNREACHABLE = "performer cannot be contacted"  # C312 / 409
    UNKNOWN_RECEIVING_AE = "receiving AE unknown"  # C308 / 404
    UNAVAILABLE = "store unavailable"  # A700/0110 / 503


class WorkflowFailure(Exception):
    """A refused workflow request; `str(exc)` is the reason for the log and the response's comment."""

    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class WorkflowWarning(StrEnum):
    ALREADY_CANCELED = "already CANCELED"  # B304
    ALREADY_COMPLETED = "already COMPLETED"  # B306
    CREATED_WITH_MODIFICATIONS = "created with modifications"  # B300


def check_instance_uid(uid: str) -> str:
    """The UID, or INVALID_ATTRIBUTE_VALUE saying why it is not one (PS3.5 9.1)."""
    try:
        return check_uid(uid, "SOP Instance UID")
    except InvalidUIDError as exc:
        raise WorkflowFailure(FailureReason.INVALID_ATTRIBUTE_VALUE, str(exc)) from None
