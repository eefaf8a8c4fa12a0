"""The UPS state machine (PS3.4 CC.1.1) as both doors see it, on each repository."""

from __future__ import annotations

import asyncio

import pytest

from app.core.ports import Repository
from app.core.query.evaluate import parse_matches
from app.core.workflow.outcomes import FailureReason, WorkflowFailure, WorkflowWarning
from app.core.workflow.records import GLOBAL_SUBSCRIPTION, EventType, ProcedureStepState, UpsEvent
from app.core.workflow.ups import UpsService, new_uid
from tests.core.workflow.workitems import performed_procedure, workitem_json


class Recorder:
    """An event channel that reaches every AE and remembers what it was given."""

    def __init__(self) -> None:
        self.events: list[tuple[str, UpsEvent]] = []

    async def offer(self, ae_title: str, event: UpsEvent) -> bool:
        self.events.append((ae_title, event))
        return True


@pytest.fixture
def ups(repository: Repository) -> UpsService:
    return UpsService(repository)


def refused(reason: FailureReason) -> pytest.RaisesExc[WorkflowFailure]:
    return pytest.raises(WorkflowFailure, check=lambda exc: exc.reason is reason)


async def test_a_created_workitem_is_scheduled_and_keeps_what_was_sent(ups: UpsService) -> None:
    uid = new_uid()
    workitem, modified = await ups.create(workitem_json(), uid)
    assert workitem.state is ProcedureStepState.SCHEDULED
    assert modified  # Worklist Label was filled in (PS3.4 CC.2.5.1.3.1)
    held = await ups.get(uid)
    assert held.dataset["00100010"]["Value"][0]["Alphabetic"] == "DOE^JANE"
    assert held.dataset["00741000"]["Value"] == ["SCHEDULED"]
    assert held.dataset["00080018"]["Value"] == [uid]


async def test_create_refuses_a_duplicate_a_wrong_state_and_a_missing_attribute(ups: UpsService) -> None:
    uid = new_uid()
    await ups.create(workitem_json(), uid)
    with refused(FailureReason.DUPLICATE):
        await ups.create(workitem_json(), uid)
    in_progress = workitem_json()
    in_progress["00741000"]["Value"] = ["IN PROGRESS"]
    with refused(FailureReason.NOT_SCHEDULED_ON_CREATE):
        await ups.create(in_progress)
    no_label = workitem_json()
    del no_label["00741204"]
    with refused(FailureReason.MISSING_ATTRIBUTE):
        await ups.create(no_label)
    with refused(FailureReason.INVALID_ATTRIBUTE_VALUE):
        await ups.create(workitem_json(), "not a uid")


async def test_a_claimed_workitem_is_changed_only_with_its_transaction_uid(ups: UpsService) -> None:
    uid, transaction = new_uid(), new_uid()
    await ups.create(workitem_json(), uid)
    assert await ups.change_state(uid, "IN PROGRESS", transaction) is None
    with refused(FailureReason.ALREADY_IN_PROGRESS):
        await ups.change_state(uid, "IN PROGRESS", new_uid())
    with refused(FailureReason.WRONG_TRANSACTION_UID):
        await ups.update(uid, performed_procedure(), None)
    with refused(FailureReason.WRONG_TRANSACTION_UID):
        await ups.change_state(uid, "COMPLETED", new_uid())
    with refused(FailureReason.FINAL_STATE_REQUIREMENTS):
        await ups.change_state(uid, "COMPLETED", transaction)
    await ups.update(uid, performed_procedure(), transaction)
    assert await ups.change_state(uid, "COMPLETED", transaction) is None
    assert await ups.change_state(uid, "COMPLETED", transaction) is WorkflowWarning.ALREADY_COMPLETED
    with refused(FailureReason.MAY_NO_LONGER_BE_UPDATED):
        await ups.update(uid, performed_procedure(), transaction)
    held = await ups.get(uid)
    assert held.state is ProcedureStepState.COMPLETED
    assert "00081195" not in held.dataset  # the Transaction UID is never returned (PS3.4 CC.2.6.3)


async def test_state_changes_the_machine_does_not_allow_are_refused(ups: UpsService) -> None:
    uid = new_uid()
    await ups.create(workitem_json(), uid)
    with refused(FailureReason.MAY_ONLY_BECOME_SCHEDULED_VIA_CREATE):
        await ups.change_state(uid, "SCHEDULED", new_uid())
    with refused(FailureReason.NOT_IN_PROGRESS):
        await ups.change_state(uid, "COMPLETED", new_uid())
    with refused(FailureReason.INVALID_ATTRIBUTE_VALUE):
        await ups.change_state(uid, "DONE", new_uid())
    with refused(FailureReason.NO_SUCH_WORKITEM):
        await ups.change_state(new_uid(), "IN PROGRESS", new_uid())


async def test_two_performers_racing_to_claim_one_workitem_cannot_both_win(ups: UpsService) -> None:
    uid = new_uid()
    await ups.create(workitem_json(), uid)
    results = await asyncio.gather(
        *(ups.change_state(uid, "IN PROGRESS", new_uid()) for _ in range(8)), return_exceptions=True
    )
    winners = [r for r in results if r is None]
    losers = [r for r in results if isinstance(r, WorkflowFailure)]
    assert len(winners) == 1
    assert {loser.reason for loser in losers} == {FailureReason.ALREADY_IN_PROGRESS}


async def test_cancelling_a_scheduled_workitem_cancels_it_and_an_in_progress_one_asks_its_performer(
    ups: UpsService,
) -> None:
    recorder = Recorder()
    ups.channels.append(recorder)
    scheduled, claimed, transaction = new_uid(), new_uid(), new_uid()
    await ups.create(workitem_json(), scheduled)
    await ups.create(workitem_json(), claimed)
    await ups.change_state(claimed, "IN PROGRESS", transaction)
    await ups.subscribe("WATCHER", claimed)

    assert await ups.request_cancellation(scheduled, {}) is None
    assert (await ups.get(scheduled)).state is ProcedureStepState.CANCELED
    assert await ups.request_cancellation(scheduled, {}) is WorkflowWarning.ALREADY_CANCELED

    reason = {"00741238": {"vr": "LT", "Value": ["patient left"]}}
    assert await ups.request_cancellation(claimed, reason, requesting_ae="RIS") is None
    assert (await ups.get(claimed)).state is ProcedureStepState.IN_PROGRESS
    ae, event = recorder.events[-1]
    assert (ae, event.event_type) == ("WATCHER", EventType.CANCEL_REQUESTED)
    assert event.information["00741238"]["Value"] == ["patient left"]
    assert event.information["00741236"]["Value"] == ["RIS"]


async def test_a_global_subscriber_hears_of_new_workitems_and_each_state_change(ups: UpsService) -> None:
    recorder = Recorder()
    ups.channels.append(recorder)
    await ups.subscribe("WATCHER", GLOBAL_SUBSCRIPTION)
    uid, transaction = new_uid(), new_uid()
    await ups.create(workitem_json(), uid)
    await ups.change_state(uid, "IN PROGRESS", transaction)
    states = [e.information["00741000"]["Value"][0] for ae, e in recorder.events if e.workitem_uid == uid]
    assert states == ["SCHEDULED", "IN PROGRESS"]

    await ups.suspend_global("WATCHER")
    await ups.create(workitem_json(), new_uid())
    assert recorder.events[-1][1].workitem_uid == uid  # no new workitem was added after the suspension
    await ups.update(uid, performed_procedure(), transaction)
    await ups.change_state(uid, "COMPLETED", transaction)  # but the ones added keep reporting
    assert recorder.events[-1][1].information["00741000"]["Value"] == ["COMPLETED"]

    await ups.unsubscribe("WATCHER", GLOBAL_SUBSCRIPTION)
    assert await ups.store.subscriptions(ae_title="WATCHER") == []


async def test_a_filtered_global_subscription_adds_only_matching_workitems(ups: UpsService) -> None:
    recorder = Recorder()
    ups.channels.append(recorder)
    await ups.subscribe("CT-ONLY", "1.2.840.10008.5.1.4.34.5.1", filter_keys={"ScheduledStationClassCodeSequence.CodeValue": "CT"})
    ct, mr = new_uid(), new_uid()
    await ups.create(workitem_json(modality="CT"), ct)
    await ups.create(workitem_json(modality="MR"), mr)
    assert {e.workitem_uid for _, e in recorder.events} == {ct}


async def test_search_matches_with_the_query_models_rules_and_pages(ups: UpsService) -> None:
    for i in range(5):
        await ups.create(workitem_json(patient_name=f"DOE^{i}", start=f"2026120{i + 1}090000"))
    await ups.create(workitem_json(patient_name="SMITH^A"))
    found = await ups.search(parse_matches({"PatientName": "DOE*"}))
    assert len(found) == 5
    in_range = await ups.search(parse_matches({"ScheduledProcedureStepStartDateTime": "20261202-20261203"}))
    assert sorted(w.dataset["00100010"]["Value"][0]["Alphabetic"] for w in in_range) == ["DOE^1", "DOE^2"]
    first = await ups.search(parse_matches({"PatientName": "DOE*"}), limit=2)
    rest = await ups.search(parse_matches({"PatientName": "DOE*"}), offset=2)
    assert len(first) == 2 and len(rest) == 3
    assert not {w.sop_instance_uid for w in first} & {w.sop_instance_uid for w in rest}


async def test_a_cancellation_request_nobody_can_hear_is_refused(ups: UpsService) -> None:
    """PS3.4 CC.2.2: the performer of an IN PROGRESS workitem decides; if no subscriber can be told, C312."""
    uid = new_uid()
    await ups.create(workitem_json(), uid)
    await ups.change_state(uid, "IN PROGRESS", new_uid())
    with refused(FailureReason.PERFORMER_UNREACHABLE):
        await ups.request_cancellation(uid, {})
    assert (await ups.get(uid)).state is ProcedureStepState.IN_PROGRESS


async def test_unsubscribing_says_whether_there_was_a_subscription(ups: UpsService) -> None:
    uid = new_uid()
    await ups.create(workitem_json(), uid)
    await ups.subscribe("WATCHER", uid)
    assert await ups.unsubscribe("WATCHER", uid)
    assert not await ups.unsubscribe("WATCHER", uid)
    assert not await ups.unsubscribe("WATCHER", GLOBAL_SUBSCRIPTION)


async def test_a_workitem_cancelled_before_it_started_warns_a_second_cancel(ups: UpsService) -> None:
    """No Transaction UID was ever given to it, so there is none to check (PS3.4 CC.2.1.3: B304)."""
    uid = new_uid()
    await ups.create(workitem_json(), uid)
    await ups.request_cancellation(uid, {})
    assert await ups.change_state(uid, "CANCELED", new_uid()) is WorkflowWarning.ALREADY_CANCELED
