"""The DIMSE door: a pynetdicom AE serving the archive context the HTTP door serves, in the same process.

Started by the FastAPI lifespan once the archive context is open, with the running loop, and stopped before
the context closes (app/main.py). Stores arriving here go through the same IngestService as STOW-RS, so an
instance sent by C-STORE is visible to QIDO-RS as soon as the C-STORE-RSP leaves.

What is configured here, from Settings:
* presentation contexts from policy.py (Verification always; storage per DIMSE_SOP_CLASS_POLICY and
  DIMSE_TRANSFER_SYNTAX_POLICY);
* timeouts: ACSE (also the ARTIM timer, PS3.8 9.1.5, which acceptor.py makes bound the whole association-request
  phase), DIMSE, network (idle) and outgoing connection;
* the maximum PDU we receive (PS3.8 D.1): DIMSE_MAX_PDU;
* access control and the association limits (access.py), enforced by our EVT_REQUESTED handler (admission.py), which logs why;
  pynetdicom's own AE title checks stay on as well, its association count does not (see build_ae);
* TLS (PS3.15 B.1 / BCP 195): a server certificate, and client certificates required when a CA is given.

pynetdicom logs every DIMSE message at INFO; that is one log line per instance under load, so its logger is
set to WARNING unless this package logs at DEBUG or the operator configured the `pynetdicom` logger already,
and its per-message DEBUG handlers are not bound unless that logger shows DEBUG.
Its ERROR for an unknown C-MOVE destination is dropped: qr.py logs that refusal as the WARNING it is.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

from pynetdicom import AE, _config, evt

from app.config import Settings
from app.context import ArchiveContext
from app.core.workflow.records import (
    MPPS_SOP_CLASS,
    MWL_FIND,
    UPS_EVENT,
    UPS_PULL,
    UPS_PUSH,
    UPS_QUERY,
    UPS_WATCH,
)
from dimse_bridge import (
    access,
    acse_pdus,
    admission,
    commitment,
    data_phase,
    dispatch,
    handlers,
    negotiation,
    qr,
    scu,
    uids,
)
from dimse_bridge.acceptor import AcceptorAE
from dimse_bridge.access import AccessPolicy
from dimse_bridge.bridge import LoopBridge
from dimse_bridge.context import DimseContext
from dimse_bridge.loop_accept import LoopAcceptor
from dimse_bridge.negotiation import SharedContexts
from dimse_bridge.policy import PresentationPolicy, build_policy
from dimse_bridge.tcp import handle_connection_open
from dimse_bridge.ups_events import DimseEventChannel

log = logging.getLogger(__name__)

STAGING_THREADS: Final = 4
READING_THREADS: Final = 4
# How long stop() lets open associations finish (their stores still reach the loop) before aborting them.
SHUTDOWN_GRACE: Final = 10.0


# The non-storage services offered besides Verification: Query/Retrieve, Storage Commitment Push Model, and the
# workflow services: Modality Worklist FIND (PS3.4 K), MPPS (F), UPS Push, Pull, Watch, Event and Query (CC).
WORKFLOW_SOP_CLASSES: Final = (MWL_FIND, MPPS_SOP_CLASS, UPS_PUSH, UPS_PULL, UPS_WATCH, UPS_EVENT, UPS_QUERY)
SERVICE_SOP_CLASSES: Final = (*qr.QR_SOP_CLASSES, commitment.STORAGE_COMMITMENT_PUSH, *WORKFLOW_SOP_CLASSES)


def build_ae(settings: Settings, policy: PresentationPolicy, access_policy: AccessPolicy) -> AE:
    ae = AcceptorAE(ae_title=settings.ae_title)
    ae.supported_contexts = policy.supported_contexts(extra=SERVICE_SOP_CLASSES)
    ae.maximum_pdu_size = settings.dimse_max_pdu
    ae.acse_timeout = settings.dimse_acse_timeout
    ae.dimse_timeout = settings.dimse_dimse_timeout
    ae.network_timeout = settings.dimse_network_timeout
    ae.connection_timeout = settings.dimse_connection_timeout
    # pynetdicom counts every connection as an association, also one that never sends an A-ASSOCIATE-RQ, so
    # half-sent PDUs took every slot: admission.handle_requested counts the slots instead, and this is out of reach.
    ae.maximum_associations = sys.maxsize
    # Defence in depth: admission.handle_requested rejects first and says why; these checks stay in force anyway.
    ae.require_calling_aet = sorted(access_policy.allowed_calling_aets)
    ae.require_called_aet = access_policy.require_called_aet
    return ae


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server-side TLS context, or None for plain TCP (PS3.15 B.1, Basic TLS Secure Transport Profile)."""
    if settings.dimse_tls_cert is None or settings.dimse_tls_key is None:
        return None
    ca = settings.dimse_tls_ca
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca) if ca else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # BCP 195, as PS3.15 B.9 profiles require
    context.load_cert_chain(str(settings.dimse_tls_cert), str(settings.dimse_tls_key))
    if ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def event_handlers(dimse: DimseContext, pools: data_phase.Pools) -> list[evt.EventHandlerType]:
    """Every handler, each bound with the one DimseContext (pynetdicom passes the list as extra arguments);
    `pools` are the threads of the associations served on the loop (data_phase.py)."""
    return [
        (evt.EVT_CONN_OPEN, handle_connection_open),
        (evt.EVT_REQUESTED, admission.handle_requested, [dimse]),
        (evt.EVT_REQUESTED, data_phase.handle_requested, [dimse, pools]),  # after admission, which may reject
        (evt.EVT_USER_ID, admission.handle_user_id, [dimse]),
        (evt.EVT_ACCEPTED, admission.handle_accepted, [dimse]),
        (evt.EVT_REJECTED, admission.handle_rejected, [dimse]),
        (evt.EVT_C_ECHO, handlers.handle_echo, [dimse]),
        (evt.EVT_C_STORE, handlers.handle_store, [dimse]),
        (evt.EVT_C_FIND, dispatch.handle_find, [dimse]),  # Q/R, Modality Worklist, UPS
        (evt.EVT_C_GET, qr.handle_get, [dimse]),
        (evt.EVT_C_MOVE, qr.handle_move, [dimse]),
        (evt.EVT_N_ACTION, dispatch.handle_n_action, [dimse]),  # Storage Commitment, UPS
        (evt.EVT_N_CREATE, dispatch.handle_n_create, [dimse]),  # MPPS, UPS Push
        (evt.EVT_N_SET, dispatch.handle_n_set, [dimse]),  # MPPS, UPS Pull
        (evt.EVT_N_GET, dispatch.handle_n_get, [dimse]),  # UPS
    ]


def _unknown_move_destination(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Unknown Move Destination")


def _quiet_pynetdicom() -> None:
    library = logging.getLogger("pynetdicom")
    if library.level == logging.NOTSET and log.getEffectiveLevel() > logging.DEBUG:
        library.setLevel(logging.WARNING)
    if not library.isEnabledFor(logging.DEBUG):
        # Its "standard" handlers describe every PDU and DIMSE message for DEBUG lines nobody will see, at a
        # cost (they read every command set back); LOG_HANDLER_LEVEL is its documented switch (pynetdicom._config).
        _config.LOG_HANDLER_LEVEL = "none"
    service_class = logging.getLogger("pynetdicom.service_class")
    if _unknown_move_destination not in service_class.filters:
        service_class.addFilter(_unknown_move_destination)


class DimseServer:
    """The AE, its listening server and the bridge its handlers use. Built and started on the app loop."""

    def __init__(self, archive: ArchiveContext, loop: asyncio.AbstractEventLoop) -> None:
        settings = archive.settings
        self.settings = settings
        policy = build_policy(settings.dimse_sop_class_policy, settings.dimse_transfer_syntax_policy)
        access_policy = AccessPolicy.from_settings(settings)
        self.loop = loop
        self.bridge = LoopBridge(loop, timeout=settings.dimse_dimse_timeout)
        self.context = DimseContext(archive=archive, bridge=self.bridge, policy=policy, access=access_policy)
        self.ae = build_ae(settings, policy, access_policy)
        # UPS event reports to subscribers in the AE registry, attached to the UPS service while we serve.
        self.ups_events = DimseEventChannel(archive.aes, scu.ScuOptions.from_settings(settings))
        # Threads that stage data sets above handlers.HANDOVER_BYTES for associations served on the loop: their
        # own, so that large stores cannot take every thread of the loop's default executor (file reads, auth).
        self.staging: ThreadPoolExecutor | None = None
        # Threads that read stored files for C-GET and C-MOVE sub-operations of associations served on the loop.
        self.reading: ThreadPoolExecutor | None = None
        self._server: Any = None
        self._loop_acceptor: LoopAcceptor | None = None

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("the DIMSE server is not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Listen on DIMSE_HOST:DIMSE_PORT; OSError naming them (errno kept) if that address cannot be bound."""
        _quiet_pynetdicom()
        uids.remember()
        acse_pdus.install()
        negotiation.install()
        self.staging = ThreadPoolExecutor(STAGING_THREADS, thread_name_prefix="dimse-staging")
        self.reading = ThreadPoolExecutor(READING_THREADS, thread_name_prefix="dimse-reading")
        host, port = self.settings.dimse_host, self.settings.dimse_port
        tls = tls_context(self.settings)
        try:
            self._server = self.ae.start_server(
                (host, port),
                block=False,
                contexts=SharedContexts(self.context.policy.supported_contexts(extra=SERVICE_SOP_CLASSES)),
                evt_handlers=event_handlers(self.context, data_phase.Pools(self.staging, self.reading)),
                ssl_context=tls,
            )
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise OSError(exc.errno, f"cannot listen for DICOM on {host}:{port}: {reason}") from exc
        if tls is None:  # a TLS handshake is pynetdicom's, in the association's own thread (acceptor.py)
            self._loop_acceptor = LoopAcceptor(self._server, self.loop)
            self._server.loop_acceptor = self._loop_acceptor
        self.context.archive.ups.channels.append(self.ups_events)
        host, port = self.address
        log.info(
            "DIMSE server %s listening on %s:%d%s (%d SOP classes%s)",
            self.settings.ae_title,
            host,
            port,
            " with TLS" if self.settings.dimse_tls_cert else "",
            len(self.context.policy.sop_classes),
            " + any storage-like" if self.context.policy.any_storage else "",
        )

    def stop(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop listening, let open associations finish for `grace` seconds, abort the rest, close the bridge.

        Blocks: call it from a worker thread (`await asyncio.to_thread(server.stop)`) so the loop stays free to
        finish the stores those associations are waiting on.
        """
        channels = self.context.archive.ups.channels
        if self.ups_events in channels:
            channels.remove(self.ups_events)
        self.ups_events.close()
        if self._loop_acceptor is not None:
            self._loop_acceptor.stop_taking()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        deadline = time.monotonic() + grace
        # Only established associations have work to finish; a connection still waiting for its A-ASSOCIATE-RQ
        # (a TCP health check, say) would otherwise hold shutdown for the whole ACSE timeout.
        while time.monotonic() < deadline and any(a.is_established for a in self.ae.active_associations):
            time.sleep(0.05)
        open_now = self.ae.active_associations
        for assoc in open_now:
            if assoc.is_established:
                log.warning("aborting association with %s at shutdown", access.peer(assoc))
            assoc.abort()
        # An association the loop serves ends once its store in progress is answered (data_phase.py); it is
        # waited for, as pynetdicom's blocking abort waits for its own, so its audit record precedes the close.
        deadline = time.monotonic() + SHUTDOWN_GRACE
        for assoc in open_now:
            if getattr(assoc, "loop_phase", None) is not None:
                assoc.join(max(0.0, deadline - time.monotonic()))
        self._loop_acceptor = None
        self.bridge.close()
        for pool in (self.staging, self.reading):
            if pool is not None:
                pool.shutdown(wait=False)
        log.info("DIMSE server stopped")


async def start_dimse_server(archive: ArchiveContext) -> DimseServer:
    """Build and start the server on the running loop (the lifespan calls this)."""
    server = DimseServer(archive, asyncio.get_running_loop())
    server.start()
    return server


async def stop_dimse_server(server: DimseServer) -> None:
    await asyncio.to_thread(server.stop)
