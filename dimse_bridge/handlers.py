"""One small handler per DIMSE message; each turns a request into one archive-service call through the bridge.

Handlers run in pynetdicom's association threads and receive the `DimseContext` bound by the server (see
context.py). They never touch the repository and never start an event loop: they call the services with
`dimse.bridge.call(...)` (one answer) or iterate `dimse.bridge.stream(...)` (many answers), and map the
protocol-neutral outcome to a status with status.py.

C-ECHO and C-STORE are also served on the loop itself, for associations that offer nothing else
(data_phase.py): there `answer_store` awaits the same `store` coroutine that `handle_store` hands to the bridge,
and `store_rsp` / `echo_rsp` / `foreign_sop_class` build the responses the loop sends as pynetdicom would.

The Query/Retrieve handlers (C-FIND, C-GET, C-MOVE) are generators of the same kind, in qr.py; a new
handler is bound in server.py `event_handlers()` and its SOP classes passed to
`PresentationPolicy.supported_contexts(extra=...)`.
"""

from __future__ import annotations

import asyncio
import io
import logging
from concurrent.futures import Executor
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.events import Event
from pynetdicom.service_class import StorageServiceClass, VerificationServiceClass

from app.storage.base import StagedFile
from dimse_bridge import part10, status
from dimse_bridge.access import peer
from dimse_bridge.bridge import BridgeClosed, BridgeError
from dimse_bridge.context import DimseContext

log = logging.getLogger(__name__)
# A data set up to this size is handed to ingest as bytes (staged by the header parser process, off this process);
# a bigger one is staged by the association's door (its thread, or a staging thread of the loop's), so that no
# second copy of it sits in memory while the association holds the first (at DIMSE_MAX_ASSOCIATIONS at once).
HANDOVER_BYTES = 2 * 1024 * 1024


def _stage(dimse: DimseContext, meta: bytes, data_set: io.BytesIO) -> StagedFile:
    """Write the File Meta Information and the data set to a new staged file; nothing is left if that fails."""
    staged = dimse.archive.storage.stage()
    try:
        staged.write(meta)
        with data_set.getbuffer() as raw:
            staged.write(raw)
    except BaseException:
        dimse.archive.storage.discard(staged)
        raise
    return staged


def handle_echo(event: Event, dimse: DimseContext) -> int:
    """C-ECHO (Verification, PS3.4 A.4 and PS3.7 9.1.5): the association got this far, so we are here."""
    return status.SUCCESS


def handle_store(event: Event, dimse: DimseContext) -> Dataset | int:
    """C-STORE (Storage SCP, PS3.4 B.2.3) in an association thread of pynetdicom's: the data set made a payload
    here (a large one staged from this thread), then `store` on the loop."""
    request = event.request
    assert isinstance(request, C_STORE)  # pynetdicom calls this handler for C-STORE requests only
    try:
        meta = file_meta(dimse, request, str(event.context.transfer_syntax), event.assoc)
        payload = _payload(dimse, meta, request.DataSet or io.BytesIO())
    except OSError as exc:  # StorageError too: disk full, staging area gone (PS3.4 B.2.3 A7xx)
        return _unstaged(exc, event.assoc)
    try:
        # Not cancelled on timeout: a store stopped half-way could leave a file without its metadata row.
        return dimse.bridge.call(store(dimse, request, payload, event.assoc), cancel_on_timeout=False)
    except BridgeError as exc:
        return _unanswered(exc, dimse, payload, event.assoc)


async def answer_store(
    dimse: DimseContext, request: C_STORE, transfer_syntax: str, assoc: Any, staging: Executor
) -> Dataset | int:
    """C-STORE in an association served on the loop (data_phase.py): a data set above HANDOVER_BYTES is staged
    in a thread of `staging` (file I/O stays off the loop), then `store`, bounded as `handle_store` is."""
    data_set = request.DataSet or io.BytesIO()
    payload: bytes | StagedFile
    try:
        meta = file_meta(dimse, request, transfer_syntax, assoc)
        if _fits(meta, data_set):
            payload = _handover(meta, data_set)
        else:
            if dimse.bridge.closed:  # shutting down: the staging threads are gone, and ingest takes nothing
                return _unanswered(BridgeClosed("the archive is shutting down"), dimse, b"", assoc)
            job = asyncio.get_running_loop().run_in_executor(staging, _stage, dimse, meta, data_set)
            try:
                payload = await asyncio.shield(job)
            except asyncio.CancelledError:  # the association aborted: what the thread staged goes once written
                job.add_done_callback(lambda done: _discard_staged(dimse, done))
                raise
    except OSError as exc:
        return _unstaged(exc, assoc)
    try:
        return await dimse.bridge.within(store(dimse, request, payload, assoc))
    except BridgeError as exc:
        return _unanswered(exc, dimse, payload, assoc)


def _discard_staged(dimse: DimseContext, done: asyncio.Future[StagedFile]) -> None:
    if not done.cancelled() and done.exception() is None:
        dimse.archive.storage.discard(done.result())


def _unstaged(exc: OSError, assoc: Any) -> Dataset:
    log.warning("store refused from C-STORE %s: cannot stage the file: %s", peer(assoc), exc)
    return status.status_dataset(status.OUT_OF_RESOURCES, "cannot write the file")


def _unanswered(exc: BridgeError, dimse: DimseContext, payload: bytes | StagedFile, assoc: Any) -> Dataset:
    """0xA700 for a store the archive did not take (shutting down) or did not answer in time (PS3.4 B.2.3)."""
    origin = f"C-STORE {peer(assoc)}"
    if isinstance(exc, BridgeClosed):
        if isinstance(payload, StagedFile):  # ingest never had it
            dimse.archive.storage.discard(payload)
        log.warning("store refused from %s: %s", origin, exc)
    else:
        log.warning("store from %s not answered in time: %s", origin, exc)
    return status.status_dataset(status.OUT_OF_RESOURCES, str(exc))


def file_meta(dimse: DimseContext, request: C_STORE, transfer_syntax: str, assoc: Any) -> bytes:
    """The File Meta Information (PS3.10 7.1) of a C-STORE's data set, from the request and the negotiated
    transfer syntax: the data set itself is never decoded and re-encoded."""
    return part10.encode_file_meta(
        sop_class_uid=str(request.AffectedSOPClassUID),
        sop_instance_uid=str(request.AffectedSOPInstanceUID),
        transfer_syntax_uid=transfer_syntax,
        implementation_class_uid=str(assoc.acceptor.implementation_class_uid),
        implementation_version_name=str(assoc.acceptor.implementation_version_name or ""),
        sending_ae_title=_calling(assoc),
        receiving_ae_title=dimse.ae_title,
    )


def _calling(assoc: Any) -> str:
    return str(assoc.requestor.ae_title or "").strip()


def _fits(meta: bytes, data_set: io.BytesIO) -> bool:
    return len(meta) + data_set.getbuffer().nbytes <= HANDOVER_BYTES


def _payload(dimse: DimseContext, meta: bytes, data_set: io.BytesIO) -> bytes | StagedFile:
    """The Part 10 instance for ingest: small (most instances), as bytes, staged by the header parser with its
    header read; above HANDOVER_BYTES, staged here."""
    return _handover(meta, data_set) if _fits(meta, data_set) else _stage(dimse, meta, data_set)


def _handover(meta: bytes, data_set: io.BytesIO) -> bytes:
    with data_set.getbuffer() as raw:  # the peer's encoded data set, without a copy
        return b"".join((meta, raw))


async def store(dimse: DimseContext, request: C_STORE, payload: bytes | StagedFile, assoc: Any) -> Dataset | int:
    """C-STORE (Storage SCP, PS3.4 B.2.3): store the data set exactly as received, answer once it is held.

    `payload` is the peer's bytes unchanged behind their File Meta Information (`file_meta`). The answer is sent
    only after ingest has committed the file and its metadata, so the instance is queryable and retrievable by
    the time the SCU reads a success.
    """
    outcome = await dimse.archive.ingest.store(
        payload,
        expected_sop_class_uid=str(request.AffectedSOPClassUID),
        expected_sop_instance_uid=str(request.AffectedSOPInstanceUID),
        origin=f"C-STORE {peer(assoc)}",
        calling_ae_title=_calling(assoc),
    )
    return status.store_response(outcome)


def store_rsp(assoc: Any, request: C_STORE, answer: Dataset | int) -> C_STORE:
    """The C-STORE-RSP primitive answering `request` with `answer` (a status, or a status data set), as
    pynetdicom's Storage SCP builds it."""
    response = C_STORE()
    response.MessageIDBeingRespondedTo = request.MessageID
    response.AffectedSOPClassUID = request.AffectedSOPClassUID
    response.AffectedSOPInstanceUID = request.AffectedSOPInstanceUID
    return StorageServiceClass(assoc).validate_status(answer, response)


def echo_rsp(assoc: Any, request: C_ECHO, answer: Dataset | int) -> C_ECHO:
    """The C-ECHO-RSP primitive answering `request` with `answer`, as pynetdicom's Verification SCP builds it."""
    response = C_ECHO()
    response.MessageIDBeingRespondedTo = request.MessageID
    response.AffectedSOPClassUID = request.AffectedSOPClassUID
    return VerificationServiceClass(assoc).validate_status(answer, response)


def foreign_sop_class(assoc: Any, request: C_STORE, context_id: int, abstract_syntax: str) -> C_STORE | None:
    """The C-STORE-RSP refusing `request` with 0x0122 when its Affected SOP Class UID is not the abstract syntax
    of its presentation context (PS3.7 9.1.1.1.9 and C.5: Refused, SOP Class not supported), else None.

    pynetdicom picks the service from that UID, not from the context, and aborts the association when the UID
    names no service it knows (DCMTK's dcmsend sends `31` for a data set whose SOP Class UID it cannot read); a
    storage UID other than the context's would otherwise reach the Storage SCP past the SOP class policy the
    context was negotiated under. The association goes on.
    """
    sop_class = str(request.AffectedSOPClassUID)
    if sop_class == abstract_syntax:
        return None
    log.warning(
        "C-STORE of %r from %s refused (0x%04X): its SOP Class UID %r is not %s (%s), the SOP class of "
        "presentation context %d",
        str(request.AffectedSOPInstanceUID),
        peer(assoc),
        status.SOP_CLASS_NOT_SUPPORTED,
        sop_class,
        abstract_syntax,
        UID(abstract_syntax).name,
        context_id,
    )
    answer = status.status_dataset(status.SOP_CLASS_NOT_SUPPORTED, f"SOP Class {sop_class} is not that of its context")
    return store_rsp(assoc, request, answer)
