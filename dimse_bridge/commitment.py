"""Storage Commitment Push Model SCP (PS3.4 Annex J): "do you hold these instances safely?"

A modality (or any SCU) sends an N-ACTION-RQ (Action Type ID 1, Request Storage Commitment) to the well-known
SOP instance 1.2.840.10008.1.20.1.1 with a Transaction UID and the SOP class / instance UIDs it wants us to
commit to. We acknowledge at once (the N-ACTION-RSP only says the request was received, PS3.4 J.3.2.1.1), then
check each instance and send the result as an N-EVENT-REPORT-RQ (PS3.4 J.3.2.1.2 / J.3.3.1):

* Event Type ID 1, all committed: Referenced SOP Sequence lists every instance;
* Event Type ID 2, some not: Failed SOP Sequence lists those, each with a Failure Reason (0008,1197):
  0x0112 No such object instance (not held, or its file is gone), 0x0119 Class / Instance conflict (held
  under another SOP class), 0x0110 Processing failure (the archive could not be asked); Referenced SOP
  Sequence lists the committed ones, if any.

An instance is committed when its metadata row exists (`RetrieveService.held`, via the bridge) and its file
is in storage: the archive keeps both until an explicit delete.

Where the report goes (PS3.4 J.3.3): on a NEW association from our AE to the requester, looked up by its
Calling AE Title in the AE registry (app/core/aes.py), proposing the SCP role for the SOP class (SCP/SCU Role
Selection, since we are the association requester but remain the SCP). When the requester is not registered,
the report is sent on the requesting association if it is still open (after our N-ACTION-RSP has gone out);
otherwise it cannot be delivered, which is logged. The report is built and sent from a thread of its own, so
the N-ACTION-RSP is never held up by the check or by the other association.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pynetdicom import evt
from pynetdicom.dimse_primitives import N_ACTION
from pynetdicom.events import Event

from app.core.aes import RemoteAE
from app.core.retrieve.service import RetrieveService
from dimse_bridge import scu
from dimse_bridge.access import peer
from dimse_bridge.bridge import BridgeError
from dimse_bridge.context import DimseContext

log = logging.getLogger(__name__)

STORAGE_COMMITMENT_PUSH: Final = "1.2.840.10008.1.20.1"  # PS3.4 J.3.1 / PS3.6 Annex A
STORAGE_COMMITMENT_INSTANCE: Final = "1.2.840.10008.1.20.1.1"  # the well-known SOP instance (PS3.4 J.3.1)
REQUEST_STORAGE_COMMITMENT: Final = 1  # Action Type ID, PS3.4 Table J.3-1
EVENT_ALL_SUCCESS: Final = 1  # Event Type ID, PS3.4 Table J.3-2: Storage Commitment Request Successful
EVENT_SOME_FAILED: Final = 2  # Storage Commitment Request Complete - Failures Exist

# N-ACTION response statuses (PS3.7 10.1.4.1.10 and Annex C).
SUCCESS: Final = 0x0000
INVALID_ARGUMENT: Final = 0x0115
MISSING_ATTRIBUTE: Final = 0x0120
INVALID_SOP_INSTANCE: Final = 0x0117
NO_SUCH_ACTION: Final = 0x0123

# Failure Reason (0008,1197) values, PS3.4 J.3.3.1.1.
FAILURE_PROCESSING: Final = 0x0110
FAILURE_NO_SUCH_OBJECT_INSTANCE: Final = 0x0112
FAILURE_CLASS_INSTANCE_CONFLICT: Final = 0x0119

# Instances checked per hop to the event loop (each hop bounded by the DIMSE timeout).
CHECK_BATCH: Final = 500
# A report to a registered requester that cannot be reached is tried this many times, this far apart.
REPORT_ATTEMPTS: Final = 3
REPORT_RETRY_SECONDS: Final = 2.0
# How long a report on the requesting association waits for our N-ACTION-RSP to be sent first.
RESPONSE_SENT_WAIT: Final = 10.0


@dataclass(frozen=True)
class Reference:
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class CommitmentRequest:
    transaction_uid: str
    references: tuple[Reference, ...]


@dataclass
class CommitmentResult:
    transaction_uid: str
    committed: list[Reference] = field(default_factory=list)
    failed: list[tuple[Reference, int]] = field(default_factory=list)  # with the Failure Reason

    @property
    def event_type(self) -> int:
        return EVENT_SOME_FAILED if self.failed else EVENT_ALL_SUCCESS

    def event_information(self, retrieve_ae_title: str) -> Dataset:
        """The N-EVENT-REPORT Event Information (PS3.4 Table J.3-2)."""
        ds = Dataset()
        ds.TransactionUID = self.transaction_uid
        if self.committed:
            ds.RetrieveAETitle = retrieve_ae_title  # where the committed instances can be retrieved from
            ds.ReferencedSOPSequence = DicomSequence([_item(ref) for ref in self.committed])
        if self.failed:
            items = []
            for ref, reason in self.failed:
                item = _item(ref)
                item.FailureReason = reason
                items.append(item)
            ds.FailedSOPSequence = DicomSequence(items)
        return ds


def _item(ref: Reference) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    return item


class InvalidRequest(ValueError):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def parse_request(information: Dataset | None) -> CommitmentRequest:
    """The Action Information of a Request Storage Commitment (PS3.4 Table J.3-1), or InvalidRequest."""
    if information is None:
        raise InvalidRequest(MISSING_ATTRIBUTE, "no Action Information")
    transaction_uid = str(information.get("TransactionUID", "") or "").strip()
    if not transaction_uid:
        raise InvalidRequest(MISSING_ATTRIBUTE, "no Transaction UID (0008,1195)")
    sequence = information.get("ReferencedSOPSequence")
    if not sequence:
        raise InvalidRequest(MISSING_ATTRIBUTE, "no Referenced SOP Sequence (0008,1199)")
    references = []
    for item in sequence:
        sop_class = str(item.get("ReferencedSOPClassUID", "") or "").strip()
        sop_instance = str(item.get("ReferencedSOPInstanceUID", "") or "").strip()
        if not sop_class or not sop_instance:
            raise InvalidRequest(
                MISSING_ATTRIBUTE, "a Referenced SOP Sequence item lacks its SOP Class or SOP Instance UID"
            )
        references.append(Reference(sop_class, sop_instance))
    return CommitmentRequest(transaction_uid, tuple(references))


async def check(
    retrieve: RetrieveService, references: Sequence[Reference]
) -> list[tuple[Reference, int | None]]:
    """Each reference with None when we hold it (metadata and file), else its Failure Reason."""
    held = await retrieve.held([ref.sop_instance_uid for ref in references])
    results: list[tuple[Reference, int | None]] = []
    for ref in references:
        stored = held.get(ref.sop_instance_uid)
        if stored is None:
            results.append((ref, FAILURE_NO_SUCH_OBJECT_INSTANCE))
        elif stored.sop_class_uid != ref.sop_class_uid:
            results.append((ref, FAILURE_CLASS_INSTANCE_CONFLICT))
        else:
            results.append((ref, None))
    return results


def commit(dimse: DimseContext, request: CommitmentRequest) -> CommitmentResult:
    """Check every referenced instance through the bridge (a batch per hop); a batch the archive cannot answer
    is reported as processing failures."""
    result = CommitmentResult(request.transaction_uid)
    archive = dimse.archive
    for start in range(0, len(request.references), CHECK_BATCH):
        batch = request.references[start : start + CHECK_BATCH]
        try:
            checked = dimse.bridge.call(check(archive.retrieve, batch))
        except Exception as exc:  # BridgeError, RepositoryUnavailable, storage errors
            log.warning("storage commitment %s: cannot check instances: %s", request.transaction_uid, exc)
            checked = [(ref, FAILURE_PROCESSING) for ref in batch]
        for ref, reason in checked:
            if reason is None:
                result.committed.append(ref)
            else:
                result.failed.append((ref, reason))
    return result


# -- the handler --------------------------------------------------------------------------------------------


def handle_n_action(event: Event, dimse: DimseContext) -> tuple[int, Dataset | None]:
    """N-ACTION (Storage Commitment Push Model SCP, PS3.4 J.3.2): acknowledge, then report from a thread."""
    request = event.request
    assert isinstance(request, N_ACTION)  # pynetdicom calls this handler for N-ACTION requests only
    origin = peer(event.assoc)
    if str(request.RequestedSOPInstanceUID) != STORAGE_COMMITMENT_INSTANCE:
        log.info("storage commitment from %s: not the well-known instance", origin)
        return INVALID_SOP_INSTANCE, None
    if request.ActionTypeID != REQUEST_STORAGE_COMMITMENT:
        log.info("storage commitment from %s: no such action type %s", origin, request.ActionTypeID)
        return NO_SUCH_ACTION, None
    try:
        commitment = parse_request(event.action_information)
    except InvalidRequest as exc:
        log.info("storage commitment from %s refused: %s", origin, exc)
        return exc.status, None
    except Exception as exc:  # an Action Information that cannot be decoded
        log.info("storage commitment from %s refused: %s", origin, exc)
        return INVALID_ARGUMENT, None
    requester = str(event.assoc.requestor.ae_title or "").strip()
    response_sent = _watch_response(event.assoc, int(request.MessageID or 0))
    log.info(
        "storage commitment %s from %s: %d instances",
        commitment.transaction_uid,
        origin,
        len(commitment.references),
    )
    threading.Thread(
        target=_report,
        args=(dimse, event.assoc, requester, commitment, response_sent),
        name=f"commitment-{commitment.transaction_uid[-12:]}",
        daemon=True,
    ).start()
    return SUCCESS, None


def _watch_response(assoc: Any, message_id: int) -> threading.Event:
    """An Event set when our N-ACTION-RSP to `message_id` is handed to the network layer."""
    sent = threading.Event()

    def on_sent(event: Event) -> None:
        message = event.message
        if (
            type(message).__name__ == "N_ACTION_RSP"
            and getattr(message.command_set, "MessageIDBeingRespondedTo", None) == message_id
        ):
            sent.set()
            event.assoc.unbind(evt.EVT_DIMSE_SENT, on_sent)

    assoc.bind(evt.EVT_DIMSE_SENT, on_sent)
    return sent


def _report(
    dimse: DimseContext,
    assoc: Any,
    requester: str,
    request: CommitmentRequest,
    response_sent: threading.Event,
) -> None:
    try:
        result = commit(dimse, request)
        information = result.event_information(dimse.ae_title)
        try:
            remote = dimse.bridge.call(dimse.archive.aes.get(requester)) if requester else None
        except BridgeError as exc:
            log.warning("storage commitment %s: AE registry unavailable: %s", request.transaction_uid, exc)
            remote = None
        if remote is not None:
            _report_on_new_association(dimse, remote, result, information)
        elif assoc.is_established:
            _report_on_same_association(assoc, result, information, response_sent)
        else:
            log.warning(
                "storage commitment %s: %r is not in the AE registry and its association is closed; the result "
                "(%d committed, %d failed) cannot be reported",
                request.transaction_uid,
                requester,
                len(result.committed),
                len(result.failed),
            )
    except Exception:
        log.exception("storage commitment %s: report failed", request.transaction_uid)


def _report_on_new_association(
    dimse: DimseContext, remote: RemoteAE, result: CommitmentResult, information: Dataset
) -> None:
    options = scu.ScuOptions.from_settings(dimse.settings)
    for attempt in range(1, REPORT_ATTEMPTS + 1):
        try:
            status = scu.send_event_report(
                remote,
                options,
                sop_class_uid=STORAGE_COMMITMENT_PUSH,
                sop_instance_uid=STORAGE_COMMITMENT_INSTANCE,
                event_type=result.event_type,
                information=information,
            )
        except scu.ScuError as exc:
            log.warning(
                "storage commitment %s: report to %s, attempt %d of %d: %s",
                result.transaction_uid, remote.ae_title, attempt, REPORT_ATTEMPTS, exc,
            )  # fmt: skip
            if attempt < REPORT_ATTEMPTS:
                time.sleep(REPORT_RETRY_SECONDS * attempt)
            continue
        _log_reported(result, remote.ae_title, status)
        return


def _report_on_same_association(
    assoc: Any, result: CommitmentResult, information: Dataset, response_sent: threading.Event
) -> None:
    # The report must follow our N-ACTION-RSP on the wire: wait until that was handed to the network layer,
    # then a moment for the association thread to finish sending it and return to its loop.
    if not response_sent.wait(RESPONSE_SENT_WAIT):
        log.warning("storage commitment %s: N-ACTION-RSP not sent; no report", result.transaction_uid)
        return
    time.sleep(0.05)
    if not assoc.is_established:
        log.warning("storage commitment %s: the association closed before the report", result.transaction_uid)
        return
    status, _reply = assoc.send_n_event_report(
        information, result.event_type, STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE
    )
    _log_reported(result, "the requesting association", int(status.Status) if "Status" in status else None)


def _log_reported(result: CommitmentResult, where: str, status: int | None) -> None:
    if status == SUCCESS:
        log.info(
            "storage commitment %s reported to %s: %d committed, %d failed",
            result.transaction_uid, where, len(result.committed), len(result.failed),
        )  # fmt: skip
    else:
        log.warning(
            "storage commitment %s: %s answered the report with %s",
            result.transaction_uid, where, "no response" if status is None else f"0x{status:04X}",
        )  # fmt: skip
