"""Webhooks: every change-feed entry (instance created/updated/deleted, study completed) is POSTed as JSON to
each URL in WEBHOOK_URLS.

Delivery reads the persisted change feed, one worker per URL, in feed order, with the URL's position kept in the
repository (`set_cursor("webhook:<url>")`). So nothing is queued in memory, a receiver that is down delays only
its own deliveries (retried with backoff: OUTBOX_RETRY_SECONDS doubling up to 300 s) and misses nothing across
restarts, and ingest never waits for or fails on a webhook. A URL seen for the first time starts at the end of
the feed (no replay of history). A change a receiver refuses MAX_ATTEMPTS times in a row is skipped with an
error in the log, so one poisonous entry cannot stop a receiver forever.

Several archive processes may share the repository (README "Scaling out"): every one runs a worker per URL, but
only the holder of the URL's lease (`webhook:<url>`, app/core/leases.py) delivers, from the cursor as the
repository has it, renewing the lease as it goes; the others find it held and wait. So each change is POSTed
once whatever the number of replicas, and when the holder is killed another takes over from the cursor once the
lease expires (the change in flight at the kill may be POSTed twice; none is skipped).

The body (`Content-Type: application/json`):
`{"seq": 12, "type": "study.completed", "at": 1700000000.0, "StudyInstanceUID": "...", "SeriesInstanceUID": null,
  "SOPInstanceUID": null, "source": "<AE title>"}`; any 2xx answer is success.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from app.core.leases import Leases
from app.core.lifecycle.background import run_rounds, start_task, stop_tasks
from app.core.lifecycle.changefeed import ChangeFeed
from app.core.ports import ChangeFeedStore, Cursors, RepositoryUnavailable

log = logging.getLogger(__name__)

BATCH = 100
POLL_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 300.0
MAX_ATTEMPTS = 12
HTTP_TIMEOUT = httpx.Timeout(10.0, connect=5.0)


@dataclass
class WebhookState:
    url: str
    delivered_seq: int = 0
    attempts: int = 0  # failed attempts at the current entry
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "delivered_seq": self.delivered_seq,
            "failing_attempts": self.attempts,
            "last_error": self.last_error,
        }


class WebhookStore(ChangeFeedStore, Cursors, Protocol):
    """The roles webhooks use: the change feed they deliver, and a cursor per URL."""


class Webhooks:
    def __init__(
        self, repository: WebhookStore, urls: list[str], *, source: str, leases: Leases, retry_seconds: float = 5.0
    ) -> None:
        self.repository = repository
        self.leases = leases
        self.source = source
        self.retry_seconds = retry_seconds
        self.states = [WebhookState(url) for url in dict.fromkeys(urls)]
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None

    def attach(self, feed: ChangeFeed) -> None:
        feed.listeners.append(self._wake.set)

    async def start(self) -> None:
        if self._tasks:
            return
        self._client = httpx.AsyncClient(timeout=HTTP_TIMEOUT)
        last = await self.repository.last_change_seq()
        for state in self.states:
            cursor = await self.repository.get_cursor(_cursor(state.url))
            if cursor is None:
                cursor = last
                await self.repository.set_cursor(_cursor(state.url), cursor)
            state.delivered_seq = cursor
            work = run_rounds(
                functools.partial(self.deliver_pending, state),
                what=f"webhook {state.url}: reading the change feed",
                interval=POLL_SECONDS,
                wake=self._wake,
            )
            self._tasks.append(start_task(work, f"webhook {state.url}"))

    async def stop(self) -> None:
        await stop_tasks(*self._tasks)
        self._tasks.clear()
        for state in self.states:  # another replica takes over at once, not after the lease
            with contextlib.suppress(RepositoryUnavailable):
                await self.leases.release(_cursor(state.url))
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def status(self) -> list[dict[str, Any]]:
        return [state.as_dict() for state in self.states]

    async def deliver_pending(self, state: WebhookState) -> int:
        """Deliver the entries after the URL's cursor, in order, while this process holds the URL's lease;
        return how many went (0 when another process holds it)."""
        name = _cursor(state.url)
        if not await self.leases.acquire(name):
            return 0
        cursor = await self.repository.get_cursor(name)
        state.delivered_seq = state.delivered_seq if cursor is None else cursor
        changes = await self.repository.changes(state.delivered_seq, BATCH)
        sent = 0
        for change in changes:
            while not await self._post(state, {**change.to_json(), "source": self.source}):
                if state.attempts >= MAX_ATTEMPTS:
                    log.error("webhook %s: giving up on change %d after %d attempts: %s",
                              state.url, change.seq, state.attempts, state.last_error)
                    break
                await asyncio.sleep(min(self.retry_seconds * 2 ** (state.attempts - 1), MAX_BACKOFF_SECONDS))
                if not await self.leases.acquire(name):  # renewed across the wait, or lost to another replica
                    return sent
            state.attempts = 0
            state.delivered_seq = change.seq
            sent += 1
            await self.repository.set_cursor(name, change.seq)
            if not await self.leases.acquire(name):
                return sent
        return sent

    async def _post(self, state: WebhookState, body: dict[str, Any]) -> bool:
        client = self._client
        assert client is not None
        try:
            response = await client.post(state.url, json=body)
        except httpx.HTTPError as exc:
            state.last_error = f"{type(exc).__name__}: {exc}"
        else:
            if response.is_success:
                state.last_error = None
                return True
            state.last_error = f"HTTP {response.status_code}"
        state.attempts += 1
        log.warning("webhook %s: change %s not delivered (attempt %d): %s",
                    state.url, body.get("seq"), state.attempts, state.last_error)
        return False


def _cursor(url: str) -> str:
    return f"webhook:{url}"
