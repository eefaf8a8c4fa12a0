"""dimse_bridge/qr.py without a network: identifiers in, query models and answer identifiers out."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from app.core.dicom.attributes import Level
from app.core.query.model import MatchKind, SearchResult
from dimse_bridge import qr
from dimse_bridge.bridge import LoopBridge
from dimse_bridge.context import DimseContext


def identifier(level: str, **keys: object) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def test_levels_of_each_model() -> None:
    assert qr.request_level(identifier("PATIENT"), qr.PATIENT_ROOT_FIND) is Level.PATIENT
    assert qr.request_level(identifier("IMAGE "), qr.STUDY_ROOT_MOVE) is Level.IMAGE
    with pytest.raises(qr.IdentifierError) as refused:
        qr.request_level(identifier("PATIENT"), qr.STUDY_ROOT_GET)
    assert refused.value.code == 0xA900
    with pytest.raises(qr.IdentifierError):
        qr.request_level(Dataset(), qr.STUDY_ROOT_FIND)


def test_required_keys_are_the_unique_keys_down_to_the_level() -> None:
    assert qr.required_keys(Level.SERIES, qr.PATIENT_ROOT_FIND) == ("00100020", "0020000D", "0020000E")
    assert qr.required_keys(Level.SERIES, qr.STUDY_ROOT_FIND) == ("0020000D", "0020000E")


def test_the_find_model_returns_the_required_keys_without_touching_the_identifier() -> None:
    request = identifier("STUDY", PatientName="DOE*", StudyDate="20000101-")
    model = qr.find_model(request, Level.STUDY, qr.PATIENT_ROOT_FIND)
    assert isinstance(model.include, frozenset)
    assert {"00100020", "0020000D", "00100010", "00080020"} <= model.include
    assert "PatientID" not in request and "StudyInstanceUID" not in request
    kinds = {m.attribute.keyword: m.kind for m in model.matches}
    assert kinds == {"PatientName": MatchKind.WILDCARD, "StudyDate": MatchKind.RANGE}


@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")
def test_a_value_that_cannot_be_matched_is_unable_to_process() -> None:
    with pytest.raises(qr.IdentifierError) as refused:
        qr.find_model(identifier("STUDY", StudyDate="2010-13-45"), Level.STUDY, qr.STUDY_ROOT_FIND)
    assert refused.value.code == 0xC000


def test_a_retrieve_uses_only_the_unique_keys() -> None:
    request = identifier(
        "SERIES", StudyInstanceUID="1.2.3", SeriesInstanceUID="1.2.3.4\\1.2.3.5", Modality="CT"
    )
    model = qr.retrieve_model(request, Level.SERIES, qr.STUDY_ROOT_MOVE)
    assert model.level is Level.IMAGE
    matched = {m.attribute.keyword: (m.kind, m.values) for m in model.matches}
    assert matched == {
        "StudyInstanceUID": (MatchKind.SINGLE, ("1.2.3",)),
        "SeriesInstanceUID": (MatchKind.UID_LIST, ("1.2.3.4", "1.2.3.5")),
    }
    assert not model.fetched_levels and not model.dataset_tags  # only the UIDs are read


@pytest.mark.parametrize(
    ("level", "keys"),
    [
        ("SERIES", {"StudyInstanceUID": "1.2.3"}),  # the level's own unique key is missing
        ("PATIENT", {"PatientID": "*"}),  # would move every patient
        ("PATIENT", {"PatientID": "DOE?"}),
    ],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_a_retrieve_without_a_usable_unique_key_is_refused(level: str, keys: dict[str, str]) -> None:
    with pytest.raises(qr.IdentifierError) as refused:
        qr.retrieve_model(identifier(level, **keys), Level(level), qr.PATIENT_ROOT_GET)
    assert refused.value.code == 0xA900


def test_an_answer_holds_the_requested_and_required_keys_only() -> None:
    request = identifier("STUDY", PatientName="", StudyDate="", RetrieveAETitle="", InstanceAvailability="")
    row = {
        "00080020": {"vr": "DA", "Value": ["20100105"]},
        "00080030": {"vr": "TM", "Value": ["101010"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "DOE^JOHN"}]},
        "00100020": {"vr": "LO", "Value": ["P1"]},
        "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
    }
    answer = qr.find_answer(row, request, Level.STUDY, ("0020000D",), "ARCHIVE")
    assert {e.keyword for e in answer} == {
        "QueryRetrieveLevel", "PatientName", "StudyDate", "StudyInstanceUID", "RetrieveAETitle",
        "InstanceAvailability",
    }  # fmt: skip
    assert (answer.RetrieveAETitle, answer.InstanceAvailability) == ("ARCHIVE", "ONLINE")
    assert "SpecificCharacterSet" not in answer


def test_a_missing_value_is_returned_empty_and_unicode_is_declared() -> None:
    request = identifier("PATIENT", PatientName="", PatientBirthDate="")
    row = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "MÜLLER^JÜRGEN"}]}}
    answer = qr.find_answer(row, request, Level.PATIENT, ("00100020",), "ARCHIVE")
    assert answer.SpecificCharacterSet == "ISO_IR 192"
    assert str(answer.PatientName) == "MÜLLER^JÜRGEN"
    assert answer["PatientBirthDate"].is_empty
    assert "PatientID" not in answer  # a required key the archive holds no value for


def test_sequence_items_are_reduced_to_the_requested_keys() -> None:
    item = Dataset()
    item.CodeValue = ""
    request = identifier("STUDY", ProcedureCodeSequence=Sequence([item]))
    row = {
        "00081032": {
            "vr": "SQ",
            "Value": [
                {
                    "00080100": {"vr": "SH", "Value": ["CT1"]},
                    "00080102": {"vr": "SH", "Value": ["LOCAL"]},
                }
            ],
        }
    }
    answer = qr.find_answer(row, request, Level.STUDY, (), "ARCHIVE")
    [held] = answer.ProcedureCodeSequence
    assert {e.keyword for e in held} == {"CodeValue"} and held.CodeValue == "CT1"


# -- the C-FIND generator, with a fake archive on a real loop ---------------------------------------------


class FakeRepository:
    def __init__(self, total: int) -> None:
        self.total = total
        self.pages: list[tuple[int | None, int]] = []

    async def search(self, model: Any) -> SearchResult:
        self.pages.append((model.limit, model.offset))
        end = min(model.offset + model.limit, self.total)
        rows = [{"0020000D": {"vr": "UI", "Value": [f"1.2.{n}"]}} for n in range(model.offset, end)]
        return SearchResult(rows, self.total - end)


class FakeEvent:
    def __init__(self, request: Dataset, sop_class: str, cancel_after: int | None = None) -> None:
        self.identifier = request
        self.request = SimpleNamespace(AffectedSOPClassUID=sop_class)
        requestor = SimpleNamespace(
            primitive=SimpleNamespace(calling_ae_title="FAKE"), ae_title="FAKE", address="127.0.0.1", port=1
        )
        self.assoc = SimpleNamespace(requestor=requestor)
        self.cancel_after = cancel_after
        self.seen = 0

    @property
    def is_cancelled(self) -> bool:
        return self.cancel_after is not None and self.seen >= self.cancel_after


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    running = asyncio.new_event_loop()
    thread = threading.Thread(target=running.run_forever, daemon=True)
    thread.start()
    yield running
    running.call_soon_threadsafe(running.stop)
    thread.join(timeout=10)
    running.close()


def dimse_context(loop: asyncio.AbstractEventLoop, repository: FakeRepository) -> DimseContext:
    archive = SimpleNamespace(repository=repository, settings=SimpleNamespace(ae_title="ARCHIVE", dimse_dimse_timeout=10))
    return DimseContext(archive=archive, bridge=LoopBridge(loop, timeout=10), policy=None, access=None)  # type: ignore[arg-type]


def run_find(event: FakeEvent, dimse: DimseContext) -> list[tuple[Any, Any]]:
    out = []
    for response in qr.handle_find(event, dimse):
        out.append(response)
        event.seen += 1
    return out


def test_find_pages_through_every_match(loop: asyncio.AbstractEventLoop) -> None:
    repository = FakeRepository(total=2 * qr.FIND_PAGE_SIZE + 50)
    responses = run_find(FakeEvent(identifier("STUDY", StudyInstanceUID=""), qr.STUDY_ROOT_FIND),
                         dimse_context(loop, repository))  # fmt: skip
    assert len(responses) == repository.total
    assert {status for status, _ in responses} == {0xFF00}
    assert responses[-1][1].StudyInstanceUID == f"1.2.{repository.total - 1}"
    assert [offset for _, offset in repository.pages] == [0, qr.FIND_PAGE_SIZE, 2 * qr.FIND_PAGE_SIZE]


def test_find_stops_at_c_cancel(loop: asyncio.AbstractEventLoop) -> None:
    repository = FakeRepository(total=1000)
    event = FakeEvent(identifier("STUDY", StudyInstanceUID=""), qr.STUDY_ROOT_FIND, cancel_after=3)
    responses = run_find(event, dimse_context(loop, repository))
    assert [status for status, _ in responses] == [0xFF00, 0xFF00, 0xFF00, 0xFE00]
    assert len(repository.pages) == 1  # no further page was read


def test_find_answers_a700_when_the_archive_is_closing(loop: asyncio.AbstractEventLoop) -> None:
    dimse = dimse_context(loop, FakeRepository(total=5))
    dimse.bridge.close()
    [(status, _)] = run_find(FakeEvent(identifier("STUDY", StudyInstanceUID=""), qr.STUDY_ROOT_FIND), dimse)
    assert status.Status == 0xA700


# -- the queries against both repositories ------------------------------------------------------------------


async def test_patient_level_find_and_patient_level_retrieve_on_each_repository(
    repository: Any, instance_record: Any
) -> None:
    """Patient Root: a PATIENT-level C-FIND reads the patients; a PATIENT-level retrieve names every instance of
    the patient's studies, and only those (SQLite and MongoDB alike)."""
    from app.core.retrieve.service import RetrieveService

    records = [
        instance_record(PatientID="QRU-1", PatientName="DOE^JOHN", StudyInstanceUID="1.9.1", SeriesInstanceUID="1.9.1.1",
                        SOPInstanceUID="1.9.1.1.1", InstanceNumber=1),
        instance_record(PatientID="QRU-1", PatientName="DOE^JOHN", StudyInstanceUID="1.9.2", SeriesInstanceUID="1.9.2.1",
                        SOPInstanceUID="1.9.2.1.1", InstanceNumber=1),
        instance_record(PatientID="QRU-1", PatientName="DOE^JOHN", StudyInstanceUID="1.9.2", SeriesInstanceUID="1.9.2.1",
                        SOPInstanceUID="1.9.2.1.2", InstanceNumber=2),
        instance_record(PatientID="QRU-2", PatientName="ROE^JANE", StudyInstanceUID="1.9.3", SeriesInstanceUID="1.9.3.1",
                        SOPInstanceUID="1.9.3.1.1", InstanceNumber=1),
    ]  # fmt: skip
    for record in records:
        await repository.store_instance(record)

    request = identifier("PATIENT", PatientName="DOE*", NumberOfPatientRelatedInstances="")
    model = qr.find_model(request, Level.PATIENT, qr.PATIENT_ROOT_FIND)
    result = await repository.search(model)
    [answer] = [qr.find_answer(row, request, Level.PATIENT, ("00100020",), "ARCHIVE") for row in result.rows]
    assert (answer.PatientID, str(answer.PatientName), answer.NumberOfPatientRelatedInstances) == (
        "QRU-1",
        "DOE^JOHN",
        3,
    )

    retrieval = RetrieveService(repository, None)  # type: ignore[arg-type]
    retrieve = qr.retrieve_model(
        identifier("PATIENT", PatientID="QRU-1"), Level.PATIENT, qr.PATIENT_ROOT_MOVE
    )
    refs = await retrieval.resolve_matching(retrieve)
    assert [ref.sop_instance_uid for ref in refs] == ["1.9.1.1.1", "1.9.2.1.1", "1.9.2.1.2"]
    listed = qr.retrieve_model(
        identifier(
            "IMAGE",
            StudyInstanceUID="1.9.2",
            SeriesInstanceUID="1.9.2.1",
            SOPInstanceUID="1.9.2.1.2\\1.9.3.1.1",
        ),
        Level.IMAGE,
        qr.STUDY_ROOT_GET,
    )
    assert [ref.sop_instance_uid for ref in await retrieval.resolve_matching(listed)] == ["1.9.2.1.2"]
