"""The one way a DIMSE handler reaches the archive: run a coroutine on the app's event loop and wait for it.

pynetdicom runs every association in a thread of its own and calls our handlers synchronously there, while the
archive services (ingest, query, retrieve) are coroutines bound to the loop that owns the repository's
connections. A handler therefore never starts an event loop of its own (that would need a second database
client, and objects bound to one loop must not be used from another); it hands the coroutine to the app loop
with `asyncio.run_coroutine_threadsafe` and blocks its own association thread, and only that, until the answer
comes back or a timeout passes.

Two entry points, one per shape of work:

* `call(coro)`: one awaitable, one answer (C-STORE, C-ECHO checks, N-ACTION); `within(coro)` is the same
  for an association served on the loop itself (data_phase.py), and `submit(coro)` starts one without waiting.
* `stream(async_iterator)`: a sync iterator over an async one, pulling one item per hop, so a C-FIND / C-GET /
  C-MOVE generator handler can yield pending responses while the query is still running, and stopping early
  (cancel, abort) closes the async iterator on the loop.

After `close()`, both fail at once with `BridgeClosed`, so associations still open while the app shuts down
answer "out of resources" instead of waiting on a loop that is going away.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, Final, TypeVar, cast

T = TypeVar("T")
log = logging.getLogger(__name__)

_END: Final = object()


class BridgeError(RuntimeError):
    """The archive could not be reached from an association thread; handlers answer 0xA700."""


class BridgeClosed(BridgeError):
    """The app is shutting down (or never started): no more work is accepted."""


class BridgeTimeout(BridgeError, TimeoutError):
    """The coroutine did not finish within the timeout."""


class LoopBridge:
    """Runs coroutines on `loop` on behalf of threads that are not the loop's own (pynetdicom's)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, timeout: float | None) -> None:
        self._loop = loop
        self._timeout = timeout
        self._closed = False
        self._unawaited: set[asyncio.Future[Any]] = set()

    @property
    def closed(self) -> bool:
        return self._closed or self._loop.is_closed()

    def close(self) -> None:
        """Refuse new work from now on; work already handed to the loop runs to its end."""
        self._closed = True

    def call(
        self,
        coro: Coroutine[Any, Any, T],
        *,
        timeout: float | None = None,
        cancel_on_timeout: bool = True,
    ) -> T:
        """Run `coro` on the app loop and return its result (or raise its exception) in this thread.

        `timeout` defaults to the bridge's. With `cancel_on_timeout=False` the coroutine is left to finish on
        the loop after the caller gave up (for work such as a store, whose cancellation half-way would leave a
        file without its metadata row); the caller still gets `BridgeTimeout`.
        """
        if _running_loop() is self._loop:
            coro.close()
            raise RuntimeError("LoopBridge.call from the event loop thread would deadlock; await instead")
        future = self.submit(coro)
        wait = self._timeout if timeout is None else timeout
        try:
            return future.result(wait)
        except concurrent.futures.TimeoutError as exc:
            if cancel_on_timeout:
                future.cancel()
            raise BridgeTimeout(f"no answer from the archive within {wait} s") from exc
        except concurrent.futures.CancelledError as exc:
            raise BridgeClosed("the work was cancelled (the archive is shutting down)") from exc

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start `coro` on the app loop, in a copy of this thread's context (its association id for the logs);
        BridgeClosed once the bridge is closed."""
        if self.closed:
            coro.close()
            raise BridgeClosed("the archive is shutting down")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def within(self, coro: Coroutine[Any, Any, T]) -> T:
        """`call` for a caller already on the loop (an association served there, data_phase.py): the result of
        `coro`, or BridgeTimeout after the bridge's timeout with the work left to finish, as
        `call(cancel_on_timeout=False)` leaves it; BridgeClosed once the bridge is closed."""
        if self.closed:
            coro.close()
            raise BridgeClosed("the archive is shutting down")
        work = asyncio.ensure_future(coro)
        try:
            return await asyncio.wait_for(asyncio.shield(work), self._timeout)
        except (TimeoutError, asyncio.CancelledError) as exc:
            # Left to finish, held here until it does, and its failure logged, not lost.
            self._unawaited.add(work)
            work.add_done_callback(self._finished)
            if isinstance(exc, TimeoutError):
                raise BridgeTimeout(f"no answer from the archive within {self._timeout} s") from exc
            raise

    def _finished(self, work: asyncio.Future[Any]) -> None:
        self._unawaited.discard(work)
        if not work.cancelled() and (exc := work.exception()) is not None:
            log.error("work its caller stopped waiting for failed: %r", exc)

    def stream(self, source: AsyncIterator[T], *, timeout: float | None = None) -> Iterator[T]:
        """Iterate `source` (an async iterator living on the loop) from this thread, one item per hop.

        `timeout` bounds each step, not the whole iteration. Closing the returned generator early (a handler
        that stops on C-CANCEL, or an aborted association) closes `source` on the loop, so its database cursor
        is released there.
        """
        finished = False
        try:
            while True:
                item = self.call(_next(source), timeout=timeout)
                if item is _END:
                    finished = True
                    return
                yield cast(T, item)
        finally:
            aclose = getattr(source, "aclose", None)
            if not finished and aclose is not None and not self.closed:
                with contextlib.suppress(BridgeError):
                    self.call(aclose(), timeout=timeout)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def _next(source: AsyncIterator[T]) -> T | object:
    # StopAsyncIteration must not cross the thread boundary as an exception of a coroutine: return a sentinel.
    try:
        return await anext(source)
    except StopAsyncIteration:
        return _END
