"""A metadata store outage is a 503 with Retry-After at every HTTP door, never a 500, and passes by itself."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from tests import dicom_files
from tests.servers import free_port, running_archive


def _mongo_server(port: int, folder: Path) -> subprocess.Popen[bytes]:
    command = Path(sys.executable).with_name("secantusd-py")
    return subprocess.Popen(
        [str(command), "--host", "127.0.0.1", "--port", str(port), "--storage-path", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}", timeout=0.5)
        except httpx.TransportError as exc:
            if "refused" not in str(exc).lower():
                return
            time.sleep(0.1)
        else:
            return
    raise RuntimeError("the MongoDB wire server did not start")


@pytest.mark.faults
def test_every_door_answers_503_while_the_metadata_store_is_down_and_recovers(tmp_path: Path) -> None:
    if os.environ.get("MONGO_TEST_URL"):
        pytest.fail("this test stops its own MongoDB wire server; unset MONGO_TEST_URL")
    port = free_port()
    mongo = _mongo_server(port, tmp_path / "mongo")
    _wait(port)
    settings = Settings(  # type: ignore[call-arg]
        data_dir=tmp_path / "data",
        mongo_url=f"mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=1000",
        dimse_enabled=False,
        _env_file=None,
    )
    ds = dicom_files.renewed("CT_small.dcm")
    study = ds.StudyInstanceUID
    try:
        with running_archive(settings) as server:
            mongo.terminate()
            mongo.wait(timeout=30)
            urls = [
                f"{server.dicomweb}/studies?PatientID=X",
                f"{server.dicomweb}/studies/{study}/metadata",
                f"{server.base_url}/api/changes",
            ]
            for url in urls:
                response = httpx.get(url, timeout=30)
                assert response.status_code == 503, (url, response.status_code, response.text)
                assert response.headers["retry-after"]
            deleted = httpx.delete(f"{server.dicomweb}/studies/{study}", timeout=30)
            assert deleted.status_code == 503
            stow = httpx.post(
                f"{server.dicomweb}/studies",
                content=dicom_files.multipart([dicom_files.part10(ds)]),
                headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=dicom-boundary'},
                timeout=60,
            )
            assert stow.status_code == 409
            assert stow.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA700]
            assert not list((tmp_path / "data" / "storage").rglob("*.dcm"))  # nothing the store does not know
            mongo = _mongo_server(port, tmp_path / "mongo")
            _wait(port)
            deadline = time.monotonic() + 30
            while httpx.get(urls[0], timeout=30).status_code != 200:
                assert time.monotonic() < deadline, "the archive did not come back with its metadata store"
                time.sleep(0.5)
    finally:
        mongo.terminate()
        mongo.wait(timeout=30)
