"""The workflow part of the Repository contract (WorkitemStore, PerformedStepStore, SubscriptionStore) and
`pending_completion`, on SQLite and MongoDB alike.

Uses the `repository` fixture of tests/conftest.py (parametrised over both stores). The data is kept to a few
records per test: the MongoDB half runs over SecantusDB, which is slow.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.core.ports import Repository
from app.core.records import JSONDict
from app.core.workflow.records import (
    PerformedProcedureStep,
    PerformedStepStatus,
    ProcedureStepState,
    Subscription,
    Workitem,
)
from tests.repository.conftest import Factory, uid

SCHEDULED = ProcedureStepState.SCHEDULED
IN_PROGRESS = ProcedureStepState.IN_PROGRESS
COMPLETED = ProcedureStepState.COMPLETED
CANCELED = ProcedureStepState.CANCELED


def dataset(sop: str, *, state: str = "SCHEDULED", start: str = "", patient: str = "") -> JSONDict:
    """A UPS data set in DICOM JSON with what a store must keep intact: a PN object with its three groups,
    sequences nested two deep, an empty sequence, an attribute without a value, numbers."""
    return {
        "00080018": {"vr": "UI", "Value": [sop]},
        "00100010": {
            "vr": "PN",
            "Value": [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}],
        },
        "00100020": {"vr": "LO", "Value": [patient]} if patient else {"vr": "LO"},
        "00404005": {"vr": "DT", "Value": [start]} if start else {"vr": "DT"},
        "00404021": {
            "vr": "SQ",
            "Value": [{"00404026": {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": ["CT01"]}}]}}],
        },
        "00404018": {"vr": "SQ", "Value": []},
        "00741000": {"vr": "CS", "Value": [state]},
        "00741200": {"vr": "US", "Value": [150]},
        "00741212": {"vr": "FD", "Value": [0.1, -2.5e-7]},
    }


def workitem(
    n: int,
    state: ProcedureStepState = SCHEDULED,
    *,
    start: str = "",
    patient: str = "",
    performed: bool = False,
    station: str = "",
) -> Workitem:
    sop = uid(60, n)
    return Workitem(
        sop_instance_uid=sop,
        state=state,
        dataset=dataset(sop, state=state.value, start=start, patient=patient),
        performed=performed,
        scheduled_start=start,
        patient_id=patient,
        station=station,
    )


def step(n: int, *studies: str, created_at: float = 1000.0) -> PerformedProcedureStep:
    sop = uid(70, n)
    return PerformedProcedureStep(
        sop_instance_uid=sop,
        status=PerformedStepStatus.IN_PROGRESS,
        dataset={"00080018": {"vr": "UI", "Value": [sop]}, "00400252": {"vr": "CS", "Value": ["IN PROGRESS"]}},
        study_instance_uids=studies,
        created_at=created_at,
        updated_at=created_at,
    )


def uids(found: list[Workitem]) -> list[str]:
    return [w.sop_instance_uid for w in found]


# --------------------------------------------------------------------------- workitems


async def test_a_created_workitem_reads_back_whole_at_version_1(repository: Repository) -> None:
    item = workitem(1, start="20261206093000", patient="P1")
    assert await repository.get_workitem(item.sop_instance_uid) is None
    assert await repository.create_workitem(item) is True
    stored = await repository.get_workitem(item.sop_instance_uid)
    assert stored == replace(item, version=1)
    assert stored is not None and stored.dataset == dataset(item.sop_instance_uid, start="20261206093000", patient="P1")
    assert list(stored.dataset) == list(item.dataset)  # the keys keep their order


async def test_creating_a_held_workitem_again_writes_nothing(repository: Repository) -> None:
    first = workitem(1, patient="P1")
    assert await repository.create_workitem(first)
    assert await repository.create_workitem(workitem(1, IN_PROGRESS, patient="OTHER")) is False
    assert await repository.get_workitem(first.sop_instance_uid) == replace(first, version=1)


async def test_a_replace_over_the_read_version_writes_the_next_one(repository: Repository) -> None:
    item = workitem(1, start="20261206093000")
    await repository.create_workitem(item)
    claimed = replace(item, state=IN_PROGRESS, transaction_uid=uid(99, 1), dataset=dataset(item.sop_instance_uid,
                      state="IN PROGRESS"), scheduled_start="")  # fmt: skip
    assert await repository.replace_workitem(claimed, 1) is True
    assert await repository.get_workitem(item.sop_instance_uid) == replace(claimed, version=2)


async def test_a_stale_version_does_not_overwrite_a_newer_workitem(repository: Repository) -> None:
    item = workitem(1)
    await repository.create_workitem(item)
    newer = replace(item, state=IN_PROGRESS, transaction_uid=uid(99, 1))
    assert await repository.replace_workitem(newer, 1)
    stale = replace(item, state=CANCELED)
    assert await repository.replace_workitem(stale, 1) is False
    assert await repository.get_workitem(item.sop_instance_uid) == replace(newer, version=2)
    # Nor is a workitem that is not held written by a replace.
    assert await repository.replace_workitem(workitem(2), 0) is False
    assert await repository.get_workitem(uid(60, 2)) is None


async def test_of_racing_claims_on_one_version_exactly_one_wins(repository: Repository) -> None:
    item = workitem(1)
    await repository.create_workitem(item)
    claims = [replace(item, state=IN_PROGRESS, transaction_uid=uid(99, n)) for n in range(6)]
    won = await asyncio.gather(*(repository.replace_workitem(claim, 1) for claim in claims))
    assert won.count(True) == 1
    stored = await repository.get_workitem(item.sop_instance_uid)
    assert stored == replace(claims[won.index(True)], version=2)


async def test_workitems_narrow_by_state_patient_and_page_by_uid(repository: Repository) -> None:
    items = [
        workitem(1, SCHEDULED, patient="P1"),
        workitem(2, IN_PROGRESS, patient="P1"),
        workitem(3, COMPLETED, patient="P2"),
        workitem(4, SCHEDULED, patient="P2"),
        workitem(5, CANCELED),
    ]
    for item in items:
        assert await repository.create_workitem(item)
    everything = sorted(w.sop_instance_uid for w in items)
    assert uids(await repository.find_workitems()) == everything
    assert uids(await repository.find_workitems(states=["SCHEDULED"])) == [uid(60, 1), uid(60, 4)]
    assert uids(await repository.find_workitems(states=["COMPLETED", "CANCELED"])) == [uid(60, 3), uid(60, 5)]
    assert await repository.find_workitems(states=[]) == []
    assert uids(await repository.find_workitems(patient_id="P1")) == [uid(60, 1), uid(60, 2)]
    assert uids(await repository.find_workitems(patient_id="")) == [uid(60, 5)]
    assert uids(await repository.find_workitems(states=["SCHEDULED"], patient_id="P2")) == [uid(60, 4)]
    # Keyset paging: after the last one seen, at most `limit`.
    assert uids(await repository.find_workitems(limit=2)) == everything[:2]
    assert uids(await repository.find_workitems(after=everything[1], limit=2)) == everything[2:4]
    assert uids(await repository.find_workitems(after=everything[-1])) == []
    assert await repository.find_workitems(limit=0) == []


async def test_workitems_narrow_by_their_scheduled_station(repository: Repository) -> None:
    for item in (workitem(1, station="CT1"), workitem(2, station="MR1"), workitem(3, station="CT1", performed=True)):
        assert await repository.create_workitem(item)
    assert uids(await repository.find_workitems(station="CT1")) == [uid(60, 1), uid(60, 3)]
    assert uids(await repository.find_workitems(station="CT1", on_worklist=True)) == [uid(60, 1)]
    [held] = await repository.find_workitems(station="MR1")
    assert held.station == "MR1"


async def test_the_worklist_holds_scheduled_workitems_not_yet_performed(repository: Repository) -> None:
    scheduled, performed, started = workitem(1), workitem(2, performed=True), workitem(3, IN_PROGRESS)
    for item in (scheduled, performed, started):
        await repository.create_workitem(item)
    assert uids(await repository.find_workitems(on_worklist=True)) == [uid(60, 1)]
    assert uids(await repository.find_workitems(on_worklist=False)) == [uid(60, 2), uid(60, 3)]
    # The flag follows every replace: performed leaves the worklist, so does a claim.
    assert await repository.replace_workitem(replace(scheduled, performed=True), 1)
    assert await repository.find_workitems(on_worklist=True) == []
    assert await repository.replace_workitem(replace(started, state=SCHEDULED), 1)
    assert uids(await repository.find_workitems(on_worklist=True)) == [uid(60, 3)]


async def test_a_scheduled_range_end_takes_every_time_within_its_own_precision(repository: Repository) -> None:
    starts = ["20261205235959", "20261206000000", "20261206121500", "20261206235959.999", "20261207000000", ""]
    for n, start in enumerate(starts):
        await repository.create_workitem(workitem(n, start=start))

    async def between(start: str | None, end: str | None) -> list[str]:
        found = await repository.find_workitems(scheduled_from=start, scheduled_to=end)
        return sorted(w.scheduled_start for w in found)

    assert await between("20261206", "20261206") == ["20261206000000", "20261206121500", "20261206235959.999"]
    assert await between(None, "2026120612") == ["", "20261205235959", "20261206000000", "20261206121500"]
    assert await between("20261206121500", None) == ["20261206121500", "20261206235959.999", "20261207000000"]
    assert await between("20261206", "202612061214") == ["20261206000000"]
    assert await between(None, "") == sorted(starts)  # an empty end bounds nothing
    assert await between("2027", None) == []


WORKLIST_STARTS = ["", "20261205", "20261206000000", "20261206121500", "202612061215", "20261206235959"]
CATALOGUE = [
    workitem(n, state, start=start, patient=patient, performed=performed)
    for n, (state, start, patient, performed) in enumerate(
        [
            (SCHEDULED, "20261206121500", "P1", False),
            (SCHEDULED, "20261206000000", "P2", True),
            (IN_PROGRESS, "20261206235959", "P1", False),
            (COMPLETED, "", "P2", False),
            (SCHEDULED, "202612061215", "", False),
            (CANCELED, "20261205", "P1", False),
            (SCHEDULED, "20261207", "P1", False),
            (SCHEDULED, "20261206", "P2", False),
            (IN_PROGRESS, "20261206121500", "P2", True),
            (SCHEDULED, "", "P1", False),
            (SCHEDULED, "20261206235959", "P1", False),
        ]
    )
]
bounds = st.one_of(st.none(), st.sampled_from(["", "2026", "20261206", "2026120612", "202612061215", "20261207"]))


def _expected(workitems: list[Workitem], narrowing: dict[str, Any]) -> list[str]:
    def keeps(w: Workitem) -> bool:
        states, frm, to = narrowing["states"], narrowing["scheduled_from"], narrowing["scheduled_to"]
        return (
            (states is None or w.state.value in states)
            and (narrowing["on_worklist"] is None or w.on_worklist == narrowing["on_worklist"])
            and (frm is None or w.scheduled_start >= frm)
            and (to is None or w.scheduled_start[: len(to)] <= to)
            and (narrowing["patient_id"] is None or w.patient_id == narrowing["patient_id"])
        )

    return sorted(w.sop_instance_uid for w in workitems if keeps(w))


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    states=st.one_of(st.none(), st.lists(st.sampled_from([s.value for s in ProcedureStepState]), unique=True)),
    on_worklist=st.one_of(st.none(), st.booleans()),
    scheduled_from=bounds,
    scheduled_to=bounds,
    patient_id=st.one_of(st.none(), st.sampled_from(["P1", "P2", ""])),
    page=st.integers(min_value=1, max_value=4),
)
async def test_pages_of_a_narrowed_search_cover_exactly_the_matching_workitems(
    repository: Repository,
    states: list[str] | None,
    on_worklist: bool | None,
    scheduled_from: str | None,
    scheduled_to: str | None,
    patient_id: str | None,
    page: int,
) -> None:
    """Read-only over one catalogue (written by the first example; a create of a held one writes nothing)."""
    for item in CATALOGUE:
        await repository.create_workitem(item)
    narrowing: dict[str, Any] = dict(
        states=states, on_worklist=on_worklist, scheduled_from=scheduled_from, scheduled_to=scheduled_to,
        patient_id=patient_id,
    )  # fmt: skip
    seen: list[str] = []
    after: str | None = None
    while True:
        found = await repository.find_workitems(**narrowing, after=after, limit=page)
        assert len(found) <= page
        seen.extend(uids(found))
        if len(found) < page:
            break
        after = found[-1].sop_instance_uid
    assert seen == _expected(CATALOGUE, narrowing)


# --------------------------------------------------------------------------- performed procedure steps


async def test_a_performed_step_reads_back_with_its_studies_in_order(repository: Repository) -> None:
    created = step(1, uid(80, 2), uid(80, 1))
    assert await repository.get_performed_step(created.sop_instance_uid) is None
    assert await repository.create_performed_step(created) is True
    assert await repository.get_performed_step(created.sop_instance_uid) == replace(created, version=1)
    assert await repository.create_performed_step(step(1, uid(80, 3))) is False
    assert await repository.get_performed_step(created.sop_instance_uid) == replace(created, version=1)


async def test_a_stale_version_does_not_overwrite_a_newer_performed_step(repository: Repository) -> None:
    created = step(1, uid(80, 1))
    await repository.create_performed_step(created)
    done = replace(created, status=PerformedStepStatus.COMPLETED, study_instance_uids=(uid(80, 2),),
                   updated_at=2000.0)  # fmt: skip
    assert await repository.replace_performed_step(done, 1) is True
    assert await repository.replace_performed_step(replace(created, updated_at=3000.0), 1) is False
    assert await repository.get_performed_step(created.sop_instance_uid) == replace(done, version=2)
    # The studies it names now are the ones it is listed under.
    assert await repository.list_performed_steps(study_instance_uid=uid(80, 1)) == []
    assert await repository.list_performed_steps(study_instance_uid=uid(80, 2)) == [replace(done, version=2)]


async def test_performed_steps_are_listed_newest_first_optionally_by_study(repository: Repository) -> None:
    study_a, study_b = uid(80, 1), uid(80, 2)
    steps = [step(1, study_a, created_at=100.0), step(2, study_b, created_at=300.0),
             step(3, study_a, study_b, created_at=200.0)]  # fmt: skip
    for s in steps:
        await repository.create_performed_step(s)

    async def listed(**narrowing: Any) -> list[str]:
        return [s.sop_instance_uid for s in await repository.list_performed_steps(**narrowing)]

    assert await listed() == [uid(70, 2), uid(70, 3), uid(70, 1)]
    assert await listed(study_instance_uid=study_a) == [uid(70, 3), uid(70, 1)]
    assert await listed(study_instance_uid=study_b) == [uid(70, 2), uid(70, 3)]
    assert await listed(study_instance_uid=uid(80, 9)) == []
    assert await listed(offset=1, limit=1) == [uid(70, 3)]
    assert await listed(limit=0) == []


# --------------------------------------------------------------------------- subscriptions


async def test_a_subscription_put_again_replaces_the_one_of_its_ae_and_workitem(repository: Repository) -> None:
    await repository.put_subscription(Subscription("VIEWER", uid(60, 1)))
    await repository.put_subscription(Subscription("VIEWER", uid(60, 1), deletion_lock=True))
    assert await repository.subscriptions() == [Subscription("VIEWER", uid(60, 1), deletion_lock=True)]


async def test_a_global_subscription_keeps_its_filter_and_suspension(repository: Repository) -> None:
    keys = {"ScheduledStationNameCodeSequence.CodeValue": "CT01", "00100020": "P1", "PatientName": "DOE*"}
    filtered = Subscription("RIS", None, deletion_lock=True, filter=keys)
    await repository.put_subscription(filtered)
    assert await repository.subscriptions() == [filtered]
    suspended = replace(filtered, suspended=True)
    await repository.put_subscription(suspended)
    assert await repository.subscriptions(global_only=True) == [suspended]
    await repository.put_subscription(Subscription("RIS", None, filter={}))
    assert await repository.subscriptions() == [Subscription("RIS", None, filter={})]


async def test_subscriptions_are_found_by_ae_by_workitem_or_as_global_in_order(repository: Repository) -> None:
    one, two = uid(60, 1), uid(60, 2)
    held = [
        Subscription("VIEWER", two),
        Subscription("RIS", one),
        Subscription("VIEWER", None),
        Subscription("RIS", None, filter={"00100020": "P1"}),
        Subscription("VIEWER", one),
    ]
    for subscription in held:
        await repository.put_subscription(subscription)

    async def keys(**narrowing: Any) -> list[tuple[str, str | None]]:
        return [(s.ae_title, s.workitem_uid) for s in await repository.subscriptions(**narrowing)]

    assert await keys() == [("RIS", None), ("RIS", one), ("VIEWER", None), ("VIEWER", one), ("VIEWER", two)]
    assert await keys(ae_title="VIEWER") == [("VIEWER", None), ("VIEWER", one), ("VIEWER", two)]
    assert await keys(workitem_uid=one) == [("RIS", one), ("VIEWER", one)]
    assert await keys(global_only=True) == [("RIS", None), ("VIEWER", None)]
    assert await keys(ae_title="RIS", global_only=True) == [("RIS", None)]
    assert await keys(ae_title="VIEWER", workitem_uid=two) == [("VIEWER", two)]
    assert await keys(ae_title="NOBODY") == []


async def test_deleting_a_subscription_answers_whether_there_was_one(repository: Repository) -> None:
    await repository.put_subscription(Subscription("RIS", None))
    await repository.put_subscription(Subscription("RIS", uid(60, 1)))
    assert await repository.delete_subscription("RIS", None) is True
    assert await repository.delete_subscription("RIS", None) is False
    assert await repository.subscriptions() == [Subscription("RIS", uid(60, 1))]
    assert await repository.delete_subscription("RIS", uid(60, 1)) is True
    assert await repository.subscriptions() == []


# --------------------------------------------------------------------------- completion of one study


async def test_one_studys_pending_completion_is_found_however_recent(
    repository: Repository, instance_record: Factory
) -> None:
    study = uid(81)
    assert await repository.pending_completion(study) is None
    await repository.store_instance(instance_record(StudyInstanceUID=study, SOPInstanceUID=uid(81, 1, 1)))
    pending = await repository.pending_completion(study)
    assert pending is not None and pending.study_instance_uid == study
    assert pending.activity_at >= time.time() - 60
    assert await repository.pending_completions(pending.activity_at - 1, 10) == []  # not quiet yet
    assert await repository.pending_completion(uid(82)) is None
    assert await repository.mark_completed(study, pending.activity_at)
    assert await repository.pending_completion(study) is None
