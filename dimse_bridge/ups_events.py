"""UPS event reports over DIMSE (PS3.4 CC.2.4): N-EVENT-REPORT of the UPS Event SOP class to subscribed AEs.

The UPS service (app/core/workflow/ups.py) offers each event for a subscriber to the channels the doors attach;
this one takes it when the subscriber's AE title is in the AE registry, since a DICOM peer is reached only at an
address configured for its title (PS3.4 CC.2.3.2: an SCP must refuse a subscription for an AE it does not know,
C308, which ups.py does). The report goes on a new association from our AE (dimse_bridge/scu.py
`send_event_report`, proposing the SCP role for the UPS Event SOP class, PS3.7 D.3.3.4, as the Storage
Commitment report does), with Affected SOP Instance UID the workitem, the Event Type ID (PS3.4 Table CC.2.4-1)
and the Event Information.

`offer` runs on the event loop inside a state change: it only looks the AE up and queues the event. Delivery
is done by one worker thread per receiving AE, in the order the events were offered (a subscriber must see
SCHEDULED before IN PROGRESS before COMPLETED), so neither the loop nor the state machine ever waits on a
network peer, and a slow or absent subscriber delays only its own reports. A report that cannot be delivered
is tried REPORT_ATTEMPTS times, further apart each time, then dropped with a log line; the reports behind it go
on. A worker with nothing to do for IDLE_SECONDS ends; the next event starts another.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from app.core.aes import AERegistry, RemoteAE
from app.core.workflow.records import UPS_EVENT, UpsEvent
from dimse_bridge import datasets, scu

log = logging.getLogger(__name__)

REPORT_ATTEMPTS: Final = 3
REPORT_RETRY_SECONDS: Final = 1.0
IDLE_SECONDS: Final = 30.0
# Reports waiting for one AE at most (one worker sends them in order).
MAX_PENDING: Final = 1000
SUCCESS: Final = 0x0000

Sender = Callable[[RemoteAE, UpsEvent], int]
"""Sends one report and returns the peer's status; ScuError when no association could be made."""


@dataclass(frozen=True)
class _Report:
    remote: RemoteAE
    event: UpsEvent


class DimseEventChannel:
    """core's EventChannel for subscribers reached by DIMSE (registered on `UpsService.channels`)."""

    def __init__(
        self,
        aes: AERegistry,
        options: scu.ScuOptions,
        *,
        attempts: int = REPORT_ATTEMPTS,
        retry_seconds: float = REPORT_RETRY_SECONDS,
        idle_seconds: float = IDLE_SECONDS,
    ) -> None:
        self._aes = aes
        self._options = options
        self._attempts = attempts
        self._retry_seconds = retry_seconds
        self._idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._queues: dict[str, queue.Queue[_Report]] = {}
        self._closed = threading.Event()

    async def offer(self, ae_title: str, event: UpsEvent) -> bool:
        """Queue the report for `ae_title` when the AE registry knows where it is; False otherwise."""
        if self._closed.is_set():
            return False
        remote = await self._aes.get(ae_title)
        if remote is None:
            return False
        report = _Report(remote, event)
        with self._lock:
            pending = self._queues.get(remote.ae_title)
            if pending is None:
                pending = self._queues[remote.ae_title] = queue.Queue()
                threading.Thread(
                    target=self._work,
                    args=(remote.ae_title, pending),
                    name=f"ups-events-{remote.ae_title}",
                    daemon=True,
                ).start()
            if pending.qsize() >= MAX_PENDING:
                # A registered peer that stays down must not grow this process without bound: the oldest
                # report goes (a subscriber that comes back reads the current state with N-GET, PS3.4 CC.2.7).
                with contextlib.suppress(queue.Empty):
                    pending.get_nowait()
                log.warning("UPS event reports for %s: %d waiting, the oldest dropped", ae_title, MAX_PENDING)
            pending.put(report)
        return True

    def close(self) -> None:
        """Stop delivering: reports not yet sent are dropped (logged), workers end after their current one."""
        self._closed.set()
        with self._lock:
            dropped = sum(pending.qsize() for pending in self._queues.values())
            self._queues.clear()
        if dropped:
            log.warning("UPS event reports: %d not delivered at shutdown", dropped)

    # -- the workers (one thread per receiving AE) -------------------------------------------------------

    def _work(self, ae_title: str, pending: queue.Queue[_Report]) -> None:
        while not self._closed.is_set():
            try:
                report = pending.get(timeout=self._idle_seconds)
            except queue.Empty:
                with self._lock:
                    if pending.empty():  # nothing arrived between the timeout and the lock: this worker ends
                        if self._queues.get(ae_title) is pending:
                            del self._queues[ae_title]
                        return
                continue
            self._deliver(report)

    def _deliver(self, report: _Report) -> None:
        event, remote = report.event, report.remote
        what = f"UPS event {event.event_type.name} of {event.workitem_uid} to {remote.ae_title}"
        for attempt in range(1, self._attempts + 1):
            if self._closed.is_set():
                return
            try:
                code = self.send(remote, event)
            except scu.ScuError as exc:
                log.warning("%s, attempt %d of %d: %s", what, attempt, self._attempts, exc)
            except Exception:
                log.exception("%s: cannot be sent", what)
                return
            else:
                if code == SUCCESS:
                    log.debug("%s delivered", what)
                else:
                    log.warning("%s: the subscriber answered 0x%04X", what, code)
                return
            if attempt < self._attempts and self._closed.wait(self._retry_seconds * attempt):
                return  # closed while waiting to try again
        log.warning("%s dropped after %d attempts", what, self._attempts)

    def send(self, remote: RemoteAE, event: UpsEvent) -> int:
        """N-EVENT-REPORT-RQ on a new association (PS3.4 CC.2.4.1); the peer's status."""
        return scu.send_event_report(
            remote,
            self._options,
            sop_class_uid=UPS_EVENT,
            sop_instance_uid=event.workitem_uid,
            event_type=int(event.event_type),
            information=datasets.from_json(event.information),
        )
