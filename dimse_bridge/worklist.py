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

from collections.abc import Iterator, Sequence

from pynetdicom.events import Event

from app.core.query.model import Match
from app.core.records import JSONDict
from dimse_bridge import workflow_find
from dimse_bridge.access import peer
from dimse_bridge.context import DimseContext


def handle_find(event: Event, dimse: DimseContext) -> Iterator[workflow_find.Response]:
    """C-FIND (Modality Worklist Information Model - FIND, PS3.4 K.4.1.2)."""

    def search(keys: Sequence[Match]) -> list[JSONDict]:
        return dimse.bridge.call(dimse.archive.worklist.find(keys))

    return workflow_find.serve(event, f"worklist C-FIND from {peer(event.assoc)}", search)
