"""The DIMSE door under abuse: half-sent PDUs, one peer taking every slot, a C-STORE the stack cannot route, and
where and how the server listens.

Peers are real: raw TCP sockets for PDUs cut short, DCMTK's echoscu and dcmsend, pynetdicom as SCU. Hostile
connections come from 127.0.0.2 (loopback, like 127.0.0.1) so that the per-peer limit tells them apart from the
legitimate peer on 127.0.0.1; the archive listens on 127.0.0.1 only. Timeouts are set short through settings.
"""

from __future__ import annotations

import asyncio
import errno
import select
import socket
import struct
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from unittest import mock

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

from app.bootstrap import open_archive
from app.config import Settings
from app.context import ArchiveContext
from dimse_bridge.server import start_dimse_server, stop_dimse_server
from tests.dimse.test_store import AE_TITLE, CALLING, DimseArchive, dcmtk, renewed_file, running_archive
from tests.servers import free_port
from tests.tools import DCMTK, require

ACSE_TIMEOUT = 1.0
HOSTILE = "127.0.0.2"
PER_PEER = 2
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


@pytest.fixture(autouse=True)
def _dcmtk() -> None:
    require(*DCMTK)


@pytest.fixture(scope="module")
def door(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DimseArchive]:
    """Fewer slots than the 20 hostile connections, an allow-list (the issue's legitimate C-ECHO came from an
    allowed AE), a short ACSE timeout."""
    with running_archive(
        tmp_path_factory.mktemp("door"),
        DIMSE_ACSE_TIMEOUT=str(ACSE_TIMEOUT),
        DIMSE_MAX_ASSOCIATIONS="4",
        DIMSE_MAX_ASSOCIATIONS_PER_PEER=str(PER_PEER),
        DIMSE_ALLOWED_CALLING_AETS=f"{CALLING},HOLDER",
    ) as server:
        yield server


def echo(archive: DimseArchive) -> bool:
    return (
        dcmtk("echoscu", "-aet", CALLING, "-aec", AE_TITLE, "127.0.0.1", archive.dimse_port).returncode == 0
    )


# -- half-sent PDUs (PS3.8 9.1.5) ---------------------------------------------------------------------------

A_ASSOCIATE_RQ = 0x01
P_DATA_TF = 0x04
MIB = 1024 * 1024


def _header(length: int, pdu_type: int = A_ASSOCIATE_RQ) -> bytes:
    """PDU type, reserved byte, PDU length (PS3.8 9.3.1)."""
    return struct.pack(">BBL", pdu_type, 0, length)


@pytest.mark.parametrize(
    ("first", "trickle"),
    [(_header(200), False), (_header(200), True)],
    ids=["first-6-bytes", "one-byte-at-a-time"],
)
def test_half_sent_pdus_take_no_slot_and_are_closed_after_the_acse_timeout(
    door: DimseArchive, first: bytes, trickle: bool
) -> None:
    hostile = []
    for _ in range(20):
        sock = socket.socket()
        sock.bind((HOSTILE, 0))
        sock.connect(("127.0.0.1", door.dimse_port))
        sock.sendall(first)
        hostile.append(sock)
    opened = time.monotonic()
    try:
        # 20 connections stuck in their A-ASSOCIATE-RQ, 4 slots: a legitimate peer still gets through.
        assert echo(door)
        closed: dict[socket.socket, float] = {}
        while len(closed) < len(hostile) and time.monotonic() - opened < ACSE_TIMEOUT + 4:
            still = [s for s in hostile if s not in closed]
            if trickle:
                for sock in still:
                    try:
                        sock.send(b"\x00")
                    except OSError:
                        closed[sock] = time.monotonic() - opened
            readable, _, _ = select.select([s for s in still if s not in closed], [], [], 0.2)
            for sock in readable:
                try:
                    data = sock.recv(64)
                except OSError:
                    data = b""
                assert not data, f"the archive answered a partial PDU: {data!r}"
                closed[sock] = time.monotonic() - opened
    finally:
        for sock in hostile:
            sock.close()
    assert len(closed) == len(hostile), f"{len(hostile) - len(closed)} connections still open"
    assert max(closed.values()) < ACSE_TIMEOUT + 3, sorted(closed.values())
    door.wait_for_log(f"closed before its A-ASSOCIATE-RQ was complete (DIMSE_ACSE_TIMEOUT={ACSE_TIMEOUT})")


def test_a_pdu_header_claiming_4_gib_is_refused_before_anything_is_buffered(door: DimseArchive) -> None:
    """The server closed the connection at its header (1 MiB is the most an A-ASSOCIATE-RQ may take), instead of
    reading what came for as long as the ACSE timeout allowed."""
    sent = 0
    with socket.socket() as sock:
        sock.bind((HOSTILE, 0))
        sock.connect(("127.0.0.1", door.dimse_port))
        sock.sendall(_header(0xFFFFFFFF))
        with pytest.raises(OSError):  # EPIPE or ECONNRESET
            while sent < 256 * MIB:
                sock.sendall(bytes(MIB))
                sent += MIB
    assert sent < 16 * MIB, sent  # what the socket buffers took before the close was seen
    door.wait_for_log(f"a PDU of {0xFFFFFFFF} bytes, more than the {MIB} it may send")


def test_a_p_data_pdu_longer_than_announced_ends_the_association(door: DimseArchive) -> None:
    """PS3.8 D.1: P-DATA-TF PDUs are at most the Maximum Length we announced (DIMSE_MAX_PDU, here 256 KiB, with
    1 MiB the least limit): an established association sending a longer one is ended, not waited for."""
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", door.dimse_port, ae_title=AE_TITLE, bind_address=(HOSTILE, 0))
    assert assoc.is_established
    assoc.dul.socket.socket.sendall(_header(64 * MIB, P_DATA_TF))
    deadline = time.monotonic() + 3
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.05)
    assert assoc.is_aborted
    door.wait_for_log(f"a PDU of {64 * MIB} bytes, more than the {MIB} it may send")


# -- slots per peer (PS3.8 9.3.4) ---------------------------------------------------------------------------


def test_one_peer_cannot_take_every_slot(door: DimseArchive) -> None:
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 10

    def associate(*handlers: evt.EventHandlerType) -> Association:
        where = ("127.0.0.1", door.dimse_port)
        return ae.associate(*where, ae_title=AE_TITLE, bind_address=(HOSTILE, 0), evt_handlers=list(handlers))

    held = [associate() for _ in range(PER_PEER)]
    try:
        assert all(assoc.is_established for assoc in held)
        # The answer is read from the PDU as it arrives: pynetdicom's requestor reports an A-ASSOCIATE-RJ that
        # comes with the connection's close, as ours does, as an abort a few times in a hundred (scu.py).
        answers: list[A_ASSOCIATE_RJ] = []
        extra = associate((evt.EVT_PDU_RECV, lambda event: answers.append(event.pdu)))
        assert not extra.is_established
        [answer] = answers
        assert isinstance(answer, A_ASSOCIATE_RJ)
        # Rejected-transient, service-provider (presentation related), local-limit-exceeded.
        assert (answer.result, answer.source, answer.reason_diagnostic) == (0x02, 0x03, 0x02)
        door.wait_for_log(f"{PER_PEER} associations are open from {HOSTILE} already")
        assert echo(door)  # another host still has slots
    finally:
        for assoc in held:
            assoc.release()


# -- a C-STORE pynetdicom cannot route (PS3.4 B.2.3, PS3.7 C) ------------------------------------------------


def test_dcmsend_of_the_test_file_folder_keeps_its_association(door: DimseArchive) -> None:
    """The issue's reproduction. For rtdose_rle_1frame.dcm dcmsend sends Affected SOP Class UID `31`: that
    instance is refused with 0x0122, and the files after it are still sent on the same association."""
    result = dcmtk(
        "dcmsend", "-v", "-nh", "-dn", "+sd", "+r", "-aet", CALLING, "-aec", AE_TITLE,
        "127.0.0.1", door.dimse_port, TEST_FILES,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert "Peer aborted" not in output and "Failed sending C-STORE request" not in output, output[-3000:]
    assert "Received C-STORE Response (Refused: SOPClassNotSupported)" in output
    assert "Number of associations   : 1" in output
    door.wait_for_log("its SOP Class UID '31' is not 1.2.840.10008.5.1.4.1.1.481.2 (RT Dose Storage)")


def test_a_c_store_of_another_sop_class_than_its_context_is_refused(
    door: DimseArchive, tmp_path: Path
) -> None:
    """A CT instance on a context negotiated for MR: refused with 0x0122 (so no C-STORE gets past the SOP
    class policy its context was negotiated under), not stored, and the association goes on."""
    ct = pydicom.dcmread(renewed_file(tmp_path, "CT_small.dcm"))
    mr = renewed_file(tmp_path, "MR_small.dcm")
    ae = AE(ae_title=CALLING)
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", door.dimse_port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        mr_context = next(cx for cx in assoc.accepted_contexts if cx.abstract_syntax == MRImageStorage)
        with mock.patch.object(assoc, "_get_valid_context", return_value=mr_context):
            refused = assoc.send_c_store(ct)
        assert refused.Status == 0x0122
        assert refused.ErrorComment.startswith(f"SOP Class {CTImageStorage} is not")
        assert assoc.is_established
        assert assoc.send_c_store(mr).Status == 0x0000
    finally:
        assoc.release()
    assert door.indexed(ct.SOPInstanceUID) is None
    assert door.indexed(pydicom.dcmread(mr).SOPInstanceUID) is not None


# -- where the server listens (in process: start_dimse_server itself) ---------------------------------------


@pytest.fixture
async def archive_context(tmp_path: Path) -> AsyncIterator[ArchiveContext]:
    settings = Settings(data_dir=tmp_path, dimse_host=HOSTILE, dimse_port=free_port(), _env_file=None)  # type: ignore[call-arg]
    context = await open_archive(settings)
    yield context
    await context.close()


async def test_the_server_listens_on_dimse_host_only_and_stops_despite_a_half_sent_pdu(
    archive_context: ArchiveContext,
) -> None:
    settings = archive_context.settings
    server = await start_dimse_server(archive_context)
    stuck = socket.socket()
    try:
        assert server.address == (HOSTILE, settings.dimse_port)
        with socket.socket() as elsewhere:
            assert elsewhere.connect_ex(("127.0.0.1", settings.dimse_port)) == errno.ECONNREFUSED
        ae = AE(ae_title=CALLING)
        ae.add_requested_context(Verification)
        assoc = await asyncio.to_thread(ae.associate, HOSTILE, settings.dimse_port, ae_title=AE_TITLE)
        assert assoc.is_established
        assert (await asyncio.to_thread(assoc.send_c_echo)).Status == 0x0000
        await asyncio.to_thread(assoc.release)
        stuck.connect((HOSTILE, settings.dimse_port))
        stuck.sendall(_header(200))
        await asyncio.sleep(0.2)
    finally:
        # Shutdown aborts the connection at once: pynetdicom's abort waited for ever on the reactor's read.
        started = time.monotonic()
        try:
            await asyncio.wait_for(stop_dimse_server(server), timeout=settings.dimse_acse_timeout)
        finally:
            stuck.close()
    assert time.monotonic() - started < 2


async def test_a_busy_dicom_port_is_an_os_error_naming_host_and_port(archive_context: ArchiveContext) -> None:
    settings = archive_context.settings
    with socket.socket() as taken:
        taken.bind((settings.dimse_host, settings.dimse_port))
        taken.listen()
        with pytest.raises(
            OSError, match=f"cannot listen for DICOM on {HOSTILE}:{settings.dimse_port}: "
        ) as caught:
            await start_dimse_server(archive_context)
    assert caught.value.errno == errno.EADDRINUSE


def test_a_peer_that_stops_in_the_middle_of_a_pdu_is_cut_after_the_network_timeout(tmp_path: Path) -> None:
    """After the association is accepted, a P-DATA-TF header and then silence: the read is bounded by
    DIMSE_NETWORK_TIMEOUT, the connection is closed and the slot is free again (the reactor would otherwise
    wait in recv for good: pynetdicom checks its timers only between reads)."""
    with running_archive(tmp_path, DIMSE_NETWORK_TIMEOUT="1", DIMSE_MAX_ASSOCIATIONS_PER_PEER="1") as archive:
        ae = AE(ae_title=CALLING)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", archive.dimse_port, ae_title=AE_TITLE)
        assert assoc.is_established
        raw = assoc.dul.socket.socket
        stalled = time.monotonic()
        raw.sendall(_header(1000, P_DATA_TF))  # a 1000-byte PDU announced, none of it sent
        while assoc.is_established and time.monotonic() - stalled < 10:
            time.sleep(0.05)
        assert not assoc.is_established, "the archive still waits for the rest of the PDU"
        assert time.monotonic() - stalled < 5
        archive.wait_for_log("nothing more of a PDU for 1.0 s (DIMSE_NETWORK_TIMEOUT)")
        assert echo(archive)  # the peer's one slot is free again
