"""The UPS-RS event channel (PS3.18 8.10.4, 11.13): a subscriber's WebSocket hears, in order, the events that
HTTP changes to its workitems cause; global and filtered subscriptions add new workitems; the channel asks for
the same credentials as every other route."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosedOK, InvalidStatus

from app.config import Settings
from app.core.workflow.records import FILTERED_GLOBAL_SUBSCRIPTION, GLOBAL_SUBSCRIPTION, UPS_EVENT
from tests.api.workflow_client import (
    code,
    event_channel,
    event_type,
    final_state_attributes,
    state_change,
    state_of,
    value,
    workitem,
    workitem_of,
)
from tests.servers import ArchiveServer, running_archive

DICOM_JSON = {"Content-Type": "application/dicom+json"}
STATE_REPORT, CANCEL_REQUESTED, PROGRESS_REPORT = 1, 2, 3


def new_uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ArchiveServer]:
    """A fresh archive per test: global subscriptions see every workitem there is."""
    with running_archive(Settings(data_dir=tmp_path, dimse_enabled=False, _env_file=None)) as running:
        yield running


@pytest.fixture
def client(server: ArchiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.dicomweb, timeout=30) as http:
        yield http


def create(client: httpx.Client, **keywords: object) -> str:
    uid = new_uid()
    response = client.post(
        "/workitems", params={"workitem": uid}, json=workitem(**keywords), headers=DICOM_JSON
    )
    assert response.status_code == 201, response.text
    return uid


def put_state(client: httpx.Client, uid: str, state: str, transaction: str) -> None:
    response = client.put(
        f"/workitems/{uid}/state", json=state_change(state, transaction), headers=DICOM_JSON
    )
    assert response.status_code == 200, response.text


def test_a_subscriber_hears_the_state_changes_of_its_workitem_in_order(
    server: ArchiveServer, client: httpx.Client
) -> None:
    uid = create(client)
    with event_channel(server, "WATCHER") as channel:
        assert client.post(f"/workitems/{uid}/subscribers/WATCHER").status_code == 201
        transaction = new_uid()
        put_state(client, uid, "IN PROGRESS", transaction)
        progress = {"00741002": {"vr": "SQ", "Value": [{"00741004": {"vr": "DS", "Value": [50]}}]}}
        update = client.post(f"/workitems/{uid}", params={"transaction": transaction}, json=progress,
                             headers=DICOM_JSON)  # fmt: skip
        assert update.status_code == 200, update.text
        client.post(f"/workitems/{uid}", params={"transaction": transaction}, json=final_state_attributes(),
                    headers=DICOM_JSON)  # fmt: skip
        put_state(client, uid, "COMPLETED", transaction)
        events = channel.events(4)
    assert [(event_type(e), state_of(e)) for e in events] == [
        (STATE_REPORT, "SCHEDULED"),  # reported at once on subscription (PS3.4 CC.2.3.2)
        (STATE_REPORT, "IN PROGRESS"),
        (PROGRESS_REPORT, None),
        (STATE_REPORT, "COMPLETED"),
    ]
    for number, event in enumerate(events, start=1):
        assert workitem_of(event) == uid
        assert event["00000002"] == {"vr": "UI", "Value": [UPS_EVENT]}
        assert event["00000110"] == {"vr": "US", "Value": [number]}
        assert "00081195" not in event  # never the Transaction UID
    assert value(events[0], "InputReadinessState") == "READY"
    assert value(value(events[2], "ProcedureStepProgressInformationSequence"), "ProcedureStepProgress") == 50


def test_a_performer_hears_a_cancellation_request_with_its_reason(
    server: ArchiveServer, client: httpx.Client
) -> None:
    uid = create(client)
    put_state(client, uid, "IN PROGRESS", new_uid())
    with event_channel(server, "PERFORMER") as channel:
        client.post(f"/workitems/{uid}/subscribers/PERFORMER")
        assert state_of(channel.next_event()) == "IN PROGRESS"
        request = {
            "00741238": {"vr": "LT", "Value": ["wrong patient"]},
            "00741236": {"vr": "AE", "Value": ["RIS"]},
        }
        response = client.post(f"/workitems/{uid}/cancelrequest", json=request, headers=DICOM_JSON)
        assert response.status_code == 202
        event = channel.next_event()
    assert event_type(event) == CANCEL_REQUESTED
    assert value(event, "ReasonForCancellation") == "wrong patient"
    assert value(event, "RequestingAE") == "RIS"


def test_a_global_subscriber_hears_of_every_workitem_until_it_suspends(
    server: ArchiveServer, client: httpx.Client
) -> None:
    before = create(client)
    with event_channel(server, "EVERYTHING") as channel:
        assert client.post(f"/workitems/{GLOBAL_SUBSCRIPTION}/subscribers/EVERYTHING").status_code == 201
        assert workitem_of(channel.next_event()) == before
        added = create(client)
        event = channel.next_event()
        assert (workitem_of(event), state_of(event)) == (added, "SCHEDULED")
        assert (
            client.post(f"/workitems/{GLOBAL_SUBSCRIPTION}/subscribers/EVERYTHING/suspend").status_code == 200
        )
        create(client)
        channel.assert_quiet()
        put_state(client, added, "IN PROGRESS", new_uid())  # still subscribed to what it had
        event = channel.next_event()
        assert (workitem_of(event), state_of(event)) == (added, "IN PROGRESS")
        assert client.delete(f"/workitems/{GLOBAL_SUBSCRIPTION}/subscribers/EVERYTHING").status_code == 200
        client.post(f"/workitems/{before}/cancelrequest")
        channel.assert_quiet()


def test_a_filtered_subscriber_hears_only_of_matching_workitems(
    server: ArchiveServer, client: httpx.Client
) -> None:
    with event_channel(server, "MRONLY") as channel:
        subscribed = client.post(f"/workitems/{FILTERED_GLOBAL_SUBSCRIPTION}/subscribers/MRONLY",
                                 params={"filter": "ScheduledStationClassCodeSequence.CodeValue=MR"})  # fmt: skip
        assert subscribed.status_code == 201, subscribed.text
        create(client)  # CT
        mr = create(client, ScheduledStationClassCodeSequence=[code("MR", "Magnetic Resonance")])
        event = channel.next_event()
        assert (workitem_of(event), state_of(event)) == (mr, "SCHEDULED")
        channel.assert_quiet()


def test_without_an_open_channel_changes_go_on_and_the_next_channel_hears_what_follows(
    server: ArchiveServer, client: httpx.Client
) -> None:
    uid = create(client)
    assert client.post(f"/workitems/{uid}/subscribers/LATECOMER").status_code == 201
    transaction = new_uid()
    put_state(client, uid, "IN PROGRESS", transaction)  # nobody listening: not held up, not queued
    with event_channel(server, "LATECOMER") as channel:
        put_state(client, uid, "CANCELED", transaction)
        event = channel.next_event()
    assert (event_type(event), state_of(event)) == (STATE_REPORT, "CANCELED")


def test_a_new_connection_of_the_same_ae_takes_over_the_channel(
    server: ArchiveServer, client: httpx.Client
) -> None:
    uid = create(client)
    with event_channel(server, "TWICE") as first, event_channel(server, "TWICE") as second:
        client.post(f"/workitems/{uid}/subscribers/TWICE")
        assert state_of(second.next_event()) == "SCHEDULED"
        with pytest.raises(ConnectionClosedOK):  # closed normally by the archive: replaced
            first.next_event(2)


def test_an_event_channel_for_an_invalid_ae_title_is_refused(server: ArchiveServer) -> None:
    with pytest.raises(InvalidStatus) as refused, event_channel(server, "THIS_TITLE_IS_TOO_LONG"):
        pass
    assert refused.value.response.status_code == 400


# --------------------------------------------------------------------------- authentication


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchiveServer]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("secured-events"), dimse_enabled=False, _env_file=None, auth_enabled=True,
        auth_api_keys="viewer:viewer-secret:read,robot:robot-secret:write,other:other-secret:read",
    )  # fmt: skip
    with running_archive(settings) as running:
        yield running


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"Authorization": "Bearer nonsense"}, 401), ({"Authorization": "Bearer robot-secret"}, 403)],
    ids=["no token", "bad token", "token without read"],
)
def test_the_event_channel_asks_for_a_read_token_like_every_route(
    secured: ArchiveServer, headers: dict[str, str], status: int
) -> None:
    with pytest.raises(InvalidStatus) as refused, event_channel(secured, "WATCHER", headers):
        pass
    assert refused.value.response.status_code == status
    assert refused.value.response.headers["WWW-Authenticate"].startswith('Bearer realm="dicomweb-archive"')


def test_the_event_channel_opens_with_a_read_token_in_the_authorization_header(
    secured: ArchiveServer,
) -> None:
    with event_channel(secured, "WATCHER", {"Authorization": "Bearer viewer-secret"}) as channel:
        channel.assert_quiet(0.1)


def test_another_credential_cannot_take_over_an_open_event_channel(secured: ArchiveServer) -> None:
    """Replacing a channel hands over its events, so only the credential that opened it may replace it."""
    viewer = {"Authorization": "Bearer viewer-secret"}
    with event_channel(secured, "WATCHER", viewer) as channel:
        with pytest.raises(InvalidStatus) as refused, event_channel(
            secured, "WATCHER", {"Authorization": "Bearer other-secret"}
        ):
            pass
        assert refused.value.response.status_code == 409
        with event_channel(secured, "WATCHER", viewer) as again:  # the same credential reconnects
            again.assert_quiet(0.1)
        with pytest.raises(ConnectionClosedOK):
            channel.next_event(2)
