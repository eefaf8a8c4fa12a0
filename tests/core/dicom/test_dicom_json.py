"""The ingest's own DICOM JSON writers say exactly what pydicom's reference writer says: the per-element writer,
the raw-element fast path over pydicom's reader, and the byte reader ingest uses for most instances."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset

from app.core.dicom.dicom_json import BINARY_VRS, element_json
from app.core.ingest.header import dataset_json, read_header
from app.core.ingest.raw_header import read_json
from tests import dicom_files

FILES = (
    *dicom_files.KINDS,
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
    "chrH31.dcm",
    "chrArab.dcm",
    "chrX1.dcm",
    "chrJapMultiExplicitIR6.dcm",
    "chrSQEncoding.dcm",
    "reportsi.dcm",
    "waveform_ecg.dcm",
    "rtstruct.dcm",
    "examples_palette.dcm",
)


def _walk(ds: Dataset) -> list[pydicom.DataElement]:
    out = []
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                out.extend(_walk(item))
        else:
            out.append(elem)
    return out


@pytest.mark.parametrize("name", FILES)
def test_every_element_of_a_real_file_converts_as_pydicom_converts_it(name: str) -> None:
    ds = pydicom.dcmread(dicom_files.path(name), stop_before_pixels=True, force=True)
    for elem in _walk(ds):
        try:
            expected = elem.to_json_dict(None, 10**9)
        except Exception:
            continue  # values pydicom itself cannot convert are stored as their VR alone
        if elem.VR in BINARY_VRS and "InlineBinary" not in expected:
            continue
        assert element_json(elem) == expected, f"{name} {elem.tag} {elem.VR}"


@pytest.mark.parametrize("name", FILES)
def test_the_raw_fast_path_writes_the_same_header_json_as_pydicoms_conversion(name: str) -> None:
    fast = pydicom.dcmread(dicom_files.path(name), stop_before_pixels=True, force=True)
    slow = pydicom.dcmread(dicom_files.path(name), stop_before_pixels=True, force=True)
    slow.walk(lambda ds, elem: None)  # converts every raw element, nested ones too: the reference path
    fast_json = dataset_json(fast, pixel_data_present=False)
    assert fast_json == dataset_json(slow, pixel_data_present=False)


# Every bundled test file, pydicom-data's included: the byte reader either declines a file or agrees with
# pydicom's path on all of it (transfer syntax, every element, the pixel data reference).
ALL_FILES = sorted({Path(p).name: Path(p) for p in get_testdata_files("*") if Path(p).is_file()}.items())


@pytest.mark.parametrize(("name", "path"), ALL_FILES, ids=[name for name, _ in ALL_FILES])
def test_the_byte_reader_writes_what_pydicoms_reader_writes_or_declines(name: str, path: Path) -> None:
    data = path.read_bytes()
    fast = read_json(data)
    if fast is None:
        return  # implicit VR, big endian, UN, undefined lengths...: ingest takes pydicom's path for this file
    header = read_header(io.BytesIO(data))
    assert fast.transfer_syntax_uid == header.dataset.file_meta.TransferSyntaxUID
    assert fast.body == dataset_json(header.dataset, pixel_data_present=header.pixel_data_present)
    assert fast.pixel_data_offset == header.pixel_data_offset  # where the pixel data check starts


def test_the_byte_reader_takes_the_common_instance_and_declines_other_shapes() -> None:
    taken = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm", "US1_J2KR.dcm", "test-SR.dcm"]
    declined = ["MR_small_implicit.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm", "rtplan.dcm"]
    for name in taken:
        assert read_json(dicom_files.path(name).read_bytes()) is not None, name
    for name in declined:
        assert read_json(dicom_files.path(name).read_bytes()) is None, name
    data = dicom_files.path("CT_small.dcm").read_bytes()
    for cut in (200, 1000, 5000):  # a truncated stream: pydicom's path gives the clear error
        assert read_json(data[:cut]) is None


@pytest.mark.parametrize(
    ("name", "has_pixels"),
    [
        ("CT_small.dcm", True),
        ("emri_small_big_endian.dcm", True),
        ("JPEG2000.dcm", True),
        ("rtplan.dcm", False),
        ("test-SR.dcm", False),
    ],
)
def test_only_instances_with_pixel_data_advertise_a_pixel_data_bulk_data_uri(
    name: str, has_pixels: bool
) -> None:
    header = read_header(str(dicom_files.path(name)))
    assert header.pixel_data_present is has_pixels
    body = dataset_json(header.dataset, pixel_data_present=header.pixel_data_present)
    assert ("7FE00010" in body) is has_pixels
