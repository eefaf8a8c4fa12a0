"""Crash and outage: the real archive (`python -m app serve`, a subprocess) under kill -9, a metadata store that
goes away, a full disk, and peers that stall.

Every test starts and stops its own processes and is bounded in time. The figures each fault test prints
(instances sent, acknowledged, found) are the ones the reliability issue asks for; run with `-s` to see them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.dsutils import encode

from tests import dicom_files
from tests.archive_process import (
    AE_TITLE,
    CT_IMAGE_STORAGE,
    EXPLICIT_LE,
    STOW_TYPE,
    ArchiveProcess,
    Sender,
    archive_process,
    digest,
    free_port,
    new_instance,
    retrieve_data_set,
    still_running,
)

# The small filesystems are tmpfs mounts made by the test (root, as in CI); where mounting is not permitted
# those tests skip with the reason, the others run.
pytestmark = pytest.mark.faults

SENDERS_PER_DOOR = 4
INSTANCES_PER_SENDER = 40
KILL_AFTER_ACKS = 40  # kill -9 once this many instances are acknowledged (mid-stream for every sender)
RECOVERY_SECONDS = 60


def report(title: str, **figures: object) -> None:
    print(f"\n[{title}] " + ", ".join(f"{k}={v}" for k, v in figures.items()), flush=True)


# --------------------------------------------------------------------------- kill -9 while 8 senders store


def test_kill_9_while_eight_senders_store(tmp_path: Path) -> None:
    archive = ArchiveProcess(tmp_path)
    archive.start()
    try:
        senders = [
            Sender(kind, archive, [new_instance() for _ in range(INSTANCES_PER_SENDER)])
            for kind in ("stow",) * SENDERS_PER_DOOR + ("cstore",) * SENDERS_PER_DOOR
        ]
        for sender in senders:
            sender.start()
        deadline = time.monotonic() + 60
        while sum(e.acknowledged for s in senders for e in s.sent.values()) < KILL_AFTER_ACKS:
            assert time.monotonic() < deadline, [s.errors for s in senders]
            assert any(s.is_alive() for s in senders), [s.errors for s in senders]
            time.sleep(0.01)
        helpers = archive.descendants()
        assert helpers, "the header parser process should be running"
        archive.kill()
        # The header parser and multiprocessing's helpers end with the server, not left behind idle.
        assert not still_running(helpers, timeout=10)
        for sender in senders:
            sender.join(timeout=60)
            assert not sender.is_alive(), f"a {sender.kind} sender still runs 60 s after the kill:\n{sender.where()}"
        attempted = [e for s in senders for e in s.sent.values()]
        acknowledged = [e for e in attempted if e.acknowledged]
        in_flight = [e for e in attempted if not e.acknowledged]
        # Every sender was cut off mid-stream, and ingest writes the file before the metadata: metadata
        # naming a missing file is impossible even before the sweep.
        assert all(s.pending() for s in senders), "a sender finished before the kill: raise INSTANCES_PER_SENDER"
        indexed = archive.indexed_keys()
        on_disk = archive.stored_keys()
        assert set(indexed.values()) <= on_disk, "metadata without a file after kill -9"

        archive.start()
        # Start-up cleared the staging area; the sweep removes committed files whose metadata never came.
        assert not archive.staged_files()
        with httpx.Client(base_url=archive.base_url, timeout=60) as client:
            swept = client.post("/api/admin/sweep", params={"grace_seconds": 0})
            assert swept.status_code == 200, swept.text
            indexed = archive.indexed_keys()
            assert set(indexed.values()) == archive.stored_keys(), "half-visible instances after the sweep"
            # Every acknowledged instance is held, byte for byte as sent.
            for entry in acknowledged:
                held = retrieve_data_set(client, entry)
                assert held is not None, f"acknowledged {entry.sop} lost"
                assert digest(held) == entry.data_set_sha, f"acknowledged {entry.sop} differs"
            found_after_crash = sum(e.sop in indexed for e in attempted)

            # Senders without an acknowledgement send again: each instance ends with exactly one copy.
            again = [Sender(s.kind, archive, s.pending()) for s in senders]
            for sender in again:
                sender.start()
            for sender in again:
                sender.join(timeout=120)
                assert not sender.errors, sender.errors
            every = {ds.SOPInstanceUID for s in senders for ds in s.instances}
            indexed = archive.indexed_keys()
            assert set(indexed) == every
            assert archive.stored_keys() == set(indexed.values())
            answer = client.get("/dicom-web/instances", params={"limit": 10000, "includefield": "00080018"})
            assert answer.status_code == 200
            uids = [row["00080018"]["Value"][0] for row in answer.json()]
            assert sorted(uids) == sorted(every), "not exactly one copy of each instance"
            for entry in in_flight:
                held = retrieve_data_set(client, entry)
                assert held is not None and digest(held) == entry.data_set_sha
        report(
            "kill -9",
            senders=len(senders),
            sent_before_kill=len(attempted),
            acknowledged=len(acknowledged),
            in_flight_unacknowledged=len(in_flight),
            found_after_restart=found_after_crash,
            orphan_files_swept=swept.json()["orphan_files"],
            total_after_resend=len(every),
            copies_after_resend=len(uids),
        )
    finally:
        archive.stop()


# --------------------------------------------------------------------------- small filesystems


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True, check=False)  # fmt: skip
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs here (the fault tests run as root, as CI does): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def fill(folder: Path) -> Path:
    """Take every free byte of the filesystem holding `folder`."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 512)
                f.flush()
    return filler


def stow(client: httpx.Client, *datasets: pydicom.Dataset) -> httpx.Response:
    body = dicom_files.multipart([dicom_files.part10(ds) for ds in datasets])
    return client.post("/dicom-web/studies", content=body, headers={"Content-Type": STOW_TYPE})


def failure_reasons(response: httpx.Response) -> list[int]:
    """Failure Reasons of FailedSOPSequence and, for parts that could not even be identified (the disk was
    full before the header could be read), OtherFailuresSequence."""
    body = response.json()
    failed = body.get("00081198", {}).get("Value", []) + body.get("0008119A", {}).get("Value", [])
    return [item["00081197"]["Value"][0] for item in failed]


def c_store(archive: ArchiveProcess, *datasets: pydicom.Dataset) -> list[int]:
    ae = AE(ae_title="FAULTSCU")
    ae.add_requested_context(CT_IMAGE_STORAGE, [EXPLICIT_LE])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    assoc = ae.associate("127.0.0.1", archive.dimse_port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def assert_storage_matches_index(archive: ArchiveProcess) -> None:
    """Nothing in storage that the repository does not know about, nothing staged, every file whole."""
    indexed = archive.indexed_keys()
    assert archive.stored_keys() == set(indexed.values())
    assert not archive.staged_files()
    for key in indexed.values():
        pydicom.dcmread(archive.storage / key)  # a truncated file would not parse to the end


def wait_until(check: object, seconds: float = RECOVERY_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the service did not come back in time"
        time.sleep(0.25)


# --------------------------------------------------------------------------- repository outage: SQLite


def test_sqlite_outage_is_a700_with_retry_after_and_recovers_without_restart(tmp_path: Path) -> None:
    """The SQLite database lives on a small tmpfs that is then filled: a real outage of the metadata store
    (chmod would not stop root, and a filesystem with the database open for writing cannot be remounted
    read-only) while the file store still has room."""
    with tmpfs(tmp_path / "meta", "16m") as meta:
        archive = ArchiveProcess(tmp_path, {"STORAGE_ROOT": str(tmp_path / "files")})
        archive.data_dir = meta
        archive.start()
        try:
            _sqlite_outage(archive, meta)
        finally:
            archive.stop()


def _sqlite_outage(archive: ArchiveProcess, meta: Path) -> None:
    with httpx.Client(base_url=archive.base_url, timeout=60) as client:
        before = [new_instance() for _ in range(3)]
        assert stow(client, *before).status_code == 200
        filler = fill(meta)
        during = [new_instance() for _ in range(3)]
        refused = stow(client, *during)
        assert refused.status_code in (409, 503), refused.text
        if refused.status_code == 409:
            assert failure_reasons(refused) == [0xA700] * len(during)
        assert refused.headers.get("retry-after"), refused.headers
        dimse_statuses = c_store(archive, *(new_instance() for _ in range(2)))
        assert all(0xA700 <= s <= 0xA7FF for s in dimse_statuses), [hex(s) for s in dimse_statuses]
        query = client.get("/dicom-web/studies")
        # Reads need no free space: SQLite still answers them; a refusal would have to be 503.
        assert query.status_code in (200, 503), query.text
        assert_storage_matches_index(archive)
        filler.unlink()
        after = new_instance()
        wait_until(lambda: stow(client, after).status_code == 200)
        assert c_store(archive, new_instance()) == [0]
        assert_storage_matches_index(archive)
        held = client.get(f"/dicom-web/studies/{before[0].StudyInstanceUID}/metadata")
        assert held.status_code == 200
    report("sqlite outage (disk full)", stored_before=3, refused_stow=len(during), refused_cstore=2,
           stored_after_recovery=2, indexed=len(archive.indexed_keys()))  # fmt: skip


# --------------------------------------------------------------------------- repository outage: MongoDB


def _secantusd() -> str:
    beside = Path(sys.executable).with_name("secantusd-py")
    found = str(beside) if beside.exists() else shutil.which("secantusd-py")
    if found is None:
        pytest.fail("secantusd-py not found: install the test extra", pytrace=False)
    return found


def _start_mongo(port: int, path: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        process = subprocess.Popen(
            [_secantusd(), "--host", "127.0.0.1", "--port", str(port), "--storage-path", str(path)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return process
        assert process.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.05)


def test_mongodb_outage_is_503_and_a700_and_recovers_without_restart(tmp_path: Path) -> None:
    if os.environ.get("MONGO_TEST_URL"):
        pytest.skip("stops its own MongoDB wire server; a shared MONGO_TEST_URL cannot be stopped")
    port = free_port()
    mongo = _start_mongo(port, tmp_path / "mongo", tmp_path / "mongo.log")
    try:
        with (
            archive_process(tmp_path, MONGO_URL=f"mongodb://127.0.0.1:{port}", MONGO_DATABASE="faults") as archive,
            httpx.Client(base_url=archive.base_url, timeout=60) as client,
        ):
            before = new_instance()
            assert stow(client, before).status_code == 200
            # Stopped, not killed: SecantusDB (the test's wire server, unlike a journaled mongod) may lose
            # its last writes to SIGKILL, and what is checked here is the archive, not the store.
            mongo.send_signal(signal.SIGTERM)
            mongo.wait(timeout=30)
            during = new_instance()
            refused = stow(client, during)
            assert refused.status_code in (409, 503), refused.text
            if refused.status_code == 409:
                assert failure_reasons(refused) == [0xA700]
            assert refused.headers.get("retry-after"), refused.headers
            dimse_statuses = c_store(archive, new_instance())
            assert all(0xA700 <= s <= 0xA7FF for s in dimse_statuses), [hex(s) for s in dimse_statuses]
            for path in ("/dicom-web/studies", f"/dicom-web/studies/{before.StudyInstanceUID}/metadata"):
                answer = client.get(path)
                assert answer.status_code == 503, (path, answer.status_code, answer.text)
                assert answer.headers.get("retry-after"), path
            assert client.get("/ready").status_code == 503
            # Nothing was written that the repository does not know about.
            assert archive.stored_keys() == {
                f"{before.StudyInstanceUID}/{before.SeriesInstanceUID}/{before.SOPInstanceUID}.dcm"
            }
            assert not archive.staged_files()
            mongo = _start_mongo(port, tmp_path / "mongo", tmp_path / "mongo.log")
            after = new_instance()
            wait_until(lambda: stow(client, after).status_code == 200)
            assert c_store(archive, new_instance()) == [0]
            studies = client.get("/dicom-web/studies")
            assert studies.status_code == 200
            held = {row["0020000D"]["Value"][0] for row in studies.json()}
            assert {before.StudyInstanceUID, after.StudyInstanceUID} <= held
            assert during.StudyInstanceUID not in held
        report("mongodb outage", stored_before=1, refused_stow=1, refused_cstore=1, stored_after_recovery=2,
               studies_after=len(held))  # fmt: skip
    finally:
        if mongo.poll() is None:
            mongo.terminate()
            try:
                mongo.wait(timeout=10)
            except subprocess.TimeoutExpired:
                mongo.kill()
                mongo.wait(timeout=10)


# --------------------------------------------------------------------------- disk full


def test_a_full_disk_fails_cleanly_and_reads_go_on(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "files", "2m") as files, archive_process(tmp_path, STORAGE_ROOT=str(files)) as archive:
        with httpx.Client(base_url=archive.base_url, timeout=60) as client:
            stored: list[pydicom.Dataset] = []
            refusal: httpx.Response | None = None
            for _ in range(200):  # CT_small is 39 KB: the 2 MiB fill up well before
                ds = new_instance()
                response = stow(client, ds)
                if response.status_code != 200:
                    refusal = response
                    break
                stored.append(ds)
            assert refusal is not None, "the disk never filled"
            assert refusal.status_code == 409, refusal.text
            assert failure_reasons(refusal) == [0xA700], refusal.text
            assert refusal.headers.get("retry-after")
            dimse_statuses = c_store(archive, new_instance())
            assert all(0xA700 <= s <= 0xA7FF for s in dimse_statuses), [hex(s) for s in dimse_statuses]
            # No truncated file is left: everything in storage is indexed and parses to the end.
            assert_storage_matches_index(archive)
            assert len(archive.indexed_keys()) == len(stored)
            # Reads go on.
            assert client.get("/dicom-web/studies").status_code == 200
            for ds in stored[:: max(1, len(stored) // 5)]:
                raw = dicom_files.part10(ds)
                key = f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
                from tests.archive_process import Sent

                held = retrieve_data_set(client, Sent(ds.SOPInstanceUID, key, ""))
                assert held == dicom_files.data_set_bytes(raw)
        report("disk full", stored_before_full=len(stored), refused_stow=1, refused_cstore=1,
               indexed=len(archive.indexed_keys()))  # fmt: skip


# --------------------------------------------------------------------------- slow or stuck peers


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchiveProcess]:
    """Short DIMSE timeouts and few associations, so stuck peers show quickly."""
    with archive_process(
        tmp_path_factory.mktemp("impatient"),
        DIMSE_ACSE_TIMEOUT="2",
        DIMSE_NETWORK_TIMEOUT="3",
        DIMSE_MAX_ASSOCIATIONS="2",
        DIMSE_SCU_TIMEOUT="5",
    ) as archive:
        yield archive


def _echo(archive: ArchiveProcess) -> bool:
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.acse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", archive.dimse_port, ae_title=AE_TITLE)
    if not assoc.is_established:
        return False
    try:
        return int(assoc.send_c_echo().Status) == 0
    finally:
        assoc.release()


def test_silent_tcp_peers_are_dropped_by_the_artim_timer(impatient: ArchiveProcess) -> None:
    """Peers that connect and send nothing hold the association slots only until ARTIM expires."""
    silent = [socket.create_connection(("127.0.0.1", impatient.dimse_port), timeout=30) for _ in range(4)]
    try:
        started = time.monotonic()
        for sock in silent:
            assert sock.recv(1024) == b""  # closed by the archive, not by us
        freed = time.monotonic() - started
        assert freed < 15, freed
        # The association threads end just after their sockets close: a slot is free within moments.
        wait_until(lambda: _echo(impatient), 10)
    finally:
        for sock in silent:
            sock.close()
    report("silent DIMSE peers", peers=len(silent), freed_after_seconds=round(freed, 1))


def test_an_idle_association_is_released_by_the_network_timeout(impatient: ArchiveProcess) -> None:
    ae = AE(ae_title="IDLESCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.network_timeout = 60  # our side would wait a minute: the archive must act first
    idle = [ae.associate("127.0.0.1", impatient.dimse_port, ae_title=AE_TITLE) for _ in range(2)]
    assert all(a.is_established for a in idle)
    started = time.monotonic()
    wait_until(lambda: not any(a.is_established for a in idle), 20)
    freed = time.monotonic() - started
    wait_until(lambda: _echo(impatient), 10)
    report("idle associations", associations=len(idle), freed_after_seconds=round(freed, 1))


def _big_instance(study: str, megabytes: int) -> pydicom.Dataset:
    ds = new_instance("CT_small.dcm", study)
    ds.Rows, ds.Columns = 1024, megabytes * 512  # 16-bit: 1 MiB per 512 columns
    ds.PixelData = bytes(ds.Rows * ds.Columns * 2)
    return ds


def test_a_client_that_stops_reading_a_retrieve_blocks_no_one(impatient: ArchiveProcess) -> None:
    """Four clients ask for a 64 MiB study and read nothing: far more than the socket buffers hold, so each
    response is stuck mid-stream. Others are served as usual, and the server does not buffer the responses."""
    study = pydicom.uid.generate_uid()
    with httpx.Client(base_url=impatient.base_url, timeout=60) as client:
        for _ in range(4):
            assert stow(client, _big_instance(study, 16)).status_code == 200
        rss_before = impatient.rss_kib()
        stuck = []
        for _ in range(4):
            sock = socket.create_connection(("127.0.0.1", impatient.http_port), timeout=30)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(f"GET /dicom-web/studies/{study} HTTP/1.1\r\nHost: x\r\n"
                         'Accept: multipart/related; type="application/dicom"; transfer-syntax=*\r\n\r\n'.encode())  # fmt: skip
            stuck.append(sock)
        try:
            time.sleep(1)
            started = time.monotonic()
            for _ in range(20):
                assert client.get("/dicom-web/studies", params={"StudyInstanceUID": study}).status_code == 200
            latency = (time.monotonic() - started) / 20
            assert latency < 1.0, latency
            assert _echo(impatient)
            # Streamed, not buffered: four stuck 64 MiB answers do not cost four times 64 MiB.
            rss_growth_mib = (impatient.rss_kib() - rss_before) / 1024
            assert rss_growth_mib < 96, rss_growth_mib
        finally:
            for sock in stuck:
                sock.close()
        # The abandoned responses are let go: the server still answers, and a full read works.
        assert client.get(f"/dicom-web/studies/{study}",
                          headers={"Accept": 'multipart/related; type="application/dicom"'}).status_code == 200  # fmt: skip
    report("stalled WADO readers", readers=len(stuck), study_mib=64, qido_latency_ms=round(latency * 1000, 1),
           server_rss_growth_mib=round(rss_growth_mib))  # fmt: skip


class _RefusingStoreSCP:
    """A C-MOVE destination that accepts the association and refuses every instance (0xA700)."""

    def __init__(self) -> None:
        self.ae = AE(ae_title="REFUSER")
        from pynetdicom import AllStoragePresentationContexts

        self.ae.supported_contexts = AllStoragePresentationContexts
        self.port = free_port()
        self.received = 0

        def refuse(event: object) -> int:
            self.received += 1
            return 0xA700

        self.server = self.ae.start_server(("127.0.0.1", self.port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, refuse)])  # fmt: skip

    def close(self) -> None:
        self.server.shutdown()


def _c_move(archive: ArchiveProcess, study: str, destination: str) -> list[pydicom.Dataset]:
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove

    ae = AE(ae_title="MOVESCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    assoc = ae.associate("127.0.0.1", archive.dimse_port, ae_title=AE_TITLE)
    assert assoc.is_established
    identifier = pydicom.Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study
    try:
        return [status for status, _ in assoc.send_c_move(identifier, destination,
                                                          StudyRootQueryRetrieveInformationModelMove)]  # fmt: skip
    finally:
        assoc.release()


def test_a_c_move_destination_that_is_down_or_refuses_fails_its_sub_operations(impatient: ArchiveProcess) -> None:
    study = pydicom.uid.generate_uid()
    count = 3
    refuser = _RefusingStoreSCP()
    try:
        with httpx.Client(base_url=impatient.base_url, timeout=60) as client:
            assert stow(client, *(new_instance("CT_small.dcm", study) for _ in range(count))).status_code == 200
            down_port = free_port()  # nothing listens there
            for title, port in (("DOWN", down_port), ("REFUSER", refuser.port)):
                put = client.put(f"/api/aes/{title}", json={"host": "127.0.0.1", "port": port, "tls": False})
                assert put.status_code in (200, 201), put.text
        started = time.monotonic()
        down = _c_move(impatient, study, "DOWN")
        assert int(down[-1].Status) == 0xA801, down[-1]
        refused = _c_move(impatient, study, "REFUSER")
        final = refused[-1]
        assert int(final.Status) == 0xA702, final
        assert int(final.NumberOfFailedSuboperations) == count
        assert int(final.get("NumberOfCompletedSuboperations", 0)) == 0
        assert refuser.received == count
        assert time.monotonic() - started < 60
    finally:
        refuser.close()
    report("C-MOVE destinations", down_status="0xA801", refusing_status="0xA702",
           failed_suboperations=int(final.NumberOfFailedSuboperations))  # fmt: skip


def test_encoding_helper_matches_what_pynetdicom_sends() -> None:
    """The C-STORE senders remember the SHA-256 of `encode(ds)`: the archive stores the data set as received."""
    ds = new_instance()
    assert encode(ds, False, True) == dicom_files.data_set_bytes(dicom_files.part10(ds))
