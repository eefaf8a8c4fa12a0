"""WADO-RS (PS3.18 §10.4) through the real HTTP door, with dicomweb-client and raw httpx, on every kind of file.

Each module gets its own archive (the `archive_server` fixture of conftest.py: real uvicorn on 127.0.0.1,
SQLite). Instances are stored with dicomweb-client, then read back every way a viewer or client reads them:
whole instances in negotiated transfer syntaxes, zips, metadata, bulk data, frames, rendered images.
Expected values come from pydicom reading the original files, never from the archive's own code.
"""

from __future__ import annotations

import io
import zipfile
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import apply_modality_lut
from pydicom.uid import generate_uid

from app.api.multipart import parse_content_type
from tests import dicom_files
from tests.servers import ArchiveServer

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
RLE = "1.2.840.10008.1.2.5"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_LS = "1.2.840.10008.1.2.4.80"
ANY_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
OHIF_METADATA = "application/dicom+json, multipart/related; type=application/octet-stream; transfer-syntax=*"
OHIF_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"
DICOM_JSON = "application/dicom+json"

LOSSLESS_COMPRESSED = (
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_jp2klossless.dcm",
    "JPEG-LL.dcm",
    "emri_small_jpeg_2k_lossless.dcm",
)
LOSSY = ("JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm", "examples_ybr_color.dcm")
NO_PIXELS = ("test-SR.dcm", "rtplan.dcm")
IMAGES = tuple(name for name in dicom_files.KINDS if name not in NO_PIXELS)

Array = np.ndarray[Any, Any]


# --- helpers ----------------------------------------------------------------------------------------------


def split_multipart(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart/related answer, parsed independently of the archive's own parser."""
    media_type, params = parse_content_type(response.headers["content-type"])
    assert media_type == "multipart/related", response.headers["content-type"]
    boundary = params["boundary"].encode()
    body = response.content
    assert body.startswith(b"--" + boundary + b"\r\n") or body == b"--" + boundary + b"--\r\n"
    parts = []
    for chunk in (b"\r\n" + body).split(b"\r\n--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk[2:].partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, data))
    return parts


def instance_path(ds: Dataset) -> str:
    return f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def get(server: ArchiveServer, path: str, accept: str | None = None, **headers: str) -> httpx.Response:
    if accept is not None:
        headers["Accept"] = accept
    return httpx.get(server.dicomweb + path, headers=headers, timeout=60)


def on_disk(server: ArchiveServer, ds: Dataset) -> bytes:
    path = server.settings.storage_path / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    return path.read_bytes()


def error_comment(response: httpx.Response) -> str:
    assert response.headers["content-type"].startswith("application/dicom+json")
    return str(response.json()["00000902"]["Value"][0])


def frame_pixels(ds: Dataset, number: int) -> Array:
    arr = ds.pixel_array
    return arr[number - 1] if int(ds.get("NumberOfFrames", 1) or 1) > 1 else arr


def native_frame_bytes(ds: Dataset, number: int) -> bytes:
    """What PS3.18 §8.7.3.3.1 says a native frame is: little-endian octets of Bits Allocated each."""
    pixels = frame_pixels(ds, number)
    if ds.BitsAllocated == 1:
        return np.packbits(pixels.ravel().astype(np.uint8), bitorder="little").tobytes()
    width = ds.BitsAllocated // 8
    kind = "i" if ds.PixelRepresentation == 1 else "u"
    return np.ascontiguousarray(pixels, dtype=f"<{kind}{width}").tobytes()


def windowed(values: Array, center: float, width: float) -> Array:
    """PS3.3 C.11.2.1.2.1 LINEAR window to 0..255, in float64."""
    out = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    low = values <= center - 0.5 - (width - 1) / 2
    high = values > center - 0.5 + (width - 1) / 2
    out = np.where(low, 0.0, np.where(high, 255.0, out))
    return np.rint(out)


def image(data: bytes) -> Image.Image:
    picture = Image.open(io.BytesIO(data))
    picture.load()
    return picture


# --- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(archive_server: ArchiveServer) -> DICOMwebClient:
    return DICOMwebClient(archive_server.dicomweb)


@pytest.fixture(scope="module")
def stored(archive_server: ArchiveServer, client: DICOMwebClient) -> dict[str, Dataset]:
    """One of every kind of test file, with fresh UIDs (several share their SOP Instance UID), stored once."""
    datasets = {name: dicom_files.renewed(name) for name in dicom_files.KINDS}
    answer = client.store_instances(list(datasets.values()))
    assert len(answer.ReferencedSOPSequence) == len(datasets)
    return datasets


@pytest.fixture(scope="module")
def study(client: DICOMwebClient) -> list[Dataset]:
    """One study of five CT instances in two series (3 + 2)."""
    study_uid, first, second = generate_uid(), generate_uid(), generate_uid()
    datasets = []
    for number, series_uid in enumerate((first, first, first, second, second), start=1):
        ds = dicom_files.renewed("CT_small.dcm", StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid)
        ds.InstanceNumber = number
        datasets.append(ds)
    client.store_instances(datasets)
    return datasets


# --- whole instances --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", dicom_files.KINDS)
def test_transfer_syntax_any_answers_the_stored_file_byte_for_byte(
    archive_server: ArchiveServer, stored: dict[str, Dataset], name: str
) -> None:
    ds = stored[name]
    response = get(archive_server, instance_path(ds), ANY_DICOM)
    assert response.status_code == 200
    [(headers, data)] = split_multipart(response)
    stored_syntax = ds.file_meta.TransferSyntaxUID
    if stored_syntax == IMPLICIT_LE:
        # PS3.18 §8.7.3: Implicit VR Little Endian is never used on the web; `*` gets Explicit VR LE.
        assert headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
        got = pydicom.dcmread(io.BytesIO(data))
        assert got.file_meta.TransferSyntaxUID == EXPLICIT_LE
        original = pydicom.dcmread(io.BytesIO(on_disk(archive_server, ds)))
        assert [e.tag for e in got] == [e.tag for e in original]
        assert all(got[e.tag].value == e.value for e in original if e.VR not in ("SQ",))
    else:
        assert headers["content-type"] == f"application/dicom; transfer-syntax={stored_syntax}"
        assert data == on_disk(archive_server, ds)


@pytest.mark.parametrize("name", dicom_files.KINDS)
def test_dicomweb_client_retrieves_every_kind(client: DICOMwebClient, stored: dict[str, Dataset], name: str) -> None:
    ds = stored[name]
    got = client.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert got.SOPInstanceUID == ds.SOPInstanceUID
    assert got.SOPClassUID == ds.SOPClassUID
    if "PixelData" in ds:
        assert np.array_equal(got.pixel_array, ds.pixel_array)


@pytest.mark.parametrize("name", [*LOSSLESS_COMPRESSED, "rtdose.dcm", "MR_small.dcm"])
def test_the_default_transfer_syntax_is_explicit_vr_le_with_identical_pixels(
    client: DICOMwebClient, stored: dict[str, Dataset], name: str
) -> None:
    # No transfer-syntax parameter: PS3.18 §8.7.3.4 default, Explicit VR Little Endian.
    ds = stored[name]
    got = client.retrieve_instance(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, media_types=("application/dicom",)
    )
    assert got.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert np.array_equal(got.pixel_array, ds.pixel_array)


@pytest.mark.parametrize("name", LOSSY)
def test_lossy_pixel_data_is_answered_as_stored_by_default(
    client: DICOMwebClient, stored: dict[str, Dataset], name: str
) -> None:
    # PS3.18 §8.7.3.4: the default does not apply when only a lossy form is available.
    ds = stored[name]
    got = client.retrieve_instance(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, media_types=("application/dicom",)
    )
    assert got.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert got.PixelData == ds.PixelData


def test_lossy_pixel_data_is_decoded_when_explicit_vr_le_is_asked(
    client: DICOMwebClient, stored: dict[str, Dataset]
) -> None:
    ds = stored["SC_rgb_jpeg_dcmtk.dcm"]
    got = client.retrieve_instance(
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        media_types=(("application/dicom", EXPLICIT_LE),),
    )
    assert got.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert got.PhotometricInterpretation == "RGB"
    difference = np.abs(got.pixel_array.astype(int) - ds.pixel_array.astype(int))
    assert difference.max() <= 1


@pytest.mark.parametrize("target", [RLE, J2K_LOSSLESS])
def test_native_pixel_data_is_compressed_losslessly_on_request(
    client: DICOMwebClient, stored: dict[str, Dataset], target: str
) -> None:
    ds = stored["MR_small.dcm"]
    got = client.retrieve_instance(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, media_types=(("application/dicom", target),)
    )
    assert got.file_meta.TransferSyntaxUID == target
    assert np.array_equal(got.pixel_array, ds.pixel_array)


def test_q_values_choose_between_alternatives(archive_server: ArchiveServer, stored: dict[str, Dataset]) -> None:
    ds = stored["MR_small_jpeg_ls_lossless.dcm"]
    prefer_stored = (
        f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_LE}; q=0.5, '
        f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_LS}'
    )
    prefer_native = (
        f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_LE}; q=0.9, '
        f'multipart/related; type="application/dicom"; transfer-syntax=*; q=0.4'
    )
    for accept, expected in ((prefer_stored, JPEG_LS), (prefer_native, EXPLICIT_LE)):
        response = get(archive_server, instance_path(ds), accept)
        assert response.status_code == 200
        [(headers, data)] = split_multipart(response)
        assert headers["content-type"] == f"application/dicom; transfer-syntax={expected}"
        assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == expected


def test_an_impossible_alternative_is_passed_over(archive_server: ArchiveServer, stored: dict[str, Dataset]) -> None:
    # JPEG baseline would be lossy encoding, which the archive never does; the next alternative is used.
    accept = (
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50, '
        f'multipart/related; type="application/dicom"; transfer-syntax={RLE}; q=0.8'
    )
    response = get(archive_server, instance_path(stored["CT_small.dcm"]), accept)
    assert response.status_code == 200
    [(headers, _)] = split_multipart(response)
    assert headers["content-type"] == f"application/dicom; transfer-syntax={RLE}"


@pytest.mark.parametrize(
    "accept",
    [
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50',
        f'multipart/related; type="application/dicom"; transfer-syntax={IMPLICIT_LE}',
        "text/html",
        'multipart/related; type="image/jpeg"',
    ],
)
def test_an_accept_nothing_can_satisfy_is_406(
    archive_server: ArchiveServer, stored: dict[str, Dataset], accept: str
) -> None:
    response = get(archive_server, instance_path(stored["CT_small.dcm"]), accept)
    assert response.status_code == 406
    assert error_comment(response)


@pytest.mark.parametrize(
    "accept",
    [
        'multipart/related; type="application/dicom"; transfer-syntax=not-a-uid',
        'multipart/related; type="application/dicom"; q=2',
        "multipart/related; type=",
        'multipart/related; type="application/dicom',
        "/",
    ],
)
def test_a_malformed_accept_is_400(archive_server: ArchiveServer, stored: dict[str, Dataset], accept: str) -> None:
    response = get(archive_server, instance_path(stored["CT_small.dcm"]), accept)
    assert response.status_code == 400
    assert error_comment(response)


def test_wildcards_and_no_accept_give_the_default(archive_server: ArchiveServer, stored: dict[str, Dataset]) -> None:
    ds = stored["MR_small_RLE.dcm"]
    for accept in (None, "*/*", "multipart/related; type=*/*", "application/*"):
        response = get(archive_server, instance_path(ds), accept)
        assert response.status_code == 200, accept
        assert response.headers["content-type"].startswith('multipart/related; type="application/dicom"')
        [(headers, _)] = split_multipart(response)
        assert headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"


def test_a_bare_application_dicom_accept_gets_the_instance_itself(
    archive_server: ArchiveServer, stored: dict[str, Dataset]
) -> None:
    ds = stored["CT_small.dcm"]
    response = get(archive_server, instance_path(ds), "application/dicom; transfer-syntax=*")
    assert response.status_code == 200
    assert response.headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
    assert response.content == on_disk(archive_server, ds)


def test_study_and_series_retrieve_every_instance(client: DICOMwebClient, study: list[Dataset]) -> None:
    study_uid = study[0].StudyInstanceUID
    whole = client.retrieve_study(study_uid)
    assert sorted(d.SOPInstanceUID for d in whole) == sorted(d.SOPInstanceUID for d in study)
    series = client.retrieve_series(study_uid, study[0].SeriesInstanceUID)
    assert [d.SOPInstanceUID for d in series] == [d.SOPInstanceUID for d in study[:3]]  # instance-number order


def test_a_study_streams_every_file_unchanged(archive_server: ArchiveServer, study: list[Dataset]) -> None:
    response = get(archive_server, f"/studies/{study[0].StudyInstanceUID}", ANY_DICOM)
    assert response.status_code == 200
    assert "content-length" not in response.headers  # streamed, not assembled
    bodies = {pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID: data for _, data in split_multipart(response)}
    assert bodies == {ds.SOPInstanceUID: on_disk(archive_server, ds) for ds in study}


def test_an_instance_larger_than_a_chunk_streams_intact(archive_server: ArchiveServer, client: DICOMwebClient) -> None:
    ds = dicom_files.renewed("CT_small.dcm")
    ds.NumberOfFrames = 100  # 100 frames of 128 x 128 x 16 bits: 3.2 MB, several 1 MiB chunks
    ds.PixelData = np.random.default_rng(7).integers(0, 4000, (100, 128, 128), dtype=np.uint16).tobytes()
    client.store_instances([ds])
    response = get(archive_server, instance_path(ds), ANY_DICOM)
    [(_, data)] = split_multipart(response)
    assert data == on_disk(archive_server, ds)
    frames = client.retrieve_instance_frames(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, [1, 100], media_types=("application/octet-stream",)
    )
    assert frames == [ds.pixel_array[0].tobytes(), ds.pixel_array[99].tobytes()]


def test_a_study_as_a_zip_holds_the_stored_files(archive_server: ArchiveServer, study: list[Dataset]) -> None:
    response = get(archive_server, f"/studies/{study[0].StudyInstanceUID}", "application/zip")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        assert len(names) == len(study)
        for ds in study:
            name = f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
            assert archive.read(name) == on_disk(archive_server, ds)
    series = get(archive_server, f"/studies/{study[0].StudyInstanceUID}/series/{study[3].SeriesInstanceUID}", "application/zip")
    with zipfile.ZipFile(io.BytesIO(series.content)) as archive:
        assert len(archive.namelist()) == 2


# --- metadata ---------------------------------------------------------------------------------------------


def test_metadata_at_every_level(client: DICOMwebClient, study: list[Dataset]) -> None:
    study_uid, series_uid = study[0].StudyInstanceUID, study[0].SeriesInstanceUID
    whole = client.retrieve_study_metadata(study_uid)
    assert sorted(m["00080018"]["Value"][0] for m in whole) == sorted(d.SOPInstanceUID for d in study)
    series = client.retrieve_series_metadata(study_uid, series_uid)
    assert [m["00080018"]["Value"][0] for m in series] == [d.SOPInstanceUID for d in study[:3]]
    one = client.retrieve_instance_metadata(study_uid, series_uid, study[0].SOPInstanceUID)
    parsed = Dataset.from_json(one, bulk_data_uri_handler=lambda tag, vr, uri: b"")
    assert parsed.PatientName == study[0].PatientName
    assert parsed.Rows == 128 and parsed.RescaleIntercept == study[0].RescaleIntercept


@pytest.mark.parametrize("name", dicom_files.KINDS)
def test_bulk_data_uris_are_absolute_and_resolve(
    archive_server: ArchiveServer, client: DICOMwebClient, stored: dict[str, Dataset], name: str
) -> None:
    ds = stored[name]
    metadata = client.retrieve_instance_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    uris = _bulk_uris(metadata)
    if name in NO_PIXELS:
        assert "7FE00010" not in metadata
    else:
        assert metadata["7FE00010"]["BulkDataURI"] == (
            f"{archive_server.dicomweb}{instance_path(ds)}/bulkdata/7FE00010"
        )
    for uri in uris:
        assert uri.startswith(archive_server.dicomweb + instance_path(ds) + "/bulkdata/")
        assert client.retrieve_bulkdata(uri)


def _bulk_uris(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["BulkDataURI"]] if "BulkDataURI" in node else []
        return found + [u for value in node.values() for u in _bulk_uris(value)]
    if isinstance(node, list):
        return [u for item in node for u in _bulk_uris(item)]
    return []


def test_bulk_data_uris_follow_a_reverse_proxy(archive_server: ArchiveServer, stored: dict[str, Dataset]) -> None:
    ds = stored["CT_small.dcm"]
    response = get(
        archive_server,
        instance_path(ds) + "/metadata",
        "application/dicom+json",
        **{"X-Forwarded-Host": "pacs.example.org", "X-Forwarded-Proto": "https"},
    )
    [metadata] = response.json()
    assert metadata["7FE00010"]["BulkDataURI"] == (
        f"https://pacs.example.org/dicom-web{instance_path(ds)}/bulkdata/7FE00010"
    )


def test_ohif_metadata_accept_gets_dicom_json(archive_server: ArchiveServer, study: list[Dataset]) -> None:
    ds = study[0]
    response = get(archive_server, f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/metadata", OHIF_METADATA)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+json"
    assert len(response.json()) == 3


def test_metadata_as_xml(archive_server: ArchiveServer, stored: dict[str, Dataset]) -> None:
    ds = stored["CT_small.dcm"]
    response = get(archive_server, instance_path(ds) + "/metadata", 'multipart/related; type="application/dicom+xml"')
    assert response.status_code == 200
    [(headers, data)] = split_multipart(response)
    assert headers["content-type"] == "application/dicom+xml"
    assert b"<NativeDicomModel" in data and ds.SOPInstanceUID.encode() in data
    assert f'uri="{archive_server.dicomweb}{instance_path(ds)}/bulkdata/7FE00010"'.encode() in data


def test_metadata_cannot_be_given_as_an_image(archive_server: ArchiveServer, stored: dict[str, Dataset]) -> None:
    response = get(archive_server, instance_path(stored["CT_small.dcm"]) + "/metadata", "image/jpeg")
    assert response.status_code == 406


# --- bulk data --------------------------------------------------------------------------------------------


def test_pixel_data_bulk_data_as_stored(client: DICOMwebClient, stored: dict[str, Dataset]) -> None:
    native = stored["CT_small.dcm"]
    [data] = client.retrieve_bulkdata(client.base_url + instance_path(native) + "/bulkdata/7FE00010")
    assert data == native.PixelData
    compressed = stored["emri_small_jpeg_2k_lossless.dcm"]
    frames = client.retrieve_bulkdata(client.base_url + instance_path(compressed) + "/bulkdata/7FE00010")
    assert frames == list(generate_frames(compressed.PixelData, number_of_frames=10))


def test_compressed_pixel_data_bulk_data_decoded_on_request(client: DICOMwebClient, stored: dict[str, Dataset]) -> None:
    ds = stored["emri_small_jpeg_2k_lossless.dcm"]
    [data] = client.retrieve_bulkdata(
        client.base_url + instance_path(ds) + "/bulkdata/7FE00010", media_types=("application/octet-stream",)
    )
    assert data == ds.pixel_array.astype("<u2").tobytes()


def test_bulk_data_inside_the_header_and_inside_a_sequence(
    archive_server: ArchiveServer, client: DICOMwebClient
) -> None:
    ds = dicom_files.renewed("CT_small.dcm")
    icon = Dataset()
    icon.Rows, icon.Columns, icon.BitsAllocated = 40, 50, 8
    icon.PixelData = bytes(range(200)) * 10
    icon["PixelData"].VR = "OB"
    ds.IconImageSequence = [icon]
    client.store_instances([ds])
    metadata = client.retrieve_instance_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    base = archive_server.dicomweb + instance_path(ds) + "/bulkdata/"
    assert metadata["00431029"]["BulkDataURI"] == base + "00431029"  # a private OB in the header
    assert client.retrieve_bulkdata(base + "00431029") == [ds[0x00431029].value]
    nested = metadata["00880200"]["Value"][0]["7FE00010"]["BulkDataURI"]
    assert nested == base + "00880200/0/7FE00010"
    assert client.retrieve_bulkdata(nested) == [icon.PixelData]


def test_bulk_data_byte_ranges(archive_server: ArchiveServer, client: DICOMwebClient, stored: dict[str, Dataset]) -> None:
    ds = stored["CT_small.dcm"]
    url = client.base_url + instance_path(ds) + "/bulkdata/7FE00010"
    assert client.retrieve_bulkdata(url, byte_range=(100, 199)) == [ds.PixelData[100:200]]
    response = get(archive_server, instance_path(ds) + "/bulkdata/7FE00010", Range="bytes=32000-")
    assert response.status_code == 206
    [(headers, data)] = split_multipart(response)
    assert data == ds.PixelData[32000:]
    assert headers["content-range"] == f"bytes 32000-{len(ds.PixelData) - 1}/{len(ds.PixelData)}"
    beyond = get(archive_server, instance_path(ds) + "/bulkdata/7FE00010", Range="bytes=999999-")
    assert beyond.status_code == 416


def test_unknown_or_malformed_bulk_data_paths(archive_server: ArchiveServer, stored: dict[str, Dataset]) -> None:
    path = instance_path(stored["CT_small.dcm"]) + "/bulkdata/"
    assert get(archive_server, path + "00091001").status_code == 404
    assert get(archive_server, path + "00431029/x").status_code == 400
    assert get(archive_server, path + "..%2F..%2Fsecret").status_code == 400
    assert get(archive_server, instance_path(stored["test-SR.dcm"]) + "/bulkdata/7FE00010").status_code == 404


# --- frames -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", IMAGES)
def test_frames_as_octet_stream_equal_the_decoded_pixels(
    client: DICOMwebClient, stored: dict[str, Dataset], name: str
) -> None:
    ds = stored[name]
    count = int(ds.get("NumberOfFrames", 1) or 1)
    numbers = sorted({1, count, (count + 1) // 2})
    frames = client.retrieve_instance_frames(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, numbers, media_types=("application/octet-stream",)
    )
    assert frames == [native_frame_bytes(ds, n) for n in numbers]


@pytest.mark.parametrize("name", IMAGES)
def test_frames_with_dicomweb_client_defaults(client: DICOMwebClient, stored: dict[str, Dataset], name: str) -> None:
    # dicomweb-client asks for `type="*/*"`: frames come as stored, compressed ones in their own media type.
    ds = stored[name]
    [frame] = client.retrieve_instance_frames(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, [1])
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        count = int(ds.get("NumberOfFrames", 1) or 1)
        assert frame == next(iter(generate_frames(ds.PixelData, number_of_frames=count)))
    else:
        assert frame == native_frame_bytes(ds, 1)


def test_frames_keep_their_compressed_media_type(archive_server: ArchiveServer, stored: dict[str, Dataset]) -> None:
    ds = stored["examples_ybr_color.dcm"]
    response = get(archive_server, instance_path(ds) + "/frames/2,30", 'multipart/related; type="image/jpeg"')
    assert response.status_code == 200
    parts = split_multipart(response)
    expected = list(generate_frames(ds.PixelData, number_of_frames=30))
    assert [data for _, data in parts] == [expected[1], expected[29]]
    assert all(h["content-type"] == "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50" for h, _ in parts)


def test_ohif_frames_accept_gets_the_stored_frame_with_its_syntax(
    archive_server: ArchiveServer, stored: dict[str, Dataset]
) -> None:
    # Cornerstone decodes by the transfer-syntax of each part's Content-Type.
    ds = stored["MR_small_jpeg_ls_lossless.dcm"]
    response = get(archive_server, instance_path(ds) + "/frames/1", OHIF_FRAMES)
    [(headers, data)] = split_multipart(response)
    assert headers["content-type"] == f"application/octet-stream; transfer-syntax={JPEG_LS}"
    assert data == next(iter(generate_frames(ds.PixelData, number_of_frames=1)))
    native = stored["emri_small.dcm"]
    response = get(archive_server, instance_path(native) + "/frames/3", OHIF_FRAMES)
    [(headers, data)] = split_multipart(response)
    assert headers["content-type"] == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
    assert data == native_frame_bytes(native, 3)


def test_a_viewer_paging_through_an_instance_too_large_to_keep_parsed_gets_each_stored_frame(
    archive_server: ArchiveServer,
) -> None:
    """Over 64 MB, an instance is not kept parsed between requests; its frames are read from where they lie in
    its file (bench/memory.py measures the time and memory on 1 GB)."""
    ds = dicom_files.renewed("emri_small.dcm")
    frames, frame_bytes = 9000, 64 * 64 * 2
    pixels = np.arange(frames * frame_bytes // 2, dtype=np.uint16).tobytes()
    ds.NumberOfFrames, ds.PixelData = frames, pixels
    dicom_files.stow(archive_server.dicomweb, [ds])

    for number in (1, 4500, frames):
        response = get(archive_server, instance_path(ds) + f"/frames/{number}", OHIF_FRAMES)
        [(headers, data)] = split_multipart(response)
        assert headers["content-type"] == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
        assert data == pixels[(number - 1) * frame_bytes : number * frame_bytes]
    assert get(archive_server, instance_path(ds) + f"/frames/{frames + 1}", OHIF_FRAMES).status_code == 400
    # Rendered, its frame is the image of a one-frame instance holding just that frame; so is its thumbnail.
    alone = dicom_files.renewed("emri_small.dcm")
    alone.NumberOfFrames, alone.PixelData = 1, pixels[4499 * frame_bytes : 4500 * frame_bytes]
    first = dicom_files.renewed("emri_small.dcm")
    first.NumberOfFrames, first.PixelData = 1, pixels[:frame_bytes]
    dicom_files.stow(archive_server.dicomweb, [alone, first])

    def png(path: str) -> bytes:
        response = get(archive_server, path, "image/png")
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        return response.content

    assert png(instance_path(ds) + "/frames/4500/rendered") == png(instance_path(alone) + "/frames/1/rendered")
    assert png(instance_path(ds) + "/thumbnail") == png(instance_path(first) + "/thumbnail")


def test_decoded_colour_frames_are_rgb(client: DICOMwebClient, stored: dict[str, Dataset]) -> None:
    ds = stored["examples_ybr_color.dcm"]
    frames = client.retrieve_instance_frames(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, [5], media_types=("application/octet-stream",)
    )
    assert frames == [ds.pixel_array[4].tobytes()]  # pydicom also converts YBR_FULL_422 JPEG to RGB


@pytest.mark.parametrize("frames", ["0", "11", "1,11", "1,a", "-1", "1,,2"])
def test_frame_numbers_out_of_range_or_malformed_are_400(
    archive_server: ArchiveServer, stored: dict[str, Dataset], frames: str
) -> None:
    response = get(archive_server, instance_path(stored["emri_small.dcm"]) + f"/frames/{frames}")
    assert response.status_code == 400
    assert error_comment(response)


def test_frames_of_an_instance_without_pixels_are_400(archive_server: ArchiveServer, stored: dict[str, Dataset]) -> None:
    assert get(archive_server, instance_path(stored["test-SR.dcm"]) + "/frames/1").status_code == 400


def test_native_frames_cannot_be_asked_as_jpeg(archive_server: ArchiveServer, stored: dict[str, Dataset]) -> None:
    response = get(archive_server, instance_path(stored["CT_small.dcm"]) + "/frames/1", 'multipart/related; type="image/jpeg"')
    assert response.status_code == 406


@pytest.mark.parametrize("suffix", ["/frames/{}", "/frames/{}/rendered"])
def test_a_frame_list_that_repeats_a_number_is_400_with_the_reason(
    archive_server: ArchiveServer, stored: dict[str, Dataset], suffix: str
) -> None:
    # PS3.18: a frame list is "one or more non duplicate frame numbers"; `1,1,1,...` would multiply one frame.
    frames = ",".join(["1"] * 300)
    response = get(archive_server, instance_path(stored["emri_small.dcm"]) + suffix.format(frames))
    assert response.status_code == 400
    assert "frame 1 is listed twice" in error_comment(response)
    assert "frame 1 is listed twice" in response.headers["warning"]


def test_many_frames_are_streamed_in_the_order_asked(archive_server: ArchiveServer, stored: dict[str, Dataset]) -> None:
    ds = stored["emri_small.dcm"]  # 10 frames
    numbers = [10, 3, 1, 2, 9, 8, 7, 6, 5, 4]
    url = archive_server.dicomweb + instance_path(ds) + "/frames/" + ",".join(map(str, numbers))
    with httpx.stream("GET", url, headers={"Accept": OHIF_FRAMES}, timeout=60) as response:
        assert response.status_code == 200
        # Sent as the frames are cut, not assembled first: no length is known when the headers go out.
        assert "content-length" not in response.headers
        response.read()
    parts = split_multipart(response)
    assert [data for _, data in parts] == [native_frame_bytes(ds, n) for n in numbers]


def test_rendered_frames_refuse_a_frame_the_instance_lacks_before_any_part(
    archive_server: ArchiveServer, stored: dict[str, Dataset]
) -> None:
    response = get(archive_server, instance_path(stored["emri_small.dcm"]) + "/frames/1,2,11/rendered")
    assert response.status_code == 400
    assert "frame 11 is outside 1..10" in error_comment(response)


# --- rendered ---------------------------------------------------------------------------------------------


def test_a_windowed_png_of_ct_small_matches_the_window_formula(
    archive_server: ArchiveServer, stored: dict[str, Dataset]
) -> None:
    ds = stored["CT_small.dcm"]
    response = get(archive_server, instance_path(ds) + "/rendered?window=40,400,linear", "image/png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    got = np.asarray(image(response.content), dtype=float)
    expected = windowed(apply_modality_lut(ds.pixel_array, ds).astype(float), 40, 400)
    assert got.shape == (128, 128)
    assert np.abs(got - expected).max() <= 1


def test_a_windowed_jpeg_of_ct_small_has_the_expected_statistics(
    client: DICOMwebClient, stored: dict[str, Dataset]
) -> None:
    ds = stored["CT_small.dcm"]
    data = client.retrieve_instance_rendered(
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        media_types=("image/jpeg",),
        params={"window": "40,400,linear", "quality": "95"},
    )
    got = np.asarray(image(data), dtype=float)
    expected = windowed(apply_modality_lut(ds.pixel_array, ds).astype(float), 40, 400)
    assert abs(got.mean() - expected.mean()) < 1.5
    assert abs(got.std() - expected.std()) < 2.5
    assert np.abs(got - expected).mean() < 3
    narrow = client.retrieve_instance_rendered(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, params={"window": "3000,2,linear"}
    )
    assert np.asarray(image(narrow)).mean() < 5  # everything below a window at 3000 HU is black


@pytest.mark.parametrize("name", IMAGES)
def test_every_image_kind_renders(client: DICOMwebClient, stored: dict[str, Dataset], name: str) -> None:
    ds = stored[name]
    data = client.retrieve_instance_rendered(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    picture = image(data)
    assert picture.format == "JPEG"
    assert picture.size == (ds.Columns, ds.Rows)


def test_rendered_frames_and_viewport(client: DICOMwebClient, stored: dict[str, Dataset]) -> None:
    ds = stored["examples_ybr_color.dcm"]
    data = client.retrieve_instance_frames_rendered(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, [7], media_types=("image/png",)
    )
    assert np.array_equal(np.asarray(image(data)), ds.pixel_array[6])
    small = client.retrieve_instance_frames_rendered(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, [1], params={"viewport": "80,60"}
    )
    assert image(small).size == (80, 60)


def test_several_rendered_frames_come_as_parts(archive_server: ArchiveServer, stored: dict[str, Dataset]) -> None:
    ds = stored["emri_small.dcm"]
    response = get(archive_server, instance_path(ds) + "/frames/1,2,3/rendered", "image/gif")
    parts = split_multipart(response)
    assert len(parts) == 3 and all(image(data).format == "GIF" for _, data in parts)


def test_rendered_series_and_thumbnails(archive_server: ArchiveServer, study: list[Dataset]) -> None:
    ds = study[0]
    response = get(archive_server, f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/rendered")
    assert response.status_code == 200
    assert len(split_multipart(response)) == 3
    for path in (
        f"/studies/{ds.StudyInstanceUID}/thumbnail",
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/thumbnail",
        instance_path(ds) + "/thumbnail",
        instance_path(ds) + "/frames/1/thumbnail",
    ):
        response = get(archive_server, path)
        assert response.status_code == 200, path
        assert max(image(response.content).size) <= 128
    assert image(get(archive_server, instance_path(ds) + "/thumbnail?viewport=64,64").content).size == (64, 64)


@pytest.mark.parametrize(
    "query", ["window=40", "window=40,0,linear", "window=40,400,cubic", "viewport=a,b", "quality=101", "quality=x"]
)
def test_bad_rendering_parameters_are_400(
    archive_server: ArchiveServer, stored: dict[str, Dataset], query: str
) -> None:
    assert get(archive_server, instance_path(stored["CT_small.dcm"]) + f"/rendered?{query}").status_code == 400


def test_rendering_refusals(archive_server: ArchiveServer, stored: dict[str, Dataset]) -> None:
    assert get(archive_server, instance_path(stored["test-SR.dcm"]) + "/rendered").status_code == 400
    assert get(archive_server, instance_path(stored["CT_small.dcm"]) + "/rendered", "image/jp2").status_code == 406
    assert get(archive_server, instance_path(stored["emri_small.dcm"]) + "/frames/11/rendered").status_code == 400


@pytest.mark.parametrize(
    "suffix",
    ["/rendered?viewport=65500,65500", "/thumbnail?viewport=100000,100000", "/frames/1/rendered?viewport=5000,"],
)
def test_a_viewport_beyond_the_output_bound_is_400_with_the_reason(
    archive_server: ArchiveServer, stored: dict[str, Dataset], suffix: str
) -> None:
    # CT_small is 128 x 128: a side may grow to MAX_RENDER_SIDE (4096 by default), no further. The short
    # timeout: without the bound, the first of these made 50 MB of JPEG in a minute.
    response = httpx.get(archive_server.dicomweb + instance_path(stored["CT_small.dcm"]) + suffix, timeout=20)
    assert response.status_code == 400
    assert "at most 4096x4096 is rendered from this 128x128 frame" in error_comment(response)
    assert "at most 4096x4096" in response.headers["warning"]


def test_the_largest_allowed_viewport_renders(archive_server: ArchiveServer, stored: dict[str, Dataset]) -> None:
    response = get(archive_server, instance_path(stored["CT_small.dcm"]) + "/rendered?viewport=4096,4096")
    assert response.status_code == 200
    assert image(response.content).size == (4096, 4096)


# --- the accept query parameter (PS3.18 8.3.3.1) -----------------------------------------------------------


def get_with_query_accept(server: ArchiveServer, path: str, query: str, header: str) -> httpx.Response:
    return httpx.get(server.dicomweb + path, params={"accept": query}, headers={"Accept": header}, timeout=60)


@pytest.mark.parametrize(
    ("suffix", "query", "answered"),
    [
        ("", 'multipart/related; type="application/dicom"', 'multipart/related; type="application/dicom"'),
        ("", "application/dicom", "application/dicom;"),
        ("", "application/zip", "application/zip"),
        ("/metadata", "application/dicom+json", "application/dicom+json"),
        ("/metadata", 'multipart/related; type="application/dicom+xml"', 'multipart/related; type="application/dicom+xml"'),
        ("/frames/1", "application/octet-stream", "application/octet-stream"),
        ("/bulkdata/7FE00010", "application/octet-stream", 'multipart/related; type="application/octet-stream"'),
        ("/rendered", "image/png", "image/png"),
        ("/thumbnail", "image/png", "image/png"),
        ("/frames/1/rendered", "image/gif", "image/gif"),
        ("/frames/1/thumbnail", "image/png", "image/png"),
    ],
)
def test_every_instance_resource_honours_the_accept_query_parameter(
    archive_server: ArchiveServer, stored: dict[str, Dataset], suffix: str, query: str, answered: str
) -> None:
    path = instance_path(stored["CT_small.dcm"]) + suffix
    assert get(archive_server, path, "text/html").status_code == 406  # the header alone can be given nothing
    response = get_with_query_accept(archive_server, path, query, "text/html")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(answered)


def test_study_and_series_resources_honour_the_accept_query_parameter(
    archive_server: ArchiveServer, study: list[Dataset]
) -> None:
    study_path = f"/studies/{study[0].StudyInstanceUID}"
    series_path = f"{study_path}/series/{study[0].SeriesInstanceUID}"
    for path, query, answered in (
        (study_path, "application/zip", "application/zip"),
        (f"{series_path}/metadata", "application/dicom+json", "application/dicom+json"),
        (f"{series_path}/rendered", 'multipart/related; type="image/png"', 'multipart/related; type="image/png"'),
        (f"{study_path}/thumbnail", "image/png", "image/png"),
        (f"{series_path}/thumbnail", "image/gif", "image/gif"),
    ):
        response = get_with_query_accept(archive_server, path, query, "text/html")
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith(answered), path


def test_ohif_thumbnail_modes_get_jpeg_beside_a_multipart_accept_header(
    archive_server: ArchiveServer, stored: dict[str, Dataset]
) -> None:
    for suffix in ("/thumbnail", "/rendered"):
        response = get_with_query_accept(
            archive_server, instance_path(stored["CT_small.dcm"]) + suffix, "image/jpeg", OHIF_FRAMES
        )
        assert response.status_code == 200, suffix
        assert response.headers["content-type"] == "image/jpeg"
        assert image(response.content).format == "JPEG"


def test_the_query_parameter_comes_first_and_the_header_decides_when_it_names_nothing_possible(
    archive_server: ArchiveServer, stored: dict[str, Dataset]
) -> None:
    path = instance_path(stored["CT_small.dcm"])
    # PS3.18 8.7.8.1: the best supported type of the query parameter wins over the header...
    assert get_with_query_accept(archive_server, path + "/rendered", "image/png", "image/gif").headers["content-type"] == "image/png"
    # ...the header decides when the query names nothing the resource can give...
    assert get_with_query_accept(archive_server, path + "/rendered", "image/jp2", "image/gif").headers["content-type"] == "image/gif"
    native = get_with_query_accept(archive_server, path + "/frames/1", "image/jls", OHIF_FRAMES)  # native frames
    assert native.status_code == 200
    assert native.headers["content-type"].startswith('multipart/related; type="application/octet-stream"')
    # ...and a malformed query parameter is a bad request, not something to pass over.
    malformed = get_with_query_accept(archive_server, path + "/rendered", "image/png; q=2", "image/gif")
    assert malformed.status_code == 400
    assert "q-value" in error_comment(malformed)


def test_qido_hears_the_accept_query_parameter_in_the_same_order(
    archive_server: ArchiveServer, study: list[Dataset]
) -> None:
    xml = 'multipart/related; type="application/dicom+xml"'
    url = archive_server.dicomweb + "/studies"
    uid = study[0].StudyInstanceUID
    first = httpx.get(url, params={"StudyInstanceUID": uid, "accept": xml}, headers={"Accept": DICOM_JSON}, timeout=60)
    assert first.headers["content-type"].startswith(xml)
    fallback = httpx.get(url, params={"StudyInstanceUID": uid, "accept": "image/png"}, headers={"Accept": xml}, timeout=60)
    assert fallback.status_code == 200
    assert fallback.headers["content-type"].startswith(xml)


# --- unknown and invalid UIDs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "suffix", ["", "/metadata", "/frames/1", "/rendered", "/thumbnail", "/bulkdata/7FE00010"]
)
def test_unknown_uids_are_404_with_a_dicom_json_reason(archive_server: ArchiveServer, suffix: str) -> None:
    unknown = f"/studies/{generate_uid()}/series/{generate_uid()}/instances/{generate_uid()}"
    response = get(archive_server, unknown + suffix)
    assert response.status_code == 404
    assert "no instance" in error_comment(response)
    for path in (f"/studies/{generate_uid()}", f"/studies/{generate_uid()}/series/{generate_uid()}/metadata"):
        assert get(archive_server, path).status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/studies/..%2F..%2Fetc%2Fpasswd",
        "/studies/..%2F..%2Fetc%2Fpasswd/metadata",
        "/studies/1.2.3/series/..%2F..%2F..%2Fetc",
        "/studies/1.2.3/series/4.5/instances/..%2F6.dcm",
        "/studies/1.2.3/series/4.5/instances/1.2.3abc/frames/1",
        "/studies/1.2.3 /metadata",
        "/studies/%00/rendered",
    ],
)
def test_invalid_uids_are_400_before_any_io(archive_server: ArchiveServer, path: str) -> None:
    response = httpx.get(archive_server.dicomweb + path, timeout=30)
    assert response.status_code == 400
    assert "UID" in error_comment(response)


# --- across backends and mixed studies --------------------------------------------------------------------


def test_instances_without_an_acceptable_syntax_are_left_out_with_a_warning(
    archive_server: ArchiveServer, client: DICOMwebClient
) -> None:
    study_uid = generate_uid()
    jpeg = dicom_files.renewed("SC_rgb_jpeg_dcmtk.dcm", StudyInstanceUID=study_uid)
    native = dicom_files.renewed("CT_small.dcm", StudyInstanceUID=study_uid)
    client.store_instances([jpeg, native])
    # JPEG baseline can be sent as stored, but is never produced: the archive does no lossy encoding.
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'
    response = get(archive_server, f"/studies/{study_uid}", accept)
    assert response.status_code == 200
    assert "1 instance(s) left out" in response.headers["warning"]
    [(_, data)] = split_multipart(response)
    assert data == on_disk(archive_server, jpeg)
    assert get(archive_server, instance_path(native), accept).status_code == 406


def test_a_study_whose_file_is_lost_mid_way_answers_with_the_others(
    archive_server: ArchiveServer, client: DICOMwebClient, caplog: pytest.LogCaptureFixture
) -> None:
    study_uid, series_uid = generate_uid(), generate_uid()
    instances = [
        dicom_files.renewed("CT_small.dcm", StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid, InstanceNumber=n)
        for n in (1, 2, 3)
    ]
    client.store_instances(instances)
    lost = instances[1]  # not the first: that one is opened before the answer starts, and its loss is a 500
    path = archive_server.settings.storage_path / study_uid / lost.SeriesInstanceUID / f"{lost.SOPInstanceUID}.dcm"
    path.unlink()
    with caplog.at_level("WARNING"):
        response = get(archive_server, f"/studies/{study_uid}", 'multipart/related; type="application/dicom"')
    # The headers are sent before the lost file is met: it is left out, and the log says why.
    assert response.status_code == 200
    sent = {pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID for _, data in split_multipart(response)}
    assert sent == {instances[0].SOPInstanceUID, instances[2].SOPInstanceUID}
    assert any(lost.SOPInstanceUID in r.getMessage() and "left out" in r.getMessage() for r in caplog.records)


def test_sqlite_and_mongodb_answer_alike(backend_archive_server: ArchiveServer) -> None:
    server = backend_archive_server
    client = DICOMwebClient(server.dicomweb)
    study_uid = generate_uid()
    datasets = [
        dicom_files.renewed("emri_small.dcm", StudyInstanceUID=study_uid),
        dicom_files.renewed("MR_small_RLE.dcm", StudyInstanceUID=study_uid),
    ]
    client.store_instances(datasets)
    retrieved = client.retrieve_study(study_uid, media_types=(("application/dicom", "*"),))
    assert sorted(d.SOPInstanceUID for d in retrieved) == sorted(d.SOPInstanceUID for d in datasets)
    for ds in datasets:
        metadata = client.retrieve_instance_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        assert metadata["7FE00010"]["BulkDataURI"] == f"{server.dicomweb}{instance_path(ds)}/bulkdata/7FE00010"
        frames = client.retrieve_instance_frames(
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, [1], media_types=("application/octet-stream",)
        )
        assert frames == [native_frame_bytes(ds, 1)]
    assert get(server, f"/studies/{generate_uid()}/metadata").status_code == 404
