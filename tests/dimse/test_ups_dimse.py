"""Unified Procedure Step over DIMSE (dimse_bridge/ups.py, ups_events.py) with real peers on 127.0.0.1.

* dcmjs-dimse (Node, tests/node/ups_scu.js) as a performer: N-CREATE a workitem, claim it (N-ACTION), record
  what was done (N-SET with the Transaction UID), read it back (N-GET), complete it.
* pynetdicom as a UPS SCU where a test needs exact refusals, and as a watcher: an Event SCP registered in the
  archive's AE registry (DIMSE_REMOTE_AES), which receives N-EVENT-REPORTs for changes made over UPS-RS (HTTP).
* A UPS-RS WebSocket subscriber, which hears of a state change made by a DIMSE N-ACTION.
"""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from websockets.sync.client import connect

from tests.dimse.workflow_peers import (
    BACKENDS,
    DICOM_JSON,
    FILTERED_GLOBAL_SUBSCRIPTION,
    GLOBAL_SUBSCRIPTION,
    UPS_EVENT,
    UPS_PULL,
    UPS_PUSH,
    UPS_QUERY,
    UPS_WATCH,
    association,
    backend_url,
    c_find,
    install_node_peer,
    run_node,
    schedule,
    workflow_archive,
    workitem_json,
)
from tests.servers import ArchiveServer, free_port

WATCHER = "WATCHER"
LATE = "LATE"  # in the AE registry, but its Event SCP starts after the first report was due
REPORT_TIMEOUT = 20
Report = tuple[str, int, Dataset]  # (workitem UID, Event Type ID, Event Information)


@pytest.fixture(scope="session")
def node_peer() -> Path:
    return install_node_peer()


@pytest.fixture(scope="module")
def watcher_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def late_port() -> int:
    return free_port()


@pytest.fixture(scope="module", params=BACKENDS)
def archive(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    watcher_port: int,
    late_port: int,
) -> Iterator[ArchiveServer]:
    """One archive per metadata backend, knowing WATCHER (listening all along) and LATE (listening late)."""
    registry = f"{WATCHER}@127.0.0.1:{watcher_port},{LATE}@127.0.0.1:{late_port}"
    with workflow_archive(tmp_path_factory.mktemp("ups"), registry, mongo_url=backend_url(request)) as server:
        yield server


@contextmanager
def event_scp(ae_title: str, port: int) -> Iterator[queue.Queue[Report]]:
    """A watcher's Event SCP (pynetdicom) on 127.0.0.1:`port`: every N-EVENT-REPORT it receives, in order."""
    received: queue.Queue[Report] = queue.Queue()
    ae = AE(ae_title=ae_title)
    # The archive opens the association to report and stays the SCP of the UPS Event SOP class (PS3.7 D.3.3.4).
    ae.add_supported_context(UPS_EVENT, scu_role=False, scp_role=True)

    def on_report(event: Any) -> tuple[int, None]:
        request = event.request
        received.put((str(request.AffectedSOPInstanceUID), int(request.EventTypeID), event.event_information))
        return 0x0000, None

    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)]
    )
    try:
        yield received
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def reports(watcher_port: int) -> Iterator[queue.Queue[Report]]:
    with event_scp(WATCHER, watcher_port) as received:
        yield received


def next_report(reports: queue.Queue[Report], workitem: str) -> tuple[int, Dataset]:
    """The next report about `workitem` (reports about others, from global subscriptions, are skipped)."""
    while True:
        uid, event_type, information = reports.get(timeout=REPORT_TIMEOUT)
        if uid == workitem:
            return event_type, information


def claim(transaction: str, state: str = "IN PROGRESS") -> Dataset:
    ds = Dataset()
    ds.ProcedureStepState = state
    ds.TransactionUID = transaction
    return ds


def subscription(receiving: str, lock: str = "NO") -> Dataset:
    ds = Dataset()
    ds.ReceivingAE = receiving
    ds.DeletionLock = lock
    return ds


def ups_dataset(**attributes: Any) -> Dataset:
    """A Create-a-UPS attribute list (PS3.4 Table CC.2.5-3) that pynetdicom can send."""
    ds = Dataset()
    ds.PatientName = "PUSH^PATIENT"
    ds.PatientID = "UPS-P"
    ds.ProcedureStepState = "SCHEDULED"
    ds.ScheduledProcedureStepPriority = "MEDIUM"
    ds.ProcedureStepLabel = "Pushed by DIMSE"
    ds.WorklistLabel = "DIMSE"
    ds.ScheduledProcedureStepStartDateTime = "20300105090000"
    ds.InputReadinessState = "READY"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


# -- dcmjs-dimse as performer --------------------------------------------------------------------------------


def test_a_node_performer_creates_claims_records_and_completes_a_workitem(
    archive: ArchiveServer, node_peer: Path
) -> None:
    uid, transaction = generate_uid(), generate_uid()
    performed = {
        "PerformedProcedureStepStartDateTime": "20300105091500",
        "PerformedProcedureStepEndDateTime": "20300105093000",
    }
    steps: list[dict[str, Any]] = [
        {"op": "create", "sopClass": UPS_PUSH, "instance": uid, "dataset": {
            "PatientName": "NODE^PERFORMER", "PatientID": "UPS-N1", "ProcedureStepState": "SCHEDULED",
            "ScheduledProcedureStepPriority": "HIGH", "ProcedureStepLabel": "Node label",
            "ScheduledProcedureStepStartDateTime": "20300105090000", "InputReadinessState": "READY",
            "ScheduledStationNameCodeSequence": [
                {"CodeValue": "NODE_CT", "CodingSchemeDesignator": "99LOCAL", "CodeMeaning": "Node CT"}
            ],
        }},
        {"op": "action", "sopClass": UPS_PULL, "instance": uid, "actionTypeId": 1,
         "dataset": {"ProcedureStepState": "IN PROGRESS", "TransactionUID": transaction}},
        {"op": "set", "sopClass": UPS_PULL, "instance": uid, "dataset": {
            "TransactionUID": transaction, "UnifiedProcedureStepPerformedProcedureSequence": [performed],
        }},
        {"op": "get", "sopClass": UPS_PULL, "instance": uid,
         "attributes": ["ProcedureStepState", "PatientName", "ProcedureStepLabel", "TransactionUID"]},
        {"op": "action", "sopClass": UPS_PULL, "instance": uid, "actionTypeId": 1,
         "dataset": {"ProcedureStepState": "COMPLETED", "TransactionUID": transaction}},
        {"op": "get", "sopClass": UPS_PUSH, "instance": uid, "attributes": []},
    ]  # fmt: skip
    created, claimed, recorded, read, completed, whole = run_node(node_peer, "ups_scu.js", archive, steps)
    assert created["status"] == 0xB300  # created with modifications: the SCP gave it a Worklist Label
    assert [s["status"] for s in (claimed, recorded, read, completed, whole)] == [0] * 5
    assert read["dataset"]["ProcedureStepState"] == "IN PROGRESS"
    assert read["dataset"]["ProcedureStepLabel"] == "Node label"
    assert "TransactionUID" not in read["dataset"] or not read["dataset"]["TransactionUID"]  # never returned
    assert whole["dataset"]["ProcedureStepState"] == "COMPLETED"
    assert whole["dataset"]["SOPInstanceUID"] == uid
    sequence = whole["dataset"]["UnifiedProcedureStepPerformedProcedureSequence"]
    assert sequence[0]["PerformedProcedureStepEndDateTime"] == "20300105093000"
    # The same workitem, read through the other door (UPS-RS Retrieve Workitem, PS3.18 11.5).
    response = httpx.get(f"{archive.dicomweb}/workitems/{uid}", headers={"Accept": DICOM_JSON}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    body = body[0] if isinstance(body, list) else body
    assert body["00741000"]["Value"] == ["COMPLETED"]


# -- refusals ---------------------------------------------------------------------------------------------------


def test_a_workitem_claimed_once_cannot_be_claimed_again_nor_changed_without_its_transaction_uid(
    archive: ArchiveServer,
) -> None:
    uid, transaction = generate_uid(), generate_uid()
    with association(archive, "PERFORMER", UPS_PUSH, UPS_PULL) as assoc:
        assert assoc.send_n_create(ups_dataset(), UPS_PUSH, uid)[0].Status == 0x0000
        status, reply = assoc.send_n_action(claim(transaction), 1, UPS_PULL, uid)
        assert status.Status == 0x0000
        assert reply.ProcedureStepState == "IN PROGRESS"

        again, _ = assoc.send_n_action(claim(generate_uid()), 1, UPS_PULL, uid)
        assert again.Status == 0xC302  # The UPS is already IN PROGRESS

        change = Dataset()
        change.ProcedureStepLabel = "changed without the Transaction UID"
        without, _ = assoc.send_n_set(change, UPS_PULL, uid)
        assert without.Status == 0xC301  # The correct Transaction UID was not provided
        change.TransactionUID = generate_uid()
        wrong, _ = assoc.send_n_set(change, UPS_PULL, uid)
        assert wrong.Status == 0xC301

        early, _ = assoc.send_n_action(claim(transaction, "COMPLETED"), 1, UPS_PULL, uid)
        assert early.Status == 0xC304  # nothing recorded as performed yet: final state requirements not met
        assert early.ErrorComment == "final state requirements not met"

        cancelled, _ = assoc.send_n_action(claim(transaction, "CANCELED"), 1, UPS_PULL, uid)
        assert cancelled.Status == 0x0000
        twice, _ = assoc.send_n_action(claim(transaction, "CANCELED"), 1, UPS_PULL, uid)
        assert twice.Status == 0xB304  # Warning: already CANCELED
        late, _ = assoc.send_n_set(change, UPS_PULL, uid)
        assert late.Status == 0xC300  # The UPS may no longer be updated


def test_bad_requests_get_the_status_that_says_why(archive: ArchiveServer) -> None:
    with association(archive, "PERFORMER", UPS_PUSH, UPS_PULL) as assoc:
        started = ups_dataset(ProcedureStepState="IN PROGRESS")
        assert assoc.send_n_create(started, UPS_PUSH, generate_uid())[0].Status == 0xC309  # not SCHEDULED
        unlabelled = ups_dataset()
        del unlabelled.ProcedureStepLabel
        missing, _ = assoc.send_n_create(unlabelled, UPS_PUSH, generate_uid())
        assert missing.Status == 0x0120  # Missing attribute
        uid = generate_uid()
        assert assoc.send_n_create(ups_dataset(), UPS_PUSH, uid)[0].Status == 0x0000
        assert assoc.send_n_create(ups_dataset(), UPS_PUSH, uid)[0].Status == 0x0111  # Duplicate SOP Instance
        unknown, _ = assoc.send_n_get([0x00741000], UPS_PULL, generate_uid())
        assert unknown.Status == 0xC307  # no such workitem
        wrong_class, _ = assoc.send_n_action(subscription("PERFORMER"), 3, UPS_PULL, uid)
        assert wrong_class.Status == 0x0123  # subscribing is UPS Watch's action, not UPS Pull's


def test_a_subscription_for_an_ae_the_archive_cannot_reach_is_refused(archive: ArchiveServer) -> None:
    uid = schedule(archive, workitem_json(station="UPS_CT", patient_id="UPS-U"))
    with association(archive, "STRANGER", UPS_WATCH) as assoc:
        status, _ = assoc.send_n_action(subscription("STRANGER"), 3, UPS_WATCH, uid)
        assert status.Status == 0xC308  # Receiving AE-TITLE is Unknown to this SCP (PS3.4 CC.2.3.2)
        globally, _ = assoc.send_n_action(subscription("STRANGER"), 3, UPS_WATCH, GLOBAL_SUBSCRIPTION)
        assert globally.Status == 0xC308


# -- watching ---------------------------------------------------------------------------------------------------


def test_a_dimse_watcher_hears_of_changes_made_over_ups_rs(
    archive: ArchiveServer, reports: queue.Queue[Report]
) -> None:
    uid = schedule(archive, workitem_json(station="UPS_CT", patient_id="UPS-W1"))
    with association(archive, WATCHER, UPS_WATCH) as assoc:
        status, _ = assoc.send_n_action(subscription(WATCHER, "YES"), 3, UPS_WATCH, uid)
        assert status.Status == 0x0000
    event_type, information = next_report(reports, uid)  # the state at subscription (PS3.4 CC.2.3.2.1)
    assert (event_type, information.ProcedureStepState) == (1, "SCHEDULED")

    transaction = generate_uid()
    response = httpx.put(
        f"{archive.dicomweb}/workitems/{uid}/state",
        content=json.dumps({"00741000": {"vr": "CS", "Value": ["IN PROGRESS"]},
                            "00081195": {"vr": "UI", "Value": [transaction]}}),
        headers={"Content-Type": DICOM_JSON},
        timeout=30,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    event_type, information = next_report(reports, uid)
    assert event_type == 1  # UPS State Report (PS3.4 Table CC.2.4-1)
    assert information.ProcedureStepState == "IN PROGRESS"
    assert information.InputReadinessState == "READY"


def test_a_global_watcher_hears_of_new_workitems(
    archive: ArchiveServer, reports: queue.Queue[Report]
) -> None:
    with association(archive, WATCHER, UPS_WATCH) as assoc:
        status, _ = assoc.send_n_action(subscription(WATCHER), 3, UPS_WATCH, GLOBAL_SUBSCRIPTION)
        assert status.Status == 0x0000
    uid = schedule(archive, workitem_json(station="UPS_CT", patient_id="UPS-W2"))
    event_type, information = next_report(reports, uid)
    assert (event_type, information.ProcedureStepState) == (1, "SCHEDULED")
    with association(archive, WATCHER, UPS_WATCH) as assoc:
        status, _ = assoc.send_n_action(subscription(WATCHER), 4, UPS_WATCH, GLOBAL_SUBSCRIPTION)
        assert status.Status == 0x0000  # unsubscribed: no report for the next one
    later = schedule(archive, workitem_json(station="UPS_CT", patient_id="UPS-W3"))
    with pytest.raises(queue.Empty):
        next_report_quick(reports, later)


def test_a_filtered_watcher_hears_only_of_matching_workitems_until_it_suspends(
    archive: ArchiveServer, reports: queue.Queue[Report]
) -> None:
    keys = subscription(WATCHER)
    station = Dataset()
    station.CodeValue = "UPS_FILTERED"
    keys.ScheduledStationNameCodeSequence = DicomSequence([station])  # the filter (PS3.4 CC.2.3.2.1)
    with association(archive, WATCHER, UPS_WATCH) as assoc:
        assert assoc.send_n_action(keys, 3, UPS_WATCH, FILTERED_GLOBAL_SUBSCRIPTION)[0].Status == 0x0000
    other = schedule(archive, workitem_json(station="UPS_ELSEWHERE", patient_id="UPS-F1"))
    matching = schedule(archive, workitem_json(station="UPS_FILTERED", patient_id="UPS-F2"))
    heard: list[str] = []
    while matching not in heard:  # reports to one AE keep their order: `other` would have come first
        heard.append(reports.get(timeout=REPORT_TIMEOUT)[0])
    assert other not in heard
    with association(archive, WATCHER, UPS_WATCH) as assoc:
        suspended, _ = assoc.send_n_action(subscription(WATCHER), 5, UPS_WATCH, FILTERED_GLOBAL_SUBSCRIPTION)
        assert suspended.Status == 0x0000
        later = schedule(archive, workitem_json(station="UPS_FILTERED", patient_id="UPS-F3"))
        with pytest.raises(queue.Empty):
            next_report_quick(reports, later)
        not_global, _ = assoc.send_n_action(subscription(WATCHER), 5, UPS_WATCH, matching)
        assert not_global.Status == 0xC314  # only a global subscription is suspended
        assert (
            assoc.send_n_action(subscription(WATCHER), 4, UPS_WATCH, FILTERED_GLOBAL_SUBSCRIPTION)[0].Status
            == 0
        )


def next_report_quick(reports: queue.Queue[Report], workitem: str) -> None:
    while True:
        uid, _, _ = reports.get(timeout=2)
        if uid == workitem:
            return


def test_reports_to_a_subscriber_that_was_down_are_retried_and_arrive_in_order(
    archive: ArchiveServer, late_port: int
) -> None:
    uid = schedule(archive, workitem_json(station="UPS_CT", patient_id="UPS-L"))
    with association(archive, LATE, UPS_WATCH, UPS_PULL) as assoc:
        # Accepted: LATE is in the registry. Its SCHEDULED report fails at once (nothing listens yet) ...
        assert assoc.send_n_action(subscription(LATE), 3, UPS_WATCH, uid)[0].Status == 0x0000
        # ... and the IN PROGRESS one queues behind it.
        assert assoc.send_n_action(claim(generate_uid()), 1, UPS_PULL, uid)[0].Status == 0x0000
    with event_scp(LATE, late_port) as received:  # up before the second attempt (1 s later)
        first, second = next_report(received, uid), next_report(received, uid)
    assert [first[1].ProcedureStepState, second[1].ProcedureStepState] == ["SCHEDULED", "IN PROGRESS"]


def test_a_ups_rs_websocket_subscriber_hears_of_a_claim_made_over_dimse(archive: ArchiveServer) -> None:
    uid = schedule(archive, workitem_json(station="UPS_WS", patient_id="UPS-WS"))
    url = f"ws{archive.dicomweb.removeprefix('http')}/subscribers/WSWATCH"
    with connect(url, proxy=None, open_timeout=10) as channel:
        subscribed = httpx.post(f"{archive.dicomweb}/workitems/{uid}/subscribers/WSWATCH", timeout=30)
        assert subscribed.status_code == 201, subscribed.text
        assert state_of(channel.recv(timeout=REPORT_TIMEOUT)) == (uid, "SCHEDULED")
        with association(archive, "PERFORMER", UPS_PULL) as assoc:
            status, _ = assoc.send_n_action(claim(generate_uid()), 1, UPS_PULL, uid)
        assert status.Status == 0x0000
        assert state_of(channel.recv(timeout=REPORT_TIMEOUT)) == (uid, "IN PROGRESS")


def state_of(message: str | bytes) -> tuple[str, str]:
    """(workitem, Procedure Step State) of a UPS-RS event report (PS3.18 11.13, DICOM JSON)."""
    event = json.loads(message)
    assert event["00001002"]["Value"] == [1]  # UPS State Report
    return event["00001000"]["Value"][0], event["00741000"]["Value"][0]


# -- searching --------------------------------------------------------------------------------------------------


def test_a_ups_query_finds_workitems_by_state_and_returns_the_keys_asked_for(archive: ArchiveServer) -> None:
    uid = schedule(archive, workitem_json(station="UPS_Q", patient_name="QUERY^ME", patient_id="UPS-Q1"))
    identifier = Dataset()
    identifier.PatientName = "QUERY^*"
    identifier.ProcedureStepState = "SCHEDULED"
    identifier.SOPInstanceUID = ""
    identifier.ProcedureStepLabel = ""
    identifier.TransactionUID = ""
    station = Dataset()
    station.CodeValue = "UPS_Q"
    identifier.ScheduledStationNameCodeSequence = DicomSequence([station])
    with association(archive, "QUERIER", UPS_QUERY) as assoc:
        answers, final = c_find(assoc, identifier, UPS_QUERY)
    assert final.Status == 0x0000
    assert [ds.SOPInstanceUID for ds in answers] == [uid]
    (answer,) = answers
    assert answer.ProcedureStepLabel == "CT chest"
    assert answer.TransactionUID == ""  # never returned (PS3.4 CC.2.8.3)
    assert answer.ScheduledStationNameCodeSequence[0].CodeValue == "UPS_Q"
    assert "PatientID" not in answer
