"""The workflow status table (dimse_bridge/workflow_status.py) against the standard's tables as pynetdicom
carries them: every outcome of the core has its own code, and each code means there what we mean by it."""

from __future__ import annotations

import pytest
from pynetdicom.status import (
    GENERAL_STATUS,
    PROCEDURE_STEP_STATUS,
    UNIFIED_PROCEDURE_STEP_SERVICE_CLASS_STATUS,
    code_to_category,
)

from app.core.workflow.outcomes import FailureReason, WorkflowFailure, WorkflowWarning
from dimse_bridge import workflow_status as ws

UPS_TABLE = {**GENERAL_STATUS, **UNIFIED_PROCEDURE_STEP_SERVICE_CLASS_STATUS}
MPPS_TABLE = {**GENERAL_STATUS, **PROCEDURE_STEP_STATUS}


@pytest.mark.parametrize("reason", list(FailureReason))
def test_every_refusal_is_a_ups_failure_code(reason: FailureReason) -> None:
    code = ws.ups_failure(reason)
    assert code in UPS_TABLE
    assert UPS_TABLE[code][0] == "Failure"


@pytest.mark.parametrize("warning", list(WorkflowWarning))
def test_every_remark_is_a_ups_warning_code(warning: WorkflowWarning) -> None:
    code = ws.ups_warning(warning)
    assert UPS_TABLE[code][0] == "Warning"


def test_the_ups_codes_say_what_the_reasons_say() -> None:
    expected = {
        FailureReason.NO_SUCH_WORKITEM: "does not exist",
        FailureReason.NOT_SCHEDULED_ON_CREATE: "was not SCHEDULED",
        FailureReason.MAY_NO_LONGER_BE_UPDATED: "may no longer be updated",
        FailureReason.WRONG_TRANSACTION_UID: "Transaction UID",
        FailureReason.ALREADY_IN_PROGRESS: "already IN PROGRESS",
        FailureReason.MAY_ONLY_BECOME_SCHEDULED_VIA_CREATE: "only become SCHEDULED",
        FailureReason.FINAL_STATE_REQUIREMENTS: "final state requirements",
        FailureReason.NOT_IN_PROGRESS: "not yet in the IN PROGRESS",
        FailureReason.ALREADY_COMPLETED: "already COMPLETED",
        FailureReason.UNKNOWN_RECEIVING_AE: "Receiving AE-TITLE is unknown",
        FailureReason.DUPLICATE: "Duplicat",
        FailureReason.MISSING_ATTRIBUTE: "Missing Attribute",
        FailureReason.INVALID_ATTRIBUTE_VALUE: "Invalid Attribute Value",
    }
    for reason, words in expected.items():
        assert words.lower() in UPS_TABLE[ws.ups_failure(reason)][1].lower(), reason
    assert "CANCELED" in UPS_TABLE[ws.ups_warning(WorkflowWarning.ALREADY_CANCELED)][1]
    assert "COMPLETED" in UPS_TABLE[ws.ups_warning(WorkflowWarning.ALREADY_COMPLETED)][1]


def test_the_mpps_codes_are_those_of_ps3_4_f_7_2() -> None:
    assert ws.mpps_failure(FailureReason.DUPLICATE) == (0x0111, None)
    assert ws.mpps_failure(FailureReason.NO_SUCH_INSTANCE) == (0x0112, None)
    assert ws.mpps_failure(FailureReason.INVALID_ATTRIBUTE_VALUE) == (0x0106, None)
    assert ws.mpps_failure(FailureReason.MISSING_ATTRIBUTE) == (0x0120, None)
    code, error_id = ws.mpps_failure(FailureReason.MAY_NO_LONGER_BE_UPDATED)
    assert (code, error_id) == (0x0110, 0xA710)
    assert MPPS_TABLE[code][0] == "Failure"  # Processing failure; the Error ID says which (Table F.7.2-3)
    for reason in FailureReason:
        assert code_to_category(ws.mpps_failure(reason)[0]) == "Failure"


def test_a_long_reason_is_sent_as_its_short_wording() -> None:
    long = WorkflowFailure(FailureReason.WRONG_TRANSACTION_UID, "workitem 1.2.3.4.5.6.7.8.9.10.11.12.13 " * 3)
    answer = ws.ups_refusal(long)
    assert (answer.Status, answer.ErrorComment) == (0xC301, "wrong or missing Transaction UID")
    short = ws.ups_refusal(WorkflowFailure(FailureReason.MISSING_ATTRIBUTE, "no Procedure Step Label"))
    assert (short.Status, short.ErrorComment) == (0x0120, "no Procedure Step Label")
