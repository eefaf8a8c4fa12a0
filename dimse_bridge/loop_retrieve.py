"""C-GET (PS3.4 C.4.3) and C-MOVE (C.4.2) served on the event loop, for associations whose data phase the loop
serves (data_phase.py).

On pynetdicom's reactors each C-STORE sub-operation crossed threads twice: its response was read by a DUL thread,
queued for the association thread (which first paused its own reactor, polling with sleeps), and the next file
was read in that thread; a C-MOVE's sub-association to its destination had two threads of its own. A viewer or
getscu pulling a study, or a workstation moving priors, waited that long per instance.

Here the loop does what `QueryRetrieveServiceClass._get_scp` and `_move_scp` do around qr.handle_get and
qr.handle_move, with the same archive services and the same shared steps of qr.py (the identifier, the matching
instances, the contexts to send on, the stored bytes read as they are):

* the C-STORE sub-operations go one at a time (no asynchronous operations window is negotiated, PS3.7 D.3.3.3),
  each after the previous one's C-STORE-RSP: for a C-GET on the requestor's own association, for a C-MOVE on an
  association to the Move Destination (loop_scu.py), with the Move Originator's AE title and Message ID (PS3.7
  9.1.1.1); the next files are read in a thread while the current ones go out;
* a pending response follows each sub-operation, with its Remaining, Completed, Failed and Warning counts
  (written with the next message, or after each group of files);
* the final response is Success (0x0000), 0xB000 when some sub-operations failed or gave a warning, 0xA702 when
  all failed, 0xFE00 after a C-CANCEL (honoured once the sub-operation in progress has its response), each with
  the counts and, unless a success, Failed SOP Instance UID List (PS3.4 C.4.2.1.5, C.4.3.1.3.2);
* a refused identifier is answered with its status and Error Comment and no sub-operation; an unknown Move
  Destination, or one that cannot be associated with, with 0xA801;
* a C-GET whose sub-operation has no C-STORE-RSP within DIMSE_DIMSE_TIMEOUT, or that meets an A-RELEASE-RQ or a
  message other than that response or a C-CANCEL, aborts the association, as pynetdicom aborts on a missing
  response; a C-MOVE destination that does not answer within DIMSE_SCU_TIMEOUT, or aborts, fails the
  sub-operations not yet done.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
from collections.abc import Iterator
from typing import Any, Final

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_CANCEL, C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from pynetdicom.status import (
    QR_GET_SERVICE_CLASS_STATUS,
    QR_MOVE_SERVICE_CLASS_STATUS,
)

from app.core.records import StoredInstance
from app.core.retrieve.streaming import EncodedInstance
from dimse_bridge import loop_scu, qr, scu, status
from dimse_bridge.access import peer
from dimse_bridge.bridge import BridgeError
from dimse_bridge.commands import EncodedView
from dimse_bridge.link import Ended, Link, Phase
from dimse_bridge.sending import MEDIUM

log = logging.getLogger(__name__)

# PS3.4 C.4.3.1.4: "Sub-operations Complete - One or more Failures or Warnings".
SUB_OPERATIONS_WARNING: Final = 0xB000
# PS3.4 C.4.2.1.5: "Refused: Move Destination unknown".
MOVE_DESTINATION_UNKNOWN: Final = 0xA801
# "Unable to process" (0xCxxx) codes pynetdicom's _get_scp / _move_scp answer when its handler fails, and when
# more than MAX_SUB_OPERATIONS instances match: the same here.
FAILED: Final = {C_GET: 0xC411, C_MOVE: 0xC511}
TOO_MANY: Final = {C_GET: 0xC416, C_MOVE: 0xC516}
# Number of Remaining/Completed/Failed/Warning Sub-operations are US (PS3.7 9.3.3.2): a retrieve names at most this.
MAX_SUB_OPERATIONS: Final = 0xFFFF
# How many instances, or bytes of them, one thread job reads ahead of the sub-operations (`_batches`).
READ_AHEAD_COUNT: Final = 16
READ_AHEAD_BYTES: Final = 4 * 1024 * 1024


# Why a sub-operation has no response: the association that carries it cannot go on.
class _Lost(Exception):
    pass


@dataclasses.dataclass
class _Receiver:
    """Where the C-STORE sub-operations go: the requestor's own association (C-GET) or one to the Move
    Destination (C-MOVE)."""

    link: Link
    sending: dict[str, dict[str, int]]  # SOP class -> {transfer syntax: presentation context ID}
    response_seconds: float | None
    originator: tuple[str, int] | None = None  # Move Originator AE Title and Message ID (PS3.7 9.1.1.1)
    requestor: bool = False  # the requestor's own association: a sub-operation lost there aborts it


class _Tally:
    """The sub-operations' outcomes so far (counted as scu.StoreReport counts them), and the responses that report
    them (PS3.4 C.4.2.1.5, C.4.3.1.3)."""

    def __init__(self, request: C_GET | C_MOVE, total: int, transfer_syntax: Any) -> None:
        self.request = request
        self.total = total
        self.report = scu.StoreReport()
        self.transfer_syntax = transfer_syntax

    @property
    def remaining(self) -> int:
        return self.total - self.report.done

    def response(self, code: int, *, remaining: bool) -> C_GET | C_MOVE:
        report = self.report
        response = type(self.request)()
        response.MessageIDBeingRespondedTo = self.request.MessageID
        response.AffectedSOPClassUID = self.request.AffectedSOPClassUID
        response.Status = code
        if remaining:
            response.NumberOfRemainingSuboperations = self.remaining
        response.NumberOfCompletedSuboperations = report.completed
        response.NumberOfFailedSuboperations = report.failed
        response.NumberOfWarningSuboperations = report.warning
        if code not in (status.SUCCESS, status.PENDING):
            found = Dataset()
            found.FailedSOPInstanceUIDList = report.failed_sop_instance_uids
            syntax = self.transfer_syntax
            encoded = encode(found, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
            response.Identifier = io.BytesIO(encoded or b"")
        return response

    def final(self) -> C_GET | C_MOVE:
        report = self.report
        if not report.failed and not report.warning:
            return self.response(status.SUCCESS, remaining=False)
        if report.failed == self.total:
            return self.response(status.OUT_OF_RESOURCES_SUBOPERATIONS, remaining=False)
        return self.response(SUB_OPERATIONS_WARNING, remaining=False)


def _answer(assoc: Any, request: C_GET | C_MOVE, code: int, comment: str = "") -> C_GET | C_MOVE:
    """A final response without sub-operations: a refusal with its Error Comment (PS3.4 C.4.2.1.5,
    C.4.3.1.3.1), or Success with nothing to send."""
    response = type(request)()
    response.MessageIDBeingRespondedTo = request.MessageID
    response.AffectedSOPClassUID = request.AffectedSOPClassUID
    statuses = QR_GET_SERVICE_CLASS_STATUS if isinstance(request, C_GET) else QR_MOVE_SERVICE_CLASS_STATUS
    qr.set_status(assoc, response, status.status_dataset(code, comment), statuses)
    if code == status.SUCCESS:
        response.NumberOfCompletedSuboperations = 0
        response.NumberOfFailedSuboperations = 0
        response.NumberOfWarningSuboperations = 0
    return response


async def _matching(
    phase: Phase, request: C_GET | C_MOVE, context: PresentationContext, who: str
) -> list[StoredInstance] | None:
    """The instances the request names; None once a refusal has been answered (logged)."""
    assoc, dimse = phase.assoc, phase.dimse
    context_id = int(context.context_id or 0)
    kind = evt.EVT_C_GET if isinstance(request, C_GET) else evt.EVT_C_MOVE
    try:
        event = Event(assoc, kind, {"request": request, "context": context.as_tuple})
        model = qr.retrieve_query(qr.decode_identifier(event), str(request.AffectedSOPClassUID))
        refs = await dimse.bridge.within(dimse.archive.retrieve.resolve_matching(model))
    except qr.IdentifierError as exc:
        log.warning("%s refused (0x%04X): %s", who, exc.code, exc)
        await phase.link.send(_answer(assoc, request, exc.code, str(exc)), context_id)
        return None
    except BridgeError as exc:
        log.warning("%s refused: %s", who, exc)
        await phase.link.send(_answer(assoc, request, status.OUT_OF_RESOURCES_MATCHES, str(exc)), context_id)
        return None
    except Exception as exc:  # the archive failed (a database error): a status, as pynetdicom gives
        log.exception("%s failed", who)
        await phase.link.send(_answer(assoc, request, FAILED[type(request)], f"{exc!r}"), context_id)
        return None
    if len(refs) > MAX_SUB_OPERATIONS:
        comment = f"{len(refs)} instances match; a retrieve can report at most {MAX_SUB_OPERATIONS}"
        log.warning("%s refused: %s", who, comment)
        await phase.link.send(_answer(assoc, request, TOO_MANY[type(request)], comment), context_id)
        return None
    return refs


async def serve_get(phase: Phase, request: C_GET, context: PresentationContext) -> None:
    """Answer one C-GET-RQ received on `context` (a GET model of qr.GET_SOP_CLASSES)."""
    who = f"C-GET from {peer(phase.assoc)}"
    refs = await _matching(phase, request, context, who)
    if refs is None:
        return
    log.info("%s: %d instances to send", who, len(refs))
    receiver = _Receiver(
        phase.link, qr.sending_contexts(phase.assoc), phase.assoc.dimse_timeout, requestor=True
    )
    await _retrieve(phase, request, context, refs, receiver, who)


async def serve_move(phase: Phase, request: C_MOVE, context: PresentationContext) -> None:
    """Answer one C-MOVE-RQ received on `context` (a MOVE model of qr.MOVE_SOP_CLASSES): the Move Destination's
    address comes from the AE registry (app/core/aes.py)."""
    assoc, dimse = phase.assoc, phase.dimse
    context_id = int(context.context_id or 0)
    title = str(request.MoveDestination or "").strip()
    who = f"C-MOVE from {peer(assoc)} to {title}"
    try:
        destination = await dimse.bridge.within(dimse.archive.aes.get(title))
    except BridgeError as exc:
        log.warning("%s refused: the AE registry cannot be read: %s", who, exc)
        await phase.link.send(_answer(assoc, request, MOVE_DESTINATION_UNKNOWN, str(exc)), context_id)
        return
    except Exception as exc:  # the archive failed (a database error): a status, as pynetdicom gives
        log.exception("%s failed: the AE registry cannot be read", who)
        await phase.link.send(_answer(assoc, request, FAILED[C_MOVE], f"{exc!r}"), context_id)
        return
    if destination is None:
        log.warning("%s refused: unknown move destination (register it with PUT /api/aes/{title})", who)
        comment = f"unknown Move Destination {title}"
        await phase.link.send(_answer(assoc, request, MOVE_DESTINATION_UNKNOWN, comment), context_id)
        return
    refs = await _matching(phase, request, context, who)
    if refs is None:
        return
    if not refs:
        await phase.link.send(_answer(assoc, request, status.SUCCESS), context_id)
        return
    # The server AE's own limits, as pynetdicom's Move SCP associates with them: DIMSE_ACSE_TIMEOUT for the
    # association's request and release, DIMSE_DIMSE_TIMEOUT for each C-STORE-RSP.
    settings = dimse.settings
    options = dataclasses.replace(
        scu.ScuOptions.from_settings(settings), timeout=settings.dimse_dimse_timeout
    )
    us = loop_scu.Implementation(
        dimse.ae_title,
        str(assoc.acceptor.implementation_class_uid),
        str(assoc.acceptor.implementation_version_name or ""),
    )
    # The contexts scu.store proposes: per SOP class its stored syntaxes, then Explicit/Implicit VR LE. Only
    # one association is made, so instances of SOP classes beyond its 128 contexts fail (counted, listed).
    try:
        requested = await loop_scu.associate(
            destination, options, scu.storage_contexts(refs)[0], us, acse_timeout=settings.dimse_acse_timeout
        )
    except scu.ScuError as exc:
        log.warning("%s refused (0x%04X): %s", who, MOVE_DESTINATION_UNKNOWN, exc)
        await phase.link.send(_answer(assoc, request, MOVE_DESTINATION_UNKNOWN, str(exc)), context_id)
        return
    log.info("%s (%s:%d): %d instances to send", who, destination.host, destination.port, len(refs))
    originator = (str(assoc.requestor.ae_title or "").strip(), int(request.MessageID or 0))
    receiver = _Receiver(requested.link, requested.sending, options.timeout, originator)
    try:
        await _retrieve(phase, request, context, refs, receiver, who)
    except (
        BaseException
    ):  # the requestor's association ended, or the server is stopping: no release to wait for
        await loop_scu.abort(requested.link)
        raise
    await loop_scu.release(requested, settings.dimse_acse_timeout)


async def _retrieve(
    phase: Phase,
    request: C_GET | C_MOVE,
    context: PresentationContext,
    refs: list[StoredInstance],
    receiver: _Receiver,
    who: str,
) -> None:
    context_id = int(context.context_id or 0)
    tally = _Tally(request, len(refs), context.transfer_syntax[0])
    if await _sub_operations(phase, request, refs, tally, context_id, receiver, who):
        log.info("%s cancelled after %d of %d sub-operations", who, len(refs) - tally.remaining, len(refs))
        await phase.link.send(tally.response(status.CANCEL, remaining=True), context_id)
    else:
        await phase.link.send(tally.final(), context_id)


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
    phase: Phase,
    request: C_GET | C_MOVE,
    refs: list[StoredInstance],
    tally: _Tally,
    context_id: int,
    receiver: _Receiver,
    who: str,
) -> bool:
    """Send each instance, a pending response after each; True if a C-CANCEL stopped them. The next group of
    files is read in a thread while the current one is sent."""
    loop = asyncio.get_running_loop()
    message_id = int(request.MessageID or 0)

    def read(ref: StoredInstance) -> tuple[StoredInstance, EncodedInstance | None]:
        accepted = list(receiver.sending.get(ref.sop_class_uid, ()))
        try:
            return ref, qr.read_for_sending(phase.dimse, ref, accepted, who)
        except Exception:  # an unexpected failure of this one instance fails its sub-operation, not the rest
            log.exception("%s: instance %s not sent", who, ref.sop_instance_uid)
            return ref, None

    def read_batch(batch: list[StoredInstance]) -> list[tuple[StoredInstance, EncodedInstance | None]]:
        return [read(ref) for ref in batch]

    if (
        not receiver.requestor
    ):  # a C-MOVE: its C-CANCEL comes on the requestor's association, read from now on
        phase.link.cancelled(message_id)
    batches = _batches(refs)
    upcoming = loop.run_in_executor(phase.reading, read_batch, next(batches, []))
    try:
        while batch := await upcoming:
            upcoming = loop.run_in_executor(phase.reading, read_batch, next(batches, []))
            for ref, encoded in batch:
                cancelled = False
                if encoded is None:
                    tally.report.fail(ref)
                else:
                    # PS3.7 9.1.1.1.1: a Message ID of its own; pynetdicom numbers them after the request's.
                    sub_id = (message_id + tally.report.done) % MAX_SUB_OPERATIONS + 1
                    try:
                        code, cancelled = await _store(receiver, encoded, sub_id, request)
                    except _Lost as exc:
                        await _destination_lost(receiver, tally, refs[tally.report.done :], exc, who)
                        return False
                    tally.report.count(ref, code)
                # For a C-GET, held back to go with the next C-STORE-RQ; a C-MOVE's requestor waits for it.
                pending = tally.response(status.PENDING, remaining=True)
                await phase.link.send(pending, context_id, now=not receiver.requestor)
                if cancelled or (not receiver.requestor and phase.link.cancelled(message_id)):
                    return True
            await phase.link.flush()
        return False
    finally:
        upcoming.cancel()  # stopped early: a read still running is neither waited for nor its outcome kept


async def _destination_lost(
    receiver: _Receiver, tally: _Tally, rest: list[StoredInstance], exc: Exception, who: str
) -> None:
    """A C-MOVE whose destination aborted or stopped answering: the sub-operations not done have failed."""
    log.warning("%s: the destination is lost (%s); %d not sent", who, exc or "aborted", len(rest))
    await loop_scu.abort(receiver.link)
    for ref in rest:
        tally.report.fail(ref)


async def _store(
    receiver: _Receiver, encoded: EncodedInstance, message_id: int, request: C_GET | C_MOVE
) -> tuple[int | None, bool]:
    """One C-STORE sub-operation: its response's status (None if it had none), and whether a C-CANCEL of the
    retrieve came meanwhile on that association. When it cannot go on, the requestor's own association is
    aborted (`Ended`); a destination's is `_Lost`."""
    try:
        return await _exchange(receiver, encoded, message_id, request)
    except _Lost as exc:
        if receiver.requestor:
            log.warning("%s aborted: %s", receiver.link.association, exc)
            await receiver.link.abort()
        raise
    except Ended:
        if receiver.requestor:
            raise
        raise _Lost("the association ended") from None


async def _exchange(
    receiver: _Receiver, encoded: EncodedInstance, message_id: int, request: C_GET | C_MOVE
) -> tuple[int | None, bool]:
    store = C_STORE()
    store.MessageID = message_id
    store.Priority = MEDIUM
    store.AffectedSOPClassUID = encoded.sop_class_uid
    store.AffectedSOPInstanceUID = encoded.sop_instance_uid
    if receiver.originator is not None:
        store.MoveOriginatorApplicationEntityTitle, store.MoveOriginatorMessageID = receiver.originator
    store.DataSet = EncodedView(encoded.data)
    link = receiver.link
    await link.send(store, receiver.sending[encoded.sop_class_uid][encoded.transfer_syntax_uid])
    cancelled = False
    while True:
        try:
            received = await link.receive(receiver.response_seconds)
        except TimeoutError:
            raise _Lost(
                f"no C-STORE-RSP to sub-operation {message_id} within {receiver.response_seconds} s"
            ) from None
        if received is None:
            raise _Lost("an A-RELEASE-RQ before the retrieve's final response (PS3.7 D.3.3.3)")
        _, answer = received
        if isinstance(answer, C_CANCEL):
            cancelled = cancelled or answer.MessageIDBeingRespondedTo == request.MessageID
        elif isinstance(answer, C_STORE) and answer.MessageIDBeingRespondedTo is not None:
            return answer.Status, cancelled
        else:
            raise _Lost(f"a {answer.msg_type} while sub-operation {message_id} awaited its C-STORE-RSP")
