"""WADO-URI (PS3.18 §9) through the real HTTP door: `GET /wado?requestType=WADO&...`, as Weasis sends it.

Instances are stored with dicomweb-client into the module's own archive (conftest `archive_server`), then read
back as DICOM files and as rendered images; expected values come from pydicom on the original files.
"""

from __future__ import annotations

import io

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import generate_uid

from tests import dicom_files
from tests.api.test_wado import EXPLICIT_LE, RLE, error_comment, on_disk, windowed
from tests.servers import ArchiveServer

NAMES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "JPEG2000.dcm",
    "emri_small.dcm",
    "test-SR.dcm",
    "rtplan.dcm",
)


@pytest.fixture(scope="module")
def stored(archive_server: ArchiveServer) -> dict[str, Dataset]:
    datasets = {name: dicom_files.renewed(name) for name in NAMES}
    DICOMwebClient(archive_server.dicomweb).store_instances(list(datasets.values()))
    return datasets


def wado(
    server: ArchiveServer, ds: Dataset | None = None, *, prefix: str = "", **params: str
) -> httpx.Response:
    query: dict[str, str] = {"requestType": "WADO"}
    if ds is not None:
        query |= {
            "studyUID": ds.StudyInstanceUID,
            "seriesUID": ds.SeriesInstanceUID,
            "objectUID": ds.SOPInstanceUID,
        }
    query |= params
    return httpx.get(
        f"{server.base_url}{prefix}/wado", params={k: v for k, v in query.items() if v != ""}, timeout=60
    )


def image(response: httpx.Response) -> Image.Image:
    picture = Image.open(io.BytesIO(response.content))
    picture.load()
    return picture


def test_application_dicom_is_the_stored_file(
    archive_server: ArchiveServer, stored: dict[str, Dataset]
) -> None:
    ds = stored["CT_small.dcm"]
    response = wado(archive_server, ds, contentType="application/dicom")
    assert response.status_code == 200
    assert response.headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
    assert response.content == on_disk(archive_server, ds)


def test_the_default_transfer_syntax_decodes_lossless_and_keeps_lossy(
    archive_server: ArchiveServer, stored: dict[str, Dataset]
) -> None:
    rle = stored["MR_small_RLE.dcm"]
    got = pydicom.dcmread(io.BytesIO(wado(archive_server, rle, contentType="application/dicom").content))
    assert got.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert np.array_equal(got.pixel_array, rle.pixel_array)
    lossy = stored["JPEG2000.dcm"]  # PS3.18 §8.7.3.4: only the lossy form is held, so it is sent as is
    got = pydicom.dcmread(io.BytesIO(wado(archive_server, lossy, contentType="application/dicom").content))
    assert got.file_meta.TransferSyntaxUID == lossy.file_meta.TransferSyntaxUID


def test_a_transfer_syntax_is_produced_on_request(
    archive_server: ArchiveServer, stored: dict[str, Dataset]
) -> None:
    ds = stored["MR_small.dcm"]
    response = wado(archive_server, ds, contentType="application/dicom", transferSyntax=RLE)
    assert response.headers["content-type"] == f"application/dicom; transfer-syntax={RLE}"
    got = pydicom.dcmread(io.BytesIO(response.content))
    assert got.file_meta.TransferSyntaxUID == RLE
    assert np.array_equal(got.pixel_array, ds.pixel_array)


def test_an_image_is_a_jpeg_by_default(archive_server: ArchiveServer, stored: dict[str, Dataset]) -> None:
    response = wado(archive_server, stored["CT_small.dcm"])
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert image(response).size == (128, 128)


def test_a_report_is_the_dicom_object_by_default(
    archive_server: ArchiveServer, stored: dict[str, Dataset]
) -> None:
    for name in ("test-SR.dcm", "rtplan.dcm"):
        response = wado(archive_server, stored[name])
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/dicom")
        assert pydicom.dcmread(io.BytesIO(response.content)).SOPInstanceUID == stored[name].SOPInstanceUID


def test_window_and_size_of_a_png(archive_server: ArchiveServer, stored: dict[str, Dataset]) -> None:
    ds = stored["CT_small.dcm"]
    response = wado(archive_server, ds, contentType="image/png", windowCenter="40", windowWidth="400")
    got = np.asarray(image(response), dtype=float)
    expected = windowed(apply_modality_lut(ds.pixel_array, ds).astype(float), 40, 400)
    assert np.abs(got - expected).max() <= 1
    small = wado(archive_server, ds, contentType="image/png", rows="64", columns="64")
    assert image(small).size == (64, 64)
    only_rows = wado(archive_server, ds, contentType="image/png", rows="32")
    assert image(only_rows).size == (32, 32)


def test_rows_and_columns_beyond_the_output_bound_are_400_with_the_reason(
    archive_server: ArchiveServer, stored: dict[str, Dataset]
) -> None:
    ds = stored["CT_small.dcm"]  # 128 x 128: a side may grow to MAX_RENDER_SIDE (4096 by default)
    response = wado(archive_server, ds, contentType="image/png", rows="100000", columns="100000")
    assert response.status_code == 400
    assert "at most 4096x4096 is rendered from this 128x128 frame" in error_comment(response)
    assert wado(archive_server, ds, contentType="image/png", columns="4097").status_code == 400
    assert image(wado(archive_server, ds, contentType="image/png", columns="4096")).size == (4096, 4096)


def test_region_crops_the_image(archive_server: ArchiveServer, stored: dict[str, Dataset]) -> None:
    ds = stored["CT_small.dcm"]
    whole = np.asarray(image(wado(archive_server, ds, contentType="image/png")))
    part = np.asarray(image(wado(archive_server, ds, contentType="image/png", region="0.5,0.0,1.0,0.25")))
    assert part.shape == (32, 64)
    assert np.array_equal(part, whole[0:32, 64:128])


def test_frame_number_and_quality(archive_server: ArchiveServer, stored: dict[str, Dataset]) -> None:
    ds = stored["emri_small.dcm"]
    tenth = wado(archive_server, ds, contentType="image/png", frameNumber="10")
    first = wado(archive_server, ds, contentType="image/png", frameNumber="1")
    assert tenth.status_code == first.status_code == 200
    assert tenth.content != first.content
    low = wado(archive_server, stored["CT_small.dcm"], imageQuality="10")
    high = wado(archive_server, stored["CT_small.dcm"], imageQuality="100")
    assert len(low.content) < len(high.content)


def test_content_type_alternatives(archive_server: ArchiveServer, stored: dict[str, Dataset]) -> None:
    report = stored["test-SR.dcm"]
    response = wado(archive_server, report, contentType="image/jpeg,application/dicom")
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/dicom")
    response = wado(archive_server, stored["CT_small.dcm"], contentType="application/dicom;q=0.5,image/png")
    assert response.headers["content-type"] == "image/png"


def test_the_dicomweb_prefixed_path_works_too(
    archive_server: ArchiveServer, stored: dict[str, Dataset]
) -> None:
    assert wado(archive_server, stored["CT_small.dcm"], prefix="/dicom-web").status_code == 200


@pytest.mark.parametrize(
    "params",
    [
        {"requestType": ""},
        {"requestType": "WADO-RS"},
        {"objectUID": ""},
        {"studyUID": "1.2.abc"},
        {"seriesUID": "../../etc"},
        {"frameNumber": "0"},
        {"frameNumber": "11"},
        {"frameNumber": "x"},
        {"windowCenter": "40"},
        {"rows": "-5"},
        {"contentType": "application/dicom", "frameNumber": "1"},
        {"contentType": "image/png", "transferSyntax": RLE},
        {"contentType": "image/png", "imageQuality": "50"},
        {"contentType": "application/dicom", "transferSyntax": "foo"},
        {"region": "0.5,0.5,0.2,0.9"},
        {"anonymize": "yes"},
        {"contentType": "image"},
    ],
)
def test_bad_requests_are_400(
    archive_server: ArchiveServer, stored: dict[str, Dataset], params: dict[str, str]
) -> None:
    response = wado(archive_server, stored["emri_small.dcm"], **params)
    assert response.status_code == 400, response.text
    assert error_comment(response)


def test_unknown_instances_are_404(archive_server: ArchiveServer, stored: dict[str, Dataset]) -> None:
    ds = stored["CT_small.dcm"]
    response = wado(
        archive_server,
        None,
        studyUID=ds.StudyInstanceUID,
        seriesUID=ds.SeriesInstanceUID,
        objectUID=generate_uid(),
    )
    assert response.status_code == 404
    assert error_comment(response)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("CT_small.dcm", {"contentType": "text/html"}),
        ("test-SR.dcm", {"contentType": "image/jpeg"}),
        ("CT_small.dcm", {"contentType": "application/dicom", "transferSyntax": "1.2.840.10008.1.2.4.50"}),
        ("CT_small.dcm", {"contentType": "application/dicom", "transferSyntax": "1.2.840.10008.1.2"}),
    ],
)
def test_unproducible_content_is_406(
    archive_server: ArchiveServer, stored: dict[str, Dataset], name: str, params: dict[str, str]
) -> None:
    response = wado(archive_server, stored[name], **params)
    assert response.status_code == 406
    assert error_comment(response)


def test_a_size_in_unicode_digits_is_a_400_not_a_crash(
    archive_server: ArchiveServer, stored: dict[str, Dataset]
) -> None:
    ds = next(iter(stored.values()))
    response = wado(archive_server, ds, contentType="image/jpeg", rows="²")
    assert response.status_code == 400
