"""The change feed: every created, updated or deleted instance and every completed study, in order, kept in the
repository (GET /api/changes?since=SEQ&limit=N, like Orthanc's /changes and Microsoft's change feed).

Instance events reach the feed through a queue and one writer task that appends whatever has gathered in one
repository call: ingest never waits for the feed, and a burst of stores costs one feed write per batch, not one
per instance. A study completion is awaited until written, so the completion tracker marks a study complete
only once its feed entry is safe. A repository that is down delays the feed (retried with backoff) and never
fails a store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from app.core.lifecycle.background import start_task, stop_tasks
from app.core.lifecycle.events import Event, EventBus, StudyCompleted
from app.core.lifecycle.feed import NewChange
from app.core.ports import ChangeFeedStore

log = logging.getLogger(__name__)

BATCH = 500
RETRY_FIRST_SECONDS = 0.1
RETRY_MAX_SECONDS = 5.0
CLOSE_SECONDS = 10.0


class ChangeFeed:
    def __init__(self, repository: ChangeFeedStore) -> None:
        self.repository = repository
        self._queue: asyncio.Queue[NewChange] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        # Entries queued and written so far (counts, in queue order), and who waits for which count: `flush`
        # waits for what was queued when it was called, not for the queue to run dry (it may never, under load).
        self._queued = 0
        self._written = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.listeners: list[Callable[[], None]] = []
        """Called after each batch is written (webhook workers wake up on it)."""

    def attach(self, bus: EventBus) -> None:
        bus.subscribe(self.on_event)

    def start(self) -> None:
        if self._task is None:
            self._task = start_task(self._run(), "change-feed")

    async def on_event(self, event: Event) -> None:
        # Before any await, so the feed keeps the order in which events were published.
        self._queue.put_nowait(
            NewChange(
                kind=str(event.kind),
                study_instance_uid=event.study_instance_uid,
                series_instance_uid=event.series_instance_uid,
                sop_instance_uid=event.sop_instance_uid,
                at=event.at,
            )
        )
        self._queued += 1
        if isinstance(event, StudyCompleted):
            await self.flush()

    async def flush(self) -> None:
        """Wait until everything queued so far is in the repository."""
        if self._task is None:
            while not self._queue.empty():
                await self._write_batch(self._take(self._queue.get_nowait()))
            return
        target = self._queued
        if self._written >= target:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, waiter))
        await waiter

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.flush(), CLOSE_SECONDS)
        except TimeoutError:
            log.warning("change feed: %d entries not written at shutdown", self._queue.qsize())
        await stop_tasks(self._task)
        self._task = None

    def _take(self, first: NewChange) -> list[NewChange]:
        batch = [first]
        while len(batch) < BATCH and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    async def _write_batch(self, batch: list[NewChange]) -> None:
        delay = RETRY_FIRST_SECONDS
        while True:
            try:
                await self.repository.append_changes(batch)
                break
            except Exception as exc:
                log.warning("change feed: cannot append %d entries (%s); retrying in %.1f s",
                            len(batch), exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
        self._written += len(batch)
        still = []
        for target, waiter in self._waiters:
            if target <= self._written:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                still.append((target, waiter))
        self._waiters = still
        for listener in self.listeners:
            listener()

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            await self._write_batch(self._take(first))
