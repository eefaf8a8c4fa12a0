"""Modality Performed Procedure Step SCP (PS3.4 Annex F, SOP class 1.2.840.10008.3.1.2.3.3).

A modality reports what it does with the scheduled step it took from the worklist: N-CREATE when it starts
(IN PROGRESS), N-SET as it goes and when it ends (COMPLETED or DISCONTINUED). Each message is one call to the
MppsService (app/core/workflow/mpps.py), which keeps the step and, once it is final, takes the scheduled step
it names off the worklist and ends the quiet wait of the studies it names (the study-completed event fires
then, not STUDY_QUIET_SECONDS after the last instance).

Statuses (PS3.4 F.7.2.1.3, F.7.2.2.3; dimse_bridge/workflow_status.py): 0111 Duplicate SOP Instance, 0112 No
such SOP Instance, 0106 Invalid attribute value, 0120 Missing attribute, and for an N-SET on a step that is
final already 0110 Processing failure with Error ID (0000,0903) A710, "Performed Procedure Step Object may no
longer be updated". The archive out of reach is 0110 as well. Each refusal is logged once with its reason
and sent as Error Comment.

The writes are not cancelled when the bridge times out: a final N-SET stopped half-way would leave the step
COMPLETED with its worklist item still offered.
"""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.dimse_primitives import N_CREATE, N_SET
from pynetdicom.events import Event

from app.core.workflow.outcomes import WorkflowFailure
from dimse_bridge import datasets, status
from dimse_bridge import workflow_status as ws
from dimse_bridge.access import peer
from dimse_bridge.context import DimseContext

log = logging.getLogger(__name__)

Reply = tuple[int | Dataset, Dataset | None]


def handle_n_create(event: Event, dimse: DimseContext) -> Reply:
    """N-CREATE (PS3.4 F.7.2.1): a new performed procedure step, IN PROGRESS."""
    request = event.request
    assert isinstance(request, N_CREATE)  # bound through dispatch.handle_n_create for N-CREATE only
    given = str(request.AffectedSOPInstanceUID or "").strip()
    # The SCU normally names the instance; when it does not, the SCP does and answers with it (PS3.7 10.1.5).
    uid = given or generate_uid(prefix=None)
    who = f"MPPS N-CREATE {uid} from {peer(event.assoc)}"
    try:
        attributes = datasets.to_json(datasets.decoded(lambda: event.attribute_list, "attribute list"))
    except datasets.UnreadableDataSet as exc:
        log.warning("%s refused: %s", who, exc)
        return ws.response(ws.INVALID_ATTRIBUTE_VALUE, str(exc)), None
    try:
        dimse.bridge.call(dimse.archive.mpps.create(uid, attributes), cancel_on_timeout=False)
    except Exception as exc:
        return _refused(who, exc), None
    if given:
        return status.SUCCESS, None
    reply = Dataset()
    reply.AffectedSOPInstanceUID = uid  # pynetdicom moves it into the N-CREATE-RSP command
    return status.SUCCESS, reply


def handle_n_set(event: Event, dimse: DimseContext) -> Reply:
    """N-SET (PS3.4 F.7.2.2): change a step while it is IN PROGRESS, or end it."""
    request = event.request
    assert isinstance(request, N_SET)  # bound through dispatch.handle_n_set for N-SET only
    uid = str(request.RequestedSOPInstanceUID or "").strip()
    who = f"MPPS N-SET {uid} from {peer(event.assoc)}"
    try:
        changes = datasets.to_json(datasets.decoded(lambda: event.modification_list, "modification list"))
    except datasets.UnreadableDataSet as exc:
        log.warning("%s refused: %s", who, exc)
        return ws.response(ws.INVALID_ATTRIBUTE_VALUE, str(exc)), None
    try:
        step = dimse.bridge.call(dimse.archive.mpps.update(uid, changes), cancel_on_timeout=False)
    except Exception as exc:
        return _refused(who, exc), None
    log.debug("%s: %s", who, step.status.value)
    return status.SUCCESS, None


def _refused(who: str, exc: Exception) -> Dataset:
    answer = ws.mpps_refusal(exc)
    level = logging.INFO if isinstance(exc, WorkflowFailure) else logging.WARNING
    log.log(level, "%s refused (0x%04X): %s", who, int(answer.Status), exc)
    return answer
