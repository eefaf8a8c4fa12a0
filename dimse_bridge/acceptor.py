"""pynetdicom's association acceptor with our fixes, each in a small subclass (server.py builds the AE).

1. The association-request phase ends in DIMSE_ACSE_TIMEOUT, whatever the peer sends (PS3.8 9.1.5: the ARTIM
   timer bounds the wait for the A-ASSOCIATE-RQ; a partial PDU is no reason to wait longer).
   pynetdicom's DUL reactor reads a PDU with blocking `recv` calls on a socket without a timeout (Python's
   `accept()` gives the accepted socket none, whatever the listening socket has), and it checks its ARTIM timer
   only between reads. A peer that sends part of a PDU (the first 6 bytes of an A-ASSOCIATE-RQ, or a byte now
   and then) therefore holds the reactor in `recv` for good. The association thread gives up waiting for the
   A-ASSOCIATE-RQ after the ACSE timeout and calls `kill()`, which waits for the reactor to return to Sta1,
   which it never does: the thread stayed alive, and pynetdicom counted it as an association.
   `AcceptorAssociation.kill()` shuts the socket down first, so the blocked `recv` returns and the reactor
   closes the connection (Evt17). The TLS handshake is moved into the same phase (`AcceptorServer`): pynetdicom
   made it in the accept loop, where one silent TCP connection stopped every other peer from connecting.
2. No PDU longer than the peer may send is read (`AcceptorSocket`): pynetdicom reads as many bytes as a PDU
   header claims, so a header claiming 0xFFFFFFFF bytes had the server buffer whatever came (1.7 GB in the
   5 s of the ACSE timeout, from one connection). As DCMTK ("DUL Illegal PDU Length"), the connection is closed.
3. A C-STORE whose Affected SOP Class UID is not the abstract syntax of its presentation context is refused
   with 0x0122 "SOP Class not supported" and the association goes on. pynetdicom picks the service from that
   UID, not from the context, and aborts the association when the UID names no service it knows (DCMTK's
   dcmsend sends `31` for a data set whose SOP Class UID it cannot read); a storage UID other than the
   context's would otherwise reach the Storage SCP past the SOP class policy the context was negotiated under.
4. Every association has reactors that wait for their work instead of polling for it (reactor.py).
5. Association slots are counted by admission.handle_requested, not by pynetdicom, which counts every connection,
   also those that never send an A-ASSOCIATE-RQ (server.py).
6. The accept loop does not stop for a full garbage collection every 60 connections (`AcceptorServer`).
7. An association whose data transfer phase the event loop serves (data_phase.py) is only waited for by its
   thread, which then reports its release or abort; an abort of it goes to the loop (`AcceptorAssociation`).
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, Final, Protocol, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE, DimseServiceType
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from dimse_bridge import handlers
from dimse_bridge.reactor import PromptAE, PromptAssociation, make_prompt

log = logging.getLogger(__name__)
_ASSOCIATION_LOG = logging.getLogger("pynetdicom.association")  # where pynetdicom's reactor says the same

# The longest PDU read before an A-ASSOCIATE-RQ has arrived, and the least limit after it. PS3.8 sets none for
# the A-ASSOCIATE-RQ; 128 presentation contexts of 64-character UIDs with ten transfer syntaxes each, role and
# extended negotiation for each, and a User Identity of two 64 KiB fields stay under 300 KB.
MIN_PDU_LIMIT: Final = 1024 * 1024


class AcceptorAssociation(PromptAssociation):
    """An acceptor association that cannot be held open by a partial PDU nor aborted by a foreign C-STORE."""

    # Set in the association-request phase (data_phase.handle_requested) when the loop serves the data phase.
    loop_phase: LoopPhase | None = None
    # Set when the loop accepted the association too (loop_accept.py): it has no thread, this is set at its end,
    # and `loop_abort` aborts it on the loop while its data phase has not begun.
    loop_ended: threading.Event | None = None
    loop_abort: Callable[[], object] | None = None
    # Why the association-request phase rejected it (admission.py), for the observers; None: not rejected by us.
    rejected_because: str | None = None

    def kill(self) -> None:
        """End the association thread; first, if no A-ASSOCIATE-RQ ever arrived, end a read left half-way.

        pynetdicom calls this when it stops waiting for the A-ASSOCIATE-RQ (after the ACSE timeout), and on
        abort (server shutdown); in both cases a reactor blocked reading a partial PDU would keep it waiting.
        """
        if self.is_acceptor and self.requestor.primitive is None:
            sock = getattr(self.dul.socket, "socket", None)
            if sock is not None:
                log_unfinished_request(
                    (self.requestor.address, self.requestor.port), self.acse_timeout, _closed_by_peer(sock)
                )
                with contextlib.suppress(OSError):  # already closed by the peer or by the reactor
                    sock.shutdown(socket.SHUT_RDWR)
        super().kill()

    def _serve_request(self, msg: DimseServiceType, context_id: int) -> None:
        context = next((cx for cx in self.accepted_contexts if cx.context_id == context_id), None)
        if isinstance(msg, C_STORE) and msg.is_valid_request and context is not None:
            refusal = handlers.foreign_sop_class(self, msg, context_id, str(context.abstract_syntax))
            if refusal is not None:
                self.dimse.send_msg(refusal, context_id)
                return
        super()._serve_request(msg, context_id)

    def _run_reactor(self) -> None:
        """pynetdicom's reactor, or, for an association whose data transfer phase the loop serves
        (data_phase.py), a wait for that phase to end, then the same release or abort as the reactor's."""
        phase = self.loop_phase
        if phase is None:
            super()._run_reactor()
            return
        released = False
        try:
            self.dul.join()  # it stops reading once the A-ASSOCIATE-AC is sent (PromptDUL.stop_after_accept)
            released = phase.run()
        finally:
            self.end_loop_phase(released)

    def end_loop_phase(self, released: bool) -> None:
        """What pynetdicom's reactor does when an association ends, for one whose data phase the loop served."""
        self.is_established = False
        if released:
            _ASSOCIATION_LOG.info("Association Released")
            self.is_released = True
            evt.trigger(self, evt.EVT_RELEASED, {})
        else:
            _ASSOCIATION_LOG.info("Association Aborted")
            self.is_aborted = True
            evt.trigger(self, evt.EVT_ABORTED, {})
        self.kill()

    def is_alive(self) -> bool:
        """Whether the association is still running: its thread, or the loop's task (loop_accept.py)."""
        if self.loop_ended is not None:
            return not self.loop_ended.is_set()
        return super().is_alive()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the association to end: its thread, or the loop's task for one accepted there (loop_accept.py)."""
        if self.loop_ended is not None:
            self.loop_ended.wait(timeout)
        else:
            super().join(timeout)

    def _abort_blocking(self, block: bool = True) -> None:
        """pynetdicom's abort (negotiation binds it as the association's `abort`), or, for an association whose
        data phase the loop serves, the loop's: its A-ABORT goes once the store in progress has been answered
        (at once if the phase has not begun), and EVT_ABORTED once, when the association's thread or task ends
        it; one accepted on the loop whose phase has not begun has its task cancelled (`loop_abort`). Never waits
        for that: whoever must (DimseServer.stop) joins the association."""
        phase = self.loop_phase
        if phase is None and self.loop_abort is None:
            super()._abort_blocking(block)
            return
        if self._sent_abort or self.is_released:
            return
        self._sent_abort = True
        _ASSOCIATION_LOG.info("Aborting Association")
        if phase is not None:
            phase.abort()
        elif self.loop_abort is not None:
            self.loop_abort()


class LoopAcceptorLike(Protocol):
    """What the accept thread hands plain TCP connections to (loop_accept.LoopAcceptor)."""

    def take(self, request: socket.socket, client_address: Any) -> bool:
        """Take the connection to the loop; False when the loop cannot (the caller serves it)."""
        ...


class LoopPhase(Protocol):
    """The data transfer phase of one association, served on the event loop (data_phase.py)."""

    def run(self) -> bool:
        """Serve until the association ends (blocking the calling thread); True if it was released."""

    async def serve(self) -> bool:
        """The same, on the loop, for an association accepted there (loop_accept.py)."""

    def abort(self) -> None:
        """End it with an A-ABORT, from any thread."""


def _closed_by_peer(sock: socket.socket) -> bool:
    """True when the peer closed its side and nothing it sent is left unread (or the reactor, having read the
    end of the stream, closed the socket already)."""
    if sock.fileno() < 0:
        return True
    # Polled first: a socket with a timeout (AcceptorRequestHandler) waits that long in recv, MSG_DONTWAIT or not.
    readable = select.poll()
    readable.register(sock, select.POLLIN)
    try:
        if not readable.poll(0):
            return False
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (OSError, ValueError):  # a TLS socket, or closed meanwhile
        return False


def log_unfinished_request(address: tuple[str, int], acse_timeout: float | None, closed_by_peer: bool) -> None:
    """A connection that ended before its A-ASSOCIATE-RQ was complete. One that closed without a byte is a TCP
    probe (a load balancer's or an orchestrator's health check), not worth a warning; one that stopped half-way is."""
    log.log(
        logging.INFO if closed_by_peer else logging.WARNING,
        "connection from %s:%s closed before its A-ASSOCIATE-RQ was complete (DIMSE_ACSE_TIMEOUT=%s)",
        address[0],
        address[1],
        acse_timeout,
    )


def pdu_limit(assoc: Any) -> int:
    """The longest PDU the peer may send now (0: no limit). After the A-ASSOCIATE-RQ, the Maximum Length we
    announced (PS3.8 D.1, DIMSE_MAX_PDU; 0 is none) or MIN_PDU_LIMIT, whichever is more; before it, MIN_PDU_LIMIT."""
    if assoc.requestor.primitive is None:
        return MIN_PDU_LIMIT
    announced = int(assoc.acceptor.maximum_length or 0)
    return max(announced, MIN_PDU_LIMIT) if announced else 0


def log_stalled_pdu(assoc: Any) -> None:
    log.warning(
        "connection from %s:%s closed: nothing more of a PDU for %s s (DIMSE_NETWORK_TIMEOUT)",
        assoc.requestor.address,
        assoc.requestor.port,
        assoc.network_timeout,
    )


def log_oversized_pdu(assoc: Any, length: int, limit: int) -> None:
    log.warning(
        "connection from %s:%s closed: a PDU of %d bytes, more than the %d it may send",
        assoc.requestor.address,
        assoc.requestor.port,
        length,
        limit,
    )


# The most one `recv` asks for: a PDU may claim up to DIMSE_MAX_PDU (or MIN_PDU_LIMIT before the association).
_READ_CHUNK: Final = 256 * 1024


class AcceptorSocket(AssociationSocket):
    """An association's socket that will not read a PDU longer than the peer may send, and that first gives
    back what the loop read of the connection before handing it over (`replay`, loop_accept.py)."""

    replay = b""

    @property
    def ready(self) -> bool:
        return bool(self.replay) or bool(super().ready)

    def recv(self, nr_bytes: int) -> bytearray:
        """pynetdicom's read of `nr_bytes`, but for more than the limit the connection is closed instead.

        The DUL reactor asks for the 6 bytes of a PDU header, then for as many as its length field claims
        (`pdu_limit`). The reactor sees a short read and ends the association (Evt17).
        """
        assoc = self.assoc
        limit = pdu_limit(assoc)
        if not limit or nr_bytes <= limit:
            try:
                return self._read(nr_bytes)
            except TimeoutError:
                # The socket's timeout (AcceptorRequestHandler): a peer that stopped in the middle of a PDU.
                log_stalled_pdu(assoc)
                self.close()
                return bytearray()
        log_oversized_pdu(assoc, nr_bytes, limit)
        self.close()
        return bytearray()


    def _read(self, nr_bytes: int) -> bytearray:
        """pynetdicom's read (all `nr_bytes`, or what came before the peer closed), in as few `recv` calls as
        the bytes already arrived allow: pynetdicom reads 4096 bytes per call, ten calls and ten copies for a
        39 KB data set sent in one PDU (we let peers send PDUs of up to DIMSE_MAX_PDU). Memory grows with what
        arrives, not with what the header claims."""
        sock = cast(socket.socket, self.socket)
        buffer = bytearray(self.replay[:nr_bytes])
        self.replay = self.replay[nr_bytes:]
        while len(buffer) < nr_bytes:
            chunk = sock.recv(min(nr_bytes - len(buffer), _READ_CHUNK))
            if not chunk:
                break
            buffer += chunk
        return buffer


class AcceptorRequestHandler(RequestHandler):
    """pynetdicom's handler of an accepted connection, building an AcceptorAssociation and an AcceptorSocket."""

    def _create_association(self) -> Association:
        replay = cast(AcceptorServer, self.server).replays.pop(self.request, b"")  # first: nothing may keep it
        assoc = super()._create_association()
        # pynetdicom has no hook for the classes it builds; ours add methods (and the reactors' wake-up pair).
        make_prompt(assoc, AcceptorAssociation)
        accepted = cast(AcceptorSocket, assoc.dul.socket)
        accepted.__class__ = AcceptorSocket
        accepted.replay = replay
        # The reactor reads a PDU, and writes one, with blocking calls on a socket Python's accept() gave no
        # timeout: a peer that stops half-way through a PDU, or stops reading what we send, would hold the
        # association thread (and its slot, and the server's shutdown) for good. DIMSE_NETWORK_TIMEOUT bounds
        # every such wait; pynetdicom turns a failed send into a closed connection (Evt17), recv above too.
        sock = getattr(assoc.dul.socket, "socket", None)
        if sock is not None and self.ae.network_timeout is not None:
            sock.settimeout(self.ae.network_timeout)
        return assoc


class AcceptorServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, leaving the TLS handshake to the association's own thread."""

    # socketserver listens with a backlog of 5: a burst of connections (a hostile one, or many modalities at
    # once) made every further peer's connect wait for a SYN retransmission, a second or more.
    request_queue_size = socket.SOMAXCONN
    # Takes plain TCP connections to the event loop (loop_accept.py), when the DIMSE server has set one.
    loop_acceptor: LoopAcceptorLike | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Bytes the loop read of a connection it handed back, for that connection's AcceptorSocket.
        self.replays: dict[socket.socket, bytes] = {}

    def process_request(self, request: Any, client_address: Any) -> None:
        """A plain TCP connection goes to the loop, which accepts there what it serves and hands the rest back
        (`serve_in_thread`); a TLS one, or any when no loop takes them, gets pynetdicom's thread at once."""
        acceptor = self.loop_acceptor
        if acceptor is None or isinstance(request, ssl.SSLSocket) or not acceptor.take(request, client_address):
            super().process_request(request, client_address)

    def serve_in_thread(self, request: socket.socket, client_address: Any, replay: bytes) -> None:
        """pynetdicom's thread for a connection the loop began reading: `replay` is what it read."""
        request.setblocking(True)
        if replay:
            self.replays[request] = replay
        super().process_request(request, client_address)

    def service_actions(self) -> None:
        """Nothing. pynetdicom's runs a full `gc.collect()` every 60th turn of the accept loop (after every
        connection, and every half second when idle), for association threads it found uncollected; CPython's
        own collector frees those cycles anyway. In this process (the web app, pydicom, the archive) a full
        collection took ~65 ms with the GIL held: ~1 ms per association, and a 65 ms stall for every other
        association and HTTP request each time (py-spy over 60 getscu associations)."""

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept a connection, wrapping it for TLS without the handshake.

        The handshake is made by the first read of the association's reactor, within the association-request
        phase and its timeout; made here (pynetdicom's default) it blocked the accept loop, for every peer, as
        long as one connection sent nothing.
        """
        listening = cast(socket.socket, self.socket)
        client, address = listening.accept()
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address


class AcceptorAE(PromptAE):
    """pynetdicom's AE, whose `start_server` serves with AcceptorServer and AcceptorRequestHandler, and whose
    own associations (to C-MOVE destinations) have the prompt reactors (reactor.py)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Associations accepted on the loop (loop_accept.py), which have no thread for pynetdicom to count.
        self.loop_associations: set[Association] = set()

    @property
    def active_associations(self) -> list[Association]:
        """pynetdicom's (its association threads), and those accepted on the loop: the association limits and
        the shutdown see both."""
        return [*super().active_associations, *list(self.loop_associations)]

    def make_server(self, *args: Any, **kwargs: Any) -> Any:
        # start_server asks for a ThreadedAssociationServer; AcceptorServer is one. Extra keyword arguments go
        # to the server's constructor (pynetdicom's documented way to use a server class of one's own).
        kwargs.update(server_class=AcceptorServer, request_handler=AcceptorRequestHandler)
        return super().make_server(*args, **kwargs)
