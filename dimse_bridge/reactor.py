"""Reactors that wait for their work instead of polling for it: pynetdicom's loops with the sleeps taken out.

pynetdicom runs two loops per association, each in its own thread, and both poll. The DUL reactor (dul.py)
sleeps 1 ms whenever a turn found nothing to do, before it looks at its socket and at the primitives queued
for it; the association reactor (association.py) sleeps 1 ms at the top of every turn before it looks for a
DIMSE message. A C-STORE sub-operation crosses the DUL reactor three times (the request out, the response in,
the pending C-GET response out) and an incoming C-STORE crosses both reactors, so each instance waited about
half a millisecond per crossing for no reason but the sleep, while the server's CPU sat idle (py-spy over a
C-GET run: most samples in `time.sleep` and queue waits).

Here the DUL reactor waits in `select` on its socket and on a wake-up socket pair, which `send_pdu` (called
from the threads that queue primitives) writes to; the association reactor waits on its DIMSE message queue,
whose condition the DUL reactor also notifies after every state change (a release or abort request).
Both wake at once when there is work, and otherwise at most every `TIMER_PERIOD` to check the ARTIM and idle
timers and to be stopped, so an idle association costs less CPU than pynetdicom's 1000 turns a second. The
state machine, the PDU and DIMSE codecs and every event are pynetdicom's own: each loop below is pynetdicom's
(3.0) line for line but for the wait.

Both also send and receive DIMSE command sets as bytes (commands.py).

`make_prompt(assoc)` is applied to an association before its threads start: by the acceptor
(acceptor.py) to the associations it accepts, and by `PromptAE` to the ones it requests (C-MOVE destinations,
the SCU).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import ssl
import threading
from collections.abc import Iterable
from typing import Any, Final

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RQ
from pynetdicom.utils import make_target

from dimse_bridge.acse_pdus import A_ASSOCIATE_RQ_TYPE, association_request
from dimse_bridge.commands import P_DATA_TF_TYPE, FastDIMSE, ReceivedPData

# How long a reactor with nothing to do waits before it looks at its timers again (the ARTIM timer of PS3.8
# 9.1.5 and the network idle timeout are seconds long, so 20 ms is precision enough).
TIMER_PERIOD: Final = 0.02

# Events whose listeners are handed each PDU, or each write, by the DUL's own path (PromptDUL.write_direct).
LISTENED_PER_PDU: Final = (evt.EVT_PDU_SENT, evt.EVT_FSM_TRANSITION, evt.EVT_DATA_SENT)

# These loops' messages are pynetdicom's, under the loggers of the modules they come from.
_DUL_LOG = logging.getLogger("pynetdicom.dul")
_LOG = logging.getLogger("pynetdicom.association")


class PromptDUL(DULServiceProvider):
    """pynetdicom's DUL reactor, waiting on its socket and on `send_pdu` instead of sleeping."""

    _wake_read: socket.socket
    _wake_write: socket.socket

    to_provider_queue: ProviderQueue
    _write_lock: threading.Lock
    # Set before the association is accepted when the event loop is to serve its data transfer phase
    # (data_phase.py): the reactor then ends once it has sent the A-ASSOCIATE-AC, and reads nothing more.
    stop_after_accept = False

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        self._wake()

    def write_direct(self, pdus: Iterable[bytes]) -> bool:
        """Write P-DATA-TF PDUs to the socket from the caller's thread; False, with nothing written, unless the
        association is in Sta6 (data transfer, PS3.8 9.2) and every primitive queued before has been sent.

        The DUL's own path for a P-DATA primitive (queue, wake its thread, state machine action DT-1, one PDU
        object each) cost a thread hand-off and ~60 us per PDU: a C-GET sub-operation of a 39 KB instance is
        four PDUs out and a pending C-GET-RSP a fifth. In Sta6 that action only writes the PDU and stays in Sta6,
        so writing it here is the same protocol. Order is kept: nothing is written while a queued primitive is
        unsent, and the write lock, taken before the queue is let go, makes the DUL thread's next write (a
        release or abort queued meanwhile) wait for this one; a lock already held (another thread writing) sends
        this message the queued way. Listeners to EVT_PDU_SENT, EVT_FSM_TRANSITION or EVT_DATA_SENT (pynetdicom's
        DEBUG log) get the DUL's path, which hands them its PDU objects. A TLS connection does too: OpenSSL does
        not allow one connection to be written by one thread while another (the DUL's) reads it.
        """
        queued = self.to_provider_queue
        raw = getattr(self.socket, "socket", None)
        if raw is None or isinstance(raw, ssl.SSLSocket) or any(
            self.assoc.get_handlers(event) for event in LISTENED_PER_PDU
        ):
            return False
        with queued.mutex:
            if queued.unfinished_tasks or self._kill_thread or self.state_machine.current_state != "Sta6":
                return False
            if not self._write_lock.acquire(blocking=False):
                return False
        try:
            for pdu in pdus:
                raw.sendall(pdu)
        except OSError:
            self.event_queue.put("Evt17")  # as pynetdicom's own write: the connection is closed (PS3.8 9.2)
        finally:
            self._write_lock.release()
        return True

    def _send(self, pdu: Any) -> None:
        with self._write_lock:
            super()._send(pdu)

    def stop_dul(self) -> bool:
        """pynetdicom's: stop the reactor if the state is Sta1 (idle) and wait for its thread to end; here the
        reactor is woken to see it, and joined, instead of polled every millisecond while it slept in `_wait`
        for up to TIMER_PERIOD."""
        if self.state_machine.current_state != "Sta1":
            return False
        self._kill_thread = True
        self._wake()
        if threading.current_thread() is not self:
            self.join()
        return True

    def kill_dul(self) -> None:
        super().kill_dul()
        self._wake()

    def _decode_pdu(self, bytestream: bytearray) -> tuple[Any, str]:
        """pynetdicom's, but an A-ASSOCIATE-RQ seen before is not decoded again (acse_pdus.py), and a P-DATA-TF
        is read into its values only (commands.ReceivedPData) unless someone listens for pynetdicom's PDU object
        (EVT_PDU_RECV, its DEBUG log)."""
        kind = bytestream[0] if bytestream else None
        if kind == P_DATA_TF_TYPE and not self.assoc.get_handlers(evt.EVT_PDU_RECV):
            data = bytes(bytestream)
            evt.trigger(self.assoc, evt.EVT_DATA_RECV, {"data": data})
            return ReceivedPData(data), "Evt10"  # PS3.8 9.2.1: P-DATA-TF PDU received
        if kind != A_ASSOCIATE_RQ_TYPE:
            return super()._decode_pdu(bytestream)
        data = bytes(bytestream)
        evt.trigger(self.assoc, evt.EVT_DATA_RECV, {"data": data})
        pdu: A_ASSOCIATE_RQ = association_request(data)
        evt.trigger(self.assoc, evt.EVT_PDU_RECV, {"pdu": pdu})
        return pdu, "Evt6"  # PS3.8 9.2.1: A-ASSOCIATE-RQ PDU received

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (the reactor will look anyway) or closed (it has ended)
            self._wake_write.send(b"\0")

    def _wait(self) -> None:
        """Until the peer sent something, a primitive was queued, or TIMER_PERIOD passed."""
        sock = getattr(self.socket, "socket", None)
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return  # decrypted bytes already buffered: poll would not see them
        if getattr(self.socket, "replay", b""):
            return  # bytes the loop read before handing the connection over (acceptor.AcceptorSocket)
        # poll, not select: select cannot watch a descriptor numbered 1024 or more, and a busy server has those.
        waiting = select.poll()
        waiting.register(self._wake_read, select.POLLIN)
        if sock is not None and sock.fileno() >= 0:
            waiting.register(sock, select.POLLIN)
        try:
            waiting.poll(TIMER_PERIOD * 1000)
        except (OSError, ValueError):  # the socket closed under us: the next turn sees it
            return
        with contextlib.suppress(OSError):  # nothing to drain (BlockingIOError), or closed
            self._wake_read.recv(4096)

    def run_reactor(self) -> None:
        """pynetdicom's `DULServiceProvider.run_reactor`, with `time.sleep(self._run_loop_delay)` replaced by
        `self._wait()`."""
        try:
            self._run()
        finally:
            self._wake_read.close()
            self._wake_write.close()

    def _run(self) -> None:
        self._idle_timer.start()
        idle = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
            if idle:
                self._wait()
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                # As pynetdicom: bypass the state machine, send an A-ABORT and stop both reactors.
                _DUL_LOG.exception("Exception in DUL.run(), aborting association: %s", exc)
                abort = A_ABORT_RQ()
                abort.source = 0x02
                abort.reason_diagnostic = 0x00
                assert self.socket is not None
                with self._write_lock:
                    self.socket.send(abort.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                idle = True
                continue
            self.state_machine.do_action(event)
            self.to_provider_queue.sent()
            self._nudge_association()
            idle = False
            if self.stop_after_accept and self.state_machine.current_state == "Sta6":
                break

    def _nudge_association(self) -> None:
        """Wake the association reactor after every state change, unconditionally: DIMSE messages reach its
        queue only inside `do_action`, and a release or abort request from the peer comes as an ACSE primitive,
        which no put on that queue announces."""
        messages = self.assoc.dimse.msg_queue
        with messages.not_empty:
            messages.not_empty.notify_all()


class ProviderQueue(queue.Queue[Any]):
    """The DUL's queue of primitives to send, which knows whether one put in it is still unsent: each taken by
    the state machine is done once the action that took it has ended (`sent`), so `unfinished_tasks` counts
    the primitives not yet written (PromptDUL.write_direct)."""

    taken = 0

    def _get(self) -> Any:  # under self.mutex, as Queue calls it
        self.taken += 1
        return super()._get()

    def sent(self) -> None:
        """Called by the DUL's thread after each state machine action."""
        with self.mutex:
            taken, self.taken = self.taken, 0
        for _ in range(taken):
            self.task_done()


class PromptAssociation(Association):
    """pynetdicom's association whose reactor waits on its DIMSE message queue instead of sleeping."""

    def kill(self) -> None:
        """pynetdicom's `Association.kill`, waiting for the DUL to reach Sta1 on the condition its reactor
        notifies after every state change (`_nudge_association`) instead of in 10 ms sleeps.

        A release ends here, after the A-RELEASE-RP came and before the DUL's action that received it has moved
        to Sta1: pynetdicom's loop nearly always slept 10 ms, then waited up to TIMER_PERIOD for the sleeping
        reactor to notice it should stop. For a C-MOVE that is on the requestor's path, once per destination
        association: py-spy put a third of a per-study movescu's time in it.
        """
        self._reactor_checkpoint.set()
        self._kill = True
        self.is_established = False
        self._is_paused = True
        dul = self.dul
        changed = self.dimse.msg_queue.not_empty
        while dul.is_alive() and not dul.stop_dul():
            with changed:
                if dul.state_machine.current_state != "Sta1" and dul.is_alive():
                    changed.wait(TIMER_PERIOD)

    def _run_reactor(self) -> None:
        """pynetdicom's `Association._run_reactor`, with `time.sleep(0.001)` and the non-blocking read of the
        next DIMSE message replaced by a read that waits up to TIMER_PERIOD."""
        self._is_paused = False
        while not self._kill:
            # Paused while it waits: a send_* method on another thread (a Storage Commitment report on this
            # association) clears the checkpoint, sees the reactor paused, and reads its answers itself.
            self._is_paused = True
            self._await_message()
            self._reactor_checkpoint.wait()
            self._is_paused = False
            if not self._reactor_checkpoint.is_set():
                # Paused again between the two lines above by a sender that saw `_is_paused` still True: its
                # answer is its own to read. (pynetdicom's loop has the same window; it crosses it a thousand
                # times a second while idle, this one at every state change, so a C-MOVE sub-association's
                # C-STORE-RSP was taken here now and then, and the sub-operation waited out the DIMSE timeout.)
                continue
            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, int(context_id))  # type: ignore[arg-type]
            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                _LOG.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return
            if self.acse.is_aborted():
                _LOG.info("Association Aborted" + (" (A-P-ABORT)" if self.acse.is_aborted("a-p-abort") else ""))
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return
            if not self.dul.is_alive():
                self.kill()
                return
            if self.dul.idle_timer_expired():
                _LOG.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


    def _await_message(self) -> None:
        """Until a DIMSE message is queued for this association, or TIMER_PERIOD passed; takes nothing."""
        messages = self.dimse.msg_queue
        with messages.not_empty:
            if not messages._qsize():
                messages.not_empty.wait(TIMER_PERIOD)


def make_prompt(assoc: Association, kind: type[Association] = PromptAssociation) -> None:
    """Give `assoc` (not yet started) the prompt reactors: its class becomes `kind`, its DUL a PromptDUL.

    pynetdicom has no hook for the classes it builds; these add methods and the DUL's wake-up socket pair. The
    DUL's thread target was bound at construction, so it is bound again to the new class's reactor.
    """
    assoc.__class__ = kind
    dul = assoc.dul
    dul.__class__ = PromptDUL
    assert isinstance(dul, PromptDUL)
    dul._wake_read, dul._wake_write = socket.socketpair()
    dul.to_provider_queue = ProviderQueue()  # empty: the association's threads have not started
    dul._write_lock = threading.Lock()
    dul._wake_read.setblocking(False)
    dul._wake_write.setblocking(False)
    dul._target = make_target(dul.run_reactor)  # type: ignore[attr-defined]
    assoc.dimse.__class__ = FastDIMSE


class PromptAE(AE):
    """pynetdicom's AE whose requested associations (C-MOVE destinations, the SCU) have the prompt reactors."""

    def _create_socket(self, assoc: Association, *args: Any, **kwargs: Any) -> Any:
        # Called by `associate` after the association is built and before its DUL starts.
        make_prompt(assoc)
        return super()._create_socket(assoc, *args, **kwargs)
