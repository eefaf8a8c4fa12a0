"""STOW-RS (PS3.18 10.5) through the real HTTP door, with a real DICOMweb client and real files."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid

from tests import dicom_files
from tests.servers import ArchiveServer

MULTIPART = 'multipart/related; type="application/dicom"; boundary=dicom-boundary'


def stored_file(server: ArchiveServer, ds: pydicom.Dataset) -> Path:
    return (
        server.settings.storage_path / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    )


def post(
    server: ArchiveServer, body: bytes, content_type: str = MULTIPART, path: str = "/studies", **headers: str
) -> httpx.Response:
    return httpx.post(
        server.dicomweb + path, content=body, headers={"Content-Type": content_type, **headers}, timeout=60
    )


def test_dicomweb_client_stores_every_kind_of_test_file_once(archive_server: ArchiveServer) -> None:
    client = DICOMwebClient(archive_server.dicomweb)
    datasets = [dicom_files.renewed(name) for name in dicom_files.KINDS]
    response = client.store_instances(datasets)
    assert len(response.ReferencedSOPSequence) == len(datasets)
    assert "FailedSOPSequence" not in response
    for ds in datasets:
        on_disk = pydicom.dcmread(stored_file(archive_server, ds))
        assert on_disk.SOPInstanceUID == ds.SOPInstanceUID
        assert on_disk.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        if "PixelData" in ds:
            assert on_disk.PixelData == ds.PixelData


def test_the_bytes_posted_are_the_bytes_on_disk(archive_server: ArchiveServer) -> None:
    sent = {name: dicom_files.part10(dicom_files.renewed(name)) for name in ("JPEG2000.dcm", "CT_small.dcm")}
    response = post(archive_server, dicom_files.multipart(list(sent.values())))
    assert response.status_code == 200
    for content in sent.values():
        ds = pydicom.dcmread(io.BytesIO(content))
        assert stored_file(archive_server, ds).read_bytes() == content


def test_the_answer_lists_each_instance_with_its_retrieve_url(archive_server: ArchiveServer) -> None:
    ds = dicom_files.renewed("CT_small.dcm")
    response = post(
        archive_server, dicom_files.multipart([dicom_files.part10(ds)]), Accept="application/dicom+json"
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom+json")
    body = response.json()
    assert body["00081190"]["Value"] == [f"{archive_server.dicomweb}/studies/{ds.StudyInstanceUID}"]
    (item,) = body["00081199"]["Value"]
    assert item["00081155"]["Value"] == [ds.SOPInstanceUID]
    assert item["00081190"]["Value"][0].endswith(f"/instances/{ds.SOPInstanceUID}")


def test_retrieve_url_follows_the_forwarded_host_of_a_reverse_proxy(archive_server: ArchiveServer) -> None:
    ds = dicom_files.renewed("CT_small.dcm")
    response = post(
        archive_server,
        dicom_files.multipart([dicom_files.part10(ds)]),
        **{"X-Forwarded-Host": "pacs.example.org", "X-Forwarded-Proto": "https"},
    )
    assert response.json()["00081190"]["Value"][0].startswith("https://pacs.example.org/dicom-web/studies/")


def test_an_xml_answer_is_given_when_asked(archive_server: ArchiveServer) -> None:
    ds = dicom_files.renewed("CT_small.dcm")
    response = post(
        archive_server, dicom_files.multipart([dicom_files.part10(ds)]), Accept="application/dicom+xml"
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom+xml")
    assert f'<Value number="1">{ds.SOPInstanceUID}</Value>' in response.text
    assert "<NativeDicomModel" in response.text


def test_a_duplicate_instance_answers_200_and_keeps_one_copy(archive_server: ArchiveServer) -> None:
    content = dicom_files.part10(dicom_files.renewed("CT_small.dcm"))
    response = post(archive_server, dicom_files.multipart([content, content]))
    assert response.status_code == 200
    assert len(response.json()["00081199"]["Value"]) == 2
    again = post(archive_server, dicom_files.multipart([content]))
    assert again.status_code == 200
    assert "replaced" in again.headers["warning"]
    ds = pydicom.dcmread(io.BytesIO(content))
    series = stored_file(archive_server, ds).parent
    assert [p.name for p in series.iterdir()] == [f"{ds.SOPInstanceUID}.dcm"]


def test_a_batch_of_200_with_one_bad_instance_stores_the_other_199(archive_server: ArchiveServer) -> None:
    study = generate_uid()
    good = [dicom_files.renewed("CT_small.dcm", StudyInstanceUID=study) for _ in range(199)]
    bad = dicom_files.renewed("CT_small.dcm", StudyInstanceUID=study)
    del bad.SOPInstanceUID
    parts = [dicom_files.part10(ds) for ds in good[:100]] + [dicom_files.part10(bad)]
    parts += [dicom_files.part10(ds) for ds in good[100:]]
    response = post(archive_server, dicom_files.multipart(parts))
    assert response.status_code == 202
    body = response.json()
    assert len(body["00081199"]["Value"]) == 199
    failures = body.get("00081198", {}).get("Value", []) + body.get("0008119A", {}).get("Value", [])
    assert len(failures) == 1
    assert all(stored_file(archive_server, ds).is_file() for ds in good)


def test_an_instance_of_another_study_fails_with_0xA900(archive_server: ArchiveServer) -> None:
    ds = dicom_files.renewed("CT_small.dcm")
    response = post(
        archive_server, dicom_files.multipart([dicom_files.part10(ds)]), path=f"/studies/{generate_uid()}"
    )
    assert response.status_code == 409
    (failed,) = response.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xA900]
    assert not stored_file(archive_server, ds).exists()


def test_a_uid_that_tries_to_climb_out_of_the_storage_root_is_refused(archive_server: ArchiveServer) -> None:
    ds = dicom_files.renewed("CT_small.dcm")
    ds.SeriesInstanceUID = "../../../../tmp/evil"
    response = post(archive_server, dicom_files.multipart([dicom_files.part10(ds)]))
    assert response.status_code == 409
    assert not any(archive_server.settings.storage_path.parent.rglob("evil*"))
    assert post(archive_server, b"", path="/studies/..%2F..%2Fetc").status_code in (400, 404)


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"", MULTIPART, 400),
        (b"--dicom-boundary--\r\n", MULTIPART, 400),
        (b"hello", "application/json", 415),
        (b"hello", 'multipart/related; type="application/dicom"', 400),
        (b"hello", 'multipart/related; type="text/plain"; boundary=x', 415),
        (b"--dicom-boundary\r\nContent-Type: application/dicom\r\n\r\nDICM", MULTIPART, 400),
    ],
    ids=["empty body", "no parts", "wrong content type", "no boundary", "unsupported part type", "truncated"],
)
def test_a_malformed_request_gets_a_clear_4xx(
    archive_server: ArchiveServer, body: bytes, content_type: str, status: int
) -> None:
    response = post(archive_server, body, content_type)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/dicom+json")
    assert response.json()["00000902"]["Value"][0]


def test_a_part_that_is_not_dicom_fails_alone(archive_server: ArchiveServer) -> None:
    good = dicom_files.renewed("CT_small.dcm")
    body = dicom_files.multipart([b"this is not DICOM at all", dicom_files.part10(good)])
    response = post(archive_server, body)
    assert response.status_code == 202
    assert response.json()["0008119A"]["Value"][0]["00081197"]["Value"] == [0xC000]
    assert stored_file(archive_server, good).is_file()


def test_an_unquoted_boundary_is_accepted(archive_server: ArchiveServer) -> None:
    ds = dicom_files.renewed("CT_small.dcm")
    body = dicom_files.multipart([dicom_files.part10(ds)], boundary="abc123")
    assert (
        post(archive_server, body, "multipart/related; type=application/dicom; boundary=abc123").status_code
        == 200
    )


def test_a_truncated_body_keeps_the_instances_received_before_the_cut(archive_server: ArchiveServer) -> None:
    first = dicom_files.renewed("CT_small.dcm")
    body = dicom_files.multipart(
        [dicom_files.part10(first), dicom_files.part10(dicom_files.renewed("CT_small.dcm"))]
    )
    response = post(archive_server, body[: len(body) - 5000])
    assert response.status_code == 202
    assert stored_file(archive_server, first).is_file()


def test_metadata_and_bulk_data_parts_are_assembled_into_an_instance(archive_server: ArchiveServer) -> None:
    ds = dicom_files.renewed("CT_small.dcm")
    metadata = ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=lambda e: "pixels")
    boundary = "meta-bulk"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom+json\r\n\r\n".encode()
        + json.dumps([metadata]).encode()
        + f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Location: pixels\r\n\r\n".encode()
        + ds.PixelData
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = post(
        archive_server, body, f'multipart/related; type="application/dicom+json"; boundary={boundary}'
    )
    assert response.status_code == 200, response.text
    stored = pydicom.dcmread(stored_file(archive_server, ds))
    assert stored.PixelData == ds.PixelData
    assert stored.PatientName == ds.PatientName


def test_when_nothing_can_be_staged_each_instance_fails_with_0xA700_and_the_service_goes_on(
    tmp_path: Path,
) -> None:
    from app.config import Settings
    from tests.servers import running_archive

    settings = Settings(data_dir=tmp_path, dimse_enabled=False, _env_file=None)  # type: ignore[call-arg]
    instances = [dicom_files.renewed("CT_small.dcm") for _ in range(3)]
    with running_archive(settings) as server:
        staging = settings.storage_path / ".incoming"
        for entry in staging.iterdir():
            entry.unlink()
        staging.rmdir()
        staging.write_text("a file where the staging folder should be")  # every stage() now fails
        response = post(server, dicom_files.multipart([dicom_files.part10(ds) for ds in instances]))
        assert response.status_code == 409
        failures = response.json()["0008119A"]["Value"]
        assert [f["00081197"]["Value"] for f in failures] == [[0xA700]] * 3
        staging.unlink()
        staging.mkdir()
        assert post(server, dicom_files.multipart([dicom_files.part10(instances[0])])).status_code == 200
