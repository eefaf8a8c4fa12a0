"""An association's PDUs on the event loop (dimse_bridge/link.py), against a raw socket on this machine."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator

import pytest

from dimse_bridge.link import Ended, Link

NETWORK_TIMEOUT = 1.0


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Link, socket.socket]]:
    """A Link on one end of a TCP connection on 127.0.0.1, and the raw socket at the other end."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        theirs = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    reader, writer = await asyncio.open_connection(sock=ours)
    link = Link(
        reader,
        writer,
        events=None,
        connection="connection from test",
        association="association with test",
        limit=0,
        max_pdu=16384,
        network_timeout=NETWORK_TIMEOUT,
    )
    yield link, theirs
    link.close()
    theirs.close()


async def test_a_peer_that_reads_slowly_but_steadily_gets_the_whole_message(
    pair: tuple[Link, socket.socket],
) -> None:
    """DIMSE_NETWORK_TIMEOUT bounds a wait in which nothing is read, not the whole write: 6 MiB at ~4 MB/s takes
    longer than the timeout and still goes through."""
    link, theirs = pair
    received = 0

    def read_steadily() -> None:
        nonlocal received
        while chunk := theirs.recv(65536):
            received += len(chunk)
            time.sleep(0.016)

    reading = threading.Thread(target=read_steadily, daemon=True)
    reading.start()
    started = time.monotonic()
    await link.write([b"\0" * (1024 * 1024)] * 6)
    assert time.monotonic() - started > NETWORK_TIMEOUT
    link.writer.close()
    await asyncio.to_thread(reading.join, 10)
    assert received == 6 * 1024 * 1024


async def test_a_peer_that_reads_nothing_is_cut_after_the_network_timeout(
    pair: tuple[Link, socket.socket],
) -> None:
    link, _ = pair
    with pytest.raises(Ended):
        await link.write([b"\0" * (1024 * 1024)] * 8)


async def test_a_connection_reset_ends_the_association(pair: tuple[Link, socket.socket]) -> None:
    link, theirs = pair
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    theirs.close()
    with pytest.raises(Ended) as ended:
        await link.receive(NETWORK_TIMEOUT)
    assert not ended.value.released


async def test_nothing_within_the_time_given_is_a_timeout_not_the_end(
    pair: tuple[Link, socket.socket],
) -> None:
    """A wait for a response that runs out is the caller's to judge (TimeoutError, an OSError too): the
    association has not ended."""
    link, _ = pair
    with pytest.raises(TimeoutError):
        await link.receive(0.1)
