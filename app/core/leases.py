"""Leases: how several archive processes over one repository (replicas behind a load balancer, README "Scaling
out") do once what must happen once, and one at a time what must not interleave.

An asyncio lock holds inside one process only. Work every replica can see (a webhook URL's deliveries, an
instance being stored or deleted) is therefore held by a named lease in the repository (`LeaseStore`): taken in
one atomic step, held by this process's `holder` id, and ending at an expiry, so that a replica killed while
holding one hands the work on after LEASE_SECONDS instead of blocking it forever. Outbox entries and study
completions are claimed the same way, by their own atomic repository operations (`outbox_claim`,
`claim_completion`), with the same lease length.

The expiry is wall-clock time (every replica compares `time.time()`), so replicas need synchronised clocks
(NTP), as any lease does. A block that holds a lease renews it every third of its length while it runs, so only
a process that stops renewing (killed, or cut off from the repository) loses it; claimed work that outlives its
claim may happen twice; none is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.core.ports import LeaseStore, RepositoryUnavailable

log = logging.getLogger(__name__)

FIRST_WAIT_SECONDS = 0.005
MAX_WAIT_SECONDS = 0.1


def new_holder() -> str:
    """An id for this process that no other process, here or on another machine, has: host, pid and a nonce."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Leases:
    """This process's leases in the repository: `seconds` long, held as `holder`."""

    def __init__(self, store: LeaseStore, seconds: float, holder: str | None = None) -> None:
        self.store = store
        self.seconds = seconds
        self.holder = holder or new_holder()

    def window(self) -> tuple[float, float]:
        """Now, and when a lease or claim taken now ends."""
        now = time.time()
        return now, now + self.seconds

    async def acquire(self, name: str) -> bool:
        """Take (or renew) the lease `name` if no other process holds it; True if this process holds it now."""
        return await self.store.acquire_lease(name, self.holder, *self.window())

    async def release(self, name: str) -> None:
        await self.store.release_lease(name, self.holder)

    @asynccontextmanager
    async def held(self, name: str) -> AsyncIterator[None]:
        """Hold `name` for the block, waiting while another process holds it (at most until its lease ends,
        twice over for good measure: RepositoryUnavailable after that)."""
        deadline = time.monotonic() + 2 * self.seconds
        wait = FIRST_WAIT_SECONDS
        while not await self.acquire(name):
            if time.monotonic() > deadline:
                raise RepositoryUnavailable(f"lease {name} stayed held by another archive process")
            await asyncio.sleep(wait)
            wait = min(wait * 2, MAX_WAIT_SECONDS)
        renewing = asyncio.get_running_loop().create_task(self._renew(name))
        try:
            yield
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            try:
                await self.release(name)
            except RepositoryUnavailable as exc:
                # The work is done; the lease ends on its own.
                log.warning("lease %s not released (%s); it expires in %.0f s", name, exc, self.seconds)

    async def _renew(self, name: str) -> None:
        """Keep `name` held while its block runs longer than a third of the lease (a large store to S3)."""
        while True:
            await asyncio.sleep(self.seconds / 3)
            try:
                if not await self.acquire(name):
                    log.warning("lease %s was taken by another process while held here", name)
                    return
            except RepositoryUnavailable as exc:
                log.warning("lease %s not renewed (%s); it expires in %.0f s", name, exc, self.seconds)
