"""The Modality Worklist read from scheduled workitems, and MPPS taking performed steps off it (PS3.4 K, F)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from app.core.lifecycle.completion import CompletionTracker
from app.core.lifecycle.events import EventBus, StudyCompleted
from app.core.ports import Repository
from app.core.query.evaluate import parse_matches
from app.core.records import InstanceRecord
from app.core.workflow.mpps import MppsService
from app.core.workflow.outcomes import FailureReason, WorkflowFailure
from app.core.workflow.records import PerformedStepStatus
from app.core.workflow.ups import UpsService, new_uid
from app.core.workflow.worklist import WorklistService, procedure_step_id
from tests.core.workflow.workitems import workitem_json


@pytest.fixture
def worklist(repository: Repository) -> WorklistService:
    return WorklistService(UpsService(repository))


def refused(reason: FailureReason) -> pytest.RaisesExc[WorkflowFailure]:
    return pytest.raises(WorkflowFailure, check=lambda exc: exc.reason is reason)


def sps(item: dict[str, Any], keyword_tag: str) -> Any:
    return item["00400100"]["Value"][0][keyword_tag].get("Value", [None])[0]


async def test_a_scheduled_workitem_reads_as_a_worklist_item(worklist: WorklistService) -> None:
    uid, study = new_uid(), new_uid()
    await worklist.ups.create(workitem_json(study_uid=study, station_ae="CT1", modality="CT"), uid)
    [item] = await worklist.find(())
    assert item["00100010"]["Value"][0]["Alphabetic"] == "DOE^JANE"
    assert item["00080050"]["Value"] == ["ACC-1"]
    assert item["0020000D"]["Value"] == [study]
    assert sps(item, "00400001") == "CT1"  # Scheduled Station AE Title
    assert sps(item, "00080060") == "CT"
    assert sps(item, "00400002") == "20261206"
    assert sps(item, "00400003") == "093000"
    assert sps(item, "00400009") == procedure_step_id(uid)
    assert sps(item, "00400007") == "CT chest"


async def test_the_worklist_matches_station_date_range_and_name_wildcards(worklist: WorklistService) -> None:
    await worklist.ups.create(workitem_json(patient_name="DOE^JANE", station_ae="CT1", start="20261206080000"))
    await worklist.ups.create(workitem_json(patient_name="DOE^JOHN", station_ae="MR1", modality="MR"))
    await worklist.ups.create(workitem_json(patient_name="ROE^RICH", station_ae="CT1", start="20261207080000"))

    def names(items: list[dict[str, Any]]) -> list[str]:
        return sorted(i["00100010"]["Value"][0]["Alphabetic"] for i in items)

    by_station = parse_matches({"ScheduledProcedureStepSequence.ScheduledStationAETitle": "CT1"})
    assert names(await worklist.find(by_station)) == ["DOE^JANE", "ROE^RICH"]
    today = parse_matches({"ScheduledProcedureStepSequence.ScheduledProcedureStepStartDate": "20261206"})
    assert names(await worklist.find(today)) == ["DOE^JANE", "DOE^JOHN"]
    ranged = parse_matches(
        {"ScheduledProcedureStepSequence.ScheduledProcedureStepStartDate": "20261207-", "PatientName": "*O*"}
    )
    assert names(await worklist.find(ranged)) == ["ROE^RICH"]
    assert names(await worklist.find(parse_matches({"PatientName": "doe^j*"}))) == ["DOE^JANE", "DOE^JOHN"]


async def test_a_cancelled_or_claimed_workitem_leaves_the_worklist(worklist: WorklistService) -> None:
    cancelled, claimed = new_uid(), new_uid()
    await worklist.ups.create(workitem_json(), cancelled)
    await worklist.ups.create(workitem_json(), claimed)
    await worklist.ups.request_cancellation(cancelled, {})
    await worklist.ups.change_state(claimed, "IN PROGRESS", new_uid())
    assert await worklist.find(()) == []


def mpps_json(study: str, step_id: str, status: str = "IN PROGRESS") -> dict[str, Any]:
    return {
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "DOE^JANE"}]},
        "00100020": {"vr": "LO", "Value": ["PID-1"]},
        "00400252": {"vr": "CS", "Value": [status]},
        "00400253": {"vr": "SH", "Value": ["PPS-1"]},
        "00400244": {"vr": "DA", "Value": ["20261206"]},
        "00400245": {"vr": "TM", "Value": ["093100"]},
        "00080060": {"vr": "CS", "Value": ["CT"]},
        "00400270": {
            "vr": "SQ",
            "Value": [
                {
                    "0020000D": {"vr": "UI", "Value": [study]},
                    "00400009": {"vr": "SH", "Value": [step_id]},
                    "00080050": {"vr": "SH", "Value": ["ACC-1"]},
                }
            ],
        },
    }


FINISHED = {
    "00400252": {"vr": "CS", "Value": ["COMPLETED"]},
    "00400250": {"vr": "DA", "Value": ["20261206"]},
    "00400251": {"vr": "TM", "Value": ["094500"]},
}


async def test_a_completed_mpps_takes_its_step_off_the_worklist_and_completes_its_study_at_once(
    repository: Repository, worklist: WorklistService, instance_record: Any
) -> None:
    bus = EventBus()
    completed: list[str] = []

    async def heard(event: StudyCompleted) -> None:
        completed.append(event.study_instance_uid)

    bus.subscribe(heard, StudyCompleted)
    completion = CompletionTracker(repository, bus, quiet_seconds=3600)
    mpps = MppsService(repository, worklist, completion)
    uid, study = new_uid(), new_uid()
    await worklist.ups.create(workitem_json(study_uid=study), uid)
    record: InstanceRecord = instance_record(StudyInstanceUID=study)
    await repository.store_instance(record)

    step_uid = new_uid()
    step = await mpps.create(step_uid, mpps_json(study, procedure_step_id(uid)))
    assert step.status is PerformedStepStatus.IN_PROGRESS
    assert len(await worklist.find(())) == 1  # still scheduled while it is being performed

    with refused(FailureReason.MISSING_ATTRIBUTE):  # COMPLETED needs its end date and time
        await mpps.update(step_uid, {"00400252": {"vr": "CS", "Value": ["COMPLETED"]}})
    before = time.monotonic()
    done = await mpps.update(step_uid, FINISHED)
    assert done.status is PerformedStepStatus.COMPLETED
    assert await worklist.find(()) == []
    assert completed == [study]  # not after an hour of quiet: now
    assert time.monotonic() - before < 60
    with refused(FailureReason.MAY_NO_LONGER_BE_UPDATED):
        await mpps.update(step_uid, FINISHED)
    assert [s.sop_instance_uid for s in await mpps.list(study_instance_uid=study)] == [step_uid]


async def test_mpps_create_refuses_what_the_standard_refuses(repository: Repository, worklist: WorklistService) -> None:
    mpps = MppsService(repository, worklist)
    study, uid = new_uid(), new_uid()
    await mpps.create(uid, mpps_json(study, "X"))
    with refused(FailureReason.DUPLICATE):
        await mpps.create(uid, mpps_json(study, "X"))
    with refused(FailureReason.INVALID_ATTRIBUTE_VALUE):
        await mpps.create(new_uid(), mpps_json(study, "X", status="COMPLETED"))
    no_study = mpps_json(study, "X")
    del no_study["00400270"]
    with refused(FailureReason.MISSING_ATTRIBUTE):
        await mpps.create(new_uid(), no_study)
    with refused(FailureReason.INVALID_ATTRIBUTE_VALUE):  # N-SET may not change who was scheduled
        await mpps.update(uid, {"00100020": {"vr": "LO", "Value": ["OTHER"]}})
    with refused(FailureReason.NO_SUCH_INSTANCE):
        await mpps.update(new_uid(), FINISHED)
