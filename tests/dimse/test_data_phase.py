"""Associations whose data transfer phase the event loop serves (dimse_bridge/data_phase.py), accepted there too
(dimse_bridge/loop_accept.py), and those the loop hands to pynetdicom's threads.

The server runs in this test's loop (as the app's lifespan runs it), on 127.0.0.1; the peer is pynetdicom as SCU,
in a thread, and raw PDUs written to its socket where a peer misbehaves. Every DCMTK and dcmjs-dimse test of the
DIMSE door also goes through this phase whenever its association offers storage and Verification only.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, PYNETDICOM_IMPLEMENTATION_UID, build_role, evt
from pynetdicom._globals import APPLICATION_CONTEXT_NAME
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_CANCEL, C_ECHO, C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import (
    CTImageStorage,
    ModalityWorklistInformationFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from app.bootstrap import open_archive
from app.config import Settings
from app.context import ArchiveContext
from dimse_bridge.commands import MessageAssembler, encode_command
from dimse_bridge.data_phase import DataPhase
from dimse_bridge.server import DimseServer, start_dimse_server, stop_dimse_server
from tests import dicom_files
from tests.dimse.test_store import AE_TITLE, CALLING
from tests.servers import free_port

HOST = "127.0.0.1"
NETWORK_TIMEOUT = 1.0
ACSE_TIMEOUT = 1.0
DIMSE_TIMEOUT = 0.5


async def _archive(tmp_path: Path, network_timeout: float, **more: Any) -> AsyncIterator[ArchiveContext]:
    settings = Settings(  # type: ignore[call-arg]
        **more,
        data_dir=tmp_path,
        dimse_host=HOST,
        dimse_port=free_port(),
        dimse_network_timeout=network_timeout,
        dimse_acse_timeout=ACSE_TIMEOUT,
        ae_title=AE_TITLE,
        _env_file=None,
    )
    context = await open_archive(settings)
    yield context
    await context.close()


@pytest.fixture
async def archive_context(tmp_path: Path) -> AsyncIterator[ArchiveContext]:
    """An archive whose idle timeout is far beyond any test's length: whatever ends an association is not it."""
    async for context in _archive(tmp_path, 600.0):
        yield context


@pytest.fixture
async def hasty_archive(tmp_path: Path) -> AsyncIterator[ArchiveContext]:
    """An archive that cuts idle or stalled associations after NETWORK_TIMEOUT."""
    async for context in _archive(tmp_path, NETWORK_TIMEOUT):
        yield context


@pytest.fixture
async def impatient_archive(tmp_path: Path) -> AsyncIterator[ArchiveContext]:
    """An archive that waits DIMSE_TIMEOUT for a response (DIMSE_DIMSE_TIMEOUT)."""
    async for context in _archive(tmp_path, 600.0, dimse_dimse_timeout=DIMSE_TIMEOUT):
        yield context


@pytest.fixture
async def hooked_archive(tmp_path: Path) -> AsyncIterator[ArchiveContext]:
    """An archive whose ingest hook takes a second over an instance of patient SLOW."""
    async for context in _archive(tmp_path, 600.0, ingest_hook="tests.ingest_hooks:hook"):
        yield context


@pytest.fixture
async def server(archive_context: ArchiveContext) -> AsyncIterator[DimseServer]:
    started = await start_dimse_server(archive_context)
    yield started
    await stop_dimse_server(started)


@pytest.fixture
async def impatient_server(impatient_archive: ArchiveContext) -> AsyncIterator[DimseServer]:
    started = await start_dimse_server(impatient_archive)
    yield started
    await stop_dimse_server(started)


@pytest.fixture
async def hasty_server(hasty_archive: ArchiveContext) -> AsyncIterator[DimseServer]:
    started = await start_dimse_server(hasty_archive)
    yield started
    await stop_dimse_server(started)


class Peer:
    """pynetdicom as SCU, which records the A-ABORT PDUs it receives."""

    def __init__(self, *contexts: str) -> None:
        self.ae = AE(ae_title=CALLING)
        for context in contexts:
            self.ae.add_requested_context(context)
        self.aborts: list[A_ABORT_RQ] = []

    async def associate(self, server: DimseServer, **options: Any) -> Association:
        def received(event: evt.Event) -> None:
            if isinstance(event.pdu, A_ABORT_RQ):
                self.aborts.append(event.pdu)

        handlers = [(evt.EVT_PDU_RECV, received), *options.pop("evt_handlers", [])]
        assoc = await asyncio.to_thread(
            self.ae.associate, *server.address, ae_title=AE_TITLE, evt_handlers=handlers, **options
        )
        assert assoc.is_established
        return assoc


def served_here(server: DimseServer) -> list[Any]:
    """The server's associations (pynetdicom's acceptor side)."""
    return [assoc for assoc in server.ae.active_associations if assoc.is_acceptor]


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition was not met in time"
        await asyncio.sleep(0.02)


def p_data_tf(context_id: int, value: bytes, control: int = 0x03) -> bytes:
    """A P-DATA-TF PDU of one PDV: a whole command set, or (`control` 0x02) a whole data set (PS3.8 9.3.5, E.2)."""
    item = bytes((context_id, control)) + value
    return struct.pack(">BxII", 0x04, len(item) + 4, len(item)) + item


def echo_command(message_id: int) -> bytes:
    request = C_ECHO()
    request.MessageID = message_id
    request.AffectedSOPClassUID = Verification
    return encode_command("C-ECHO-RQ", request, False)


async def test_a_storage_association_is_served_by_the_loop_stores_answers_echo_and_ends_released(
    server: DimseServer, archive_context: ArchiveContext
) -> None:
    peer = Peer(CTImageStorage, Verification)
    assoc = await peer.associate(server)
    [acceptor] = served_here(server)
    assert isinstance(acceptor.loop_phase, DataPhase)
    sent = pydicom.dcmread(dicom_files.path("CT_small.dcm"))
    stored = await asyncio.to_thread(assoc.send_c_store, sent)
    assert stored.Status == 0x0000
    # The instance is held once the C-STORE-RSP has come (PS3.4 B.2.3).
    held = await archive_context.repository.get_instance(str(sent.SOPInstanceUID))
    assert held is not None
    assert (await asyncio.to_thread(assoc.send_c_echo)).Status == 0x0000
    await asyncio.to_thread(assoc.release)
    assert assoc.is_released
    await until(lambda: acceptor.is_released and not acceptor.is_alive())
    assert not acceptor.is_aborted


async def test_a_data_set_above_the_handover_size_is_staged_and_stored_as_sent(
    server: DimseServer, archive_context: ArchiveContext
) -> None:
    sent = pydicom.dcmread(dicom_files.path("CT_small.dcm"))
    sent.SOPInstanceUID = generate_uid()
    sent.Rows, sent.Columns = 1024, 1536  # 3 MiB of 16-bit pixels: more than handlers.HANDOVER_BYTES
    sent.PixelData = bytes(range(256)) * (1024 * 1536 * 2 // 256)
    assoc = await Peer(CTImageStorage).associate(server)
    [acceptor] = served_here(server)
    assert isinstance(acceptor.loop_phase, DataPhase)
    assert (await asyncio.to_thread(assoc.send_c_store, sent)).Status == 0x0000
    await asyncio.to_thread(assoc.release)
    held = await archive_context.repository.get_instance(str(sent.SOPInstanceUID))
    assert held is not None
    with archive_context.storage.open(held.storage_key) as stored:
        assert pydicom.dcmread(stored).PixelData == sent.PixelData


async def stored_study(server: DimseServer) -> pydicom.Dataset:
    """The C-GET identifier of a study of one CT instance, stored in `server`'s archive. Through ingest, not a
    C-STORE: an impatient server's DIMSE timeout would bound the store too, and a slow spell of the machine
    failed the set-up rather than what a test is about."""
    sent = pydicom.dcmread(dicom_files.path("CT_small.dcm"))
    assert (await server.context.archive.ingest.store(dicom_files.part10(sent))).ok
    identifier = pydicom.Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = sent.StudyInstanceUID
    return identifier


async def get_association(
    peer: Peer, server: DimseServer, on_store: Callable[[evt.Event], int]
) -> Association:
    """`peer` associated for C-GET: the Study Root GET model, and CT Image Storage with itself as SCP."""
    return await peer.associate(
        server,
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )


def c_get(assoc: Association, identifier: pydicom.Dataset) -> list[Any]:
    return [status for status, _ in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)]


async def test_a_query_retrieve_association_is_served_by_the_loop_and_finds_and_retrieves_what_was_stored(
    server: DimseServer, caplog: pytest.LogCaptureFixture
) -> None:
    identifier = await stored_study(server)
    received: list[Any] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.dataset)
        return 0x0000

    models = (
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelGet,
        StudyRootQueryRetrieveInformationModelMove,
    )
    assoc = await get_association(Peer(*models, CTImageStorage), server, on_store)
    [acceptor] = served_here(server)
    assert isinstance(acceptor.loop_phase, DataPhase)
    caplog.set_level(logging.WARNING)
    found = await asyncio.to_thread(
        lambda: [status.Status for status, _ in assoc.send_c_find(identifier, models[0])]
    )
    assert found == [0xFF00, 0x0000]
    responses = await asyncio.to_thread(c_get, assoc, identifier)
    assert [r.Status for r in responses] == [0xFF00, 0x0000]
    assert responses[-1].NumberOfCompletedSuboperations == 1
    assert [ds.StudyInstanceUID for ds in received] == [identifier.StudyInstanceUID]
    await asyncio.to_thread(assoc.release)
    assert assoc.is_released
    # Nothing went wrong, so nothing is logged above INFO (pynetdicom's status checks included).
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []


async def test_a_get_whose_sub_operation_is_not_answered_within_the_dimse_timeout_is_aborted(
    impatient_server: DimseServer, caplog: pytest.LogCaptureFixture
) -> None:
    identifier = await stored_study(impatient_server)

    def on_store(event: evt.Event) -> int:
        time.sleep(2 * DIMSE_TIMEOUT)
        return 0x0000

    peer = Peer(StudyRootQueryRetrieveInformationModelGet, CTImageStorage)
    assoc = await get_association(peer, impatient_server, on_store)
    await asyncio.to_thread(c_get, assoc, identifier)
    await until(lambda: assoc.is_aborted)
    assert [pdu.source for pdu in peer.aborts] == [0x02]
    assert "no C-STORE-RSP to sub-operation" in caplog.text


async def test_an_association_offering_more_than_storage_keeps_pynetdicoms_reactors(
    server: DimseServer,
) -> None:
    assoc = await Peer(CTImageStorage, ModalityWorklistInformationFind).associate(server)
    [acceptor] = served_here(server)
    assert acceptor.loop_phase is None
    stored = await asyncio.to_thread(assoc.send_c_store, pydicom.dcmread(dicom_files.path("CT_small.dcm")))
    assert stored.Status == 0x0000
    await asyncio.to_thread(assoc.release)
    assert assoc.is_released


@pytest.mark.parametrize(
    "pdu",
    [
        struct.pack(">BxI", 0x01, 4) + bytes(4),  # an A-ASSOCIATE-RQ in Sta6
        struct.pack(">BxI", 0x11, 2) + bytes(2),  # no PDU type of PS3.8 9.3
        struct.pack(
            ">BxII", 0x04, 4, 0
        ),  # a PDV item of length 0 (PS3.8 9.3.5.1: at least the control header)
        struct.pack(">BxIIB", 0x04, 5, 1, 1),  # a PDV item of its context ID only
        p_data_tf(1, b"\x00\x00\x00\x01\x04\x00\x00\x00"),  # a command set element running past its end
    ],
    ids=["a-associate-rq", "unknown-type", "empty-pdv", "context-id-only", "unreadable-command"],
)
async def test_a_pdu_out_of_place_or_unreadable_is_answered_with_a_provider_a_abort(
    server: DimseServer, pdu: bytes
) -> None:
    """PS3.8 9.2 (Sta6, AA-8): an A-ABORT with source service provider, and the association ends."""
    peer = Peer(CTImageStorage)
    assoc = await peer.associate(server)
    [acceptor] = served_here(server)
    assoc.dul.socket.socket.sendall(pdu)
    await until(lambda: assoc.is_aborted)
    assert [abort.source for abort in peer.aborts] == [0x02]
    await until(lambda: acceptor.is_aborted and not acceptor.is_alive())


async def test_a_message_on_a_context_not_accepted_aborts_the_association(server: DimseServer) -> None:
    peer = Peer(CTImageStorage)
    assoc = await peer.associate(server)
    assoc.dul.socket.socket.sendall(p_data_tf(99, echo_command(7)))
    await until(lambda: assoc.is_aborted)
    assert len(peer.aborts) == 1


async def test_a_c_echo_written_by_hand_on_the_verification_context_is_answered(server: DimseServer) -> None:
    peer = Peer(Verification)
    assoc = await peer.associate(server)
    [context] = assoc.accepted_contexts
    answers: list[Any] = []
    assoc.bind(evt.EVT_DIMSE_RECV, lambda event: answers.append(event.message))
    assoc.dul.socket.socket.sendall(p_data_tf(int(context.context_id), echo_command(41)))
    await until(lambda: bool(answers))
    [answer] = answers
    assert answer.command_set.MessageIDBeingRespondedTo == 41
    assert answer.command_set.Status == 0x0000
    await asyncio.to_thread(assoc.release)


async def test_an_idle_association_is_aborted_after_the_network_timeout(hasty_server: DimseServer) -> None:
    peer = Peer(CTImageStorage)
    started = time.monotonic()  # before the association: the server's idle wait begins once it is accepted
    assoc = await peer.associate(hasty_server)
    await until(lambda: assoc.is_aborted, NETWORK_TIMEOUT + 5)
    assert time.monotonic() - started >= NETWORK_TIMEOUT
    assert [abort.source for abort in peer.aborts] == [0x00]


def raw_association(
    server: DimseServer, *, receive_buffer: int | None = None, abstract_syntax: str = CTImageStorage
) -> socket.socket:
    """A connection with an accepted association for CT Image Storage, or `abstract_syntax`, in Implicit VR
    Little Endian (context 1), made by hand: what is sent and read afterwards is the test's alone."""
    request = A_ASSOCIATE()
    request.application_context_name = APPLICATION_CONTEXT_NAME
    request.calling_ae_title = CALLING
    request.called_ae_title = AE_TITLE
    context = build_context(abstract_syntax, ImplicitVRLittleEndian)
    context.context_id = 1
    request.presentation_context_definition_list = [context]
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = 16384
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    request.user_information = [maximum, implementation]
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(5)
    sock.connect(server.address)
    sock.sendall(A_ASSOCIATE_RQ(request).encode())
    kind, length = struct.unpack(">BxI", _read(sock, 6))
    _read(sock, length)
    assert kind == 0x02, "the association was not accepted"
    return sock


def _read(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, "the connection closed"
        data += chunk
    return data


def closed_within(sock: socket.socket, seconds: float, junk: bytes = b"") -> bool:
    """Whether the server closes the connection within `seconds`, while the peer keeps sending `junk`."""
    deadline = time.monotonic() + seconds
    sock.settimeout(0.05)
    while time.monotonic() < deadline:
        try:
            if junk:
                sock.sendall(junk)
            if sock.recv(65536) == b"":
                return True
        except (BrokenPipeError, ConnectionResetError):
            return True
        except TimeoutError:
            pass
    return False


def responses_until_final(sock: socket.socket) -> list[dict[int, Any]]:
    """The command sets of the responses read from `sock` up to the first that is not pending (PS3.7 C)."""
    assembler = MessageAssembler()
    found: list[dict[int, Any]] = []
    while True:
        kind, length = struct.unpack(">BxI", _read(sock, 6))
        body = _read(sock, length)
        assert kind == 0x04, f"a PDU of type 0x{kind:02X} instead of P-DATA-TF"
        offset = 0
        while offset < len(body):
            (size,) = struct.unpack_from(">I", body, offset)
            message = assembler.feed(body[offset + 4], body[offset + 5 : offset + 4 + size])
            offset += 4 + size
            if message is not None:
                found.append(message.header)
                if message.header[0x00000900] not in (0xFF00, 0xFF01):
                    return found


async def test_a_c_cancel_right_behind_its_c_find_ends_the_find_with_fe00(server: DimseServer) -> None:
    """The C-CANCEL is read while the matches are sent (link.py), and the final response is Cancel."""
    await stored_study(server)
    # The server accepts on this loop: the association is made from a thread of its own.
    sock = await asyncio.to_thread(raw_association, server, abstract_syntax=StudyRootQueryRetrieveInformationModelFind)
    with sock:
        request = C_FIND()
        request.MessageID = 7
        request.AffectedSOPClassUID = StudyRootQueryRetrieveInformationModelFind
        request.Priority = 0
        cancel = C_CANCEL()
        cancel.MessageIDBeingRespondedTo = 7
        identifier = pydicom.Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = ""
        sock.sendall(
            p_data_tf(1, encode_command("C-FIND-RQ", request, True))
            + p_data_tf(1, encode(identifier, True, True) or b"", control=0x02)
            + p_data_tf(1, encode_command("C-CANCEL-RQ", cancel, False))
        )
        found = await asyncio.to_thread(responses_until_final, sock)
    assert found[-1][0x00000900] == 0xFE00
    assert all(header[0x00000120] == 7 for header in found)  # Message ID Being Responded To


async def test_stopping_the_server_ends_an_active_association_at_once_and_reports_one_abort(
    archive_context: ArchiveContext,
) -> None:
    """DimseServer.stop aborts what the loop serves, not only what pynetdicom's reactors serve, and returns once
    the association has ended (its audit record written), as for pynetdicom's."""
    server = await start_dimse_server(archive_context)
    peer = Peer(CTImageStorage, Verification)
    assoc = await peer.associate(server)
    aborted: list[evt.Event] = []
    [acceptor] = served_here(server)
    acceptor.bind(evt.EVT_ABORTED, aborted.append)
    acceptor.bind(evt.EVT_RELEASED, aborted.append)
    assert (await asyncio.to_thread(assoc.send_c_echo)).Status == 0x0000
    await asyncio.to_thread(server.stop, 0.0)
    assert not acceptor.is_alive()
    assert acceptor.is_aborted and not acceptor.is_released
    assert [event.event for event in aborted] == [evt.EVT_ABORTED]
    await until(lambda: assoc.is_aborted, 2)
    assert [abort.source for abort in peer.aborts] == [0x00]


async def test_what_a_peer_sends_after_its_release_request_is_dropped_and_the_connection_closed(
    server: DimseServer,
) -> None:
    """Sta13 (PS3.8 9.2): A-RELEASE-RP, then the connection closes after the ARTIM time even while the peer
    floods it; nothing of the flood is held (a whole PDU limit's worth would be, were it read into memory)."""

    def release_and_flood() -> tuple[bytes, bool]:
        with raw_association(server) as sock:
            sock.sendall(struct.pack(">BxI", 0x05, 4) + bytes(4))  # A-RELEASE-RQ (PS3.8 9.3.6)
            answer = _read(sock, 10)
            return answer, closed_within(sock, ACSE_TIMEOUT + 3, junk=bytes(64 * 1024))

    # The server serves on this loop: the peer runs in a thread of its own.
    answer, closed = await asyncio.to_thread(release_and_flood)
    assert answer == struct.pack(">BxI", 0x06, 4) + bytes(4)  # A-RELEASE-RP (PS3.8 9.3.7)
    assert closed


async def test_a_peer_that_stops_reading_its_answers_is_cut_after_the_network_timeout(
    hasty_server: DimseServer, caplog: pytest.LogCaptureFixture
) -> None:
    """C-ECHO requests sent and no response read: once the server's writes stall for DIMSE_NETWORK_TIMEOUT,
    the connection is closed and the slot freed (the peer's socket stays open all the while)."""

    def flood() -> tuple[Any, float]:
        with raw_association(hasty_server, receive_buffer=2048) as sock:
            [acceptor] = served_here(hasty_server)
            requests = b"".join(p_data_tf(1, echo_command(n)) for n in range(1, 200))
            started = time.monotonic()
            sock.settimeout(0.2)
            while acceptor.is_alive() and time.monotonic() - started < NETWORK_TIMEOUT + 10:
                try:
                    sock.sendall(requests)
                except TimeoutError:  # the server reads no more: our own buffer is full
                    continue
                except (BrokenPipeError, ConnectionResetError):  # the server closed the connection
                    break
            elapsed = time.monotonic() - started
            acceptor.join(5)
            return acceptor, elapsed

    with caplog.at_level(logging.WARNING, logger="dimse_bridge.data_phase"):
        acceptor, elapsed = await asyncio.to_thread(flood)
    assert not acceptor.is_alive() and acceptor.is_aborted
    assert elapsed >= NETWORK_TIMEOUT
    assert "it read nothing of what was sent for 1.0 s (DIMSE_NETWORK_TIMEOUT)" in caplog.text


async def test_stopping_the_server_during_a_store_lets_it_commit_and_answer_before_the_abort(
    hooked_archive: ArchiveContext,
) -> None:
    server = await start_dimse_server(hooked_archive)
    peer = Peer(CTImageStorage)
    assoc = await peer.associate(server)
    sent = pydicom.dcmread(dicom_files.path("CT_small.dcm"))
    sent.SOPInstanceUID, sent.PatientID = generate_uid(), "SLOW"
    started = time.monotonic()
    storing = asyncio.ensure_future(asyncio.to_thread(assoc.send_c_store, sent))
    await asyncio.sleep(0.3)  # the hook holds the store for a second
    await asyncio.to_thread(server.stop, 0.0)
    assert (await storing).Status == 0x0000
    assert time.monotonic() - started >= 1.0  # the hook did hold it: stop came in the middle
    assert await hooked_archive.repository.get_instance(str(sent.SOPInstanceUID)) is not None
    await until(lambda: assoc.is_aborted, 2)
    assert [abort.source for abort in peer.aborts] == [0x00]


# -- acceptance on the loop (dimse_bridge/loop_accept.py), and what it hands to pynetdicom's threads ------------


def _threads() -> list[str]:
    return [thread.name for thread in threading.enumerate() if thread.name.startswith("AcceptorThread")]


async def test_a_verification_association_is_accepted_and_served_without_a_thread_of_its_own(
    server: DimseServer,
) -> None:
    peer = Peer(Verification)
    assoc = await peer.associate(server)
    [acceptor] = served_here(server)
    assert acceptor.loop_ended is not None and acceptor.is_alive()
    assert _threads() == []
    assert (await asyncio.to_thread(assoc.send_c_echo)).Status == 0x0000
    ended: list[Any] = []
    acceptor.bind(evt.EVT_RELEASED, ended.append)
    await asyncio.to_thread(assoc.release)
    await until(lambda: not acceptor.is_alive())
    assert [event.event for event in ended] == [evt.EVT_RELEASED]
    assert served_here(server) == []


@pytest.mark.parametrize("kind", ["Modality Worklist", "User Identity"])
async def test_an_association_the_loop_does_not_serve_goes_to_pynetdicoms_threads_and_works(
    server: DimseServer, kind: str
) -> None:
    """What the loop read of the connection is given back to pynetdicom's reactor, which negotiates as before."""
    options: dict[str, Any] = {}
    if kind == "Modality Worklist":
        peer = Peer(ModalityWorklistInformationFind, Verification)
    else:
        peer = Peer(Verification)
        identity = UserIdentityNegotiation()
        identity.user_identity_type = 1
        identity.primary_field = b"anyone"
        options["ext_neg"] = [identity]
    assoc = await peer.associate(server, **options)
    [acceptor] = served_here(server)
    assert acceptor.loop_ended is None and len(_threads()) == 1
    assert (await asyncio.to_thread(assoc.send_c_echo)).Status == 0x0000
    await asyncio.to_thread(assoc.release)
    await until(lambda: not _threads())


def _raw(server: DimseServer, first: bytes, seconds: float) -> tuple[bytes, float]:
    """Send `first` on a new connection; what the server answers until it closes, and when it closed."""
    with socket.create_connection(server.address, timeout=seconds) as sock:
        sock.sendall(first)
        started = time.monotonic()
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
        return answer, time.monotonic() - started


async def test_a_first_pdu_other_than_an_association_request_gets_pynetdicoms_a_abort(server: DimseServer) -> None:
    """PS3.8 9.2, Sta2: an A-RELEASE-RQ before any association is answered with an A-ABORT (AA-1), as before."""
    release_rq = struct.pack(">BxI", 0x05, 4) + bytes(4)
    answer, _ = await asyncio.to_thread(_raw, server, release_rq, ACSE_TIMEOUT + 5)
    assert answer[:1] == b"\x07"  # A-ABORT (PS3.8 9.3.8)


async def test_a_request_cut_short_is_closed_after_the_acse_timeout_with_a_warning(
    server: DimseServer, caplog: pytest.LogCaptureFixture
) -> None:
    """PS3.8 9.1.5: the ARTIM timer bounds the wait for the rest of the A-ASSOCIATE-RQ."""
    header = struct.pack(">BxI", 0x01, 200)  # an A-ASSOCIATE-RQ of 200 bytes, of which none come
    with caplog.at_level(logging.INFO, logger="dimse_bridge.acceptor"):
        answer, waited = await asyncio.to_thread(_raw, server, header, ACSE_TIMEOUT + 5)
    assert answer == b"" and ACSE_TIMEOUT - 0.1 <= waited < ACSE_TIMEOUT + 3
    [record] = [r for r in caplog.records if "before its A-ASSOCIATE-RQ was complete" in r.getMessage()]
    assert record.levelno == logging.WARNING


async def test_a_connection_closed_without_a_byte_is_logged_at_info_only(
    server: DimseServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A load balancer's TCP health check is no warning."""
    with caplog.at_level(logging.INFO, logger="dimse_bridge.acceptor"):
        await asyncio.to_thread(socket.create_connection(server.address).close)
        await until(lambda: any("before its A-ASSOCIATE-RQ" in r.getMessage() for r in caplog.records))
    [record] = [r for r in caplog.records if "before its A-ASSOCIATE-RQ" in r.getMessage()]
    assert record.levelno == logging.INFO


async def test_stopping_the_server_closes_a_connection_still_sending_its_request_at_once(
    archive_context: ArchiveContext,
) -> None:
    """No new association once the server stops, on the loop or in a thread: the connection that has sent part of
    its A-ASSOCIATE-RQ is closed at once, not answered after the stop, nor left for its ACSE timeout."""
    server = await start_dimse_server(archive_context)
    sock = await asyncio.to_thread(socket.create_connection, server.address, 5)
    with sock:
        sock.sendall(struct.pack(">BxI", 0x01, 200))  # an A-ASSOCIATE-RQ of 200 bytes, the rest never sent
        await asyncio.sleep(0.2)  # the loop has taken the connection and waits for the rest
        started = time.monotonic()
        await asyncio.to_thread(server.stop, 0.0)
        answer = await asyncio.to_thread(sock.recv, 64)
    assert answer == b"" and time.monotonic() - started < ACSE_TIMEOUT
