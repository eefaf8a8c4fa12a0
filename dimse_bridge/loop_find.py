"""C-FIND (PS3.4 C.4.1, Patient Root and Study Root) served on the event loop, for associations whose data phase
the loop serves (data_phase.py): a viewer or findscu querying, movescu finding before it moves.

The matches are qr.find_results, the same the thread door (qr.handle_find) hands to pynetdicom, so both doors
answer alike. Here the responses are written as pynetdicom's `_c_find_scp` writes them: a pending response with
its identifier per match (in the context's transfer syntax), a page of them in one write; then Success
(0x0000), or the refusal or failure that ended them; 0xFE00 once a C-CANCEL of the request has come (looked for
between matches, link.py); 0xC311 when the archive fails, 0xC312 for an answer that cannot be encoded.
"""

from __future__ import annotations

import io
import logging
from typing import Any, Final

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from pynetdicom.status import QR_FIND_SERVICE_CLASS_STATUS

from dimse_bridge import qr, status
from dimse_bridge.access import peer
from dimse_bridge.link import Phase

log = logging.getLogger(__name__)

# pynetdicom's statuses (its _c_find_scp), in the 0xC000-0xCFFF "Unable to process": a handler that failed, an
# answer it cannot encode.
FAILED: Final = 0xC311
CANNOT_ENCODE: Final = 0xC312


async def serve(phase: Phase, request: C_FIND, context: PresentationContext) -> None:
    """Answer one C-FIND-RQ received on `context` (a model of qr.FIND_SOP_CLASSES)."""
    assoc, link = phase.assoc, phase.link
    context_id = int(context.context_id or 0)
    syntax = context.transfer_syntax[0]
    who = peer(assoc)
    event = Event(assoc, evt.EVT_C_FIND, {"request": request, "context": context.as_tuple})
    matches = 0
    results = qr.find_results(phase.dimse, event, who)
    try:
        while True:
            try:
                page = await anext(results, None)
            except Exception as exc:  # the archive failed (a database error): a status, as pynetdicom gives
                log.exception("C-FIND from %s failed after %d matches", who, matches)
                await link.send(
                    _response(assoc, request, status.status_dataset(FAILED, repr(exc))), context_id
                )
                return
            if page is None:
                break
            for code, answer in page:
                if answer is None:  # a refusal or a failure: the final response
                    await link.send(_response(assoc, request, code), context_id)
                    return
                if link.cancelled(int(request.MessageID or 0)):
                    log.info("C-FIND from %s cancelled after %d matches", who, matches)
                    await link.send(_response(assoc, request, status.CANCEL), context_id)
                    return
                encoded = encode(answer, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
                if not encoded:
                    log.error(
                        "C-FIND from %s: answer %d cannot be encoded in %s", who, matches + 1, syntax.name
                    )
                    await link.send(_response(assoc, request, CANNOT_ENCODE), context_id)
                    return
                await link.send(_response(assoc, request, code, encoded), context_id, now=False)
                matches += 1
            await link.flush()
    finally:
        await results.aclose()
    if link.cancelled(int(request.MessageID or 0)):
        await link.send(_response(assoc, request, status.CANCEL), context_id)
    else:
        await link.send(_response(assoc, request, status.SUCCESS), context_id)


def _response(assoc: Any, request: C_FIND, code: int | Dataset, identifier: bytes | None = None) -> C_FIND:
    """A C-FIND-RSP to `request`: its status (a status data set lends its Error Comment) and identifier."""
    response = C_FIND()
    response.MessageIDBeingRespondedTo = request.MessageID
    response.AffectedSOPClassUID = request.AffectedSOPClassUID
    qr.set_status(assoc, response, code, QR_FIND_SERVICE_CLASS_STATUS)
    if identifier is not None:
        response.Identifier = io.BytesIO(identifier)
    return response
