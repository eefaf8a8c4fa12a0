"""Real DICOM test files (pydicom's bundled set and pydicom-data), and ways to make variants of them."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import httpx
import pydicom
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from app.core.retrieve.transcode import data_set_offset

# One of each kind the archive must hold: CT, MR, multi-frame US and MR, JPEG baseline and lossless, JPEG-LS,
# JPEG 2000, RLE, deflate-free big/implicit variants, SR, SEG, RT.
KINDS = (
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_jp2klossless.dcm",
    "JPEG2000.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "JPEG-LL.dcm",
    "examples_ybr_color.dcm",
    "emri_small.dcm",
    "emri_small_jpeg_2k_lossless.dcm",
    "test-SR.dcm",
    "liver.dcm",
    "rtplan.dcm",
    "rtdose.dcm",
)


def path(name: str) -> Path:
    found = get_testdata_file(name)
    if found is None and name.startswith("chr"):
        found = next(iter(get_charset_files(name)), None)
    if found is None:
        raise FileNotFoundError(f"test file {name} not found: is pydicom-data installed?")
    return Path(str(found))


def load(name: str) -> Dataset:
    return pydicom.dcmread(path(name))


def renewed(name: str, **attributes: object) -> Dataset:
    """The file with fresh Study, Series and SOP Instance UIDs (so variants can sit side by side)."""
    ds = load(name)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def part10(ds: Dataset) -> bytes:
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def multipart(
    parts: list[bytes], boundary: str = "dicom-boundary", part_type: str = "application/dicom"
) -> bytes:
    body = b""
    for content in parts:
        body += f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + content + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def stow(dicomweb: str, datasets: Iterable[Dataset]) -> None:
    """Store `datasets` over STOW-RS at the DICOMweb root `dicomweb`, all of them or the test fails: set-up
    through the real door."""
    body = multipart([part10(ds) for ds in datasets])
    response = httpx.post(
        f"{dicomweb}/studies",
        content=body,
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=dicom-boundary'},
        timeout=60,
    )
    assert response.status_code == 200, response.text


def data_set_bytes(raw: bytes) -> bytes:
    """The data set of a Part 10 file, preamble and File Meta cut off (the archive's own reader, which
    tests/core/retrieve/test_transcode.py checks against File Meta groups built element by element)."""
    return raw[data_set_offset(raw) :]



def secondary_capture() -> Dataset:
    """A new, nearly empty Secondary Capture instance (Explicit VR LE, fresh UIDs) for a test to fill in."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    return ds
