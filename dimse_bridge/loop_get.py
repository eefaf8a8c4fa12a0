"""C-GET (PS3.4 C.4.3) served on the event loop, for associations whose data phase the loop serves (data_phase.py).

On pynetdicom's reactors each C-STORE sub-operation of a C-GET crossed threads twice: its response was read by
the DUL thread, queued for the association thread (which first paused its own reactor, polling with sleeps),
and the next file was read in that thread. A viewer or getscu pulling a study waits that long per instance.

Here the loop does what `QueryRetrieveServiceClass._get_scp` does around qr.handle_get, with the same archive
services and the same shared steps of qr.py (the identifier, the matching instances, the contexts to send on,
the stored bytes read as they are):

* the C-STORE sub-operations go on the requestor's own association, one at a time (no asynchronous operations
  window is negotiated, PS3.7 D.3.3.3), each after the previous one's C-STORE-RSP; the next file is read in a
  thread while the peer takes the current one;
* a pending C-GET-RSP follows each sub-operation, with its Remaining, Completed, Failed and Warning counts;
* the final response is Success (0x0000), 0xB000 when some sub-operations failed or gave a warning, 0xA702 when
  all failed, 0xFE00 after a C-CANCEL (read while a sub-operation's response is awaited, honoured once it has
  come), each with the counts and, unless a success, Failed SOP Instance UID List (PS3.4 C.4.3.1.3.2, C.4.3.3);
* a refused identifier is answered with its status and Error Comment and no sub-operation;
* no C-STORE-RSP within DIMSE_DIMSE_TIMEOUT, an A-RELEASE-RQ before the final response or a message that is
  neither that response nor a C-CANCEL: the association is aborted, as pynetdicom aborts on a missing response.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator
from typing import Any, Final, NoReturn

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_CANCEL, C_GET, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import QueryRetrieveServiceClass
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

from app.core.records import StoredInstance
from app.core.retrieve.streaming import EncodedInstance
from dimse_bridge import qr, status
from dimse_bridge.access import peer
from dimse_bridge.bridge import BridgeError
from dimse_bridge.link import Phase
from dimse_bridge.sending import MEDIUM

log = logging.getLogger(__name__)

# PS3.4 C.4.3.1.4: "Sub-operations Complete - One or more Failures or Warnings".
SUB_OPERATIONS_WARNING: Final = 0xB000
# Number of Remaining/Completed/Failed/Warning Sub-operations are US (PS3.7 9.3.3.2): a C-GET names at most this.
MAX_SUB_OPERATIONS: Final = 0xFFFF
# How many instances, or bytes of them, one thread job reads ahead of the sub-operations (`_batches`).
READ_AHEAD_COUNT: Final = 16
READ_AHEAD_BYTES: Final = 4 * 1024 * 1024


class _Tally:
    """The sub-operations' outcomes so far, and the responses that report them (PS3.4 C.4.3.1.3)."""

    def __init__(self, request: C_GET, total: int, transfer_syntax: Any) -> None:
        self.request = request
        self.total = total
        self.remaining = total
        self.completed = 0
        self.warning = 0
        self.failed: list[str] = []  # their SOP Instance UIDs
        self.transfer_syntax = transfer_syntax

    def response(self, code: int, *, remaining: bool) -> C_GET:
        response = C_GET()
        response.MessageIDBeingRespondedTo = self.request.MessageID
        response.AffectedSOPClassUID = self.request.AffectedSOPClassUID
        response.Status = code
        if remaining:
            response.NumberOfRemainingSuboperations = self.remaining
        response.NumberOfCompletedSuboperations = self.completed
        response.NumberOfFailedSuboperations = len(self.failed)
        response.NumberOfWarningSuboperations = self.warning
        if code not in (status.SUCCESS, status.PENDING):
            found = Dataset()
            found.FailedSOPInstanceUIDList = self.failed
            syntax = self.transfer_syntax
            encoded = encode(found, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
            response.Identifier = io.BytesIO(encoded or b"")
        return response

    def final(self) -> C_GET:
        if not self.failed and not self.warning:
            return self.response(status.SUCCESS, remaining=False)
        if len(self.failed) == self.total:
            return self.response(status.OUT_OF_RESOURCES_SUBOPERATIONS, remaining=False)
        return self.response(SUB_OPERATIONS_WARNING, remaining=False)


async def serve(phase: Phase, request: C_GET, context: PresentationContext) -> None:
    """Answer one C-GET-RQ received on `context` (a GET model of qr.GET_SOP_CLASSES)."""
    assoc, dimse = phase.assoc, phase.dimse
    context_id = int(context.context_id or 0)
    sop_class = str(request.AffectedSOPClassUID)
    who = f"C-GET from {peer(assoc)}"
    try:
        event = Event(assoc, evt.EVT_C_GET, {"request": request, "context": context.as_tuple})
        model = qr.retrieve_query(qr.decode_identifier(event), sop_class)
        refs = await dimse.bridge.within(dimse.archive.retrieve.resolve_matching(model))
    except qr.IdentifierError as exc:
        log.warning("%s refused (0x%04X): %s", who, exc.code, exc)
        await phase.link.send(_refusal(assoc, request, exc.code, str(exc)), context_id)
        return
    except BridgeError as exc:
        log.warning("%s refused: %s", who, exc)
        await phase.link.send(_refusal(assoc, request, status.OUT_OF_RESOURCES_MATCHES, str(exc)), context_id)
        return
    if len(refs) > MAX_SUB_OPERATIONS:
        comment = f"{len(refs)} instances match; a C-GET can report at most {MAX_SUB_OPERATIONS}"
        log.warning("%s refused: %s", who, comment)
        await phase.link.send(_refusal(assoc, request, status.UNABLE_TO_PROCESS, comment), context_id)
        return
    log.info("%s: %d instances to send", who, len(refs))
    tally = _Tally(request, len(refs), context.transfer_syntax[0])
    cancelled = await _sub_operations(phase, request, refs, tally, context_id, who)
    if cancelled:
        log.info("%s cancelled after %d of %d sub-operations", who, len(refs) - tally.remaining, len(refs))
        await phase.link.send(tally.response(status.CANCEL, remaining=True), context_id)
    else:
        await phase.link.send(tally.final(), context_id)


def _refusal(assoc: Any, request: C_GET, code: int, comment: str) -> C_GET:
    """The final response of a C-GET refused before any sub-operation (PS3.4 C.4.3.1.3.1), with its Error
    Comment."""
    response = C_GET()
    response.MessageIDBeingRespondedTo = request.MessageID
    response.AffectedSOPClassUID = request.AffectedSOPClassUID
    return QueryRetrieveServiceClass(assoc).validate_status(status.status_dataset(code, comment), response)


def _batches(refs: list[StoredInstance]) -> Iterator[list[StoredInstance]]:
    """The instances in groups read by one thread job each: a hop to a thread costs ~0.1 ms of CPU, more than
    reading a small file (~0.04 ms). The first group is one instance, so the first sub-operation starts at
    once; each other holds up to READ_AHEAD_COUNT instances or READ_AHEAD_BYTES."""
    batch: list[StoredInstance] = []
    size = 0
    for index, ref in enumerate(refs):
        batch.append(ref)
        size += ref.size
        if index == 0 or len(batch) >= READ_AHEAD_COUNT or size >= READ_AHEAD_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


async def _sub_operations(
    phase: Phase, request: C_GET, refs: list[StoredInstance], tally: _Tally, context_id: int, who: str
) -> bool:
    """Send each instance, a pending response after each; True if a C-CANCEL stopped them. The next group of
    files is read in a thread while the current one is sent."""
    loop = asyncio.get_running_loop()
    contexts = qr.sending_contexts(phase.assoc)

    def read_batch(batch: list[StoredInstance]) -> list[EncodedInstance | None]:
        return [
            qr.read_for_sending(phase.dimse, ref, list(contexts.get(ref.sop_class_uid, ())), who)
            for ref in batch
        ]

    batches = _batches(refs)
    upcoming = loop.run_in_executor(phase.staging, read_batch, next(batches, []))
    index = 0
    while True:
        batch = await upcoming
        if not batch:
            return False
        upcoming = loop.run_in_executor(phase.staging, read_batch, next(batches, []))
        for encoded in batch:
            ref = refs[index]
            cancelled = False
            if encoded is None:
                tally.failed.append(ref.sop_instance_uid)
            else:
                # PS3.7 9.1.1.1.1: a Message ID of its own; pynetdicom numbers sub-operations after the request's.
                message_id = (int(request.MessageID or 0) + index) % MAX_SUB_OPERATIONS + 1
                code, cancelled = await _store(phase, encoded, contexts, message_id, request)
                category = (
                    STORAGE_SERVICE_CLASS_STATUS.get(code, ("Failure",))[0] if code is not None else "Failure"
                )
                if category == "Success":
                    tally.completed += 1
                elif category == "Warning":
                    tally.warning += 1
                else:
                    tally.failed.append(ref.sop_instance_uid)  # PS3.4 C.4.3.1.3.2
            tally.remaining -= 1
            index += 1
            # Held back, to go out with the next sub-operation's request in one write.
            await phase.link.send(tally.response(status.PENDING, remaining=True), context_id, now=False)
            if cancelled:
                return True


async def _store(
    phase: Phase,
    encoded: EncodedInstance,
    contexts: dict[str, dict[str, int]],
    message_id: int,
    request: C_GET,
) -> tuple[int | None, bool]:
    """One C-STORE sub-operation: the request, then its response's status (None if it had none); and whether
    a C-CANCEL of the C-GET came meanwhile."""
    store = C_STORE()
    store.MessageID = message_id
    store.Priority = MEDIUM
    store.AffectedSOPClassUID = encoded.sop_class_uid
    store.AffectedSOPInstanceUID = encoded.sop_instance_uid
    store.DataSet = io.BytesIO(encoded.data)
    await phase.link.send(store, contexts[encoded.sop_class_uid][encoded.transfer_syntax_uid])
    cancelled = False
    while True:
        try:
            received = await phase.link.receive(phase.assoc.dimse_timeout)
        except TimeoutError:
            await _abort(phase, f"no C-STORE-RSP to sub-operation {message_id} within the DIMSE timeout")
        if received is None:
            await _abort(phase, "an A-RELEASE-RQ before the C-GET's final response (PS3.7 D.3.3.3)")
        _, answer = received
        if isinstance(answer, C_CANCEL):
            cancelled = cancelled or answer.MessageIDBeingRespondedTo == request.MessageID
        elif isinstance(answer, C_STORE) and answer.MessageIDBeingRespondedTo is not None:
            return answer.Status, cancelled
        else:
            await _abort(
                phase, f"a {answer.msg_type} while sub-operation {message_id} awaited its C-STORE-RSP"
            )


async def _abort(phase: Phase, why: str) -> NoReturn:
    log.warning("association with %s aborted: %s", peer(phase.assoc), why)
    await phase.link.abort()
