"""UPS-RS (PS3.18 11) through the real HTTP door, on each metadata backend: create, retrieve, update, the state
machine, request cancellation, search, subscriptions, and the operators' MPPS and worklist listings."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.core.workflow.records import FILTERED_GLOBAL_SUBSCRIPTION, GLOBAL_SUBSCRIPTION, UPS_PUSH
from tests.api.workflow_client import (
    code,
    final_state_attributes,
    state_change,
    value,
    workitem,
)
from tests.servers import ArchiveServer

DICOM_JSON = {"Content-Type": "application/dicom+json"}
ERROR_COMMENT = "00000902"


@pytest.fixture(scope="module")
def server(backend_archive_server: ArchiveServer) -> ArchiveServer:
    return backend_archive_server


@pytest.fixture
def client(server: ArchiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.dicomweb, timeout=30) as http:
        yield http


def new_uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def create(client: httpx.Client, uid: str | None = None, **keywords: Any) -> str:
    uid = uid or new_uid()
    response = client.post(
        "/workitems", params={"workitem": uid}, json=workitem(**keywords), headers=DICOM_JSON
    )
    assert response.status_code == 201, response.text
    return uid


def retrieve(client: httpx.Client, uid: str) -> dict[str, Any]:
    response = client.get(f"/workitems/{uid}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body, list) and len(body) == 1
    found: dict[str, Any] = body[0]
    return found


def change_state(client: httpx.Client, uid: str, state: str, transaction: str | None) -> httpx.Response:
    return client.put(f"/workitems/{uid}/state", json=state_change(state, transaction), headers=DICOM_JSON)


def claim(client: httpx.Client, uid: str) -> str:
    transaction = new_uid()
    response = change_state(client, uid, "IN PROGRESS", transaction)
    assert response.status_code == 200, response.text
    return transaction


def refused(response: httpx.Response, status: int, *words: str) -> None:
    """The answer is `status` with a DICOM JSON Error Comment and a Warning that say why."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/dicom+json")
    comment = response.json()[ERROR_COMMENT]["Value"][0]
    assert response.headers["warning"].startswith("299 ")
    for word in words:
        assert word in comment, comment


# --------------------------------------------------------------------------- create and retrieve


def test_create_answers_201_with_the_location_of_the_new_scheduled_workitem(client: httpx.Client) -> None:
    uid = new_uid()
    response = client.post("/workitems", params={"workitem": uid}, json=workitem(), headers=DICOM_JSON)
    assert response.status_code == 201
    assert response.headers["location"].endswith(f"/dicom-web/workitems/{uid}")
    found = httpx.get(response.headers["location"]).json()[0]
    assert value(found, "SOPInstanceUID") == uid
    assert value(found, "SOPClassUID") == UPS_PUSH
    assert value(found, "ProcedureStepState") == "SCHEDULED"
    assert value(found, "PatientID") == "P-1"


@pytest.mark.parametrize("form", ["bare query", "data set", "array of one", "none"])
def test_create_takes_the_uid_from_the_bare_query_the_data_set_or_makes_one(
    client: httpx.Client, form: str
) -> None:
    uid = new_uid()
    url, body = "/workitems", workitem()
    if form == "bare query":
        url = f"/workitems?{uid}"
    elif form in ("data set", "array of one"):
        body = workitem(SOPInstanceUID=uid)
    response = client.post(url, json=[body] if form == "array of one" else body, headers=DICOM_JSON)
    assert response.status_code == 201, response.text
    made = response.headers["location"].rsplit("/", 1)[1]
    if form != "none":
        assert made == uid
    assert value(retrieve(client, made), "SOPInstanceUID") == made


def test_create_refuses_a_workitem_that_exists_with_409(client: httpx.Client) -> None:
    uid = create(client)
    again = client.post("/workitems", params={"workitem": uid}, json=workitem(), headers=DICOM_JSON)
    refused(again, 409, uid)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"ProcedureStepState": "IN PROGRESS"}, ["SCHEDULED"]),
        ({"ProcedureStepState": None}, ["Procedure Step State"]),
        ({"ProcedureStepLabel": None}, ["ProcedureStepLabel"]),
        ({"ScheduledProcedureStepPriority": "URGENT"}, ["ScheduledProcedureStepPriority"]),
        ({"TransactionUID": "1.2.3.4"}, ["Transaction UID"]),
    ],
    ids=["not scheduled", "no state", "no label", "bad priority", "transaction uid given"],
)
def test_create_refuses_a_workitem_the_standard_does_not_allow_with_400(
    client: httpx.Client, change: dict[str, Any], words: list[str]
) -> None:
    response = client.post(
        "/workitems", params={"workitem": new_uid()}, json=workitem(**change), headers=DICOM_JSON
    )
    refused(response, 400, *words)


def test_create_says_when_it_added_attributes_with_a_warning(client: httpx.Client) -> None:
    response = client.post("/workitems", json=workitem(WorklistLabel=None), headers=DICOM_JSON)
    assert response.status_code == 201
    assert "The Workitem was created with modifications." in response.headers["warning"]


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"{not json", "application/dicom+json", 400),
        (b"[]", "application/dicom+json", 400),
        (b"[{}, {}]", "application/dicom+json", 400),
        (b'{"PatientID": {"vr": "LO", "Value": ["x"]}}', "application/dicom+json", 400),
        (b'{"00100020": {"vr": "XX", "Value": ["x"]}}', "application/dicom+json", 400),
        (b'{"00100020": {"vr": "LO", "Value": "x"}}', "application/dicom+json", 400),
        (b'{"7FE00010": {"vr": "OB", "BulkDataURI": "http://elsewhere/"}}', "application/dicom+json", 400),
        (b"", "application/dicom+json", 400),
        (b"<NativeDicomModel/>", "application/dicom+xml", 415),
    ],
    ids=[
        "not json",
        "empty array",
        "two data sets",
        "keyword key",
        "unknown vr",
        "value not array",
        "bulk data",
        "no body",
        "xml",
    ],
)
def test_create_refuses_a_body_that_is_not_one_dicom_json_data_set(
    client: httpx.Client, body: bytes, content_type: str, status: int
) -> None:
    response = client.post("/workitems", content=body, headers={"Content-Type": content_type})
    refused(response, status)


def test_retrieve_never_returns_the_transaction_uid(client: httpx.Client) -> None:
    uid = create(client)
    transaction = claim(client, uid)
    response = client.get(f"/workitems/{uid}")
    assert "00081195" not in response.json()[0]
    assert transaction not in response.text
    assert value(response.json()[0], "ProcedureStepState") == "IN PROGRESS"


def test_retrieve_answers_an_unknown_workitem_with_404_and_a_malformed_uid_with_400(
    client: httpx.Client,
) -> None:
    refused(client.get(f"/workitems/{new_uid()}"), 404, "no workitem")
    refused(client.get("/workitems/1.2.abc"), 400, "UID")


def test_retrieve_answers_dicom_xml_when_asked(client: httpx.Client) -> None:
    uid = create(client)
    response = client.get(
        f"/workitems/{uid}", headers={"Accept": 'multipart/related; type="application/dicom+xml"'}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("multipart/related")
    assert b"<NativeDicomModel" in response.content and uid.encode() in response.content


# --------------------------------------------------------------------------- update


def test_a_scheduled_workitem_is_updated_by_anyone(client: httpx.Client) -> None:
    uid = create(client)
    changes = {"00741204": {"vr": "LO", "Value": ["CT abdomen"]}}  # Procedure Step Label
    response = client.post(f"/workitems/{uid}", json=changes, headers=DICOM_JSON)
    assert response.status_code == 200, response.text
    assert value(retrieve(client, uid), "ProcedureStepLabel") == "CT abdomen"


def test_a_claimed_workitem_refuses_an_update_without_its_transaction_uid_with_400(
    client: httpx.Client,
) -> None:
    """PS3.18 Table 11.6.3-1 puts a missing or wrong Transaction UID under 400 (Bad Request)."""
    uid = create(client)
    transaction = claim(client, uid)
    changes = {"00741204": {"vr": "LO", "Value": ["CT abdomen"]}}
    refused(client.post(f"/workitems/{uid}", json=changes, headers=DICOM_JSON), 400, "claimed Workitem")
    wrong = client.post(
        f"/workitems/{uid}", params={"transaction": new_uid()}, json=changes, headers=DICOM_JSON
    )
    refused(wrong, 400, "not the one that claimed it")
    right = client.post(
        f"/workitems/{uid}", params={"transaction": transaction}, json=changes, headers=DICOM_JSON
    )
    assert right.status_code == 200, right.text
    assert value(retrieve(client, uid), "ProcedureStepLabel") == "CT abdomen"


def test_a_claimed_workitem_takes_the_transaction_uid_from_the_data_set_as_dimse_sends_it(
    client: httpx.Client,
) -> None:
    uid = create(client)
    transaction = claim(client, uid)
    changes = {
        "00741204": {"vr": "LO", "Value": ["CT neck"]},
        "00081195": {"vr": "UI", "Value": [transaction]},
    }
    assert client.post(f"/workitems/{uid}", json=changes, headers=DICOM_JSON).status_code == 200
    assert value(retrieve(client, uid), "ProcedureStepLabel") == "CT neck"


def test_a_completed_or_canceled_workitem_refuses_updates_with_400(client: httpx.Client) -> None:
    """PS3.18 11.6.2: "If the Workitem is in the COMPLETED or CANCELED state, the response shall be a 400"."""
    uid = create(client)
    assert client.post(f"/workitems/{uid}/cancelrequest").status_code == 202
    changes = {"00741204": {"vr": "LO", "Value": ["late"]}}
    response = client.post(f"/workitems/{uid}", json=changes, headers=DICOM_JSON)
    refused(response, 400, "inconsistent with the state", "CANCELED")


def test_an_update_may_not_change_what_the_archive_owns(client: httpx.Client) -> None:
    uid = create(client)
    changes = {"00741000": {"vr": "CS", "Value": ["COMPLETED"]}}
    refused(client.post(f"/workitems/{uid}", json=changes, headers=DICOM_JSON), 400, "(0074,1000)")


# --------------------------------------------------------------------------- the state machine


def test_the_state_machine_from_scheduled_to_completed(client: httpx.Client) -> None:
    uid = create(client)
    transaction = claim(client, uid)
    refused(change_state(client, uid, "IN PROGRESS", new_uid()), 409, "already IN PROGRESS")
    refused(change_state(client, uid, "COMPLETED", transaction), 409, "Unified Procedure Step Performed")
    update = client.post(
        f"/workitems/{uid}",
        params={"transaction": transaction},
        json=final_state_attributes(),
        headers=DICOM_JSON,
    )
    assert update.status_code == 200, update.text
    refused(change_state(client, uid, "COMPLETED", new_uid()), 400, "The Transaction UID is incorrect.")
    done = change_state(client, uid, "COMPLETED", transaction)
    assert done.status_code == 200, done.text
    assert "warning" not in done.headers
    assert value(retrieve(client, uid), "ProcedureStepState") == "COMPLETED"
    again = change_state(client, uid, "COMPLETED", transaction)
    assert again.status_code == 200
    assert "The UPS is already in the requested state of COMPLETED." in again.headers["warning"]
    refused(change_state(client, uid, "IN PROGRESS", new_uid()), 409, "COMPLETED")


def test_the_performer_cancels_a_claimed_workitem_with_its_transaction_uid(client: httpx.Client) -> None:
    uid = create(client)
    transaction = claim(client, uid)
    refused(change_state(client, uid, "CANCELED", None), 400, "The Transaction UID is missing.")
    assert change_state(client, uid, "CANCELLED", transaction).status_code == 200  # PS3.18 11.7.1.4 spelling
    found = retrieve(client, uid)
    assert value(found, "ProcedureStepState") == "CANCELED"
    assert value(found, "ProcedureStepCancellationDateTime")
    again = change_state(client, uid, "CANCELED", transaction)
    assert "already in the requested state of CANCELED" in again.headers["warning"]


@pytest.mark.parametrize(
    ("state", "status", "words"),
    [
        ("SCHEDULED", 400, ["only becomes SCHEDULED"]),
        ("PAUSED", 400, ["not a Procedure Step State"]),
        ("COMPLETED", 409, ["not yet"]),
    ],
)
def test_a_scheduled_workitem_cannot_be_rescheduled_or_completed(
    client: httpx.Client, state: str, status: int, words: list[str]
) -> None:
    uid = create(client)
    refused(change_state(client, uid, state, new_uid()), status, *words)


def test_change_state_of_an_unknown_workitem_is_404(client: httpx.Client) -> None:
    refused(change_state(client, new_uid(), "IN PROGRESS", new_uid()), 404)


# --------------------------------------------------------------------------- request cancellation


def test_a_scheduled_workitem_is_canceled_on_request_with_202(client: httpx.Client) -> None:
    uid = create(client)
    reason = {"00741238": {"vr": "LT", "Value": ["patient left"]}}
    response = client.post(f"/workitems/{uid}/cancelrequest", json=reason, headers=DICOM_JSON)
    assert response.status_code == 202, response.text
    found = retrieve(client, uid)
    assert value(found, "ProcedureStepState") == "CANCELED"
    assert value(found, "ReasonForCancellation") == "patient left"
    again = client.post(f"/workitems/{uid}/cancelrequest")
    assert again.status_code == 202
    assert "already in the requested state of CANCELED" in again.headers["warning"]


def test_a_completed_workitem_refuses_a_cancellation_request_with_409(client: httpx.Client) -> None:
    uid = create(client)
    transaction = claim(client, uid)
    client.post(f"/workitems/{uid}", params={"transaction": transaction}, json=final_state_attributes(),
                headers=DICOM_JSON)  # fmt: skip
    assert change_state(client, uid, "COMPLETED", transaction).status_code == 200
    refused(client.post(f"/workitems/{uid}/cancelrequest"), 409, "COMPLETED")
    refused(client.post(f"/workitems/{new_uid()}/cancelrequest"), 404)


def test_a_cancellation_request_for_a_claimed_workitem_nobody_can_be_told_of_answers_409(
    client: httpx.Client,
) -> None:
    """Its performer decides (PS3.4 CC.2.2); with no subscriber to tell, the request cannot reach it (C312).
    The 202 of a request that reached a subscriber is in test_ups_events.py."""
    uid = create(client)
    claim(client, uid)
    refused(client.post(f"/workitems/{uid}/cancelrequest"), 409)
    assert value(retrieve(client, uid), "ProcedureStepState") == "IN PROGRESS"


# --------------------------------------------------------------------------- search


def search(client: httpx.Client, **params: Any) -> httpx.Response:
    response = client.get("/workitems", params=params)
    assert response.status_code == 200, response.text
    return response


def uids(response: httpx.Response) -> set[str]:
    return {value(found, "SOPInstanceUID") for found in response.json()}


def test_search_matches_names_with_wildcards_and_start_times_in_ranges(client: httpx.Client) -> None:
    patient = f"S-{uuid.uuid4().hex[:8]}"
    early = create(
        client,
        PatientID=patient,
        PatientName="SMITH^JOHN",
        ScheduledProcedureStepStartDateTime="20300301080000",
    )
    late = create(
        client,
        PatientID=patient,
        PatientName="SMYTHE^ANN",
        ScheduledProcedureStepStartDateTime="20300302150000",
    )
    create(
        client,
        PatientID=patient,
        PatientName="JONES^AMY",
        ScheduledProcedureStepStartDateTime="20300401080000",
    )
    assert uids(search(client, PatientID=patient, PatientName="SM*")) == {early, late}
    assert uids(search(client, PatientID=patient, PatientName="SM?TH*")) == {early, late}
    in_march = search(client, PatientID=patient, ScheduledProcedureStepStartDateTime="20300301-20300302")
    assert uids(in_march) == {early, late}
    assert uids(search(client, PatientID=patient, ScheduledProcedureStepStartDateTime="20300302120000-")) >= {
        late
    }
    assert early not in uids(
        search(client, PatientID=patient, ScheduledProcedureStepStartDateTime="20300302120000-")
    )


def test_search_matches_the_state_and_keys_inside_sequences(client: httpx.Client) -> None:
    patient = f"S-{uuid.uuid4().hex[:8]}"
    on_ct2 = create(client, PatientID=patient, ScheduledStationNameCodeSequence=[code("CT2", "CT room 2")])
    on_ct1 = create(client, PatientID=patient)
    claim(client, on_ct1)
    by_station = search(client, PatientID=patient, **{"ScheduledStationNameCodeSequence.CodeValue": "CT2"})
    assert uids(by_station) == {on_ct2}
    assert uids(search(client, PatientID=patient, ProcedureStepState="IN PROGRESS")) == {on_ct1}
    assert uids(search(client, PatientID=patient, ProcedureStepState="SCHEDULED")) == {on_ct2}
    assert uids(search(client, **{"00100020": patient, "00741000": "SCHEDULED"})) == {on_ct2}


def test_search_pages_with_limit_and_offset_and_says_more_are_left(client: httpx.Client) -> None:
    patient = f"S-{uuid.uuid4().hex[:8]}"
    made = {create(client, PatientID=patient) for _ in range(3)}
    first = search(client, PatientID=patient, limit=2)
    assert len(first.json()) == 2
    assert "There are additional results that can be requested" in first.headers["warning"]
    rest = search(client, PatientID=patient, limit=2, offset=2)
    assert len(rest.json()) == 1 and "warning" not in rest.headers
    assert uids(first) | uids(rest) == made


def test_search_without_a_match_answers_an_empty_array(client: httpx.Client) -> None:
    response = search(client, PatientID=f"none-{uuid.uuid4().hex}")
    assert response.json() == []
    assert response.headers["content-type"].startswith("application/dicom+json")


@pytest.mark.parametrize(
    "params",
    [
        {"patientID": "x"},
        {"NoSuchKeyword": "x"},
        {"limit": "-1"},
        {"offset": "many"},
        {"PatientBirthDate": "yesterday"},
        {"fuzzymatching": "maybe"},
    ],
    ids=[
        "keyword case",
        "unknown keyword",
        "negative limit",
        "bad offset",
        "bad date",
        "bad fuzzymatching",
    ],
)
def test_search_refuses_keys_it_cannot_match_with_400(client: httpx.Client, params: dict[str, str]) -> None:
    refused(client.get("/workitems", params=params), 400)


def test_search_ignores_parameters_that_name_no_attribute_with_a_warning(client: httpx.Client) -> None:
    response = search(client, PatientID=f"none-{uuid.uuid4().hex}", _="1")
    assert "not supported: _" in response.headers["warning"]


# --------------------------------------------------------------------------- subscriptions


def test_subscribe_answers_201_with_the_event_channel_url(
    client: httpx.Client, server: ArchiveServer
) -> None:
    uid = create(client)
    response = client.post(f"/workitems/{uid}/subscribers/WATCHER")
    assert response.status_code == 201, response.text
    expected = f"ws://{server.base_url.removeprefix('http://')}/dicom-web/subscribers/WATCHER"
    assert response.headers["content-location"] == expected
    assert (
        client.post(f"/workitems/{uid}/subscribers/WATCHER", params={"deletionlock": "true"}).status_code
        == 201
    )
    assert client.delete(f"/workitems/{uid}/subscribers/WATCHER").status_code == 200


def test_global_subscriptions_are_made_suspended_and_ended(client: httpx.Client) -> None:
    assert client.post(f"/workitems/{GLOBAL_SUBSCRIPTION}/subscribers/GLOBAL1").status_code == 201
    assert client.post(f"/workitems/{GLOBAL_SUBSCRIPTION}/subscribers/GLOBAL1/suspend").status_code == 200
    assert client.delete(f"/workitems/{GLOBAL_SUBSCRIPTION}/subscribers/GLOBAL1").status_code == 200
    filtered = client.post(f"/workitems/{FILTERED_GLOBAL_SUBSCRIPTION}/subscribers/FILTER1",
                           params={"filter": "ScheduledStationNameCodeSequence.CodeValue=CT9,PatientID=P-*"})  # fmt: skip
    assert filtered.status_code == 201, filtered.text
    assert (
        client.post(f"/workitems/{FILTERED_GLOBAL_SUBSCRIPTION}/subscribers/FILTER1/suspend").status_code
        == 200
    )


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/workitems/{uid}/subscribers/THIS_TITLE_IS_TOO_LONG", {}, 400),
        ("/workitems/{uid}/subscribers/BACK%5CSLASH", {}, 400),
        ("/workitems/{uid}/subscribers/WATCHER", {"deletionlock": "maybe"}, 400),
        ("/workitems/{uid}/subscribers/WATCHER", {"filter": "PatientID=1"}, 400),
        (f"/workitems/{FILTERED_GLOBAL_SUBSCRIPTION}/subscribers/WATCHER", {}, 400),
        (
            f"/workitems/{FILTERED_GLOBAL_SUBSCRIPTION}/subscribers/WATCHER",
            {"filter": "NoSuchKeyword=1"},
            400,
        ),
        (f"/workitems/{FILTERED_GLOBAL_SUBSCRIPTION}/subscribers/WATCHER", {"filter": "PatientID"}, 400),
        ("/workitems/{uid}/subscribers/WATCHER/suspend", {}, 400),
        ("/workitems/{unknown}/subscribers/WATCHER", {}, 404),
    ],
    ids=[
        "long ae",
        "backslash ae",
        "bad deletionlock",
        "filter on a workitem",
        "filtered without filter",
        "unknown filter key",
        "filter without value",
        "suspend a workitem",
        "unknown workitem",
    ],
)
def test_subscribe_refuses_what_it_cannot_subscribe(
    client: httpx.Client, path: str, params: dict[str, str], status: int
) -> None:
    uid = create(client)
    response = client.post(path.format(uid=uid, unknown=new_uid()), params=params)
    refused(response, status)


def test_unsubscribe_from_an_unknown_workitem_is_404(client: httpx.Client) -> None:
    refused(client.delete(f"/workitems/{new_uid()}/subscribers/WATCHER"), 404)


# --------------------------------------------------------------------------- the operators' listings


def test_the_worklist_lists_scheduled_workitems_as_modalities_see_them(client: httpx.Client) -> None:
    patient = f"W-{uuid.uuid4().hex[:8]}"
    scheduled = create(client, PatientID=patient)
    canceled = create(client, PatientID=patient, ScheduledStationClassCodeSequence=[code("MR", "MR")])
    client.post(f"/workitems/{canceled}/cancelrequest")
    response = client.get("/worklist", params={"PatientID": patient})
    assert response.status_code == 200, response.text
    items = response.json()
    assert len(items) == 1
    step = value(items[0], "ScheduledProcedureStepSequence")
    assert value(step, "Modality") == "CT" and value(step, "ScheduledStationAETitle") == "CT1"
    assert value(step, "ScheduledProcedureStepDescription") == "CT chest"
    by_modality = client.get(
        "/worklist", params={"PatientID": patient, "ScheduledProcedureStepSequence.Modality": "MR"}
    )
    assert by_modality.json() == []
    assert scheduled  # the one listed


def test_the_mpps_listing_answers_json_and_404_for_an_unknown_step(client: httpx.Client) -> None:
    listing = client.get("/mpps", params={"StudyInstanceUID": new_uid(), "limit": "5"})
    assert listing.status_code == 200 and listing.json() == []
    refused(client.get(f"/mpps/{new_uid()}"), 404)
    refused(client.get("/mpps", params={"StudyInstanceUID": "not-a-uid"}), 400)
    refused(client.get("/mpps/1.2.x"), 400)


def test_an_element_keeps_only_what_dicom_json_defines_and_no_integer_past_64_bits(client: httpx.Client) -> None:
    body = workitem()
    body["00100020"]["junk$"] = "x"  # not a member of a DICOM JSON element (PS3.18 F.2.2)
    uid = new_uid()
    assert client.post("/workitems", params={"workitem": uid}, json=body, headers=DICOM_JSON).status_code == 201
    assert "junk$" not in retrieve(client, uid)["00100020"]
    huge = workitem()
    huge["00101020"] = {"vr": "DS", "Value": [2**70]}
    refused(client.post("/workitems", json=huge, headers=DICOM_JSON), 400)
