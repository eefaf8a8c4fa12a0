"""The UPS-RS event channel: UPS event reports sent over a WebSocket (RFC 6455) to each subscriber AE.

PS3.18 8.10.4 (Open Notification Connection) and 8.10.5 (Send Event Report): a subscriber opens
`ws[s]://{host}/dicom-web/subscribers/{aetitle}` and the origin server sends every event report for that AE's
subscriptions (PS3.18 11.13, PS3.4 CC.2.4) as one text frame, a DICOM JSON data set. Subscribe (PS3.18 11.10)
answers with this URL in Content-Location.

`WebSocketChannel` is the core's `EventChannel` (app/core/workflow/ups.py) for this door. It takes an event only
for an AE that has a socket open (`offer` answers False otherwise, and the next channel - DIMSE N-EVENT-REPORT -
or the log gets it). Events wait in a queue per AE and one task per socket sends them, so they leave in the order
the state machine made them and a slow or stalled subscriber never holds up the request that changed a
workitem: when its queue is full, its socket is closed with 1013 (Try Again Later) and it reconnects and
re-reads the workitems it follows. A second socket for the same AE replaces the first and takes over the events
not yet sent (PS3.18 8.10.4.2: the user agent re-establishes a lost connection by opening it again), when the
same credential opens it; another credential is refused with 409, so no reader can take an AE's events. `offer`
runs on the event loop of the application, as every call into the core does.

Authentication is that of every other route (app/api/auth.py), with the `read` scope: the credential is sent
in the standard `Authorization: Bearer <token>` header of the opening handshake (RFC 6455 4.1 allows any header
field). A browser's WebSocket API cannot set that header, so browser clients go through a proxy that adds it;
no token is taken from the URL, where it would end up in logs. A refused handshake gets the HTTP answer any
route gives (401/403 with WWW-Authenticate and a DICOM JSON body) when the server supports the WebSocket Denial
Response extension, as uvicorn does; otherwise the socket is closed with 1008 (Policy Violation).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Final

from fastapi import APIRouter, WebSocket

from app.api.auth import check_access
from app.api.errors import DicomWebError, error_response
from app.api.workflow_input import checked_ae_title
from app.core.records import JSONDict
from app.core.workflow.records import UPS_EVENT, UpsEvent

log = logging.getLogger(__name__)

EVENT_CHANNEL_PATH: Final = "/subscribers/{aetitle}"  # PS3.18 8.10.4, under the DICOMweb root
QUEUE_LIMIT: Final = 1000  # events waiting for one subscriber before it is dropped as too slow
# RFC 6455 7.4: close codes (1013 Try Again Later is in the IANA registry the RFC set up).
_NORMAL: Final = 1000
_GOING_AWAY: Final = 1001
_POLICY_VIOLATION: Final = 1008
_TRY_AGAIN_LATER: Final = 1013

router = APIRouter()


def event_message(event: UpsEvent, message_id: int) -> JSONDict:
    """The event report as PS3.18 11.13 shows it: the N-EVENT-REPORT command fields (Affected SOP Class UID of
    the UPS Event SOP Class, Message ID, Affected SOP Instance UID: the workitem, Event Type ID) and the event
    information of PS3.4 Table CC.2.4-1 (for a state report: Procedure Step State and Input Readiness State)."""
    message: JSONDict = {
        "00000002": {"vr": "UI", "Value": [UPS_EVENT]},
        "00000110": {"vr": "US", "Value": [message_id]},
        "00001000": {"vr": "UI", "Value": [event.workitem_uid]},
        "00001002": {"vr": "US", "Value": [int(event.event_type)]},
    }
    message.update(event.information)
    return dict(sorted(message.items()))


@dataclass(frozen=True)
class _Close:
    """Put in a subscriber's queue: close its socket after what is before it."""

    code: int
    reason: str


class _Subscriber:
    """One open socket of an AE, its queue of messages, and the Message IDs given so far."""

    def __init__(self, ae_title: str, websocket: WebSocket, limit: int, principal: str | None = None) -> None:
        self.ae_title = ae_title
        self.websocket = websocket
        self.principal = principal  # who opened it, when authentication is on
        self.queue: asyncio.Queue[str | _Close] = asyncio.Queue(limit + 1)  # room for the closing entry
        self.limit = limit
        self.message_id = 0

    def put(self, event: UpsEvent) -> bool:
        if self.queue.qsize() >= self.limit:
            return False
        self.message_id = self.message_id % 0xFFFF + 1  # Message ID is US (PS3.7 Table 10.3-1)
        self.queue.put_nowait(json.dumps(event_message(event, self.message_id), separators=(",", ":")))
        return True

    def close(self, code: int, reason: str) -> list[str]:
        """Stop after the message being sent (if any); the messages not yet taken are returned."""
        left: list[str] = []
        while not self.queue.empty():
            item = self.queue.get_nowait()
            if isinstance(item, str):
                left.append(item)
        self.queue.put_nowait(_Close(code, reason))
        return left

    async def run(self) -> None:
        """Send until told to close or the peer goes; listen meanwhile, so a peer's close is seen at once."""
        sending = asyncio.ensure_future(self._send())
        listening = asyncio.ensure_future(self._listen())
        done, pending = await asyncio.wait({sending, listening}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.info("UPS-RS event channel of %s ended: %r", self.ae_title, task.exception())

    async def _send(self) -> None:
        while True:
            item = await self.queue.get()
            if isinstance(item, _Close):
                await self.websocket.close(item.code, item.reason)
                return
            await self.websocket.send_text(item)

    async def _listen(self) -> None:
        # PS3.18 defines no message from the user agent on this channel: anything it sends is read and dropped.
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return


class WebSocketChannel:
    """The core's EventChannel over the subscribers' open WebSockets (see the module docstring)."""

    def __init__(self, queue_limit: int = QUEUE_LIMIT) -> None:
        self.queue_limit = queue_limit
        self._open: dict[str, _Subscriber] = {}

    def is_open(self, ae_title: str) -> bool:
        return ae_title in self._open

    async def offer(self, ae_title: str, event: UpsEvent) -> bool:
        """Queue `event` for `ae_title` if it has a socket open; never waits for the socket."""
        subscriber = self._open.get(ae_title)
        if subscriber is None:
            return False
        if subscriber.put(event):
            return True
        log.warning(
            "UPS-RS event channel of %s: %d events are waiting; closing it (the subscriber reconnects and "
            "re-reads its workitems)", ae_title, subscriber.limit,
        )  # fmt: skip
        del self._open[ae_title]
        subscriber.close(_TRY_AGAIN_LATER, "too many events waiting; reconnect")
        return False

    def holder(self, ae_title: str) -> str | None:
        """Who holds the AE's open channel (None: nobody, or authentication is off)."""
        subscriber = self._open.get(ae_title)
        return None if subscriber is None else subscriber.principal

    async def serve(self, websocket: WebSocket, ae_title: str, principal: str | None = None) -> None:
        """Open Notification Connection (PS3.18 8.10.4) for `ae_title` (checked), until either side closes it."""
        await websocket.accept()
        subscriber = _Subscriber(ae_title, websocket, self.queue_limit, principal)
        previous = self._open.get(ae_title)
        if previous is not None:
            # The newest socket is the channel; the events the old one had not sent go out on the new one.
            subscriber.message_id = previous.message_id
            for text in previous.close(_NORMAL, "replaced by a newer connection of the same AE"):
                subscriber.queue.put_nowait(text)
        self._open[ae_title] = subscriber
        log.info("UPS-RS event channel open for %s", ae_title)
        try:
            await subscriber.run()
        finally:
            if self._open.get(ae_title) is subscriber:
                del self._open[ae_title]
            log.info("UPS-RS event channel closed for %s", ae_title)

    def close(self) -> None:
        """Close every socket (the archive is stopping)."""
        for subscriber in self._open.values():
            subscriber.close(_GOING_AWAY, "the archive is stopping")
        self._open.clear()


@router.websocket(EVENT_CHANNEL_PATH, name="UPS-RS event channel")
async def event_channel(websocket: WebSocket, aetitle: str) -> None:
    """Open Notification Connection (PS3.18 8.10.4): the event reports of `aetitle`'s subscriptions."""
    try:
        ae_title = checked_ae_title(aetitle)
        await check_access(websocket, "read")
    except DicomWebError as exc:
        log.info("WS %s -> %d: %s", websocket.url.path, exc.status, exc.reason)
        await refuse(websocket, exc)
        return
    channel: WebSocketChannel = websocket.app.state.ups_events
    principal: str | None = getattr(websocket.state, "principal", None)
    if channel.is_open(ae_title) and channel.holder(ae_title) != principal:
        # Replacing a channel hands its events over: only to whoever opened it, never to another credential.
        taken = DicomWebError(409, f"the event channel of {ae_title} is held by another credential")
        log.info("WS %s -> 409: %s", websocket.url.path, taken.reason)
        await refuse(websocket, taken)
        return
    await channel.serve(websocket, ae_title, principal)


async def refuse(websocket: WebSocket, exc: DicomWebError) -> None:
    """The HTTP answer of a refused handshake (WebSocket Denial Response), or a 1008 close without it."""
    try:
        await websocket.send_denial_response(error_response(exc.status, exc.reason, exc.headers))
    except RuntimeError:
        await websocket.close(_POLICY_VIOLATION, exc.reason[:120])
