"""One small handler per DIMSE message; each turns a request into one archive-service call through the bridge.

Handlers run in pynetdicom's association threads and receive the `DimseContext` bound by the server (see
context.py). They never touch the repository and never start an event loop: they call the services with
`dimse.bridge.call(...)` (one answer) or iterate `dimse.bridge.stream(...)` (many answers), and map the
protocol-neutral outcome to a status with status.py. (The direct storage calls are `stage()` and `discard()`: a
data set too big to hand over as bytes is written to a staging file from the association thread, so that file
I/O stays off the loop.)

The Query/Retrieve handlers (C-FIND, C-GET, C-MOVE) are generators of the same kind, in qr.py; a new
handler is bound in server.py `event_handlers()` and its SOP classes passed to
`PresentationPolicy.supported_contexts(extra=...)`.
"""

from __future__ import annotations

import io
import logging

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from app.storage.base import StagedFile
from dimse_bridge import part10, status
from dimse_bridge.access import peer
from dimse_bridge.bridge import BridgeClosed, BridgeError
from dimse_bridge.context import DimseContext

log = logging.getLogger(__name__)
# A data set up to this size is handed to ingest as bytes (staged by the header parser process, off this process);
# a bigger one is staged from this thread, so that no second copy of it sits in memory while pynetdicom holds
# the first (at DIMSE_MAX_ASSOCIATIONS associations at once).
HANDOVER_BYTES = 2 * 1024 * 1024


def _stage(dimse: DimseContext, meta: bytes, raw: memoryview) -> StagedFile:
    """Write the File Meta Information and the data set to a new staged file; nothing is left if that fails."""
    staged = dimse.archive.storage.stage()
    try:
        staged.write(meta)
        staged.write(raw)
    except BaseException:
        dimse.archive.storage.discard(staged)
        raise
    return staged


def handle_echo(event: Event, dimse: DimseContext) -> int:
    """C-ECHO (Verification, PS3.4 A.4 and PS3.7 9.1.5): the association got this far, so we are here."""
    return status.SUCCESS


def handle_store(event: Event, dimse: DimseContext) -> Dataset | int:
    """C-STORE (Storage SCP, PS3.4 B.2.3): store the data set exactly as received, answer once it is held.

    The data set is not decoded and re-encoded: the File Meta Information (PS3.10 7.1) is built from the
    request and the negotiated transfer syntax, and the peer's bytes follow it unchanged: handed to ingest as
    bytes, or, above HANDOVER_BYTES, staged on the storage volume from this thread (file I/O stays off the
    event loop). The answer is sent only after ingest has committed the file and its metadata, so the instance
    is queryable and retrievable by the time the SCU reads a success.
    """
    request = event.request
    assert isinstance(request, C_STORE)  # pynetdicom calls this handler for C-STORE requests only
    origin = f"C-STORE {peer(event.assoc)}"
    transfer_syntax = str(event.context.transfer_syntax)
    sop_class_uid, sop_instance_uid = str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID)
    raw = (request.DataSet or io.BytesIO()).getbuffer()  # the peer's encoded data set, without a copy
    try:
        meta = part10.encode_file_meta(
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
            transfer_syntax_uid=transfer_syntax,
            implementation_class_uid=str(event.assoc.acceptor.implementation_class_uid),
            implementation_version_name=str(event.assoc.acceptor.implementation_version_name or ""),
            sending_ae_title=str(event.assoc.requestor.ae_title or "").strip(),
            receiving_ae_title=dimse.ae_title,
        )
        if len(meta) + len(raw) <= HANDOVER_BYTES:
            # Small (most instances): handed over as bytes, staged by the header parser with its header read.
            payload: bytes | StagedFile = b"".join((meta, raw))
        else:
            payload = _stage(dimse, meta, raw)
    except OSError as exc:  # StorageError too: disk full, staging area gone (PS3.4 B.2.3 A7xx)
        log.warning("store refused from %s: cannot stage the file: %s", origin, exc)
        return status.status_dataset(status.OUT_OF_RESOURCES, "cannot write the file")
    finally:
        raw.release()
    try:
        # Not cancelled on timeout: a store stopped half-way could leave a file without its metadata row.
        outcome = dimse.bridge.call(
            dimse.archive.ingest.store(
                payload,
                expected_sop_class_uid=sop_class_uid,
                expected_sop_instance_uid=sop_instance_uid,
                origin=origin,
                calling_ae_title=str(event.assoc.requestor.ae_title or "").strip(),
            ),
            cancel_on_timeout=False,
        )
    except BridgeClosed as exc:
        if isinstance(payload, StagedFile):
            dimse.archive.storage.discard(payload)
        log.warning("store refused from %s: %s", origin, exc)
        return status.status_dataset(status.OUT_OF_RESOURCES, str(exc))
    except BridgeError as exc:
        log.warning("store from %s not answered in time: %s", origin, exc)
        return status.status_dataset(status.OUT_OF_RESOURCES, str(exc))
    return status.store_response(outcome)
