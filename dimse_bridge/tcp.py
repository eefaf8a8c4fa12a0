"""The TCP setting every DIMSE socket gets, accepted or requested: Nagle's algorithm off.

pynetdicom leaves it on. A C-STORE-RSP is a small segment written right after the previous small one, so with
Nagle it waits for the peer's delayed ACK (about 40 ms on Linux): tens of instances per second instead of
hundreds. DCMTK needs the same (TCP_NODELAY=1 in its environment, see INTEROP.md). Bound as the EVT_CONN_OPEN
handler of the server (server.py), of C-MOVE sub-associations (qr.py) and of the SCU (scu.py).
"""

from __future__ import annotations

import logging
import socket

from pynetdicom.events import Event

log = logging.getLogger(__name__)


def handle_connection_open(event: Event) -> None:
    """EVT_CONN_OPEN: turn Nagle's algorithm off on the association's socket."""
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:  # the peer may already be gone
            log.debug("cannot set TCP_NODELAY: %s", exc)
