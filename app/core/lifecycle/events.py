"""A small in-process event bus: what happened to instances and studies, for whoever subscribes.

Ingest (and deletion) publish; the change feed, the study-completion tracker's consumers, FHIR sync and
webhooks subscribe. The core never knows who listens (ARCHITECTURE.md: caches, jobs, FHIR and metrics are
separate modules that subscribe to events).

Two ways to deliver:
* `publish(event)` is what the ingest path calls. It never blocks and never raises: each subscriber runs in a
  task of its own, and a subscriber that fails is logged, not propagated. Tasks start in the order they are
  created, so a subscriber that records the event before its first `await` sees events in publish order.
* `await deliver(event)` runs every subscriber to the end, one after the other (errors logged), for background
  jobs such as the completion tracker that want "delivered" to mean done before they mark the event handled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum

log = logging.getLogger(__name__)


class ChangeKind(StrEnum):
    """The kinds of change the change feed and webhooks report."""

    INSTANCE_CREATED = "instance.created"
    INSTANCE_UPDATED = "instance.updated"  # a second copy of a SOP Instance UID replaced the first
    INSTANCE_DELETED = "instance.deleted"
    STUDY_COMPLETED = "study.completed"


@dataclass(frozen=True)
class Event:
    """Base of every event: when it happened (seconds since the epoch) and the study it concerns."""

    study_instance_uid: str
    at: float = field(default_factory=time.time, kw_only=True)

    kind = ChangeKind.INSTANCE_CREATED  # overridden per subclass; a class attribute, not a field

    @property
    def series_instance_uid(self) -> str | None:
        return None

    @property
    def sop_instance_uid(self) -> str | None:
        return None


@dataclass(frozen=True)
class InstanceEvent(Event):
    series: str
    sop: str

    @property
    def series_instance_uid(self) -> str | None:
        return self.series

    @property
    def sop_instance_uid(self) -> str | None:
        return self.sop


@dataclass(frozen=True)
class InstanceStored(InstanceEvent):
    kind = ChangeKind.INSTANCE_CREATED


@dataclass(frozen=True)
class InstanceReplaced(InstanceEvent):
    kind = ChangeKind.INSTANCE_UPDATED


@dataclass(frozen=True)
class InstanceDeleted(InstanceEvent):
    kind = ChangeKind.INSTANCE_DELETED


@dataclass(frozen=True)
class StudyCompleted(Event):
    """No instance of the study arrived for the quiet period (STUDY_QUIET_SECONDS) after `activity_at`."""

    activity_at: float = 0.0
    kind = ChangeKind.STUDY_COMPLETED


Subscriber = Callable[[Event], Awaitable[None]]


class EventBus:
    def __init__(self) -> None:
        self._subscribers: list[tuple[type[Event], Subscriber]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def subscribe(self, handler: Subscriber, *kinds: type[Event]) -> None:
        """Call `handler` for events of the given classes (every event when none is given)."""
        for kind in kinds or (Event,):
            self._subscribers.append((kind, handler))

    def _handlers(self, event: Event) -> list[Subscriber]:
        return list(dict.fromkeys(h for kind, h in self._subscribers if isinstance(event, kind)))

    def publish(self, event: Event) -> None:
        """Hand `event` to every subscriber without waiting; never raises."""
        for handler in self._handlers(event):
            try:
                task = asyncio.get_running_loop().create_task(self._guarded(handler, event))
            except RuntimeError:  # no running loop: nothing can listen
                log.warning("event %s dropped: no event loop", event.kind)
                return
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def deliver(self, event: Event) -> None:
        """Run every subscriber to the end, in subscription order; errors are logged."""
        for handler in self._handlers(event):
            await self._guarded(handler, event)

    async def drain(self) -> None:
        """Wait for the subscriber tasks started by `publish` (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    @staticmethod
    async def _guarded(handler: Subscriber, event: Event) -> None:
        try:
            await handler(event)
        except Exception:
            log.exception("event subscriber %r failed on %s", handler, event.kind)
