"""The association-thread -> app-loop bridge (dimse_bridge/bridge.py), with a real loop in a real thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from dimse_bridge.bridge import BridgeClosed, BridgeTimeout, LoopBridge


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in its own thread, as the app's loop runs beside pynetdicom's threads."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    loop.close()


def test_call_returns_the_result_and_raises_the_error(loop: asyncio.AbstractEventLoop) -> None:
    bridge = LoopBridge(loop, timeout=5)

    async def where() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    async def fail() -> None:
        raise ValueError("boom")

    assert bridge.call(where()) is loop
    with pytest.raises(ValueError, match="boom"):
        bridge.call(fail())


def test_a_timeout_cancels_unless_told_not_to(loop: asyncio.AbstractEventLoop) -> None:
    bridge = LoopBridge(loop, timeout=5)
    finished: list[str] = []

    async def slow(name: str) -> None:
        await asyncio.sleep(0.3)
        finished.append(name)

    with pytest.raises(BridgeTimeout):
        bridge.call(slow("cancelled"), timeout=0.05)
    with pytest.raises(BridgeTimeout):
        bridge.call(slow("kept"), timeout=0.05, cancel_on_timeout=False)
    time.sleep(0.5)
    assert finished == ["kept"]


def test_stream_pulls_items_and_closes_the_source_when_stopped_early(loop: asyncio.AbstractEventLoop) -> None:
    bridge = LoopBridge(loop, timeout=5)
    closed = threading.Event()

    async def numbers() -> AsyncIterator[int]:
        try:
            for n in range(100):
                yield n
        finally:
            closed.set()

    assert list(bridge.stream(numbers())) == list(range(100))
    closed.clear()
    taken = []
    for n in bridge.stream(numbers()):
        taken.append(n)
        if n == 2:
            break  # a handler stopping on C-CANCEL
    assert taken == [0, 1, 2]
    assert closed.wait(5)


def test_after_close_nothing_reaches_the_loop(loop: asyncio.AbstractEventLoop) -> None:
    bridge = LoopBridge(loop, timeout=5)
    ran = []

    async def work() -> None:
        ran.append(1)

    bridge.close()
    with pytest.raises(BridgeClosed):
        bridge.call(work())
    time.sleep(0.1)
    assert ran == []


async def test_calling_from_the_loop_thread_is_refused() -> None:
    bridge = LoopBridge(asyncio.get_running_loop(), timeout=5)

    async def work() -> int:
        return 1

    with pytest.raises(RuntimeError, match="deadlock"):
        bridge.call(work())
