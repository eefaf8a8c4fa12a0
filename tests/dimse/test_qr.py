"""The Query/Retrieve SCP (C-FIND, C-GET, C-MOVE; dimse_bridge/qr.py) against real peers.

The archive is the real CLI (`python -m app serve`) in a subprocess, as in test_store.py, whose helpers
are reused. Peers: DCMTK's findscu, getscu and movescu (TCP_NODELAY=1), pynetdicom's storescp CLI bound to
127.0.0.1 as a move destination, and pynetdicom SCUs where a test needs exact statuses or a C-CANCEL. Data goes
in through STOW-RS (and C-STORE), so every door is seen answering for what another door stored.

Every patient of this module has a PatientID starting with "QR-", so queries stay within this module's data.
"""

from __future__ import annotations

import itertools
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import evt

from tests import dicom_files
from tests.dimse.test_store import AE_TITLE, DimseArchive, dcmtk, running_archive, storescu
from tests.servers import free_port
from tests.tools import DCMTK, require


@pytest.fixture(autouse=True)
def _dcmtk() -> None:
    require(*DCMTK)


DEST = "QRDEST"  # pynetdicom's storescp CLI, registered through PUT /api/aes/{AET}
SLOW = "QRSLOW"  # an in-test storage SCP answering each C-STORE slowly (C-CANCEL test)
DOWN = "QRDOWN"  # registered through DIMSE_REMOTE_AES, nothing listens there
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
BIG_STUDY_SIZE = 40
PEER_TIMEOUT = 60


# -- data --------------------------------------------------------------------------------------------------


@dataclass
class Study:
    uid: str
    series: str
    instances: list[Dataset]

    @property
    def sop_uids(self) -> list[str]:
        return [ds.SOPInstanceUID for ds in self.instances]


def make_study(name: str, count: int, **attributes: object) -> Study:
    """`count` instances of one series of a new study, each a renewed copy of pydicom's test file `name`."""
    study, series = generate_uid(), generate_uid()
    instances = []
    for number in range(1, count + 1):
        ds = dicom_files.renewed(name, **attributes)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = study, series, number
        instances.append(ds)
    return Study(study, series, instances)


# -- peers -------------------------------------------------------------------------------------------------


@dataclass
class Receiver:
    """A storage SCP in this process, bound to 127.0.0.1, keeping what it receives."""

    delay: float = 0.0
    aborts: bool = False  # aborts the association at its first C-STORE, unanswered
    resets: bool = False  # resets the connection (RST) at its first C-STORE, unanswered
    received: list[Dataset] = field(default_factory=list)
    originators: list[tuple[str, int]] = field(default_factory=list)  # Move Originator AE Title, Message ID
    port: int = 0
    server: Any = None

    def handle_store(self, event: Any) -> int:
        if self.aborts or self.resets:
            sock = event.assoc.dul.socket.socket
            if self.aborts:  # an A-ABORT, source service user (PS3.8 9.3.8), then the connection closed
                sock.sendall(bytes((0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0)))
                sock.shutdown(socket.SHUT_RDWR)
            else:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            return 0x0000
        if self.delay:
            time.sleep(self.delay)
        request = event.request
        self.originators.append(
            (request.MoveOriginatorApplicationEntityTitle, request.MoveOriginatorMessageID)
        )
        ds = event.dataset
        ds.file_meta = event.file_meta
        self.received.append(ds)
        return 0x0000

    def __enter__(self) -> Receiver:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        ae = AE(ae_title=SLOW)
        ae.supported_contexts = AllStoragePresentationContexts
        self.port = free_port()
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self.handle_store)]
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()


@dataclass
class QrArchive:
    archive: DimseArchive
    dest_dir: Path
    slow: Receiver
    a: Study  # DOE^JOHN, 2010, three CT instances
    b: Study  # DOE^JANE, 1999, one MR instance
    c: Study  # a non-ASCII name, 2020
    big: Study  # BIG_STUDY_SIZE small CT instances


def _register(archive: DimseArchive, title: str, port: int) -> None:
    response = httpx.put(
        f"http://127.0.0.1:{archive.http_port}/api/aes/{title}",
        json={"host": "127.0.0.1", "port": port, "tls": False},
        timeout=PEER_TIMEOUT,
    )
    assert response.status_code in (200, 201), response.text


@pytest.fixture(scope="module")
def qr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QrArchive]:
    root = tmp_path_factory.mktemp("qr")
    dest_dir = root / "dest"
    dest_dir.mkdir()
    dest_port = free_port()
    down_port = free_port()  # nothing will listen there
    storescp = subprocess.Popen(
        [sys.executable, "-m", "pynetdicom", "storescp", str(dest_port), "-ba", "127.0.0.1", "-aet", DEST,
         "-od", str(dest_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        with (
            running_archive(root, DIMSE_REMOTE_AES=f"{DOWN}@127.0.0.1:{down_port}") as archive,
            Receiver(delay=0.05) as slow,
        ):
            _register(archive, DEST, dest_port)
            _register(archive, SLOW, slow.port)
            a = make_study("CT_small.dcm", 3, PatientName="DOE^JOHN", PatientID="QR-1", StudyDate="20100105")
            b = make_study("MR_small.dcm", 1, PatientName="DOE^JANE", PatientID="QR-2", StudyDate="19990101")
            c = make_study(
                "CT_small.dcm", 1, PatientName="MÜLLER^JÜRGEN", PatientID="QR-3", StudyDate="20200101"
            )
            for ds in c.instances:
                ds.SpecificCharacterSet = "ISO_IR 192"
            big = make_study("CT_small.dcm", BIG_STUDY_SIZE, PatientName="BIG^STUDY", PatientID="QR-BIG",
                             StudyDate="19800101")  # fmt: skip
            for study in (a, b, c, big):
                dicom_files.stow(f"http://127.0.0.1:{archive.http_port}/dicom-web", study.instances)
            yield QrArchive(archive, dest_dir, slow, a, b, c, big)
    finally:
        storescp.terminate()
        storescp.wait(timeout=30)


# -- helpers -----------------------------------------------------------------------------------------------


def findscu(qr: QrArchive, out: Path, model: str, *keys: str) -> list[Dataset]:
    """findscu's responses (extracted with -X), in order."""
    result = dcmtk(
        "findscu", "-aet", "FINDSCU", "-aec", AE_TITLE, model, "-X", "-od", out,
        *[arg for key in keys for arg in ("-k", key)], "127.0.0.1", str(qr.archive.dimse_port),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [pydicom.dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]


def keywords(ds: Dataset) -> set[str]:
    return {element.keyword for element in ds}


@pytest.fixture(params=["loop", "threads"])
def scu(request: pytest.FixtureRequest) -> dict[str, Any]:
    """A pynetdicom SCU proposing the Study Root FIND/GET/MOVE contexts and, for C-GET, CT Image Storage with
    itself as SCP (role selection): MR instances then have no context to come back on. Through either door: so
    proposed, the association is served on the event loop (dimse_bridge/loop_find.py, loop_retrieve.py);
    proposing Modality Worklist FIND too, it keeps pynetdicom's reactors (qr.handle_find, handle_get,
    handle_move)."""
    from pynetdicom import AE, build_role, evt

    ae = AE(ae_title="PYSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = PEER_TIMEOUT
    for uid in (STUDY_ROOT_FIND, STUDY_ROOT_GET, STUDY_ROOT_MOVE, CT_IMAGE_STORAGE):
        ae.add_requested_context(uid)
    if request.param == "threads":
        ae.add_requested_context(MODALITY_WORKLIST_FIND)
    received: list[Dataset] = []

    def on_store(event: Any) -> int:
        received.append(event.dataset)
        return 0x0000

    return {
        "ae": ae,
        "received": received,
        "role": build_role(CT_IMAGE_STORAGE, scp_role=True),
        "handlers": [(evt.EVT_C_STORE, on_store)],
    }


def associate(qr: QrArchive, scu: dict[str, Any]) -> Any:
    assoc = scu["ae"].associate(
        "127.0.0.1",
        qr.archive.dimse_port,
        ae_title=AE_TITLE,
        ext_neg=[scu["role"]],
        evt_handlers=scu["handlers"],
    )
    assert assoc.is_established
    return assoc


def study_identifier(level: str = "STUDY", **keys: object) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


# -- C-FIND ------------------------------------------------------------------------------------------------


def test_findscu_patient_root_patient_level_wildcard(qr: QrArchive, tmp_path: Path) -> None:
    answers = findscu(
        qr,
        tmp_path,
        "-P",
        "QueryRetrieveLevel=PATIENT",
        "PatientName=DOE*",
        "PatientID=QR-*",
        "PatientBirthDate",
    )
    assert sorted(str(ds.PatientName) for ds in answers) == ["DOE^JANE", "DOE^JOHN"]
    for ds in answers:
        # Only what was asked, plus QueryRetrieveLevel; PatientID is both asked and the unique key.
        assert keywords(ds) == {"QueryRetrieveLevel", "PatientName", "PatientID", "PatientBirthDate"}
        assert ds.QueryRetrieveLevel == "PATIENT"


def test_findscu_study_level_date_range_returns_only_requested_and_unique_keys(
    qr: QrArchive, tmp_path: Path
) -> None:
    answers = findscu(
        qr, tmp_path, "-S", "QueryRetrieveLevel=STUDY", "StudyDate=20000101-", "PatientID=QR-*", "PatientName",
        "ModalitiesInStudy", "NumberOfStudyRelatedInstances",
    )  # fmt: skip
    assert {ds.StudyInstanceUID for ds in answers} == {qr.a.uid, qr.c.uid}
    for ds in answers:
        assert keywords(ds) - {"SpecificCharacterSet"} == {
            "QueryRetrieveLevel", "StudyDate", "PatientID", "PatientName", "ModalitiesInStudy",
            "NumberOfStudyRelatedInstances", "StudyInstanceUID",
        }  # fmt: skip
    a = next(ds for ds in answers if ds.StudyInstanceUID == qr.a.uid)
    assert a.NumberOfStudyRelatedInstances == 3 and a.ModalitiesInStudy == "CT"
    assert "SpecificCharacterSet" not in a  # ASCII only: the default repertoire


def test_patient_root_study_level_answers_carry_the_patient_id(qr: QrArchive, tmp_path: Path) -> None:
    answers = findscu(qr, tmp_path, "-P", "QueryRetrieveLevel=STUDY", "PatientID=QR-2", "StudyDate")
    assert len(answers) == 1
    assert keywords(answers[0]) == {"QueryRetrieveLevel", "PatientID", "StudyDate", "StudyInstanceUID"}
    assert answers[0].StudyInstanceUID == qr.b.uid


def test_findscu_series_level(qr: QrArchive, tmp_path: Path) -> None:
    answers = findscu(
        qr, tmp_path, "-S", "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={qr.a.uid}", "Modality",
        "NumberOfSeriesRelatedInstances",
    )  # fmt: skip
    assert len(answers) == 1
    ds = answers[0]
    assert keywords(ds) == {
        "QueryRetrieveLevel", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "NumberOfSeriesRelatedInstances",
    }  # fmt: skip
    assert (ds.SeriesInstanceUID, ds.Modality, ds.NumberOfSeriesRelatedInstances) == (qr.a.series, "CT", 3)


def test_findscu_image_level_uid_list(qr: QrArchive, tmp_path: Path) -> None:
    wanted = qr.a.sop_uids[:2]
    answers = findscu(
        qr, tmp_path, "-S", "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={qr.a.uid}",
        f"SeriesInstanceUID={qr.a.series}", "SOPInstanceUID=" + "\\".join(wanted), "InstanceNumber",
    )  # fmt: skip
    assert sorted(ds.SOPInstanceUID for ds in answers) == sorted(wanted)
    for ds in answers:
        assert keywords(ds) == {
            "QueryRetrieveLevel", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "InstanceNumber",
        }  # fmt: skip


def test_a_non_ascii_answer_is_sent_in_utf8(qr: QrArchive, tmp_path: Path) -> None:
    answers = findscu(qr, tmp_path, "-S", "QueryRetrieveLevel=STUDY", "PatientID=QR-3", "PatientName")
    assert len(answers) == 1
    assert answers[0].SpecificCharacterSet == "ISO_IR 192"
    assert str(answers[0].PatientName) == "MÜLLER^JÜRGEN"


def test_a_latin1_request_matches_and_the_answer_is_utf8(qr: QrArchive, scu: dict[str, Any]) -> None:
    request = study_identifier(PatientName="MÜLLER*", StudyInstanceUID="")
    request.SpecificCharacterSet = "ISO_IR 100"  # pynetdicom encodes the identifier in Latin-1
    assoc = associate(qr, scu)
    try:
        answers = [
            ds for status, ds in assoc.send_c_find(request, STUDY_ROOT_FIND) if status.Status == 0xFF00
        ]
    finally:
        assoc.release()
    assert [ds.StudyInstanceUID for ds in answers] == [qr.c.uid]
    assert answers[0].SpecificCharacterSet == "ISO_IR 192"
    assert str(answers[0].PatientName) == "MÜLLER^JÜRGEN"


def test_a_study_stored_by_stow_is_found_at_once(qr: QrArchive, tmp_path: Path) -> None:
    fresh = make_study("MR_small.dcm", 1, PatientID="QR-FRESH", PatientName="FRESH^ONE")
    dicom_files.stow(f"http://127.0.0.1:{qr.archive.http_port}/dicom-web", fresh.instances)
    answers = findscu(
        qr, tmp_path, "-S", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={fresh.uid}", "PatientName"
    )
    assert [str(ds.PatientName) for ds in answers] == ["FRESH^ONE"]


@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")
def test_find_statuses(qr: QrArchive, scu: dict[str, Any]) -> None:
    assoc = associate(qr, scu)
    try:
        # A key the archive does not index, given a value: matches continue with 0xFF01 (PS3.4 Table C.4-1).
        answers = list(
            assoc.send_c_find(
                study_identifier(PatientID="QR-1", StudyInstanceUID="", PatientComments="x"), STUDY_ROOT_FIND
            )
        )
        assert [status.Status for status, _ in answers] == [0xFF01, 0x0000]
        assert answers[0][1].StudyInstanceUID == qr.a.uid
        # PATIENT is not a level of the Study Root model: 0xA900 with a comment.
        [(status, _)] = list(
            assoc.send_c_find(study_identifier("PATIENT", PatientID="QR-1"), STUDY_ROOT_FIND)
        )
        assert status.Status == 0xA900 and "PATIENT" in status.ErrorComment
        # A value that cannot be matched as given: 0xC000, "unable to process".
        [(status, _)] = list(assoc.send_c_find(study_identifier(StudyDate="2010-13-45"), STUDY_ROOT_FIND))
        assert status.Status == 0xC000 and "StudyDate" in status.ErrorComment
    finally:
        assoc.release()
    qr.archive.wait_for_log("C-FIND from PYSCU@")


# -- C-GET -------------------------------------------------------------------------------------------------


def test_getscu_retrieves_a_study(qr: QrArchive, tmp_path: Path) -> None:
    result = dcmtk(
        "getscu", "-aet", "GETSCU", "-aec", AE_TITLE, "-S", "-k", "QueryRetrieveLevel=STUDY",
        "-k", f"StudyInstanceUID={qr.a.uid}", "-od", tmp_path, "127.0.0.1", str(qr.archive.dimse_port),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    got = {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, tmp_path.iterdir())}
    assert set(got) == set(qr.a.sop_uids)
    for sent in qr.a.instances:
        assert got[sent.SOPInstanceUID].PixelData == sent.PixelData
        assert got[sent.SOPInstanceUID].PatientName == "DOE^JOHN"


def test_get_counts_an_instance_without_a_context_as_failed(qr: QrArchive, scu: dict[str, Any]) -> None:
    """The SCU takes CT back (role selection) but not MR: the MR instance fails, the final status is 0xB000."""
    assoc = associate(qr, scu)
    try:
        identifier = study_identifier(StudyInstanceUID=f"{qr.a.uid}\\{qr.b.uid}")
        responses = [status for status, _ in assoc.send_c_get(identifier, STUDY_ROOT_GET)]
    finally:
        assoc.release()
    final = responses[-1]
    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (3, 1)
    assert [p.NumberOfRemainingSuboperations for p in responses[:-1]] == [3, 2, 1, 0]
    assert sorted(ds.SOPInstanceUID for ds in scu["received"]) == sorted(qr.a.sop_uids)
    qr.archive.wait_for_log(f"instance {qr.b.sop_uids[0]} not sent: no accepted presentation context")


def test_a_get_sends_the_stored_data_set_byte_for_byte(qr: QrArchive, scu: dict[str, Any]) -> None:
    """The stored syntax was accepted, so the C-STORE sub-operation carries the file's data set unchanged:
    nothing parsed and written again (sending.py)."""
    raw: dict[str, bytes] = {}

    def keep_bytes(event: Any) -> int:
        raw[str(event.request.AffectedSOPInstanceUID)] = bytes(event.request.DataSet.getvalue())
        return 0x0000

    scu["handlers"] = [(evt.EVT_C_STORE, keep_bytes)]
    assoc = associate(qr, scu)
    try:
        responses = [
            s for s, _ in assoc.send_c_get(study_identifier(StudyInstanceUID=qr.a.uid), STUDY_ROOT_GET)
        ]
    finally:
        assoc.release()
    assert responses[-1].Status == 0x0000
    assert set(raw) == set(qr.a.sop_uids)
    for ds in qr.a.instances:
        stored = qr.archive.stored_file(ds).read_bytes()
        assert raw[ds.SOPInstanceUID] == dicom_files.data_set_bytes(stored)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_a_get_without_the_unique_key_is_refused(qr: QrArchive, scu: dict[str, Any]) -> None:
    assoc = associate(qr, scu)
    try:
        responses = [s for s, _ in assoc.send_c_get(study_identifier("SERIES", StudyInstanceUID=qr.a.uid),
                                                    STUDY_ROOT_GET)]  # fmt: skip
        wildcard = [
            s for s, _ in assoc.send_c_get(study_identifier("STUDY", StudyInstanceUID="*"), STUDY_ROOT_GET)
        ]
    finally:
        assoc.release()
    assert responses[-1].Status == 0xA900 and "SeriesInstanceUID" in responses[-1].ErrorComment
    assert wildcard[-1].Status == 0xA900
    assert scu["received"] == []


def test_a_get_of_nothing_succeeds_with_no_sub_operations(qr: QrArchive, scu: dict[str, Any]) -> None:
    assoc = associate(qr, scu)
    try:
        responses = [s for s, _ in assoc.send_c_get(study_identifier(StudyInstanceUID=generate_uid()),
                                                    STUDY_ROOT_GET)]  # fmt: skip
    finally:
        assoc.release()
    assert [r.Status for r in responses] == [0x0000]
    assert responses[0].NumberOfCompletedSuboperations == 0


def test_a_get_whose_every_sub_operation_fails_answers_a702_with_the_failed_uids(
    qr: QrArchive, scu: dict[str, Any]
) -> None:
    """Only an MR instance, and no MR context to send it on (PS3.4 C.4.3.1.4: 0xA702)."""
    assoc = associate(qr, scu)
    try:
        responses = list(assoc.send_c_get(study_identifier(StudyInstanceUID=qr.b.uid), STUDY_ROOT_GET))
    finally:
        assoc.release()
    final, identifier = responses[-1]
    assert final.Status == 0xA702
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (0, 1)
    assert identifier.FailedSOPInstanceUIDList == qr.b.sop_uids[0]


def test_c_cancel_stops_a_get_after_the_sub_operation_in_progress(qr: QrArchive, scu: dict[str, Any]) -> None:
    """A C-CANCEL sent before the first C-STORE-RSP: that sub-operation completes, the rest are not sent, and the
    final 0xFE00 counts them as remaining (PS3.4 C.4.3.3.3)."""
    assoc: Any = None

    def cancel_first(event: Any) -> int:
        scu["received"].append(event.dataset)
        if len(scu["received"]) == 1:
            context_id = next(
                cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == STUDY_ROOT_GET
            )
            assoc.send_c_cancel(9, context_id)
        return 0x0000

    scu["handlers"] = [(evt.EVT_C_STORE, cancel_first)]
    assoc = associate(qr, scu)
    try:
        responses = [s for s, _ in assoc.send_c_get(study_identifier(StudyInstanceUID=qr.big.uid), STUDY_ROOT_GET,
                                                    msg_id=9)]  # fmt: skip
        assert assoc.is_established
    finally:
        assoc.release()
    final = responses[-1]
    assert final.Status == 0xFE00
    assert (final.NumberOfCompletedSuboperations, final.NumberOfRemainingSuboperations) == (
        1,
        BIG_STUDY_SIZE - 1,
    )
    assert len(scu["received"]) == 1


# -- C-MOVE ------------------------------------------------------------------------------------------------


def test_movescu_sends_every_instance_to_a_registered_destination(qr: QrArchive) -> None:
    result = dcmtk(
        "movescu", "-aet", "MOVESCU", "-aec", AE_TITLE, "-aem", DEST, "-S", "-k", "QueryRetrieveLevel=SERIES",
        "-k", f"StudyInstanceUID={qr.a.uid}", "-k", f"SeriesInstanceUID={qr.a.series}",
        "127.0.0.1", str(qr.archive.dimse_port),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 10
    while len(list(qr.dest_dir.iterdir())) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    got = {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, qr.dest_dir.iterdir())}
    assert set(qr.a.sop_uids) <= set(got)
    for sent in qr.a.instances:
        assert np.array_equal(got[sent.SOPInstanceUID].pixel_array, sent.pixel_array)


def test_movescu_patient_root_patient_level(qr: QrArchive) -> None:
    result = dcmtk(
        "movescu", "-aet", "MOVESCU", "-aec", AE_TITLE, "-aem", DEST, "-P", "-k", "QueryRetrieveLevel=PATIENT",
        "-k", "PatientID=QR-2", "127.0.0.1", str(qr.archive.dimse_port),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 10
    while not (qr.dest_dir / f"MR.{qr.b.sop_uids[0]}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pydicom.dcmread(qr.dest_dir / f"MR.{qr.b.sop_uids[0]}").StudyInstanceUID == qr.b.uid


def test_a_move_transcodes_for_a_destination_without_the_stored_syntax(
    qr: QrArchive, scu: dict[str, Any]
) -> None:
    """RLE is stored as sent; the receiver accepts only native syntaxes, so the instance is decoded for it."""
    study = make_study("MR_small_RLE.dcm", 1, PatientID="QR-RLE")
    dicom_files.stow(f"http://127.0.0.1:{qr.archive.http_port}/dicom-web", study.instances)
    qr.slow.received.clear()
    assoc = associate(qr, scu)
    try:
        responses = [s for s, _ in assoc.send_c_move(study_identifier(StudyInstanceUID=study.uid), SLOW,
                                                     STUDY_ROOT_MOVE)]  # fmt: skip
    finally:
        assoc.release()
    assert responses[-1].Status == 0x0000
    [got] = qr.slow.received
    assert not got.file_meta.TransferSyntaxUID.is_compressed
    assert np.array_equal(got.pixel_array, study.instances[0].pixel_array)


def test_a_move_of_nothing_succeeds_with_no_sub_operations(qr: QrArchive, scu: dict[str, Any]) -> None:
    assoc = associate(qr, scu)
    try:
        responses = [s for s, _ in assoc.send_c_move(study_identifier(StudyInstanceUID=generate_uid()), SLOW,
                                                     STUDY_ROOT_MOVE)]  # fmt: skip
    finally:
        assoc.release()
    assert [r.Status for r in responses] == [0x0000]
    assert responses[0].NumberOfCompletedSuboperations == 0


def test_movescu_to_an_unknown_destination_is_refused_with_a801(qr: QrArchive) -> None:
    result = dcmtk(
        "movescu", "-aet", "MOVESCU", "-aec", AE_TITLE, "-aem", "NOBODY", "-S", "-k", "QueryRetrieveLevel=STUDY",
        "-k", f"StudyInstanceUID={qr.a.uid}", "127.0.0.1", str(qr.archive.dimse_port),
    )  # fmt: skip
    assert "MoveDestinationUnknown" in result.stderr, result.stderr
    log = qr.archive.wait_for_log("to NOBODY refused: unknown move destination")
    # A peer's mistake, not the archive's: one WARNING line, and no ERROR (pynetdicom logs one of its own).
    about = [line for line in log.splitlines() if "NOBODY" in line]
    assert [line.split()[2] for line in about] == ["WARNING"], about


def test_a_destination_that_is_down_gets_a801(qr: QrArchive, scu: dict[str, Any]) -> None:
    assoc = associate(qr, scu)
    try:
        responses = [s for s, _ in assoc.send_c_move(study_identifier(StudyInstanceUID=qr.a.uid), DOWN,
                                                     STUDY_ROOT_MOVE)]  # fmt: skip
    finally:
        assoc.release()
    assert responses[-1].Status == 0xA801


def test_a_move_with_a_malformed_identifier_is_refused_with_a900(qr: QrArchive, scu: dict[str, Any]) -> None:
    qr.slow.received.clear()
    assoc = associate(qr, scu)
    try:
        identifier = study_identifier("SERIES", StudyInstanceUID=qr.a.uid)  # no SeriesInstanceUID
        responses = [s for s, _ in assoc.send_c_move(identifier, SLOW, STUDY_ROOT_MOVE)]
    finally:
        assoc.release()
    assert responses[-1].Status == 0xA900
    assert "SeriesInstanceUID" in responses[-1].ErrorComment
    assert qr.slow.received == []


def test_c_cancel_stops_a_move(qr: QrArchive, scu: dict[str, Any]) -> None:
    qr.slow.received.clear()
    assoc = associate(qr, scu)
    statuses = []
    try:
        context_id = next(
            cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == STUDY_ROOT_MOVE
        )
        for status, _ in assoc.send_c_move(study_identifier(StudyInstanceUID=qr.big.uid), SLOW, STUDY_ROOT_MOVE,
                                           msg_id=7):  # fmt: skip
            statuses.append(status)
            if len(statuses) == 2:
                assoc.send_c_cancel(7, context_id)
    finally:
        assoc.release()
    final = statuses[-1]
    assert final.Status == 0xFE00
    assert final.NumberOfRemainingSuboperations > 0
    assert 0 < len(qr.slow.received) < BIG_STUDY_SIZE
    assert final.NumberOfCompletedSuboperations == len(qr.slow.received)


def test_moves_to_a_prompt_destination_complete_every_sub_operation(
    qr: QrArchive, scu: dict[str, Any]
) -> None:
    """A destination that answers each C-STORE at once: every sub-operation's response reaches the sender, none
    is taken by the sub-association's own reactor (reactor.py; such a loss waited out the DIMSE timeout)."""
    with Receiver() as fast:
        fast_title = "QRFAST"
        _register(qr.archive, fast_title, fast.port)
        assoc = associate(qr, scu)
        try:
            for _ in range(5):
                fast.received.clear()
                statuses = [s for s, _ in assoc.send_c_move(study_identifier(StudyInstanceUID=qr.big.uid),
                                                            fast_title, STUDY_ROOT_MOVE)]  # fmt: skip
                assert statuses[-1].Status == 0x0000
                assert statuses[-1].NumberOfCompletedSuboperations == BIG_STUDY_SIZE
                assert len(fast.received) == BIG_STUDY_SIZE
        finally:
            assoc.release()


def test_a_moves_sub_operations_name_its_originator(qr: QrArchive, scu: dict[str, Any]) -> None:
    """PS3.7 9.1.1.1: each C-STORE of a C-MOVE carries the AE title and Message ID of the C-MOVE's requestor."""
    with Receiver() as receiver:
        _register(qr.archive, "QRORIGIN", receiver.port)
        assoc = associate(qr, scu)
        try:
            statuses = [s for s, _ in assoc.send_c_move(study_identifier(StudyInstanceUID=qr.a.uid), "QRORIGIN",
                                                        STUDY_ROOT_MOVE, msg_id=11)]  # fmt: skip
        finally:
            assoc.release()
    assert statuses[-1].Status == 0x0000
    assert receiver.originators == [("PYSCU", 11)] * len(qr.a.sop_uids)


@pytest.mark.parametrize("failure", ["aborts", "resets"])
def test_a_destination_that_goes_away_fails_every_sub_operation_not_done(
    qr: QrArchive, scu: dict[str, Any], failure: str
) -> None:
    """A destination that aborts, or whose connection is reset, at its first C-STORE: the requestor's association
    goes on and gets the final 0xA702 listing every instance."""
    with Receiver(aborts=failure == "aborts", resets=failure == "resets") as receiver:
        title = f"QR{failure.upper()}"
        _register(qr.archive, title, receiver.port)
        assoc = associate(qr, scu)
        try:
            responses = list(
                assoc.send_c_move(study_identifier(StudyInstanceUID=qr.a.uid), title, STUDY_ROOT_MOVE)
            )
            assert assoc.is_established
        finally:
            assoc.release()
    final, identifier = responses[-1]
    assert final.Status == 0xA702
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (
        0,
        len(qr.a.sop_uids),
    )
    assert sorted(identifier.FailedSOPInstanceUIDList) == sorted(qr.a.sop_uids)


def test_a_moves_pending_responses_come_as_its_sub_operations_complete(
    qr: QrArchive, scu: dict[str, Any]
) -> None:
    """A destination taking 0.5 s per C-STORE: the requestor hears of each sub-operation as it completes (PS3.4
    C.4.2.1.5), not of several at once, so its own wait for a response never spans two of them."""
    stamps: list[float] = []
    with Receiver(delay=0.5) as receiver:
        _register(qr.archive, "QRPACED", receiver.port)
        assoc = associate(qr, scu)
        try:
            for _ in assoc.send_c_move(
                study_identifier(StudyInstanceUID=qr.a.uid), "QRPACED", STUDY_ROOT_MOVE
            ):
                stamps.append(time.monotonic())
        finally:
            assoc.release()
    assert len(stamps) == len(qr.a.sop_uids) + 1
    gaps = [later - earlier for earlier, later in itertools.pairwise(stamps)]
    assert max(gaps) < 0.9, gaps


# -- the doors agree ---------------------------------------------------------------------------------------


def test_an_instance_stored_by_c_store_is_retrieved_by_wado_rs(qr: QrArchive, tmp_path: Path) -> None:
    path = tmp_path / "sent.dcm"
    sent = dicom_files.renewed("CT_small.dcm", PatientID="QR-WADO")
    path.write_bytes(dicom_files.part10(sent))
    assert storescu(qr.archive, path).returncode == 0
    response = httpx.get(
        f"http://127.0.0.1:{qr.archive.http_port}/dicom-web/studies/{sent.StudyInstanceUID}/series/"
        f"{sent.SeriesInstanceUID}/instances/{sent.SOPInstanceUID}",
        headers={"Accept": f"{MULTIPART_DICOM}; transfer-syntax=*"},
        timeout=PEER_TIMEOUT,
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("multipart/related")
    assert sent.SOPInstanceUID.encode() in response.content
    assert sent.PixelData in response.content
