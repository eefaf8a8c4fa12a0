"""The AE registry API (app/api/aes.py) through the real HTTP door, on SQLite and MongoDB.

The archive under test runs in-process (tests/servers.py). Its SCU actions go to real peers on 127.0.0.1:
pynetdicom's storescp app in a subprocess (accepts every storage class in every transfer syntax and writes what
it receives to a directory), and in-test pynetdicom SCPs that accept only some contexts or answer a chosen status.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt

from app.config import Settings
from tests import dicom_files
from tests.conftest import REPOSITORY_KINDS, archive_on_backend
from tests.servers import ArchiveServer, free_port, running_archive
from tests.tools import make_pki

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
START_TIMEOUT = 30


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class StoreScp:
    port: int
    directory: Path

    def received(self) -> dict[str, str]:
        """SOP Instance UID -> transfer syntax of every file storescp wrote."""
        found = {}
        for path in self.directory.iterdir():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            found[str(ds.SOPInstanceUID)] = str(ds.file_meta.TransferSyntaxUID)
        return found


@pytest.fixture(scope="module")
def storescp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreScp]:
    directory = tmp_path_factory.mktemp("storescp")
    port = free_port()
    log = (directory.parent / f"storescp-{port}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "pynetdicom", "storescp", str(port), "-ba", "127.0.0.1", "-od", str(directory)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("storescp did not start")
            time.sleep(0.05)
        yield StoreScp(port, directory)
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module", params=REPOSITORY_KINDS)
def archive(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, storescp: StoreScp
) -> Iterator[ArchiveServer]:
    settings = Settings(  # type: ignore[call-arg]
        data_dir=tmp_path_factory.mktemp(f"aes-{request.param}"),
        dimse_enabled=False,
        dimse_remote_aes=f"STORESCP@127.0.0.1:{storescp.port},CONFIGURED@127.0.0.1:104+tls",
        dimse_scu_timeout=5,
        _env_file=None,
    )
    with archive_on_backend(request, settings) as server:
        yield server


def api(server: ArchiveServer, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, f"{server.base_url}/api/aes{path}", timeout=60, **kwargs)



@pytest.fixture(scope="module")
def study(archive: ArchiveServer) -> list[Dataset]:
    """One study of three series: CT and MR in Explicit VR LE, MR in RLE Lossless."""
    study_uid = generate_uid()
    datasets = [
        dicom_files.renewed(name, StudyInstanceUID=study_uid)
        for name in ("CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm")
    ]
    dicom_files.stow(archive.dicomweb, datasets)
    return datasets


def error_comment(response: httpx.Response) -> str:
    return str(response.json()["00000902"]["Value"][0])


# -- an in-test SCP ---------------------------------------------------------------------------------------------


@dataclass
class Peer:
    port: int
    received: list[tuple[str, str]] = field(default_factory=list)  # (SOP Instance UID, transfer syntax)


@contextmanager
def peer(contexts: list[tuple[str, list[str]]], *, status: int = 0, title: str = "PICKY") -> Iterator[Peer]:
    """A pynetdicom storage SCP on 127.0.0.1 accepting only `contexts`, answering every C-STORE with `status`."""
    ae = AE(ae_title=title)
    for abstract_syntax, syntaxes in contexts:
        ae.add_supported_context(abstract_syntax, syntaxes)
    found = Peer(free_port())

    def on_store(event: Any) -> int:
        found.received.append((str(event.dataset.SOPInstanceUID), str(event.context.transfer_syntax)))
        return status

    server = ae.start_server(("127.0.0.1", found.port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield found
    finally:
        server.shutdown()


@contextmanager
def rejecting_peer() -> Iterator[int]:
    """A peer on 127.0.0.1 that answers every connection at once with an A-ASSOCIATE-RJ (rejected-permanent,
    service-user, calling AE title not recognised: PS3.8 9.3.4) and closes it; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    rejection = bytes((0x03, 0, 0, 0, 0, 4, 0, 0x01, 0x01, 0x03))

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:  # closed: the test is over
                return
            with connection:
                connection.sendall(rejection)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(timeout=10)


# -- the registry -----------------------------------------------------------------------------------------------


def test_the_configured_aes_are_registered_at_start_up(archive: ArchiveServer, storescp: StoreScp) -> None:
    response = api(archive, "GET", "")
    assert response.status_code == 200
    listed = {ae["aeTitle"]: ae for ae in response.json()}
    assert listed["CONFIGURED"] == {"aeTitle": "CONFIGURED", "host": "127.0.0.1", "port": 104, "tls": True}
    assert listed["STORESCP"]["port"] == storescp.port


def test_put_creates_then_replaces_and_get_reads_back(archive: ArchiveServer) -> None:
    created = api(archive, "PUT", "/NEWAE", json={"host": "10.1.2.3", "port": 4242})
    assert created.status_code == 201
    assert created.json() == {"aeTitle": "NEWAE", "host": "10.1.2.3", "port": 4242, "tls": False}
    replaced = api(archive, "PUT", "/NEWAE", json={"host": "pacs.example", "port": 104, "tls": True})
    assert replaced.status_code == 200
    got = api(archive, "GET", "/NEWAE")
    assert got.status_code == 200
    assert got.json() == {"aeTitle": "NEWAE", "host": "pacs.example", "port": 104, "tls": True}
    titles = [ae["aeTitle"] for ae in api(archive, "GET", "").json()]
    assert titles == sorted(titles) and "NEWAE" in titles


def test_delete_answers_204_then_404(archive: ArchiveServer) -> None:
    assert api(archive, "PUT", "/GONE", json={"host": "h", "port": 1}).status_code == 201
    assert api(archive, "DELETE", "/GONE").status_code == 204
    assert api(archive, "DELETE", "/GONE").status_code == 404
    assert api(archive, "GET", "/GONE").status_code == 404


@pytest.mark.parametrize(
    ("title", "body"),
    [
        ("A" * 17, {"host": "h", "port": 104}),
        ("BAD%5CAE", {"host": "h", "port": 104}),
        ("%20%20", {"host": "h", "port": 104}),
        ("OK", {"host": "h", "port": 0}),
        ("OK", {"host": "h", "port": 65536}),
        ("OK", {"host": "", "port": 104}),
        ("OK", {"host": "a b", "port": 104}),
        ("OK", {"port": 104}),
        ("OK", {"host": "h", "port": 104, "colour": "blue"}),
        ("OK", {"host": "h", "port": "many"}),
    ],
)
def test_an_invalid_ae_is_refused_with_400(archive: ArchiveServer, title: str, body: dict[str, Any]) -> None:
    response = api(archive, "PUT", f"/{title}", json=body)
    assert response.status_code == 400, response.text
    assert error_comment(response)
    assert api(archive, "GET", "/OK").status_code in (400, 404)


# -- C-ECHO -----------------------------------------------------------------------------------------------------


def test_echo_reaches_a_running_scp(archive: ArchiveServer, storescp: StoreScp) -> None:
    response = api(archive, "POST", "/STORESCP/echo")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == 0
    assert response.json()["aeTitle"] == "STORESCP"


def test_echo_to_a_closed_port_is_502_with_the_reason(archive: ArchiveServer) -> None:
    api(archive, "PUT", "/NOBODY", json={"host": "127.0.0.1", "port": free_port()})
    response = api(archive, "POST", "/NOBODY/echo")
    assert response.status_code == 502
    assert "cannot connect" in error_comment(response)


def test_echo_to_an_scp_without_verification_is_502(archive: ArchiveServer) -> None:
    with peer([(CT_IMAGE, [EXPLICIT_VR_LE])]) as picky:
        api(archive, "PUT", "/PICKY", json={"host": "127.0.0.1", "port": picky.port})
        response = api(archive, "POST", "/PICKY/echo")
    assert response.status_code == 502
    assert "accepted none of the presentation contexts proposed (1.2.840.10008.1.1)" in error_comment(response)


def test_an_echo_rejected_at_once_is_502_naming_the_rejection_every_time(archive: ArchiveServer) -> None:
    """pynetdicom can report an A-ASSOCIATE-RJ that comes with the connection's close as an abort (scu.py): a
    peer that answers at once made a third of these echoes say "no answer (timeout or abort)"."""
    with rejecting_peer() as port:
        api(archive, "PUT", "/REJECTER", json={"host": "127.0.0.1", "port": port})
        answers = [api(archive, "POST", "/REJECTER/echo") for _ in range(20)]
    assert {response.status_code for response in answers} == {502}
    assert {error_comment(response).split(" (request id")[0] for response in answers} == {
        f"association rejected by REJECTER at 127.0.0.1:{port}: "
        "Rejected Permanent, Service User, Calling AE title not recognised"
    }


def test_echo_to_an_unknown_ae_is_404(archive: ArchiveServer) -> None:
    assert api(archive, "POST", "/UNKNOWN/echo").status_code == 404


# -- C-STORE ----------------------------------------------------------------------------------------------------


def test_store_sends_a_whole_study_in_its_stored_transfer_syntaxes(
    archive: ArchiveServer, storescp: StoreScp, study: list[Dataset]
) -> None:
    response = api(archive, "POST", "/STORESCP/store", json={"StudyInstanceUID": study[0].StudyInstanceUID})
    assert response.status_code == 200, response.text
    assert response.json() == {"completed": 3, "failed": 0, "warning": 0, "failedSOPInstanceUIDs": []}
    received = storescp.received()
    for ds in study:
        assert received[ds.SOPInstanceUID] == ds.file_meta.TransferSyntaxUID


def test_store_sends_one_series_or_one_instance(
    archive: ArchiveServer, storescp: StoreScp, study: list[Dataset]
) -> None:
    ct, mr, _ = study
    with peer([(ct.SOPClassUID, [EXPLICIT_VR_LE]), (mr.SOPClassUID, [EXPLICIT_VR_LE])], title="SERIESONLY") as p:
        api(archive, "PUT", "/SERIESONLY", json={"host": "127.0.0.1", "port": p.port})
        series = api(
            archive,
            "POST",
            "/SERIESONLY/store",
            json={"StudyInstanceUID": ct.StudyInstanceUID, "SeriesInstanceUID": ct.SeriesInstanceUID},
        )
        one = api(
            archive,
            "POST",
            "/SERIESONLY/store",
            json={
                "StudyInstanceUID": mr.StudyInstanceUID,
                "SeriesInstanceUID": mr.SeriesInstanceUID,
                "SOPInstanceUID": mr.SOPInstanceUID,
            },
        )
    assert series.json()["completed"] == 1 and one.json()["completed"] == 1
    assert [uid for uid, _ in p.received] == [ct.SOPInstanceUID, mr.SOPInstanceUID]


def test_store_transcodes_to_what_the_peer_accepts_and_counts_refused_classes_as_failed(
    archive: ArchiveServer, study: list[Dataset]
) -> None:
    ct, mr, mr_rle = study
    # Accepts CT in Implicit VR LE only, MR in Explicit VR LE only: the RLE MR is decoded for it; nothing else.
    with peer([(CT_IMAGE, [IMPLICIT_VR_LE]), (mr.SOPClassUID, [EXPLICIT_VR_LE])], title="UNCOMPRESSED") as p:
        api(archive, "PUT", "/UNCOMPRESSED", json={"host": "127.0.0.1", "port": p.port})
        response = api(archive, "POST", "/UNCOMPRESSED/store", json={"StudyInstanceUID": ct.StudyInstanceUID})
    assert response.status_code == 200
    assert response.json()["completed"] == 3
    assert dict(p.received) == {
        ct.SOPInstanceUID: IMPLICIT_VR_LE,
        mr.SOPInstanceUID: EXPLICIT_VR_LE,
        mr_rle.SOPInstanceUID: EXPLICIT_VR_LE,
    }
    with peer([(CT_IMAGE, [EXPLICIT_VR_LE])], title="CTONLY") as p:
        api(archive, "PUT", "/CTONLY", json={"host": "127.0.0.1", "port": p.port})
        response = api(archive, "POST", "/CTONLY/store", json={"StudyInstanceUID": ct.StudyInstanceUID})
    assert response.status_code == 200
    report = response.json()
    assert (report["completed"], report["failed"], report["warning"]) == (1, 2, 0)
    assert sorted(report["failedSOPInstanceUIDs"]) == sorted([mr.SOPInstanceUID, mr_rle.SOPInstanceUID])


def test_store_counts_warning_and_failure_statuses(archive: ArchiveServer, study: list[Dataset]) -> None:
    ct = study[0]
    body = {"StudyInstanceUID": ct.StudyInstanceUID, "SeriesInstanceUID": ct.SeriesInstanceUID}
    with peer([(CT_IMAGE, [EXPLICIT_VR_LE])], status=0xB000, title="WARNS") as p:
        api(archive, "PUT", "/WARNS", json={"host": "127.0.0.1", "port": p.port})
        warned = api(archive, "POST", "/WARNS/store", json=body).json()
    with peer([(CT_IMAGE, [EXPLICIT_VR_LE])], status=0xA700, title="FULL") as p:
        api(archive, "PUT", "/FULL", json={"host": "127.0.0.1", "port": p.port})
        failed = api(archive, "POST", "/FULL/store", json=body).json()
    assert (warned["completed"], warned["warning"], warned["failed"]) == (0, 1, 0)
    assert failed == {"completed": 0, "failed": 1, "warning": 0, "failedSOPInstanceUIDs": [ct.SOPInstanceUID]}


def test_store_of_an_unknown_study_is_404_and_a_bad_uid_400(archive: ArchiveServer) -> None:
    assert api(archive, "POST", "/STORESCP/store", json={"StudyInstanceUID": generate_uid()}).status_code == 404
    assert api(archive, "POST", "/STORESCP/store", json={"StudyInstanceUID": "not a uid"}).status_code == 400
    assert api(archive, "POST", "/STORESCP/store", json={}).status_code == 400
    assert api(archive, "POST", "/UNKNOWN/store", json={"StudyInstanceUID": generate_uid()}).status_code == 404


def test_store_to_an_unreachable_ae_is_502(archive: ArchiveServer, study: list[Dataset]) -> None:
    api(archive, "PUT", "/DOWN", json={"host": "127.0.0.1", "port": free_port()})
    response = api(archive, "POST", "/DOWN/store", json={"StudyInstanceUID": study[0].StudyInstanceUID})
    assert response.status_code == 502
    assert "cannot connect" in error_comment(response)


# -- TLS --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throw-away CA with a certificate for the peer (127.0.0.1) and one for the archive."""
    return make_pki(tmp_path_factory.mktemp("pki"), ("peer", "archive"))


@contextmanager
def tls_peer(pki: Path) -> Iterator[int]:
    """A Verification SCP on 127.0.0.1 over TLS that requires a client certificate from the test CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.crt"))
    context.load_cert_chain(str(pki / "peer.crt"), str(pki / "peer.key"))
    context.verify_mode = ssl.CERT_REQUIRED
    ae = AE(ae_title="SECURE")
    ae.add_supported_context("1.2.840.10008.1.1")
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, ssl_context=context)
    try:
        yield port
    finally:
        server.shutdown()


def test_echo_over_tls_presents_our_certificate_and_verifies_the_peer(
    tmp_path_factory: pytest.TempPathFactory, pki: Path
) -> None:
    with tls_peer(pki) as port:
        settings = Settings(  # type: ignore[call-arg]
            data_dir=tmp_path_factory.mktemp("aes-tls"),
            dimse_enabled=False,
            dimse_tls_cert=pki / "archive.crt",
            dimse_tls_key=pki / "archive.key",
            dimse_tls_ca=pki / "ca.crt",
            dimse_remote_aes=f"SECURE@127.0.0.1:{port}+tls,PLAIN@127.0.0.1:{port}",
            dimse_scu_timeout=5,
            _env_file=None,
        )
        with running_archive(settings) as server:
            secure = api(server, "POST", "/SECURE/echo")
            plain = api(server, "POST", "/PLAIN/echo")
    assert secure.status_code == 200, secure.text
    assert secure.json()["status"] == 0
    assert plain.status_code == 502
