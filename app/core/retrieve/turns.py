"""Bounds on rendering: how large an output may be and how many renders run at once (the rest wait, then 503)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from app.core.retrieve.outcomes import RendersBusy

_T = TypeVar("_T")


@dataclass(frozen=True)
class RenderLimits:
    """How large a rendered image may be and how many are made at once (the MAX_RENDER_SIDE,
    RENDER_CONCURRENCY and RENDER_WAIT_SECONDS settings)."""

    max_side: int = 4096
    concurrency: int = 2
    wait_seconds: float = 30.0


class RenderTurns:
    """At most `concurrency` renders run at once; the others wait for a turn, each at most `wait_seconds`.

    A render holds the decoded frame, its float copy and the output image: without turns, a few large renders
    arriving together add up to gigabytes. Waiting costs a request next to nothing, so a burst of thumbnails
    (a viewer opening a study) queues rather than failing.
    """

    def __init__(self, limits: RenderLimits) -> None:
        self._free = asyncio.Semaphore(limits.concurrency)
        self._limits = limits

    async def run(self, work: Callable[[], _T]) -> _T:
        """`work()` in a worker thread once a turn is free; RendersBusy when none comes free in time."""
        try:
            async with asyncio.timeout(self._limits.wait_seconds):
                await self._free.acquire()
        except TimeoutError as exc:
            raise RendersBusy(
                f"all {self._limits.concurrency} rendering turns stayed busy for "
                f"{self._limits.wait_seconds:g} s; try again later"
            ) from exc
        task = asyncio.ensure_future(asyncio.to_thread(work))
        # The turn ends when the thread does, not when the request does: a client that hangs up mid-render
        # must not free a turn whose thread still holds the memory.
        task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    def _finished(self, task: asyncio.Future[_T]) -> None:
        self._free.release()
        if not task.cancelled():
            task.exception()  # retrieved here when the request that awaited it has gone
