"""The data transfer phase of Storage, Verification and C-GET associations, served on the event loop.

pynetdicom serves each association with two threads: its DUL reactor reads PDUs and runs the state machine, its
association reactor takes the DIMSE messages from a queue and calls our handler, which hands the store to the
event loop (bridge.py) and waits. Each C-STORE crossed three threads and four hand-offs before ingest began, and
as many back with the answer: with storescu on one association, 1.5-1.7 ms of every instance went between one
handler's end and the next one's start (0.8-1.0 ms here), and pynetdicom's two reactors took ~15 % of the
server's CPU (py-spy).

An association that proposes only Verification and storage SOP classes (a modality, storescu, dcmsend, a PACS
forwarding) has nothing in its data phase but C-STORE and C-ECHO requests to answer one at a time, so the loop
serves it: it reads the PDUs, reassembles each message (commands.py), awaits the same store coroutine the
thread door hands to the bridge (handlers.py) and writes the response itself. One that also proposes the GET
models (getscu, a viewer) is served the same way: a C-GET's sub-operations go out and their responses come in on
this same reader and writer (loop_get.py), since no asynchronous operations window is negotiated and a C-GET
is the only operation outstanding. Everything before stays
pynetdicom's: the A-ASSOCIATE-RQ, admission (admission.py), negotiation and the A-ASSOCIATE-AC. The DUL reactor
stops once it has written the A-ASSOCIATE-AC (`PromptDUL.stop_after_accept`, so nothing else reads the socket);
the association thread only waits for this phase to end, then reports the release or abort as pynetdicom's
reactor does (`AcceptorAssociation._run_reactor`: EVT_RELEASED, EVT_ABORTED, the audit records), and pynetdicom closes
the connection.

Any other association keeps pynetdicom's reactors: one offering C-FIND, C-MOVE, Storage Commitment or a workflow
service, or one over TLS, or one with a listener to an event only those reactors produce (pynetdicom's DEBUG log
listens to every PDU).

Sta6 (data transfer) of PS3.8 9.2's state table, as pynetdicom runs it:
* P-DATA-TF: DIMSE messages (PS3.7 6.3, PS3.8 E.2); a message that cannot be read aborts (Evt19, AA-8).
* A-RELEASE-RQ: A-RELEASE-RP, then the requestor closes the connection (AR-2, AR-4, Sta13), within the ARTIM
  time (DIMSE_ACSE_TIMEOUT).
* A-ABORT, or the connection closed: the association ends (AA-3, AA-4).
* any other PDU, a PDU that cannot be read: A-ABORT, source service provider (AA-8).
* nothing for DIMSE_NETWORK_TIMEOUT: A-ABORT, as pynetdicom's idle timer; a PDU longer than the peer may send, or
  one that stops half-way for as long, or a peer that reads nothing of our answers for as long: the connection
  is closed, as acceptor.py's reads and writes do.
* the server stopping (DimseServer.stop aborts every association): a store in progress commits and is answered,
  then the A-ABORT goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import struct
import threading
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Executor
from typing import Any, Final, NoReturn

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_CANCEL, C_ECHO, C_GET, C_STORE
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import SOPClassCommonExtendedNegotiation
from pynetdicom.service_class import StorageServiceClass, VerificationServiceClass
from pynetdicom.sop_class import uid_to_service_class

from dimse_bridge import handlers, loop_get, qr
from dimse_bridge.acceptor import AcceptorAssociation, log_oversized_pdu, log_stalled_pdu, pdu_limit
from dimse_bridge.access import peer
from dimse_bridge.bridge import BridgeClosed
from dimse_bridge.commands import (
    P_DATA_TF_TYPE,
    CommandError,
    MessageAssembler,
    ReceivedMessage,
    ReceivedPData,
    message_chunks,
    message_parts,
    received_primitive,
    release_parts,
)
from dimse_bridge.context import DimseContext
from dimse_bridge.reactor import LISTENED_PER_PDU, PromptDUL

log = logging.getLogger(__name__)
# pynetdicom's messages for the same events, under its loggers, as its reactors write them.
_ASSOCIATION_LOG = logging.getLogger("pynetdicom.association")
_DIMSE_LOG = logging.getLogger("pynetdicom.dimse")

_PDU_HEADER: Final = struct.Struct(">BxI")  # PDU type, reserved, PDU length (PS3.8 9.3.1)
A_RELEASE_RQ_TYPE: Final = 0x05
A_ABORT_TYPE: Final = 0x07
A_RELEASE_RP: Final = bytes((0x06, 0, 0, 0, 0, 4, 0, 0, 0, 0))  # PS3.8 9.3.7
# PS3.8 9.3.8 A-ABORT source: the service user (an abort we decide on) or the service provider (a protocol error).
ABORT_SOURCE_USER: Final = 0x00
ABORT_SOURCE_PROVIDER: Final = 0x02
# Events only pynetdicom's own reactors produce (each PDU, each read and write, each ACSE primitive, the close):
# an association with a listener to one of them keeps those reactors.
_REACTOR_EVENTS: Final = (
    *LISTENED_PER_PDU,
    evt.EVT_PDU_RECV,
    evt.EVT_DATA_RECV,
    evt.EVT_ACSE_RECV,
    evt.EVT_ACSE_SENT,
    evt.EVT_CONN_CLOSE,
)
_SERVED: Final = (StorageServiceClass, VerificationServiceClass)
# The handlers whose work the loop does instead (the same services, one path per job).
_OURS: Final = (
    (evt.EVT_C_STORE, handlers.handle_store),
    (evt.EVT_C_ECHO, handlers.handle_echo),
    (evt.EVT_C_GET, qr.handle_get),
)
ABORT_SECONDS: Final = 1.0  # how long an A-ABORT may wait for a peer that does not read
_DROP_CHUNK: Final = 64 * 1024


def a_abort(source: int) -> bytes:
    """An A-ABORT PDU (PS3.8 9.3.8), reason not specified (as pynetdicom sends its own)."""
    return bytes((A_ABORT_TYPE, 0, 0, 0, 0, 4, 0, 0, source, 0))


def handle_requested(event: Event, dimse: DimseContext, staging: Executor) -> None:
    """EVT_REQUESTED, after admission: have the loop serve the data phase of an association that qualifies;
    `staging` is where it writes large data sets to staged files."""
    assoc = event.assoc
    if (
        isinstance(assoc, AcceptorAssociation)
        and not (assoc.is_rejected or assoc.is_aborted)
        and qualifies(assoc)
    ):
        assoc.loop_phase = DataPhase(assoc, dimse, staging)
        dul = assoc.dul
        assert isinstance(dul, PromptDUL)  # every acceptor association has the prompt reactors (acceptor.py)
        dul.stop_after_accept = True


def qualifies(assoc: Any) -> bool:
    """Whether every SOP class the request proposes and this AE supports is Verification, storage or a
    Query/Retrieve GET model (getscu also proposes retired storage classes, which negotiation refuses), over
    plain TCP, answered by our own handlers, with nobody listening to events only pynetdicom's reactors produce
    and no SOP Class Common Extended Negotiation (which maps a SOP class to another service)."""
    sock = getattr(assoc.dul.socket, "socket", None)
    if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket):
        return False
    if any(assoc.get_handlers(event) for event in _REACTOR_EVENTS):
        return False
    if any(assoc.get_handlers(event)[0] is not handler for event, handler in _OURS):
        return False
    request = assoc.requestor.primitive
    if any(isinstance(item, SOPClassCommonExtendedNegotiation) for item in request.user_information):
        return False
    supported = {str(context.abstract_syntax) for context in assoc.acceptor.supported_contexts}
    proposed = {str(context.abstract_syntax) for context in request.presentation_context_definition_list}
    return all(
        uid in qr.GET_SOP_CLASSES or uid_to_service_class(uid) in _SERVED for uid in proposed & supported
    )


class DataPhase:
    """One association's data transfer phase on the loop, started and waited for by its own thread (`run`)."""

    def __init__(self, assoc: Any, dimse: DimseContext, staging: Executor) -> None:
        self.assoc = assoc
        self.dimse = dimse
        self.staging = staging
        self._lock = threading.Lock()
        self._aborted = False  # abort() was called
        self._storing = False  # a store is in progress: abort() lets it end and answer first
        self._released = False  # the A-RELEASE-RP has been sent
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._assembler = MessageAssembler()
        self._ready: deque[ReceivedMessage] = deque()  # messages received and not yet taken (`receive`)
        self._held: list[bytes] = []  # messages to send with the next write (`send`)

    def run(self) -> bool:
        """Serve the association on the loop until it ends; True if it was released, False if aborted."""
        try:
            future = self.dimse.bridge.submit(self._serve())
        except BridgeClosed:
            log.warning("association with %s aborted: the archive is shutting down", peer(self.assoc))
            self._abort_unserved()
            return False
        return future.result()  # `_serve` ends every way with an answer of its own

    def abort(self) -> None:
        """Abort from another thread (server shutdown): a store in progress ends and is answered first (its
        commit is never interrupted), then the A-ABORT goes; before the phase has begun, it begins with it."""
        with self._lock:
            self._aborted = True
            if self._loop is not None and self._task is not None and not self._storing:
                self._loop.call_soon_threadsafe(self._task.cancel)

    def _abort_unserved(self) -> None:
        """An A-ABORT written on pynetdicom's socket, for a phase that never had one of its own."""
        sock = getattr(self.assoc.dul.socket, "socket", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.settimeout(ABORT_SECONDS)
                sock.sendall(a_abort(ABORT_SOURCE_USER))

    async def _serve(self) -> bool:
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()
            aborted = self._aborted
        try:
            if aborted:
                self._abort_unserved()
                return False
            # A socket of our own on the same connection: the loop's transport closes it, pynetdicom its own.
            raw = self.assoc.dul.socket.socket
            own = socket.socket(raw.family, raw.type, raw.proto, os.dup(raw.fileno()))
            self._reader, self._writer = await asyncio.open_connection(sock=own)
            return await self._transfer()
        except asyncio.CancelledError:  # abort(): the server is stopping
            if self._released:
                return True  # only the wait for the peer's close was cut short
            if self._writer is None:
                self._abort_unserved()
            else:
                await self._end(self._writer, ABORT_SOURCE_USER)
            return False
        except OSError:  # the connection failed (reset, timed out by TCP): nothing more can be said on it
            return False
        except Exception:
            log.exception("association with %s aborted: its data transfer phase failed", peer(self.assoc))
            if self._writer is not None:
                await self._end(self._writer, ABORT_SOURCE_PROVIDER)
            return False
        finally:
            if self._writer is not None:
                self._writer.close()

    async def _end(self, writer: asyncio.StreamWriter, source: int) -> None:
        """Send an A-ABORT (PS3.8 9.3.8) before the connection is closed; a peer not reading is not waited for
        more than ABORT_SECONDS."""
        writer.write(a_abort(source))
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(ABORT_SECONDS):
                await writer.drain()

    async def abort_association(self, source: int = ABORT_SOURCE_PROVIDER) -> NoReturn:
        """Send an A-ABORT and end the association (the caller has logged why)."""
        assert self._writer is not None
        await self._end(self._writer, source)
        raise _Ended(released=False)

    async def _write(self, chunks: Iterable[bytes]) -> None:
        """Write what is held back (`send(..., now=False)`) and `chunks`, and wait while the peer is not reading,
        up to DIMSE_NETWORK_TIMEOUT (as the socket's send timeout bounds pynetdicom's writes, acceptor.py); the
        connection is cut when it has not read by then."""
        writer = self._writer
        assert writer is not None
        if self._held:
            chunks, self._held = [*self._held, *chunks], []
        writer.writelines(chunks)
        if not writer.transport.get_write_buffer_size():
            return  # all of it went to the socket at once
        try:
            async with asyncio.timeout(self.assoc.network_timeout):
                await writer.drain()
        except TimeoutError:
            log.warning(
                "connection from %s closed: it read nothing of what was sent for %s s (DIMSE_NETWORK_TIMEOUT)",
                peer(self.assoc),
                self.assoc.network_timeout,
            )
            raise _Ended(released=False) from None

    async def send(self, primitive: Any, context_id: int, *, now: bool = True) -> None:
        """Send one DIMSE message (PS3.7 6.3, fragmented into P-DATA-TF PDUs as PS3.8 E.2 says). With `now`
        False it is held back, to go in one write with the next message sent, or before the next read."""
        parts = message_parts(self.assoc, primitive, context_id)
        try:
            chunks = list(message_chunks(parts, context_id, self.assoc.dimse.maximum_pdu_size))
        finally:
            release_parts(parts)
        if now:
            await self._write(chunks)
        else:
            self._held.extend(chunks)

    async def receive(self, seconds: float | None) -> tuple[int, Any] | None:
        """The next DIMSE message, as (presentation context ID, pynetdicom's primitive); None for an
        A-RELEASE-RQ. TimeoutError when nothing arrives for `seconds`; the association ends (`_Ended`)
        on an A-ABORT, a closed connection or what cannot be read (then with an A-ABORT, PS3.8 9.2 Evt19)."""
        if self._held:
            await self._write(())
        while not self._ready:
            kind, body = await self._pdu(seconds)
            if kind == P_DATA_TF_TYPE:
                await self._p_data(body)
            elif kind == A_RELEASE_RQ_TYPE:
                return None
            elif kind == A_ABORT_TYPE:
                raise _Ended(released=False)
            else:
                log.warning(
                    "association with %s aborted: a PDU of type 0x%02X in the data transfer phase (PS3.8 9.2)",
                    peer(self.assoc),
                    kind,
                )
                await self.abort_association(ABORT_SOURCE_PROVIDER)
        message = self._ready.popleft()
        try:
            return message.context_id, received_primitive(self.assoc, message)
        except Exception as exc:
            _DIMSE_LOG.error("Received an invalid DIMSE message")
            _DIMSE_LOG.exception(exc)
            await self.abort_association(ABORT_SOURCE_PROVIDER)

    async def _pdu(self, seconds: float | None) -> tuple[int, bytes]:
        """One PDU's type and body. TimeoutError when none begins within `seconds`; a PDU over the limit, or
        one that stalls half-way, closes the connection."""
        assert self._reader is not None
        try:
            async with asyncio.timeout(seconds):
                head = await self._reader.readexactly(_PDU_HEADER.size)
        except asyncio.IncompleteReadError:
            raise _Ended(released=False) from None  # the peer closed the connection (AA-4)
        kind, length = _PDU_HEADER.unpack(head)
        limit = pdu_limit(self.assoc)
        if limit and length > limit:
            log_oversized_pdu(self.assoc, length, limit)
            raise _Ended(released=False)
        try:
            async with asyncio.timeout(self.assoc.network_timeout):
                return kind, await self._reader.readexactly(length)
        except TimeoutError:
            log_stalled_pdu(self.assoc)
            raise _Ended(released=False) from None
        except asyncio.IncompleteReadError:
            raise _Ended(released=False) from None

    async def _p_data(self, items: bytes) -> None:
        """Take the PDV items of a P-DATA-TF PDU; the messages they complete wait in `_ready`."""
        try:
            values = ReceivedPData(items, start=0).values
        except ValueError as exc:
            log.warning("association with %s aborted: %s", peer(self.assoc), exc)
            await self.abort_association(ABORT_SOURCE_PROVIDER)
        for context_id, data in values:
            try:
                message = self._assembler.feed(context_id, data)
            except CommandError as exc:
                _DIMSE_LOG.error("Received an invalid DIMSE message: %s", exc)
                await self.abort_association(ABORT_SOURCE_PROVIDER)
            if message is not None:
                self._ready.append(message)

    async def _transfer(self) -> bool:
        assoc = self.assoc
        try:
            while True:
                if self._aborted:  # abort() during the store just answered
                    await self.abort_association(ABORT_SOURCE_USER)
                try:
                    received = await self.receive(assoc.network_timeout)
                except TimeoutError:
                    _ASSOCIATION_LOG.error("Network timeout reached")
                    await self.abort_association(ABORT_SOURCE_USER)
                if received is None:  # A-RELEASE-RQ
                    await self._write((A_RELEASE_RP,))
                    self._released = True
                    assert self._reader is not None
                    await _until_closed(self._reader, assoc.acse_timeout)
                    return True
                await self._message(*received)
        except _Ended as ended:
            return ended.released

    async def _message(self, context_id: int, request: Any) -> None:
        """Answer one request, as pynetdicom's association reactor and service classes would."""
        assoc = self.assoc
        context = assoc._accepted_cx.get(context_id)
        if context is None:
            _ASSOCIATION_LOG.info(f"Received DIMSE message with invalid or rejected context ID: {context_id}")
            await self.abort_association(ABORT_SOURCE_USER)
        if isinstance(request, C_CANCEL):
            return  # no operation is outstanding here: a C-CANCEL is only seen during one (loop_get.py)
        if not request.is_valid_request:
            _ASSOCIATION_LOG.warning(f"Received unexpected {request.msg_type} service message")
            return
        abstract_syntax = str(context.abstract_syntax)
        response: Any
        if isinstance(request, C_STORE):
            response = handlers.foreign_sop_class(assoc, request, context_id, abstract_syntax)
            if response is None:
                answer = await self._store(request, str(context.transfer_syntax[0]))
                response = handlers.store_rsp(assoc, request, answer)
        elif isinstance(request, C_ECHO):
            event = Event(assoc, evt.EVT_C_ECHO, {"request": request, "context": context.as_tuple})
            response = handlers.echo_rsp(assoc, request, handlers.handle_echo(event, self.dimse))
        elif isinstance(request, C_GET) and abstract_syntax in qr.GET_SOP_CLASSES:
            await loop_get.serve(self, request, context)
            return
        else:
            log.warning(
                "association with %s aborted: a %s on presentation context %d (%s), which this association "
                "does not serve",
                peer(assoc),
                request.msg_type,
                context_id,
                context.abstract_syntax,
            )
            await self.abort_association(ABORT_SOURCE_USER)
        await self.send(response, context_id)

    async def _store(self, request: C_STORE, transfer_syntax: str) -> Dataset | int:
        with self._lock:
            self._storing = True
        try:
            # Shielded: an abort() that came just before the flag was set still lets the store end and answer.
            return await asyncio.shield(
                handlers.answer_store(self.dimse, request, transfer_syntax, self.assoc, self.staging)
            )
        except Exception as exc:  # as pynetdicom answers for a handler that raised (0xC211)
            _DIMSE_LOG.error("Exception in handler bound to 'evt.EVT_C_STORE'")
            _DIMSE_LOG.exception(exc)
            return 0xC211
        finally:
            with self._lock:
                self._storing = False


class _Ended(Exception):
    """The association has ended: its last PDU is sent or received, or the connection is gone."""

    def __init__(self, released: bool) -> None:
        super().__init__()
        self.released = released


async def _until_closed(reader: asyncio.StreamReader, seconds: float | None) -> None:
    """Sta13 (PS3.8 9.2, AR-4): the requestor closes the connection once it has the A-RELEASE-RP; whatever it
    sends meanwhile is read and dropped (AA-6), never held, and the wait ends after the ARTIM time at most."""
    with contextlib.suppress(TimeoutError, OSError):
        async with asyncio.timeout(seconds):
            while await reader.read(_DROP_CHUNK):
                pass
