"""Which handler answers a message that several services share, chosen by its SOP class: the one place where
pynetdicom's single handler per event (EVT_C_FIND, EVT_N_ACTION, ...) meets our one module per service.

C-FIND serves Query/Retrieve (qr.py), the Modality Worklist (worklist.py) and UPS Pull/Watch/Query (ups.py);
N-ACTION serves Storage Commitment (commitment.py) and UPS (ups.py); N-CREATE and N-SET serve MPPS (mpps.py)
and UPS; N-GET serves UPS only. The SOP class is the request's own (Affected SOP Class UID for C-FIND and
N-CREATE, Requested SOP Class UID for N-SET, N-GET and N-ACTION, PS3.7 9.3 / 10.3); the presentation context
it came on was accepted for that class. A message for a class whose service does not define it (an N-GET on
MPPS, an N-SET on UPS Push) is answered 0211 Unrecognized operation (PS3.7 C.4.21).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, Final

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from app.core.workflow.records import MPPS_SOP_CLASS, MWL_FIND, UPS_PULL, UPS_PUSH, UPS_QUERY, UPS_WATCH
from dimse_bridge import commitment, mpps, qr, ups, worklist
from dimse_bridge import workflow_status as ws
from dimse_bridge.access import peer
from dimse_bridge.context import DimseContext

log = logging.getLogger(__name__)

Reply = tuple[int | Dataset, Dataset | None]

UPS_FIND: Final = frozenset({UPS_PULL, UPS_WATCH, UPS_QUERY})  # PS3.4 Table CC.3.1-1
UPS_GET: Final = frozenset({UPS_PUSH, UPS_PULL, UPS_WATCH})
UPS_ACTION: Final = frozenset({UPS_PUSH, UPS_PULL, UPS_WATCH})


def _sop_class(event: Event, field: str) -> str:
    return str(getattr(event.request, field, "") or "")


def handle_find(event: Event, dimse: DimseContext) -> Iterator[Any]:
    sop_class = _sop_class(event, "AffectedSOPClassUID")
    if sop_class == MWL_FIND:
        return worklist.handle_find(event, dimse)
    if sop_class in UPS_FIND:
        return ups.handle_find(event, dimse)
    return qr.handle_find(event, dimse)


def handle_n_create(event: Event, dimse: DimseContext) -> Reply:
    sop_class = _sop_class(event, "AffectedSOPClassUID")
    if sop_class == MPPS_SOP_CLASS:
        return mpps.handle_n_create(event, dimse)
    if sop_class == UPS_PUSH:
        return ups.handle_n_create(event, dimse)
    return _unrecognised(event, "N-CREATE", sop_class)


def handle_n_set(event: Event, dimse: DimseContext) -> Reply:
    sop_class = _sop_class(event, "RequestedSOPClassUID")
    if sop_class == MPPS_SOP_CLASS:
        return mpps.handle_n_set(event, dimse)
    if sop_class == UPS_PULL:
        return ups.handle_n_set(event, dimse)
    return _unrecognised(event, "N-SET", sop_class)


def handle_n_get(event: Event, dimse: DimseContext) -> Reply:
    sop_class = _sop_class(event, "RequestedSOPClassUID")
    if sop_class in UPS_GET:
        return ups.handle_n_get(event, dimse)
    return _unrecognised(event, "N-GET", sop_class)


def handle_n_action(event: Event, dimse: DimseContext) -> Reply:
    sop_class = _sop_class(event, "RequestedSOPClassUID")
    if sop_class == commitment.STORAGE_COMMITMENT_PUSH:
        return commitment.handle_n_action(event, dimse)
    if sop_class in UPS_ACTION:
        return ups.handle_n_action(event, dimse)
    return _unrecognised(event, "N-ACTION", sop_class)


def _unrecognised(event: Event, message: str, sop_class: str) -> Reply:
    log.info("%s from %s refused: not an operation of SOP class %s", message, peer(event.assoc), sop_class)
    return ws.response(ws.UNRECOGNIZED_OPERATION, f"{message} is not an operation of {sop_class}"), None
