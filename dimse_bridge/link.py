"""DIMSE messages over one association's connection, on the event loop: the PDUs of the data transfer phase.

Both sides of an association the loop serves use it: the acceptor's data phase (data_phase.py), and the
associations the archive opens itself to a C-MOVE destination (loop_scu.py). It reads PDUs (PS3.8 9.3) with the
limits the DUL sockets have (acceptor.py: a PDU longer than the peer may send, or one that stops half-way for
DIMSE_NETWORK_TIMEOUT, closes the connection), reassembles DIMSE messages from their P-DATA-TF fragments and
writes messages fragmented to the peer's maximum PDU length (commands.py, PS3.8 E.2), waiting at most
DIMSE_NETWORK_TIMEOUT for a peer that reads nothing.

While an operation runs (a C-FIND's matches, a C-MOVE's sub-operations), `cancelled` looks for a C-CANCEL
(PS3.7 9.3.2.3) without waiting: a read is left running, and whatever it brings is what `receive` returns next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Executor
from typing import Any, Final, NoReturn, Protocol

from pynetdicom.dimse_primitives import C_CANCEL

from dimse_bridge.commands import (
    P_DATA_TF_TYPE,
    CommandError,
    MessageAssembler,
    ReceivedMessage,
    ReceivedPData,
    message_chunks,
    message_parts,
    received_primitive,
    release_parts,
)
from dimse_bridge.context import DimseContext

log = logging.getLogger(__name__)
# pynetdicom's messages for the same events, under its logger, as its reactors write them.
_DIMSE_LOG = logging.getLogger("pynetdicom.dimse")

PDU_HEADER: Final = struct.Struct(">BxI")  # PDU type, reserved, PDU length (PS3.8 9.3.1)
A_ASSOCIATE_AC_TYPE: Final = 0x02
A_ASSOCIATE_RJ_TYPE: Final = 0x03
A_RELEASE_RQ_TYPE: Final = 0x05
A_RELEASE_RP_TYPE: Final = 0x06
A_ABORT_TYPE: Final = 0x07
A_RELEASE_RQ: Final = bytes((A_RELEASE_RQ_TYPE, 0, 0, 0, 0, 4, 0, 0, 0, 0))  # PS3.8 9.3.6
A_RELEASE_RP: Final = bytes((A_RELEASE_RP_TYPE, 0, 0, 0, 0, 4, 0, 0, 0, 0))  # PS3.8 9.3.7
# PS3.8 9.3.8 A-ABORT source: the service user (an abort we decide on) or the service provider (a protocol error).
ABORT_SOURCE_USER: Final = 0x00
ABORT_SOURCE_PROVIDER: Final = 0x02
ABORT_SECONDS: Final = 1.0  # how long an A-ABORT may wait for a peer that does not read
_DROP_CHUNK: Final = 64 * 1024  # what is read at a time of a connection whose bytes are dropped
WRITE_CHUNK: Final = 1024 * 1024  # a write joins messages up to about this size (one system call)


async def until_closed(read: Callable[[int], Awaitable[bytes]], seconds: float | None) -> None:
    """Sta13 (PS3.8 9.2, AR-4, AE-8): the requestor closes the connection once it has the A-RELEASE-RP or the
    A-ASSOCIATE-RJ; whatever it sends meanwhile is read with `read(size)` and dropped (AA-6), never held, and the
    wait ends after the ARTIM time at most."""
    with contextlib.suppress(TimeoutError, OSError):
        async with asyncio.timeout(seconds):
            while await read(_DROP_CHUNK):
                pass


def a_abort(source: int) -> bytes:
    """An A-ABORT PDU (PS3.8 9.3.8), reason not specified (as pynetdicom sends its own)."""
    return bytes((A_ABORT_TYPE, 0, 0, 0, 0, 4, 0, 0, source, 0))


class Ended(Exception):
    """The association has ended: its last PDU is sent or received, or the connection is gone."""

    def __init__(self, released: bool) -> None:
        super().__init__()
        self.released = released


class Link:
    """The PDUs of one association, read from `reader` and written to `writer`.

    `events` is the pynetdicom association whose EVT_DIMSE_SENT / EVT_DIMSE_RECV listeners hear each message (the
    audit trail), or None; `connection` and `association` name the peer in log lines ("connection from
    10.0.0.5:4242", "association with CT1@10.0.0.5:4242"); `limit` is the longest PDU the peer may send (0: none)
    and `max_pdu` the longest it takes (PS3.8 D.1).
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        events: Any,
        connection: str,
        association: str,
        limit: int,
        max_pdu: int,
        network_timeout: float | None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.events = events
        self.connection = connection
        self.association = association
        self.limit = limit
        self.max_pdu = max_pdu
        self.network_timeout = network_timeout
        self._assembler = MessageAssembler()
        self._ready: deque[ReceivedMessage] = deque()  # messages received and not yet taken (`receive`)
        self._held: list[bytes] = []  # messages to send with the next write (`send`)
        self._reading: asyncio.Task[tuple[int, Any] | None] | None = None  # a read `cancelled` left running
        self._high_water = writer.transport.get_write_buffer_limits()[1]

    # -- writing ------------------------------------------------------------------------------------------------

    async def write(self, chunks: Iterable[bytes]) -> None:
        """Write what is held back (`send(..., now=False)`) and `chunks`, in pieces of about WRITE_CHUNK bytes
        made as they go (so the loop is never held for long by a large data set); whenever the socket's buffer
        fills, wait for the peer to read: as long as it reads, and at most DIMSE_NETWORK_TIMEOUT without reading
        anything (as the socket's send timeout bounds each of pynetdicom's writes, acceptor.py). A peer that
        reads nothing for that long, or a connection that fails, ends the association."""
        pieces, self._held = self._held, []
        size = sum(map(len, pieces))
        for chunk in chunks:
            pieces.append(chunk)
            size += len(chunk)
            if size >= WRITE_CHUNK:
                await self._put(pieces)
                pieces, size = [], 0
        if pieces:
            await self._put(pieces)

    async def _put(self, pieces: list[bytes]) -> None:
        writer = self.writer
        transport = writer.transport
        if transport.is_closing():  # reset or closed: asyncio would drop the bytes with a warning each time
            raise Ended(released=False)
        writer.writelines(pieces)  # one system call, when the socket takes it all
        unsent = transport.get_write_buffer_size()
        while unsent > self._high_water:
            try:
                async with asyncio.timeout(self.network_timeout) as waited:
                    await writer.drain()
                return
            except OSError as exc:  # TimeoutError is one: ours when `waited` expired, else the connection's
                if not (isinstance(exc, TimeoutError) and waited.expired()):
                    raise Ended(released=False) from None  # reset, unreachable, TLS failure, closed meanwhile
                if transport.get_write_buffer_size() >= unsent:  # nothing read for that long
                    log.warning(
                        "%s closed: it read nothing of what was sent for %s s (DIMSE_NETWORK_TIMEOUT)",
                        self.connection,
                        self.network_timeout,
                    )
                    raise Ended(released=False) from None
                unsent = transport.get_write_buffer_size()  # slow, but reading: wait again

    async def send(self, primitive: Any, context_id: int, *, now: bool = True) -> None:
        """Send one DIMSE message (PS3.7 6.3, fragmented into P-DATA-TF PDUs as PS3.8 E.2 says). With `now`
        False it is held back, to go in one write with the next message sent, or before the next read."""
        parts = message_parts(self.events, primitive, context_id)
        try:
            chunks = message_chunks(parts, context_id, self.max_pdu)
            if now:
                await self.write(chunks)
            else:
                self._held.extend(chunks)
        finally:
            release_parts(parts)

    async def end(self, source: int) -> None:
        """Send an A-ABORT (PS3.8 9.3.8) before the connection is closed; a peer not reading is not waited for
        more than ABORT_SECONDS."""
        self.writer.write(a_abort(source))
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(ABORT_SECONDS):
                await self.writer.drain()

    async def abort(self, source: int = ABORT_SOURCE_PROVIDER) -> NoReturn:
        """Send an A-ABORT and end the association (the caller has logged why)."""
        await self.end(source)
        raise Ended(released=False)

    def close(self) -> None:
        reading = self._reading
        if reading is not None:
            if reading.done() and not reading.cancelled():
                reading.exception()  # taken: what ended the association is known already
            reading.cancel()
        self.writer.close()

    # -- reading ------------------------------------------------------------------------------------------------

    async def receive(self, seconds: float | None) -> tuple[int, Any] | None:
        """The next DIMSE message, as (presentation context ID, pynetdicom's primitive); None for an
        A-RELEASE-RQ. TimeoutError when nothing arrives for `seconds`; the association ends (`Ended`) on an
        A-ABORT, a closed connection or what cannot be read (then with an A-ABORT, PS3.8 9.2 Evt19)."""
        if self._held:
            await self.write(())
        reading, self._reading = self._reading, None
        if reading is None:
            return await self._receive(seconds)
        try:
            async with asyncio.timeout(seconds):
                return await asyncio.shield(reading)
        except TimeoutError:
            self._reading = reading  # still the next message, whenever it comes
            raise
        except asyncio.CancelledError:
            reading.cancel()
            raise

    def cancelled(self, message_id: int) -> bool:
        """Whether a C-CANCEL of the operation `message_id` has come, without waiting; `Ended` if the association
        ended meanwhile. Another message that came is kept for `receive`, and no more is read until it is taken."""
        if self._reading is None:
            self._reading = asyncio.ensure_future(self._receive(None))
            return False
        if not self._reading.done():
            return False
        received = self._reading.result()  # raises what ended the association
        if received is None or not isinstance(received[1], C_CANCEL):
            return False
        self._reading = None
        if received[1].MessageIDBeingRespondedTo == message_id:
            return True
        return self.cancelled(message_id)  # a C-CANCEL of nothing outstanding: dropped

    async def flush(self) -> None:
        """Write what is held back, then let a read that `cancelled` left running take what has come meanwhile
        (a C-CANCEL behind the request, say), so that it is seen at the next `cancelled`."""
        await self.write(())
        await asyncio.sleep(0)

    async def _receive(self, seconds: float | None) -> tuple[int, Any] | None:
        while not self._ready:
            kind, body = await self.pdu(seconds)
            if kind == P_DATA_TF_TYPE:
                await self._p_data(body)
            elif kind == A_RELEASE_RQ_TYPE:
                return None
            elif kind == A_ABORT_TYPE:
                raise Ended(released=False)
            else:
                log.warning(
                    "%s aborted: a PDU of type 0x%02X in the data transfer phase (PS3.8 9.2)",
                    self.association,
                    kind,
                )
                await self.abort(ABORT_SOURCE_PROVIDER)
        message = self._ready.popleft()
        try:
            return message.context_id, received_primitive(self.events, message)
        except Exception as exc:
            _DIMSE_LOG.error("Received an invalid DIMSE message")
            _DIMSE_LOG.exception(exc)
            await self.abort(ABORT_SOURCE_PROVIDER)

    async def pdu(self, seconds: float | None) -> tuple[int, bytes]:
        """One PDU's type and body. TimeoutError when none begins within `seconds`; a PDU over the limit, one
        that stalls half-way, or a connection that fails (reset, TLS error) ends the association (`Ended`)."""
        try:
            async with asyncio.timeout(seconds) as waited:
                head = await self.reader.readexactly(PDU_HEADER.size)
        except asyncio.IncompleteReadError:
            raise Ended(released=False) from None  # the peer closed the connection (AA-4)
        except OSError as exc:  # TimeoutError is one: ours when `waited` expired, else the connection's
            if isinstance(exc, TimeoutError) and waited.expired():
                raise
            raise Ended(released=False) from None
        kind, length = PDU_HEADER.unpack(head)
        if self.limit and length > self.limit:
            log.warning(
                "%s closed: a PDU of %d bytes, more than the %d it may send",
                self.connection,
                length,
                self.limit,
            )
            raise Ended(released=False)
        try:
            async with asyncio.timeout(self.network_timeout) as waited:
                return kind, await self.reader.readexactly(length)
        except asyncio.IncompleteReadError:
            raise Ended(released=False) from None
        except OSError as exc:
            if isinstance(exc, TimeoutError) and waited.expired():
                log.warning(
                    "%s closed: nothing more of a PDU for %s s (DIMSE_NETWORK_TIMEOUT)",
                    self.connection,
                    self.network_timeout,
                )
            raise Ended(released=False) from None

    async def _p_data(self, items: bytes) -> None:
        """Take the PDV items of a P-DATA-TF PDU; the messages they complete wait in `_ready`."""
        try:
            values = ReceivedPData(items, start=0).values
        except ValueError as exc:
            log.warning("%s aborted: %s", self.association, exc)
            await self.abort(ABORT_SOURCE_PROVIDER)
        for context_id, data in values:
            try:
                message = self._assembler.feed(context_id, data)
            except CommandError as exc:
                _DIMSE_LOG.error("Received an invalid DIMSE message: %s", exc)
                await self.abort(ABORT_SOURCE_PROVIDER)
            if message is not None:
                self._ready.append(message)


class Phase(Protocol):
    """What the services on the loop (loop_find.py, loop_retrieve.py) need of the association's data phase
    (data_phase.DataPhase)."""

    assoc: Any
    dimse: DimseContext
    reading: Executor  # where stored files are read for sub-operations

    @property
    def link(self) -> Link: ...
