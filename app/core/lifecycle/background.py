"""The archive's background loops (change feed, study completion, webhooks, FHIR sync) run one way.

Each is a task on the app's event loop, started after the doors open and cancelled at shutdown; a polling loop
runs a round of work, logs a failed round and carries on (the repository or a remote server may come back), and
when a round found nothing to do waits for its poll interval or until it is woken.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)


def start_task(work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(work, name=name)


async def stop_tasks(*tasks: asyncio.Task[None] | None) -> None:
    """Cancel the tasks and wait until each has ended."""
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    for task in running:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def run_rounds(
    round_of_work: Callable[[], Awaitable[int]],
    *,
    what: str,
    interval: float,
    wake: asyncio.Event | None = None,
) -> None:
    """Forever: run a round (it returns how much it did); after an idle or failed round, wait `interval`
    seconds or until `wake` is set."""
    while True:
        try:
            done = await round_of_work()
        except Exception as exc:
            log.warning("%s failed: %s", what, exc)
            done = 0
        if done:
            continue
        if wake is None:
            await asyncio.sleep(interval)
            continue
        wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), interval)
