"""FHIR ImagingStudy sync against a real FHIR R4 endpoint (tests/fhir_server.py, validating every resource with
fhir.resources): over STOW-RS and C-STORE, re-sends, deletes, and a FHIR server that is down for a while."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from app.config import Settings
from app.fhir.builder import StudySummary, build_imaging_study, build_patient
from tests import dicom_files
from tests.fhir_server import FhirTestServer, running_fhir_server
from tests.servers import ArchiveServer, free_port, running_archive
from tests.tools import require

WAIT_SECONDS = 20


@pytest.fixture(scope="module")
def fhir_server() -> Iterator[FhirTestServer]:
    with running_fhir_server() as server:
        yield server


def settings_for(tmp_path: Path, fhir: FhirTestServer, **more: Any) -> Settings:
    return Settings(  # type: ignore[call-arg]
        data_dir=tmp_path,
        dimse_enabled=False,
        study_quiet_seconds=0.5,
        fhir_enabled=True,
        fhir_base_url=fhir.base_url,
        outbox_retry_seconds=0.2,
        _env_file=None,
        **more,
    )



def studies_named(fhir: FhirTestServer, study_uid: str) -> list[dict[str, Any]]:
    return [
        r for r in fhir.resources("ImagingStudy")
        if {"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"} in r["identifier"]
    ]


def wait_for(condition: Callable[[], bool], what: str, seconds: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(0.05)


def a_study(instances: int = 3, **attributes: Any) -> list[Dataset]:
    study_uid, series = generate_uid(), [generate_uid(), generate_uid()]
    return [
        dicom_files.renewed(
            "CT_small.dcm",
            StudyInstanceUID=study_uid,
            SeriesInstanceUID=series[i % 2],
            InstanceNumber=i + 1,
            **attributes,
        )
        for i in range(instances)
    ]


# --------------------------------------------------------------------------- the builder


def test_the_built_resources_are_valid_r4_and_carry_the_study() -> None:
    datasets = a_study(3, PatientID="PID-1", IssuerOfPatientID="HOSP", PatientName="DOE^JANE^M",
                       PatientSex="F", PatientBirthDate="19700102", AccessionNumber="ACC1")
    import json

    from app.core.ingest.header import build_record

    rows = []
    for ds in datasets:
        record = build_record(ds, pixel_data_present=True)
        rows.append((record.series_instance_uid, record.sop_instance_uid, record.dataset_json))
    summary = StudySummary.from_datasets(datasets[0].StudyInstanceUID, rows)
    patient = json.loads(build_patient(summary, "DICOMWEB").model_dump_json())
    assert patient["identifier"] == [{"system": "urn:dicom:issuer:HOSP", "value": "PID-1"}]
    assert patient["name"][0]["family"] == "DOE" and patient["name"][0]["given"] == ["JANE", "M"]
    assert (patient["gender"], patient["birthDate"]) == ("female", "1970-01-02")
    study = json.loads(build_imaging_study(summary, "Patient/p1", "Endpoint/e1").model_dump_json())
    assert study["identifier"][0] == {"system": "urn:dicom:uid", "value": f"urn:oid:{datasets[0].StudyInstanceUID}"}
    assert study["identifier"][1]["value"] == "ACC1"
    assert (study["numberOfSeries"], study["numberOfInstances"], study["status"]) == (2, 3, "available")
    assert study["modality"] == [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}]
    assert study["started"] == "2004-01-19T07:27:30-05:00"  # CT_small: StudyDate/Time and its UTC offset
    assert sorted(len(s["instance"]) for s in study["series"]) == [1, 2]
    assert study["series"][0]["instance"][0]["sopClass"]["code"] == "urn:oid:1.2.840.10008.5.1.4.1.1.2"
    assert study["endpoint"] == [{"reference": "Endpoint/e1"}]


# --------------------------------------------------------------------------- over STOW-RS


@pytest.mark.parametrize("backend", ["sqlite", "mongo"])
def test_a_stowed_study_yields_one_imaging_study_and_resends_update_it(
    tmp_path: Path, fhir_server: FhirTestServer, backend: str, request: pytest.FixtureRequest
) -> None:
    more: dict[str, Any] = {}
    if backend == "mongo":
        more = {"mongo_url": request.getfixturevalue("mongo_url"), "mongo_database": f"t_{uuid.uuid4().hex[:12]}"}
    datasets = a_study(3, PatientID=f"P-{uuid.uuid4().hex[:8]}")
    study_uid = datasets[0].StudyInstanceUID
    with running_archive(settings_for(tmp_path, fhir_server, **more)) as server:
        dicom_files.stow(server.dicomweb, datasets)
        wait_for(lambda: len(studies_named(fhir_server, study_uid)) == 1, "one ImagingStudy")
        (study,) = studies_named(fhir_server, study_uid)
        assert (study["numberOfSeries"], study["numberOfInstances"]) == (2, 3)
        patients = [p for p in fhir_server.resources("Patient")
                    if p["identifier"][0]["value"] == datasets[0].PatientID]
        assert len(patients) == 1 and study["subject"]["reference"] == f"Patient/{patients[0]['id']}"
        endpoints = [e for e in fhir_server.resources("Endpoint") if e["address"] == f"{server.base_url}/dicom-web"]
        assert len(endpoints) == 1
        assert study["endpoint"] == [{"reference": f"Endpoint/{endpoints[0]['id']}"}]
        status = httpx.get(f"{server.base_url}/api/fhir/status", timeout=30).json()
        assert status["enabled"] is True and status["synced"] >= 1

        # Re-send one instance changed, and one more: the same ImagingStudy is updated, not duplicated.
        datasets[0].SeriesDescription = "RESENT"
        extra = dicom_files.renewed("CT_small.dcm", StudyInstanceUID=study_uid,
                                    SeriesInstanceUID=datasets[0].SeriesInstanceUID, PatientID=datasets[0].PatientID)
        dicom_files.stow(server.dicomweb, [datasets[0], extra])
        wait_for(lambda: [s["numberOfInstances"] for s in studies_named(fhir_server, study_uid)] == [4],
                 "the ImagingStudy updated to 4 instances")
        (updated,) = studies_named(fhir_server, study_uid)
        assert updated["id"] == study["id"] and int(updated["meta"]["versionId"]) >= 2
        assert len([p for p in fhir_server.resources("Patient")
                    if p["identifier"][0]["value"] == datasets[0].PatientID]) == 1

        # Deleting the study removes its ImagingStudy.
        assert httpx.delete(f"{server.dicomweb}/studies/{study_uid}", timeout=30).status_code == 204
        wait_for(lambda: not studies_named(fhir_server, study_uid), "the ImagingStudy removed")


def test_a_fhir_server_down_for_a_while_loses_nothing(tmp_path: Path) -> None:
    fhir = FhirTestServer()
    fhir.start()
    try:
        with running_archive(settings_for(tmp_path, fhir)) as server:
            fhir.stop()  # down before the studies complete
            first, second = a_study(2), a_study(1)
            dicom_files.stow(server.dicomweb, first)
            dicom_files.stow(server.dicomweb, second)

            def failing() -> bool:
                status = httpx.get(f"{server.base_url}/api/fhir/status", timeout=30).json()
                return bool(status["failing"] == 2 and status["last_error"])

            wait_for(failing, "both studies failing in the outbox")
            status = httpx.get(f"{server.base_url}/api/fhir/status", timeout=30).json()
            assert status["pending"] == 2 and "ConnectError" in status["last_error"]
            fhir.start()  # back, on the same address
            for datasets in (first, second):
                uid = datasets[0].StudyInstanceUID
                wait_for(lambda uid=uid: len(studies_named(fhir, uid)) == 1, f"ImagingStudy {uid}")
            wait_for(lambda: httpx.get(f"{server.base_url}/api/fhir/status").json()["pending"] == 0,
                     "an empty outbox")
            assert len(fhir.resources("ImagingStudy")) == 2
    finally:
        fhir.stop()


def test_the_outbox_survives_a_restart_of_the_archive(tmp_path: Path) -> None:
    fhir = FhirTestServer()  # not started: down all through the first run
    settings = settings_for(tmp_path, fhir)
    datasets = a_study(2)
    with running_archive(settings) as server:
        dicom_files.stow(server.dicomweb, datasets)
        wait_for(lambda: httpx.get(f"{server.base_url}/api/fhir/status").json()["failing"] == 1,
                 "the study failing in the outbox")
    fhir.start()
    try:
        with running_archive(settings):
            wait_for(lambda: len(studies_named(fhir, datasets[0].StudyInstanceUID)) == 1, "the ImagingStudy")
    finally:
        fhir.stop()


def test_fhir_status_says_disabled_by_default(archive_server: ArchiveServer) -> None:
    assert httpx.get(f"{archive_server.base_url}/api/fhir/status", timeout=30).json() == {"enabled": False}


def test_fhir_enabled_without_a_base_url_is_refused() -> None:
    with pytest.raises(ValueError, match="FHIR_BASE_URL"):
        Settings(fhir_enabled=True, _env_file=None)  # type: ignore[call-arg]


# --------------------------------------------------------------------------- over C-STORE


def test_studies_sent_over_dimse_yield_one_imaging_study_each(tmp_path: Path, fhir_server: FhirTestServer) -> None:
    """One study wholly by C-STORE, and one whose instances come by C-STORE and STOW-RS in one burst
    (completion is tracked per study whatever the door): exactly one ImagingStudy each, fired once."""
    require("storescu")
    dimse_port = free_port()
    settings = settings_for(tmp_path / "archive", fhir_server).model_copy(
        # A quiet period long enough that a loaded machine cannot split the mixed burst in two.
        update={"dimse_enabled": True, "dimse_port": dimse_port, "study_quiet_seconds": 2.0}
    )
    by_dimse, mixed = a_study(3), a_study(3)
    files = []
    (tmp_path / "send").mkdir()
    for i, ds in enumerate([*by_dimse, *mixed[:2]]):
        path = tmp_path / "send" / f"{i}.dcm"
        path.write_bytes(dicom_files.part10(ds))
        files.append(str(path))
    with running_archive(settings) as server:
        subprocess.run(
            ["storescu", "-aec", "DICOMWEB", "-aet", "MODALITY", "127.0.0.1", str(dimse_port), *files],
            check=True, timeout=120, env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True,
        )
        dicom_files.stow(server.dicomweb, mixed[2:])
        for datasets in (by_dimse, mixed):
            uid = datasets[0].StudyInstanceUID
            wait_for(lambda uid=uid: len(studies_named(fhir_server, uid)) == 1, "one ImagingStudy")
            (study,) = studies_named(fhir_server, uid)
            assert study["numberOfInstances"] == 3 and study["numberOfSeries"] == 2
        time.sleep(2.5)  # no second completion for the same burst
        for datasets in (by_dimse, mixed):
            (study,) = studies_named(fhir_server, datasets[0].StudyInstanceUID)
            assert study["meta"]["versionId"] == "1"
