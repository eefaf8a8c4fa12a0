"""Storage and Verification associations whose data transfer phase the event loop serves (dimse_bridge/data_phase.py).

The server runs in this test's loop (as the app's lifespan runs it), on 127.0.0.1; the peer is pynetdicom as SCU,
in a thread, and raw PDUs written to its socket where a peer misbehaves. Every DCMTK and dcmjs-dimse test of the
DIMSE door also goes through this phase whenever its association offers storage and Verification only.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_ECHO
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelFind, Verification

from app.bootstrap import open_archive
from app.config import Settings
from app.context import ArchiveContext
from dimse_bridge.commands import encode_command
from dimse_bridge.data_phase import DataPhase
from dimse_bridge.server import DimseServer, start_dimse_server, stop_dimse_server
from tests import dicom_files
from tests.dimse.test_store import AE_TITLE, CALLING
from tests.servers import free_port

HOST = "127.0.0.1"
NETWORK_TIMEOUT = 1.0


@pytest.fixture
async def archive_context(tmp_path: Path) -> AsyncIterator[ArchiveContext]:
    settings = Settings(  # type: ignore[call-arg]
        data_dir=tmp_path,
        dimse_host=HOST,
        dimse_port=free_port(),
        dimse_network_timeout=NETWORK_TIMEOUT,
        ae_title=AE_TITLE,
        _env_file=None,
    )
    context = await open_archive(settings)
    yield context
    await context.close()


@pytest.fixture
async def server(archive_context: ArchiveContext) -> AsyncIterator[DimseServer]:
    started = await start_dimse_server(archive_context)
    yield started
    await stop_dimse_server(started)


class Peer:
    """pynetdicom as SCU, which records the A-ABORT PDUs it receives."""

    def __init__(self, *contexts: str) -> None:
        self.ae = AE(ae_title=CALLING)
        for context in contexts:
            self.ae.add_requested_context(context)
        self.aborts: list[A_ABORT_RQ] = []

    async def associate(self, server: DimseServer) -> Association:
        def received(event: evt.Event) -> None:
            if isinstance(event.pdu, A_ABORT_RQ):
                self.aborts.append(event.pdu)

        assoc = await asyncio.to_thread(
            self.ae.associate, *server.address, ae_title=AE_TITLE, evt_handlers=[(evt.EVT_PDU_RECV, received)]
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


def p_data_tf(context_id: int, command: bytes) -> bytes:
    """A P-DATA-TF PDU of one PDV: a whole command set (PS3.8 9.3.5, E.2)."""
    item = bytes((context_id, 0x03)) + command
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


async def test_an_association_offering_more_than_storage_keeps_pynetdicoms_reactors(server: DimseServer) -> None:
    assoc = await Peer(CTImageStorage, StudyRootQueryRetrieveInformationModelFind).associate(server)
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
        struct.pack(">BxII", 0x04, 4, 0),  # a PDV item of length 0 (PS3.8 9.3.5.1: at least the control header)
        p_data_tf(1, b"\x00\x00\x00\x01\x04\x00\x00\x00"),  # a command set element running past its end
    ],
    ids=["a-associate-rq", "unknown-type", "empty-pdv", "unreadable-command"],
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


async def test_an_idle_association_is_aborted_after_the_network_timeout(server: DimseServer) -> None:
    peer = Peer(CTImageStorage)
    assoc = await peer.associate(server)
    started = time.monotonic()
    await until(lambda: assoc.is_aborted, NETWORK_TIMEOUT + 4)
    assert time.monotonic() - started >= NETWORK_TIMEOUT * 0.9
    assert [abort.source for abort in peer.aborts] == [0x00]


async def test_stopping_the_server_aborts_an_association_the_loop_serves(archive_context: ArchiveContext) -> None:
    server = await start_dimse_server(archive_context)
    peer = Peer(CTImageStorage)
    assoc = await peer.associate(server)
    [acceptor] = served_here(server)
    await asyncio.to_thread(server.stop, 0.0)  # no grace: open associations are aborted at once
    await until(lambda: assoc.is_aborted, NETWORK_TIMEOUT / 2)  # before the idle timeout could have done it
    assert [abort.source for abort in peer.aborts] == [0x00]
    await until(lambda: acceptor.is_aborted and not acceptor.is_alive())
