"""The Modality Worklist (PS3.4 Annex K) as a view of the scheduled UPS workitems.

Scheduled work comes in one way, UPS-RS Create Workitem (PS3.18 11.4); a modality asking for its worklist is
answered from the same workitems, each read as one worklist item with one Scheduled Procedure Step. How a
workitem's attributes carry what a worklist item needs (the README's "Modality Worklist" section says the same
for a RIS feeding us):

| Modality Worklist (PS3.4 K.6.1.2.2)                     | UPS workitem (PS3.4 Table CC.2.5-3)                        |
|---------------------------------------------------------|------------------------------------------------------------|
| Patient's Name, Patient ID, Birth Date, Sex, other 0010 | the same attributes                                        |
| Accession Number, Requested Procedure ID and            | Referenced Request Sequence (0040,A370), first item         |
| Description, Study Instance UID, Requesting Physician   |                                                             |
| SPS: Scheduled Station AE Title (0040,0001)             | Scheduled Station Name Code Sequence (0040,4025) Code Value |
| SPS: Scheduled Station Name (0040,0010)                 | the same item's Code Meaning                                |
| SPS: Modality (0008,0060)                               | Scheduled Station Class Code Sequence (0040,4026) Code Value (CID 29 codes, e.g. CT) |
| SPS: Start Date and Time (0040,0002/0003)               | Scheduled Procedure Step Start DateTime (0040,4005)         |
| SPS: End Date and Time (0040,0004/0005)                 | Expected Completion DateTime (0040,4011)                    |
| SPS: Scheduled Performing Physician's Name (0040,0006)  | Scheduled Human Performers Sequence: Human Performer's Name |
| SPS: Description (0040,0007)                            | Procedure Step Label (0074,1204)                            |
| SPS: Scheduled Protocol Code Sequence (0040,0008)       | Scheduled Workitem Code Sequence (0040,4018)                |
| SPS: Location (0040,0011)                               | Scheduled Station Geographic Location Code Sequence: Meaning |
| SPS: Scheduled Procedure Step ID (0040,0009)            | made from the workitem's SOP Instance UID (16 characters)   |
| Study Instance UID, when the request names none         | made from the workitem's SOP Instance UID (2.25 form)       |

An item is on the worklist while its workitem is SCHEDULED and no MPPS has reported its procedure COMPLETED
or DISCONTINUED (mpps.py). Matching is the query model's (app/core/query/evaluate.py) on this view, so every
key a modality sends, in the sequence too, means what it means in PS3.4 K.2.2.1.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Final

from app.core.query.evaluate import matches_all
from app.core.query.model import Match, MatchKind
from app.core.records import JSONDict
from app.core.workflow import attributes as a
from app.core.workflow.records import Workitem
from app.core.workflow.ups import UpsService

_REQUEST_KEYS: Final = (
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "RequestedProcedureID",
    "RequestedProcedureDescription",
    "RequestedProcedureCodeSequence",
    "StudyInstanceUID",
    "RequestingPhysician",
    "ReasonForTheRequestedProcedure",
)
_TOP_KEYS: Final = ("SpecificCharacterSet", "AdmissionID", "ReferringPhysicianName")
_SPS_DATE_KEY: Final = "ScheduledProcedureStepSequence.ScheduledProcedureStepStartDate"
_SPS_STATION_KEY: Final = "ScheduledProcedureStepSequence.ScheduledStationAETitle"


def procedure_step_id(workitem_uid: str) -> str:
    """A Scheduled Procedure Step ID (SH, 16 characters) that names the workitem and is stable."""
    return uuid.uuid5(uuid.NAMESPACE_OID, workitem_uid).hex[:16].upper()


def study_uid_for(workitem_uid: str) -> str:
    """The Study Instance UID offered when the request names none: stable, so each query offers the same."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, 'study:' + workitem_uid).int}"


def worklist_item(workitem: Workitem) -> JSONDict:
    """The workitem as one Modality Worklist item (the table above)."""
    ups = workitem.dataset
    item: JSONDict = {k: v for k, v in ups.items() if k.startswith("0010")}
    for keyword in _TOP_KEYS:
        if a.present(ups, keyword):
            item[a.key(keyword)] = ups[a.key(keyword)]
    requests = a.items(ups, "ReferencedRequestSequence")
    request = requests[0] if requests else {}
    for keyword in _REQUEST_KEYS:
        if a.present(request, keyword):
            item[a.key(keyword)] = request[a.key(keyword)]
    if not a.text(item, "StudyInstanceUID"):
        a.put(item, "StudyInstanceUID", study_uid_for(workitem.sop_instance_uid))
    item[a.key("ScheduledProcedureStepSequence")] = {"vr": "SQ", "Value": [_step(workitem)]}
    return item


def _step(workitem: Workitem) -> JSONDict:
    ups = workitem.dataset
    step: JSONDict = {}
    station = _first(ups, "ScheduledStationNameCodeSequence")
    _put_text(step, "ScheduledStationAETitle", a.text(station, "CodeValue"))
    _put_text(step, "ScheduledStationName", a.text(station, "CodeMeaning"))
    _put_text(step, "Modality", a.text(_first(ups, "ScheduledStationClassCodeSequence"), "CodeValue"))
    start = a.text(ups, "ScheduledProcedureStepStartDateTime")
    _put_text(step, "ScheduledProcedureStepStartDate", start[:8])
    _put_text(step, "ScheduledProcedureStepStartTime", _time_of(start))
    end = a.text(ups, "ExpectedCompletionDateTime")
    if end:
        _put_text(step, "ScheduledProcedureStepEndDate", end[:8])
        _put_text(step, "ScheduledProcedureStepEndTime", _time_of(end))
    performer = _first(ups, "ScheduledHumanPerformersSequence")
    if a.present(performer, "HumanPerformerName"):
        step[a.key("ScheduledPerformingPhysicianName")] = performer[a.key("HumanPerformerName")]
    _put_text(step, "ScheduledProcedureStepDescription", a.text(ups, "ProcedureStepLabel"))
    if a.present(ups, "ScheduledWorkitemCodeSequence"):
        step[a.key("ScheduledProtocolCodeSequence")] = ups[a.key("ScheduledWorkitemCodeSequence")]
    location = a.text(_first(ups, "ScheduledStationGeographicLocationCodeSequence"), "CodeMeaning")
    _put_text(step, "ScheduledProcedureStepLocation", location)
    a.put(step, "ScheduledProcedureStepID", procedure_step_id(workitem.sop_instance_uid))
    a.put(step, "ScheduledProcedureStepStatus", "SCHEDULED")
    if a.present(ups, "CommentsOnTheScheduledProcedureStep"):
        step[a.key("CommentsOnTheScheduledProcedureStep")] = ups[a.key("CommentsOnTheScheduledProcedureStep")]
    return step


def _first(dataset: JSONDict, keyword: str) -> JSONDict:
    found = a.items(dataset, keyword)
    return found[0] if found else {}


def _put_text(dataset: JSONDict, keyword: str, value: str) -> None:
    if value:
        a.put(dataset, keyword, value)
    else:
        a.put(dataset, keyword)


def _time_of(datetime_text: str) -> str:
    """The time part of a DT, without its UTC offset."""
    rest = datetime_text[8:]
    for sign in "+-":
        rest = rest.split(sign, 1)[0]
    return rest


class WorklistService:
    """Modality Worklist Information Model - FIND (PS3.4 K.4): matching worklist items, whole."""

    def __init__(self, ups: UpsService) -> None:
        self.ups = ups

    async def find(self, keys: Sequence[Match], *, limit: int | None = None) -> list[JSONDict]:
        """The worklist items matching `keys` (the query model's Matches over the view above), at most `limit`."""
        found: list[JSONDict] = []
        async for workitem in self.ups.scan(on_worklist=True, **_narrowing(keys)):
            item = worklist_item(workitem)
            if matches_all(item, keys):
                found.append(item)
                if limit is not None and len(found) >= limit:
                    break
        return found

    async def scheduled_for(self, patient_id: str) -> list[tuple[Workitem, JSONDict]]:
        """The patient's items on the worklist, with their views (an MPPS names its step by these values)."""
        return [(w, worklist_item(w)) async for w in self.ups.scan(on_worklist=True, patient_id=patient_id or None)]


def _narrowing(keys: Sequence[Match]) -> dict[str, Any]:
    """What the store narrows on: the Scheduled Procedure Step Start Date as a range on the workitems' start
    date-time, and the Scheduled Station AE Title (the modality asking for its own work) as their station."""
    narrow: dict[str, Any] = {}
    for m in keys:
        keyword = m.attribute.keyword
        if keyword == _SPS_DATE_KEY and m.kind is MatchKind.SINGLE:
            narrow["scheduled_from"] = narrow["scheduled_to"] = m.values[0]
        elif keyword == _SPS_DATE_KEY and m.kind is MatchKind.RANGE:
            narrow["scheduled_from"], narrow["scheduled_to"] = m.values
        elif keyword == _SPS_STATION_KEY and m.kind is MatchKind.SINGLE:
            narrow["station"] = m.values[0]
    return narrow
