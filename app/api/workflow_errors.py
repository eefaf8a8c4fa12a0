"""Workflow outcomes at the HTTP door: the one table from the core's refusals (app/core/workflow/outcomes.py) to
HTTP statuses and texts, for UPS-RS (PS3.18 11) and the operators' MPPS and worklist listings.

The core says why a request was refused (`WorkflowFailure.reason`) or what it was warned of (`WorkflowWarning`);
this module says how HTTP puts it. A refusal becomes a `DicomWebError`, so the answer is a DICOM JSON body with
Error Comment, a `Warning: 299` header and one log line, as every refusal of the archive (app/api/errors.py).
Where PS3.18 words a status's Warning text (PS3.18 11.4.3.2, 11.6.3.2, 11.7.3.2, 11.8.3.2, 11.10.3.2), that
text leads the reason and the core's own explanation follows it in brackets.

Most reasons keep one status in every transaction. PS3.18 is more specific for two transactions, and those
refinements are the `_BY_TRANSACTION` rows below: Update Workitem answers a workitem in a final state with 400
(PS3.18 11.6.2, "shall be a 400 (Bad Request)") and both Update and Change State put a missing or wrong
Transaction UID under 400 (Tables 11.6.3-1 and 11.7.3-1), where other transactions answer 409.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Final

from app.api.errors import RETRY_AFTER_SECONDS, DicomWebError
from app.core.workflow.outcomes import FailureReason, WorkflowFailure, WorkflowWarning


class Transaction(StrEnum):
    """The UPS-RS transactions (PS3.18 Table 11.3-1), and the MPPS/worklist listings."""

    CREATE = "Create Workitem"  # PS3.18 11.4
    RETRIEVE = "Retrieve Workitem"  # 11.5
    UPDATE = "Update Workitem"  # 11.6
    CHANGE_STATE = "Change Workitem State"  # 11.7
    REQUEST_CANCELLATION = "Request Cancellation"  # 11.8
    SEARCH = "Search for Workitems"  # 11.9
    SUBSCRIBE = "Subscribe"  # 11.10
    UNSUBSCRIBE = "Unsubscribe"  # 11.11
    SUSPEND = "Suspend Global Subscription"  # 11.12
    LISTING = "workflow listing"  # GET /mpps, /worklist (an extension)


# The status of each refusal (PS3.18 11.4.3.1 ... 11.12.3.1; the DIMSE code each stands for is in outcomes.py).
STATUS: Final[dict[FailureReason, int]] = {
    FailureReason.NO_SUCH_WORKITEM: 404,
    FailureReason.NO_SUCH_INSTANCE: 404,
    FailureReason.UNKNOWN_RECEIVING_AE: 404,
    FailureReason.DUPLICATE: 409,
    FailureReason.MAY_NO_LONGER_BE_UPDATED: 409,
    FailureReason.WRONG_TRANSACTION_UID: 409,
    FailureReason.ALREADY_IN_PROGRESS: 409,
    FailureReason.FINAL_STATE_REQUIREMENTS: 409,
    FailureReason.NOT_IN_PROGRESS: 409,
    FailureReason.ALREADY_COMPLETED: 409,
    FailureReason.PERFORMER_UNREACHABLE: 409,
    FailureReason.MISSING_ATTRIBUTE: 400,
    FailureReason.INVALID_ATTRIBUTE_VALUE: 400,
    FailureReason.NOT_SCHEDULED_ON_CREATE: 400,
    FailureReason.MAY_ONLY_BECOME_SCHEDULED_VIA_CREATE: 400,
    FailureReason.UNAVAILABLE: 503,
}
# Where a transaction's own status table says otherwise (see the module docstring).
_BY_TRANSACTION: Final[dict[tuple[Transaction, FailureReason], int]] = {
    (Transaction.UPDATE, FailureReason.MAY_NO_LONGER_BE_UPDATED): 400,  # PS3.18 11.6.2
    (Transaction.UPDATE, FailureReason.WRONG_TRANSACTION_UID): 400,  # PS3.18 Table 11.6.3-1
    (Transaction.CHANGE_STATE, FailureReason.WRONG_TRANSACTION_UID): 400,  # PS3.18 Table 11.7.3-1
}

# The Warning texts PS3.18 gives for refusals.
_INCONSISTENT_STATE: Final = "The submitted request is inconsistent with the state of the UPS Instance."
_STATE_CONFLICTS: Final = frozenset(
    {
        FailureReason.MAY_NO_LONGER_BE_UPDATED,
        FailureReason.ALREADY_IN_PROGRESS,
        FailureReason.FINAL_STATE_REQUIREMENTS,
        FailureReason.NOT_IN_PROGRESS,
        FailureReason.ALREADY_COMPLETED,
        FailureReason.MAY_ONLY_BECOME_SCHEDULED_VIA_CREATE,
    }
)
# The Warning texts PS3.18 gives for successes with a remark.
WARNING_TEXT: Final[dict[WorkflowWarning, str]] = {
    WorkflowWarning.ALREADY_CANCELED: "The UPS is already in the requested state of CANCELED.",  # 11.7.3.2, 11.8.3.2
    WorkflowWarning.ALREADY_COMPLETED: "The UPS is already in the requested state of COMPLETED.",  # 11.7.3.2
    WorkflowWarning.CREATED_WITH_MODIFICATIONS: "The Workitem was created with modifications.",  # 11.4.3.2
}


def status_of(transaction: Transaction, reason: FailureReason) -> int:
    return _BY_TRANSACTION.get((transaction, reason), STATUS[reason])


def _standard_text(
    transaction: Transaction, reason: FailureReason, transaction_uid_given: bool
) -> str | None:
    if reason is FailureReason.WRONG_TRANSACTION_UID:
        if transaction is Transaction.UPDATE:
            return "The target URI did not reference a claimed Workitem."  # PS3.18 11.6.3.2
        return f"The Transaction UID is {'incorrect' if transaction_uid_given else 'missing'}."  # 11.7.3.2
    if reason in _STATE_CONFLICTS and transaction in (Transaction.UPDATE, Transaction.CHANGE_STATE):
        return _INCONSISTENT_STATE
    return None


def refusal(
    transaction: Transaction, failure: WorkflowFailure, *, transaction_uid_given: bool = False
) -> DicomWebError:
    """The HTTP answer to a refused workflow request."""
    status = status_of(transaction, failure.reason)
    standard = _standard_text(transaction, failure.reason, transaction_uid_given)
    reason = f"{standard} ({failure})" if standard else f"{transaction}: {failure}"
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if status == 503 else None
    return DicomWebError(status, reason, headers)


@contextmanager
def workflow_errors(transaction: Transaction, *, transaction_uid_given: bool = False) -> Iterator[None]:
    """Turn the core's `WorkflowFailure` raised inside into the transaction's HTTP answer."""
    try:
        yield
    except WorkflowFailure as exc:
        raise refusal(transaction, exc, transaction_uid_given=transaction_uid_given) from exc
