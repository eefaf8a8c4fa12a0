"""The Modality Worklist over DIMSE (dimse_bridge/worklist.py): what a modality's `findscu -W` gets for work
scheduled through UPS-RS one line earlier.

The archive runs in this process with its DICOM door on 127.0.0.1; the RIS side is UPS-RS over HTTP (httpx), the
modality side DCMTK's findscu (TCP_NODELAY=1) writing each answer to a file (-X), and pynetdicom where a test
needs the exact status of a refusal. Scheduled station AE titles and patient IDs are this module's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from tests.dimse.workflow_peers import (
    BACKENDS,
    MWL_FIND,
    UPS_PUSH,
    association,
    backend_url,
    c_find,
    findscu_worklist,
    schedule,
    workflow_archive,
    workitem_json,
)
from tests.servers import ArchiveServer

SPS = "ScheduledProcedureStepSequence[0]"


@pytest.fixture(scope="module", params=BACKENDS)
def archive(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ArchiveServer]:
    """One archive per metadata backend: the worklist is narrowed by each store's own date comparison."""
    with workflow_archive(tmp_path_factory.mktemp("worklist"), mongo_url=backend_url(request)) as server:
        yield server


@pytest.fixture(scope="module")
def scheduled(archive: ArchiveServer) -> dict[str, str]:
    """Four steps for two rooms over three days; name -> workitem UID."""
    return {
        "alpha": schedule(archive, workitem_json(station="WL_CT1", start="20300105090000",
                                                 patient_name="WLTEST^ALPHA", patient_id="WL-1")),
        "beta": schedule(archive, workitem_json(station="WL_CT1", start="20300106103000",
                                                patient_name="WLTEST^BETA", patient_id="WL-2")),
        "gamma": schedule(archive, workitem_json(station="WL_MR1", modality="MR", start="20300105110000",
                                                 patient_name="OTHER^GAMMA", patient_id="WL-3", label="MR knee")),
        "delta": schedule(archive, workitem_json(station="WL_CT1", start="20300107080000",
                                                 patient_name="WLTEST^DELTA", patient_id="WL-4")),
    }  # fmt: skip


def names(answers: list[Dataset]) -> list[str]:
    return sorted(str(ds.PatientName) for ds in answers)


def test_a_modality_is_offered_the_steps_scheduled_on_its_station(
    archive: ArchiveServer, scheduled: dict[str, str], tmp_path: Path
) -> None:
    answers = findscu_worklist(
        archive, tmp_path, "PatientName", "PatientID", f"{SPS}.ScheduledStationAETitle=WL_CT1",
        f"{SPS}.ScheduledProcedureStepStartDate", f"{SPS}.ScheduledProcedureStepStartTime", f"{SPS}.Modality",
        f"{SPS}.ScheduledProcedureStepID", f"{SPS}.ScheduledProcedureStepDescription", "StudyInstanceUID",
        calling="WL_CT1",
    )  # fmt: skip
    assert names(answers) == ["WLTEST^ALPHA", "WLTEST^BETA", "WLTEST^DELTA"]
    alpha = next(ds for ds in answers if ds.PatientID == "WL-1")
    step = alpha.ScheduledProcedureStepSequence[0]
    assert step.ScheduledStationAETitle == "WL_CT1"
    assert step.ScheduledProcedureStepStartDate == "20300105"
    assert step.ScheduledProcedureStepStartTime.startswith("0900")
    assert step.Modality == "CT"
    assert step.ScheduledProcedureStepDescription == "CT chest"
    assert len(step.ScheduledProcedureStepID) == 16
    assert alpha.StudyInstanceUID  # made up for a request that names none, the same on each query


def test_a_date_range_selects_the_days_asked_for(
    archive: ArchiveServer, scheduled: dict[str, str], tmp_path: Path
) -> None:
    day = findscu_worklist(
        archive, tmp_path, "PatientName", f"{SPS}.ScheduledProcedureStepStartDate=20300105"
    )
    assert names(day) == ["OTHER^GAMMA", "WLTEST^ALPHA"]
    both = findscu_worklist(
        archive, tmp_path, "PatientName", f"{SPS}.ScheduledProcedureStepStartDate=20300105-20300106"
    )
    assert names(both) == ["OTHER^GAMMA", "WLTEST^ALPHA", "WLTEST^BETA"]
    later = findscu_worklist(
        archive, tmp_path, "PatientName", f"{SPS}.ScheduledProcedureStepStartDate=20300107-"
    )
    assert names(later) == ["WLTEST^DELTA"]


def test_patient_name_wildcards_and_modality_narrow_the_list(
    archive: ArchiveServer, scheduled: dict[str, str], tmp_path: Path
) -> None:
    assert names(findscu_worklist(archive, tmp_path, "PatientName=WLTEST^*")) == [
        "WLTEST^ALPHA", "WLTEST^BETA", "WLTEST^DELTA",
    ]  # fmt: skip
    assert names(findscu_worklist(archive, tmp_path, "PatientName=*GAMMA")) == ["OTHER^GAMMA"]
    assert names(findscu_worklist(archive, tmp_path, "PatientName=WLTEST^?ETA")) == ["WLTEST^BETA"]
    assert names(findscu_worklist(archive, tmp_path, "PatientName", f"{SPS}.Modality=MR")) == ["OTHER^GAMMA"]
    assert findscu_worklist(archive, tmp_path, "PatientName", f"{SPS}.Modality=US") == []


def test_an_answer_holds_the_keys_asked_for_and_nothing_else(
    archive: ArchiveServer, scheduled: dict[str, str], tmp_path: Path
) -> None:
    (answer,) = findscu_worklist(archive, tmp_path, "PatientID=WL-2", "PatientBirthDate", "AccessionNumber")
    assert answer.PatientID == "WL-2"
    assert "PatientBirthDate" in answer and answer.PatientBirthDate == ""  # asked for, not held: zero length
    assert "AccessionNumber" in answer and answer.AccessionNumber == ""
    assert "PatientName" not in answer  # not asked for
    assert "ScheduledProcedureStepSequence" not in answer


def test_a_cancelled_step_is_no_longer_offered(
    archive: ArchiveServer, scheduled: dict[str, str], tmp_path: Path
) -> None:
    epsilon = schedule(archive, workitem_json(station="WL_CT2", start="20310101080000",
                                              patient_name="CANCEL^EPSILON", patient_id="WL-5"))  # fmt: skip
    listed = findscu_worklist(archive, tmp_path, "PatientName", f"{SPS}.ScheduledStationAETitle=WL_CT2")
    assert names(listed) == ["CANCEL^EPSILON"]
    with association(archive, "RIS", UPS_PUSH) as assoc:
        reason = Dataset()
        reason.ReasonForCancellation = "patient declined"
        status, _reply = assoc.send_n_action(
            reason, 2, UPS_PUSH, epsilon
        )  # Request UPS Cancel (PS3.4 CC.2.2)
    assert status.Status == 0x0000
    assert findscu_worklist(archive, tmp_path, "PatientName", f"{SPS}.ScheduledStationAETitle=WL_CT2") == []


def test_a_malformed_date_range_is_refused_with_its_reason(archive: ArchiveServer) -> None:
    identifier = Dataset()
    identifier.PatientName = ""
    step = Dataset()
    step.ScheduledProcedureStepStartDate = "2030-01-05-2030"
    identifier.ScheduledProcedureStepSequence = DicomSequence([step])
    with association(archive, "MODALITY", MWL_FIND) as assoc:
        answers, final = c_find(assoc, identifier, MWL_FIND)
    assert answers == []
    assert final.Status == 0xC000  # Unable to process (PS3.4 Table K.4-2)
    assert "is not a date" in final.ErrorComment
    assert final.OffendingElement == [0x00400100, 0x00400002]  # the sequence and its item's key


def test_a_query_in_utf8_is_answered_in_utf8(archive: ArchiveServer, scheduled: dict[str, str]) -> None:
    schedule(archive, workitem_json(station="WL_CT3", start="20310102080000",
                                    patient_name="MÜLLER^JOSÉ", patient_id="WL-6"))  # fmt: skip
    identifier = Dataset()
    identifier.SpecificCharacterSet = "ISO_IR 192"
    identifier.PatientName = "MÜLLER*"
    identifier.PatientID = ""
    with association(archive, "MODALITY", MWL_FIND) as assoc:
        answers, final = c_find(assoc, identifier, MWL_FIND)
    assert final.Status == 0x0000
    assert [str(ds.PatientName) for ds in answers] == ["MÜLLER^JOSÉ"]
    assert answers[0].SpecificCharacterSet == "ISO_IR 192"
