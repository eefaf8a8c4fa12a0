"""A UPS-RS user agent for tests: workitems to create, and the event channel (PS3.18 8.10.4) of a subscriber AE.

Any test that changes workitems through any door can watch the events they cause:

    with event_channel(server, "WATCHER") as channel:
        httpx.post(f"{server.dicomweb}/workitems/{uid}/subscribers/WATCHER")   # or subscribe over DIMSE
        assert state_of(channel.next_event()) == "SCHEDULED"                  # the state, reported at once
        ...                                                                    # e.g. an N-ACTION claims it
        event = channel.next_event()
        assert event_type(event) == 1 and state_of(event) == "IN PROGRESS"

Open the channel before subscribing: the state reported at once goes only to an open channel.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from websockets.sync.client import ClientConnection, connect

from app.core.workflow import attributes as a
from tests.servers import ArchiveServer

JSONDict = dict[str, Any]


def workitem(**keywords: Any) -> JSONDict:
    """A DICOM JSON workitem that Create Workitem accepts (PS3.4 Table CC.2.5-3, Type 1 on N-CREATE), with
    `keywords` as attribute values over the defaults (None removes one; a list of dicts makes a sequence)."""
    values: dict[str, Any] = {
        "ProcedureStepState": "SCHEDULED",
        "ScheduledProcedureStepPriority": "MEDIUM",
        "ProcedureStepLabel": "CT chest",
        "WorklistLabel": "CT",
        "ScheduledProcedureStepStartDateTime": "20300101090000",
        "InputReadinessState": "READY",
        "PatientName": "DOE^JANE",
        "PatientID": "P-1",
        "ScheduledStationNameCodeSequence": [code("CT1", "CT room 1")],
        "ScheduledStationClassCodeSequence": [code("CT", "Computed Tomography")],
    }
    values.update(keywords)
    dataset: JSONDict = {}
    for keyword, value in values.items():
        if value is None:
            continue
        if isinstance(value, list) and value and isinstance(value[0], dict):
            dataset[a.key(keyword)] = {"vr": "SQ", "Value": value}
        else:
            a.put(dataset, keyword, *(value if isinstance(value, list) else [value]))
    return dataset


def code(value: str, meaning: str, scheme: str = "99LOCAL") -> JSONDict:
    item: JSONDict = {}
    a.put(item, "CodeValue", value)
    a.put(item, "CodingSchemeDesignator", scheme)
    a.put(item, "CodeMeaning", meaning)
    return item


def state_change(state: str, transaction_uid: str | None) -> JSONDict:
    """The body of Change Workitem State (PS3.18 11.7.1.4)."""
    body: JSONDict = {}
    a.put(body, "ProcedureStepState", state)
    if transaction_uid is not None:
        a.put(body, "TransactionUID", transaction_uid)
    return body


def final_state_attributes() -> JSONDict:
    """What COMPLETED needs (PS3.4 Table CC.2.5-3, Final State Requirements), as an Update body."""
    performed: JSONDict = {}
    a.put(performed, "PerformedProcedureStepStartDateTime", "20300101090500")
    a.put(performed, "PerformedProcedureStepEndDateTime", "20300101093000")
    body: JSONDict = {}
    body[a.key("UnifiedProcedureStepPerformedProcedureSequence")] = {"vr": "SQ", "Value": [performed]}
    return body


def value(dataset: JSONDict, keyword: str) -> Any:
    found = a.values(dataset, keyword)
    return found[0] if found else None


def state_of(event: JSONDict) -> Any:
    return value(event, "ProcedureStepState")


def event_type(event: JSONDict) -> Any:
    """Event Type ID (0000,1002): 1 state report, 2 cancel requested, 3 progress (PS3.4 Table CC.2.4-1)."""
    return (event.get("00001002") or {}).get("Value", [None])[0]


def workitem_of(event: JSONDict) -> Any:
    """Affected SOP Instance UID (0000,1000): the workitem the event is about."""
    return (event.get("00001000") or {}).get("Value", [None])[0]


class EventChannel:
    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection

    def next_event(self, timeout: float = 10) -> JSONDict:
        """The next event report; TimeoutError when none comes within `timeout` seconds."""
        text = self.connection.recv(timeout=timeout)
        event: JSONDict = json.loads(text)
        return event

    def events(self, count: int, timeout: float = 10) -> list[JSONDict]:
        return [self.next_event(timeout) for _ in range(count)]

    def assert_quiet(self, seconds: float = 0.5) -> None:
        """No event arrives within `seconds`."""
        try:
            event = self.next_event(seconds)
        except TimeoutError:
            return
        raise AssertionError(f"an event came: {event}")


def event_channel_url(server: ArchiveServer, ae_title: str) -> str:
    return f"ws{server.dicomweb.removeprefix('http')}/subscribers/{ae_title}"


@contextmanager
def event_channel(
    server: ArchiveServer, ae_title: str, headers: dict[str, str] | None = None
) -> Iterator[EventChannel]:
    """The AE's event channel on the archive under test, open for the `with` block."""
    with connect(
        event_channel_url(server, ae_title), additional_headers=headers, proxy=None, open_timeout=10
    ) as ws:
        yield EventChannel(ws)
