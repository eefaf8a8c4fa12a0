"""The data transfer phase of Storage, Verification and Query/Retrieve associations, served on the event loop.

pynetdicom serves each association with two threads: its DUL reactor reads PDUs and runs the state machine, its
association reactor takes the DIMSE messages from a queue and calls our handler, which hands the store to the
event loop (bridge.py) and waits. Each C-STORE crossed three threads and four hand-offs before ingest began, and
as many back with the answer: with storescu on one association, 1.5-1.7 ms of every instance went between one
handler's end and the next one's start (0.8-1.0 ms here), and pynetdicom's two reactors took ~15 % of the
server's CPU (py-spy).

An association that proposes only Verification and storage SOP classes (a modality, storescu, dcmsend, a PACS
forwarding) has nothing in its data phase but C-STORE and C-ECHO requests to answer one at a time, so the loop
serves it: it reads the PDUs, reassembles each message (commands.py), awaits the same store coroutine the
thread door hands to the bridge (handlers.py) and writes the response itself. One that also proposes the
Query/Retrieve models (findscu, getscu, movescu, a viewer) is served the same way: a C-FIND's matches go out as
they are read (loop_find.py), a C-GET's sub-operations go out and their responses come in on this same
connection, a C-MOVE's on an association the loop opens to its destination (loop_retrieve.py, loop_scu.py),
since no asynchronous operations window is negotiated and one operation at a time is outstanding; link.py reads
and writes the PDUs. Before it, such an association is accepted on the loop as well (loop_accept.py: the
A-ASSOCIATE-RQ read there, admission (admission.py) and pynetdicom's negotiation run there, the A-ASSOCIATE-AC
written there), and this phase is awaited there (`serve`); at its end the association reports the release or
abort as pynetdicom's reactor does (`AcceptorAssociation.end_loop_phase`: EVT_RELEASED, EVT_ABORTED, the audit
records). One the loop leaves to pynetdicom's threads to accept (a User Identity, a request above
acse_pdus.CACHED_BYTES) still has this phase: its DUL reactor stops once it has written the A-ASSOCIATE-AC
(`PromptDUL.stop_after_accept`, so nothing else reads the socket) and its association thread waits for the
phase to end (`run`).

Any other association keeps pynetdicom's reactors: one offering Storage Commitment or a workflow service
(Modality Worklist and UPS C-FIND included), or one over TLS, or one with a listener to an event only those
reactors produce (pynetdicom's DEBUG log listens to every PDU).

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
import dataclasses
import functools
import logging
import os
import socket
import ssl
import threading
from concurrent.futures import Executor
from typing import Any, Final

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_CANCEL, C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import SOPClassCommonExtendedNegotiation
from pynetdicom.service_class import StorageServiceClass, VerificationServiceClass
from pynetdicom.sop_class import uid_to_service_class

from dimse_bridge import dispatch, handlers, loop_find, loop_retrieve, qr
from dimse_bridge.acceptor import AcceptorAssociation, pdu_limit
from dimse_bridge.access import peer
from dimse_bridge.bridge import BridgeClosed
from dimse_bridge.context import DimseContext
from dimse_bridge.link import (
    A_RELEASE_RP,
    ABORT_SECONDS,
    ABORT_SOURCE_PROVIDER,
    ABORT_SOURCE_USER,
    Ended,
    Link,
    a_abort,
    until_closed,
)
from dimse_bridge.negotiation import ByRequest, supported_syntaxes
from dimse_bridge.reactor import LISTENED_PER_PDU, PromptDUL

log = logging.getLogger(__name__)
# pynetdicom's messages for the same events, under its loggers, as its reactors write them.
_ASSOCIATION_LOG = logging.getLogger("pynetdicom.association")
_DIMSE_LOG = logging.getLogger("pynetdicom.dimse")

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
    (evt.EVT_C_FIND, dispatch.handle_find),
    (evt.EVT_C_GET, qr.handle_get),
    (evt.EVT_C_MOVE, qr.handle_move),
)
# Query/Retrieve models the loop serves (besides Verification and storage).
_LOOP_MODELS: Final = frozenset((*qr.FIND_SOP_CLASSES, *qr.GET_SOP_CLASSES, *qr.MOVE_SOP_CLASSES))


@dataclasses.dataclass(frozen=True)
class Pools:
    """The threads the loop's associations hand blocking file work to: their own, so that neither kind of work
    can take every thread of the loop's default executor (file reads, auth), nor of the other kind."""

    staging: Executor  # large data sets received, written to staged files
    reading: Executor  # stored files read for C-GET and C-MOVE sub-operations


def handle_requested(event: Event, dimse: DimseContext, pools: Pools) -> None:
    """EVT_REQUESTED, after admission: have the loop serve the data phase of an association that qualifies."""
    assoc = event.assoc
    if (
        isinstance(assoc, AcceptorAssociation)
        and not (assoc.is_rejected or assoc.is_aborted)
        and qualifies(assoc)
    ):
        assoc.loop_phase = DataPhase(assoc, dimse, pools)
        dul = assoc.dul
        assert isinstance(dul, PromptDUL)  # every acceptor association has the prompt reactors (acceptor.py)
        dul.stop_after_accept = True


def qualifies(assoc: Any) -> bool:
    """Whether every SOP class the request proposes and this AE supports is Verification, storage or a
    Query/Retrieve model (getscu also proposes retired storage classes, which negotiation refuses), over
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
    contexts = request.presentation_context_definition_list
    proposed = _PROPOSED.get(contexts, lambda: frozenset(str(context.abstract_syntax) for context in contexts))
    return all(map(_loop_serves, proposed & supported_syntaxes(assoc.acceptor.supported_contexts)))


_PROPOSED: Final[ByRequest[frozenset[str]]] = ByRequest()


@functools.lru_cache(maxsize=4096)
def _loop_serves(sop_class_uid: str) -> bool:
    """Whether the loop serves the SOP class (asked for every class of every association: a peer proposes the same)."""
    return sop_class_uid in _LOOP_MODELS or uid_to_service_class(sop_class_uid) in _SERVED


class DataPhase:
    """One association's data transfer phase on the loop, started and waited for by its own thread (`run`)."""

    def __init__(self, assoc: Any, dimse: DimseContext, pools: Pools) -> None:
        self.assoc = assoc
        self.dimse = dimse
        self.staging = pools.staging
        self.reading = pools.reading
        self._lock = threading.Lock()
        self._aborted = False  # abort() was called
        self._storing = False  # a store is in progress: abort() lets it end and answer first
        self._released = False  # the A-RELEASE-RP has been sent
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._link: Link | None = None

    @property
    def link(self) -> Link:
        assert self._link is not None, "the phase has not begun"
        return self._link

    def run(self) -> bool:
        """Serve the association on the loop until it ends; True if it was released, False if aborted."""
        try:
            future = self.dimse.bridge.submit(self.serve())
        except BridgeClosed:
            log.warning("association with %s aborted: the archive is shutting down", peer(self.assoc))
            self._abort_unserved()
            return False
        return future.result()  # `serve` ends every way with an answer of its own

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

    async def serve(self) -> bool:
        """The data phase, run on the loop until the association ends; True if it was released."""
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()
            aborted = self._aborted
        try:
            if aborted:
                self._abort_unserved()
                return False
            # A socket of our own on the same connection: the loop's transport closes it, pynetdicom its own.
            assoc = self.assoc
            raw = assoc.dul.socket.socket
            own = socket.socket(raw.family, raw.type, raw.proto, os.dup(raw.fileno()))
            reader, writer = await asyncio.open_connection(sock=own)
            self._link = Link(
                reader,
                writer,
                events=assoc,
                connection=f"connection from {assoc.requestor.address}:{assoc.requestor.port}",
                association=f"association with {peer(assoc)}",
                limit=pdu_limit(assoc),
                max_pdu=assoc.dimse.maximum_pdu_size,
                network_timeout=assoc.network_timeout,
            )
            return await self._transfer(self._link)
        except asyncio.CancelledError:  # abort(): the server is stopping
            if self._released:
                return True  # only the wait for the peer's close was cut short
            if self._link is None:
                self._abort_unserved()
            else:
                await self._link.end(ABORT_SOURCE_USER)
            return False
        except OSError:  # the connection failed (reset, timed out by TCP): nothing more can be said on it
            return False
        except Exception:
            log.exception("association with %s aborted: its data transfer phase failed", peer(self.assoc))
            if self._link is not None:
                await self._link.end(ABORT_SOURCE_PROVIDER)
            return False
        finally:
            if self._link is not None:
                self._link.close()

    async def _transfer(self, link: Link) -> bool:
        try:
            while True:
                if self._aborted:  # abort() during the store just answered
                    await link.abort(ABORT_SOURCE_USER)
                try:
                    received = await link.receive(self.assoc.network_timeout)
                except TimeoutError:
                    _ASSOCIATION_LOG.error("Network timeout reached")
                    await link.abort(ABORT_SOURCE_USER)
                if received is None:  # A-RELEASE-RQ
                    await link.write((A_RELEASE_RP,))
                    self._released = True
                    await until_closed(link.reader.read, self.assoc.acse_timeout)
                    return True
                await self._message(link, *received)
        except Ended as ended:
            return ended.released

    async def _message(self, link: Link, context_id: int, request: Any) -> None:
        """Answer one request, as pynetdicom's association reactor and service classes would."""
        assoc = self.assoc
        context = assoc._accepted_cx.get(context_id)
        if context is None:
            _ASSOCIATION_LOG.info(f"Received DIMSE message with invalid or rejected context ID: {context_id}")
            await link.abort(ABORT_SOURCE_USER)
        if isinstance(request, C_CANCEL):
            return  # no operation is outstanding here: a C-CANCEL is only seen during one (link.py)
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
            await loop_retrieve.serve_get(self, request, context)
            return
        elif isinstance(request, C_MOVE) and abstract_syntax in qr.MOVE_SOP_CLASSES:
            await loop_retrieve.serve_move(self, request, context)
            return
        elif isinstance(request, C_FIND) and abstract_syntax in qr.FIND_SOP_CLASSES:
            await loop_find.serve(self, request, context)
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
            await link.abort(ABORT_SOURCE_USER)
        await link.send(response, context_id)

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
