"""A replaced instance is served as replaced at once, through every retrieve answer."""

from __future__ import annotations

import copy

import httpx
import numpy as np

from tests import dicom_files
from tests.servers import ArchiveServer

STOW = 'multipart/related; type="application/dicom"; boundary=dicom-boundary'


def _frame(server: ArchiveServer, url: str) -> bytes:
    response = httpx.get(url, headers={"Accept": "multipart/related; type=application/octet-stream"}, timeout=30)
    assert response.status_code == 200
    boundary = response.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"')
    part = response.content.split(f"--{boundary}".encode())[1]
    return part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]


def test_a_same_size_replacement_serves_the_new_pixels_at_once(archive_server: ArchiveServer) -> None:
    first = dicom_files.renewed("CT_small.dcm")
    second = copy.deepcopy(first)
    pixels = second.pixel_array.copy()
    second.PixelData = (pixels[::-1]).astype(np.int16).tobytes()  # same size, different content
    url = (
        f"{archive_server.dicomweb}/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}"
        f"/instances/{first.SOPInstanceUID}/frames/1"
    )
    for ds in (first, second):
        body = dicom_files.multipart([dicom_files.part10(ds)])
        stored = httpx.post(f"{archive_server.dicomweb}/studies", content=body, headers={"Content-Type": STOW})
        assert stored.status_code == 200
        assert _frame(archive_server, url) == ds.PixelData
