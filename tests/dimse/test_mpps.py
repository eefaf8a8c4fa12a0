"""Modality Performed Procedure Step over DIMSE (dimse_bridge/mpps.py), as a modality reports its work.

The RIS schedules through UPS-RS, the modality takes the step from the worklist and reports it with a pynetdicom
MPPS SCU (N-CREATE IN PROGRESS, N-SET COMPLETED). What follows is observed where a user would see it: the
worklist (C-FIND), and the change feed (GET /api/changes), where the study's completion appears at once although
STUDY_QUIET_SECONDS is 300, so only the MPPS can have ended the quiet wait.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid
from pynetdicom.association import Association

from tests import dicom_files
from tests.dimse.workflow_peers import (
    BACKENDS,
    MPPS,
    MWL_FIND,
    association,
    backend_url,
    c_find,
    schedule,
    workflow_archive,
    workitem_json,
)
from tests.servers import ArchiveServer

FEED_WAIT = 15.0


@pytest.fixture(scope="module", params=BACKENDS)
def archive(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ArchiveServer]:
    """One archive per metadata backend, its studies completed after 300 s of quiet unless an MPPS says so."""
    data_dir = tmp_path_factory.mktemp("mpps")
    with workflow_archive(data_dir, mongo_url=backend_url(request), study_quiet_seconds=300) as server:
        yield server


def worklist(assoc: Association, patient_id: str) -> list[Dataset]:
    identifier = Dataset()
    identifier.PatientID = patient_id
    identifier.StudyInstanceUID = ""
    identifier.AccessionNumber = ""
    step = Dataset()
    step.ScheduledProcedureStepID = ""
    step.ScheduledStationAETitle = ""
    identifier.ScheduledProcedureStepSequence = DicomSequence([step])
    answers, final = c_find(assoc, identifier, MWL_FIND)
    assert final.Status == 0x0000
    return answers


def in_progress(item: Dataset, station: str) -> Dataset:
    """The N-CREATE attribute list (PS3.4 Table F.7.2-1) of a modality starting the worklist item `item`."""
    ds = Dataset()
    scheduled = Dataset()
    scheduled.StudyInstanceUID = item.StudyInstanceUID
    scheduled.AccessionNumber = item.AccessionNumber
    scheduled.ScheduledProcedureStepID = item.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID
    scheduled.ReferencedStudySequence = DicomSequence([])
    ds.ScheduledStepAttributesSequence = DicomSequence([scheduled])
    ds.PatientName = "MPPS^PATIENT"
    ds.PatientID = item.PatientID
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.PerformedProcedureStepID = "PPS-" + item.PatientID
    ds.PerformedStationAETitle = station
    ds.PerformedProcedureStepStartDate = "20300105"
    ds.PerformedProcedureStepStartTime = "091500"
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepDescription = "CT chest"
    ds.Modality = "CT"
    ds.StudyID = "1"
    ds.PerformedSeriesSequence = DicomSequence([])
    return ds


def completed() -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = "COMPLETED"
    ds.PerformedProcedureStepEndDate = "20300105"
    ds.PerformedProcedureStepEndTime = "093000"
    return ds


def completions(archive: ArchiveServer) -> list[str]:
    """The studies the change feed says are complete."""
    found: list[str] = []
    since = 0
    while True:
        page: dict[str, Any] = httpx.get(
            f"{archive.base_url}/api/changes", params={"since": since, "limit": 1000}, timeout=30
        ).json()
        found += [c["StudyInstanceUID"] for c in page["changes"] if c["type"] == "study.completed"]
        since = page["last"]
        if page["done"]:
            return found


def test_a_completed_step_leaves_the_worklist_and_completes_its_study_at_once(archive: ArchiveServer) -> None:
    study = generate_uid()
    schedule(
        archive, workitem_json(station="MPPS_CT", patient_id="MPPS-1", study_uid=study, accession="ACC-1")
    )
    instance = dicom_files.renewed("CT_small.dcm", PatientID="MPPS-1", AccessionNumber="ACC-1")
    instance.StudyInstanceUID = study
    dicom_files.stow(
        archive.dicomweb, [instance]
    )  # the study now waits STUDY_QUIET_SECONDS (300) to complete
    pps = generate_uid()
    with association(archive, "MPPS_CT", MWL_FIND, MPPS) as assoc:
        (item,) = worklist(assoc, "MPPS-1")
        assert item.StudyInstanceUID == study
        status, _ = assoc.send_n_create(in_progress(item, "MPPS_CT"), MPPS, pps)
        assert status.Status == 0x0000
        assert len(worklist(assoc, "MPPS-1")) == 1  # IN PROGRESS: still scheduled until it is done
        assert study not in completions(archive)

        status, _ = assoc.send_n_set(completed(), MPPS, pps)
        assert status.Status == 0x0000
        assert worklist(assoc, "MPPS-1") == []
        deadline = time.monotonic() + FEED_WAIT
        while study not in completions(archive):
            assert time.monotonic() < deadline, "the MPPS did not end the study's quiet wait"
            time.sleep(0.1)

        # A final step is final (PS3.4 F.7.2.2.2): Processing failure with Error ID A710.
        status, _ = assoc.send_n_set(completed(), MPPS, pps)
        assert status.Status == 0x0110
        assert status.ErrorID == 0xA710
        assert "may no longer be updated" in status.ErrorComment


def test_a_discontinued_step_leaves_the_worklist_too(archive: ArchiveServer) -> None:
    schedule(archive, workitem_json(station="MPPS_CT", patient_id="MPPS-2", study_uid=generate_uid()))
    pps = generate_uid()
    with association(archive, "MPPS_CT", MWL_FIND, MPPS) as assoc:
        (item,) = worklist(assoc, "MPPS-2")
        assert assoc.send_n_create(in_progress(item, "MPPS_CT"), MPPS, pps)[0].Status == 0x0000
        stop = completed()
        stop.PerformedProcedureStepStatus = "DISCONTINUED"
        assert assoc.send_n_set(stop, MPPS, pps)[0].Status == 0x0000
        assert worklist(assoc, "MPPS-2") == []


def test_bad_reports_are_refused_with_the_status_that_says_why(archive: ArchiveServer) -> None:
    schedule(archive, workitem_json(station="MPPS_CT", patient_id="MPPS-3", study_uid=generate_uid()))
    pps = generate_uid()
    with association(archive, "MPPS_CT", MWL_FIND, MPPS) as assoc:
        (item,) = worklist(assoc, "MPPS-3")
        created = in_progress(item, "MPPS_CT")
        assert assoc.send_n_create(created, MPPS, pps)[0].Status == 0x0000
        twice, _ = assoc.send_n_create(created, MPPS, pps)
        assert twice.Status == 0x0111  # Duplicate SOP Instance

        unknown, _ = assoc.send_n_set(completed(), MPPS, generate_uid())
        assert unknown.Status == 0x0112  # No such SOP Instance

        no_modality = in_progress(item, "MPPS_CT")
        del no_modality.Modality
        missing, _ = assoc.send_n_create(no_modality, MPPS, generate_uid())
        assert missing.Status == 0x0120  # Missing attribute
        assert "Modality" in missing.ErrorComment

        born_done = in_progress(item, "MPPS_CT")
        born_done.PerformedProcedureStepStatus = "COMPLETED"
        invalid, _ = assoc.send_n_create(born_done, MPPS, generate_uid())
        assert invalid.Status == 0x0106  # Invalid attribute value: a step is created IN PROGRESS

        without_end = Dataset()
        without_end.PerformedProcedureStepStatus = "COMPLETED"
        early, _ = assoc.send_n_set(without_end, MPPS, pps)
        assert early.Status == 0x0120  # a final step needs its end date and time
        assert len(worklist(assoc, "MPPS-3")) == 1  # nothing was performed
