"""Modality Worklist SCP (PS3.4 Annex K, Modality Worklist Information Model - FIND, 1.2.840.10008.5.1.4.31).

A modality asks for the procedures scheduled on it (its AE title in Scheduled Station AE Title, a date, a
modality, a patient) and gets one worklist item per matching scheduled step. The worklist is a view of the
UPS workitems that are SCHEDULED and not yet reported performed (app/core/workflow/worklist.py has the mapping),
so work scheduled through UPS-RS or UPS DIMSE N-CREATE is offered here at once, and leaves when it is claimed,
cancelled, or an MPPS reports it done.

The handler is a generator, pynetdicom's C-FIND protocol: one call to `WorklistService.find` through the bridge,
then one pending response per item holding only the identifier's keys (PS3.4 K.6.1.2.2, return keys; universal
matching of zero-length keys, C.2.2.2.3), then pynetdicom's Success. The rules shared with the UPS C-FIND and
the statuses (0xA900, 0xC000, 0xA700, 0xFE00, Table K.4-2) are in workflow_find.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from pynetdicom.events import Event

from dimse_bridge import workflow_find
from dimse_bridge.access import peer
from dimse_bridge.context import DimseContext

log = logging.getLogger(__name__)


def handle_find(event: Event, dimse: DimseContext) -> Iterator[workflow_find.Response]:
    """C-FIND (Modality Worklist Information Model - FIND, PS3.4 K.4.1.2)."""
    who = f"worklist C-FIND from {peer(event.assoc)}"
    try:
        request = workflow_find.parse(event)
    except workflow_find.FindRefused as exc:
        log.warning("%s refused (0x%04X): %s", who, exc.code, exc)
        yield workflow_find.refusal(exc.code, str(exc), exc.offending)
        return
    if request.ignored:
        log.info("%s: keys not supported for matching: %s", who, ", ".join(request.ignored))
    try:
        items = dimse.bridge.call(dimse.archive.worklist.find(request.keys))
    except Exception as exc:  # the archive out of reach, the workflow store failing
        code = workflow_find.search_failure(exc)
        log.warning("%s failed (0x%04X): %s", who, code, exc)
        yield workflow_find.refusal(code, str(exc) or type(exc).__name__)
        return
    yield from workflow_find.answers(event, request, items, who)
