"""Associations accepted on the event loop: the A-ASSOCIATE-RQ read, admitted, negotiated and answered there.

pynetdicom gives every connection three threads before its first DIMSE message: the request handler's, which
builds the association, the association's own, which negotiates it, and its DUL reactor's, which reads the
A-ASSOCIATE-RQ and writes the answer. For an association whose data transfer phase the loop serves
(data_phase.py) the threads did nothing after that but wait, and starting them, handing the primitives from one
to the next and stopping them cost more than the rest of the association: 2.9 ms of server CPU for a C-ECHO
association (perf), about 7 ms for getscu's (121 presentation contexts), and 25 instances of a C-GET take less.

So the accept thread hands every plain TCP connection to the loop (acceptor.AcceptorServer.process_request), and
the loop reads the A-ASSOCIATE-RQ within DIMSE_ACSE_TIMEOUT (the ARTIM timer, PS3.8 9.1.5). It then builds
pynetdicom's Association object as pynetdicom's request handler does, with the same bound handlers, and runs what
pynetdicom's association thread runs: EVT_CONN_OPEN, EVT_REQUESTED (admission, observers, data_phase), and
pynetdicom's ACSE negotiation with its events. What the ACSE queued for the DUL (an A-ASSOCIATE-AC, or the
A-ASSOCIATE-RJ admission decided) the loop writes itself, and then serves the data phase (DataPhase.serve) and
ends the association as the thread would (AcceptorAssociation.end_loop_phase). No thread is started.

Everything else goes back to pynetdicom's threads, with what the loop read replayed to its reactor
(acceptor.AcceptorSocket.replay): a first PDU that is not an A-ASSOCIATE-RQ or is larger than acse_pdus caches,
a request with User Identity or extended negotiation items (rare, and answered with items pynetdicom writes),
and an association data_phase.handle_requested does not give the loop (Storage Commitment, the workflow
services, a listener to pynetdicom's per-PDU events). For the last, EVT_CONN_OPEN and EVT_REQUESTED run again
on pynetdicom's association: both are idempotent here (TCP_NODELAY, an association id, an access check that
passed, the context list of an association object then dropped). TLS connections never come here (their
handshake is pynetdicom's, in the association's thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import threading
from typing import Any, Final, cast

from pynetdicom import evt
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ
from pynetdicom.pdu_primitives import (
    A_ABORT,
    A_ASSOCIATE,
    A_P_ABORT,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UserIdentityNegotiation,
)

from dimse_bridge import acse_pdus
from dimse_bridge.acceptor import (
    AcceptorAE,
    AcceptorAssociation,
    AcceptorRequestHandler,
    AcceptorServer,
    log_unfinished_request,
)
from dimse_bridge.link import ABORT_SOURCE_USER, a_abort, until_closed

log = logging.getLogger(__name__)

_PDU_HEADER: Final = 6  # PDU type, reserved, length (PS3.8 9.3.1)
# User Information items the loop leaves to pynetdicom: rare here, and answered with items only pynetdicom writes.
_THREADS_NEGOTIATE: Final = (
    UserIdentityNegotiation,
    SOPClassExtendedNegotiation,
    SOPClassCommonExtendedNegotiation,
)


class LoopAcceptor:
    """Takes plain TCP connections from the accept thread and accepts, on `loop`, the associations it serves."""

    def __init__(self, server: AcceptorServer, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.loop = loop
        self.closing = False  # set by `stop_taking`, from any thread
        self._tasks: set[asyncio.Task[None]] = set()  # held here: the loop keeps only weak references to tasks
        self._reading: set[asyncio.Task[Any]] = set()  # tasks still reading (or decoding) their request

    def take(self, request: socket.socket, client_address: Any) -> bool:
        """From the accept thread: the connection is the loop's now; False if the loop is gone."""
        try:
            self.loop.call_soon_threadsafe(self._start, request, client_address)
        except RuntimeError:  # the loop is closed: the server is stopping
            return False
        return True

    def stop_taking(self) -> None:
        """From any thread, first thing when the server stops: no association is accepted or handed to a thread
        any more, and the connections still reading their request are closed. Associations already accepted
        are the server's to abort (DimseServer.stop), as pynetdicom's are."""
        self.closing = True
        with contextlib.suppress(RuntimeError):  # the loop is closed already
            self.loop.call_soon_threadsafe(self._cancel_reading)

    def _cancel_reading(self) -> None:
        for task in self._reading:
            task.cancel()

    def _start(self, request: socket.socket, client_address: Any) -> None:
        task = asyncio.ensure_future(self._accept(request, client_address))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, sock: socket.socket, address: Any) -> None:
        reading = asyncio.current_task()
        assert reading is not None
        self._reading.add(reading)
        try:
            request = await self._request(sock, address)
        finally:
            self._reading.discard(reading)
        if request is None or self.closing:  # ended, or the server is stopping: no new association
            _close(sock)
            return
        pdu, primitive = request
        if primitive is None or any(isinstance(item, _THREADS_NEGOTIATE) for item in primitive.user_information):
            self._hand_back(sock, address, pdu)
            return
        try:
            await self._associate(sock, address, primitive, pdu)
        except Exception:
            log.exception("association from %s:%s failed on the loop", *address[:2])
            _close(sock)

    async def _request(self, sock: socket.socket, address: Any) -> tuple[bytes, A_ASSOCIATE | None] | None:
        """The first PDU's bytes and, for an A-ASSOCIATE-RQ the loop may serve, its primitive; None if the
        connection ended first or the server stopped."""
        try:
            sock.setblocking(False)
            request = await _read_request(sock, address, self.server.ae.acse_timeout)
            if request is None:
                return None
            pdu, complete = request
            if not complete:
                return pdu, None
            known, primitive = acse_pdus.known_primitive(pdu)
            if not known:  # decoded in a thread: a crafted request can take tens of milliseconds
                primitive = await asyncio.to_thread(acse_pdus.request_primitive, pdu)
            return pdu, primitive
        except (OSError, asyncio.CancelledError):  # reset, or the server stopping, before the request was read
            return None

    def _hand_back(self, sock: socket.socket, address: Any, pdu: bytes) -> None:
        if self.closing:
            _close(sock)
            return
        try:
            self.server.serve_in_thread(sock, address, pdu)
        except Exception:  # no thread could be started (the process is out of them, or of memory)
            log.exception("association from %s:%s could not be handed to a thread", *address[:2])
            self.server.replays.pop(sock, None)
            _close(sock)

    async def _associate(self, sock: socket.socket, address: Any, primitive: A_ASSOCIATE, pdu: bytes) -> None:
        """pynetdicom's association-request phase (Association.run_reactor, acceptor side) for one request."""
        assoc = _association(self.server, sock, address)
        ae = cast(AcceptorAE, self.server.ae)
        assoc.loop_ended = threading.Event()
        task = asyncio.current_task()
        assert task is not None
        assoc.loop_abort = functools.partial(self.loop.call_soon_threadsafe, task.cancel)
        ae.loop_associations.add(assoc)
        handed_back = False
        try:
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": address})
            assoc.requestor.primitive = primitive
            evt.trigger(assoc, evt.EVT_REQUESTED, {})
            if not (assoc.is_aborted or assoc.is_rejected):
                if assoc.loop_phase is None:  # not an association the loop serves: pynetdicom's threads take it
                    handed_back = True
                    return
                assoc.acse.negotiate_association()
            try:
                await _send_queued(sock, assoc)
            except OSError:  # the connection failed under the answer: the association ends there
                if assoc.is_established:
                    assoc.end_loop_phase(released=False)
                return
            if assoc.is_established and assoc.loop_phase is not None:
                assoc.end_loop_phase(await assoc.loop_phase.serve())
            elif assoc.is_rejected:
                await until_closed(functools.partial(self.loop.sock_recv, sock), assoc.acse_timeout)
        except asyncio.CancelledError:  # aborted (AcceptorAssociation.loop_abort) before its data phase began
            if assoc.is_established:
                with contextlib.suppress(OSError):
                    sock.send(a_abort(ABORT_SOURCE_USER))
                assoc.end_loop_phase(released=False)
            raise
        finally:
            ae.loop_associations.discard(assoc)
            _forget(assoc)
            assoc.loop_ended.set()
            if handed_back:
                self._hand_back(sock, address, pdu)
            else:
                self.server.shutdown_request(sock)


def _association(server: AcceptorServer, sock: socket.socket, address: Any) -> AcceptorAssociation:
    """pynetdicom's Association for `sock`, built and bound as its request handler builds it; the handler itself
    is not run (socketserver's handlers serve in their constructor)."""
    handler = AcceptorRequestHandler.__new__(AcceptorRequestHandler)
    handler.request, handler.client_address, handler.server = sock, address, server
    assoc = handler._create_association()
    assert isinstance(assoc, AcceptorAssociation)
    sock.setblocking(False)  # the handler gave it DIMSE_NETWORK_TIMEOUT, for pynetdicom's blocking reads
    return assoc


def _forget(assoc: AcceptorAssociation) -> None:
    """Close what building the association opened that its never-started reactor would have closed."""
    dul: Any = assoc.dul
    for end in (dul._wake_read, dul._wake_write):
        end.close()


async def _read_request(
    sock: socket.socket, address: Any, acse_timeout: float | None
) -> tuple[bytes, bool] | None:
    """The first PDU, read within the ARTIM time: (its bytes, True) if it is an A-ASSOCIATE-RQ acse_pdus caches,
    (what was read, False) if pynetdicom should read on; None if the connection ended first (logged)."""
    data = bytearray()
    try:
        async with asyncio.timeout(acse_timeout):
            if await _fill(sock, data, _PDU_HEADER):
                length = _PDU_HEADER + int.from_bytes(data[2:6], "big")
                if data[0] != acse_pdus.A_ASSOCIATE_RQ_TYPE or length > acse_pdus.CACHED_BYTES:
                    return bytes(data), False
                if await _fill(sock, data, length):
                    return bytes(data), True
        closed = True
    except TimeoutError:
        closed = False
    log_unfinished_request(address[:2], acse_timeout, closed)
    return None


async def _fill(sock: socket.socket, data: bytearray, count: int) -> bool:
    """Read into `data` until it holds `count` bytes; False if the peer closed the connection first."""
    loop = asyncio.get_running_loop()
    while len(data) < count:
        chunk = await loop.sock_recv(sock, count - len(data))
        if not chunk:
            return False
        data += chunk
    return True


async def _send_queued(sock: socket.socket, assoc: AcceptorAssociation) -> None:
    """Write what pynetdicom's ACSE queued for the DUL: the A-ASSOCIATE-AC or -RJ, or an A-ABORT (PS3.8 9.3)."""
    loop = asyncio.get_running_loop()
    queued = assoc.dul.to_provider_queue
    while not queued.empty():
        primitive = queued.get_nowait()
        if isinstance(primitive, A_ASSOCIATE) and primitive.result == 0x00:
            data = acse_pdus.encode_accept(primitive) or A_ASSOCIATE_AC(primitive).encode()
        elif isinstance(primitive, A_ASSOCIATE):
            data = A_ASSOCIATE_RJ(primitive).encode()
        elif isinstance(primitive, A_ABORT | A_P_ABORT):
            data = A_ABORT_RQ(primitive).encode()
        else:  # nothing else is queued before the data transfer phase
            continue
        await loop.sock_sendall(sock, data)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()

