"""Observability of the DIMSE door: association metrics and audit records, for associations named in the logs.

Bound to the running server as extra notification handlers (pynetdicom allows any number per notification
event, so the protocol handlers in server.py stay as they are):
* The association id in the logging context is given by the first handler of every A-ASSOCIATE-RQ
  (admission.handle_requested, through app/core/logs.name_association), before anything is logged or audited
  about it; coroutines the bridge runs for the association copy that context, so every log line about its
  stores and queries carries the id, as HTTP requests carry theirs.
* EVT_ACCEPTED / EVT_REJECTED count associations (`dicomweb_dimse_associations_total{outcome}`).
* EVT_DIMSE_SENT writes one audit record per C-STORE, and per C-FIND / C-GET / C-MOVE when the final
  (non-pending) response goes, with the DIMSE status as the outcome; EVT_RELEASED / EVT_ABORTED / EVT_REJECTED
  write the association's own record. The user is the calling AE title, the client the peer's address.
"""

from __future__ import annotations

from typing import Any

from pynetdicom import evt
from pynetdicom.events import Event

from app.core.audit import AuditLog
from app.core.metrics import Metrics
from dimse_bridge.server import DimseServer

PENDING = frozenset({0xFF00, 0xFF01})
_ACTIONS = {"C_STORE_RSP": "store", "C_FIND_RSP": "query", "C_GET_RSP": "retrieve", "C_MOVE_RSP": "retrieve"}


def observe(server: DimseServer, metrics: Metrics, audit: AuditLog) -> None:
    """Bind the observers to a started server."""
    listening = server._server
    if listening is None:
        raise RuntimeError("the DIMSE server is not started")
    listening.bind(evt.EVT_ACCEPTED, _accepted, [metrics])
    listening.bind(evt.EVT_REJECTED, _rejected, [metrics, audit])
    if audit.enabled:
        listening.bind(evt.EVT_DIMSE_SENT, _sent, [audit])
        listening.bind(evt.EVT_RELEASED, _ended, [audit, "released"])
        listening.bind(evt.EVT_ABORTED, _ended, [audit, "aborted"])


def _who(assoc: Any) -> tuple[str, str]:
    requestor = assoc.requestor
    title = str(getattr(requestor.primitive, "calling_ae_title", "") or requestor.ae_title or "").strip()
    return title or "?", f"{requestor.address}"


def _accepted(event: Event, metrics: Metrics) -> None:
    metrics.associations.labels("accepted").inc()


def _rejected(event: Event, metrics: Metrics, audit: AuditLog) -> None:
    metrics.associations.labels("rejected").inc()
    user, client = _who(event.assoc)
    audit.record(
        "association",
        outcome="rejected",
        user=user,
        client=client,
        protocol="DIMSE",
        called=str(getattr(event.assoc.requestor.primitive, "called_ae_title", "") or "").strip() or None,
        reason=getattr(event.assoc, "rejected_because", None),
    )


def _ended(event: Event, audit: AuditLog, outcome: str) -> None:
    user, client = _who(event.assoc)
    audit.record("association", outcome=outcome, user=user, client=client, protocol="DIMSE",
                 called=str(event.assoc.acceptor.ae_title).strip())


def _sent(event: Event, audit: AuditLog) -> None:
    message = event.message
    action = _ACTIONS.get(type(message).__name__)
    if action is None:
        return
    command = message.command_set
    status = int(getattr(command, "Status", 0) or 0)
    if status in PENDING:
        return
    user, client = _who(event.assoc)
    audit.record(
        action,
        outcome=f"0x{status:04X}",
        user=user,
        client=client,
        protocol="DIMSE",
        instance=str(command.AffectedSOPInstanceUID) if action == "store" and "AffectedSOPInstanceUID" in command
        else None,
        sop_class=str(command.AffectedSOPClassUID) if "AffectedSOPClassUID" in command else None,
    )
